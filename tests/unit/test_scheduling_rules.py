"""Pure scheduling rules: which runner fits a run, which GPU an `auto` runner picks, the order of the line."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

from gateway.dispatcher import Dispatcher, _Row
from runner.devices import parse_device, pick_device
from shared.contracts import Limits, Requirements
from shared.contracts.events import DeviceInfo
from shared.scheduling import lease_groups, misfit, owner_token

CPU = DeviceInfo(name="cpu", kind="cpu")
GPU24 = DeviceInfo(name="A10", kind="cuda", index=0, memory_total_mb=24000, memory_used_mb=1000)
GPU80 = DeviceInfo(name="H100", kind="cuda", index=1, memory_total_mb=80000, memory_used_mb=0)
KINDS = ["container", "yolo.train"]
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_a_runner_fits_a_run_only_with_its_kind_device_memory_and_gpu_count() -> None:
    assert misfit("container", None, [CPU], KINDS) is None
    assert misfit("yolo.val", None, [CPU], KINDS) == "takes no yolo.val runs"
    assert misfit("container", Requirements(device="cuda"), [CPU], KINDS) == "has no GPU"
    assert misfit("container", Requirements(min_gpu_memory_mb=40000), [GPU24], KINDS) == (
        "has no GPU with ≥ 40000 MB memory")
    assert misfit("container", Requirements(min_gpu_memory_mb=40000), [GPU24, GPU80], KINDS) is None
    assert misfit("container", Requirements(device="cuda", gpus=2), [GPU80], KINDS) == "has fewer than 2 GPUs"
    assert misfit("container", Requirements(device="cpu"), [GPU80], KINDS) == "runs on GPUs, not the CPU"
    assert misfit("container", Requirements(device="any"), [GPU80], KINDS) is None


def test_an_auto_runner_picks_free_gpus_with_enough_memory_least_loaded_first() -> None:
    assert parse_device("auto") == ("auto", None)
    gpus = [GPU24, GPU80]
    assert pick_device(gpus, set(), None) == "cuda:1"  # H100 idle, A10 has memory in use
    assert pick_device(gpus, {1}, None) == "cuda:0"
    assert pick_device(gpus, {1}, Requirements(min_gpu_memory_mb=30000)) is None
    assert pick_device(gpus, set(), Requirements(device="cuda", gpus=2)) == "cuda:0,1"
    assert pick_device(gpus, set(), Requirements(device="cpu")) == "cpu"
    assert pick_device([CPU], set(), None) == "cpu"


def test_leases_cover_the_limits_that_are_set_and_owner_tokens_are_key_safe() -> None:
    assert lease_groups(None, "u", "p") == []
    assert lease_groups(Limits(total=2, per_project=1), None, "p1") == [("global", 2), ("project.p1", 1)]
    assert lease_groups(Limits(per_user=1), "alice", "p") == [("user.alice", 1)]
    assert owner_token(None) == "_anonymous"
    assert owner_token("_anonymous") != "_anonymous"
    assert owner_token("a.b@c") == owner_token("a.b@c") and "." not in owner_token("a.b@c")


def _row(owner: str | None, priority: int = 50, age_s: int = 0, name: str = "") -> _Row:
    return _Row(id=name or f"{owner}-{priority}-{age_s}", project_id="p", owner_id=owner, pool="cpu",
                kind="container", priority=priority, status="queued", runner_id=None, requirements=None,
                created_at=T0 + timedelta(seconds=age_s), waiting=True, queue_position=None, wait_reason=None)


def test_the_line_alternates_users_and_orders_each_users_runs_by_priority_then_age() -> None:
    flood = [_row("alice", age_s=i) for i in range(4)]
    urgent = _row("alice", priority=90, age_s=9, name="alice-urgent")
    single = _row("bob", age_s=10, name="bob")
    line = [r.id for r in Dispatcher._line([*flood, urgent, single], Counter({"alice": 1}), {})]
    assert line[:3] == ["bob", "alice-urgent", flood[0].id]
    assert line[3:] == [r.id for r in flood[1:]]


def test_on_equal_counts_the_user_served_least_recently_goes_first() -> None:
    waiting = [_row("alice", age_s=0), _row("bob", age_s=5, name="bob")]
    served = {"alice": T0 + timedelta(seconds=1)}
    assert next(r.id for r in Dispatcher._line(waiting, Counter(), served)) == "bob"
    assert next(r.id for r in Dispatcher._line(waiting, Counter(), {})) != "bob"  # both never served: oldest
