"""Runner identity and arguments: checked before anything connects."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from runner.agent import default_runner_id
from runner.devices import DeviceError, describe_device, list_gpus, parse_device
from runner.main import main
from shared.contracts.common import TOKEN_RE
from shared.settings import Settings


def test_default_runner_id_is_a_valid_subject_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "gpu-box.example.org" + "x" * 80)
    runner_id = default_runner_id("gpu", "cuda:1")
    assert TOKEN_RE.match(runner_id)
    assert runner_id.endswith(f"-gpu-cuda1-{__import__('os').getpid()}")


def test_devices_are_cpu_or_cuda_with_an_index() -> None:
    assert parse_device("cpu") == ("cpu", None)
    assert parse_device("cuda:3") == ("cuda", 3)
    for bad in ("gpu", "cuda", "cuda:x", "cpu;rm"):
        with pytest.raises(DeviceError):
            parse_device(bad)
    assert describe_device("cpu").kind == "cpu"


def test_a_missing_gpu_is_a_clear_error_not_a_crash() -> None:
    missing = len(list_gpus())
    with pytest.raises(DeviceError, match=f"cuda:{missing} not found"):
        describe_device(f"cuda:{missing}")


@pytest.mark.parametrize(("pool", "device", "slots"), [("bad pool", "cpu", 1), ("cpu", "tpu", 1), ("cpu", "cpu", 0)])
def test_main_refuses_unusable_arguments(tmp_path: Path, pool: str, device: str, slots: int,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(Settings(state_dir=tmp_path), pool=pool, device=device, slots=slots, runner_id=None) == 2
    assert "trainforge runner:" in capsys.readouterr().err
