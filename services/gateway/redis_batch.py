"""Hot-path Redis scripts sent together: one pipeline at a time, not one call each.

Every handshake and every disconnect in cluster mode runs one small script (``quota``). Sent
one by one, each pays redis-py's whole command path (pool checkout, retry wrapper, its own
write and read) and, worse, its reply wakes the replica for one socket: under a connection
storm those wake-ups cost more CPU than the calls (measured in docs/benchmarks.md). Here calls
are queued and go out as one non-transactional pipeline: one checkout, one write, replies read
in order, each caller getting its own reply (or its own error) back.

- The first call after a quiet moment waits ``GATEWAY_REDIS_BATCH_WINDOW`` (5 ms; 0 means the
  rest of the event-loop pass) so the calls of a burst share its pipeline. The wait ends early
  once every caller that could still join is in (``expected``: the replica passes its count of
  handshakes in progress): with few handshakes at a time, all of them soon wait on the batch,
  no one else can join it before their replies are back, and waiting out the window would only
  add its 5 ms to every handshake.
- One pipeline is in flight at a time (one connection): calls made meanwhile form the next
  one, which goes out as soon as the reply is in. Under load, batches grow by themselves
  instead of opening connections; a close storm of 10,000 sockets is a handful of pipelines.
- ``run`` waits for the reply; ``post`` does not (a disconnect needs no answer) and its
  failures are reported once per batch to ``on_error``, not once per call.

Each script still runs atomically on its own. A connection error or timeout fails every call
of its batch, a script error only its own call, and ``NOSCRIPT`` (a restarted or flushed
Redis) loads the script and sends the affected calls once more.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

# The most calls in one pipeline (bounds one write and one reply buffer).
MAX_BATCH = 1024


@dataclass(slots=True)
class _Call:
    script: AsyncScript
    args: tuple[Any, ...]
    key_count: int
    future: asyncio.Future[Any] | None  # None: posted, nobody waits for the reply
    op: str


class ScriptBatch:
    """Runs registered scripts through one pipeline at a time (see the module doc)."""

    def __init__(
        self,
        redis: Redis,
        *,
        timeout: float,
        window: float = 0.0,
        on_error: Callable[[str, BaseException], None] | None = None,
        expected: Callable[[], int] | None = None,
    ) -> None:
        self._redis = redis
        self._timeout = timeout
        self._window = window
        self._on_error = on_error
        self._expected = expected
        self._queue: list[_Call] = []
        self._waiting = 0  # queued calls whose caller waits for the reply
        self._timer: asyncio.TimerHandle | None = None
        self._armed = False
        self._sender: asyncio.Task[None] | None = None

    async def run(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """``script(keys, args)``'s reply, sent in the next batch."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._add(_Call(script, (*keys, *args), len(keys), future, ""))
        return await future

    def post(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any], op: str) -> None:
        """Sends ``script(keys, args)`` in the next batch without waiting for it.

        If the batch fails, ``on_error(op, exc)`` is called once for the ``op`` of its posted
        calls.
        """
        self._add(_Call(script, (*keys, *args), len(keys), None, op))

    async def close(self) -> None:
        """Sends what is queued and waits for it (bounded by the timeout)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._armed = False
        self._start()
        if self._sender is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.shield(self._sender)

    def _add(self, call: _Call) -> None:
        self._queue.append(call)
        if call.future is not None:
            self._waiting += 1
        if self._sender is not None:
            return  # the batch in flight takes the queue along when it is done
        if len(self._queue) >= MAX_BATCH or self._all_in():
            self._fire()  # full, or nobody else can join: no reason to wait for the window
            return
        if self._armed:
            return
        self._armed = True
        loop = asyncio.get_running_loop()
        if self._window > 0:
            self._timer = loop.call_later(self._window, self._fire)
        else:
            loop.call_soon(self._fire)

    def _all_in(self) -> bool:
        """Whether every caller ``expected`` counts is already waiting in the queue."""
        if self._expected is None or self._window <= 0:
            return False
        expected = self._expected()
        return expected > 0 and self._waiting >= expected

    def _take(self, count: int) -> list[_Call]:
        """The oldest ``count`` queued calls, out of the queue."""
        calls, self._queue = self._queue[:count], self._queue[count:]
        self._waiting = sum(1 for call in self._queue if call.future is not None)
        return calls

    def _fire(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._armed = False
        self._start()

    def _start(self) -> None:
        if self._sender is None and self._queue:
            self._sender = asyncio.ensure_future(self._send_all())

    async def _send_all(self) -> None:
        try:
            while self._queue:
                await self._send(self._take(MAX_BATCH))
        finally:
            self._sender = None

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
            self._fail(calls, exc)
            if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt, SystemExit)):
                self._fail(self._take(len(self._queue)), exc)  # shutting down: nothing more
                raise
            return
        failed_ops: dict[str, BaseException] = {}
        for call, reply in zip(calls, replies, strict=True):
            future = call.future
            if future is None:
                if isinstance(reply, Exception):
                    failed_ops.setdefault(call.op, reply)
            elif future.done():
                continue  # its caller gave up (timeout, cancellation)
            elif isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)
        for op, error in failed_ops.items():
            self._report(op, error)

    def _fail(self, calls: list[_Call], exc: BaseException) -> None:
        posted: set[str] = set()
        for call in calls:
            if call.future is None:
                posted.add(call.op)
            elif not call.future.done():
                call.future.set_exception(_copy(exc))
        for op in sorted(posted):
            self._report(op, exc)

    def _report(self, op: str, exc: BaseException) -> None:
        if self._on_error is not None:
            self._on_error(op, exc)

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
