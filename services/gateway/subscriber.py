"""The replica's one Redis subscription, kept alive across Redis outages.

One pub/sub connection carries every channel the gateway listens to (room fan-out and
revocations). When Redis goes away the subscriber marks itself down (``/readyz`` fails, fan-out
publishing stops trying), then reconnects with a capped, jittered backoff; on every
(re)subscribe it runs the ``on_subscribed`` hooks, so state that may have been missed while
down (revocations) is reloaded. A handler that rejects a message raises ``ValueError``: the
message is counted, logged without its content, and dropped; the subscription carries on.

redis-py connects, authenticates and sends the ``SUBSCRIBE``; what Redis sends back is read
off that connection's stream by a ``RedisWire`` (~12 µs a message where redis-py's
``get_message`` takes ~34: under fan-out every replica reads every message of the cluster, its
own included). The subscription counts as up once Redis has confirmed every channel (an ACL
may refuse one). A connection silent for ``HEALTH_SECONDS`` is sent a ``PING``; silent for as
long again, it is given up as dead (a frozen or unreachable Redis) and made again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from services.gateway.metrics import GatewayMetrics
from services.gateway.redis_wire import PARTIAL, RedisWire

log = logging.getLogger(__name__)

Handler = Callable[[bytes], Awaitable[None]]
Hook = Callable[[], Awaitable[None]]

_RETRY_INITIAL = 0.1
HEALTH_SECONDS = 10.0


class RedisSubscriber:
    """Subscribes ``handlers`` (channel -> coroutine taking the raw message) to Redis."""

    def __init__(
        self,
        redis: Redis,
        *,
        handlers: Mapping[str, Handler],
        on_subscribed: Sequence[Hook],
        metrics: GatewayMetrics,
        retry_max: float,
        health_seconds: float = HEALTH_SECONDS,
    ) -> None:
        self._redis = redis
        self._handlers = dict(handlers)
        self._by_channel = {name.encode(): (name, handler) for name, handler in handlers.items()}
        self._health_seconds = health_seconds
        self._hooks = list(on_subscribed)
        self._metrics = metrics
        self._retry_max = retry_max
        self._up = False
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    @property
    def up(self) -> bool:
        """Whether the subscription is live right now."""
        return self._up

    async def start(self) -> None:
        """Starts the subscription loop in the background; never waits for Redis."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="redis-subscriber")

    async def wait_subscribed(self, within: float) -> bool:
        """Waits up to ``within`` seconds for the first subscription; ``True`` if it happened."""
        try:
            async with asyncio.timeout(within):
                await self._subscribed.wait()
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Stops the loop and releases the connection."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        self._set_up(False)

    def _set_up(self, up: bool) -> None:
        self._up = up
        self._metrics.redis_up.set(1 if up else 0)

    async def _run(self) -> None:
        delay = _RETRY_INITIAL
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(*self._handlers)
                if pubsub.connection is None:
                    raise RedisConnectionError("the subscription has no connection")
                wire = RedisWire(pubsub.connection)
                await self._confirm(wire)
                await self._subscribed_again()
                delay = _RETRY_INITIAL
                await self._listen(wire)
            except ResponseError as exc:  # e.g. NOPERM: an ACL refuses a channel
                log.warning("Redis refused the subscription", extra={"error": str(exc)[:200]})
                self._set_up(False)
            except (RedisError, OSError) as exc:
                if self._up:
                    log.warning("Redis subscription lost", extra={"error": type(exc).__name__})
                self._set_up(False)
            finally:
                await _close_quietly(pubsub)
            await asyncio.sleep(random.uniform(delay / 2, delay))
            delay = min(self._retry_max, delay * 2)

    async def _subscribed_again(self) -> None:
        for hook in self._hooks:
            try:
                await hook()
            except (RedisError, OSError):
                raise  # Redis went away again: the outer loop retries the whole subscription.
            except Exception:
                log.exception("a Redis (re)subscribe hook failed")
        self._set_up(True)
        self._metrics.redis_reconnects.inc()
        self._subscribed.set()
        log.info("subscribed to Redis", extra={"channels": sorted(self._handlers)})

    async def _confirm(self, wire: RedisWire) -> None:
        """Reads until Redis has confirmed every channel; later replies stay in ``wire``."""
        unconfirmed = set(self._by_channel)
        while unconfirmed:
            await self._read(wire)
            while unconfirmed and (reply := wire.next_reply()) is not PARTIAL:
                if isinstance(reply, ResponseError):
                    raise reply
                if isinstance(reply, list) and len(reply) == 3 and reply[0] == b"subscribe":
                    unconfirmed.discard(reply[1])

    async def _listen(self, wire: RedisWire) -> None:
        while True:
            while (reply := wire.next_reply()) is not PARTIAL:
                if isinstance(reply, ResponseError):
                    raise reply
                if isinstance(reply, list) and len(reply) == 3 and reply[0] == b"message":
                    await self._dispatch(reply[1], reply[2])
            await self._read(wire)

    async def _read(self, wire: RedisWire) -> None:
        """``wire.read()``, sending a ``PING`` after a silent period and giving up after two."""
        for attempt in range(2):
            try:
                async with asyncio.timeout(self._health_seconds):
                    await wire.read()
                    return
            except TimeoutError:
                if attempt == 0:
                    wire.send("PING")
        raise RedisConnectionError("Redis did not answer a PING")

    async def _dispatch(self, raw_channel: object, data: object) -> None:
        known = self._by_channel.get(raw_channel) if isinstance(raw_channel, bytes) else None
        if known is None or not isinstance(data, bytes):
            return
        channel, handler = known
        try:
            await handler(data)
        except ValueError as exc:
            self._metrics.redis_rejected.labels(channel).inc()
            log.warning(
                "ignored a malformed message on a Redis channel",
                extra={"channel": channel, "bytes": len(data), "reason": str(exc)[:200]},
            )
        except Exception:
            log.exception("a Redis message handler failed", extra={"channel": channel})


async def _close_quietly(pubsub: PubSub) -> None:
    with contextlib.suppress(RedisError, OSError):
        await pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped in redis-py
