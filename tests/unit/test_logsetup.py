"""JSON log lines: the fields, the context bound per task, and no token in any of it."""

from __future__ import annotations

import asyncio
import io
import json
import logging

from shared import logsetup
from shared.logredact import RedactingFilter

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZG1pbiJ9.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg"


def json_logger(name: str) -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logsetup.JsonFormatter())
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger, out


def lines(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_a_json_line_has_the_fields_and_the_bound_context_of_its_task() -> None:
    logger, out = json_logger("tests.logsetup.fields")

    async def job(run_id: str, attempt: int) -> None:
        logsetup.bind(run_id=run_id, attempt=attempt)
        await asyncio.sleep(0)
        logger.info("working on %s", run_id)

    async def main() -> None:
        with logsetup.bound(runner_id="r1", request_id=None):
            await asyncio.gather(job("run-a", 1), job("run-b", 2))
            logger.warning("between jobs")
        logger.info("outside", extra={"request_id": "req-9"})

    asyncio.run(main())
    first, second, between, outside = lines(out)
    assert first["level"] == "INFO" and first["logger"] == "tests.logsetup.fields"
    assert str(first["timestamp"]).endswith("Z") and "T" in str(first["timestamp"])
    assert {(line["run_id"], line["attempt"], line["runner_id"]) for line in (first, second)} == \
        {("run-a", 1, "r1"), ("run-b", 2, "r1")}
    assert first["message"] == f"working on {first['run_id']}"
    assert "request_id" not in first  # None is never bound
    assert between == {**between, "level": "WARNING", "runner_id": "r1"} and "run_id" not in between
    assert outside["request_id"] == "req-9" and "runner_id" not in outside


def test_tokens_never_reach_a_json_line_message_arguments_or_traceback() -> None:
    logger, out = json_logger("tests.logsetup.redact")
    logger.info('127.0.0.1 - "GET %s HTTP/1.1" 200', f"/api/v1/runs/r1/events?access_token={JWT}")
    logger.info("connecting to nats://gateway:hunter2@127.0.0.1:4222 with token tfp_abcdefghijklmnop")
    try:
        raise ValueError(f"bad token {JWT}")
    except ValueError:
        logger.exception("failed")
    text = out.getvalue()
    assert JWT not in text and "hunter2" not in text and "tfp_abcdefghijklmnop" not in text
    access, connecting, failed = lines(out)
    assert access["message"] == '127.0.0.1 - "GET /api/v1/runs/r1/events?access_token=[redacted] HTTP/1.1" 200'
    assert "[redacted]" in str(connecting["message"])
    assert "ValueError: bad token [redacted]" in str(failed["exc"])


def test_configure_json_replaces_its_own_handler_and_text_leaves_existing_handlers() -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    level = root.level
    first, second = io.StringIO(), io.StringIO()
    try:
        logsetup.configure("INFO", "json", stream=first)
        logsetup.configure("INFO", "json", stream=second)
        logging.getLogger("tests.logsetup.configure").info("once")
        assert first.getvalue() == ""
        assert json.loads(second.getvalue())["message"] == "once"
    finally:
        logging.captureWarnings(False)
        for handler in [h for h in root.handlers if h not in before]:
            root.removeHandler(handler)
        root.setLevel(level)
    logsetup.configure("INFO", "text")  # pytest's handlers are there: basicConfig adds nothing
    assert [h for h in root.handlers if h not in before] == []
    root.setLevel(level)


def test_up_relays_a_childs_json_lines_with_its_name_and_wraps_other_output() -> None:
    from trainforge.stack import _json_line

    relayed = json.loads(_json_line("gateway", b'{"level": "INFO", "logger": "gateway.app", "message": "ready"}'))
    assert relayed == {"process": "gateway", "level": "INFO", "logger": "gateway.app", "message": "ready"}
    printed = json.loads(_json_line("runner-cpu0", f"Epoch 1/3 token={JWT}".encode()))
    assert printed["process"] == "runner-cpu0" and printed["logger"] == "runner-cpu0.output"
    assert printed["message"] == "Epoch 1/3 token=[redacted]" and printed["level"] == "INFO"
