"""The replica's one Redis subscription, kept alive across Redis outages.

One pub/sub connection carries every channel the gateway listens to (room fan-out and
revocations). When Redis goes away the subscriber marks itself down (``/readyz`` fails, fan-out
publishing stops trying), then reconnects with a capped, jittered backoff; on every
(re)subscribe it runs the ``on_subscribed`` hooks, so state that may have been missed while
down (revocations) is reloaded. A handler that rejects a message raises ``ValueError``: the
message is counted, logged without its content, and dropped; the subscription carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from services.gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)

Handler = Callable[[bytes], Awaitable[None]]
Hook = Callable[[], Awaitable[None]]

_RETRY_INITIAL = 0.1
_POLL_SECONDS = 1.0


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
    ) -> None:
        self._redis = redis
        self._handlers = dict(handlers)
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
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(*self._handlers)
                await self._subscribed_again()
                delay = _RETRY_INITIAL
                await self._listen(pubsub)
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

    async def _listen(self, pubsub: PubSub) -> None:
        while True:
            message = await pubsub.get_message(timeout=_POLL_SECONDS)
            if message is None or message.get("type") != "message":
                continue
            raw_channel = message.get("channel")
            channel = raw_channel.decode() if isinstance(raw_channel, bytes) else str(raw_channel)
            handler = self._handlers.get(channel)
            data = message.get("data")
            if handler is None or not isinstance(data, bytes):
                continue
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
