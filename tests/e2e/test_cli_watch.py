"""The command line against a real stack: `trainforge runs watch` follows a run live from its SSE stream and
exits with the run's outcome; `train` uploads and follows; `login`/`logout` keep and revoke an API token."""

from __future__ import annotations

import json
import os
import stat
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


def test_login_keeps_a_token_the_other_commands_use_and_logout_revokes_it(stack: Stack, tmp_path) -> None:
    admin = stack.api()
    created = admin.post("/users", json={"username": "lena", "password": "lena-password-1"})
    assert created.status_code == 201, created.text
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINFORGE_")}
    env.update({"PYTHONPATH": str(REPO), "TRAINFORGE_API_URL": stack.url, "XDG_CONFIG_HOME": str(tmp_path / "config"),
                "TRAINFORGE_STATE_DIR": str(tmp_path / "no-state")})

    def run(*args: str, password: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "trainforge.cli", *args], env=env, cwd=REPO, input=password,
                              capture_output=True, text=True, timeout=60)

    saved = tmp_path / "config" / "trainforge" / "credentials.json"
    refused = run("login", "-u", "lena", "--password-stdin", password="wrong\n")
    assert refused.returncode == 1 and "401" in refused.stderr and not saved.exists()
    assert run("runs", "list", "--project", "p").returncode == 1  # no token at all: 401

    logged_in = run("login", "-u", "lena", "--password-stdin", password="lena-password-1\n")
    assert logged_in.returncode == 0, logged_in.stderr
    assert str(saved) in logged_in.stdout and stat.S_IMODE(saved.stat().st_mode) == 0o600
    token = json.loads(saved.read_text())[stack.url]["token"]
    as_lena = {"Authorization": f"Bearer {token}"}
    assert admin.get("/auth/me", headers=as_lena).json()["username"] == "lena"
    assert admin.post("/projects", headers=as_lena, json={"name": "mine"}).status_code == 201
    listed = run("runs", "list", "--project", "mine")
    assert listed.returncode == 0 and "0 of 0" in listed.stdout, listed.stderr

    assert run("logout").returncode == 0
    assert stack.url not in json.loads(saved.read_text())
    assert admin.get("/auth/me", headers=as_lena).status_code == 401
    assert "not logged in" in run("logout").stdout
    admin.close()
