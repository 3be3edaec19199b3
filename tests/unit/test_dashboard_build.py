"""The dashboard the gateway serves (gateway/dashboard/static, committed) is the build of the sources in
dashboard/: build.json records the sha256 of every source and output of the build, so a source edited without
a rebuild, or a built file edited by hand, fails here even without node; where node and the pinned
node_modules are present, the build is run again and must give the same bytes (it is reproducible)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from gateway.dashboard import STATIC_DIR

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ROOT / "dashboard"
REBUILD = "npm --prefix dashboard ci && npm --prefix dashboard run build"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _record() -> dict[str, dict[str, str]]:
    return json.loads((STATIC_DIR / "build.json").read_text())  # type: ignore[no-any-return]


def _source_files() -> set[str]:
    found = {str(p.relative_to(SOURCES)) for p in (SOURCES / "src").rglob("*") if p.is_file()}
    return found | {"build.mjs", "package.json", "package-lock.json"}


def test_the_built_dashboard_was_built_from_the_sources_as_they_are() -> None:
    recorded = _record()["sources"]
    assert set(recorded) == _source_files(), f"sources added or removed since the build; run `{REBUILD}`"
    stale = [name for name, digest in recorded.items() if _sha(SOURCES / name) != digest]
    assert not stale, f"{stale} changed since the dashboard was built; run `{REBUILD}` and commit the result"


def test_the_built_files_are_the_build_s_output_untouched() -> None:
    outputs = _record()["outputs"]
    assert set(outputs) == {"index.html", "assets/app.js", "assets/app.css"}
    changed = [name for name, digest in outputs.items() if _sha(STATIC_DIR / name) != digest]
    assert not changed, f"{changed} differ from what the build wrote; never edit them, rebuild: `{REBUILD}`"


def test_the_page_loads_nothing_from_elsewhere() -> None:
    html = (STATIC_DIR / "index.html").read_text()
    assert sorted(re.findall(r'(?:src|href)="([^"]+)"', html)) == sorted(
        re.findall(r'(?:src|href)="(/assets/app\.(?:js|css)\?v=[0-9a-f]{12})"', html))
    css = (STATIC_DIR / "assets" / "app.css").read_text()
    assert "@import" not in css and not re.search(r"url\(\s*['\"]?(https?:)?//", css), "no fonts or images fetched"
    script = (STATIC_DIR / "assets" / "app.js").read_text()
    assert not re.search(r"https?://(?!www\.w3\.org/)", script), "no URL but XML namespaces in the bundle"
    assert "insertAdjacentHTML" not in script and "document.write" not in script


def test_the_sources_never_insert_html() -> None:
    """Run names, log lines, file names reach the page as text nodes only (Preact escapes them)."""
    for path in (SOURCES / "src").rglob("*.js*"):
        text = path.read_text()
        for banned in ("innerHTML", "outerHTML", "insertAdjacentHTML", "dangerouslySetInnerHTML", "document.write"):
            assert banned not in text, f"{path.relative_to(ROOT)} uses {banned}"


def test_the_bundle_is_reproducible_from_the_sources(tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None or not (SOURCES / "node_modules" / "esbuild").is_dir():
        pytest.skip(f"node or dashboard/node_modules missing (`{REBUILD}`): checked by the recorded hashes only")
    done = subprocess.run([node, str(SOURCES / "build.mjs"), "--out", str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for name in _record()["outputs"]:
        assert (tmp_path / name).read_bytes() == (STATIC_DIR / name).read_bytes(), (
            f"{name}: the committed build is not what the sources build to; run `{REBUILD}`")
    assert json.loads((tmp_path / "build.json").read_text()) == _record()
