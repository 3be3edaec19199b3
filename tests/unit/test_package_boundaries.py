"""The gateway and the runner never import each other (what both need lives in `shared/`), and the gateway
never imports torch, Ultralytics or the other heavy libraries a runner uses: read from the source, so a
lazy import inside a function counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FORBIDDEN = {
    "gateway": {"runner", "torch", "torchvision", "ultralytics", "cv2", "numpy", "matplotlib"},
    "runner": {"gateway"},
    "shared": {"gateway", "runner", "torch", "ultralytics"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_package_imports_nothing_it_must_not(package: str) -> None:
    found = {f"{path.relative_to(REPO)}: {name}" for path in (REPO / package).rglob("*.py")
             for name in _imports(path) & FORBIDDEN[package]}
    assert not found, sorted(found)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _load_time_imports(path: Path, known: set[str]) -> set[str]:
    """First-party modules `path` imports while it loads: its top-level imports (also inside a top-level
    `try`/`if`), not those under `if TYPE_CHECKING:` nor inside functions."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)  # a submodule by name
            elif isinstance(node, ast.If):
                if "TYPE_CHECKING" not in ast.unparse(node.test):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)

    visit(tree.body)
    return {name for name in found if name in known and name != _module_name(path)}


@pytest.mark.parametrize("package", ["gateway", "runner", "shared", "trainforge"])
def test_no_module_imports_itself_in_a_circle(package: str) -> None:
    """e.g. `shared.contracts.commands` and `shared.contracts.yolo` once imported each other (one of them only
    at its end, after its own classes): both now build on `shared.contracts.runspec`."""
    paths = {_module_name(p): p for p in (REPO / package).rglob("*.py")}
    graph = {name: _load_time_imports(path, set(paths)) for name, path in paths.items()}
    graph = {name: {n for n in deps if not name.startswith(n + ".")} for name, deps in graph.items()}  # a
    # package's __init__ running while its module loads is no circle of theirs
    circles: list[list[str]] = []
    state: dict[str, int] = {}

    def walk(name: str, trail: list[str]) -> None:
        state[name] = 1
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                circles.append(trail[trail.index(dep):] + [dep] if dep in trail else [name, dep])
            elif dep not in state:
                walk(dep, trail + [dep])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            walk(name, [name])
    assert not circles, circles
