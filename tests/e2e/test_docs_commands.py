"""Every shell block of README.md and docs/*.md runs as written, in a fresh shell against a fresh stack.

The convention, for every Markdown file of README.md and docs/ (those added later too, with nothing to register):

- A fenced block tagged ```bash or ```sh is run. Blocks with another tag (```python, ```toml, ```json, ...) or
  none (diagrams, HTTP sketches) are not: a doc whose examples are Python has its own test.
- `<!-- docs-test: skip: REASON -->` on the line right above a block leaves it out. Use it sparingly, for
  blocks that cannot run here: installing, the whole test suite, a foreground `trainforge up`, Docker.
- The blocks of one file run in order in ONE bash session (`set -euo pipefail`, aliases on), so variables
  carry over from block to block, in a fresh folder that holds what `docs/examples/make_files.py` writes
  (rects.zip, data/rects-folder/, my-net.yaml, bus.jpg), `.venv` (a link to the test's environment), `docs`
  (a link to the checkout's, so `.venv/bin/python docs/examples/make_files.py` runs as in a checkout) and
  `trainforge` on PATH, with HOME there too.
- A fresh stack runs in that folder while they do: `TRAINFORGE_DATA_ROOTS=$PWD/data trainforge up --detach`
  (state in ./.trainforge), started by the test, unless a block of the file runs `trainforge up --detach`
  itself; `trainforge down` after the last block either way.
- The stack listens on a free port, not 8000: the test sets TRAINFORGE_PORT and TRAINFORGE_API_URL to it and
  replaces `127.0.0.1:8000` in the blocks. It hides GPUs (`CUDA_VISIBLE_DEVICES=`), so that `up` starts its
  CPU runner (pool `cpu`, which the examples name) on a GPU machine too.
- curl fails a block on an HTTP error (it runs with `--fail-with-body`), so an example whose answer is an
  error must not be a runnable command: show it as a comment (`# 422: {...}`).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.apt_support import AptUnavailable, ensure_binary
from tests.e2e.stackctl import REPO, free_port

pytestmark = pytest.mark.slow

FENCE = re.compile(r"^```(\S*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
SKIP = re.compile(r"<!--\s*docs-test:\s*skip\b[^>]*-->\s*$")
RUN_TAGS = {"bash", "sh", "shell", "console"}
STARTS_ITS_OWN_STACK = re.compile(r"trainforge up --detach")
FILE_TIMEOUT_S = 1500

PREAMBLE = """\
set -euo pipefail
shopt -s expand_aliases
curl() { command curl --fail-with-body --show-error "$@"; }
"""


@dataclass(frozen=True)
class Block:
    line: int
    text: str


def runnable_blocks(markdown: str) -> list[Block]:
    blocks = []
    for match in FENCE.finditer(markdown):
        if match.group(1) not in RUN_TAGS:
            continue
        before = markdown[:match.start()].rstrip("\n").rpartition("\n")[2]
        if SKIP.search(before):
            continue
        blocks.append(Block(markdown.count("\n", 0, match.start()) + 1, match.group(2)))
    return blocks


def _documents() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_the_skip_marker_and_the_tags_are_read_as_documented() -> None:
    text = "a\n```bash\necho 1\n```\n<!-- docs-test: skip: foreground -->\n```sh\nsleep 9\n```\n```python\nx\n```\n"
    assert [b.text for b in runnable_blocks(text)] == ["echo 1\n"]


@pytest.mark.timeout(FILE_TIMEOUT_S + 300)
@pytest.mark.parametrize("doc", _documents(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_shell_block_runs_against_a_fresh_stack(doc: Path, tmp_path: Path) -> None:
    blocks = runnable_blocks(doc.read_text())
    if not blocks:
        pytest.skip(f"{doc.name} has no shell blocks")
    if any(re.search(r"\bjq\b", b.text) for b in blocks):
        try:
            ensure_binary("jq", "jq")  # the examples' JSON filter; not on a bare machine
        except AptUnavailable as exc:
            pytest.skip(str(exc))
    work = tmp_path / "work"
    work.mkdir()
    subprocess.run([sys.executable, str(REPO / "docs" / "examples" / "make_files.py"), str(work)], check=True,
                   capture_output=True)
    (work / ".venv").symlink_to(sys.prefix)
    (work / "docs").symlink_to(REPO / "docs")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINFORGE_")}
    env.update({
        "HOME": str(work), "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
        "PYTHONPATH": str(REPO), "TRAINFORGE_PORT": str(port), "TRAINFORGE_API_URL": f"http://127.0.0.1:{port}",
        "TRAINFORGE_DATA_ROOTS": str(work / "data"),
        "CUDA_VISIBLE_DEVICES": "",  # a CPU runner on a GPU machine too: the examples use pool cpu
    })
    script = [PREAMBLE]
    for block in blocks:
        script.append(f"echo '### {doc.name}:{block.line}' >&2\n")
        script.append(block.text.replace("127.0.0.1:8000", f"127.0.0.1:{port}"))
    (work / "doc.sh").write_text("".join(script))
    own_stack = any(STARTS_ITS_OWN_STACK.search(b.text) for b in blocks)
    try:
        if not own_stack:
            up = subprocess.run(["trainforge", "up", "--detach"], cwd=work, env=env, capture_output=True,
                                text=True, timeout=300)
            assert up.returncode == 0, up.stdout + up.stderr
        result = subprocess.run(["bash", "doc.sh"], cwd=work, env=env, capture_output=True, text=True,
                                timeout=FILE_TIMEOUT_S, stdin=subprocess.DEVNULL)
    finally:
        down = subprocess.run(["trainforge", "down", "--force"], cwd=work, env=env, capture_output=True, text=True,
                              timeout=180)
    output = result.stdout[-4000:] + "\n--- stderr ---\n" + result.stderr[-8000:]
    assert result.returncode == 0, f"{doc.name}: a block failed (the last ### line names it)\n{output}"
    assert down.returncode == 0, down.stdout + down.stderr
