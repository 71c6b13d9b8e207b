"""``ChannelPublisher`` against a real Redis: nothing waits on it, and nothing it loses goes
uncounted.

Every test checks the same ledger: what a subscriber received is in the order it was
published, without duplicates, and every message it did not receive is counted in
``gateway_redis_publish_failures_total`` (a message counted may still have arrived: one
written to a Redis that froze is given up, yet Redis may read it when it wakes up).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator

import pytest
import redis
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from services.gateway.channel_publisher import CLIENT_NAME, MAX_BUFFERED, ChannelPublisher
from services.gateway.metrics import GatewayMetrics
from tests.gateway.conftest import without_channel_access
from tests.support.processes import RedisServer
from tests.support.waiting import eventually

CHANNEL = "sockgate:test-publisher"


class Rig:
    """A publisher and a plain redis-py subscriber on one Redis."""

    def __init__(
        self,
        url: str,
        subscriber_url: str | None = None,
        *,
        timeout: float = 1.0,
        max_buffered: int = MAX_BUFFERED,
    ) -> None:
        self.registry = CollectorRegistry()
        self.client = Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=1.0)
        self.publisher = ChannelPublisher(
            self.client,
            metrics=GatewayMetrics(self.registry),
            retry_max=0.2,
            timeout=timeout,
            max_buffered=max_buffered,
        )
        self.received: list[bytes] = []
        self._listener: asyncio.Task[None] | None = None
        self._subscriber = Redis.from_url(subscriber_url or url).pubsub(
            ignore_subscribe_messages=True
        )

    @property
    def failures(self) -> float:
        return self.registry.get_sample_value("gateway_redis_publish_failures_total") or 0.0

    async def start(self) -> None:
        await self._subscriber.subscribe(CHANNEL)
        self._listener = asyncio.create_task(self._listen())
        await self.publisher.start()
        await eventually(lambda: self.publisher.connected, 5, "the publisher connected")

    async def _listen(self) -> None:
        while True:
            message = await self._subscriber.get_message(timeout=1.0)
            if message is not None:
                self.received.append(message["data"])

    async def stop(self) -> None:
        await self.publisher.close()
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
        await self._subscriber.aclose()  # type: ignore[no-untyped-call]
        await self.client.aclose()

    def publish(self, numbers: range, pad: bytes = b"") -> list[bytes]:
        sent = [b"%06d:" % n + pad for n in numbers]
        for data in sent:
            self.publisher.publish(CHANNEL, data)
        return sent

    async def settled(self, sent: list[bytes]) -> None:
        """Waits until every message sent is either received or counted as lost."""
        await eventually(
            lambda: len(self.received) + self.failures >= len(sent), 10, "every message settled"
        )
        await asyncio.sleep(0.2)  # nothing more arrives
        received = set(self.received)
        assert len(received) == len(self.received)  # no duplicates
        assert self.received == [data for data in sent if data in received]  # in order
        assert len(sent) - len(self.received) <= self.failures  # every loss counted


@pytest.fixture
async def rig(redis_server: RedisServer) -> AsyncIterator[Rig]:
    r = Rig(redis_server.url)
    await r.start()
    yield r
    await r.stop()


async def test_a_burst_arrives_in_order_and_nothing_is_counted_lost(rig: Rig) -> None:
    sent = rig.publish(range(3000))  # all written before the first answer is read
    await rig.settled(sent)
    assert rig.received == sent and rig.failures == 0


async def test_what_is_published_while_the_connection_is_made_again_waits_for_it(
    rig: Rig, redis_server: RedisServer
) -> None:
    first = rig.publish(range(500))
    await eventually(lambda: len(rig.received) == 500, 5, "the first half")
    admin = redis.Redis.from_url(redis_server.url)
    (own,) = [c for c in admin.client_list() if c["name"] == CLIENT_NAME]
    admin.client_kill_filter(_id=own["id"])
    admin.close()
    await eventually(lambda: not rig.publisher.connected, 5, "the break noticed")
    second = rig.publish(range(500, 1000))  # no connection: they wait
    await eventually(lambda: rig.publisher.connected, 5, "the connection made again")
    await rig.settled(first + second)
    assert rig.received == first + second and rig.failures == 0


async def test_a_frozen_redis_is_given_up_and_what_it_took_is_counted(
    own_redis: RedisServer,
) -> None:
    rig = Rig(own_redis.url, timeout=0.5)
    await rig.start()
    assert own_redis.process is not None
    try:
        before = rig.publish(range(10))
        await eventually(lambda: len(rig.received) == 10, 5, "delivery before the freeze")
        own_redis.process.signal(signal.SIGSTOP)
        try:
            frozen = rig.publish(range(10, 20))
            await eventually(lambda: not rig.publisher.connected, 5, "the dead connection dropped")
            # Written but never answered: counted, whatever Redis does with them later.
            assert rig.failures >= 10
        finally:
            own_redis.process.signal(signal.SIGCONT)
        await eventually(lambda: rig.publisher.connected, 10, "connected again")
        after = rig.publish(range(20, 30))
        await eventually(lambda: rig.received[-1:] == after[-1:], 5, "delivery after the freeze")
        # Every one is received or counted; some of those counted may have arrived (Redis
        # read them after it woke up), which is why a lost message is counted, not resent.
        await rig.settled(before + frozen + after)
    finally:
        await rig.stop()


async def test_a_redis_that_takes_nothing_more_makes_new_messages_drop_at_once(
    own_redis: RedisServer,
) -> None:
    rig = Rig(own_redis.url, timeout=5.0, max_buffered=256 * 1024)
    await rig.start()
    assert own_redis.process is not None
    own_redis.process.signal(signal.SIGSTOP)
    try:
        rig.publish(range(200), pad=b"p" * 100_000)  # 20 MB: more than the kernel buffers hold
        dropped = rig.failures
        assert dropped > 0  # counted at once, while the publisher is still connected
        assert rig.publisher.connected
    finally:
        own_redis.process.signal(signal.SIGCONT)
    await rig.settled([b"%06d:" % n + b"p" * 100_000 for n in range(200)])
    await rig.stop()


async def test_an_acl_refusing_the_channel_counts_every_publish_and_says_so_once(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    rig = Rig(without_channel_access(own_redis), own_redis.url)
    with caplog.at_level(logging.WARNING, logger="services.gateway.channel_publisher"):
        await rig.start()
        try:
            sent = rig.publish(range(25))
            await rig.settled(sent)
            assert rig.received == [] and rig.failures == 25
            assert rig.publisher.connected  # a refusal is an answer, not a broken connection
        finally:
            await rig.stop()
    refusals = [r for r in caplog.records if r.getMessage() == "Redis refused a PUBLISH"]
    assert len(refusals) == 1 and "NOPERM" in getattr(refusals[0], "error", "")
