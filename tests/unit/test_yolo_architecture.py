"""Checking custom model YAMLs, and listing export formats."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.yolo.architecture import validate_architecture
from runner.yolo.export import export_formats


@pytest.fixture(scope="module")
def yolov8_yaml(tmp_path_factory: pytest.TempPathFactory) -> str:
    from runner.yolo.offline import prepare_ultralytics

    prepare_ultralytics(tmp_path_factory.mktemp("yolo-state"))
    import ultralytics

    return (Path(ultralytics.__file__).parent / "cfg/models/v8/yolov8.yaml").read_text()


def test_valid_architecture_reports_layers_parameters_gflops_and_output_shapes(yolov8_yaml: str) -> None:
    report = validate_architecture("nc: 2\nscale: n\n" + yolov8_yaml.replace("nc: 80", ""), imgsz=128)

    assert report["valid"] and report["task"] == "detect" and report["nc"] == 2
    assert len(report["layers"]) == 23
    first = report["layers"][0]
    assert first["module"].endswith("Conv") and first["output_shape"] == [1, 16, 64, 64]
    assert yolov8_yaml.splitlines()[first["line"] - 3].lstrip().startswith("- [-1, 1, Conv")
    assert 2_000_000 < report["parameters"] < 4_000_000
    assert report["gflops"] > 0
    assert report["stride"] == [8, 16, 32]
    assert report["output_shapes"][0] == [1, 6, 336]  # 4 box + 2 classes, over 16² + 8² + 4² anchors


def test_shape_error_names_the_layer_and_its_line(yolov8_yaml: str) -> None:
    broken = yolov8_yaml.replace("[[-1, 6], 1, Concat, [1]] # cat backbone P4", "[[-1, 2], 1, Concat, [1]]")
    report = validate_architecture(broken, imgsz=128)

    assert report["valid"] is False and report["layer"] == 11
    assert "Concat" in broken.splitlines()[report["line"] - 1]
    assert "Sizes of tensors must match" in report["error"]


def test_modules_that_are_not_torch_layers_are_refused_before_anything_runs(yolov8_yaml: str) -> None:
    evil = yolov8_yaml.replace("[-1, 1, Conv, [64, 3, 2]]", "[-1, 1, attempt_download_asset, ['http://x']]")
    report = validate_architecture(evil, imgsz=128)
    assert report["valid"] is False and report["layer"] == 0 and "unknown module" in report["error"]

    report = validate_architecture("activation: __import__('os').system('id')\n" + yolov8_yaml, imgsz=128)
    assert report["valid"] is False and "activation" in report["error"]


def test_yaml_syntax_error_names_its_line(yolov8_yaml: str) -> None:
    report = validate_architecture("nc: 2\nbackbone:\n  - [-1, 1, Conv\n  - x: [\n", imgsz=128)
    assert report["valid"] is False and report["line"] in {3, 4} and "invalid YAML" in report["error"]


def test_export_formats_lists_every_format_and_what_this_runner_can_make(yolov8_yaml: str) -> None:
    formats = {row["format"]: row for row in export_formats()}

    assert {"torchscript", "onnx", "openvino", "engine", "coreml", "ncnn"} <= set(formats)
    assert formats["torchscript"]["available"] and formats["onnx"]["available"]
    assert formats["onnx"]["suffix"] == ".onnx" and "opset" in formats["onnx"]["arguments"]
    for row in formats.values():
        assert row["description"] and isinstance(row["available"], bool)
        assert row["available"] or row["missing"]
