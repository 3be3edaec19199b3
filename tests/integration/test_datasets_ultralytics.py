"""Prepared datasets load in Ultralytics' own dataset checker and loaders, offline."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib
import pytest

from gateway.datasets import prepare_dataset
from tests.dataset_factories import make_classify, make_coco, make_voc

# Runs in a fresh interpreter whose every network attempt raises.
CHECK = r"""
import json, sys
def no_network(event, args):
    if event in ("socket.connect", "socket.getaddrinfo"):
        raise RuntimeError(f"network attempt: {event} {args}")
sys.addaudithook(no_network)
data, task = sys.argv[1], sys.argv[2]
if task == "classify":
    from ultralytics.data.utils import check_cls_dataset
    info = check_cls_dataset(data)
    print(json.dumps({"nc": info["nc"], "names": list(info["names"].values())}))
else:
    from ultralytics.cfg import get_cfg
    from ultralytics.data.dataset import YOLODataset
    from ultralytics.data.utils import check_det_dataset
    info = check_det_dataset(data, autodownload=False)
    out = {"nc": info["nc"], "names": list(info["names"].values()), "boxes": {}}
    for split in ("train", "val"):
        ds = YOLODataset(img_path=info[split], data=info, task=task, imgsz=128, augment=False,
                         hyp=get_cfg(), batch_size=4)
        out["boxes"][split] = sum(len(lb["cls"]) for lb in ds.labels)
    print(json.dumps(out))
"""


def _check(data: str, task: str, tmp_path: Path) -> dict:
    config = tmp_path / "yolo_config"
    (config / "Ultralytics").mkdir(parents=True)
    font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        shutil.copy(font, config / "Ultralytics" / name)
    env = {**os.environ, "YOLO_CONFIG_DIR": str(config), "MPLCONFIGDIR": str(tmp_path / "mpl"),
           "YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "0"}
    proc = subprocess.run([sys.executable, "-c", CHECK, data, task], capture_output=True, text=True, env=env,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("make", [make_coco, make_voc])
def test_converted_datasets_load_in_ultralytics_offline(tmp_path: Path, make) -> None:
    make(tmp_path / "ds", 9)
    prepared = prepare_dataset(tmp_path / "ds", tmp_path / "out")
    info = _check(prepared.data, prepared.task, tmp_path)
    assert info["names"] == prepared.classes
    report = prepared.report.splits
    assert info["boxes"] == {"train": report["train"].instances, "val": report["val"].instances}


def test_prepared_classification_folders_load_in_ultralytics(tmp_path: Path) -> None:
    make_classify(tmp_path / "ds", per_class=4)
    prepared = prepare_dataset(tmp_path / "ds", tmp_path / "out")
    assert _check(prepared.data, "classify", tmp_path) == {"nc": 3, "names": prepared.classes}
