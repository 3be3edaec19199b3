"""Uploaded weights are unpickled without running foreign code, and without torch: only listed constructors
are called (torch's and numpy's answer placeholders), module classes are only filled from their state, and
anything else is refused before it runs. A real Ultralytics checkpoint is read the same with torch absent."""

from __future__ import annotations

import datetime
import os
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from gateway.weights import Instance, InvalidWeights, Tensor, UnsafeWeights, inspect_weights, safe_load, weights_format


def _with_pickle(path: Path, data: bytes) -> Path:
    """A torch zip checkpoint whose pickle is replaced by `data` (the tensor records are kept)."""
    torch.save({"x": 1}, path.with_suffix(".orig"))
    with zipfile.ZipFile(path.with_suffix(".orig")) as src, zipfile.ZipFile(path, "w") as out:
        for info in src.infolist():
            out.writestr(info, data if info.filename.endswith("data.pkl") else src.read(info))
    return path


class _Reduce:
    def __init__(self, func, args) -> None:  # noqa: ANN001
        self.func, self.args = func, args

    def __reduce__(self):  # noqa: ANN204
        return self.func, self.args


@pytest.mark.parametrize("func, args", [
    (os.system, ("touch {marker}",)),
    (eval, ("open({marker!r}, 'w')",)),
    (getattr, (str, "join")),
    (torch.nn.Linear, (3, 4)),  # an allowed layer class, but called: its __init__ would run
    (torch.load, ("{marker}",)),
])
def test_checkpoints_that_call_anything_but_plain_constructors_are_refused(
    tmp_path: Path, func, args  # noqa: ANN001
) -> None:
    marker = tmp_path / "owned"
    args = tuple(a.format(marker=str(marker)) if isinstance(a, str) else a for a in args)
    path = tmp_path / "evil.pt"
    torch.save({"model": _Reduce(func, args)}, path)
    with pytest.raises(UnsafeWeights, match="not allowed"):
        safe_load(path)
    assert not marker.exists()


def test_setting_the_state_of_a_class_object_is_refused(tmp_path: Path) -> None:
    # GLOBAL collections.OrderedDict; {"a": 1}; BUILD -> would set attributes on the class itself
    data = b"\x80\x02ccollections\nOrderedDict\n}X\x01\x00\x00\x00aK\x01sb."
    with pytest.raises(UnsafeWeights, match="sets the state"):
        safe_load(_with_pickle(tmp_path / "build.pt", data))


def test_opcodes_that_call_classes_directly_are_refused(tmp_path: Path) -> None:
    data = b"(icollections\nOrderedDict\n."  # INST
    with pytest.raises(UnsafeWeights, match="INST/OBJ"):
        safe_load(_with_pickle(tmp_path / "inst.pt", data))


def test_plain_values_tensors_and_layers_load(tmp_path: Path) -> None:
    layer = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.SiLU())
    value = {"model": layer, "metrics": {"map": np.float64(0.5), "n": np.int64(3)}, "array": np.arange(3),
             "size": torch.Size([2]), "date": datetime.datetime(2026, 1, 2), "path": Path("/x"),
             "tags": {"a"}, "raw": b"\x00\xff",
             "ordered": OrderedDict(a=1), "half": torch.ones(2, dtype=torch.float16)}
    path = tmp_path / "ok.pt"
    torch.save(value, path)
    loaded = safe_load(path)
    model = loaded["model"]
    assert isinstance(model, Instance) and model.cls.name == "Sequential"
    conv = model.get("_modules")["0"]
    assert conv.cls.module == "torch.nn.modules.conv" and conv.get("out_channels") == 4
    weight = conv.get("_parameters")["weight"]
    assert isinstance(weight, Tensor) and weight.size == (4, 3, 3, 3)
    assert loaded["metrics"] == {"map": 0.5, "n": 3} and loaded["date"] == datetime.datetime(2026, 1, 2)
    assert loaded["size"] == (2,) and loaded["path"] == Path("/x") and loaded["raw"] == b"\x00\xff"
    assert loaded["tags"] == {"a"} and loaded["ordered"] == OrderedDict(a=1)
    assert loaded["half"].storage == "HalfStorage"


def test_an_ultralytics_checkpoint_is_inspected_without_torch_in_the_process(tmp_path: Path) -> None:
    """Task, class names, metrics and version of a real checkpoint, read in a process that has no torch."""
    import subprocess
    import sys

    from runner.yolo.offline import prepare_ultralytics

    prepare_ultralytics(tmp_path / "state")
    from ultralytics import YOLO

    model = YOLO("yolov8n-seg.yaml")
    model.model.names = {0: "cat", 1: "dog"}
    model.save(tmp_path / "seg.pt")
    probe = ("import sys, json; from pathlib import Path; from gateway.weights import inspect_weights; "
             "info = inspect_weights(Path(sys.argv[1])); "
             "print(json.dumps([info.task, info.class_names, info.ultralytics_version, "
             "sorted(m for m in ('torch', 'ultralytics', 'numpy') if m in sys.modules)]))")
    out = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "seg.pt")], capture_output=True, text=True,
                         check=True).stdout
    import json

    import ultralytics

    assert json.loads(out) == ["segment", ["cat", "dog"], ultralytics.__version__, []]
    assert inspect_weights(tmp_path / "seg.pt").task == "segment"


def test_files_that_are_not_torch_zip_checkpoints_are_invalid(tmp_path: Path) -> None:
    legacy = tmp_path / "legacy.pt"
    torch.save({"x": 1}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(InvalidWeights, match="not a PyTorch checkpoint"):
        safe_load(legacy)

    scripted = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), scripted)
    with pytest.raises(InvalidWeights, match="TorchScript"):
        safe_load(scripted)

    compressed = tmp_path / "compressed.pt"
    torch.save({"x": 1}, tmp_path / "plain.pt")
    with zipfile.ZipFile(tmp_path / "plain.pt") as src, \
            zipfile.ZipFile(compressed, "w", zipfile.ZIP_DEFLATED) as out:
        for info in src.infolist():
            out.writestr(info.filename, src.read(info))
    with pytest.raises(InvalidWeights, match="compressed"):
        safe_load(compressed)

    garbage = _with_pickle(tmp_path / "garbage.pt", b"\x80\x02}q\x00(")  # truncated pickle
    with pytest.raises(InvalidWeights, match="cannot be loaded"):
        safe_load(garbage)


def test_the_format_comes_from_the_file_name() -> None:
    assert [weights_format(n) for n in ("a.pt", "b.ONNX", "c.torchscript")] == ["pt", "onnx", "torchscript"]
    with pytest.raises(InvalidWeights):
        weights_format("d.bin")




def test_the_preprocessing_transforms_of_classification_checkpoints_load(tmp_path: Path) -> None:
    from runner.yolo.offline import prepare_ultralytics

    prepare_ultralytics(tmp_path / "state")  # torchvision imports only once its ops are in place
    from torchvision import transforms as T

    pipeline = T.Compose([T.Resize(64, interpolation=T.InterpolationMode.BILINEAR), T.CenterCrop(64),
                          T.ToTensor(), T.Normalize((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))])
    torch.save({"transforms": pipeline}, tmp_path / "cls.pt")
    loaded = safe_load(tmp_path / "cls.pt")["transforms"]
    steps = loaded.get("transforms")
    assert [t.cls.name for t in steps] == ["Resize", "CenterCrop", "ToTensor", "Normalize"]
    assert steps[0].get("interpolation").value == T.InterpolationMode.BILINEAR.value
