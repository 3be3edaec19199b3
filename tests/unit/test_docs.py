"""The README matches the code: its settings table lists every setting with its default, and CI runs the
README's test command."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import shared.settings
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
ROW = re.compile(r"^\| `(TRAINFORGE_\w+)` \| ([^|]+) \|", re.MULTILINE)


def _render_default(value: Any) -> str:
    if value is None or value == []:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float):
        return f"`{value:g}`"
    return f"`{value}`"


def _docstrings() -> dict[str, str]:
    """Field name -> the docstring line under it in shared/settings.py."""
    tree = ast.parse(Path(shared.settings.__file__).read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Settings")
    docs: dict[str, str] = {}
    previous: str | None = None
    for node in cls.body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and previous:
            docs[previous] = " ".join(str(node.value.value).split())
        previous = node.target.id if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) else None
    return docs


def _expected_rows() -> dict[str, str]:
    defaults, docs = Settings(), _docstrings()
    return {
        var: f"| `{var}` | {_render_default(getattr(defaults, name))} | {docs.get(name, '...')} |"
        for name, var in Settings.env_names().items()
    }


def test_readme_settings_table_lists_every_setting_with_its_default() -> None:
    documented = {var: default.strip() for var, default in ROW.findall(README.read_text())}
    expected = _expected_rows()
    missing = [row for var, row in expected.items() if var not in documented]
    assert not missing, "README.md, Settings: add these rows\n" + "\n".join(missing)
    assert set(documented) <= set(expected), f"README.md documents unknown settings: {set(documented) - set(expected)}"
    defaults = Settings()
    wrong = {
        var: (documented[var], _render_default(getattr(defaults, name)))
        for name, var in Settings.env_names().items()
        if documented[var] != _render_default(getattr(defaults, name))
    }
    assert not wrong, f"README.md, Settings: (documented, actual) defaults differ: {wrong}"


def test_ci_runs_exactly_the_readme_test_command() -> None:
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.DOTALL)
    test_command = next(b.strip() for b in blocks if "pytest" in b and "[test]" in b)
    ci_lines = [line.strip() for line in (ROOT / ".ci/run").read_text().splitlines()]
    assert test_command in ci_lines
    assert "set -euo pipefail" in ci_lines
    assert (ROOT / ".ci/run").stat().st_mode & 0o111


def test_readme_quick_start_pins_torch_through_the_constraints_file() -> None:
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.DOTALL)
    installs = [b for b in blocks if "pip install" in b]
    assert installs and all("-c constraints.txt" in b for b in installs)
    assert "torch==2.13.0" in (ROOT / "constraints.txt").read_text().split()

