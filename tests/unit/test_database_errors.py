"""Only the database's absence is a 503: a lost connection or a timeout; any other database error stays a 500."""

from __future__ import annotations

import asyncpg
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from gateway.errors import DatabaseUnavailable, _database_error, _gateway_error, _unavailable


def test_a_lost_connection_or_a_timeout_is_a_503_unavailable_with_retry_after() -> None:
    lost = DBAPIError("SELECT 1", {}, asyncpg.exceptions.ConnectionDoesNotExistError("gone"))
    invalidated = DBAPIError("SELECT 1", {}, Exception("connection is closed"), connection_invalidated=True)
    for problem in (_database_error(lost), _database_error(invalidated), _unavailable(TimeoutError()),
                    _unavailable(PoolTimeout("QueuePool limit reached")),
                    _gateway_error(DatabaseUnavailable("the database did not answer in time"))):
        assert problem.status_code == 503 and problem.extra["code"] == "unavailable"
        assert int(problem.headers["Retry-After"]) > 0


def test_other_database_errors_stay_500s() -> None:
    violation = IntegrityError("INSERT", {}, asyncpg.exceptions.UniqueViolationError("duplicate key"))
    bug = DBAPIError("SELEKT 1", {}, asyncpg.exceptions.PostgresSyntaxError("syntax error"))
    for problem in (_database_error(violation), _database_error(bug)):
        assert problem.status_code == 500 and problem.extra["code"] == "internal_error"
