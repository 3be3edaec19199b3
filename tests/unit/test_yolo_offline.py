"""The offline setup of Ultralytics, and the torchvision repair on a CPU-only torch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from runner.yolo.offline import FONT_NAMES, prepare_ultralytics, torchvision_ops_load
from tests.netguard import RECORDER


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_ultralytics(tmp_path_factory.mktemp("yolo-state"))


def test_offline_setup_sets_environment_fonts_and_settings(config_dir: Path) -> None:
    from ultralytics.utils import SETTINGS, USER_CONFIG_DIR

    assert os.environ["YOLO_OFFLINE"] == "1" and os.environ["YOLO_AUTOINSTALL"] == "0"
    assert Path(USER_CONFIG_DIR).parent == config_dir
    for name in FONT_NAMES:
        assert (Path(USER_CONFIG_DIR) / name).stat().st_size > 100_000
    assert SETTINGS["sync"] is False
    assert prepare_ultralytics(config_dir / "elsewhere") == config_dir  # once per process


def test_every_setup_cuts_off_the_hosted_platform_and_trackers(config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A runner started with an Ultralytics Platform key (environment or settings) never hands it on: the
    variable is gone, the settings hold no key and no integration, and a trainer gets no Platform callback."""
    from ultralytics.utils import SETTINGS
    from ultralytics.utils.callbacks.base import add_integration_callbacks, get_default_callbacks

    monkeypatch.setenv("ULTRALYTICS_API_KEY", "ul_" + "0" * 40)
    monkeypatch.setenv("WANDB_API_KEY", "not-to-be-used")
    SETTINGS.update({"api_key": "ul_" + "1" * 40, "mlflow": True})
    prepare_ultralytics(config_dir)  # a later call (every job makes one) still cuts them off
    assert "ULTRALYTICS_API_KEY" not in os.environ and "WANDB_API_KEY" not in os.environ
    assert SETTINGS["api_key"] == "" and SETTINGS["mlflow"] is False and SETTINGS["sync"] is False

    class DetectionTrainer:  # what `add_integration_callbacks` looks at: the class name
        callbacks = get_default_callbacks()

    trainer = DetectionTrainer()
    add_integration_callbacks(trainer)
    modules = {fn.__module__ for fns in trainer.callbacks.values() for fn in fns}
    assert not any(m.endswith(("platform", "mlflow", "wb", "comet", "clearml")) for m in modules), modules


def test_torchvision_import_fails_without_the_repair_exactly_when_its_ops_do_not_load() -> None:
    probe = subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True, text=True, timeout=120)
    ops_load = subprocess.run(
        [sys.executable, "-c", "from runner.yolo.offline import torchvision_ops_load as f; print(f())"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ops_load.stdout.strip() in {"True", "False"}, ops_load.stderr
    assert (probe.returncode == 0) == (ops_load.stdout.strip() == "True"), probe.stderr[-500:]


def test_torchvision_nms_after_the_setup_matches_ultralytics_torch_nms(config_dir: Path) -> None:
    import torch
    import torchvision
    from ultralytics.utils.nms import TorchNMS

    generator = torch.Generator().manual_seed(0)
    xy = torch.rand(500, 2, generator=generator) * 100
    wh = torch.rand(500, 2, generator=generator) * 30 + 1
    boxes = torch.cat([xy, xy + wh], 1)
    scores = torch.rand(500, generator=generator)
    for threshold in (0.3, 0.5, 0.7):
        expected = TorchNMS.nms(boxes, scores, threshold)
        assert torch.equal(torchvision.ops.nms(boxes, scores, threshold), expected)
    assert torchvision.ops.nms(boxes[:0], scores[:0], 0.5).numel() == 0
    if not torchvision_ops_load():
        batched = torchvision.ops.batched_nms(boxes, scores, torch.randint(0, 3, (500,), generator=generator), 0.5)
        assert batched.numel() > 0


def test_network_recorder_sees_name_lookups() -> None:
    with RECORDER.recording() as events:
        before = len(events)
        with pytest.raises(OSError):
            socket.getaddrinfo("trainforge-test.invalid", 80)
        seen = events[before:]
        del events[before:]
    assert [event for event, _ in seen] == ["socket.getaddrinfo"]
