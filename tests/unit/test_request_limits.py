"""The JSON depth check and the log redaction, on their own."""

from __future__ import annotations

import json
import logging

import pytest

from gateway.limits import json_depth_exceeds
from shared.logredact import REDACTED, RedactingFilter, redact


@pytest.mark.parametrize(("text", "depth", "too_deep"), [
    ("{}", 1, False),
    ('{"a": [1, {"b": 2}]}', 3, False),
    ('{"a": [1, {"b": 2}]}', 2, True),
    ("[" * 33 + "]" * 33, 32, True),
    ("[" * 32 + "]" * 32, 32, False),
    ("[" * 100_000, 32, True),  # unbalanced: still refused before a recursive decoder sees it
    (json.dumps({"s": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}), 2, False),
    (json.dumps({"s": 'a \\" [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[['}), 2, False),
    ("[" + "[1]," * 100_000 + "[]]", 2, False),  # wide, not deep
    ('"just a string"', 1, False),
])
def test_json_depth_counts_brackets_outside_strings(text: str, depth: int, too_deep: bool) -> None:
    assert json_depth_exceeds(text.encode(), depth) is too_deep


@pytest.mark.parametrize(("line", "secret"), [
    ('127.0.0.1:1 - "GET /api/v1/runs/r/events?access_token=eyJhbGciOi.eyJzdWIiOi.c2lnbmF0dXJl HTTP/1.1" 200',
     "eyJhbGciOi"),
    ('"GET /api/v1/projects/p/events?last_event_id=3&access_token=tfp_abcdefghijklmnopqrstuvwxyz HTTP/1.1"',
     "tfp_abcdefghijklmnop"),
    ("connecting to nats://gateway:s3cr3t-pw@127.0.0.1:4222", "s3cr3t-pw"),
    ("refresh with tfr_0123456789abcdef0123", "tfr_0123456789abcdef"),
])
def test_log_lines_lose_query_values_url_credentials_and_tokens(line: str, secret: str) -> None:
    assert secret not in redact(line) and REDACTED in redact(line)


def test_the_filter_rewrites_records_with_arguments(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.redaction")
    logger.addFilter(RedactingFilter())
    with caplog.at_level(logging.INFO, logger="test.redaction"):
        logger.info('%s - "%s %s HTTP/1.1" %d', "127.0.0.1:9", "GET", "/x/events?access_token=tfp_abcdefghijkl", 200)
    assert "tfp_abcdefghijkl" not in caplog.text and "access_token=[redacted]" in caplog.text


def test_uvicorns_access_log_still_formats_after_redaction() -> None:
    """uvicorn's access formatter reads the five arguments of the record itself: they stay arguments."""
    from uvicorn.logging import AccessFormatter

    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:9", "GET", "/x/events?access_token=tfp_abcdefghijkl", "1.1", 200), None)
    assert RedactingFilter().filter(record)
    line = AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s', use_colors=False).format(record)
    assert line == '127.0.0.1:9 - "GET /x/events?access_token=[redacted] HTTP/1.1" 200 OK'
