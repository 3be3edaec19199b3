"""docs/schemas/ holds exactly what `python -m shared.contracts.schema` generates from the contracts now, and
those schemas accept what the contracts encode (every event type, heartbeats, jobs of every kind) while
refusing a wrong type; fields they don't know are allowed (consumers ignore them)."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import msgspec
import pytest

from shared.contracts import (
    ContainerSpec,
    Job,
    LogLine,
    RunArtifact,
    RunCanceled,
    RunCancelRequested,
    RunCheckpoint,
    RunClaimed,
    RunCompleted,
    RunFailed,
    RunLog,
    RunMetrics,
    RunnerHeartbeat,
    RunPaused,
    RunProgress,
    RunQueued,
    RunRequeued,
    RunStarted,
    RunUnpaused,
)
from shared.contracts.common import FailureCause
from shared.contracts.events import DeviceInfo, HostStats, RunEvent
from shared.contracts.schema import DOCS_SCHEMAS, MESSAGES, generated, main
from shared.contracts.yolo import YoloExportSpec, YoloPredictSpec, YoloTrainSpec, YoloValSpec


def validator(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((DOCS_SCHEMAS / name).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_the_committed_schemas_are_what_the_contracts_generate_now() -> None:
    for name, text in generated().items():
        path = DOCS_SCHEMAS / name
        assert path.is_file() and path.read_text() == text, (
            f"{path} is stale: run `python -m shared.contracts.schema` and commit docs/schemas/")
    assert sorted(p.name for p in DOCS_SCHEMAS.glob("*.json")) == sorted(MESSAGES)
    assert main(["--check"]) == 0


def test_check_reports_a_stale_folder(tmp_path: Any) -> None:
    assert main(["--check", "--out", str(tmp_path)]) == 1
    assert main(["--out", str(tmp_path)]) == 0 and main(["--check", "--out", str(tmp_path)]) == 0


BASE = {"run_id": "r" * 32, "project_id": "p" * 32, "attempt": 1, "runner_id": "w1"}
EVERY_EVENT = [
    RunQueued(**{**BASE, "attempt": 0, "runner_id": "gateway"}, seq=1, kind="container", pool="cpu"),
    RunClaimed(**BASE, seq=1, host="h", device="cpu"),
    RunStarted(**BASE, seq=2, resumed_from="c" * 32),
    RunProgress(**BASE, seq=3, progress=0.5, step=1, total=2, losses={"train/box_loss": 1.5}, eta_s=1.0),
    RunMetrics(**BASE, seq=4, metrics={"metrics/mAP50(B)": 0.1}, epoch=1),
    RunLog(**BASE, seq=5, lines=[LogLine("stdout", "hi"), LogLine("system", "x")]),
    RunCheckpoint(**BASE, seq=6, uri="file:///c.pt", epoch=1, size_bytes=10, meta={"fitness": None}),
    RunArtifact(**BASE, seq=7, name="weights/best.pt", uri="file:///b.pt", kind="weights", size_bytes=3),
    RunCompleted(**BASE, seq=8, exit_code=0, result=None),
    RunCompleted(**BASE, seq=8, result={"metrics": {"fitness": 0.2}}),
    RunFailed(**BASE, seq=8, cause=FailureCause.USER, error_type="CommandFailed", message="exit 1",
              exit_code=1),
    RunCancelRequested(**{**BASE, "attempt": 0, "runner_id": "gateway"}, seq=2, requested_by="u1"),
    RunCanceled(**BASE, seq=8, reason="requested"),
    RunRequeued(**BASE, seq=8, reason="runner shutdown"),
    RunPaused(**BASE, seq=4, requested_by="alice"),
    RunUnpaused(**BASE, seq=5, requested_by="alice", paused_s=12.5),
]


def test_every_event_type_validates_and_the_union_covers_them_all() -> None:
    check = validator("run-event.v1.json")
    for event in EVERY_EVENT:
        check.validate(json.loads(msgspec.json.encode(event)))
    tags = {t.__struct_config__.tag for t in RunEvent.__args__}  # type: ignore[attr-defined]
    assert {e.type for e in EVERY_EVENT} == tags


def test_a_heartbeat_and_jobs_of_every_kind_validate() -> None:
    beat = RunnerHeartbeat(runner_id="w1", seq=7, pool="cpu", slots=2, active_runs=["r" * 32],
                           devices=[DeviceInfo(name="cpu", memory_total_mb=10)], state="busy",
                           host_stats=HostStats(cpu_percent=3.0, gpus=[]), kinds=["container"])
    validator("runner-heartbeat.v1.json").validate(json.loads(msgspec.json.encode(beat)))
    check = validator("job.v1.json")
    for spec in (ContainerSpec(start_command="true"), YoloTrainSpec(data="/d/data.yaml"),
                 YoloValSpec(model="/m.pt", data="/d/data.yaml"),
                 YoloExportSpec(model="/m.pt", format="onnx"),
                 YoloPredictSpec(model="/m.pt", sources=["/i.jpg"])):
        check.validate(json.loads(msgspec.json.encode(Job(run_id="r" * 32, project_id="p" * 32, pool="cpu",
                                                          spec=spec))))


def test_unknown_fields_pass_and_wrong_types_or_tags_do_not() -> None:
    check = validator("run-event.v1.json")
    body = json.loads(msgspec.json.encode(EVERY_EVENT[1]))
    check.validate({**body, "added_in_a_later_version": [1]})
    without_seq = {k: v for k, v in body.items() if k != "seq"}
    for bad in ({**body, "seq": "1"}, {**body, "type": "run.nonsense"}, without_seq):
        with pytest.raises(jsonschema.ValidationError):
            check.validate(bad)
