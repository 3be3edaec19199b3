"""`trainforge runs watch` follows a run live from its SSE stream and exits with the run's outcome."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.e2e.stackctl import REPO, Stack
from tests.e2e.test_backbone import start_run

pytestmark = pytest.mark.slow


def cli(stack: Stack, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TRAINFORGE_API_URL": stack.url, "TRAINFORGE_API_TOKEN": stack.token,
           "COLUMNS": "120"}
    return subprocess.run([sys.executable, "-m", "trainforge.cli", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def test_watch_prints_progress_logs_and_exits_0_when_the_run_completes(stack: Stack) -> None:
    run = start_run(stack, "for i in 1 2 3; do echo step $i/3; sleep 0.3; done")
    watched = cli(stack, "runs", "watch", run["id"])
    assert watched.returncode == 0, watched.stderr
    out = watched.stdout
    assert "queued" in out and "started" in out and "completed" in out
    assert out.index("step 1/3") < out.index("step 3/3") < out.index("completed")


def test_watch_exits_1_for_a_failed_run_and_cancel_ends_a_run(stack: Stack) -> None:
    failed = start_run(stack, "exit 4")
    result = cli(stack, "runs", "watch", failed["id"])
    assert result.returncode == 1 and "failed" in result.stdout

    sleeper = start_run(stack, "sleep 600")
    stack.wait_run(sleeper["id"], {"running"})
    assert cli(stack, "runs", "cancel", sleeper["id"]).returncode == 0
    assert cli(stack, "runs", "watch", sleeper["id"]).returncode == 2


def test_a_run_that_does_not_exist_is_a_clear_error(stack: Stack) -> None:
    result = cli(stack, "runs", "get", "0" * 32)
    assert result.returncode == 1 and "404" in result.stderr


def test_train_uploads_a_local_dataset_submits_a_yolo_training_and_follows_it_to_the_end(
    stack: Stack, tmp_path
) -> None:
    from tests.datagen import make_detect_dataset

    data = tmp_path / "shapes"
    make_detect_dataset(data, n_train=8, n_val=4, imgsz=64)
    result = cli(stack, "train", "--project", "cli", "--data", str(data), "--model", "yolov8n",
                 "--epochs", "1", "--imgsz", "64", "--batch", "4", "--device", "cpu", timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "uploading" in out and "queued in project cli" in out
    assert "epoch 1" in out and "completed" in out
