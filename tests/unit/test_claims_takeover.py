"""The takeover rule of attempt claims (runner.claims.takeover), detached claims included."""

from __future__ import annotations

import msgspec

from runner.claims import ClaimRecord, takeover

HOLDER = ClaimRecord(run_id="r", runner_id="a", instance="a1", attempt=1)


def new(runner_id: str, attempt: int = 2) -> ClaimRecord:
    return ClaimRecord(run_id="r", runner_id=runner_id, instance=f"{runner_id}2", attempt=attempt)


def test_live_claims_of_others_are_taken_over_only_once_silent() -> None:
    assert takeover(HOLDER, new("b"), instance="b2", age_s=5, after_s=10) == "standby"
    assert takeover(HOLDER, new("b"), instance="b2", age_s=None, after_s=10) == "standby"
    assert takeover(HOLDER, new("b"), instance="b2", age_s=11, after_s=10) == "silent"
    assert takeover(HOLDER, new("a"), instance="a2", age_s=None, after_s=10) == "restarted"
    own = ClaimRecord(run_id="r", runner_id="a", instance="a1", attempt=1)
    assert takeover(HOLDER, own, instance="a1", age_s=None, after_s=10) == "own"


def test_a_detached_claim_is_never_taken_over_by_silence_only_by_its_runner_id() -> None:
    detached = msgspec.structs.replace(HOLDER, detached=True)
    assert takeover(detached, new("b"), instance="b2", age_s=10**6, after_s=10) == "standby"
    assert takeover(detached, new("b"), instance="b2", age_s=None, after_s=10) == "standby"
    assert takeover(detached, new("a"), instance="a2", age_s=None, after_s=10) == "restarted"
    adopted = msgspec.structs.replace(detached, instance="a2")  # its next process adopted it at start
    assert takeover(adopted, new("a", 3), instance="a2", age_s=None, after_s=10) == "restarted"
    assert takeover(adopted, new("b", 3), instance="b2", age_s=10**6, after_s=10) == "standby"


def test_records_written_before_the_field_read_as_not_detached() -> None:
    old = b'{"run_id":"r","runner_id":"a","instance":"a1","attempt":1}'
    assert msgspec.json.decode(old, type=ClaimRecord).detached is False
