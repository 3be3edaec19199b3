"""Live events over Server-Sent Events from a real uvicorn server: order, resume, keep-alive, closing."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
import uvicorn
from httpx_sse import aconnect_sse
from httpx_sse._decoders import SSEDecoder

from gateway.state import GatewayState
from shared.contracts import EventBase, RunClaimed, RunCompleted, RunProgress, RunStarted
from shared.settings import Settings
from tests.auth_support import bearer, login
from tests.integration.events_support import add_project_and_runs, gateway_state, publish
from tests.integration.rest_helpers import served_uvicorn


@dataclass
class Server:
    url: str
    gw: GatewayState
    """A separate connection to the same NATS and Postgres, for the test's own rows and events."""
    uvicorn: uvicorn.Server
    headers: dict[str, str]
    """The first admin's authorization."""


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[Server]:
    async with served_uvicorn(settings) as (url, srv), gateway_state(settings) as gw, \
            httpx.AsyncClient(base_url=url) as client:
        token = (await login(client))["access_token"]
        yield Server(url, gw, srv, bearer(token))


def progress(project_id: str, run_id: str, first_seq: int, count: int) -> list[EventBase]:
    return [RunProgress(run_id=run_id, project_id=project_id, attempt=1, runner_id="w1", seq=s,
                        progress=s / 1000) for s in range(first_seq, first_seq + count)]


def lifecycle(project_id: str, run_id: str, steps: int) -> list[EventBase]:
    base = {"run_id": run_id, "project_id": project_id, "attempt": 1, "runner_id": "w1"}
    return [RunClaimed(**base, seq=1), RunStarted(**base, seq=2), *progress(project_id, run_id, 3, steps),
            RunCompleted(**base, seq=3 + steps, exit_code=0)]


async def collect(client: httpx.AsyncClient, url: str, limit: int | None = None,
                  headers: dict[str, str] | None = None) -> tuple[list[tuple[int, str, dict]], bool]:
    """(id, type, data) of the stream's messages, and whether the server ended the stream."""
    got: list[tuple[int, str, dict]] = []
    async with aconnect_sse(client, "GET", url, headers=headers or {}) as source:
        assert source.response.status_code == 200
        async for sse in source.aiter_sse():
            got.append((int(sse.id), sse.event, json.loads(sse.data)))
            if limit is not None and len(got) >= limit:
                return got, False
    return got, True


async def test_run_stream_delivers_live_events_in_order_and_closes_after_the_terminal_one(
    server: Server,
) -> None:
    project_id, (run_id,) = await add_project_and_runs(server.gw)
    events = lifecycle(project_id, run_id, steps=30)
    async with httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=15) as client:
        reader = asyncio.create_task(collect(client, f"/api/v1/runs/{run_id}/events"))
        await asyncio.sleep(0.3)  # the stream is open and waiting
        for event in events:  # one by one, as a runner would
            await publish(server.gw, event)
        got, ended = await asyncio.wait_for(reader, 15)
    assert ended, "the run's stream ends after its terminal event"
    ids = [i for i, _, _ in got]
    assert ids == sorted(set(ids)), "ids are strictly increasing"
    assert [(t, d["seq"]) for _, t, d in got] == [(e.type, e.seq) for e in events]
    assert got[-1][2]["exit_code"] == 0 and got[-1][2]["run_id"] == run_id


async def test_reconnecting_with_last_event_id_resumes_without_gap_or_duplicate(server: Server) -> None:
    project_id, (run_id,) = await add_project_and_runs(server.gw)
    events = lifecycle(project_id, run_id, steps=200)
    await publish(server.gw, *events[:100])
    async with httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=15) as client:
        first, ended = await collect(client, f"/api/v1/runs/{run_id}/events", limit=40)
        assert not ended
        await publish(server.gw, *events[100:])  # while the client is away
        rest, ended = await asyncio.wait_for(collect(
            client, f"/api/v1/runs/{run_id}/events", headers={"Last-Event-ID": str(first[-1][0])}), 15)
        assert ended
        by_query, _ = await collect(client, f"/api/v1/runs/{run_id}/events?last_event_id={first[-1][0]}")
    assert [d["seq"] for _, _, d in first + rest] == [e.seq for e in events]
    assert [i for i, _, _ in first + rest] == sorted({i for i, _, _ in first + rest})
    assert by_query == rest


async def test_a_resume_in_the_middle_of_live_traffic_misses_nothing(server: Server) -> None:
    project_id, (run_id,) = await add_project_and_runs(server.gw)
    events = lifecycle(project_id, run_id, steps=1500)
    async with httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=30) as client:
        publisher = asyncio.create_task(publish(server.gw, *events))
        got: list[tuple[int, str, dict]] = []
        ended = False
        while not ended:  # drop the connection every 100 events and resume where it stopped
            headers = {"Last-Event-ID": str(got[-1][0])} if got else {}
            part, ended = await asyncio.wait_for(
                collect(client, f"/api/v1/runs/{run_id}/events", limit=100, headers=headers), 20)
            got += part
            ended = ended or (got and got[-1][1] == "run.completed")
        await publisher
    assert [d["seq"] for _, _, d in got] == [e.seq for e in events]


async def test_idle_stream_sends_keep_alive_comments(server: Server) -> None:
    project_id, (run_id,) = await add_project_and_runs(server.gw)
    lines: list[str] = []
    async with httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=15) as client:
        async with client.stream("GET", f"/api/v1/runs/{run_id}/events") as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            started = time.monotonic()
            async for line in response.aiter_lines():
                lines.append(line)
                if sum(line.startswith(":") for line in lines) >= 2 or time.monotonic() - started > 5:
                    break
    comments = [line for line in lines if line.startswith(":")]
    assert len(comments) >= 2, lines  # settings fixture: sse_keepalive_s = 1
    assert not any(line.startswith("data:") for line in lines)
    hub = server.uvicorn.config.app.state.gw.eventhub
    for _ in range(100):  # the client went away: its subscription goes too
        if hub.subscribers == 0:
            break
        await asyncio.sleep(0.05)
    assert hub.subscribers == 0


async def test_stream_of_a_finished_run_replays_it_and_closes(server: Server) -> None:
    project_id, (run_id,) = await add_project_and_runs(server.gw)
    events = lifecycle(project_id, run_id, steps=3)
    await publish(server.gw, *events)
    async with httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=15) as client:
        for _ in range(100):  # wait for the projection
            if (await client.get(f"/api/v1/runs/{run_id}/events?last_event_id=0")).text.count("event: ") == 6:
                break
            await asyncio.sleep(0.05)
        got, ended = await asyncio.wait_for(collect(client, f"/api/v1/runs/{run_id}/events"), 15)
        after_last = await client.get(f"/api/v1/runs/{run_id}/events",
                                      headers={"Last-Event-ID": str(got[-1][0])})
    assert ended and len(got) == len(events) and got[-1][1] == "run.completed"
    assert after_last.status_code == 204, "nothing follows: the client must not come back"


async def test_a_reconnect_to_a_finished_run_at_or_past_its_end_is_answered_204(server: Server) -> None:
    project_id, (run_id,) = await add_project_and_runs(server.gw)
    events = lifecycle(project_id, run_id, steps=3)
    async with httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=15) as client:
        reader = asyncio.create_task(collect(client, f"/api/v1/runs/{run_id}/events"))
        await publish(server.gw, *events)
        got, ended = await asyncio.wait_for(reader, 15)  # live, or replayed if the projection was quicker
        assert ended and [t for _, t, _ in got][-1] == "run.completed"
        last, before_last = got[-1][0], got[-2][0]
        url = f"/api/v1/runs/{run_id}/events"
        for params, headers in (({}, {"Last-Event-ID": str(last)}), ({"last_event_id": last}, {}),
                                ({}, {"Last-Event-ID": str(last + 1000)})):
            finished = await client.get(url, params=params, headers=headers)
            assert finished.status_code == 204 and finished.content == b"", (params, headers)
        # short of the end: the rest, then the stream closes; from the start: everything
        rest, ended = await asyncio.wait_for(
            collect(client, url, headers={"Last-Event-ID": str(before_last)}), 15)
        assert ended and [i for i, _, _ in rest] == [last]
        everything, _ = await asyncio.wait_for(collect(client, url), 15)
        assert everything == got


async def test_keep_alives_between_events_are_no_events_to_httpx_sse(server: Server) -> None:
    """A comment after an event with an id, then a blank line, makes httpx-sse dispatch an empty event; the
    keep-alive is one comment line alone, so the bytes decode into exactly the events sent."""
    project_id, (run_id,) = await add_project_and_runs(server.gw)
    events = lifecycle(project_id, run_id, steps=1)
    await publish(server.gw, events[0])
    lines: list[str] = []
    async with httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=15) as client:
        async with aconnect_sse(client, "GET", f"/api/v1/runs/{run_id}/events") as source:
            assert source.response.status_code == 200
            idle, published = 0, False
            async for line in source.response.aiter_lines():  # until the server ends the stream
                lines.append(line)
                idle = 0 if line.startswith("data:") else idle + line.startswith(":")
                if idle == 2 and not published:  # two keep-alives after an event with an id: the rest
                    await publish(server.gw, *events[1:])
                    published = True
    decoder = SSEDecoder()
    decoded = [sse for sse in map(decoder.decode, lines) if sse is not None]
    assert [(sse.event, json.loads(sse.data)["seq"]) for sse in decoded] == [(e.type, e.seq) for e in events]
    keep_alives = [i for i, line in enumerate(lines) if line.startswith(":")]
    assert len(keep_alives) >= 2 and all(lines[i] == ": keep-alive" for i in keep_alives)
    assert all(lines[i + 1] != "" for i in keep_alives if i + 1 < len(lines)), "blank line after keep-alive"


async def test_project_stream_carries_the_events_of_all_its_runs_by_id_or_name(server: Server) -> None:
    project_id, run_ids = await add_project_and_runs(server.gw, runs=3, name="vision")
    _, (other_run,) = await add_project_and_runs(server.gw)
    async with httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=15) as client:
        by_name = asyncio.create_task(collect(client, "/api/v1/projects/vision/events", limit=9))
        by_id = asyncio.create_task(collect(client, f"/api/v1/projects/{project_id}/events", limit=9))
        await asyncio.sleep(0.3)
        await publish(server.gw, *progress("x" * 32, other_run, 1, 2))  # another project's run: not here
        for run_id in run_ids:
            await publish(server.gw, *progress(project_id, run_id, 1, 3))
        (got, _), (got_by_id, _) = await asyncio.wait_for(asyncio.gather(by_name, by_id), 15)
    assert {d["run_id"] for _, _, d in got} == set(run_ids)
    assert got == got_by_id
    assert [i for i, _, _ in got] == sorted({i for i, _, _ in got})


async def test_unknown_run_or_project_is_a_problem_details_404(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=5) as client:
        for url in ("/api/v1/runs/nope/events", "/api/v1/projects/nope/events"):
            response = await client.get(url)
            assert response.status_code == 404
            assert response.headers["content-type"].startswith("application/problem+json")
            assert response.json()["code"] == "not_found"
        bad = await client.get("/api/v1/projects/nope/events", headers={"Last-Event-ID": "abc"})
        assert bad.status_code == 400


async def test_open_streams_do_not_hold_the_server_at_shutdown(server: Server) -> None:
    project_id, (run_id,) = await add_project_and_runs(server.gw)
    async with httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=15) as client:
        reader = asyncio.create_task(collect(client, f"/api/v1/projects/{project_id}/events"))
        await asyncio.sleep(0.3)
        started = time.monotonic()
        server.uvicorn.should_exit = True
        with pytest.raises(httpx.HTTPError):
            await asyncio.wait_for(reader, 10)
    assert time.monotonic() - started < 5


@pytest.mark.slow
async def test_two_hundred_clients_follow_one_project_at_once(server: Server) -> None:
    project_id, (run_id,) = await add_project_and_runs(server.gw)
    limits = httpx.Limits(max_connections=250, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=30, limits=limits) as client:
        readers = [asyncio.create_task(collect(client, f"/api/v1/projects/{project_id}/events", limit=20))
                   for _ in range(200)]
        await asyncio.sleep(2)  # all connected and waiting
        started = time.monotonic()
        await publish(server.gw, *progress(project_id, run_id, 1, 20))
        results = await asyncio.wait_for(asyncio.gather(*readers), 30)
        elapsed = time.monotonic() - started
    print(f"200 clients got 20 events each {elapsed:.2f}s after publishing")
    assert all([d["seq"] for _, _, d in got] == list(range(1, 21)) for got, _ in results)


async def test_a_project_stream_with_tail_replays_nothing_and_marks_where_it_starts(server: Server) -> None:
    project_id, (run_id,) = await add_project_and_runs(server.gw)
    await publish(server.gw, *progress(project_id, run_id, 1, 5))
    async with httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=15) as client:
        stored, _ = await collect(client, f"/api/v1/projects/{project_id}/events", limit=5)  # all 5 projected
        got: list[tuple[str, str, str]] = []
        marked = asyncio.Event()

        async def follow() -> None:
            async with aconnect_sse(client, "GET", f"/api/v1/projects/{project_id}/events?tail=true") as source:
                async for sse in source.aiter_sse():
                    got.append((sse.id, sse.event, sse.data))
                    marked.set()
                    if len(got) == 4:
                        return

        reader = asyncio.create_task(follow())
        await asyncio.wait_for(marked.wait(), 15)  # the mark comes first, before anything new
        await publish(server.gw, *progress(project_id, run_id, 6, 3))
        await asyncio.wait_for(reader, 15)
        # a reconnect from the mark (what a browser sends) gets the same three
        again, _ = await collect(client, f"/api/v1/projects/{project_id}/events?tail=true", limit=3,
                                 headers={"Last-Event-ID": got[0][0]})
    assert got[0] == (str(stored[-1][0]), "message", ""), "a bare id line: the newest stored event"
    assert [json.loads(data)["seq"] for _, _, data in got[1:]] == [6, 7, 8]
    assert [int(i) for i, _, _ in got[1:]] == [i for i, _, _ in again]


async def test_a_project_stream_replays_its_newest_events_of_some_types_marks_the_end_then_follows(
    server: Server,
) -> None:
    project_id, (first, second) = await add_project_and_runs(server.gw, runs=2)
    await publish(server.gw, *lifecycle(project_id, first, steps=5))  # claimed, started, 5 progress, completed
    url = f"/api/v1/projects/{project_id}/events?types=run.claimed,run.started,run.completed&history=2"
    async with httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=15) as client:
        everything, _ = await collect(client, f"/api/v1/projects/{project_id}/events", limit=8)  # all projected
        got: list[tuple[str, str, str]] = []
        replayed = asyncio.Event()

        async def follow() -> None:
            async with aconnect_sse(client, "GET", url) as source:
                async for sse in source.aiter_sse():
                    got.append((sse.id, sse.event, sse.data))
                    if sse.event == "stream.replayed":
                        replayed.set()
                    if len(got) == 5:
                        return

        reader = asyncio.create_task(follow())
        await asyncio.wait_for(replayed.wait(), 15)
        await publish(server.gw, *lifecycle(project_id, second, steps=3))  # its progress is left out
        await asyncio.wait_for(reader, 15)
        # a reconnect keeps the filter: after the first run's start, only its completion and the second's
        again, _ = await collect(client, url, limit=3, headers={"Last-Event-ID": got[0][0]})
        bad = await client.get(f"/api/v1/projects/{project_id}/events?types=run.nope")
    assert [(t, json.loads(d)["run_id"]) for _, t, d in got[:2]] == [("run.started", first), ("run.completed", first)]
    assert got[2][1] == "stream.replayed" and got[2][0] == got[1][0], "no id of its own"
    assert json.loads(got[2][2]) == {"last_event_id": everything[-1][0]}
    assert [(t, json.loads(d)["run_id"]) for _, t, d in got[3:]] == [("run.claimed", second), ("run.started", second)]
    assert [(t, d["run_id"]) for _, t, d in again] == [
        ("run.completed", first), ("run.claimed", second), ("run.started", second)]
    assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "types"
