"""Secrets never reach a log line: query strings and credentials in URLs are cut out of every record.

`?access_token=` exists for browsers' EventSource, and uvicorn's access log writes each request's path with its
query. `install()` puts `RedactingFilter` on the root logger's handlers and on uvicorn's loggers (which do not
propagate to the root), so whatever a process logs, every query value and every `user:password@` in a URL is
replaced by `[redacted]` before it is written.

    redact("GET /api/v1/runs/r1/events?access_token=eyJ...&last_event_id=4")
    → "GET /api/v1/runs/r1/events?access_token=[redacted]&last_event_id=[redacted]"
"""

from __future__ import annotations

import logging
import re

REDACTED = "[redacted]"
_QUERY_VALUE = re.compile(r"(\?|&)([^=&\s#\"']*)=([^&\s#\"']*)")
_USERINFO = re.compile(r"([a-z][a-z0-9+.-]*://)[^/@\s\"']+@", re.IGNORECASE)
_TOKENS = re.compile(r"\b(tfp|tfr)_[A-Za-z0-9_-]{8,}|\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


def redact(text: str) -> str:
    """`text` without query values, URL credentials, API/refresh tokens or JWTs."""
    if "=" in text:
        text = _QUERY_VALUE.sub(lambda m: f"{m.group(1)}{m.group(2)}={REDACTED}" if m.group(3) else m.group(0), text)
    if "@" in text:
        text = _USERINFO.sub(lambda m: f"{m.group(1)}{REDACTED}@", text)
    return _TOKENS.sub(REDACTED, text)


class RedactingFilter(logging.Filter):
    """Rewrites a record's message and each of its string arguments through `redact`, keeping the arguments
    apart: formatters such as uvicorn's access log read `record.args` themselves."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: redact(v) if isinstance(v, str) else v for k, v in record.args.items()}
        return True


_FILTER = RedactingFilter()
UVICORN_LOGGERS = ("uvicorn", "uvicorn.access", "uvicorn.error")


def install() -> None:
    """Redact on every handler of the root logger and on uvicorn's loggers (idempotent)."""
    for handler in logging.getLogger().handlers:
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)
    for name in UVICORN_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
