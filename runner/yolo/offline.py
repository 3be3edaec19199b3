"""Make Ultralytics offline and self-contained, once per process, before it is imported.

What each step stops (measured, see FACTS.md "Ultralytics offline"):
- `YOLO_OFFLINE=1`: DNS probes at import, analytics, update checks, Sentry.
- `YOLO_AUTOINSTALL=0`: run-time `pip install` of missing export/runtime packages.
- `YOLO_CONFIG_DIR`, `MPLCONFIGDIR` (and `XDG_CACHE_HOME` when unset) under the state folder: nothing is
  written to `~/.config` or `~/.cache`.
- A TTF named `Arial.ttf` / `Arial.Unicode.ttf` in the config folder: the plotting code's font download.
- `settings.update({"sync": False})`: no telemetry even if the settings file says otherwise.
- No training data leaves the site: Ultralytics 8.4's Platform callback streams metrics, console output and
  weights to the hosted Ultralytics Platform whenever `ULTRALYTICS_API_KEY` is in the environment or an
  `api_key` in its settings. `cut_off_hosted_services()` (on every call, not only the first) removes that
  variable and the keys of the other hosted trackers from the process environment (so no job's child process
  inherits them either), blanks `api_key` and turns every integration off in the settings file it writes, and
  empties the Platform callback table, so no trainer is ever given those callbacks.

And, only where torchvision's compiled ops cannot load (a CUDA torchvision wheel beside a CPU torch):
`torchvision::nms`/`qnms` get operator schemas and a plain-torch CPU kernel so `import torchvision` works
and `torchvision.ops.nms` runs. On a machine where torchvision loads its ops, nothing is patched.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import sys
import threading
from pathlib import Path

import torch

log = logging.getLogger(__name__)

_lock = threading.Lock()
_config_dir: Path | None = None
_torchvision_lib: torch.library.Library | None = None
"""The library that defines the torchvision ops when its own `_C` extension cannot load (kept alive)."""

FONT_NAMES = ("Arial.ttf", "Arial.Unicode.ttf")


def prepare_ultralytics(state_dir: Path) -> Path:
    """Apply the offline setup once per process; returns the Ultralytics config folder in use.

    Later calls (with any state folder) return the folder chosen by the first: Ultralytics reads its
    environment once, at import.
    """
    global _config_dir
    with _lock:
        if _config_dir is not None:
            cut_off_hosted_services()
            return _config_dir
        config_dir = _set_environment(Path(state_dir))
        _install_font(config_dir / "Ultralytics")
        repair_torchvision_if_broken()
        cut_off_hosted_services()
        _config_dir = config_dir
        return config_dir


HOSTED_SERVICE_KEYS = (
    "ULTRALYTICS_API_KEY", "ULTRALYTICS_PLATFORM_URL", "HUB_API_KEY",
    "COMET_API_KEY", "WANDB_API_KEY", "CLEARML_API_ACCESS_KEY", "CLEARML_API_SECRET_KEY", "NEPTUNE_API_TOKEN",
    "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_TOKEN",
)
"""Environment variables that would let Ultralytics or one of its integrations send a training elsewhere."""

OFFLINE_SETTINGS = {"sync": False, "api_key": "", "clearml": False, "comet": False, "dvc": False, "mlflow": False,
                    "raytune": False, "tensorboard": False, "wandb": False}
"""Ultralytics settings that keep every training on this machine (integrations would log to hosted services)."""


def cut_off_hosted_services() -> None:
    """Make sure nothing Ultralytics runs can reach a hosted service with this process's credentials."""
    for name in HOSTED_SERVICE_KEYS:
        if os.environ.pop(name, None) is not None:
            log.warning("removed %s from the runner's environment: trainings never report to hosted services", name)
    from ultralytics.utils import SETTINGS
    from ultralytics.utils.callbacks import platform

    if any(SETTINGS.get(key) != value for key, value in OFFLINE_SETTINGS.items()):
        SETTINGS.update(OFFLINE_SETTINGS)
    platform.callbacks.clear()  # `add_integration_callbacks` gives every trainer this (now empty) table
    platform._api_key = None


def _set_environment(state_dir: Path) -> Path:
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "0"
    if "ultralytics" in sys.modules:  # too late to move its folders: keep the ones it chose
        from ultralytics.utils import USER_CONFIG_DIR

        log.warning("ultralytics was imported before the offline setup; its config folder stays %s", USER_CONFIG_DIR)
        return Path(USER_CONFIG_DIR).parent
    config_dir = (state_dir / "ultralytics").resolve()
    mpl_dir = (state_dir / "matplotlib").resolve()
    config_dir.mkdir(parents=True, exist_ok=True)
    mpl_dir.mkdir(parents=True, exist_ok=True)
    os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
    os.environ["MPLCONFIGDIR"] = str(mpl_dir)
    os.environ.setdefault("XDG_CACHE_HOME", str((state_dir / "cache").resolve()))  # onnxruntime writes a device id
    return config_dir


def _install_font(folder: Path) -> None:
    """Copy matplotlib's DejaVuSans as the fonts Ultralytics would otherwise download."""
    import matplotlib

    source = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    folder.mkdir(parents=True, exist_ok=True)
    for name in FONT_NAMES:
        target = folder / name
        if not target.exists():
            shutil.copyfile(source, target)


# -- torchvision on a CPU-only torch ----------------------------------------------------------------------


def torchvision_ops_load() -> bool:
    """Whether torchvision's compiled ops (`torchvision/_C`) load with this torch, tried without importing
    torchvision (whose import fails outright when they do not)."""
    if "torchvision" in sys.modules:
        from torchvision.extension import _has_ops

        return _has_ops()
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True  # not installed: nothing to repair
    package = Path(next(iter(spec.submodule_search_locations)))
    candidates = sorted(package.glob("_C.*so")) + sorted(package.glob("_C.*pyd"))
    if not candidates:
        return False
    try:
        torch.ops.load_library(str(candidates[0]))
    except (OSError, RuntimeError) as exc:
        log.info("torchvision's compiled ops do not load (%s)", exc)
        return False
    return True


def repair_torchvision_if_broken() -> bool:
    """Register `torchvision::nms`/`qnms` with a plain-torch CPU kernel when torchvision's own ops do not
    load; returns whether the repair was applied (now or earlier)."""
    global _torchvision_lib
    if _torchvision_lib is not None:
        return True
    if torchvision_ops_load():
        return False
    if "torchvision" in sys.modules:  # imported with broken ops already: cannot be repaired in place
        return False
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
    lib.impl("nms", _nms_cpu, "CPU")
    _torchvision_lib = lib
    import torchvision.ops.boxes

    torchvision.ops.boxes._assert_has_ops = lambda: None  # type: ignore[attr-defined]
    log.info("torchvision ops unavailable: using a plain-torch CPU nms")
    return True


def _nms_cpu(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS like torchvision's: indices of kept boxes (xyxy), by decreasing score."""
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    order = scores.argsort(0, descending=True)
    keep: list[torch.Tensor] = []
    while order.numel() > 0:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        if rest.numel() == 0:
            break
        w = (torch.minimum(x2[i], x2[rest]) - torch.maximum(x1[i], x1[rest])).clamp_(min=0)
        h = (torch.minimum(y2[i], y2[rest]) - torch.maximum(y1[i], y1[rest])).clamp_(min=0)
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter)
        order = rest[iou <= iou_threshold]
    return torch.stack(keep).to(torch.int64)
