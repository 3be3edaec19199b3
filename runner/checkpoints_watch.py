"""Watching a training output folder: `checkpoint-N` folders as they are completed, and the files worth
keeping as artifacts (TensorBoard event files, the training config).

A checkpoint folder counts as complete when a newer checkpoint exists, when its contents (file count, total
size, newest modification time) did not change between two scans, or at the final scan after the command
ended. Scans run in a worker thread; one scan is a directory listing plus a walk of the new folders only.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import anyio

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)\Z")
TENSORBOARD_GLOB = "events.out.tfevents.*"
MAX_ARTIFACT_SCAN = 200
"""At most this many TensorBoard files are reported per run."""


@dataclass(frozen=True)
class CheckpointFound:
    path: Path
    step: int
    size_bytes: int


@dataclass(frozen=True)
class ArtifactFile:
    name: str
    uri: str
    size_bytes: int
    copied: bool
    note: str | None = None


class CheckpointWatcher:
    """Reports each new `checkpoint-N` folder of `output_dir` once, when complete."""

    def __init__(self, output_dir: Path, *, known: Iterable[str] = ()) -> None:
        self.output_dir = output_dir
        self._known = set(known)
        self._last_signature: dict[str, tuple[int, int, int]] = {}

    def mark_known(self, names: Iterable[str]) -> None:
        self._known.update(names)

    async def poll(self, *, final: bool = False) -> list[CheckpointFound]:
        return await anyio.to_thread.run_sync(self._scan, final)

    def _scan(self, final: bool) -> list[CheckpointFound]:
        listed = list_checkpoints(self.output_dir)
        candidates = sorted((step, name) for name, step in listed.items() if name not in self._known)
        newest_step = max((step for step, _ in candidates), default=None)
        found = []
        for step, name in candidates:
            signature = _signature(self.output_dir / name)
            stable = self._last_signature.get(name) == signature
            self._last_signature[name] = signature
            if final or stable or step != newest_step:
                self._known.add(name)
                self._last_signature.pop(name, None)
                found.append(CheckpointFound(path=self.output_dir / name, step=step, size_bytes=signature[1]))
        return found


def list_checkpoints(output_dir: Path) -> dict[str, int]:
    """`checkpoint-N` folder name → N (blocking: call in a thread)."""
    try:
        entries = list(os.scandir(output_dir))
    except (FileNotFoundError, NotADirectoryError):
        return {}
    out = {}
    for entry in entries:
        if (match := CHECKPOINT_RE.match(entry.name)) and entry.is_dir(follow_symlinks=False):
            out[entry.name] = int(match[1])
    return out


def _signature(folder: Path) -> tuple[int, int, int]:
    count = size = newest = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except FileNotFoundError:
                continue
            count += 1
            size += st.st_size
            newest = max(newest, st.st_mtime_ns)
    return count, size, newest


def find_tensorboard_files(output_dir: Path) -> list[Path]:
    """TensorBoard event files anywhere under `output_dir` (blocking: call in a thread)."""
    if not output_dir.is_dir():
        return []
    found = []
    for path in output_dir.rglob(TENSORBOARD_GLOB):
        if path.is_file() and not path.is_symlink():
            found.append(path)
            if len(found) >= MAX_ARTIFACT_SCAN:
                break
    return sorted(found)


def keep_artifact(path: Path, *, name: str, copy_to: Path | None, max_bytes: int) -> ArtifactFile | None:
    """Describe (and, with `copy_to`, copy) one file; None when it is gone. Blocking: call in a thread.

    Files over `max_bytes` are never copied: they are recorded by their path on the runner's host."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return None
    if copy_to is None:
        return ArtifactFile(name=name, uri=str(path), size_bytes=size, copied=False)
    if size > max_bytes:
        note = f"not copied: {size} bytes is over the limit of {max_bytes}"
        return ArtifactFile(name=name, uri=str(path), size_bytes=size, copied=False, note=note)
    dest = copy_to / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, dest)
    return ArtifactFile(name=name, uri=str(dest), size_bytes=dest.stat().st_size, copied=True)
