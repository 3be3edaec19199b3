"""`yolo.export`: export a model to a deployment format, and which formats this runner can produce."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any

from runner.executors.base import Completed, Outcome
from runner.yolo.bridge import JobBridge, LogForwarder
from runner.yolo.inputs import InputError, ModelSource
from shared.contracts.yolo import YoloExportSpec

FORMAT_MODULES: dict[str, tuple[str, ...]] = {
    "torchscript": ("torch",),
    "onnx": ("onnx", "onnxslim", "onnxruntime"),
    "openvino": ("openvino",),
    "engine": ("tensorrt", "onnx"),
    "coreml": ("coremltools",),
    "coreai": ("coreai_torch",),
    "saved_model": ("tensorflow", "onnx2tf", "onnx"),
    "pb": ("tensorflow", "onnx2tf", "onnx"),
    "edgetpu": ("tensorflow", "onnx2tf", "onnx"),
    "litert": ("litert_torch", "ai_edge_litert"),
    "paddle": ("paddle", "x2paddle"),
    "mnn": ("MNN", "onnx"),
    "ncnn": ("ncnn", "pnnx"),
    "imx": ("model_compression_toolkit", "onnx"),
    "rknn": ("rknn", "onnx"),
    "executorch": ("executorch",),
    "axelera": ("axelera",),
    "deepx": ("dx_com", "onnx"),
    "qnn": ("onnxruntime_qnn", "onnx"),
    "hailo": ("hailo_sdk_client", "onnx"),
    "ascend": ("ais_bench", "onnx"),
    "xilinx": ("quark", "onnx"),
}
"""Python modules each export needs (Ultralytics would pip-install them at run time; this runner never does).
`edgetpu` also needs the `edgetpu_compiler` program."""
PROGRAMS = {"edgetpu": "edgetpu_compiler"}


def export_formats() -> list[dict[str, Any]]:
    """Every Ultralytics export format: name, `format` argument, file suffix, CPU/GPU support, arguments,
    and whether this deployment can produce it (`available`, with `missing` dependencies)."""
    import torch
    from ultralytics.engine.exporter import export_formats as ultralytics_formats

    table = ultralytics_formats()
    rows = []
    for name, argument, suffix, cpu, gpu, arguments in zip(
        table["Format"], table["Argument"], table["Suffix"], table["CPU"], table["GPU"], table["Arguments"], strict=False
    ):
        if argument == "-":
            continue  # PyTorch itself: the weights
        missing = [m for m in FORMAT_MODULES.get(argument, ()) if importlib.util.find_spec(m) is None]
        if (program := PROGRAMS.get(argument)) and shutil.which(program) is None:
            missing.append(program)
        device_ok = cpu or (gpu and torch.cuda.is_available())
        rows.append(
            {
                "format": argument,
                "name": name,
                "suffix": suffix,
                "description": f"{name} ({suffix})",
                "cpu": bool(cpu),
                "gpu": bool(gpu),
                "arguments": list(arguments),
                "available": not missing and bool(device_ok),
                "missing": missing if missing else ([] if device_ok else ["cuda"]),
            }
        )
    return rows


def run_export(
    spec: YoloExportSpec, model: ModelSource, data: str | None, device: str, folder: Path, bridge: JobBridge
) -> Outcome:
    from ultralytics import YOLO

    formats = {row["format"]: row for row in export_formats()}
    row = formats.get(spec.format)
    if row is None or not row["available"]:
        missing = ", ".join(row["missing"]) if row else "unknown format"
        raise InputError(f"this runner cannot export {spec.format!r} (missing: {missing})")
    bridge.raise_if_canceled()
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    # Ultralytics writes the export next to the weights: work on a copy in the run's folder.
    source = Path(model.source)
    local = folder / (source.name if model.weights else f"{source.stem}.pt")
    if model.weights:
        shutil.copyfile(source, local)
    else:  # an untrained model from a YAML: save it first, so the export has a file to sit next to
        YOLO(model.source).save(str(local))
    yolo = YOLO(str(local))
    args: dict[str, Any] = {
        "format": spec.format,
        "dynamic": spec.dynamic,
        "simplify": spec.simplify,
        "batch": spec.batch,
        "imgsz": spec.imgsz,
        "device": device,
    }
    if spec.int8 or spec.half:
        args["quantize"] = 8 if spec.int8 else 16
    if spec.opset is not None:
        args["opset"] = spec.opset
    if data is not None:
        args["data"] = data
    with LogForwarder(bridge):
        output = Path(yolo.export(**args))
    if not output.is_absolute():
        output = Path.cwd() / output
    artifact = output
    if output.is_dir():
        artifact = Path(shutil.make_archive(str(output), "zip", root_dir=output))
    size = artifact.stat().st_size
    uri = bridge.artifact(artifact, kind="model", meta={"format": spec.format, "imgsz": spec.imgsz})
    return Completed(result={"format": spec.format, "uri": uri, "name": artifact.name, "size_bytes": size})
