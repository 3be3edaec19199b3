"""What `trainforge up` starts: the children's commands and environment, and how GPUs are counted."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.settings import Settings
from trainforge.cli import build_parser
from trainforge.stack import UpOptions, cuda_visible_count, plan_children

URLS = {"nats_url": "nats://127.0.0.1:4999", "database_url": "postgresql+asyncpg://u:p@db/tf"}


def _settings(tmp_path: Path) -> Settings:
    return Settings.from_mapping({"state_dir": tmp_path, "port": 8123})


def test_up_plans_a_gateway_and_the_requested_cpu_runners(tmp_path: Path) -> None:
    children = plan_children(_settings(tmp_path), UpOptions(runners=2), **URLS)
    assert [c.name for c in children] == ["gateway", "runner-cpu0", "runner-cpu1"]
    runner_ids = [c.runner_id for c in children[1:]]
    assert len(set(runner_ids)) == 2 and all(runner_ids)
    for child in children[1:]:
        args = build_parser().parse_args(child.args)
        assert (args.command, args.pool, args.device, args.id) == ("runner", "cpu", "cpu", child.runner_id)


def test_children_get_the_stack_servers_through_settings_variables(tmp_path: Path) -> None:
    for child in plan_children(_settings(tmp_path), UpOptions(runners=1), **URLS):
        settings = Settings.from_env(child.env)
        assert settings.nats_url == URLS["nats_url"]
        assert settings.database_url == URLS["database_url"]
        assert settings.state_dir == tmp_path
        assert settings.port == 8123


def test_up_runners_take_local_jobs_unless_turned_off(tmp_path: Path) -> None:
    on = plan_children(_settings(tmp_path), UpOptions(runners=1), **URLS)
    off = plan_children(_settings(tmp_path), UpOptions(runners=1, local_backend=False), **URLS)
    assert Settings.from_env(on[1].env).runner_local_backend is True
    assert Settings.from_env(off[1].env).runner_local_backend is False
    assert Settings.from_env(on[0].env).runner_local_backend is False  # the gateway runs nothing


def test_pool_option_applies_to_every_runner(tmp_path: Path) -> None:
    children = plan_children(_settings(tmp_path), UpOptions(runners=2, pool="batch"), **URLS)
    assert all(build_parser().parse_args(c.args).pool == "batch" for c in children[1:])


def test_zero_runners_is_a_gateway_only_stack(tmp_path: Path) -> None:
    assert [c.name for c in plan_children(_settings(tmp_path), UpOptions(runners=0), **URLS)] == ["gateway"]


@pytest.mark.parametrize(
    ("value", "installed", "visible"),
    [(None, 4, 4), ("", 4, 0), ("-1", 4, 0), ("2", 4, 1), ("0,1,-1,3", 4, 2), ("0,1,2,3,4,5", 2, 2),
     ("GPU-8a1b,GPU-77c2", 4, 2)],
)
def test_cuda_visible_devices_narrows_the_gpus_like_cuda(value: str | None, installed: int, visible: int) -> None:
    assert cuda_visible_count(value, installed) == visible
