"""shared.pull.PullConsumer against a real nats-server: batches, the ends of a pull request (404, 408, 409),
heartbeats, acks through the returned messages, and no message lost or handed out twice."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js import api as js_api

from shared.pull import PullConsumer

SLOW_S = 20.0
"""A timeout no fetch of these tests should come near unless it waits for its expiry by mistake."""


@dataclass
class Bus:
    nc: NATS
    js: JetStreamContext
    stream: str
    subject: str

    async def consumer(self, name: str = "c", ack_wait: float = 30.0) -> PullConsumer:
        await self.js.add_consumer(self.stream, js_api.ConsumerConfig(
            durable_name=name, ack_policy=js_api.AckPolicy.EXPLICIT, ack_wait=ack_wait, max_deliver=-1,
            filter_subject=f"{self.subject}.>"))
        return await PullConsumer.bind(self.nc, self.stream, name)

    async def publish(self, *payloads: str) -> None:
        for payload in payloads:
            await self.js.publish(f"{self.subject}.x", payload.encode())

    async def info(self, name: str = "c") -> js_api.ConsumerInfo:
        return await self.js.consumer_info(self.stream, name)

    async def settled(self, name: str = "c") -> js_api.ConsumerInfo:
        """The consumer's info once every ack sent has been applied: the server takes acks off a queue, so a
        consumer_info just after the last ack can still count it as pending."""
        while (info := await self.info(name)).num_ack_pending:
            await asyncio.sleep(0.01)
        return info

    async def until_waiting(self, name: str = "c") -> None:
        """Until the server holds a pull request of the consumer."""
        while not (await self.info(name)).num_waiting:
            await asyncio.sleep(0.01)


@pytest.fixture
async def bus(nats_url: str, bus_prefix: str) -> AsyncIterator[Bus]:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    stream = f"{bus_prefix}_pull"
    await js.add_stream(name=stream, subjects=[f"{bus_prefix}.pull.>"])
    try:
        yield Bus(nc, js, stream, f"{bus_prefix}.pull")
    finally:
        await js.delete_stream(stream)
        await nc.close()


def payloads(msgs: list) -> list[str]:
    return [m.data.decode() for m in msgs]


async def test_a_full_batch_comes_at_once(bus: Bus) -> None:
    puller = await bus.consumer()
    await bus.publish(*(str(i) for i in range(12)))
    started = time.monotonic()
    assert payloads(await puller.fetch(10, timeout=SLOW_S)) == [str(i) for i in range(10)]
    assert payloads(await puller.fetch(10, timeout=SLOW_S)) == ["10", "11"]
    assert time.monotonic() - started < SLOW_S / 2


async def test_a_batch_larger_than_what_is_there_ends_at_the_servers_404(bus: Bus) -> None:
    puller = await bus.consumer()
    await bus.publish("a", "b", "c")
    started = time.monotonic()
    assert payloads(await puller.fetch(50, timeout=SLOW_S)) == ["a", "b", "c"]
    assert time.monotonic() - started < SLOW_S / 2


async def test_a_waiting_fetch_returns_with_the_first_messages_that_come(bus: Bus) -> None:
    puller = await bus.consumer()
    fetch = asyncio.create_task(puller.fetch(50, timeout=SLOW_S))
    await bus.until_waiting()
    started = time.monotonic()
    await bus.publish("late")
    assert payloads(await fetch) == ["late"]
    assert time.monotonic() - started < SLOW_S / 2


async def test_nothing_raises_timeout_and_leaves_no_request_behind(bus: Bus) -> None:
    puller = await bus.consumer()
    for _ in range(3):
        started = time.monotonic()
        with pytest.raises(nats.errors.TimeoutError):
            await puller.fetch(20, timeout=0.3)
        assert time.monotonic() - started >= 0.29
    assert (await bus.info()).num_waiting == 0  # each request ended with its 408
    await bus.publish("next")
    started = time.monotonic()
    assert payloads(await puller.fetch(20, timeout=SLOW_S)) == ["next"]
    assert time.monotonic() - started < SLOW_S / 2


async def test_idle_heartbeats_are_skipped(bus: Bus) -> None:
    puller = await bus.consumer()
    fetch = asyncio.create_task(puller.fetch(5, timeout=SLOW_S, heartbeat=0.05))
    while puller.heartbeats < 2:
        await asyncio.sleep(0.01)
    assert not fetch.done()
    await bus.publish("after heartbeats")
    assert payloads(await fetch) == ["after heartbeats"]
    with pytest.raises(nats.errors.TimeoutError):  # heartbeats alone are no messages
        await puller.fetch(5, timeout=0.5, heartbeat=0.1)


async def test_a_consumer_deleted_mid_fetch_raises_a_nats_error(bus: Bus) -> None:
    puller = await bus.consumer()
    fetch = asyncio.create_task(puller.fetch(5, timeout=SLOW_S))
    await bus.until_waiting()
    started = time.monotonic()
    await bus.js.delete_consumer(bus.stream, "c")
    with pytest.raises(nats.js.errors.APIError) as raised:
        await fetch
    assert raised.value.code == 409
    assert isinstance(raised.value, nats.errors.Error)  # what the projector and the deliverer back off on
    assert time.monotonic() - started < SLOW_S / 2


async def test_ack_nak_and_in_progress_work_on_the_fetched_messages(bus: Bus) -> None:
    puller = await bus.consumer()
    await bus.publish("one", "two")
    one, two = await puller.fetch(2, timeout=SLOW_S)
    await one.in_progress()
    await one.ack_sync()
    await two.nak()
    (again,) = await puller.fetch(2, timeout=SLOW_S)
    assert again.data == b"two" and again.metadata.num_delivered == 2
    await again.ack_sync()
    info = await bus.info()
    assert (info.num_ack_pending, info.num_pending) == (0, 0)


async def test_messages_of_a_cancelled_fetch_go_to_the_next_one(bus: Bus) -> None:
    puller = await bus.consumer()
    fetch = asyncio.create_task(puller.fetch(5, timeout=SLOW_S))
    await bus.until_waiting()
    fetch.cancel()
    await asyncio.gather(fetch, return_exceptions=True)
    # the cancelled fetch's request is still open on the server: it takes p (and ends: no more at that moment)
    await bus.publish("p", "q")
    while puller.buffered < 1:
        await asyncio.sleep(0.01)
    assert payloads(await puller.fetch(5, timeout=SLOW_S)) == ["p", "q"]  # p kept here, q asked for
    assert (await bus.info()).num_redelivered == 0


async def test_unsubscribe_naks_what_no_fetch_took(bus: Bus) -> None:
    puller = await bus.consumer(ack_wait=60.0)
    fetch = asyncio.create_task(puller.fetch(5, timeout=SLOW_S))
    await bus.until_waiting()
    fetch.cancel()
    await asyncio.gather(fetch, return_exceptions=True)
    await bus.publish("kept")
    while puller.buffered < 1:
        await asyncio.sleep(0.01)
    await puller.unsubscribe()
    other = await PullConsumer.bind(bus.nc, bus.stream, "c")
    started = time.monotonic()
    (msg,) = await other.fetch(5, timeout=SLOW_S)  # now, not after the 60 s ack wait
    assert msg.data == b"kept" and msg.metadata.num_delivered == 2
    assert time.monotonic() - started < SLOW_S / 2
    await other.unsubscribe()


async def test_no_message_is_lost_or_handed_out_twice_while_publishing_goes_on(bus: Bus) -> None:
    count = 3000
    puller = await bus.consumer()

    async def publish() -> None:
        for i in range(count):
            await bus.js.publish(f"{bus.subject}.x", str(i).encode())

    publisher = asyncio.create_task(publish())
    seen: Counter[str] = Counter()
    fetches = 0
    while sum(seen.values()) < count:
        fetches += 1
        try:
            if fetches % 7 == 0:  # now and then a fetch is cancelled mid-way: its messages must not be lost
                msgs = await asyncio.wait_for(puller.fetch(40, timeout=2.0), 0.002)
            else:
                msgs = await puller.fetch(40, timeout=2.0)
        except (TimeoutError, nats.errors.TimeoutError):
            continue
        for msg in msgs:
            seen[msg.data.decode()] += 1
            await msg.ack()
        assert len(msgs) <= 40
    await publisher
    assert seen == Counter(str(i) for i in range(count))
    await bus.nc.flush()
    info = await bus.settled()
    assert (info.num_pending, info.num_redelivered) == (0, 0)
    await puller.unsubscribe()
