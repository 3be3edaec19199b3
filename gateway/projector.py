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

Per (run, attempt), events are stored in `seq` order with no gap, so positions follow seq and nobody sees a
terminal event before the events it ends:
- step 2 also reads the highest stored seq of each (run, attempt) of the batch (the unique index answers);
  an event past `that + 1` is *held*: kept unacked in memory (progress acks every third of the ack wait)
  and offered again with every batch until the missing seqs arrive. They do so within the consumer's short
  ack wait (`projector_ack_wait_s`) when a killed gateway had fetched them, at once when another gateway is
  committing them. A gap still open after `projector_gap_wait_s` is logged as an error and passed: the
  missing seqs are given up (one that arrives later is stored late, after them). A seq the database refused
  (terminated as poison) is no gap.
- the `run.completed` that completes a `yolo.train` run is held until the weights registrar has written
  `runs.registration` (it is asked at once, and nudges the projector when it is done), so the model version
  is readable when the completion is;
  after `REGISTRATION_WAIT_S` it is stored anyway and the registrar finishes later.
- within a batch, each (run, attempt)'s events take the batch's positions in seq order.

Database errors that look transient are retried with backoff on the same batch (the messages are kept alive
with `in_progress()`); a data error (bad value, too long a string) is narrowed down to its message, which is
logged and terminated so it cannot stall the stream.

The projector also listens for JetStream's max-deliveries advisories of the jobs consumers: a job that no
runner finished within `job_max_deliver` attempts fails its run with cause `infrastructure`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import asyncpg
import msgspec
import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import api as js_api
from nats.js.errors import BadRequestError, NotFoundError
from sqlalchemy import update

from gateway.background import TaskService
from gateway.db.models import Artifact, Checkpoint, Run
from gateway.db.session import driver_transaction
from gateway.db.statements import params, unnest_column
from gateway.projection import RunRow, fold
from gateway.state import GatewayState
from shared.contracts import EventBase, FailureCause, RunFailed, RunnerHeartbeat, RunStatus, event_decoder
from shared.pull import PullConsumer
from shared.tasks import sleep_unless

log = logging.getLogger(__name__)

EVENTS_LOCK = 0x7472_6663_6576  # "trfcev": the advisory lock that orders projector commits
NOTIFY_CHANNEL = "trainforge_events"
BATCH = 500
FETCH_TIMEOUT_S = 0.5
HELD_RECHECK_S = 0.2
"""Fetch timeout while events are held: how soon a filled gap or a finished registration is noticed."""
HELD_MAX = 4 * BATCH
"""Most events held in memory; beyond it the highest seqs are handed back to JetStream (nak with a delay)."""
REGISTRATION_WAIT_S = 60.0
"""Longest a training's run.completed waits for the registrar before it is stored without registration."""
MISSING_RUN_RETRIES = 5
"""An event whose run row does not exist (yet) is redelivered this often before it is stored unfolded."""
MISSING_RUN_DELAY_S = 1.0
EXPECTED_ROW_WAIT_S = 30.0
"""Longest the events of a run are held for the row this gateway said it is writing (`Projector.expect`)."""
EXPECTED_PRUNE_AT = 1000
"""With this many rows announced, those older than `EXPECTED_ROW_WAIT_S` are forgotten."""
BACKOFF_MAX_S = 10.0
STOP_GRACE_S = 5.0
TRAIN_KIND = "yolo.train"
"""Completed runs of this kind are handed to the weights registrar (`gw.registrar`) after commit."""

_INSERT_EVENTS = """
    INSERT INTO events (event_id, run_id, project_id, attempt, seq, type, ts, body)
    SELECT e.event_id, e.run_id, e.project_id, e.attempt, e.seq, e.type, e.ts, e.body::jsonb
    FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::int[], $6::text[], $7::timestamptz[],
                $8::text[])
         WITH ORDINALITY AS e(event_id, run_id, project_id, attempt, seq, type, ts, body, ord)
    ORDER BY e.ord
    ON CONFLICT (run_id, attempt, seq) DO NOTHING
    RETURNING run_id, attempt, seq, position{}
"""
_INSERT_EVENTS_FOR_HUB = _INSERT_EVENTS.format(", project_id, type, body::text AS data")
"""The same, with each new event's JSON as Postgres stores it, for the event hub's live streams (so that an
event sent live reads exactly as when it is replayed)."""
_INSERT_EVENTS = _INSERT_EVENTS.format("")
_LOCK_RUNS = f"""
    SELECT id, owner_id, kind, registration IS NOT NULL AS registered, {", ".join(RunRow.columns())}
    FROM runs WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE
"""


def _insert_rows(table: str, columns: tuple[str, ...]) -> str:
    values = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({values}) ON CONFLICT (id) DO NOTHING"


@functools.cache
def _update_runs(columns: tuple[str, ...]) -> str:
    """One UPDATE for every run of a batch whose fold changed the same `columns` (an array per column)."""
    typed = [unnest_column(Run.__table__, name) for name in columns]
    arrays = ", ".join(f"${i}::{array}" for i, (array, _) in enumerate(typed, 2))
    sets = ", ".join(f"{name} = {read}" for name, (_, read) in zip(columns, typed, strict=True))
    return (f"UPDATE runs SET {sets}, updated_at = now() FROM unnest($1::text[], {arrays}) "
            f"AS v(id, {', '.join(columns)}) WHERE runs.id = v.id")


STORE = "store"
DUPLICATE = "duplicate"
"""Stored already (or stored by this very batch under another message): ack."""
HELD = "held"
"""Behind a seq gap or a registration: keep it unacked."""
DEFERRED = "deferred"
"""Its run row does not exist yet: redeliver it later."""
DROPPED = "dropped"
"""Terminated as poison."""

_STORED_SEQS = """
    SELECT g.run_id, g.attempt,
           (SELECT max(e.seq) FROM events e WHERE e.run_id = g.run_id AND e.attempt = g.attempt) AS seq
    FROM unnest($1::text[], $2::int[]) AS g(run_id, attempt)
"""
"""The highest stored seq of each (run, attempt): one index probe each (`uq_events_run_attempt_seq`)."""


@dataclass(slots=True)
class _Item:
    msg: Msg
    event: EventBase
    body: str
    """The event's JSON as it came on the wire (NUL characters replaced: Postgres' jsonb refuses them)."""
    outcome: str = ""
    """What the last store attempt decided: STORE, DUPLICATE, HELD, DEFERRED or DROPPED."""

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.event.run_id, self.event.attempt, self.event.seq)

    @property
    def group(self) -> tuple[str, int]:
        return (self.event.run_id, self.event.attempt)


class _Poison(Exception):
    """A database error caused by the data of the batch, not by the database being unavailable."""


class _Abandoned(Exception):
    """The projector stops while the database is unavailable: the batch is left to a redelivery."""


class Projector(TaskService):
    """Folds the events stream into Postgres. `start()` / `stop()` from the gateway's lifespan."""

    def __init__(self, gw: GatewayState) -> None:
        self.gw = gw
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._advisories: Subscription | None = None
        self._keepalive_task: asyncio.Task[None] | None = None
        self._ack_wait = gw.settings.projector_ack_wait_s
        self._gap_wait = gw.settings.projector_gap_wait_s
        self._held: list[_Item] = []
        """Events kept unacked behind a gap or a registration, offered again with every batch."""
        self._inflight: list[_Item] = []
        """The batch being stored (kept alive with progress acks like the held events)."""
        self._gaps: dict[tuple[str, int], tuple[int, float]] = {}
        """(run, attempt) -> (the first missing seq, when that gap was first seen)."""
        self._dropped: set[tuple[str, int, int]] = set()
        """Keys terminated as poison: no gap."""
        self._nudged = asyncio.Event()
        """Set by `nudge()`: the held events are looked at again without waiting for the fetch."""
        self._registering: dict[str, float] = {}
        """Run id -> since when its completion waits for the registrar."""
        self._expected: dict[str, float] = {}
        """Run id -> since when this gateway is writing the run's row (`expect`): its events are held, not
        deferred, until `written`."""
        self.projected = 0
        """New events stored since start (duplicates not counted)."""
        self.given_up = 0
        """Seqs passed over because they did not arrive within `projector_gap_wait_s`."""

    async def start(self) -> None:
        names = self.gw.subjects
        config = js_api.ConsumerConfig(
            durable_name=names.projector_consumer,
            filter_subject=names.events_all,
            ack_policy=js_api.AckPolicy.EXPLICIT,
            deliver_policy=js_api.DeliverPolicy.ALL,
            ack_wait=self._ack_wait,
            max_deliver=-1,
            max_ack_pending=20 * BATCH,
        )
        try:
            await self.gw.js.add_consumer(names.events_stream, config)
        except BadRequestError as exc:  # exists with other settings: keep it
            log.warning("projector: kept consumer %s as it is (%s)", names.projector_consumer,
                        exc.description)
        self._sub = await PullConsumer.bind(self.gw.nc, names.events_stream, names.projector_consumer)
        info = await self.gw.js.consumer_info(names.events_stream, names.projector_consumer)
        self._ack_wait = info.config.ack_wait or self._ack_wait  # what the server really applies
        self._advisories = await self.gw.nc.subscribe(
            f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{names.jobs_stream}.*",
            queue="trainforge-gateway", cb=self._on_max_deliveries,
        )
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name="projector")
        self._task.add_done_callback(_log_crash)
        self._keepalive_task = asyncio.create_task(self._keepalive(), name="projector-keepalive")
        self._keepalive_task.add_done_callback(_log_crash)

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
        if self._keepalive_task is not None:
            self._keepalive_task.cancel()
            await asyncio.gather(self._keepalive_task, return_exceptions=True)
            self._keepalive_task = None
        held, self._held = self._held, []
        for item in held:  # another projector may have them now, not after ack_wait
            await _quietly(item.msg.nak())
        await self._sub.unsubscribe()

    # -- the loop ----------------------------------------------------------------------------------------
    async def _run(self) -> None:
        backoff = 0.1
        prefetch: asyncio.Task[list[Msg]] | None = None
        try:
            while not self._stopping.is_set():
                fetch, prefetch = prefetch or asyncio.create_task(self._fetch()), None
                if self._held and await nudge_came_first(fetch, self._nudged):
                    prefetch, msgs = fetch, []  # a held event may be storable now; the fetch goes on meanwhile
                else:
                    try:
                        msgs = await fetch
                    except (TimeoutError, nats.errors.TimeoutError):
                        if not self._held:
                            continue
                        msgs = []  # nothing new: look at the held events again (a gap filled elsewhere, a deadline)
                    except nats.errors.Error as exc:  # disconnected, reconnecting, stream or consumer gone
                        log.warning("projector: fetch failed (%s); retrying in %.1fs", exc, backoff)
                        await self._sleep(backoff)
                        backoff = min(backoff * 2, BACKOFF_MAX_S)
                        continue
                    backoff = 0.1
                    if msgs:  # the next batch comes in while this one is stored (handled strictly after it)
                        prefetch = asyncio.create_task(self._fetch())
                try:
                    await self._handle(msgs)
                except _Abandoned:
                    return
                except Exception:  # noqa: BLE001 - e.g. NATS gone while acking: JetStream redelivers the rest
                    log.exception("projector: handling a batch of %d messages failed", len(msgs))
                    await self._sleep(1.0)
        finally:
            if prefetch is not None:
                await self._give_back(prefetch)

    def nudge(self) -> None:
        """A held event may be storable now (the registrar wrote a run's registration): look at the held
        events at once, not when the fetch under way ends (up to `FETCH_TIMEOUT_S` when it began before they
        were held)."""
        self._nudged.set()

    def expect(self, run_id: str) -> None:
        """This gateway is about to write the row of `run_id` while its events may already be on the way (a
        synchronous prediction writes its run after the answer): hold those events in memory until `written`
        (at most `EXPECTED_ROW_WAIT_S`), instead of handing them back to JetStream for `MISSING_RUN_DELAY_S`.
        A projector of another gateway does not know of it and defers them as for any missing row."""
        now = time.monotonic()
        if len(self._expected) >= EXPECTED_PRUNE_AT:  # announcements whose events never came: bounded memory
            self._expected = {k: since for k, since in self._expected.items() if now - since < EXPECTED_ROW_WAIT_S}
        self._expected[run_id] = now

    def written(self, run_id: str) -> None:
        """The row of an `expect`ed run is committed (or will not be): its held events are stored now."""
        if self._expected.pop(run_id, None) is not None:
            self.nudge()

    def _awaits_row(self, run_id: str) -> bool:
        since = self._expected.get(run_id)
        if since is None:
            return False
        if time.monotonic() - since < EXPECTED_ROW_WAIT_S:
            return True
        log.warning("projector: the row of run %s was not written within %.0fs; its events are deferred",
                    run_id, EXPECTED_ROW_WAIT_S)
        del self._expected[run_id]
        return False

    async def _fetch(self) -> list[Msg]:
        return await self._sub.fetch(BATCH, timeout=HELD_RECHECK_S if self._held else FETCH_TIMEOUT_S)

    @staticmethod
    async def _give_back(prefetch: asyncio.Task[list[Msg]]) -> None:
        """A fetched batch that will not be handled: nak it, so another projector has it now."""
        if not prefetch.done():
            prefetch.cancel()
        try:
            msgs = await asyncio.shield(prefetch) if not prefetch.cancelled() else []
        except (asyncio.CancelledError, Exception):  # noqa: BLE001 - a failed or cancelled fetch holds nothing
            return
        for msg in msgs:
            await _quietly(msg.nak())

    async def _keepalive(self) -> None:
        """Progress acks for the batch being stored and the held events, every third of the ack wait."""
        while not self._stopping.is_set():
            await self._sleep(self._ack_wait / 3)
            for item in [*self._inflight, *self._held]:
                await _quietly(item.msg.in_progress())

    async def _handle(self, msgs: list[Msg]) -> None:
        items: list[_Item] = []
        # the dispatcher hears of runs claimed and ended now, not after the commit (`Dispatcher.saw`)
        dispatcher = self.gw.dispatcher
        watcher = dispatcher.saw if dispatcher is not None else None
        watched: frozenset[str] = dispatcher.live_types if dispatcher is not None else frozenset()
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
            if watcher is not None and event.type in watched:
                watcher(event)
            items.append(_Item(msg, event, _json_text(msg.data)))
        if not items and not self._held:
            return
        items, self._held = [*self._held, *items], []
        self._inflight = items
        try:
            await self._store_with_retry(items)
            for item in items:
                if item.outcome in (STORE, DUPLICATE):
                    await item.msg.ack()
                elif item.outcome == DEFERRED:
                    await item.msg.nak(delay=MISSING_RUN_DELAY_S)
                elif item.outcome == HELD:
                    self._held.append(item)
        except (asyncio.CancelledError, _Abandoned):
            for item in items:  # not committed: let another projector have them now, not after ack_wait
                if item.outcome != DROPPED:
                    await _quietly(item.msg.nak())
            self._held = []
            raise
        finally:
            self._inflight = []
        if len(self._held) > HELD_MAX:  # bounded memory: the newest come back later
            self._held.sort(key=lambda i: i.event.seq)
            for item in self._held[HELD_MAX:]:
                await _quietly(item.msg.nak(delay=1.0))
            del self._held[HELD_MAX:]

    async def _store_with_retry(self, items: list[_Item]) -> None:
        """Store `items`, retrying transient errors; each item's `outcome` says what became of it."""
        backoff = 0.2
        while True:
            try:
                await self._store(items)
                return
            except _Poison:
                if len(items) > 1:  # one by one, in seq order: each finds the one before it stored
                    for item in sorted(items, key=lambda i: i.key):
                        await self._store_with_retry([item])
                    return
                item = items[0]
                log.exception("projector: dropping event %s that the database refuses", item.event.msg_id)
                await item.msg.term()
                item.outcome = DROPPED
                self._dropped.add(item.key)
                return
            except Exception:  # noqa: BLE001 - the database is unreachable or restarting: keep trying
                log.exception("projector: storing %d events failed; retrying in %.1fs", len(items), backoff)
                if self._stopping.is_set():
                    raise _Abandoned from None
                await self._sleep(backoff)  # the keepalive task keeps the messages from redelivery
                backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def _store(self, items: list[_Item]) -> None:
        trained: list[str] = []
        completing: list[tuple[str, EventBase]] = []
        committed: list[tuple[int, str, str, str, str | None]] = []
        try:
            async with driver_transaction(self.gw.engine, opening=f"SELECT pg_advisory_xact_lock({EVENTS_LOCK:d})") as tx:
                max_position = await self._store_in(tx.conn, items, trained, completing, committed)
                if max_position is not None:
                    tx.closing = f"SELECT pg_notify('{NOTIFY_CHANNEL}', '{max_position:d}')"
        except asyncpg.PostgresError as exc:
            if (exc.sqlstate or "")[:2] in ("22", "23", "54"):  # data exception, integrity violation, too large
                raise _Poison(str(exc)) from exc
            raise
        if committed and self.gw.eventhub is not None:  # this gateway's streams need not wait for the NOTIFY
            self.gw.eventhub.committed(sorted(committed))
        registrar = self.gw.registrar
        if trained and registrar is not None:
            registrar.submit(trained)
        for run_id, completion in completing:  # after the commit: the registrar reads the weights artifact
            registrar.prepare(run_id, completion)  # type: ignore[union-attr]

    async def _store_in(self, conn: asyncpg.Connection, items: list[_Item], trained: list[str],
                        completing: list[tuple[str, EventBase]],
                        committed: list[tuple[int, str, str, str, str | None]]) -> int | None:
        """Fold `items` in one transaction (its advisory lock taken); the highest position stored, None when
        nothing new was stored (the commit notifies `NOTIFY_CHANNEL` of it). `trained` gets the ids of `yolo.train` runs it completes without
        registration, `completing` the completions held for the registrar, `committed` the new events
        (position, run, project, type, JSON) for the event hub. Plain asyncpg statements (one
        batch is about ten of them, and SQLAlchemy would double the CPU each costs)."""
        run_ids = sorted({item.event.run_id for item in items})
        rows: dict[str, RunRow] = {}
        owners: dict[str, str | None] = {}
        kinds: dict[str, str] = {}
        registered: set[str] = set()
        for row in await conn.fetch(_LOCK_RUNS, run_ids):
            rows[row["id"]] = RunRow(**{name: row[name] for name in RunRow.columns()})
            owners[row["id"]] = row["owner_id"]
            kinds[row["id"]] = row["kind"]
            if row["registered"]:
                registered.add(row["id"])

        for item in items:
            if item.event.run_id in rows:
                item.outcome = ""
            elif self._awaits_row(item.event.run_id):
                item.outcome = HELD
            else:
                item.outcome = DEFERRED if _deliveries(item.msg) < MISSING_RUN_RETRIES else ""
        candidates = [item for item in items if item.outcome not in (DEFERRED, HELD)]
        if not candidates:
            return None
        groups = sorted({item.group for item in candidates})
        stored = await conn.fetch(_STORED_SEQS, [g[0] for g in groups], [g[1] for g in groups])
        self._hold_gaps(candidates, {(r["run_id"], r["attempt"]): r["seq"] for r in stored})
        storing = self._in_seq_order(candidates)
        self._hold_completions(storing, rows, kinds, registered, completing)
        storing = [item for item in storing if item.outcome == STORE]
        if not storing:
            return None
        for item in storing:
            if item.event.run_id not in rows:
                log.warning("projector: event %s of unknown run %s stored without changing any run",
                            item.event.type, item.event.run_id)

        events = [item.event for item in storing]
        hub = self.gw.eventhub
        for_hub = hub is not None and hub.listening
        inserted = await conn.fetch(
            _INSERT_EVENTS_FOR_HUB if for_hub else _INSERT_EVENTS, [e.event_id for e in events],
            [e.run_id for e in events], [e.project_id for e in events], [e.attempt for e in events],
            [e.seq for e in events], [e.type for e in events], [e.ts for e in events], [i.body for i in storing],
        )
        new: dict[tuple[str, int, int], int] = {(r["run_id"], r["attempt"], r["seq"]): r["position"]
                                                 for r in inserted}
        if not new:
            return None
        max_position = max(new.values())
        if for_hub:
            committed.extend((r["position"], r["run_id"], r["project_id"], r["type"], r["data"]) for r in inserted)
        else:  # nobody listened: the hub moves on (or, if a stream joined since, reads them as usual)
            committed.extend((r["position"], r["run_id"], "", "", None) for r in inserted)

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
                self._registering.pop(run_id, None)
                if run_id not in registered:
                    trained.append(run_id)
            if result_.checkpoint:
                checkpoints.append(result_.checkpoint)
            if result_.artifact:
                artifacts.append({**result_.artifact, "owner_id": owners[run_id]})

        for model, inserts in ((Checkpoint, checkpoints), (Artifact, artifacts)):
            if inserts:
                columns = tuple(inserts[0])  # the fold's rows all have the same keys
                await conn.executemany(_insert_rows(model.__tablename__, columns),
                                       [params(model.__table__, columns, row) for row in inserts])
        alike: dict[tuple[str, ...], list[str]] = defaultdict(list)  # runs whose fold changed the same columns
        for run_id, values in changes.items():
            if values:
                alike[tuple(sorted(values))].append(run_id)
        for names, ids in alike.items():
            by_column = zip(*(params(Run.__table__, names, changes[run_id]) for run_id in ids), strict=True)
            await conn.execute(_update_runs(names), ids, *(list(column) for column in by_column))
        return max_position

    # -- order: seq gaps and registrations ------------------------------------------------------------------
    def _hold_gaps(self, items: list[_Item], stored: dict[tuple[str, int], int]) -> None:
        """Mark each item STORE, DUPLICATE or HELD: a (run, attempt)'s events are stored from its highest
        stored seq on without a gap; a gap older than `projector_gap_wait_s` is given up (logged)."""
        now = time.monotonic()
        by_group: dict[tuple[str, int], list[_Item]] = defaultdict(list)
        for item in items:
            by_group[item.group].append(item)
        for group, members in by_group.items():
            members.sort(key=lambda i: i.event.seq)
            highest = stored.get(group) or 0
            expected = highest + 1
            holding = False
            for item in members:
                seq = item.event.seq
                if holding:
                    item.outcome = HELD
                    continue
                if seq < expected:  # stored before; or the same event twice in this batch: ack it once stored
                    item.outcome = DUPLICATE if seq <= highest else HELD
                    continue
                while expected < seq and (*group, expected) in self._dropped:
                    self._dropped.discard((*group, expected))
                    expected += 1
                if seq > expected:
                    missing, since = self._gaps.get(group, (0, now))
                    if missing != expected:
                        self._gaps[group] = (expected, since := now)
                    if now - since < self._gap_wait:
                        holding = True
                        item.outcome = HELD
                        continue
                    log.error("projector: run %s attempt %d: seq %d..%d did not arrive within %.0fs; storing "
                              "seq %d on without them (if they come, they are stored late, after it)",
                              group[0], group[1], expected, seq - 1, now - since, seq)
                    self.given_up += seq - expected
                    self._gaps.pop(group, None)
                item.outcome = STORE
                expected = seq + 1
            if not holding and (gap := self._gaps.pop(group, None)) is not None:
                waited = now - gap[1]
                log.log(logging.INFO if waited >= 1.0 else logging.DEBUG,
                        "projector: run %s attempt %d: seq %d came after %.1fs; the events held behind it "
                        "are stored", group[0], group[1], gap[0], waited)

    @staticmethod
    def _in_seq_order(items: list[_Item]) -> list[_Item]:
        """The STORE items in batch order, except that each (run, attempt)'s take its places in seq order."""
        storing = [item for item in items if item.outcome == STORE]
        by_group: dict[tuple[str, int], list[_Item]] = defaultdict(list)
        for item in storing:
            by_group[item.group].append(item)
        ordered = {group: iter(sorted(members, key=lambda i: i.event.seq))
                   for group, members in by_group.items()}
        return [next(ordered[item.group]) for item in storing]

    def _hold_completions(self, storing: list[_Item], rows: dict[str, RunRow], kinds: dict[str, str],
                          registered: set[str], completing: list[tuple[str, EventBase]]) -> None:
        """HELD for the run.completed that would complete a `yolo.train` run not registered yet (and what
        follows it in its attempt), while the registrar registers its weights (asked in `completing`)."""
        if self.gw.registrar is None:
            return
        now = time.monotonic()
        folded: dict[str, RunRow] = {}
        cut: set[tuple[str, int]] = set()
        for item in storing:
            run_id = item.event.run_id
            if item.group in cut:
                item.outcome = HELD
                continue
            if kinds.get(run_id) != TRAIN_KIND or run_id in registered:
                continue
            row = folded.get(run_id) or rows[run_id]
            changes = fold(row, item.event).changes
            if changes.get("status") == RunStatus.COMPLETED:
                since = self._registering.setdefault(run_id, now)
                if now - since < REGISTRATION_WAIT_S:
                    completing.append((run_id, item.event))
                    cut.add(item.group)
                    item.outcome = HELD
                    continue
                log.warning("projector: run %s completes before its weights are registered (the registrar "
                            "took over %.0fs); they are registered later", run_id, now - since)
            folded[run_id] = row.apply(changes)

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
        await sleep_unless(self._stopping, seconds)


async def nudge_came_first(fetch: asyncio.Future[Any], nudged: asyncio.Event) -> bool:
    """Wait for `fetch` or `nudged`; True when the nudge came first (`fetch` is left running). The nudge is
    consumed either way."""
    if not fetch.done() and not nudged.is_set():
        waiting = asyncio.create_task(nudged.wait())
        try:
            await asyncio.wait({fetch, waiting}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting.cancel()
    first = nudged.is_set() and not fetch.done()
    nudged.clear()
    return first


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
