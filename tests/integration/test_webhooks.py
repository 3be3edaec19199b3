"""Webhooks: a run's events POSTed, signed, to a real HTTP receiver on loopback (allowed by setting); retries
with backoff until it answers 2xx, one delivery id throughout, the delivery log; refused URLs; isolation."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import msgspec
import uvicorn

from gateway.webhooks.consumer import NOTHING, consumer_config, current_subjects
from shared.settings import Settings
from tests.auth_support import bearer, create_user
from tests.conftest import _asyncpg_dsn
from tests.integration.rest_helpers import api, in_app, new_project, problem, start_run
from tests.integration.runner_support import running_agent

SECRET = "a-webhook-secret-for-tests"


@dataclass
class Receiver:
    """A real HTTP server: answers 500 to the first `failures` requests, then 204; keeps every request."""

    failures: int = 0
    url: str = ""
    received: asyncio.Queue[tuple[dict[str, str], bytes, int]] = field(default_factory=asyncio.Queue)
    seen: int = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.seen += 1
        status = 500 if self.seen <= self.failures else 204
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        await self.received.put((headers, body, status))
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"no" if status == 500 else b""})

    async def next(self, timeout: float = 60) -> tuple[dict[str, str], bytes, int]:
        return await asyncio.wait_for(self.received.get(), timeout)


@asynccontextmanager
async def receiving(failures: int = 0) -> AsyncIterator[Receiver]:
    receiver = Receiver(failures=failures)
    server = uvicorn.Server(uvicorn.Config(receiver, host="127.0.0.1", port=0, lifespan="off", log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    receiver.url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}/hooks/trainforge"
    try:
        yield receiver
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


def verified(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """The receiver's check, as docs/operations.md shows it."""
    timestamp = headers["trainforge-timestamp"]
    expected = "v1=" + hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return abs(time.time() - int(timestamp)) < 300 and hmac.compare_digest(expected, headers["trainforge-signature"])


def allowing_loopback(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, webhook_allowed_hosts=["127.0.0.1"], webhook_backoff_s=0.2,
                                   webhook_max_attempts=5)


async def until_delivered(client: Any, ref: str, hook_id: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        page = (await client.get(f"/api/v1/projects/{ref}/webhooks/{hook_id}/deliveries")).json()
        if page["items"] and page["items"][0]["status"] != "pending":
            return page
        assert time.monotonic() < deadline, f"delivery still pending: {page}"
        await asyncio.sleep(0.1)  # the log is written right after the receiver's answer


async def test_a_runs_terminal_event_arrives_signed_after_two_failures(settings: Settings) -> None:
    settings = allowing_loopback(settings)
    async with receiving(failures=2) as receiver, api(settings) as client:
        project = await new_project(client, "hooked")
        created = await client.post("/api/v1/projects/hooked/webhooks", json={"url": receiver.url, "secret": SECRET})
        assert created.status_code == 201, created.text
        hook = created.json()
        assert hook["secret"] == SECRET and hook["event_types"] == ["run.canceled", "run.completed", "run.failed"]
        listed = (await client.get("/api/v1/projects/hooked/webhooks")).json()
        assert listed["total"] == 1 and "secret" not in listed["items"][0]

        async with running_agent(settings):
            run = (await start_run(client, "hooked")).json()
            attempts = [await receiver.next() for _ in range(3)]

        statuses = [status for _, _, status in attempts]
        assert statuses == [500, 500, 204]
        delivery_ids = {headers["trainforge-delivery"] for headers, _, _ in attempts}
        assert len(delivery_ids) == 1
        for headers, body, _ in attempts:
            assert verified(SECRET, headers, body)
            assert not verified("another-secret-entirely", headers, body)
            assert headers["trainforge-event"] == "run.completed"
        payload = json.loads(attempts[-1][1])
        assert payload["type"] == "run.completed" and payload["run_id"] == run["id"]
        assert payload["project_id"] == project["id"] and payload["event"]["run_id"] == run["id"]
        assert payload["delivery_id"] in delivery_ids and payload["webhook_id"] == hook["id"]

        page = await until_delivered(client, "hooked", hook["id"])
        assert page["total"] == 1
        delivery = page["items"][0]
        assert delivery["id"] in delivery_ids
        assert (delivery["status"], delivery["attempts"], delivery["last_status_code"]) == ("delivered", 3, 204)
        assert delivery["event_type"] == "run.completed" and delivery["run_id"] == run["id"]
        assert receiver.received.empty()  # the queued/started/log events were not wanted

        assert (await client.delete(f"/api/v1/projects/hooked/webhooks/{hook['id']}")).status_code == 204
        assert (await client.get("/api/v1/projects/hooked/webhooks")).json()["total"] == 0


async def test_a_receiver_that_keeps_failing_is_given_up_after_the_bounded_attempts(settings: Settings) -> None:
    settings = msgspec.structs.replace(allowing_loopback(settings), webhook_max_attempts=2)
    async with receiving(failures=100) as receiver, api(settings) as client:
        await new_project(client, "flaky")
        hook = (await client.post("/api/v1/projects/flaky/webhooks",
                                  json={"url": receiver.url, "event_types": ["run.canceled"]})).json()
        assert hook["secret"].startswith("whsec_")  # generated when none is given
        run = (await start_run(client, "flaky")).json()  # no runner: canceled while queued
        assert (await client.post(f"/api/v1/runs/{run['id']}/cancel")).status_code == 202
        first, second = await receiver.next(), await receiver.next()
        assert verified(hook["secret"], *first[:2]) and verified(hook["secret"], *second[:2])
        delivery = (await until_delivered(client, "flaky", hook["id"]))["items"][0]
        assert (delivery["status"], delivery["attempts"], delivery["last_status_code"]) == ("failed", 2, 500)
        assert delivery["last_error"].startswith("HTTP 500")


async def until(condition: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"still not {what}"
        await asyncio.sleep(0.02)


async def canceled_run(client: Any, ref: str) -> str:
    """A run canceled while queued (no runner): its run.canceled goes through the deliverer."""
    run = (await start_run(client, ref)).json()
    assert (await client.post(f"/api/v1/runs/{run['id']}/cancel")).status_code == 202
    return str(run["id"])


async def test_the_deliverer_reads_a_projects_webhooks_once_until_a_change_is_notified(settings: Settings) -> None:
    """No query of the webhooks table per batch of events: the list is kept until the table's trigger notifies
    a change (from any gateway), and a lost listening connection makes it read again."""
    settings = allowing_loopback(settings)
    async with receiving() as receiver, api(settings) as client:
        cache = client.app.state.gw.webhooks.cache
        await new_project(client, "cached")
        first = (await client.post("/api/v1/projects/cached/webhooks",
                                   json={"url": receiver.url, "event_types": ["run.canceled"]})).json()
        run = await canceled_run(client, "cached")
        _, body, _ = await receiver.next()
        assert json.loads(body)["run_id"] == run and json.loads(body)["webhook_id"] == first["id"]
        reads = cache.reads
        for _ in range(3):
            run = await canceled_run(client, "cached")
            _, body, _ = await receiver.next()
            assert json.loads(body)["run_id"] == run
        assert cache.reads == reads  # three runs' run.canceled, not one read

        # the listening connection dies (a database restart, say): the next batch listens again, then reads
        lost = cache.generation
        db = await asyncpg.connect(_asyncpg_dsn(settings.database_url))
        try:
            ended = await db.fetchval("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE "
                                      "datname = current_database() AND query LIKE 'LISTEN%trainforge_webhooks%'")
        finally:
            await db.close()
        assert ended == 1
        await until(lambda: cache.generation > lost, "told of the lost connection")
        second = (await client.post("/api/v1/projects/cached/webhooks",
                                    json={"url": receiver.url, "event_types": ["run.canceled"]})).json()
        run = await canceled_run(client, "cached")
        got = [json.loads((await receiver.next())[1]) for _ in range(2)]
        assert {g["webhook_id"] for g in got} == {first["id"], second["id"]} and {g["run_id"] for g in got} == {run}
        assert cache.listening


async def test_the_deliverers_consumer_takes_only_the_events_some_webhook_wants(settings: Settings) -> None:
    """Events of a project without webhooks, and types no webhook wants, are not handed to the deliverer at
    all: its consumer's filter follows the webhooks as they are created and deleted (gateway.webhooks.consumer),
    and a consumer of an earlier version, which took every event, is narrowed when the deliverer starts."""
    settings = allowing_loopback(settings)
    async with receiving() as receiver, api(settings) as client:
        gw = client.app.state.gw
        base = gw.subjects.events_all[:-1]

        async def handed_out() -> int:
            info = await gw.js.consumer_info(gw.subjects.events_stream, gw.subjects.webhooks_consumer)
            return int(info.delivered.consumer_seq)

        assert in_app(client, current_subjects, gw) == [base + NOTHING]  # no webhook: no event
        wanted = await new_project(client, "wanted")
        await new_project(client, "quiet")
        hook = (await client.post("/api/v1/projects/wanted/webhooks",
                                  json={"url": receiver.url, "event_types": ["run.canceled"]})).json()
        assert in_app(client, current_subjects, gw) == [f"{base}{wanted['id']}.*.run.canceled"]
        before = in_app(client, handed_out)
        await canceled_run(client, "quiet")  # published first: passed over before the one below
        run = await canceled_run(client, "wanted")
        _, body, _ = await receiver.next()
        assert json.loads(body)["run_id"] == run
        assert in_app(client, handed_out) - before == 1  # not run.queued, not the quiet project's events

        assert (await client.delete(f"/api/v1/projects/wanted/webhooks/{hook['id']}")).status_code == 204
        assert in_app(client, current_subjects, gw) == [base + NOTHING]

        await client.post("/api/v1/projects/wanted/webhooks", json={"url": receiver.url})
        everything = consumer_config(gw, [gw.subjects.events_all])
        everything.filter_subjects, everything.filter_subject = None, gw.subjects.events_all  # as an earlier version made it
        in_app(client, gw.js.add_consumer, gw.subjects.events_stream, everything)
        assert in_app(client, current_subjects, gw) == [gw.subjects.events_all]
        in_app(client, gw.webhooks.stop)
        in_app(client, gw.webhooks.start)
        assert in_app(client, current_subjects, gw) == sorted(
            f"{base}{wanted['id']}.*.{t}" for t in ("run.canceled", "run.completed", "run.failed"))
        assert (await client.delete("/api/v1/projects/wanted")).status_code == 204  # its webhooks go with it
        assert in_app(client, current_subjects, gw) == [base + NOTHING]


async def test_a_webhook_is_not_created_while_nats_cannot_take_its_filter(settings: Settings) -> None:
    settings = allowing_loopback(settings)
    async with receiving() as receiver, api(settings) as client:
        gw = client.app.state.gw
        await new_project(client, "cut-off")
        in_app(client, gw.nc.close)  # the gateway's bus connection is gone
        refused = problem(await client.post("/api/v1/projects/cut-off/webhooks", json={"url": receiver.url}), 503)
        assert "nothing was created" in refused["detail"]
        assert (await client.get("/api/v1/projects/cut-off/webhooks")).json()["total"] == 0


async def test_urls_the_operator_has_not_allowed_are_refused(settings: Settings) -> None:
    async with api(settings) as client:  # no allow-list: public addresses only
        await new_project(client, "guarded")
        for url in ("http://127.0.0.1:8000/hook", "http://10.0.0.7/hook", "http://169.254.169.254/latest",
                    "http://[::1]/hook", "http://192.168.1.1/", "ftp://8.8.8.8/", "http://user:pw@8.8.8.8/",
                    "http:///nohost", "http://0.0.0.0/"):
            refused = problem(await client.post("/api/v1/projects/guarded/webhooks", json={"url": url}), 422)
            assert refused["errors"][0]["field"] == "$.url", refused
        unknown = await client.post("/api/v1/projects/guarded/webhooks",
                                    json={"url": "https://8.8.8.8/hook", "event_types": ["run.exploded"]})
        problem(unknown, 422)
        assert (await client.get("/api/v1/projects/guarded/webhooks")).json()["total"] == 0
    async with api(msgspec.structs.replace(settings, webhook_allowed_hosts=["127.0.0.1"])) as client:
        problem(await client.post("/api/v1/projects/guarded/webhooks", json={"url": "http://10.0.0.7/"}), 422)
        problem(await client.post("/api/v1/projects/guarded/webhooks", json={"url": "https://8.8.8.8/"}), 422)
        allowed = await client.post("/api/v1/projects/guarded/webhooks", json={"url": "http://127.0.0.1:9/"})
        assert allowed.status_code == 201, allowed.text


async def test_addresses_are_checked_again_at_delivery_time(settings: Settings) -> None:
    """A webhook made while loopback was allowed is not delivered by a gateway that no longer allows it."""
    async with receiving() as receiver:
        async with api(allowing_loopback(settings)) as client:
            await new_project(client, "moved")
            hook = (await client.post("/api/v1/projects/moved/webhooks",
                                      json={"url": receiver.url, "event_types": ["run.canceled"]})).json()
        strict = msgspec.structs.replace(settings, webhook_max_attempts=1)
        async with api(strict) as client:
            run = (await start_run(client, "moved")).json()
            assert (await client.post(f"/api/v1/runs/{run['id']}/cancel")).status_code == 202
            delivery = (await until_delivered(client, "moved", hook["id"]))["items"][0]
        assert delivery["status"] == "failed" and delivery["last_error"].startswith("refused: "), delivery
        assert receiver.received.empty()


async def test_another_users_project_webhooks_are_not_found(settings: Settings) -> None:
    settings = allowing_loopback(settings)
    async with api(settings) as client:
        await new_project(client, "private")
        hook = (await client.post("/api/v1/projects/private/webhooks", json={"url": "http://127.0.0.1:9/"})).json()
        bob = bearer(await create_user(client, "bob"))
        base = "/api/v1/projects/private/webhooks"
        problem(await client.post(base, json={"url": "http://127.0.0.1:9/"}, headers=bob), 404)
        problem(await client.get(base, headers=bob), 404)
        problem(await client.get(f"{base}/{hook['id']}/deliveries", headers=bob), 404)
        problem(await client.delete(f"{base}/{hook['id']}", headers=bob), 404)
        assert (await client.get(base)).json()["total"] == 1
        # a project member below owner sees the project, not its webhooks
        assert (await client.put("/api/v1/projects/private/members/bob", json={"role": "member"})).status_code == 200
        problem(await client.get(base, headers=bob), 403)
        problem(await client.get("/api/v1/projects/private/webhooks/no-such/deliveries"), 404)
