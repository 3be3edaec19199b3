"""Live run and project events as Server-Sent Events, resumable with `Last-Event-ID`.

Each message: `id` = the event's position in the projection (monotonic), `event` = its type, `data` = its
JSON. A client that reconnects with `Last-Event-ID: <id>` (or `?last_event_id=<id>`) gets every event after
it, none twice: the stream subscribes to the event hub FIRST, then replays Postgres past the id, then
forwards live events skipping positions already sent. A comment line keeps idle connections alive every
`sse_keepalive_s`: the line `: keep-alive` alone, never followed by a blank line, so that no parser takes it
for an event (a blank line after a comment makes some, httpx-sse among them, dispatch an empty event carrying
the last id).

A run's stream ends (200) after the event that made the run terminal. A browser's EventSource then reconnects
with `Last-Event-ID`; a request for a finished run with nothing past its id is answered 204, which stops it.
A project's stream never ends by itself: projects have no end. With `?tail=true` (and no `Last-Event-ID`) it
replays nothing: its first message is a bare `id: <newest stored event>` line (no data, so no event is
dispatched, but a browser's EventSource takes it as its last event id), then what follows live; a page that
shows the current state from the REST API (the dashboard's project page) follows changes without reading the
project's whole history, and a reconnect still resumes with `Last-Event-ID` from that point.

A project's stream can be narrowed: `?types=run.queued,run.completed` sends only events of those types (in the
replay and live, after a reconnect too), and `?history=N` (without `Last-Event-ID`) replays only the newest N
stored events (of those types), then sends a `stream.replayed` event (no id; data `{"last_event_id": <id>}`)
that says where the stored history ends and the live part begins: the dashboard's event feed shows the
project's own status events, claims, retries and cancels before the page opened included, without reading its
log lines.
"""

from __future__ import annotations

import json
import typing
from collections.abc import AsyncIterator
from typing import Annotated

from litestar import Controller, Response, get
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, HeaderParameter, QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage
from sqlalchemy import ColumnElement, Text, and_, cast, exists, func, select

from gateway.apispec import EVENT_STREAM, MEDIA_TYPE_OPT
from gateway.auth.caller import Me
from gateway.auth.middleware import QUERY_TOKEN_OPT
from gateway.controllers.common import AccessTokenQuery
from gateway.db.models import EventRecord, Run
from gateway.errors import BadRequest
from gateway.eventhub import EventHub, HubEvent
from gateway.services.projects import get_project
from gateway.services.runs import get_run
from gateway.state import Gateway
from shared.contracts.common import RunStatus
from shared.contracts.events import TERMINAL_EVENT_TYPES, RunEvent

REPLAY_PAGE = 500
MAX_HISTORY = 10_000
EVENT_TYPES = frozenset(str(t.__struct_config__.tag) for t in typing.get_args(RunEvent))
REPLAYED = "stream.replayed"


class _KeepAlive(ServerSentEventMessage):
    """A comment line and nothing else: not an event to any parser (see the module's docstring)."""

    def encode(self) -> bytes:
        return b": keep-alive\r\n"


class _EncodedOnce(ServerSentEventMessage):
    """A live event's message: encoded by the first stream that sends it, the bytes reused by the others
    (a thousand streams of one project send the same bytes)."""

    _encoded: bytes | None = None

    def encode(self) -> bytes:
        if self._encoded is None:
            self._encoded = super().encode()
        return self._encoded


def _live(event: HubEvent) -> ServerSentEventMessage:
    if event.message is None:
        event.message = _EncodedOnce(id=event.position, event=event.type, data=event.data)
    return event.message  # type: ignore[no-any-return]


KEEP_ALIVE = _KeepAlive(data=None)
FINISHED = ResponseSpec(None, description="The run is finished and nothing follows the given Last-Event-ID: "
                                          "do not reconnect (a 204 stops a browser's EventSource)")

LastEventIdHeader = Annotated[
    str | None,
    HeaderParameter(name="Last-Event-ID", required=False, description="Resume after this event id"),
]
TailQuery = Annotated[
    bool,
    QueryParameter(name="tail", required=False,
                   description="Without Last-Event-ID: replay nothing, start after the newest stored event "
                               "(the first message is a bare `id:` line naming it)"),
]
TypesQuery = Annotated[
    str | None,
    QueryParameter(name="types", required=False, max_length=1024,
                   description="Only events of these types, comma-separated (`run.queued,run.completed`): in the "
                               "replay and live"),
]
HistoryQuery = Annotated[
    int | None,
    QueryParameter(name="history", required=False, ge=0, le=MAX_HISTORY,
                   description="Without Last-Event-ID: replay only the newest N stored events (of `types`), then "
                               "a `stream.replayed` event (`{\"last_event_id\": id}`), then what follows live"),
]
LastEventIdQuery = Annotated[
    int | None,
    QueryParameter(name="last_event_id", required=False, ge=0, description="Resume after this event id"),
]


class EventsController(Controller):
    tags = ["events"]

    @get("/runs/{run_id:str}/events", summary="Live events of a run (Server-Sent Events)",
         opt={QUERY_TOKEN_OPT: True, MEDIA_TYPE_OPT: EVENT_STREAM}, responses={204: FINISHED})
    async def run_events(
        self, gw: Gateway, me: Me, run_id: FromPath[str], last_event_id_header: LastEventIdHeader = None,
        last_event_id: LastEventIdQuery = None, access_token: AccessTokenQuery = None,
    ) -> Response:  # type: ignore[type-arg]
        start = _resume_point(last_event_id_header, last_event_id)
        async with gw.sessionmaker() as session:
            run = await get_run(session, run_id, me)
            # The status first: once it reads terminal, the terminal event is stored (one transaction).
            if RunStatus(run.status).terminal and not (await session.execute(select(exists().where(
                    EventRecord.run_id == run_id, EventRecord.position > start)))).scalar():
                return Response(None, status_code=204)
        return ServerSentEvent(
            _stream(gw, {"run_id": run_id}, EventRecord.run_id == run_id, start, run_id=run_id))

    @get("/projects/{ref:str}/events", summary="Live events of every run of a project (Server-Sent Events)",
         opt={QUERY_TOKEN_OPT: True})
    async def project_events(
        self, gw: Gateway, me: Me, ref: FromPath[str], last_event_id_header: LastEventIdHeader = None,
        last_event_id: LastEventIdQuery = None, access_token: AccessTokenQuery = None,
        tail: TailQuery = False, types: TypesQuery = None, history: HistoryQuery = None,
    ) -> ServerSentEvent:
        start = _resume_point(last_event_id_header, last_event_id)
        resuming = last_event_id is not None or bool(last_event_id_header and last_event_id_header.strip())
        wanted = _event_types(types)
        async with gw.sessionmaker() as session:
            project_id = (await get_project(session, ref, me)).id
            where = EventRecord.project_id == project_id
            if wanted is not None:
                where = and_(where, EventRecord.type.in_(sorted(wanted)))
            if history is not None and not resuming:
                # read before the stream subscribes: whatever commits meanwhile is replayed past this point
                if history == 0:
                    start = (await session.execute(select(func.coalesce(func.max(EventRecord.position), 0))
                                                   .where(where))).scalar_one()
                else:
                    oldest = (await session.execute(select(EventRecord.position).where(where)
                                                    .order_by(EventRecord.position.desc())
                                                    .offset(history - 1).limit(1))).scalar_one_or_none()
                    start = oldest - 1 if oldest is not None else 0
                return ServerSentEvent(_stream(gw, {"project_id": project_id}, where, start, types=wanted,
                                               mark_replayed=True))
            if tail and not resuming:
                start = (await session.execute(select(func.coalesce(func.max(EventRecord.position), 0))
                                               .where(EventRecord.project_id == project_id))).scalar_one()
                stream = _stream(gw, {"project_id": project_id}, where, start, types=wanted)
                return ServerSentEvent(_after_mark(start, stream))
        return ServerSentEvent(_stream(gw, {"project_id": project_id}, where, start, types=wanted))


def _event_types(types: str | None) -> frozenset[str] | None:
    """The `types` query as a set; 400 naming the unknown ones."""
    if types is None:
        return None
    wanted = frozenset(t.strip() for t in types.split(",") if t.strip())
    if unknown := sorted(wanted - EVENT_TYPES):
        message = f"unknown event types {', '.join(unknown)} (known: {', '.join(sorted(EVENT_TYPES))})"
        raise BadRequest(message, errors=[{"field": "types", "message": message}])
    return wanted


async def _after_mark(position: int, stream: AsyncIterator[ServerSentEventMessage],
                      ) -> AsyncIterator[ServerSentEventMessage]:
    """A bare `id:` line (sets the client's last event id, dispatches no event), then the stream."""
    yield ServerSentEventMessage(id=position, data=None)
    async for message in stream:
        yield message


def _hub(gw: Gateway) -> EventHub:
    assert gw.eventhub is not None, "the event hub starts with the gateway"
    return gw.eventhub


def _resume_point(header: str | None, query: int | None) -> int:
    if query is not None:
        return query
    if header is None or not header.strip():
        return 0
    try:
        value = int(header.strip())
    except ValueError:
        raise BadRequest(f"Last-Event-ID must be an event id from this stream, not {header!r}") from None
    return max(value, 0)


def _message(position: int, type_: str, data: str) -> ServerSentEventMessage:
    return ServerSentEventMessage(id=position, event=type_, data=data)


async def _stream(gw: Gateway, topic: dict[str, str], where: ColumnElement[bool], last: int,
                  run_id: str | None = None, types: frozenset[str] | None = None, mark_replayed: bool = False,
                  ) -> AsyncIterator[ServerSentEventMessage]:
    """Replay past `last`, then live events; for a run, stop after the event that made it terminal. Only
    `types` (when given: `where` selects the same ones from Postgres); `mark_replayed`: a `stream.replayed`
    event between the replay and the live part."""
    keepalive = gw.settings.sse_keepalive_s
    with _hub(gw).subscribe(**topic) as sub:  # before the replay: what commits meanwhile is queued
        # The run's status is read before the replay: if it is terminal, the replay holds its terminal event.
        terminal = run_id is not None and await _is_terminal(gw, run_id)
        replayed_terminal = False
        async for message, last in _replay(gw, where, last):  # noqa: B007, B020, PLR1704 - `last` moves on
            yield message
            replayed_terminal = replayed_terminal or message.event in TERMINAL_EVENT_TYPES
        if terminal:
            return
        if mark_replayed:
            yield ServerSentEventMessage(event=REPLAYED, data=json.dumps({"last_event_id": last}))
        if run_id is not None and replayed_terminal and await _is_terminal(gw, run_id):
            # It ended during the replay: the hub's copy of that event is skipped below, so end here.
            async for message, last in _replay(gw, where, last):  # noqa: B007, B020, PLR1704 - `last` moves on
                yield message
            return
        while True:
            try:
                event: HubEvent | None = await sub.next(timeout=keepalive)
            except TimeoutError:
                yield KEEP_ALIVE
                continue
            if event is None:
                return  # dropped (too slow) or shutting down: the client resumes with Last-Event-ID
            if event.position <= last or (types is not None and event.type not in types):
                continue
            yield _live(event)
            last = event.position
            if run_id is not None and event.type in TERMINAL_EVENT_TYPES and await _is_terminal(gw, run_id):
                # Events committed with the terminal one may still be queued: send them from Postgres.
                async for message, last in _replay(gw, where, last):  # noqa: B007, B020, PLR1704 - `last` moves on
                    yield message
                return


async def _replay(gw: Gateway, where: ColumnElement[bool],
                  after: int) -> AsyncIterator[tuple[ServerSentEventMessage, int]]:
    query = select(EventRecord.position, EventRecord.type, cast(EventRecord.body, Text)).where(where)
    while True:
        async with gw.sessionmaker() as session:
            rows = (await session.execute(
                query.where(EventRecord.position > after).order_by(EventRecord.position).limit(REPLAY_PAGE)
            )).all()
        for position, type_, data in rows:
            after = position
            yield _message(position, type_, data), position
        if len(rows) < REPLAY_PAGE:
            return


async def _is_terminal(gw: Gateway, run_id: str) -> bool:
    async with gw.sessionmaker() as session:
        status = (await session.execute(select(Run.status).where(Run.id == run_id))).scalar_one_or_none()
    return status is None or RunStatus(status).terminal
