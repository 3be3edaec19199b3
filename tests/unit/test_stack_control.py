"""`trainforge status / down / logs` without a stack: nothing runs, a stale manifest, the log's part prefixes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from trainforge import manifest as manifests
from trainforge.cli import main
from trainforge.control import NOT_RUNNING_EXIT, part_of
from trainforge.manifest import ChildEntry, StackManifest


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _write(state: Path, pid: int, status: str = "running") -> None:
    state.mkdir(parents=True, exist_ok=True)
    manifests.write(state, StackManifest(status=status, pid=pid, state_dir=str(state), api_url="http://127.0.0.1:1",
                                         children=[ChildEntry(name="gateway", pid=pid, state="running")]))


def test_status_says_nothing_runs_in_a_folder_never_used(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--state-dir", str(tmp_path)]) == NOT_RUNNING_EXIT
    assert "no stack runs" in capsys.readouterr().out
    assert main(["status", "--json", "--state-dir", str(tmp_path)]) == NOT_RUNNING_EXIT
    assert '"running":false' in capsys.readouterr().out


def test_a_manifest_whose_pid_is_gone_is_stale(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write(tmp_path, _dead_pid())
    assert main(["status", "--state-dir", str(tmp_path)]) == NOT_RUNNING_EXIT
    assert "stale" in capsys.readouterr().out
    assert main(["down", "--state-dir", str(tmp_path)]) == 0
    assert "nothing to stop" in capsys.readouterr().out


def test_a_pid_reused_by_another_program_is_not_the_stack(tmp_path: Path) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write(tmp_path, sleeper.pid)
        assert manifests.alive_pid(manifests.read(tmp_path)) is None
        assert main(["status", "--state-dir", str(tmp_path)]) == NOT_RUNNING_EXIT
    finally:
        sleeper.kill()
        sleeper.wait()


def test_the_manifest_round_trips_and_a_broken_one_reads_as_none(tmp_path: Path) -> None:
    _write(tmp_path, 12345, status="starting")
    read = manifests.read(tmp_path)
    assert read is not None and read.pid == 12345 and read.children[0].name == "gateway"
    assert not list(tmp_path.glob("*.tmp"))
    (tmp_path / "stack.json").write_text("{half")
    assert manifests.read(tmp_path) is None


def test_logs_without_a_log_says_how_to_get_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["logs", "--state-dir", str(tmp_path)]) == 1
    assert "--detach" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("line", "part"),
    [
        ("gateway     | INFO:     started\n", "gateway"),
        ("runner-cpu0 | epoch 1\n", "runner-cpu0"),
        ("runner-gpu10| x\n", "runner-gpu10"),
        ("00:12:33 INFO    trainforge.up: gateway started (pid 3)\n", "up"),
        ("  File \"x.py\", line 1 | y\n", "up"),
    ],
)
def test_each_log_line_belongs_to_a_part(line: str, part: str) -> None:
    assert part_of(line) == part


def test_down_waits_then_force_kills_an_up_that_does_not_stop(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A stand-in `up` (its argv reads `... up trainforge`) that ignores SIGTERM, with a child in its group."""
    code = ("import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "subprocess.Popen([sys.executable, '-c', 'import signal, time; "
            "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)']); print('ready', flush=True); "
            "time.sleep(120)")
    stuck = subprocess.Popen([sys.executable, "-c", code, "up", "trainforge"], start_new_session=True,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert stuck.stdout is not None and stuck.stdout.readline().strip() == "ready"
        _write(tmp_path, stuck.pid)
        assert main(["down", "--state-dir", str(tmp_path), "--timeout", "1"]) == 1
        assert "--force" in capsys.readouterr().err and stuck.poll() is None
        assert main(["down", "--state-dir", str(tmp_path), "--timeout", "1", "--force"]) == 0
        assert stuck.wait(10) == -9
        group = subprocess.run(["pgrep", "-g", str(stuck.pid)], capture_output=True, text=True).stdout.split()
        assert [pid for pid in map(int, group) if manifests.pid_alive(pid)] == []  # its child went with the group
    finally:
        if stuck.poll() is None:
            stuck.kill()
            stuck.wait()
