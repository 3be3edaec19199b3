"""The claims ledger: which runs this runner id holds attempt claims of, in a file its next process reads.

A runner that dies leaves its claims in KV; its next process (same runner id) reads the ledger to find them
and release or adopt them at once (`AttemptClaims.predecessors`), instead of leaving the next attempts to wait
for them to fall silent. The file is append-only while the process runs: one line `+<run id>` when a claim
is taken, `-<run id>` when it is let go; a small write each, no rename (a rename per claim cost the runner
about a tenth of its CPU per run). It is rewritten whole, atomically (a temporary file renamed over it), when
a process starts and when the lines of runs let go outnumber the live ones (`COMPACT_LINES`). A torn last
line (the process died while writing it) is ignored: the line before it still says what was held. An earlier
version's file (`<path>.json`, one JSON list) is still read, and removed by the first rewrite.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

COMPACT_LINES = 512
"""Rewrite the file once it has this many lines more than twice the runs held."""


class ClaimsLedger:
    """Thread-safe (jobs of several slots write it from worker threads at once)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._held: set[str] | None = None
        """The runs held, as the file says (read once, kept in step with every line appended)."""
        self._lines = 0

    def read(self) -> set[str]:
        """The runs the file names as held (by this process or by the one before it)."""
        held = self._legacy()
        try:
            text = self.path.read_text()
        except OSError:
            return held
        for line in text.split("\n")[:-1]:  # the last piece is empty, or torn (never written whole): not read
            if line[:1] == "+":
                held.add(line[1:])
            elif line[:1] == "-":
                held.discard(line[1:])
        return held

    @property
    def _legacy_path(self) -> Path:
        return self.path.with_name(self.path.name + ".json")

    def _legacy(self) -> set[str]:
        try:
            return {str(run) for run in json.loads(self._legacy_path.read_text())}
        except (OSError, ValueError, TypeError):
            return set()

    def reset(self, held: set[str] | None = None) -> None:
        """Rewrite the file naming only `held` (none: a new process that released or adopted what was there)."""
        with self._lock:
            self._rewrite(set(held or ()))

    def add(self, run_id: str) -> None:
        with self._lock:
            held = self._current()
            if run_id not in held:
                held.add(run_id)
                self._append(f"+{run_id}\n")

    def discard(self, run_id: str) -> None:
        with self._lock:
            held = self._current()
            if run_id in held:
                held.discard(run_id)
                self._append(f"-{run_id}\n")
                if self._lines > COMPACT_LINES + 2 * len(held):
                    self._rewrite(held)

    def _current(self) -> set[str]:
        if self._held is None:
            self._rewrite(self.read())
        assert self._held is not None
        return self._held

    def _append(self, line: str) -> None:
        with self.path.open("a") as f:
            f.write(line)
        self._lines += 1

    def _rewrite(self, held: set[str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(f"+{run}\n" for run in sorted(held)))
        tmp.replace(self.path)
        self._legacy_path.unlink(missing_ok=True)
        self._held, self._lines = held, len(held)
