"""The bus is authenticated and runners run only jobs the gateway signed.

Each test starts its own nats-server with the config `trainforge up` writes (`trainforge.busauth`): users
gateway, runner and reader with their permissions for one bus prefix. The runner under test connects as
`runner` through the TRAINFORGE_NATS_* settings; an outside subscriber connects as `reader` with nats-py.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import nats
import nats.errors
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js import api as js_api

from shared.bus import BusAuthError, connect, ensure_pool_consumer, ensure_topology
from shared.contracts import RunCompleted
from shared.contracts.commands import Limits
from shared.contracts.fleet import RunnerControl
from shared.jobsign import JobSigner, ensure_key_pair
from shared.secretfiles import secrets_dir
from shared.settings import Settings
from shared.subjects import Subjects
from tests.integration.runner_support import POOL, RunEvents, container_job, running_agent, signed_job
from trainforge.busauth import READER_INBOX_PREFIX, BusCredentials
from trainforge.embedded import EmbeddedNats

DENIED_TIMEOUT_S = 1.0
"""A request the server drops for a permissions violation gets no answer: nats-py times out."""


@dataclass
class SecureBus:
    url: str
    credentials: BusCredentials
    settings: Settings
    """A runner's settings: user `runner`, the test's job keys, this server's prefix."""

    def password(self, user: str) -> str:
        return self.credentials.passwords[user]


@pytest.fixture
def secure_bus(tmp_path: Path, job_keys: tuple[Path, Path]) -> Iterator[SecureBus]:
    prefix = f"s{uuid.uuid4().hex[:8]}"
    folder = secrets_dir(tmp_path / "state")
    credentials = BusCredentials.ensure(folder)
    server = EmbeddedNats(tmp_path / "nats", config_file=credentials.write_server_config(folder, prefix))
    url = server.start()
    settings = Settings.from_mapping({
        "nats_url": url, "nats_user": "runner", "nats_password": credentials.passwords["runner"],
        "bus_prefix": prefix, "state_dir": tmp_path / "state", "runner_local_backend": True,
        "job_signing_key_file": job_keys[0], "job_verify_key": str(job_keys[1]),
        "job_ack_wait_s": 3.0, "runner_heartbeat_s": 1.0, "shutdown_grace_s": 2.0, "cancel_grace_s": 2.0,
    })
    try:
        yield SecureBus(url=url, credentials=credentials, settings=settings)
    finally:
        server.stop()


@pytest.fixture
async def gateway_bus(secure_bus: SecureBus) -> AsyncIterator[tuple[NATS, JetStreamContext]]:
    """The gateway's connection (user `gateway`, allowed everything) with the topology declared."""
    settings = msgspec.structs.replace(secure_bus.settings, nats_user="gateway",
                                       nats_password=secure_bus.password("gateway"))
    nc = await connect(settings, name="test gateway")
    js = nc.jetstream()
    await ensure_topology(js, settings)
    try:
        yield nc, js
    finally:
        await nc.close()


class Violations:
    """Collects the permission errors the server reports to a client."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    async def record(self, exc: Exception) -> None:
        self.messages.append(str(exc))

    def about(self, subject: str) -> bool:
        subject = subject.lower()
        return any("permissions violation" in m.lower() and subject in m.lower() for m in self.messages)

    async def wait_about(self, *subjects: str, timeout: float = 20.0) -> bool:
        """Whether the server reported a violation about each subject, waiting (bounded) for the reports: the
        client's error callback may run after the flush that follows the refused publish."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while not all(self.about(subject) for subject in subjects):
                    await asyncio.sleep(0.05)
        return all(self.about(subject) for subject in subjects)


async def test_connecting_without_or_with_wrong_credentials_is_refused(secure_bus: SecureBus) -> None:
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(secure_bus.url, allow_reconnect=False, connect_timeout=2)
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(secure_bus.url, user="runner", password="guess", allow_reconnect=False,
                           connect_timeout=2)
    # the product's connect fails at once on refused credentials instead of retrying forever
    wrong = msgspec.structs.replace(secure_bus.settings, nats_password="guess")
    with pytest.raises(BusAuthError) as refused:
        await asyncio.wait_for(connect(wrong, name="test"), 10)
    assert "guess" not in str(refused.value)
    nc = await connect(secure_bus.settings, name="test runner")
    assert nc.is_connected
    await nc.close()


async def test_reader_follows_events_but_publishes_nothing_and_cannot_touch_jobs_or_the_projector(
    secure_bus: SecureBus, gateway_bus: tuple[NATS, JetStreamContext]
) -> None:
    _, gjs = gateway_bus
    names = Subjects(secure_bus.settings.bus_prefix)
    await gjs.add_consumer(names.events_stream, js_api.ConsumerConfig(
        durable_name=names.projector_consumer, ack_policy=js_api.AckPolicy.EXPLICIT))
    violations = Violations()
    reader = await nats.connect(secure_bus.url, user="reader", password=secure_bus.password("reader"),
                                inbox_prefix=READER_INBOX_PREFIX, error_cb=violations.record)
    try:
        rjs = reader.jetstream()
        events = await rjs.subscribe(names.events_all, ordered_consumer=True)
        event = RunCompleted(run_id="r" * 32, project_id="p1", attempt=1, runner_id="w1", seq=1, exit_code=0)
        await gjs.publish(names.run_event("p1", event.run_id, event.type), msgspec.json.encode(event))
        got = await events.next_msg(timeout=5)
        assert got.subject == names.run_event("p1", event.run_id, "run.completed")
        assert (await rjs.get_last_msg(names.events_stream, got.subject)).data == got.data

        job = container_job("touch /tmp/never")
        forged = msgspec.structs.replace(event, run_id="f" * 32, runner_id="forger")
        with pytest.raises(nats.errors.TimeoutError):
            await rjs.publish(names.job(POOL), msgspec.json.encode(job), timeout=DENIED_TIMEOUT_S)
        with pytest.raises(nats.errors.TimeoutError):
            await rjs.publish(names.run_event("p1", forged.run_id, forged.type), msgspec.json.encode(forged),
                              timeout=DENIED_TIMEOUT_S)
        await reader.publish(names.cancel(event.run_id), b"{}")
        with pytest.raises(nats.errors.TimeoutError):
            await rjs.delete_consumer(names.events_stream, names.projector_consumer)
        # taking the projector's name would update its config (create-or-update): refused too
        rjs_short = reader.jetstream(timeout=DENIED_TIMEOUT_S)
        with pytest.raises(nats.errors.TimeoutError):
            await rjs_short.add_consumer(names.events_stream, js_api.ConsumerConfig(
                durable_name=names.projector_consumer, deliver_subject=f"{READER_INBOX_PREFIX}.x"))
        with pytest.raises(nats.errors.TimeoutError):  # nothing of the jobs stream
            await rjs_short.get_last_msg(names.jobs_stream, names.job(POOL))
        await reader.subscribe(names.job(POOL))
        await reader.subscribe("_INBOX.>")  # other clients' replies carry the jobs runners fetch
        await reader.flush()
        await asyncio.sleep(0.2)
        # its own durable consumer is fine
        await rjs.add_consumer(names.events_stream, js_api.ConsumerConfig(
            durable_name="dashboard", ack_policy=js_api.AckPolicy.EXPLICIT))
        mine = await rjs.pull_subscribe_bind("dashboard", stream=names.events_stream)
        (msg,) = await mine.fetch(1, timeout=5)
        await msg.ack_sync()
    finally:
        await reader.close()

    for subject in (names.job(POOL), names.run_event("p1", "f" * 32, "run.completed"),
                    names.cancel(event.run_id),
                    f"$JS.API.CONSUMER.DELETE.{names.events_stream}.{names.projector_consumer}",
                    f"$JS.API.CONSUMER.DURABLE.CREATE.{names.events_stream}.{names.projector_consumer}",
                    f"$JS.API.STREAM.MSG.GET.{names.jobs_stream}"):
        assert violations.about(subject), (subject, violations.messages)
    assert any("subscription" in m.lower() and names.job(POOL) in m for m in violations.messages)
    assert any("subscription" in m.lower() and "_inbox.>" in m.lower() for m in violations.messages)
    assert (await gjs.stream_info(names.jobs_stream)).state.messages == 0
    assert (await gjs.stream_info(names.events_stream)).state.messages == 1  # only the real event
    projector = await gjs.consumer_info(names.events_stream, names.projector_consumer)
    assert projector.config.deliver_subject is None


async def test_runner_user_runs_a_signed_job_end_to_end_and_may_not_publish_jobs(
    secure_bus: SecureBus, gateway_bus: tuple[NATS, JetStreamContext], tmp_path: Path
) -> None:
    gnc, gjs = gateway_bus
    settings = secure_bus.settings
    names = Subjects(settings.bus_prefix)
    marker = tmp_path / "ran"
    job = msgspec.structs.replace(container_job(f"echo hello; touch {marker}"),  # with leases to take
                                  limits=Limits(total=2, per_user=1, per_project=1))
    async with RunEvents(gjs, settings, job) as events, running_agent(settings) as agent:
        subject, payload, headers = signed_job(settings, job)
        await gjs.publish(subject, payload, headers=headers)
        done = await events.wait_for_type("run.completed", "run.failed", "run.canceled", timeout=20)
        # the runner answers control requests (allow_responses)
        reply = await gnc.request(names.runner_control(agent.runner_id),
                                  msgspec.json.encode(RunnerControl(action="resume")), timeout=5)
        assert msgspec.json.decode(reply.data)["runner_id"] == agent.runner_id
    assert done.type == "run.completed", events.types()
    assert events.types()[:2] == ["run.claimed", "run.started"]
    assert marker.exists()

    violations = Violations()
    runner = await nats.connect(settings.nats_url, user="runner", password=secure_bus.password("runner"),
                                error_cb=violations.record)
    try:
        other = container_job("true")
        subject, payload, headers = signed_job(settings, other)  # even a validly signed one
        with pytest.raises(nats.errors.TimeoutError):
            await runner.jetstream().publish(subject, payload, headers=headers, timeout=DENIED_TIMEOUT_S)
        await runner.publish(names.cancel(job.run_id), b"{}")
        await runner.flush()
        refused = await violations.wait_about(names.job(POOL), names.cancel(job.run_id))
    finally:
        await runner.close()
    assert refused, violations.messages
    assert (await gjs.stream_info(names.jobs_stream)).state.messages == 0


async def test_runner_refuses_unsigned_forged_tampered_and_moved_jobs(
    secure_bus: SecureBus, gateway_bus: tuple[NATS, JetStreamContext], tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Full bus credentials are not enough: only the gateway's key makes a job run."""
    _, gjs = gateway_bus
    settings = secure_bus.settings
    names = Subjects(settings.bus_prefix)
    stranger = tmp_path / "stranger-keys"
    ensure_key_pair(stranger / "key", stranger / "pub")
    markers = {name: tmp_path / name for name in ("unsigned", "stranger", "tampered", "moved")}
    bad = {name: container_job(f"touch {marker}") for name, marker in markers.items()}
    good = container_job("echo fine")

    await ensure_pool_consumer(gjs, settings, POOL)
    unsigned = bad["unsigned"]
    await gjs.publish(names.job(POOL), msgspec.json.encode(unsigned),
                      headers={"Nats-Msg-Id": unsigned.run_id})
    payload = msgspec.json.encode(bad["stranger"])
    await gjs.publish(names.job(POOL), payload,
                      headers=JobSigner.from_file(stranger / "key").headers(names.job(POOL), payload))
    subject, payload, headers = signed_job(settings, bad["tampered"])
    await gjs.publish(subject, payload.replace(b"touch", b"touch "), headers=headers)
    subject, payload, headers = signed_job(settings, bad["moved"], subject=names.job("other-pool"))
    await gjs.publish(names.job(POOL), payload, headers=headers)  # signed for another pool, moved to this one

    seen = await gjs.subscribe(names.events_all, ordered_consumer=True)
    async with RunEvents(gjs, settings, good) as events, running_agent(settings):
        subject, payload, headers = signed_job(settings, good)
        await gjs.publish(subject, payload, headers=headers)
        done = await events.wait_for_type("run.completed", "run.failed", "run.canceled", timeout=20)
    assert done.type == "run.completed"
    run_ids = set()
    while True:
        try:
            msg = await seen.next_msg(timeout=0.5)
        except nats.errors.TimeoutError:
            break
        run_ids.add(msg.subject.split(".")[4])
    await seen.unsubscribe()
    assert run_ids == {good.run_id}  # no event at all for the refused jobs
    assert not [name for name, marker in markers.items() if marker.exists()]
    info = await gjs.consumer_info(names.jobs_stream, names.pool_consumer(POOL))
    assert info.num_pending == 0 and info.num_ack_pending == 0 and info.num_redelivered == 0  # term(): gone
    refusals = [r for r in caplog.records if "REFUSED" in r.getMessage()]
    assert len(refusals) == 4 and all(r.levelname == "CRITICAL" for r in refusals)


async def test_runner_without_a_verify_key_does_not_start_unless_unsigned_jobs_are_allowed(
    secure_bus: SecureBus,
) -> None:
    from runner.agent import RunnerAgent

    keyless = msgspec.structs.replace(secure_bus.settings, job_verify_key=None)
    with pytest.raises(ValueError, match="TRAINFORGE_RUNNER_ALLOW_UNSIGNED_JOBS"):
        RunnerAgent(keyless, POOL)
    insecure = msgspec.structs.replace(keyless, runner_allow_unsigned_jobs=True)
    assert RunnerAgent(insecure, POOL).verifier is None


async def test_runners_answer_the_gateways_yolo_service_requests_and_only_the_gateway_may_ask(
    secure_bus: SecureBus, gateway_bus: tuple[NATS, JetStreamContext]
) -> None:
    from shared.contracts.yolo_service import ARCHITECTURE, service_reply_decoder

    gnc, _ = gateway_bus
    settings = secure_bus.settings
    subject = Subjects(settings.bus_prefix).yolo_service(ARCHITECTURE)
    refused: dict[str, str] = {}
    async with running_agent(settings) as agent:
        reply = service_reply_decoder.decode((await gnc.request(subject, b"{not json", timeout=5)).data)
        assert (reply.status, reply.runner_id) == ("unavailable", agent.runner_id)  # answered at once, no torch
        assert "bad architecture request" in reply.error
    for user in ("runner", "reader"):
        errors: asyncio.Queue[Exception] = asyncio.Queue()

        async def record(exc: Exception, errors: asyncio.Queue[Exception] = errors) -> None:
            await errors.put(exc)

        client = await nats.connect(secure_bus.url, user=user, password=secure_bus.password(user),
                                    inbox_prefix=READER_INBOX_PREFIX if user == "reader" else "_INBOX",
                                    error_cb=record)
        try:
            await client.publish(subject, b"{}")
            refused[user] = str(await asyncio.wait_for(errors.get(), 10))
        finally:
            await client.close()
    for user, message in refused.items():
        assert "permissions violation" in message.lower() and subject.lower() in message.lower(), (user, message)


async def test_a_runner_reads_back_what_the_gateway_put_in_the_artifact_store(
    secure_bus: SecureBus, gateway_bus: tuple[NATS, JetStreamContext], tmp_path: Path
) -> None:
    """Datasets (by content hash) and checkpoints another host made reach a runner through the object store:
    with the runner's own credentials (nats-py looks the chunks' stream up by subject first)."""
    from shared.artifacts import artifact_store

    _, gjs = gateway_bus
    on_gateway = msgspec.structs.replace(secure_bus.settings, artifact_store="nats")
    source = tmp_path / "archive.tar"
    source.write_bytes(b"dataset bytes " * 1000)
    uri = await artifact_store(on_gateway, gjs).put_file("datasets/" + "a" * 64 + ".tar", source)
    nc = await connect(on_gateway, name="test runner")  # user `runner`
    try:
        copy = await artifact_store(on_gateway, nc.jetstream()).fetch(uri, tmp_path / "runner" / "copy.tar")
    finally:
        await nc.close()
    assert copy.read_bytes() == source.read_bytes()
