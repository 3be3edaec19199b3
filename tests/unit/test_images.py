"""The gateway's Docker image holds no torch and no Ultralytics: the Dockerfile's `gateway` target installs
requirements/gateway.txt alone, that file's dependency closure (read from this environment's installed
metadata) provides every library the gateway, shared, the migrations and the CLI import, and compose runs
the gateway, `migrate` and `secrets` from that target, the runners from the `runner` one."""

from __future__ import annotations

import ast
import re
import sys
from importlib import metadata
from pathlib import Path

import yaml
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
HEAVY = {"torch", "torchvision", "ultralytics", "onnx", "onnxruntime", "opencv-python", "numpy"}
FIRST_PARTY = {"gateway", "shared", "runner", "trainforge", "migrations", "tests"}


def _stages() -> dict[str, list[str]]:
    """Dockerfile stage name -> its instructions (continuation lines joined)."""
    text = re.sub(r"\\\n\s*", " ", (REPO / "Dockerfile").read_text())
    stages: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if match := re.match(r"FROM \S+ AS (\S+)", line, re.IGNORECASE):
            current = stages.setdefault(match.group(1), [])
        current.append(line)
    return stages


def _requirements(path: Path) -> list[Requirement]:
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return [Requirement(line) for line in lines if line]


def _closure(requirements: list[Requirement]) -> set[str]:
    """Distribution names (normalised) that installing `requirements` brings, as installed here."""
    seen: set[str] = set()
    todo = [(r, frozenset(r.extras)) for r in requirements]
    while todo:
        req, extras = todo.pop()
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in (extras or {""})):
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # not installed here (a platform's optional part)
        key = f"{name}[{','.join(sorted(extras))}]"
        if key in seen:
            continue
        seen.add(key)
        for sub in dist.requires or []:
            todo.append((Requirement(sub), frozenset(Requirement(sub).extras)))
            if "extra ==" in sub:
                todo[-1] = (Requirement(sub), extras)
    return {key.split("[")[0] for key in seen}


def _third_party_imports(*folders: str) -> dict[str, str]:
    """Top-level module -> a file importing it, for every import (lazy ones too) in `folders`."""
    found: dict[str, str] = {}
    for folder in folders:
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in FIRST_PARTY:
                        found.setdefault(top, str(path.relative_to(REPO)))
    return found


def test_the_gateway_image_installs_its_requirements_alone_and_the_runner_image_everything() -> None:
    stages = _stages()
    assert {"gateway", "runner"} <= set(stages)
    gateway = " ".join(stages["gateway"])
    assert "-r requirements/gateway.txt" in gateway and "pip install --no-deps ." in gateway
    assert not re.search(r"pip install (?!--no-deps)[^&]*\s\.(\s|$)", gateway), gateway
    assert not HEAVY & set(gateway.split())
    assert re.search(r"pip install .*-c constraints.txt \.", " ".join(stages["runner"]))


def test_the_gateways_requirements_bring_no_torch_and_cover_what_it_imports() -> None:
    closure = _closure(_requirements(REPO / "requirements" / "gateway.txt"))
    assert not HEAVY & closure, sorted(HEAVY & closure)
    provided = metadata.packages_distributions()
    imported = _third_party_imports("gateway", "shared", "migrations")
    missing = {module: f"{where} (from {provided.get(module)})" for module, where in imported.items()
               if not {re.sub(r"[-_.]+", "-", d).lower() for d in provided.get(module, [])} & closure}
    assert not missing, missing


def test_compose_runs_the_gateway_migrate_and_secrets_from_the_gateway_image_and_runners_from_the_other() -> None:
    services = yaml.safe_load((REPO / "compose.yaml").read_text())["services"]
    for name, service in services.items():
        if "build" not in service:
            continue
        target = "runner" if service["command"][1] == "runner" else "gateway"
        assert service["build"]["target"] == target, name
        assert service["image"] == ("trainforge:latest" if target == "runner" else "trainforge-gateway:latest")
    assert {"gateway", "migrate", "secrets"} <= {n for n, s in services.items() if s.get("build", {}).get("target") == "gateway"}
