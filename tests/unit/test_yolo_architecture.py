"""Checking custom model YAMLs, and listing export formats."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.yolo.architecture import Budget, check_budget, parse_model_yaml, validate_architecture
from runner.yolo.export import export_formats
from tests.architecture_support import FULL_RESOLUTION, WIDE_CONVS, rss_mb


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


# -- the validation budget (meta device: nothing is allocated) ---------------------------------------------

ONE_WIDE_LAYER = """\
nc: 2
backbone:
  - [-1, 1, Conv, [64, 3, 2]]
  - [-1, 1, Conv, [16384, 3, 2]]
head:
  - [-1, 1, Classify, [nc]]
"""


def test_a_model_past_the_parameter_budget_is_refused_at_its_layer_before_anything_is_built(yolov8_yaml: str) -> None:
    before = rss_mb()
    report = validate_architecture(WIDE_CONVS, imgsz=32)

    assert report["valid"] is False and report["reason"] == "budget"
    assert (report["layer"], report["line"]) == (1, 4)
    assert report["error"].startswith("layer 1 (Conv): the model would have 151,121,920 parameters by this layer")
    assert "at most 100,000,000 are allowed" in report["error"]
    assert rss_mb() - before < 100  # 151 M float32 parameters would be 600 MB


def test_activation_and_flops_budgets_are_counted_at_the_requested_imgsz(yolov8_yaml: str) -> None:
    wide = validate_architecture(ONE_WIDE_LAYER, imgsz=2048)
    assert wide["valid"] is False and wide["layer"] == 1 and wide["line"] == 4
    assert "(Conv): the forward pass at imgsz 2048 would hold 16,640.0 MB of activations" in wide["error"]

    full = validate_architecture(FULL_RESOLUTION, imgsz=2048)
    assert full["valid"] is False and full["layer"] == 2 and "at most 2,048 MB are allowed" in full["error"]
    assert validate_architecture(FULL_RESOLUTION, imgsz=256)["valid"]

    flops = validate_architecture(ONE_WIDE_LAYER, imgsz=640, budget=Budget(max_gflops=100))
    assert flops["valid"] is False and flops["layer"] == 1 and "at most 100.0 are allowed" in flops["error"]
    assert "GFLOPs by this layer" in flops["error"]


def test_detection_models_are_budgeted_at_the_size_ultralytics_builds_them_at(yolov8_yaml: str) -> None:
    cfg, lines = parse_model_yaml("scale: x\n" + yolov8_yaml)
    at_32 = check_budget(cfg, lines, 32, 3, Budget())
    at_256 = check_budget(cfg, lines, 256, 3, Budget())
    assert sum(r["activation_bytes"] for r in at_32) == sum(r["activation_bytes"] for r in at_256) > 0


@pytest.mark.parametrize("name", ["v8/yolov8.yaml", "11/yolo11.yaml", "v8/yolov8-cls.yaml", "11/yolo11-seg.yaml"])
def test_stock_models_pass_the_default_budget_even_at_their_largest_scale(yolov8_yaml: str, name: str) -> None:
    import ultralytics

    cfg, lines = parse_model_yaml("scale: x\n" + (Path(ultralytics.__file__).parent / "cfg/models" / name).read_text())
    rows = check_budget(cfg, lines, 640, 3, Budget())
    assert len(rows) == len(lines) and all("flops" in r for r in rows)  # the meta forward pass ran every layer
    assert 20_000_000 < sum(r["params"] for r in rows) < Budget().max_params
