"""The projector: run events from JetStream folded into Postgres, exactly once.

A durable pull consumer on the events stream hands out batches; each batch is ONE transaction:
1. `pg_advisory_xact_lock(EVENTS_LOCK)`: projector transactions (of any number of gateways) commit one after
   the other, so `events.position` grows in commit order and a reader of `position > n` never skips a row;
2. the batch's runs are locked (`FOR UPDATE`, in id order);
3. `INSERT ... ON CONFLICT (run_id, attempt, seq) DO NOTHING RETURNING` tells which events are new;
4. the fold rules (`gateway.projection`) run for the new events only, in order; checkpoints and artifacts
   are inserted, each run is updated once;
5. `NOTIFY trainforge_events, '<max position>'` wakes the event hub at commit.
The messages are acked only after the commit. A crash before the ack redelivers them and step 3 drops the
duplicates: events are at-least-once on the wire and exactly-once in the projection.

Database errors that look transient are retried with backoff on the same batch (the messages are kept alive
with `in_progress()`); a data error (bad value, too long a string) is narrowed down to its message, which is
logged and terminated so it cannot stall the stream.

The projector also listens for JetStream's max-deliveries advisories of the jobs consumers: a job that no
runner finished within `job_max_deliver` attempts fails its run with cause `infrastructure`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import msgspec
import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import api as js_api
from nats.js.errors import BadRequestError, NotFoundError
from sqlalchemy import func, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.db.models import Artifact, Checkpoint, Run
from gateway.projection import RunRow, fold
from gateway.state import GatewayState
from shared.contracts import EventBase, FailureCause, RunFailed, RunnerHeartbeat, RunStatus, event_decoder

log = logging.getLogger(__name__)

EVENTS_LOCK = 0x7472_6663_6576  # "trfcev": the advisory lock that orders projector commits
NOTIFY_CHANNEL = "trainforge_events"
BATCH = 500
FETCH_TIMEOUT_S = 0.5
ACK_WAIT_S = 30.0
MISSING_RUN_RETRIES = 5
"""An event whose run row does not exist (yet) is redelivered this often before it is stored unfolded."""
MISSING_RUN_DELAY_S = 1.0
BACKOFF_MAX_S = 10.0
STOP_GRACE_S = 5.0
TRAIN_KIND = "yolo.train"
"""Completed runs of this kind are handed to the weights registrar (`gw.extras["registrar"]`) after commit."""

_INSERT_EVENTS = text(
    """
    INSERT INTO events (event_id, run_id, project_id, attempt, seq, type, ts, body)
    SELECT e.event_id, e.run_id, e.project_id, e.attempt, e.seq, e.type, e.ts, e.body::jsonb
    FROM unnest(CAST(:event_id AS text[]), CAST(:run_id AS text[]), CAST(:project_id AS text[]),
                CAST(:attempt AS int[]), CAST(:seq AS int[]), CAST(:type AS text[]),
                CAST(:ts AS timestamptz[]), CAST(:body AS text[]))
         WITH ORDINALITY AS e(event_id, run_id, project_id, attempt, seq, type, ts, body, ord)
    ORDER BY e.ord
    ON CONFLICT (run_id, attempt, seq) DO NOTHING
    RETURNING run_id, attempt, seq, position
    """
)


@dataclass(slots=True)
class _Item:
    msg: Msg
    event: EventBase
    body: str
    """The event's JSON as it came on the wire (NUL characters replaced: Postgres' jsonb refuses them)."""
    deferred: bool = False
    """Its run row does not exist yet: redeliver it later."""

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.event.run_id, self.event.attempt, self.event.seq)


class _Poison(Exception):
    """A database error caused by the data of the batch, not by the database being unavailable."""


class _Abandoned(Exception):
    """The projector stops while the database is unavailable: the batch is left to a redelivery."""


class Projector:
    """Folds the events stream into Postgres. `start()` / `stop()` from the gateway's lifespan."""

    def __init__(self, gw: GatewayState) -> None:
        self.gw = gw
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._advisories: Subscription | None = None
        self.projected = 0
        """New events stored since start (duplicates not counted)."""

    async def start(self) -> None:
        names = self.gw.subjects
        config = js_api.ConsumerConfig(
            durable_name=names.projector_consumer,
            filter_subject=names.events_all,
            ack_policy=js_api.AckPolicy.EXPLICIT,
            deliver_policy=js_api.DeliverPolicy.ALL,
            ack_wait=ACK_WAIT_S,
            max_deliver=-1,
            max_ack_pending=20 * BATCH,
        )
        try:
            await self.gw.js.add_consumer(names.events_stream, config)
        except BadRequestError as exc:  # exists with other settings: keep it
            log.warning("projector: kept consumer %s as it is (%s)", names.projector_consumer,
                        exc.description)
        self._sub = await self.gw.js.pull_subscribe_bind(durable=names.projector_consumer,
                                                         stream=names.events_stream)
        self._advisories = await self.gw.nc.subscribe(
            f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{names.jobs_stream}.*",
            queue="trainforge-gateway", cb=self._on_max_deliveries,
        )
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name="projector")
        self._task.add_done_callback(_log_crash)

    async def stop(self) -> None:
        self._stopping.set()
        if self._advisories is not None:
            await self._advisories.unsubscribe()
            self._advisories = None
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), STOP_GRACE_S)
            except TimeoutError:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self._sub.unsubscribe()

    # -- the loop ----------------------------------------------------------------------------------------
    async def _run(self) -> None:
        backoff = 0.1
        while not self._stopping.is_set():
            try:
                msgs = await self._sub.fetch(BATCH, timeout=FETCH_TIMEOUT_S)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            except nats.errors.Error as exc:  # disconnected, reconnecting, stream or consumer gone
                log.warning("projector: fetch failed (%s); retrying in %.1fs", exc, backoff)
                await self._sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            backoff = 0.1
            try:
                await self._handle(msgs)
            except _Abandoned:
                return
            except Exception:  # noqa: BLE001 - e.g. NATS gone while acking: JetStream redelivers the rest
                log.exception("projector: handling a batch of %d messages failed", len(msgs))
                await self._sleep(1.0)

    async def _handle(self, msgs: list[Msg]) -> None:
        items: list[_Item] = []
        for msg in msgs:
            try:
                event = event_decoder.decode(msg.data)
            except msgspec.DecodeError as exc:
                log.error("projector: dropping undecodable message on %s: %s", msg.subject, exc)
                await msg.term()
                continue
            if isinstance(event, RunnerHeartbeat) or not event.run_id:
                await msg.ack()  # not a run event: nothing to project
                continue
            items.append(_Item(msg, event, _json_text(msg.data)))
        if not items:
            return
        try:
            await self._store_with_retry(items)
        except (asyncio.CancelledError, _Abandoned):
            for item in items:  # not committed: let another projector have them now, not after ack_wait
                await _quietly(item.msg.nak())
            raise
        for item in items:
            if item.deferred:
                await item.msg.nak(delay=MISSING_RUN_DELAY_S)
            else:
                await item.msg.ack()

    async def _store_with_retry(self, items: list[_Item]) -> None:
        """Store `items`, retrying transient errors; items whose run does not exist yet get `deferred`."""
        backoff = 0.2
        while True:
            try:
                await self._store(items)
                return
            except _Poison:
                if len(items) > 1:
                    for item in items:
                        await self._store_with_retry([item])
                    return
                item = items[0]
                log.exception("projector: dropping event %s that the database refuses", item.event.msg_id)
                await item.msg.term()
                return
            except Exception:  # noqa: BLE001 - the database is unreachable or restarting: keep trying
                log.exception("projector: storing %d events failed; retrying in %.1fs", len(items), backoff)
                if self._stopping.is_set():
                    raise _Abandoned from None
                for item in items:
                    await _quietly(item.msg.in_progress())
                await self._sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def _store(self, items: list[_Item]) -> None:
        trained: list[str] = []
        try:
            async with self.gw.engine.begin() as conn:
                await self._store_in(conn, items, trained)
        except DBAPIError as exc:
            sqlstate = getattr(exc.orig, "sqlstate", None) or ""
            if sqlstate[:2] in ("22", "23", "54"):  # data exception, integrity violation, too large
                raise _Poison(str(exc)) from exc
            raise
        if trained and (registrar := self.gw.extras.get("registrar")) is not None:
            registrar.submit(trained)  # type: ignore[attr-defined]

    async def _store_in(self, conn: AsyncConnection, items: list[_Item], trained: list[str]) -> None:
        """Fold `items` in one transaction; `trained` gets the ids of `yolo.train` runs it completes."""
        await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": EVENTS_LOCK})
        run_ids = sorted({item.event.run_id for item in items})
        columns = [getattr(Run, name) for name in RunRow.columns()]
        result = await conn.execute(
            select(Run.id, Run.owner_id, Run.kind, *columns)
            .where(Run.id.in_(run_ids)).order_by(Run.id).with_for_update()
        )
        rows: dict[str, RunRow] = {}
        owners: dict[str, str | None] = {}
        kinds: dict[str, str] = {}
        for row in result:
            rows[row.id] = RunRow(**{name: getattr(row, name) for name in RunRow.columns()})
            owners[row.id] = row.owner_id
            kinds[row.id] = row.kind

        for item in items:
            item.deferred = item.event.run_id not in rows and _deliveries(item.msg) < MISSING_RUN_RETRIES
        storing = [item for item in items if not item.deferred]
        if not storing:
            return
        for item in storing:
            if item.event.run_id not in rows:
                log.warning("projector: event %s of unknown run %s stored without changing any run",
                            item.event.type, item.event.run_id)

        inserted = await conn.execute(_INSERT_EVENTS, {
            "event_id": [i.event.event_id for i in storing],
            "run_id": [i.event.run_id for i in storing],
            "project_id": [i.event.project_id for i in storing],
            "attempt": [i.event.attempt for i in storing],
            "seq": [i.event.seq for i in storing],
            "type": [i.event.type for i in storing],
            "ts": [i.event.ts for i in storing],
            "body": [i.body for i in storing],
        })
        new: dict[tuple[str, int, int], int] = {(r.run_id, r.attempt, r.seq): r.position for r in inserted}
        if not new:
            return
        max_position = max(new.values())

        changes: dict[str, dict[str, Any]] = defaultdict(dict)
        checkpoints: list[dict[str, Any]] = []
        artifacts: list[dict[str, Any]] = []
        for item in storing:
            run_id = item.event.run_id
            if new.pop(item.key, None) is None or run_id not in rows:
                continue  # a duplicate, or a run that does not exist
            self.projected += 1
            result_ = fold(rows[run_id], item.event)
            if result_.ignored:
                log.info("projector: %s (run %s) changes nothing: %s", item.event.type, run_id,
                         result_.ignored)
            rows[run_id] = rows[run_id].apply(result_.changes)
            changes[run_id].update(result_.changes)
            if kinds[run_id] == TRAIN_KIND and result_.changes.get("status") == RunStatus.COMPLETED:
                trained.append(run_id)
            if result_.checkpoint:
                checkpoints.append(result_.checkpoint)
            if result_.artifact:
                artifacts.append({**result_.artifact, "owner_id": owners[run_id]})

        if checkpoints:
            await conn.execute(pg_insert(Checkpoint).values(checkpoints).on_conflict_do_nothing(
                index_elements=[Checkpoint.id]))
        if artifacts:
            await conn.execute(pg_insert(Artifact).values(artifacts).on_conflict_do_nothing(
                index_elements=[Artifact.id]))
        for run_id, values in changes.items():
            if values:
                await conn.execute(
                    update(Run).where(Run.id == run_id).values(**values, updated_at=func.now()))
        await conn.execute(text("SELECT pg_notify(:channel, :payload)"),
                           {"channel": NOTIFY_CHANNEL, "payload": str(max_position)})

    # -- max deliveries of a job ---------------------------------------------------------------------------
    async def _on_max_deliveries(self, msg: Msg) -> None:
        try:
            advisory = msgspec.json.decode(msg.data)
            seq = int(advisory["stream_seq"])
            await self._fail_undeliverable_job(seq, int(advisory.get("deliveries", 0)))
        except Exception:  # noqa: BLE001 - an advisory must never kill the subscription
            log.exception("projector: handling a max-deliveries advisory failed")

    async def _fail_undeliverable_job(self, seq: int, deliveries: int) -> None:
        stream = self.gw.subjects.jobs_stream
        try:
            raw = await self.gw.js.get_msg(stream, seq)
        except NotFoundError:
            return  # acked or removed meanwhile: nothing to fail
        job = msgspec.json.decode(raw.data or b"{}")
        run_id, project_id = job.get("run_id"), job.get("project_id")
        if not run_id or not project_id:
            return
        async with self.gw.engine.begin() as conn:
            gateway_seq = (await conn.execute(
                update(Run).where(Run.id == run_id).values(gateway_seq=Run.gateway_seq + 1)
                .returning(Run.gateway_seq)
            )).scalar_one_or_none()
        if gateway_seq is None:
            return
        event = RunFailed(run_id=run_id, project_id=project_id, attempt=0, runner_id="", seq=gateway_seq,
                          cause=FailureCause.INFRASTRUCTURE, error_type="MaxDeliveriesExceeded",
                          message=f"no runner finished the job in {deliveries} attempts")
        await self.gw.js.publish(self.gw.subjects.run_event(project_id, run_id, event.type),
                                 msgspec.json.encode(event), headers={"Nats-Msg-Id": event.msg_id})
        await self.gw.js.delete_msg(stream, seq)
        log.warning("projector: run %s failed: job undelivered after %d attempts", run_id, deliveries)

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            pass


def _deliveries(msg: Msg) -> int:
    try:
        return msg.metadata.num_delivered or 1
    except Exception:  # noqa: BLE001 - not a JetStream message
        return 1


def _json_text(data: bytes) -> str:
    if b"\\u0000" not in data:
        return data.decode()
    return msgspec.json.encode(_without_nul(msgspec.json.decode(data))).decode()


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    if isinstance(value, dict):
        return {k: _without_nul(v) for k, v in value.items()}
    return value


async def _quietly(awaitable: Any) -> None:
    try:
        await awaitable
    except Exception:  # noqa: BLE001 - best effort on the way out
        pass


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("projector stopped unexpectedly", exc_info=task.exception())
