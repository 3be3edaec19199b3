"""Preflight: before a container run is queued, ask a runner of its pool whether the project's files exist.

Core NATS request/reply on `Subjects.preflight(pool)`; runners answer in a queue group, so one of them
replies. No reply in time means "unknown": the run is queued and the runner checks again when it claims it.
"""

from __future__ import annotations

from typing import Literal

import msgspec


class PreflightRequest(msgspec.Struct, frozen=True, kw_only=True):
    target: str
    """Name of a container target of the runner."""
    dataset_name: str | None = None
    training_yaml_name: str | None = None


class MissingItem(msgspec.Struct, frozen=True, kw_only=True):
    what: Literal["dataset", "training_yaml"]
    name: str

    @property
    def label(self) -> str:
        return f"{'dataset' if self.what == 'dataset' else 'training YAML'} {self.name!r}"


class PreflightReply(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    missing: list[MissingItem] = []
    runner_id: str = ""
    error: str | None = None
    """Why the runner could not check at all (unknown target, a name outside the target's root)."""

    def message(self, target: str) -> str:
        """One sentence for a 400 (gateway) or a failed run (runner): the same text on both sides."""
        if self.error:
            return self.error
        if self.missing:
            items = ", ".join(item.label for item in self.missing)
            return f"missing under container target {target!r}: {items}"
        return "ok"


preflight_request_decoder = msgspec.json.Decoder(PreflightRequest)
preflight_reply_decoder = msgspec.json.Decoder(PreflightReply)
