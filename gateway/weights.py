"""Safe inspection of uploaded Ultralytics weights (`.pt`): read task, class names and metrics without
running foreign code, and without torch or Ultralytics in the gateway's process.

A `.pt` is a zip holding a pickle (`<name>/data.pkl`) and the tensors' raw storages; unpickling an untrusted
pickle runs whatever callables it names (`os.system`, ...). `safe_load` reads the pickle with a restricted
unpickler that imports nothing and calls nothing foreign:
- a global may only be one of a fixed list of harmless constructors (`collections.OrderedDict`, `set`,
  `torch.Size`, torch's tensor/parameter rebuild functions, numpy scalars/arrays, datetimes, paths), a torch
  dtype or storage type, or a class (a CamelCase name) of `torch.nn.modules.*`, `ultralytics.nn.modules.*` or
  `ultralytics.nn.tasks`;
- only the constructors may be called (REDUCE): the standard library's run for real, torch's and numpy's
  answer inert placeholders (`Tensor`, `NumpyValue`, with numpy float/int scalars decoded); module classes
  are only created empty (NEWOBJ: an inert `Instance`) and filled from their pickled state (BUILD), never
  called with arguments;
- the opcodes that call a class directly (INST, OBJ) are refused, and BUILD only fills the instances it made
  (never a class or module object).
Whatever passes therefore only ever calls the listed constructors, also when a runner later loads the file
with a plain `torch.load` (where a layer class is created with `cls.__new__` and filled by its state). The
archive must be a torch zip with uncompressed members (as `torch.save` writes it); TorchScript archives and
the legacy format are refused. Tensor data is never read.

Blocking (reads the file): call `inspect_weights` from a worker thread.
"""

from __future__ import annotations

import datetime
import math
import pathlib
import pickle
import re
import struct
import types
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CLASS_NAME = re.compile(r"[A-Z][A-Za-z0-9_]*")
_MODULE_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")

PLAIN_CONSTRUCTORS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set, ("builtins", "frozenset"): frozenset, ("builtins", "slice"): slice,
    ("builtins", "complex"): complex, ("builtins", "int"): int, ("builtins", "float"): float,
    ("builtins", "bool"): bool, ("builtins", "str"): str, ("builtins", "tuple"): tuple,
    ("builtins", "list"): list, ("builtins", "dict"): dict,
    ("datetime", "datetime"): datetime.datetime, ("datetime", "date"): datetime.date,
    ("datetime", "time"): datetime.time, ("datetime", "timedelta"): datetime.timedelta,
    ("datetime", "timezone"): datetime.timezone,
    ("pathlib", "Path"): pathlib.PurePath, ("pathlib", "PosixPath"): pathlib.PurePosixPath,
    ("pathlib", "PurePosixPath"): pathlib.PurePosixPath, ("pathlib", "WindowsPath"): pathlib.PureWindowsPath,
    ("pathlib", "PureWindowsPath"): pathlib.PureWindowsPath,
    ("types", "SimpleNamespace"): types.SimpleNamespace,
    ("ultralytics.utils", "IterableSimpleNamespace"): types.SimpleNamespace,
}
"""Constructors of plain values, run for real (standard library only; paths as pure paths, which touch no file).
`_codecs.encode` (bytes pickled with protocol 2) is handled apart: only its latin-1 form is accepted."""

INERT_CONSTRUCTORS: frozenset[tuple[str, str]] = frozenset({
    ("torch", "Size"), ("torch", "device"),
    ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
})
"""torch's and numpy's constructors a checkpoint may call: they answer placeholders here."""

CONSTRUCTORS: frozenset[tuple[str, str]] = frozenset(PLAIN_CONSTRUCTORS) | INERT_CONSTRUCTORS | {("_codecs", "encode")}
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

TORCH_DTYPES = frozenset({
    "float16", "half", "float32", "float", "float64", "double", "bfloat16", "complex32", "complex64",
    "complex128", "cfloat", "cdouble", "uint8", "uint16", "uint32", "uint64", "int8", "int16", "short", "int32",
    "int", "int64", "long", "bool", "quint8", "qint8", "qint32", "quint4x2", "float8_e4m3fn", "float8_e5m2",
})
TORCH_STORAGES = frozenset({
    "UntypedStorage", "TypedStorage", "FloatStorage", "DoubleStorage", "HalfStorage", "BFloat16Storage",
    "LongStorage", "IntStorage", "ShortStorage", "CharStorage", "ByteStorage", "BoolStorage",
    "ComplexFloatStorage", "ComplexDoubleStorage", "QUInt8Storage", "QInt8Storage", "QInt32Storage",
})
"""Storage types named in a checkpoint's persistent ids (`torch.save` writes `torch.FloatStorage` and kin)."""

MODULE_PACKAGES = ("torch.nn.modules.", "ultralytics.nn.modules.")
MODULE_MODULES = frozenset({"ultralytics.nn.tasks"})
"""Where the `nn.Module` classes a checkpoint may hold are defined."""

TASK_OF_CLASS = {"DetectionModel": "detect", "SegmentationModel": "segment", "PoseModel": "pose",
                 "OBBModel": "obb", "ClassificationModel": "classify", "WorldModel": "detect",
                 "YOLOEModel": "detect", "YOLOESegModel": "segment", "RTDETRDetectionModel": "detect"}
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


# -- inert placeholders for what the pickle names ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Global:
    """An allowed global, named but never imported."""

    module: str
    name: str

    @property
    def key(self) -> tuple[str, str]:
        return self.module, self.name

    def __str__(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass(eq=False, slots=True)
class Instance:
    """An object of an allowed class (a layer, a model, a transform), created empty and filled by BUILD."""

    cls: Global
    state: Any = None

    def get(self, key: str, default: Any = None) -> Any:
        """A field of the pickled `__dict__`."""
        return self.state.get(key, default) if isinstance(self.state, dict) else default


@dataclass(eq=False, slots=True)
class Tensor:
    """A tensor or parameter: its dtype (storage type) and size; the data stays in the archive."""

    storage: str
    size: tuple[Any, ...] = ()
    state: Any = None


@dataclass(eq=False, slots=True)
class NumpyValue:
    """A numpy dtype or array (its pickled arguments and state; never decoded)."""

    what: Global
    args: tuple[Any, ...]
    state: Any = None


@dataclass(frozen=True, slots=True)
class Storage:
    type_name: str
    key: str


@dataclass(frozen=True, slots=True)
class EnumMember:
    enum: Global
    value: Any


def _inert_call(func: Global, args: tuple[Any, ...]) -> Any:
    module, name = func.key
    if func.key == ("torch", "Size"):
        return tuple(args[0]) if args and isinstance(args[0], list | tuple) else ()
    if func.key == ("torch", "device"):
        return ":".join(str(a) for a in args)
    if module == "torch._utils":
        storage = args[0] if args else None
        if isinstance(storage, Tensor):  # _rebuild_parameter(data, requires_grad, hooks)
            return storage
        size = tuple(args[2]) if name == "_rebuild_tensor_v2" and len(args) > 2 and isinstance(args[2], tuple) else ()
        return Tensor(storage=storage.type_name if isinstance(storage, Storage) else "?", size=size)
    if name == "scalar":
        return _numpy_scalar(args)
    return NumpyValue(what=func, args=args)


_NUMPY_SCALAR_FORMATS = {("f", 2): "e", ("f", 4): "f", ("f", 8): "d", ("i", 1): "b", ("i", 2): "h", ("i", 4): "i",
                         ("i", 8): "q", ("u", 1): "B", ("u", 2): "H", ("u", 4): "I", ("u", 8): "Q", ("b", 1): "?"}


def _numpy_scalar(args: tuple[Any, ...]) -> Any:
    """A numpy float/int/bool scalar as the Python number it holds (anything else stays a placeholder)."""
    if len(args) == 2 and isinstance(args[0], NumpyValue) and isinstance(args[1], bytes) and args[0].args:
        code = str(args[0].args[0])
        order = args[0].state[1] if isinstance(args[0].state, tuple) and len(args[0].state) > 1 else "<"
        kind, size = code[:1], code[1:]
        fmt = _NUMPY_SCALAR_FORMATS.get((kind, int(size))) if size.isdigit() else None
        if fmt and struct.calcsize(fmt) == len(args[1]):
            return struct.unpack((">" if order == ">" else "<") + fmt, args[1])[0]
    return NumpyValue(what=Global("numpy.core.multiarray", "scalar"), args=args)


# -- the restricted unpickler ---------------------------------------------------------------------------


def _resolve(module: str, name: str) -> Global:
    if not _MODULE_PATH.fullmatch(module) or not _IDENTIFIER.fullmatch(name):
        raise UnsafeWeights(f"the file names a malformed global {module}.{name}")
    key = (module, name)
    if key in CONSTRUCTORS or key in OTHER_GLOBALS or key in ENUM_LOOKUPS or key in TRANSFORM_CLASSES:
        return Global(module, name)
    if module == "torch" and (name in TORCH_DTYPES or name in TORCH_STORAGES):
        return Global(module, name)
    if module == "torch.storage" and name in TORCH_STORAGES:
        return Global(module, name)
    if (module.startswith(MODULE_PACKAGES) or module in MODULE_MODULES) and _CLASS_NAME.fullmatch(name):
        return Global(module, name)
    raise UnsafeWeights(f"the file references {module}.{name}, which is not allowed in model weights")


def _is_module_class(cls: Global) -> bool:
    return ((cls.module.startswith(MODULE_PACKAGES) or cls.module in MODULE_MODULES)
            and _CLASS_NAME.fullmatch(cls.name) is not None)


class _RestrictedUnpickler(pickle._Unpickler):  # noqa: SLF001
    """The pure-Python unpickler (its opcodes can be overridden), restricted as the module docstring says."""

    dispatch = dict(pickle._Unpickler.dispatch)  # noqa: SLF001

    def find_class(self, module: str, name: str) -> Any:
        if self.proto < 3 and self.fix_imports:
            import _compat_pickle

            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        return _resolve(module, name)

    def persistent_load(self, pid: Any) -> Any:
        # torch.save: ('storage', storage_type, key, location, numel)
        if isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage" and isinstance(pid[1], Global):
            return Storage(type_name=pid[1].name, key=str(pid[2]))
        raise InvalidWeights("the checkpoint references data it does not hold")

    def load_reduce(self) -> None:
        args = self.stack.pop()
        func = self.stack[-1]
        if not isinstance(func, Global) or not isinstance(args, tuple):
            raise UnsafeWeights(f"the file calls {_name(func)}, which is not allowed in model weights")
        if func.key in PLAIN_CONSTRUCTORS:
            try:
                self.stack[-1] = PLAIN_CONSTRUCTORS[func.key](*args)
            except (TypeError, ValueError, OverflowError) as exc:
                raise InvalidWeights(f"the checkpoint cannot be loaded: {func}: {exc}") from exc
        elif func.key == ("_codecs", "encode"):
            if not (len(args) == 2 and isinstance(args[0], str) and args[1] == "latin1"):
                raise UnsafeWeights("the file calls _codecs.encode with arguments not allowed in model weights")
            self.stack[-1] = args[0].encode("latin1")
        elif func.key in INERT_CONSTRUCTORS:
            self.stack[-1] = _inert_call(func, args)
        elif func.key in ENUM_LOOKUPS and len(args) == 1 and isinstance(args[0], str | int):
            self.stack[-1] = EnumMember(enum=func, value=args[0])
        else:
            raise UnsafeWeights(f"the file calls {func}, which is not allowed in model weights")

    def load_newobj(self) -> None:
        self.stack.pop()  # the arguments of cls.__new__: an empty object is made either way
        cls = self.stack.pop()
        self.append(Instance(cls=_check_module_class(cls)))

    def load_newobj_ex(self) -> None:
        self.stack.pop()
        self.stack.pop()
        cls = self.stack.pop()
        self.append(Instance(cls=_check_module_class(cls)))

    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, Instance | Tensor | NumpyValue) and inst.state is None:
            inst.state = state
        elif isinstance(inst, OrderedDict | types.SimpleNamespace) and isinstance(state, dict):
            inst.__dict__.update(state)
        else:
            raise UnsafeWeights(f"the file sets the state of {_name(inst)}, which is not allowed")

    def load_refused(self) -> None:
        raise UnsafeWeights("the file uses a pickle opcode that calls classes directly (INST/OBJ)")

    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex
    dispatch[pickle.BUILD[0]] = load_build
    dispatch[pickle.INST[0]] = load_refused
    dispatch[pickle.OBJ[0]] = load_refused


def _check_module_class(cls: Any) -> Global:
    if isinstance(cls, Global) and (_is_module_class(cls) or cls.key in TRANSFORM_CLASSES):
        return cls
    raise UnsafeWeights(f"the file creates {_name(cls)} objects, which is not allowed in model weights")


def _name(obj: Any) -> str:
    if isinstance(obj, Global):
        return str(obj)
    if isinstance(obj, Instance):
        return str(obj.cls)
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"


# -- loading and inspecting -------------------------------------------------------------------------------


def _archive_pickle(path: Path) -> bytes:
    """The checkpoint's pickle, from a torch zip with uncompressed members that is not TorchScript."""
    if not zipfile.is_zipfile(path):
        raise InvalidWeights("the file is not a PyTorch checkpoint (a zip as written by torch.save)")
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            names = [i.filename for i in infos]
            pickles = [i for i in infos if i.filename.endswith("data.pkl")]
            if not pickles:
                raise InvalidWeights("the archive holds no pickled checkpoint (data.pkl)")
            if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
                raise InvalidWeights("TorchScript archives are not accepted; upload an Ultralytics .pt checkpoint")
            if any(i.compress_type != zipfile.ZIP_STORED for i in infos):
                raise InvalidWeights("the checkpoint archive has compressed members; torch.save never writes those")
            return zf.read(min(pickles, key=lambda i: i.filename.count("/")))
    except (zipfile.BadZipFile, OSError) as exc:
        raise InvalidWeights(f"the checkpoint archive is damaged: {exc}") from exc


def check_archive(path: Path) -> None:
    """A torch zip checkpoint with uncompressed members, not TorchScript. Raises `InvalidWeights`."""
    _archive_pickle(path)


def safe_load(path: Path) -> Any:
    """The checkpoint at `path` as plain values and placeholders (`Instance`, `Tensor`, ...), read without
    running foreign code (see the module docstring)."""
    import io

    data = _archive_pickle(path)
    try:
        return _RestrictedUnpickler(io.BytesIO(data)).load()
    except WeightsError:
        raise
    except Exception as exc:  # noqa: BLE001 - anything else a damaged or foreign pickle makes the unpickler raise
        raise InvalidWeights(f"the checkpoint cannot be loaded: {type(exc).__name__}: {exc}") from exc


def inspect_weights(path: Path, state_dir: Path | None = None) -> WeightsInfo:
    """Task, class names and training metrics of the Ultralytics checkpoint at `path` (`state_dir` is unused:
    nothing of Ultralytics is loaded)."""
    ckpt = safe_load(path)
    if not isinstance(ckpt, dict):
        raise InvalidWeights("the file is not an Ultralytics checkpoint (expected a dict with a 'model')")
    model = ckpt.get("ema") or ckpt.get("model")
    if not (isinstance(model, Instance) and _is_module_class(model.cls) and isinstance(model.state, dict)):
        raise InvalidWeights("the checkpoint holds no model ('model' is missing or not a network)")
    version = ckpt.get("version")
    return WeightsInfo(task=_task(model, ckpt), class_names=_class_names(model), metrics=_metrics(ckpt),
                       ultralytics_version=version if isinstance(version, str) else None)


def _task(model: Instance, ckpt: dict[str, Any]) -> str:
    train_args = ckpt.get("train_args")
    candidates = [model.get("task"), train_args.get("task") if isinstance(train_args, dict) else None,
                  TASK_OF_CLASS.get(model.cls.name)]
    for task in candidates:
        if isinstance(task, str) and task in TASKS:
            return task
    raise InvalidWeights(f"cannot tell the task of a {model.cls.name}")


def _class_names(model: Instance) -> list[str]:
    names = model.get("names")
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
