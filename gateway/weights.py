"""Safe inspection of uploaded Ultralytics weights (`.pt`): load without running foreign code, read task,
class names and metrics.

A `.pt` is a zip holding a pickle; unpickling an untrusted pickle runs whatever callables it names
(`os.system`, ...). `safe_load` unpickles with a restricted unpickler:
- a global may only be one of a fixed list of harmless constructors (`collections.OrderedDict`, `set`,
  `torch.Size`, torch's tensor/parameter rebuild functions, numpy scalars/arrays, datetimes, paths), a torch
  dtype, or an `nn.Module` class defined in `torch.nn.modules.*`, `ultralytics.nn.modules.*` or
  `ultralytics.nn.tasks`;
- only the constructors may be called (REDUCE); module classes are only created empty (`cls.__new__`) and
  filled from their pickled state (BUILD), never called with arguments, so no `__init__` runs;
- the opcodes that call a class directly (INST, OBJ) are refused, and BUILD only fills instances of the
  allowed classes (never a class or module object).
Whatever passes therefore only ever calls the listed constructors, also when a runner later loads the file
with a plain `torch.load`. The archive must be a torch zip with uncompressed members (as `torch.save`
writes it); TorchScript archives and the legacy format are refused.

Blocking: call `inspect_weights` from a worker thread.
"""

from __future__ import annotations

import enum
import functools
import importlib
import math
import pickle
import re
import types
import warnings
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MODULE_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")

CONSTRUCTORS: frozenset[tuple[str, str]] = frozenset({
    ("collections", "OrderedDict"),
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "slice"), ("builtins", "complex"),
    ("builtins", "int"), ("builtins", "float"), ("builtins", "bool"), ("builtins", "str"),
    ("builtins", "tuple"), ("builtins", "list"), ("builtins", "dict"),
    ("_codecs", "encode"),  # bytes pickled with protocol 2 (not `bytes(n)`/`bytearray(n)`: n zeroed bytes)
    ("torch", "Size"), ("torch", "device"),
    ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("datetime", "datetime"), ("datetime", "date"), ("datetime", "time"), ("datetime", "timedelta"),
    ("datetime", "timezone"),
    ("pathlib", "Path"), ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"), ("pathlib", "WindowsPath"),
    ("pathlib", "PureWindowsPath"),
    ("types", "SimpleNamespace"), ("ultralytics.utils", "IterableSimpleNamespace"),
})
"""Globals a checkpoint may call: constructors of plain values that run no foreign code."""

ENUM_LOOKUPS: frozenset[tuple[str, str]] = frozenset({("torchvision.transforms.functional", "InterpolationMode")})
"""Enum classes a checkpoint may call: `Enum(value)` only looks a member up."""

TRANSFORM_CLASSES: frozenset[tuple[str, str]] = frozenset(
    ("torchvision.transforms.transforms", name) for name in ("Compose", "Resize", "CenterCrop", "Normalize", "ToTensor")
)
"""Preprocessing objects a classification checkpoint holds (`model.transforms`, written by Ultralytics'
training). Created empty and filled from their pickled `__dict__`, like layers; none defines `__setstate__`."""

OTHER_GLOBALS: frozenset[tuple[str, str]] = frozenset({("numpy", "ndarray")})
"""Globals a checkpoint may name without calling them (an argument of `_reconstruct`)."""

MODULE_PACKAGES = ("torch.nn.modules.", "ultralytics.nn.modules.")
MODULE_MODULES = frozenset({"ultralytics.nn.tasks"})
"""Where the `nn.Module` classes a checkpoint may hold are defined."""

TASK_OF_CLASS = {"DetectionModel": "detect", "SegmentationModel": "segment", "PoseModel": "pose",
                 "OBBModel": "obb", "ClassificationModel": "classify"}
TASKS = frozenset(TASK_OF_CLASS.values())


class WeightsError(Exception):
    """The weights cannot be used."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__doc__)


class UnsafeWeights(WeightsError):
    """The file references code that is not allowed in model weights."""


class InvalidWeights(WeightsError):
    """The file is not Ultralytics weights that can be loaded."""


@dataclass(frozen=True)
class WeightsInfo:
    task: str
    class_names: list[str]
    metrics: dict[str, float] = field(default_factory=dict)
    ultralytics_version: str | None = None


# -- the restricted unpickler ---------------------------------------------------------------------------


def _resolve(module: str, name: str) -> Any:
    if not _MODULE_PATH.fullmatch(module) or not _IDENTIFIER.fullmatch(name):
        raise UnsafeWeights(f"the file names a malformed global {module}.{name}")
    key = (module, name)
    if key in CONSTRUCTORS or key in OTHER_GLOBALS or key in ENUM_LOOKUPS or key in TRANSFORM_CLASSES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                return getattr(importlib.import_module(module), name)
            except (ImportError, AttributeError) as exc:
                raise InvalidWeights(f"the file needs {module}.{name}, which this server lacks") from exc
    if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
        return getattr(torch, name)
    if module.startswith(MODULE_PACKAGES) or module in MODULE_MODULES:
        try:
            obj = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            raise InvalidWeights(f"the file needs the layer {module}.{name}, which this server's "
                                 "Ultralytics lacks (a newer Ultralytics version?)") from exc
        if isinstance(obj, type) and issubclass(obj, torch.nn.Module) and obj.__module__ == module:
            return obj
    raise UnsafeWeights(f"the file references {module}.{name}, which is not allowed in model weights")


@functools.cache
def _constructors() -> dict[int, Any]:
    """id -> object of every constructor this server has (numpy 1 and 2 name theirs differently)."""
    found = {}
    for module, name in CONSTRUCTORS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # numpy 2 warns about numpy.core
            try:
                obj = getattr(importlib.import_module(module), name)
            except (ImportError, AttributeError):
                continue
        found[id(obj)] = obj
    return found


class _RestrictedUnpickler(pickle._Unpickler):  # noqa: SLF001
    """The pure-Python unpickler (its opcodes can be overridden), restricted as the module docstring says.

    `torch.load` subclasses it (to map storages) and sets `persistent_load`.
    """

    dispatch = dict(pickle._Unpickler.dispatch)  # noqa: SLF001

    def find_class(self, module: str, name: str) -> Any:
        if self.proto < 3 and self.fix_imports:
            import _compat_pickle

            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        return _resolve(module, name)

    def load_reduce(self) -> None:
        args = self.stack.pop()
        func = self.stack[-1]
        if id(func) not in _constructors() and not _is_enum_lookup(func, args):
            raise UnsafeWeights(f"the file calls {_name(func)}, which is not allowed in model weights")
        self.stack[-1] = func(*args)

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(_check_module_class(cls).__new__(cls, *args))

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(_check_module_class(cls).__new__(cls, *args, **kwargs))

    def load_build(self) -> None:
        inst = self.stack[-2]  # below the state
        if not _buildable(inst):
            raise UnsafeWeights(f"the file sets the state of {_name(type(inst))}, which is not allowed")
        super().load_build()

    def load_refused(self) -> None:
        raise UnsafeWeights("the file uses a pickle opcode that calls classes directly (INST/OBJ)")

    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex
    dispatch[pickle.BUILD[0]] = load_build
    dispatch[pickle.INST[0]] = load_refused
    dispatch[pickle.OBJ[0]] = load_refused


def _check_module_class(cls: Any) -> type:
    if isinstance(cls, type) and (issubclass(cls, torch.nn.Module) or _is_transform(cls)):
        return cls
    raise UnsafeWeights(f"the file creates {_name(cls)} objects, which is not allowed in model weights")


def _buildable(inst: Any) -> bool:
    if isinstance(inst, type | types.ModuleType | types.FunctionType | types.BuiltinFunctionType):
        return False
    if isinstance(inst, torch.nn.Module | torch.Tensor | OrderedDict | types.SimpleNamespace):
        return True
    if _is_transform(type(inst)):
        return True
    numpy = importlib.import_module("numpy")
    return isinstance(inst, numpy.ndarray | numpy.dtype)


def _is_enum_lookup(func: Any, args: Any) -> bool:
    return (isinstance(func, enum.EnumMeta) and (func.__module__, func.__qualname__) in ENUM_LOOKUPS
            and isinstance(args, tuple) and len(args) == 1 and isinstance(args[0], str | int))


def _is_transform(cls: type) -> bool:
    return (cls.__module__, cls.__qualname__) in TRANSFORM_CLASSES and "__setstate__" not in vars(cls)


def _name(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"


RESTRICTED_PICKLE = types.SimpleNamespace(
    __name__="trainforge_restricted_pickle",
    Unpickler=_RestrictedUnpickler,
    UnpicklingError=pickle.UnpicklingError,
    load=lambda file, **kw: _RestrictedUnpickler(file, **kw).load(),
)
"""A `pickle_module` for `torch.load`."""


# -- loading and inspecting -------------------------------------------------------------------------------


def check_archive(path: Path) -> None:
    """A torch zip checkpoint with uncompressed members, not TorchScript. Raises `InvalidWeights`."""
    if not zipfile.is_zipfile(path):
        raise InvalidWeights("the file is not a PyTorch checkpoint (a zip as written by torch.save)")
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise InvalidWeights(f"the checkpoint archive is damaged: {exc}") from exc
    names = [i.filename for i in infos]
    if not any(n.endswith("data.pkl") for n in names):
        raise InvalidWeights("the archive holds no pickled checkpoint (data.pkl)")
    if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
        raise InvalidWeights("TorchScript archives are not accepted; upload an Ultralytics .pt checkpoint")
    if any(i.compress_type != zipfile.ZIP_STORED for i in infos):
        raise InvalidWeights("the checkpoint archive has compressed members; torch.save never writes those")


def safe_load(path: Path) -> Any:
    """Unpickle the checkpoint at `path` without running foreign code (see the module docstring)."""
    check_archive(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=RESTRICTED_PICKLE)
    except WeightsError:
        raise
    except Exception as exc:  # noqa: BLE001 - anything else a damaged or foreign file makes torch raise
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, WeightsError):
            raise cause from exc
        raise InvalidWeights(f"the checkpoint cannot be loaded: {type(exc).__name__}: {exc}") from exc


def inspect_weights(path: Path, state_dir: Path) -> WeightsInfo:
    """Task, class names and training metrics of the Ultralytics checkpoint at `path`."""
    from runner.yolo.offline import prepare_ultralytics

    prepare_ultralytics(state_dir)  # Ultralytics' layers are imported while loading: keep it offline
    ckpt = safe_load(path)
    if not isinstance(ckpt, dict):
        raise InvalidWeights("the file is not an Ultralytics checkpoint (expected a dict with a 'model')")
    model = ckpt.get("ema") or ckpt.get("model")
    if not isinstance(model, torch.nn.Module):
        raise InvalidWeights("the checkpoint holds no model ('model' is missing or not a network)")
    version = ckpt.get("version")
    return WeightsInfo(task=_task(model, ckpt), class_names=_class_names(model), metrics=_metrics(ckpt),
                       ultralytics_version=version if isinstance(version, str) else None)


def _task(model: torch.nn.Module, ckpt: dict[str, Any]) -> str:
    candidates = [model.__dict__.get("task"), (ckpt.get("train_args") or {}).get("task")
                  if isinstance(ckpt.get("train_args"), dict) else None]
    candidates.append(next(
        (TASK_OF_CLASS[c.__name__] for c in type(model).__mro__ if c.__name__ in TASK_OF_CLASS), None))
    for task in candidates:
        if isinstance(task, str) and task in TASKS:
            return task
    raise InvalidWeights(f"cannot tell the task of a {type(model).__name__}")


def _class_names(model: torch.nn.Module) -> list[str]:
    names = model.__dict__.get("names")
    if isinstance(names, dict) and names and all(isinstance(k, int) for k in names):
        if sorted(names) != list(range(len(names))):
            raise InvalidWeights("the model's class ids are not 0..n-1")
        return [str(names[i]) for i in range(len(names))]
    if isinstance(names, list | tuple) and names:
        return [str(n) for n in names]
    raise InvalidWeights("the model names no classes")


def _metrics(ckpt: dict[str, Any]) -> dict[str, float]:
    raw = ckpt.get("train_metrics")
    if not isinstance(raw, dict):
        return {}
    out: dict[str, float] = {}
    for key, value in raw.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if isinstance(key, str) and math.isfinite(number):
            out[key] = number
    return out


def weights_format(path: Path | str) -> str:
    """pt | onnx | torchscript, from the file name."""
    suffix = Path(str(path)).suffix.lower()
    formats = {".pt": "pt", ".pth": "pt", ".onnx": "onnx", ".torchscript": "torchscript"}
    if suffix not in formats:
        raise InvalidWeights(
            f"unknown weights format {suffix or '(no extension)'!r}: .pt, .onnx or .torchscript")
    return formats[suffix]
