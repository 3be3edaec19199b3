"""The YOLO models Ultralytics ships architectures for, read from the YAML files inside its package.

Nothing is imported from Ultralytics and no model is built: each `cfg/models/**/<family>[-<task>].yaml`
(with a `scales:` table, one model per scale) or `<family><size>[-<task>].yaml` (one model per file) is read
as text once. The description is the file's header comment; parameter counts come from the `summary:`
comments Ultralytics writes beside each scale, when it does.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from pathlib import Path

import msgspec
import yaml

TASKS = {"": "detect", "cls": "classify", "seg": "segment", "pose": "pose", "obb": "obb"}
SIZES = "tnsmbclxe"
"""Every size letter in use, smallest model first."""
# yolov8.yaml, yolo11-seg.yaml (scales inside); yolov10n.yaml, yolov9c-seg.yaml (one size per file).
FILE_RE = re.compile(rf"^(?P<family>yolov?\d+)(?P<size>[{SIZES}])?(?:-(?P<task>cls|seg|pose|obb))?\.yaml$")
PARAMS_RE = re.compile(r"([\d,]+) parameters")


class ModelSize(msgspec.Struct, frozen=True, kw_only=True):
    size: str
    model: str
    """The name to train with (`yolov8n-seg`): Ultralytics resolves `<model>.yaml`."""
    parameters: int | None = None


class ModelFamily(msgspec.Struct, frozen=True, kw_only=True):
    family: str
    task: str
    description: str
    sizes: list[ModelSize]


def ultralytics_models_dir() -> Path | None:
    spec = importlib.util.find_spec("ultralytics")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "cfg" / "models"
    return folder if folder.is_dir() else None


def _description(text: str) -> str:
    for line in text.splitlines()[1:6]:
        line = line.lstrip("# ").strip()
        if line and not line.startswith(("Ultralytics 🚀", "Model docs", "Task docs", "Parameters")):
            return line.removeprefix("Ultralytics ").strip()
    return ""


def _scale_parameters(text: str) -> dict[str, int]:
    """Scale -> parameters, from comments like `n: [0.33, 0.25, 1024] # ... 3157200 parameters, ...`."""
    found: dict[str, int] = {}
    for match in re.finditer(r"^\s+([a-z]):\s*\[[^\]]*\]\s*#(.*)$", text, re.MULTILINE):
        if params := PARAMS_RE.search(match[2]):
            found[match[1]] = int(params[1].replace(",", ""))
    return found


def _read(path: Path) -> tuple[str, str, list[ModelSize]] | None:
    match = FILE_RE.match(path.name)
    if not match:
        return None
    family, size, task = match["family"], match["size"], TASKS[match["task"] or ""]
    suffix = f"-{match['task']}" if match["task"] else ""
    text = path.read_text(encoding="utf-8")
    if size:
        params = PARAMS_RE.search(text)
        return family, task, [ModelSize(size=size, model=path.stem,
                                         parameters=int(params[1].replace(",", "")) if params else None)]
    try:
        scales = (yaml.safe_load(text) or {}).get("scales") or {}
    except yaml.YAMLError:
        return None
    params = _scale_parameters(text)
    return family, task, [ModelSize(size=s, model=f"{family}{s}{suffix}", parameters=params.get(s))
                          for s in scales]


@functools.cache
def catalog() -> tuple[ModelFamily, ...]:
    """Every (family, task) Ultralytics ships, with its sizes; empty without Ultralytics (blocking: read once
    in a thread)."""
    folder = ultralytics_models_dir()
    if folder is None:
        return ()
    grouped: dict[tuple[str, str], tuple[str, dict[str, ModelSize]]] = {}
    for path in sorted(folder.rglob("*.yaml")):
        read = _read(path)
        if read is None:
            continue
        family, task, sizes = read
        description = re.sub(rf"^({re.escape(family)})[{SIZES}]\b", r"\1",
                             _description(path.read_text(encoding="utf-8")), flags=re.IGNORECASE)
        description, known = grouped.setdefault((family, task), (description, {}))
        for item in sizes:
            known.setdefault(item.size, item)
    order = {s: i for i, s in enumerate(SIZES)}
    return tuple(
        ModelFamily(family=family, task=task, description=description,
                    sizes=sorted(sizes.values(), key=lambda s: (order.get(s.size, 99), s.size)))
        for (family, task), (description, sizes) in sorted(grouped.items())
        if sizes
    )


def known_models() -> frozenset[str]:
    return frozenset(size.model for family in catalog() for size in family.sizes)
