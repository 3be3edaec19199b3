"""The claims ledger (runner.claims_ledger): what one process of a runner id writes, its next process reads."""

from __future__ import annotations

import json
from pathlib import Path

from runner import claims_ledger
from runner.claims_ledger import ClaimsLedger


def test_the_next_process_reads_the_runs_still_held(tmp_path: Path) -> None:
    path = tmp_path / "runners" / "cpu0.claims"
    ledger = ClaimsLedger(path)
    for run in ("a", "b", "c"):
        ledger.add(run)
    ledger.discard("b")
    ledger.add("a")  # again: no second line
    assert ClaimsLedger(path).read() == {"a", "c"}
    assert path.read_text().count("+a") == 1


def test_a_line_torn_by_a_crash_is_not_read(tmp_path: Path) -> None:
    path = tmp_path / "cpu0.claims"
    ledger = ClaimsLedger(path)
    ledger.add("run-1")
    with path.open("a") as f:
        f.write("+run-2")  # died before the newline
    next_process = ClaimsLedger(path)
    assert next_process.read() == {"run-1"}
    next_process.reset()  # what it starts with (after releasing run-1): a whole file again
    next_process.add("run-3")
    assert ClaimsLedger(path).read() == {"run-3"}


def test_an_earlier_versions_json_file_is_read_and_removed_by_the_reset(tmp_path: Path) -> None:
    path = tmp_path / "cpu0.claims"
    legacy = tmp_path / "cpu0.claims.json"
    legacy.write_text(json.dumps(["old-1", "old-2"]))
    ledger = ClaimsLedger(path)
    assert ledger.read() == {"old-1", "old-2"}
    ledger.reset({"old-2"})  # old-1 released, old-2 adopted
    assert not legacy.exists()
    assert ClaimsLedger(path).read() == {"old-2"}


def test_the_file_is_rewritten_once_let_go_runs_pile_up(tmp_path: Path) -> None:
    path = tmp_path / "cpu0.claims"
    ledger = ClaimsLedger(path)
    ledger.add("kept")
    for n in range(3 * claims_ledger.COMPACT_LINES):
        ledger.add(f"run-{n}")
        ledger.discard(f"run-{n}")
    assert len(path.read_text().splitlines()) <= claims_ledger.COMPACT_LINES + 3
    assert ClaimsLedger(path).read() == {"kept"}
