"""The `trainforge` command line: help texts, argument checks, and clear settings errors."""

from __future__ import annotations

import io
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from trainforge import credentials
from trainforge.cli import build_parser, main

SUBCOMMANDS = ["up", "status", "down", "logs", "gateway", "runner", "migrate", "secrets", "train", "runs", "login",
               "logout"]


def _subcommands() -> set[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")  # noqa: SLF001 - argparse has no API
    return set(action.choices)  # type: ignore[arg-type]


def test_the_cli_has_the_documented_subcommands() -> None:
    assert _subcommands() == set(SUBCOMMANDS)


@pytest.mark.parametrize("command", [[], *([c] for c in SUBCOMMANDS)])
def test_help_of_every_subcommand_exits_zero_and_shows_examples(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: trainforge")
    assert "trainforge up" in out or "examples:" in out


def test_help_imports_no_server_code() -> None:
    code = (
        "import sys; from trainforge.cli import build_parser; build_parser().format_help(); "
        "heavy = [m for m in ('gateway.app', 'trainforge.stack', 'migrations', 'torch', 'ultralytics', 'litestar') "
        "if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_setting_that_does_not_parse_exits_2_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TRAINFORGE_PORT", "eighty")
    assert main(["migrate"]) == 2
    err = capsys.readouterr().err
    assert "TRAINFORGE_PORT" in err and "Expected `int`" in err


@pytest.mark.parametrize("command", ["migrate", "gateway"])
def test_commands_that_need_the_database_exit_2_without_it(
    command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("TRAINFORGE_DATABASE_URL", raising=False)
    assert main([command]) == 2
    assert "TRAINFORGE_DATABASE_URL" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["runner", "--device", "gpu0"],
        ["runner", "--device", "cuda"],
        ["runner", "--slots", "0"],
        ["up", "--port", "70000"],
        ["up", "--runners", "-1"],
        ["launch"],
    ],
)
def test_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(argv)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_runner_accepts_pool_device_slots_and_id() -> None:
    args = build_parser().parse_args(["runner", "--pool", "gpu", "--device", "cuda:1", "--slots", "2", "--id", "h-1"])
    assert (args.pool, args.device, args.slots, args.id) == ("gpu", "cuda:1", 2, "h-1")


def test_runner_device_auto_takes_a_free_gpu_per_job() -> None:
    assert build_parser().parse_args(["runner", "--device", "auto"]).device == "auto"


def test_login_keeps_one_token_per_gateway_readable_by_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "config" / "trainforge" / "credentials.json"
    credentials.save("http://a:8000/", "tfp_a", "id-a", "alice", path)
    credentials.save("http://b:8000", "tfp_b", "id-b", "bob", path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert credentials.saved("http://a:8000", path) == {"token": "tfp_a", "token_id": "id-a", "username": "alice"}
    assert credentials.forget("http://a:8000", path)["token"] == "tfp_a"
    assert credentials.saved("http://a:8000", path) is None and credentials.saved("http://b:8000/", path)
    assert credentials.forget("http://a:8000", path) is None
    path.write_text("{broken")
    with pytest.raises(ValueError, match="delete it and log in again"):
        credentials.saved("http://b:8000", path)


def test_login_without_a_username_or_password_exits_2(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["login", "--api", "http://127.0.0.1:9"]) == 2
    assert main(["login", "-u", "ann", "--password-stdin", "--api", "http://127.0.0.1:9"]) == 2
    assert "a username and a password are needed" in capsys.readouterr().err


def test_the_login_token_is_named_even_for_a_uid_without_a_user_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    from trainforge import cli

    def no_entry() -> str:
        raise KeyError("getpwuid(): uid not found: 4242")

    monkeypatch.setattr("getpass.getuser", no_entry)
    assert cli._local_user().startswith("uid ")  # noqa: SLF001


def test_runs_watch_shows_a_pause_and_its_end() -> None:
    from rich.console import Console
    from rich.progress import Progress

    from trainforge.watch import RunView

    console = Console(record=True, width=100)
    view = RunView(Progress(console=console), console)
    view.handle("run.paused", {"run_id": "r1", "requested_by": "alice"})
    view.handle("run.unpaused", {"run_id": "r1", "paused_s": 42.4})
    text = console.export_text()
    assert "paused by alice (trainforge runs unpause r1)" in text
    assert "unpaused after 42 s" in text
