"""Hot-path Redis scripts sent together: one pipeline per event-loop pass, not one call each.

Every handshake and every disconnect in cluster mode runs one small script (``quota``). Sent
one by one, each pays redis-py's whole command path (pool checkout, retry wrapper, its own
write and read); under a connection storm that costs more CPU than the script itself. Here the
calls made within a short window (``GATEWAY_REDIS_BATCH_WINDOW``, 5 ms; 0 means the rest of the
event-loop pass) are queued and go out as one non-transactional pipeline: one checkout, one
write, replies read in order, and each caller gets its own reply (or its own error) back. The
window matters more than the redis-py path: every round trip wakes the replica for a reply or
two, and under a connection storm those wake-ups cost more than the calls (measured in
docs/benchmarks.md). A full batch (``MAX_BATCH``) goes out at once. Nothing about the scripts
changes: each still runs atomically on its own.

Failures reach every caller of the batch: a connection error or timeout fails them all (the
caller's ``Liveness.call`` turns that into ``ClusterUnavailable``), a script error fails only
its own caller, and ``NOSCRIPT`` (a restarted or flushed Redis) loads the script and sends the
affected calls once more.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

# A batch this large goes out at once (bounds one write and one reply buffer).
MAX_BATCH = 256


@dataclass(slots=True)
class _Call:
    script: AsyncScript
    args: tuple[Any, ...]
    key_count: int
    future: asyncio.Future[Any]


class ScriptBatch:
    """Runs registered scripts, coalescing the calls of one loop pass into one pipeline."""

    def __init__(self, redis: Redis, *, timeout: float, window: float = 0.0) -> None:
        self._redis = redis
        self._timeout = timeout
        self._window = window
        self._timer: asyncio.TimerHandle | None = None
        self._queue: list[_Call] = []
        self._armed = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """``script(keys, args)``'s reply, sent with the other calls of this loop pass."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append(_Call(script, (*keys, *args), len(keys), future))
        if len(self._queue) >= MAX_BATCH:
            self._send_queued()
        elif not self._armed:
            self._armed = True
            if self._window > 0:
                self._timer = loop.call_later(self._window, self._send_queued)
            else:
                loop.call_soon(self._send_queued)
        return await future

    async def close(self) -> None:
        """Waits for the batches in flight (each bounded by the timeout)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks))

    def _send_queued(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._armed = False
        queue, self._queue = self._queue, []
        if queue:
            task = asyncio.ensure_future(self._send(queue))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, calls: list[_Call]) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                replies = await self._pipeline(calls)
                missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
                if missing:
                    for script in {calls[i].script for i in missing}:
                        script.sha = await self._redis.script_load(script.script)
                    again = await self._pipeline([calls[i] for i in missing])
                    for i, reply in zip(missing, again, strict=True):
                        replies[i] = reply
        except BaseException as exc:
            for call in calls:
                if not call.future.done():
                    call.future.set_exception(_copy(exc))
            if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt, SystemExit)):
                raise
            return
        for call, reply in zip(calls, replies, strict=True):
            if call.future.done():
                continue  # its caller gave up (timeout, cancellation)
            if isinstance(reply, Exception):
                call.future.set_exception(reply)
            else:
                call.future.set_result(reply)

    async def _pipeline(self, calls: list[_Call]) -> list[Any]:
        # EVALSHA directly: a pipeline that knows about scripts checks SCRIPT EXISTS first,
        # one more round trip per batch; NOSCRIPT is handled by the caller instead.
        async with self._redis.pipeline(transaction=False) as pipe:
            for call in calls:
                pipe.evalsha(call.script.sha, call.key_count, *call.args)
            replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies


def _copy(exc: BaseException) -> BaseException:
    """A fresh exception per caller (each await adds its own traceback), same type and text."""
    if isinstance(exc, asyncio.CancelledError):
        return RedisConnectionError("the batch was cancelled")
    try:
        return type(exc)(*exc.args)
    except Exception:
        return exc
