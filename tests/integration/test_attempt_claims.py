"""Attempt claims on a real nats-server: a first attempt knows it is the first (`Claim.first`); any later
take does not, so the runner looks again for what an earlier attempt did once it holds the claim."""

from __future__ import annotations

from pathlib import Path

from runner.claims import AttemptClaims, Claim, ClaimRecord, Standby
from shared.bus import connect, ensure_topology
from shared.settings import Settings
from shared.subjects import Subjects


def record(runner_id: str, attempt: int) -> ClaimRecord:
    return ClaimRecord(run_id="run-1", runner_id=runner_id, instance=f"{runner_id}-process", attempt=attempt)


async def test_only_a_never_written_claim_is_first_and_a_released_one_is_taken_again_not_first(
    nats_url: str, bus_prefix: str, tmp_path: Path,
) -> None:
    settings = Settings.from_mapping({"nats_url": nats_url, "bus_prefix": bus_prefix, "state_dir": tmp_path})
    nc = await connect(settings, name="test")
    try:
        js = nc.jetstream()
        await ensure_topology(js, settings)
        names = Subjects(bus_prefix)
        kv = await js.key_value(names.attempts_bucket)

        def claims(runner_id: str) -> AttemptClaims:
            return AttemptClaims(js, kv, names, runner_id=runner_id, instance=f"{runner_id}-process", hold_s=60,
                                 takeover_margin_s=5, ledger=tmp_path / f"{runner_id}.json")

        first = await claims("a").try_take(record("a", 1))
        assert isinstance(first, Claim) and first.first

        held_elsewhere = await claims("b").try_take(record("b", 2))
        assert isinstance(held_elsewhere, Standby) and held_elsewhere.holder.attempt == 1

        own_again = await claims("a").try_take(record("a", 1))  # the same attempt asking again: it holds it
        assert isinstance(own_again, Claim) and not own_again.first

        await first.release()
        after_release = await claims("b").try_take(record("b", 2))  # over the delete marker the release left
        assert isinstance(after_release, Claim) and not after_release.first
        assert after_release.revision > first.revision
    finally:
        await nc.drain()
