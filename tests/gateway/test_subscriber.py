"""``RedisSubscriber`` against a real Redis: what it reads off the wire, and when it gives up.

The subscriber parses the pub/sub stream itself (hiredis' reader on redis-py's connection), so
these tests feed it what that stream carries in practice: bursts of messages that arrive in one
read, messages split over many reads, other channels, hostile payloads, a Redis that freezes and
one that refuses the subscription.
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

from services.gateway.metrics import GatewayMetrics
from services.gateway.subscriber import RedisSubscriber
from tests.gateway.conftest import without_channel_access
from tests.support.processes import RedisServer
from tests.support.waiting import eventually

CHANNEL = "sockgate:test-subscriber"
OTHER = "sockgate:test-subscriber-other"


class Received:
    """A handler that records what it got and refuses payloads starting with ``bad``."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def __call__(self, data: bytes) -> None:
        if data.startswith(b"bad"):
            raise ValueError("refused by the test handler")
        if data.startswith(b"crash"):
            raise RuntimeError("the test handler crashed")
        self.messages.append(data)


class Harness:
    def __init__(self, url: str, *, health_seconds: float = 10.0) -> None:
        self.registry = CollectorRegistry()
        self.metrics = GatewayMetrics(self.registry)
        self.received = Received()
        self.other = Received()
        self.client = Redis.from_url(url, socket_timeout=2.0)
        self.subscriber = RedisSubscriber(
            self.client,
            handlers={CHANNEL: self.received, OTHER: self.other},
            on_subscribed=[],
            metrics=self.metrics,
            retry_max=0.2,
            health_seconds=health_seconds,
        )

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def harness(redis_server: RedisServer) -> AsyncIterator[Harness]:
    h = Harness(redis_server.url)
    await h.subscriber.start()
    assert await h.subscriber.wait_subscribed(5)
    yield h
    await h.subscriber.close()
    await h.client.aclose()


async def test_a_burst_arrives_whole_and_in_order(
    harness: Harness, redis_server: RedisServer
) -> None:
    """Hundreds of messages in one pipeline (many per read), one over 64 KiB (many reads)."""
    publisher = redis.Redis.from_url(redis_server.url)
    big = b"B" * 200_000
    sent = [f"m{i:04d}".encode() * (1 + i % 7) for i in range(500)]
    with publisher.pipeline(transaction=False) as pipe:
        for i, data in enumerate(sent):
            pipe.publish(CHANNEL, data)
            if i == 250:
                pipe.publish(CHANNEL, big)
            if i % 100 == 0:
                pipe.publish(OTHER, b"other-" + data)
        pipe.execute()
    publisher.close()
    expected = [*sent[:251], big, *sent[251:]]
    await eventually(lambda: len(harness.received.messages) >= len(expected), 10, "the burst")
    assert harness.received.messages == expected
    assert harness.other.messages == [b"other-" + sent[i] for i in range(0, 500, 100)]


async def test_a_refused_or_failing_message_is_counted_and_the_next_one_still_arrives(
    harness: Harness, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    publisher = redis.Redis.from_url(redis_server.url)
    with caplog.at_level(logging.WARNING, logger="services.gateway.subscriber"):
        for data in (b"bad payload", b"crash now", b"after"):
            publisher.publish(CHANNEL, data)
        publisher.close()
        await eventually(lambda: harness.received.messages == [b"after"], 5, "the good message")
    assert harness.metric("gateway_redis_messages_rejected_total", channel=CHANNEL) == 1
    assert harness.subscriber.up
    text = caplog.text
    assert "ignored a malformed message" in text and "a Redis message handler failed" in text
    assert "bad payload" not in text  # the content is never logged


async def test_a_frozen_redis_is_given_up_after_two_silent_periods_and_rejoined(
    own_redis: RedisServer,
) -> None:
    """A Redis that stops answering (SIGSTOP: no FIN, no RST) must not look alive forever."""
    h = Harness(own_redis.url, health_seconds=0.5)
    await h.subscriber.start()
    try:
        assert await h.subscriber.wait_subscribed(5)
        assert own_redis.process is not None
        own_redis.process.signal(signal.SIGSTOP)
        try:
            # Silent for 0.5 s: PING; silent 0.5 s more: down. Well within 5 s.
            await eventually(lambda: not h.subscriber.up, 5, "the subscription is given up")
            assert h.metric("gateway_redis_up") == 0
        finally:
            own_redis.process.signal(signal.SIGCONT)
        await eventually(lambda: h.subscriber.up, 10, "the subscription is made again")
        assert h.metric("gateway_redis_reconnects_total") >= 2
        publisher = redis.Redis.from_url(own_redis.url)
        publisher.publish(CHANNEL, b"after the freeze")
        publisher.close()
        await eventually(lambda: b"after the freeze" in h.received.messages, 5, "delivery")
    finally:
        await h.subscriber.close()
        await h.client.aclose()


async def test_an_idle_subscription_is_pinged_and_stays_up(own_redis: RedisServer) -> None:
    """Quiet channels are not mistaken for a dead Redis: the PING's answer keeps it up."""
    h = Harness(own_redis.url, health_seconds=0.2)
    await h.subscriber.start()
    try:
        assert await h.subscriber.wait_subscribed(5)
        await asyncio.sleep(1.5)  # ~7 silent periods, each answered by a PONG
        assert h.subscriber.up
        assert h.metric("gateway_redis_reconnects_total") == 1
        admin = redis.Redis.from_url(own_redis.url)
        pings = admin.info("commandstats").get("cmdstat_ping", {}).get("calls", 0)
        admin.publish(CHANNEL, b"still here")
        admin.close()
        assert pings >= 3
        await eventually(lambda: h.received.messages == [b"still here"], 5, "delivery")
    finally:
        await h.subscriber.close()
        await h.client.aclose()


async def test_a_refused_subscription_stays_down_and_says_why(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """An ACL that forbids the channels: an error reply, retried, never reported as up."""
    h = Harness(without_channel_access(own_redis))
    with caplog.at_level(logging.WARNING, logger="services.gateway.subscriber"):
        await h.subscriber.start()
        try:
            assert not await h.subscriber.wait_subscribed(1.5)
            assert not h.subscriber.up
            assert h.metric("gateway_redis_up") == 0
        finally:
            await h.subscriber.close()
            await h.client.aclose()
    refusals = [r for r in caplog.records if r.getMessage() == "Redis refused the subscription"]
    assert refusals and all("NOPERM" in getattr(r, "error", "") for r in refusals)
    assert not any(":pw@" in str(r.__dict__) for r in caplog.records)  # no credentials logged
