"""compose.yaml runs real `trainforge` subcommands with settings Trainforge reads."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.settings import Settings
from trainforge.cli import build_parser

COMPOSE = Path(__file__).resolve().parents[2] / "compose.yaml"
INTERPOLATION = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def _interpolate(value: str) -> str:
    """Compose's `${VAR:-default}` with nothing set: the default."""
    return INTERPOLATION.sub(lambda m: m.group(2) or "", value)


def _services() -> dict[str, dict[str, Any]]:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def _trainforge_services() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in _services().items() if s.get("command", [None])[0] == "trainforge"}


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: _interpolate(str(v)) for k, v in env.items()}


def test_compose_has_the_documented_services() -> None:
    services = _services()
    assert {"nats", "postgres", "migrate", "gateway", "runner-gpu0"} <= set(services)
    assert "-js" in services["nats"]["command"] and services["nats"]["volumes"]
    assert services["postgres"]["volumes"] and services["postgres"]["healthcheck"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["gateway"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert "8000:8000" in services["gateway"]["ports"]
    assert _environment(services["gateway"])["TRAINFORGE_HOST"] == "0.0.0.0"


def test_gpu_runner_reserves_its_gpu_and_uses_it() -> None:
    runner = _services()["runner-gpu0"]
    (device,) = runner["deploy"]["resources"]["reservations"]["devices"]
    assert device["device_ids"] == ["0"] and device["capabilities"] == ["gpu"]
    args = build_parser().parse_args(runner["command"][1:])
    assert (args.command, args.device, args.pool) == ("runner", "cuda:0", "gpu")


def test_every_image_built_here_runs_a_trainforge_command() -> None:
    built = {name for name, s in _services().items() if "build" in s}
    assert built and built == set(_trainforge_services())


@pytest.mark.parametrize("name", sorted(_trainforge_services()))
def test_service_command_is_a_real_trainforge_subcommand(name: str) -> None:
    command = _trainforge_services()[name]["command"]
    try:
        args = build_parser().parse_args(command[1:])
    except SystemExit as exc:
        pytest.fail(f"{name}: `{' '.join(command)}` is not accepted by the CLI (exit {exc.code})")
    assert args.command in {"secrets", "migrate", "gateway", "runner"}  # `up` is for one machine, not compose


@pytest.mark.parametrize("name", sorted(set(_trainforge_services()) - {"secrets"}))
def test_service_environment_is_read_by_the_settings(name: str) -> None:
    env = _environment(_trainforge_services()[name])
    known = set(Settings.env_names().values())
    assert not {k for k in env if k.startswith("TRAINFORGE_")} - known
    settings = Settings.from_env(env)
    assert settings.nats_url == "nats://nats:4222"
    assert settings.database_url and settings.database_url.startswith("postgresql+asyncpg://")
    assert "@postgres:5432/" in settings.database_url


def test_each_part_gets_only_its_own_secrets() -> None:
    """The signing key reaches the gateway alone; runners get the key that checks it; NATS requires users."""
    services = _services()
    mounts = {name: {v.split(":")[0] for v in s.get("volumes", [])} for name, s in services.items()}
    assert "gateway-secrets" in mounts["gateway"] and "runner-secrets" not in mounts["gateway"]
    for runner in ("runner-cpu", "runner-gpu0"):
        assert "runner-secrets" in mounts[runner] and "gateway-secrets" not in mounts[runner]
        env = _environment(services[runner])
        assert env["TRAINFORGE_NATS_USER"] == "runner" and env["TRAINFORGE_JOB_VERIFY_KEY"].startswith("/secrets/")
    assert _environment(services["gateway"])["TRAINFORGE_JOB_SIGNING_KEY_FILE"] == "/secrets/job-signing.key"
    assert "-c" in services["nats"]["command"] and "nats-secrets" in mounts["nats"]


def test_secrets_init_writes_each_parts_folder_once(tmp_path) -> None:
    from trainforge.deploysecrets import init_secrets

    folders = init_secrets(tmp_path / "s", "tf")
    first = {p: p.read_bytes() for p in (tmp_path / "s").rglob("*") if p.is_file()}
    assert {p.name for p in folders["gateway"].iterdir()} == {"job-signing.key", "nats-password", "runner-tokens"}
    assert {p.name for p in folders["runner"].iterdir()} == {"job-verify.pub", "nats-password", "gateway-token"}
    assert (folders["gateway"] / "job-signing.key").stat().st_mode & 0o077 == 0
    init_secrets(tmp_path / "s", "tf")
    assert {p: p.read_bytes() for p in (tmp_path / "s").rglob("*") if p.is_file()} == first
