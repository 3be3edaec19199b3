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
A project's stream never ends by itself: projects have no end.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from litestar import Controller, Response, get
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, HeaderParameter, QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage
from sqlalchemy import ColumnElement, Text, cast, exists, select

from gateway.db.models import EventRecord, Run
from gateway.errors import BadRequest
from gateway.eventhub import EventHub, HubEvent
from gateway.auth.caller import Me
from gateway.auth.middleware import QUERY_TOKEN_OPT
from gateway.controllers.common import AccessTokenQuery
from gateway.services.projects import get_project
from gateway.services.runs import get_run
from gateway.state import Gateway
from shared.contracts.common import RunStatus
from shared.contracts.events import TERMINAL_EVENT_TYPES

REPLAY_PAGE = 500


class _KeepAlive(ServerSentEventMessage):
    """A comment line and nothing else: not an event to any parser (see the module's docstring)."""

    def encode(self) -> bytes:
        return b": keep-alive\r\n"


KEEP_ALIVE = _KeepAlive(data=None)
FINISHED = ResponseSpec(None, description="The run is finished and nothing follows the given Last-Event-ID: "
                                          "do not reconnect (a 204 stops a browser's EventSource)")

LastEventIdHeader = Annotated[
    str | None,
    HeaderParameter(name="Last-Event-ID", required=False, description="Resume after this event id"),
]
LastEventIdQuery = Annotated[
    int | None,
    QueryParameter(name="last_event_id", required=False, ge=0, description="Resume after this event id"),
]


class EventsController(Controller):
    tags = ["events"]

    @get("/runs/{run_id:str}/events", summary="Live events of a run (Server-Sent Events)",
         opt={QUERY_TOKEN_OPT: True}, responses={204: FINISHED})
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
    ) -> ServerSentEvent:
        start = _resume_point(last_event_id_header, last_event_id)
        async with gw.sessionmaker() as session:
            project_id = (await get_project(session, ref, me)).id
        return ServerSentEvent(
            _stream(gw, {"project_id": project_id}, EventRecord.project_id == project_id, start))


def _hub(gw: Gateway) -> EventHub:
    return gw.extras["eventhub"]  # type: ignore[return-value]


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
                  run_id: str | None = None) -> AsyncIterator[ServerSentEventMessage]:
    """Replay past `last`, then live events; for a run, stop after the event that made it terminal."""
    keepalive = gw.settings.sse_keepalive_s
    with _hub(gw).subscribe(**topic) as sub:  # before the replay: what commits meanwhile is queued
        # The run's status is read before the replay: if it is terminal, the replay holds its terminal event.
        terminal = run_id is not None and await _is_terminal(gw, run_id)
        replayed_terminal = False
        async for message, last in _replay(gw, where, last):
            yield message
            replayed_terminal = replayed_terminal or message.event in TERMINAL_EVENT_TYPES
        if terminal:
            return
        if run_id is not None and replayed_terminal and await _is_terminal(gw, run_id):
            # It ended during the replay: the hub's copy of that event is skipped below, so end here.
            async for message, last in _replay(gw, where, last):
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
            if event.position <= last:
                continue
            yield _message(event.position, event.type, event.data)
            last = event.position
            if run_id is not None and event.type in TERMINAL_EVENT_TYPES and await _is_terminal(gw, run_id):
                # Events committed with the terminal one may still be queued: send them from Postgres.
                async for message, last in _replay(gw, where, last):
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
