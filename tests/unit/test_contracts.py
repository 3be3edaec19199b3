"""The wire contracts round-trip, and docs/events.md documents every message and kind."""

import typing
from pathlib import Path

import msgspec

from shared.contracts import Job, RunLog, commands, event_decoder, events

DOCS = Path(__file__).resolve().parents[2] / "docs" / "events.md"


def test_every_event_type_and_run_kind_is_documented() -> None:
    text = DOCS.read_text()
    for cls in typing.get_args(events.Event):
        assert f"`{cls.__struct_config__.tag}`" in text, cls
    for cls in typing.get_args(commands.RunSpec) or (commands.RunSpec,):
        assert f"`{cls.__struct_config__.tag}`" in text, cls


def test_events_round_trip_and_carry_their_identity() -> None:
    event = RunLog(run_id="r1", project_id="p1", attempt=2, runner_id="x", seq=7,
                   lines=[events.LogLine(stream="stdout", text="hello")])
    decoded = event_decoder.decode(msgspec.json.encode(event))
    assert decoded == event
    assert decoded.type == "run.log" and decoded.msg_id == "r1:2:7"


def test_bus_decoders_ignore_unknown_fields_for_forward_compatibility() -> None:
    raw = (b'{"type":"run.metrics","run_id":"r","project_id":"p","attempt":1,"runner_id":"x","seq":1,'
           b'"ts":"2026-01-01T00:00:00Z","metrics":{"loss":1.5},"added_in_v1_1":true}')
    assert event_decoder.decode(raw).metrics == {"loss": 1.5}
    job = msgspec.json.decode(
        b'{"run_id":"r","project_id":"p","pool":"cpu","future":1,'
        b'"spec":{"kind":"container","start_command":"true","future":2}}',
        type=Job,
    )
    assert job.spec.start_command == "true"
