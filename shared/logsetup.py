"""How every process logs: plain text (the default) or JSON lines (`TRAINFORGE_LOG_FORMAT=json`).

A JSON line carries `timestamp` (UTC, ISO 8601), `level`, `logger`, `message`, and the context fields that
apply where the record was made: `run_id`, `attempt`, `runner_id`, `request_id` (and `exc` with a traceback).
Context is bound with `bound(...)` (a context variable, so asyncio tasks and `anyio.to_thread` workers started
inside inherit it) or per record with `extra={"run_id": ...}`.

Redaction (`shared.logredact`) stays on this path: its filter sits on the root handler, so the message and
its arguments are redacted before formatting, and the formatter redacts the traceback text too.

    {"timestamp": "2026-12-02T01:02:03.456Z", "level": "INFO", "logger": "runner.agent",
     "message": "run 3f... attempt 1: started", "run_id": "3f...", "attempt": 1, "runner_id": "gpu-1"}
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

from shared import logredact

LogFormat = Literal["text", "json"]
CONTEXT_FIELDS = ("run_id", "attempt", "runner_id", "request_id")
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

_context: ContextVar[Mapping[str, Any]] = ContextVar("trainforge_log_context", default={})  # noqa: B039 - never mutated


def bind(**fields: Any) -> Token[Mapping[str, Any]]:
    """Add `fields` (None values left out) to the log context of this task; `unbind(token)` undoes it."""
    return _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})


def unbind(token: Token[Mapping[str, Any]]) -> None:
    _context.reset(token)


@contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """`fields` in the log context for the duration of the block."""
    token = bind(**fields)
    try:
        yield
    finally:
        unbind(token)


def context() -> Mapping[str, Any]:
    """The log context of the current task."""
    return _context.get()


class JsonFormatter(logging.Formatter):
    """One JSON object per record, context fields included where they are set."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": logredact.redact(record.getMessage()),
        }
        bound_now = _context.get()
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is None:
                value = bound_now.get(name)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exc"] = logredact.redact(self.formatException(record.exc_info))
        elif record.exc_text:
            line["exc"] = logredact.redact(record.exc_text)
        if record.stack_info:
            line["stack"] = logredact.redact(self.formatStack(record.stack_info))
        return msgspec.json.encode(line, enc_hook=str).decode()


def json_line(logger: str, message: str, level: str = "INFO") -> str:
    """One JSON log line written outside logging (a banner that must show whatever the log level)."""
    record = logging.LogRecord(logger, getattr(logging, level), "", 0, message, None, None)
    return JsonFormatter().format(record)


def configure(level: str, fmt: LogFormat = "text", stream: Any = None) -> None:
    """Log to stderr in `fmt`, at `level`, with redaction. Text: `logging.basicConfig` (nothing changes where
    the root logger has handlers already, e.g. under pytest). JSON: a handler of ours on the root logger,
    replacing the one a previous call added."""
    root = logging.getLogger()
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    if fmt == "json":
        for old in [h for h in root.handlers if getattr(h, "trainforge_json", False)]:
            root.removeHandler(old)
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(JsonFormatter())
        handler.trainforge_json = True  # type: ignore[attr-defined]
        root.addHandler(handler)
        logging.captureWarnings(True)  # Python warnings as log lines (logger `py.warnings`), not raw stderr
    else:
        logging.basicConfig(format=TEXT_FORMAT, datefmt="%H:%M:%S", stream=stream)
    logredact.install()
