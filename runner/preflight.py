"""Runner side of preflight: are a project's dataset and training YAML in place under a target's host root?

`check_files` is used twice: by `serve_preflight` (answering the gateway before a run is queued) and by the
docker executor when it claims a run (for runs queued while no runner answered).
"""

from __future__ import annotations

from pathlib import Path

import anyio
import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from runner.executors.base import ExecutorError
from runner.targets import ContainerTarget, Targets
from shared.contracts.preflight import (
    MissingItem,
    PreflightReply,
    PreflightRequest,
    preflight_request_decoder,
)
from shared.settings import Settings
from shared.subjects import Subjects


class OutsideRoot(ExecutorError):
    """A file name points outside the target's host root."""


def resolve_under(root: Path, name: str) -> Path:
    """`root / name`, refusing absolute names and names that leave `root` (`..`, symlinks out of it)."""
    if not name or Path(name).is_absolute():
        raise OutsideRoot(f"{name!r} must be a path relative to the target's root")
    base = root.resolve()
    path = (base / name).resolve()
    if not path.is_relative_to(base):
        raise OutsideRoot(f"{name!r} is outside the target's root")
    return base / name


def _check(target: ContainerTarget, dataset_name: str | None, yaml_name: str | None) -> list[MissingItem]:
    missing = []
    if dataset_name:
        if not resolve_under(target.host_root, dataset_name).exists():
            missing.append(MissingItem(what="dataset", name=dataset_name))
    if yaml_name:
        if not resolve_under(target.host_root, yaml_name).is_file():
            missing.append(MissingItem(what="training_yaml", name=yaml_name))
    return missing


async def check_files(
    target: ContainerTarget, dataset_name: str | None, training_yaml_name: str | None
) -> list[MissingItem]:
    """The items missing under the target's host root. Raises `OutsideRoot` for a name outside it."""
    return await anyio.to_thread.run_sync(_check, target, dataset_name, training_yaml_name)


async def answer(request: PreflightRequest, targets: Targets, runner_id: str) -> PreflightReply:
    try:
        target = targets.get(request.target)
    except KeyError as exc:
        return PreflightReply(ok=False, runner_id=runner_id, error=str(exc.args[0]))
    try:
        missing = await check_files(target, request.dataset_name, request.training_yaml_name)
    except OutsideRoot as exc:
        return PreflightReply(ok=False, runner_id=runner_id, error=str(exc))
    return PreflightReply(ok=not missing, missing=missing, runner_id=runner_id)


async def serve_preflight(nc: NATS, settings: Settings, pool: str, targets: Targets) -> Subscription:
    """Answer preflight requests for `pool` (one runner of the pool answers each: queue group).
    Unsubscribe (or drain the connection) to stop."""
    subjects = Subjects(settings.bus_prefix)
    runner_id = settings.runner_id or ""

    async def handle(msg: Msg) -> None:
        try:
            request = preflight_request_decoder.decode(msg.data)
        except msgspec.DecodeError as exc:
            reply = PreflightReply(ok=False, runner_id=runner_id, error=f"bad preflight request: {exc}")
        else:
            reply = await answer(request, targets, runner_id)
        if msg.reply:
            await msg.respond(msgspec.json.encode(reply))

    return await nc.subscribe(subjects.preflight(pool), queue=subjects.preflight_group, cb=handle)
