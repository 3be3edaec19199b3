"""Check a custom model architecture (an Ultralytics model YAML) before anyone trains it.

`validate_architecture(yaml_text, imgsz)` builds the model on the CPU and runs one forward pass: it answers
the layers (module, inputs, parameters, output shape), the total parameters, GFLOPs and output shapes, or
the first error with the YAML line of the offending layer. `check_model_yaml` is the safety gate used for
every YAML from a client: layer modules must be torch modules (Ultralytics otherwise resolves and calls any
name it can see), the activation a literal `nn.X(...)` call, sizes bounded.

Each argument is bounded, not their product: before anything real is built, `check_budget` builds the model
on torch's `meta` device (shapes only, no memory) and runs the forward pass there, layer by layer, counting
parameters, FLOPs and output activations; the first layer past a `Budget` is refused by name. The gateway
runs all of this in a child process with a memory limit (`runner.yolo.architecture_child`).
"""

from __future__ import annotations

import copy
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from runner.yolo.offline import prepare_ultralytics

MAX_LAYERS = 512
MAX_REPEATS = 64
MAX_CHANNELS = 16_384
DETECT_PROBE_SIZE = 256
"""Ultralytics builds a detection-family model with a forward pass at this size (to learn its strides)."""


@dataclass(frozen=True, kw_only=True)
class Budget:
    """What one validation may build: totals up to each layer, at the forward pass's image size (batch 1,
    float32). The defaults are the gateway's (`architecture_max_*` settings); every stock model passes them
    at 640 (yolov8x: 68 M parameters, 258 GFLOPs)."""

    max_params: int = 100_000_000
    max_gflops: float = 3000.0
    max_activation_mb: float = 2048.0
    """Sum of the layers' outputs (what a forward pass that kept every output would hold; yolov8x at 640:
    184 MB, at 2048: 1,887 MB)."""


class ArchitectureError(ValueError):
    """The model YAML is not a usable architecture."""

    def __init__(self, message: str, *, layer: int | None = None, line: int | None = None,
                 reason: str = "invalid") -> None:
        super().__init__(message)
        self.layer = layer
        self.line = line
        self.reason = reason
        """`invalid`, `budget` (past a `Budget`) or `memory` (the real build ran out of memory)."""


def validate_architecture(yaml_text: str, imgsz: int = 640, *, channels: int = 3, state_dir: Path | None = None,
                          budget: Budget | None = None) -> dict:
    """Build the model of `yaml_text` and describe it; `{"valid": False, "error", "line", "layer", "reason"}`
    if it fails. The `budget` (default: `Budget()`) is checked on the meta device first.

    CPU-bound (seconds for large models): run it in a child process with a memory limit, as the gateway does.
    """
    prepare_ultralytics(state_dir or Path(tempfile.gettempdir()) / "trainforge-ultralytics")
    try:
        cfg, lines = parse_model_yaml(yaml_text)
        check_model_yaml(cfg, lines)
        check_budget(cfg, lines, imgsz, channels, budget or Budget())
        return _describe(cfg, lines, imgsz, channels)
    except ArchitectureError as exc:
        return {"valid": False, "error": str(exc), "layer": exc.layer, "line": exc.line, "reason": exc.reason}


def parse_model_yaml(yaml_text: str) -> tuple[dict[str, Any], list[int]]:
    """The YAML as a dict, and the 1-based line of each layer (backbone, then head)."""
    try:
        cfg = yaml.safe_load(yaml_text)
        root = yaml.compose(yaml_text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ArchitectureError(f"invalid YAML: {exc}", line=mark.line + 1 if mark else None) from exc
    if not isinstance(cfg, dict):
        raise ArchitectureError("a model YAML is a mapping with `backbone` and `head` lists", line=1)
    lines: list[int] = []
    for section in ("backbone", "head"):
        items = cfg.get(section)
        if not isinstance(items, list) or not items:
            raise ArchitectureError(f"`{section}` must be a non-empty list of [from, repeats, module, args]", line=1)
        node = next((v for k, v in root.value if k.value == section), None)  # type: ignore[union-attr]
        lines.extend(item.start_mark.line + 1 for item in node.value)  # type: ignore[union-attr]
    return cfg, lines


def check_model_yaml(cfg: dict[str, Any], lines: list[int] | None = None) -> None:
    """Refuse what Ultralytics would evaluate unsafely or what would exhaust memory; raises ArchitectureError."""
    import torch
    from ultralytics.nn import tasks

    layers = cfg["backbone"] + cfg["head"]
    if len(layers) > MAX_LAYERS:
        raise ArchitectureError(f"at most {MAX_LAYERS} layers")
    for i, layer in enumerate(layers):
        line = lines[i] if lines else None
        if not isinstance(layer, list) or len(layer) != 4:
            raise ArchitectureError(f"layer {i}: expected [from, repeats, module, args]", layer=i, line=line)
        source, repeats, module, args = layer
        if not isinstance(module, str) or not _is_torch_module(module, tasks, torch):
            raise ArchitectureError(f"layer {i}: unknown module {module!r}", layer=i, line=line)
        if not (isinstance(repeats, int) and 1 <= repeats <= MAX_REPEATS):
            raise ArchitectureError(f"layer {i}: repeats must be 1..{MAX_REPEATS}", layer=i, line=line)
        if not (isinstance(source, int) or (isinstance(source, list) and all(isinstance(s, int) for s in source))):
            raise ArchitectureError(f"layer {i}: `from` must be a layer index or a list of them", layer=i, line=line)
        if not isinstance(args, list):
            raise ArchitectureError(f"layer {i}: args must be a list", layer=i, line=line)
        if any(isinstance(a, int) and not isinstance(a, bool) and a > MAX_CHANNELS for a in args):
            raise ArchitectureError(f"layer {i}: values above {MAX_CHANNELS} are not accepted", layer=i, line=line)
    if (activation := cfg.get("activation")) is not None:
        try:
            tasks._SafeLoad.activation(str(activation))
        except Exception as exc:  # noqa: BLE001 - Ultralytics raises TypeError/AssertionError
            raise ArchitectureError(f"activation {activation!r}: use a torch module call like nn.SiLU()") from exc


def check_budget(cfg: dict[str, Any], lines: list[int], imgsz: int, channels: int, budget: Budget) -> list[dict]:
    """Build the model on the meta device and run its forward pass there (at `imgsz`, or at the size
    Ultralytics probes a detection model at if larger); raise ArchitectureError (reason `budget`) at the first
    layer whose running totals pass `budget`. Answers each layer's params, flops and activation bytes.

    Nothing is allocated for parameters or activations. A layer that cannot run on the meta device ends the
    check there (the real build then reports its error; the child's memory limit still holds).
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from ultralytics.nn import tasks
    from ultralytics.nn.modules.head import Detect

    layers_cfg = cfg["backbone"] + cfg["head"]

    def refuse(i: int, what: str) -> ArchitectureError:
        module = layers_cfg[i][2] if i < len(layers_cfg) else "?"
        return ArchitectureError(f"layer {i} ({module}): {what}", layer=i, line=lines[i] if i < len(lines) else None,
                                 reason="budget")

    try:
        with torch.device("meta"):
            model, save = tasks.parse_model(copy.deepcopy(cfg), ch=channels, verbose=False)
    except Exception:  # noqa: BLE001 - the real build reports construction errors with their layer
        return []
    rows: list[dict] = []
    params = 0
    for m in model:
        params += sum(p.numel() for p in m.parameters())
        rows.append({"index": m.i, "params": sum(p.numel() for p in m.parameters())})
        if params > budget.max_params:
            raise refuse(m.i, f"the model would have {params:,} parameters by this layer; "
                              f"at most {budget.max_params:,} are allowed")
    detect = any(isinstance(m, Detect) for m in model.modules())
    size = max(imgsz, DETECT_PROBE_SIZE) if detect else imgsz
    model.eval()
    for m in model.modules():
        if isinstance(m, Detect):
            m.training = True  # the raw feature maps, as Ultralytics' stride probe: no anchors on meta
    flops = 0
    activation = 0
    outputs: list[Any] = []
    try:
        with torch.device("meta"), torch.no_grad():
            x: Any = torch.zeros(1, channels, size, size)
            for m, row in zip(model, rows, strict=False):
                if m.f != -1:
                    x = outputs[m.f] if isinstance(m.f, int) else [x if j == -1 else outputs[j] for j in m.f]
                with FlopCounterMode(display=False) as counter:
                    x = m(x)
                outputs.append(x if m.i in save else None)
                row["flops"] = counter.get_total_flops()
                row["activation_bytes"] = 4 * _elements(x)
                flops += row["flops"]
                activation += row["activation_bytes"]
                if activation > budget.max_activation_mb * 2**20:
                    raise refuse(m.i, f"the forward pass at imgsz {size} would hold {activation / 2**20:,.1f} MB of "
                                      f"activations by this layer; at most {budget.max_activation_mb:,.0f} MB "
                                      "are allowed")
                if flops > budget.max_gflops * 1e9:
                    raise refuse(m.i, f"the forward pass at imgsz {size} would need {flops / 1e9:,.1f} GFLOPs by "
                                      f"this layer; at most {budget.max_gflops:,.1f} are allowed")
    except ArchitectureError:
        raise
    except Exception:  # noqa: BLE001 - shape errors are reported by the real forward pass, with its messages
        pass
    return rows


def _elements(value: Any) -> int:
    import torch

    if isinstance(value, torch.Tensor):
        return value.numel()
    if isinstance(value, list | tuple):
        return sum(_elements(v) for v in value)
    if isinstance(value, dict):
        return sum(_elements(v) for v in value.values())
    return 0


def _is_torch_module(name: str, tasks: Any, torch: Any) -> bool:
    if name.startswith("nn."):
        target = getattr(torch.nn, name[3:], None)
    elif name.startswith("torchvision.ops."):
        import torchvision.ops

        target = getattr(torchvision.ops, name[16:], None)
    else:
        target = vars(tasks).get(name)
    return isinstance(target, type) and issubclass(target, torch.nn.Module)


def _describe(cfg: dict[str, Any], lines: list[int], imgsz: int, channels: int) -> dict:
    import torch
    from ultralytics.nn import tasks
    from ultralytics.utils.torch_utils import get_flops

    task = tasks.guess_model_task(cfg) or "detect"
    model_class = {
        "detect": tasks.DetectionModel,
        "segment": tasks.SegmentationModel,
        "pose": tasks.PoseModel,
        "obb": tasks.OBBModel,
        "classify": tasks.ClassificationModel,
    }.get(task)
    if model_class is None:
        raise ArchitectureError(f"task {task!r} is not supported here")
    try:
        with torch.no_grad():  # the stride probe of a detection model keeps no autograd graph
            model = model_class(cfg=copy.deepcopy(cfg), ch=channels, nc=cfg.get("nc"), verbose=False)
        outputs: dict[int, Any] = {}
        hooks = [
            m.register_forward_hook(lambda mod, _in, out: outputs.__setitem__(mod.i, _shape(out))) for m in model.model
        ]
        model.eval()
        with torch.no_grad():
            output = model(torch.zeros(1, channels, imgsz, imgsz))
        for hook in hooks:
            hook.remove()
    except ArchitectureError:
        raise
    except Exception as exc:  # noqa: BLE001 - any construction or shape error is the YAML's
        layer = _failing_layer(exc)
        line = lines[layer] if layer is not None and layer < len(lines) else None
        where = f"layer {layer}: " if layer is not None else ""
        if _out_of_memory(exc):
            raise ArchitectureError(f"{where}out of memory building or running the model ({type(exc).__name__})",
                                    layer=layer, line=line, reason="memory") from None
        raise ArchitectureError(f"{where}{type(exc).__name__}: {exc}", layer=layer, line=line) from None
    layers = [
        {
            "index": m.i,
            "from": m.f,
            "module": m.type,
            "params": int(m.np),
            "output_shape": outputs.get(m.i),
            "line": lines[m.i] if m.i < len(lines) else None,
        }
        for m in model.model
    ]
    return {
        "valid": True,
        "task": task,
        "nc": int(getattr(model, "nc", 0) or cfg.get("nc") or 0),
        "names_count": len(getattr(model, "names", {}) or {}),
        "imgsz": imgsz,
        "layers": layers,
        "parameters": sum(p.numel() for p in model.parameters()),
        "gflops": round(get_flops(model, imgsz), 3),
        "stride": [int(s) for s in getattr(model, "stride", torch.tensor([])).tolist()],
        "output_shapes": _shape(output),
    }


def _shape(value: Any) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        return list(value.shape)
    if isinstance(value, list | tuple):
        return [_shape(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _shape(v) for k, v in value.items()}
    return None


def _out_of_memory(exc: BaseException) -> bool:
    """MemoryError, or torch's allocator failing (a RuntimeError: "... can't allocate memory ...")."""
    return isinstance(exc, MemoryError) or "can't allocate memory" in str(exc) or "std::bad_alloc" in str(exc)


def _failing_layer(exc: BaseException) -> int | None:
    """The index of the layer being built (`parse_model`) or run (`_predict_once`) when `exc` was raised."""
    layer = None
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        if frame.f_code.co_name == "parse_model" and isinstance(frame.f_locals.get("i"), int):
            layer = frame.f_locals["i"]
        elif frame.f_code.co_name == "_predict_once" and hasattr(frame.f_locals.get("m"), "i"):
            layer = frame.f_locals["m"].i
    return layer
