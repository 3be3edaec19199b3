"""Plain SQL for the hot paths that skip SQLAlchemy's execution (`session.driver_transaction`,
`session.plain_fetch`): typed placeholders and parameters made from the ORM's table definitions, so a column's
type is written once, in `gateway.db.models`."""

from __future__ import annotations

from typing import Any

import msgspec
from sqlalchemy import String, Table
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import JSONB

_DIALECT = postgresql.dialect()  # type: ignore[no-untyped-call]


def typed_placeholders(table: Table, columns: tuple[str, ...], first: int) -> str:
    """`CAST($first AS <type>), ...` for `columns` of `table`: the types a SELECT list needs (Postgres infers
    a parameter's type from its target column only in VALUES). Strings are cast to TEXT, so that a value too
    long for its column is refused by the insert, not cut by the cast."""
    return ", ".join(f"CAST(${n} AS {_sql_type(table.columns[name].type)})" for n, name in enumerate(columns, first))


def unnest_column(table: Table, name: str) -> tuple[str, str]:
    """(array type of the parameter, the expression that reads column `name` from `v`) for an `unnest` of
    parameters, one array per column: jsonb ones travel as TEXT[] (JSON text, as `params` gives them)."""
    type_ = table.columns[name].type
    if isinstance(type_, JSONB):
        return "TEXT[]", f"v.{name}::jsonb"
    return f"{_sql_type(type_)}[]", f"v.{name}"


def _sql_type(type_: Any) -> str:
    # a string as TEXT: a cast to VARCHAR(n) would cut a longer value, where the insert refuses it
    return "TEXT" if isinstance(type_, String) else str(type_.compile(dialect=_DIALECT))


def params(table: Table, columns: tuple[str, ...], values: dict[str, Any]) -> list[Any]:
    """`values` of `columns` in order, jsonb ones as JSON text (the codec SQLAlchemy sets on its connections
    takes text)."""
    return [_param(table.columns[name].type, values.get(name)) for name in columns]


def _param(type_: Any, value: Any) -> Any:
    if isinstance(type_, JSONB) and value is not None:
        return msgspec.json.encode(value).decode()
    return value
