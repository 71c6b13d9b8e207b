"""The fan-out's ``PUBLISH``es, on a Redis connection of their own, sent without waiting.

A room message is published before it is delivered to this replica's own sockets, as
socket.io's Redis adapter does: the other replicas start on it while this one writes to its
members. ``publish`` writes the command at once (one ``write``) and returns; one task reads the
answers (``RedisWire``). Where a pooled ``await redis.publish(...)`` cost ~38 µs of CPU and a
round trip before the local delivery could start, this costs a few µs.

What cannot be sent is counted in ``gateway_redis_publish_failures_total`` (the other replicas
miss that message), never waited for:

- while the connection is being made (again, after a jittered backoff from 0.1 s), up to
  ``max_pending`` messages wait and go out, in order, once it is there; if it cannot be made
  they are dropped and counted;
- a Redis that takes no more bytes (``max_buffered`` waiting in the transport) drops new ones;
- messages written but never answered when the connection breaks are counted (some may have
  been delivered), as are error replies (an ACL refusing the channel: logged once per
  connection);
- unanswered for ``timeout`` seconds (``ANSWER_SECONDS``: longer than any pause a healthy
  Redis makes), the connection is given up as dead (a frozen Redis) and made again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from services.gateway.metrics import GatewayMetrics
from services.gateway.redis_wire import PARTIAL, RedisWire, own_connection

log = logging.getLogger(__name__)

_RETRY_INITIAL = 0.1
ANSWER_SECONDS = 5.0
MAX_PENDING = 1000
MAX_BUFFERED = 8 * 1024 * 1024
CLIENT_NAME = "sockgate-fanout-publisher"  # as Redis' CLIENT LIST shows the connection


class ChannelPublisher:
    """Publishes on one Redis connection of its own, made from ``redis``'s settings."""

    def __init__(
        self,
        redis: Redis,
        *,
        metrics: GatewayMetrics,
        retry_max: float,
        timeout: float = ANSWER_SECONDS,
        max_pending: int = MAX_PENDING,
        max_buffered: int = MAX_BUFFERED,
    ) -> None:
        self._redis = redis
        self._failures = metrics.redis_publish_failures
        self._timeout = timeout
        self._retry_max = retry_max
        self._max_pending = max_pending
        self._max_buffered = max_buffered
        self._wire: RedisWire | None = None
        self._pending: list[tuple[str, bytes]] = []
        self._unanswered = 0
        self._progress = 0.0  # when a reply last came in, or the first unanswered went out
        self._task: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        """Whether publishes go out at once right now (else they wait, or are dropped)."""
        return self._wire is not None

    def publish(self, channel: str, data: bytes) -> None:
        """Sends ``data`` on ``channel`` without waiting; counts it when it cannot be sent."""
        wire = self._wire
        if wire is None or wire.closing():
            if len(self._pending) < self._max_pending:
                self._pending.append((channel, data))
            else:
                self._failures.inc()
            return
        if wire.buffered() > self._max_buffered:
            self._failures.inc()
            return
        wire.send("PUBLISH", channel, data)
        if not self._unanswered:
            self._progress = time.monotonic()
        self._unanswered += 1

    async def start(self) -> None:
        """Starts making the connection in the background; never waits for Redis."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="redis-publisher")

    async def close(self) -> None:
        """Stops; messages still pending or unanswered are left to their fate."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])

    async def _run(self) -> None:
        delay = _RETRY_INITIAL
        while True:
            connection = self._new_connection()
            try:
                await connection.connect()  # type: ignore[no-untyped-call]  # untyped in redis-py
                wire = RedisWire(connection)
                self._open(wire)
                delay = _RETRY_INITIAL
                await self._read_replies(wire)
            except (RedisError, OSError) as exc:
                if self._wire is not None:
                    log.warning(
                        "Redis publishing connection lost", extra={"error": type(exc).__name__}
                    )
            finally:
                self._broken()
                with contextlib.suppress(RedisError, OSError):
                    await connection.disconnect()
            await asyncio.sleep(random.uniform(delay / 2, delay))
            delay = min(self._retry_max, delay * 2)

    def _new_connection(self) -> AbstractConnection:
        return own_connection(self._redis, CLIENT_NAME)

    def _open(self, wire: RedisWire) -> None:
        """Makes ``wire`` the connection, sending what waited for it first, in order."""
        pending, self._pending = self._pending, []
        for channel, data in pending:
            wire.send("PUBLISH", channel, data)
        self._unanswered = len(pending)
        self._progress = time.monotonic()
        self._wire = wire

    def _broken(self) -> None:
        """Counts what the connection took with it, and what waited for a connection that
        could not be made."""
        lost = self._unanswered + (len(self._pending) if self._wire is None else 0)
        if lost:
            self._failures.inc(lost)
        if self._wire is None:
            self._pending.clear()
        self._wire = None
        self._unanswered = 0

    async def _read_replies(self, wire: RedisWire) -> None:
        refused = False
        while True:
            try:
                async with asyncio.timeout(self._timeout):
                    await wire.read()
            except TimeoutError:
                if self._unanswered and time.monotonic() - self._progress >= self._timeout:
                    raise RedisConnectionError("Redis did not answer a PUBLISH") from None
                continue
            self._progress = time.monotonic()
            while (reply := wire.next_reply()) is not PARTIAL:
                self._unanswered -= 1
                if isinstance(reply, ResponseError):
                    self._failures.inc()
                    if not refused:
                        refused = True
                        log.warning("Redis refused a PUBLISH", extra={"error": str(reply)[:200]})
