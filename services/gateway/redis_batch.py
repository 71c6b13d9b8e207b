"""Hot-path Redis scripts sent together: one batch at a time, not one call each.

Every handshake and every disconnect in cluster mode runs one small script (``quota``). Sent
one by one, each pays redis-py's whole command path (pool checkout, retry wrapper, its own
write and read) and, worse, its reply wakes the replica for one socket: under a connection
storm those wake-ups cost more CPU than the calls (measured in docs/benchmarks.md). Here calls
are queued and go out together: one write, replies read in order, each caller getting its own
reply (or its own error) back.

A batch goes out on a connection of the batch's own (made from the client's settings: TLS,
``AUTH``, ``SELECT`` as ``REDIS_URL`` says), written and read directly (``RedisWire``), not
through a redis-py pipeline: a pipeline's pool checkout, retry wrapper, command stack and
per-reply parsing cost the replica 6–10 % of its CPU per connect in a connection storm, at
the ~12 calls a batch holds there (docs/benchmarks.md, round 12). Replies are redis-py's own
(its error types, its decoding). A connection that breaks is dropped and made again for the
next batch; a batch whose reused connection turns out dead before any reply is sent once more
on a new one, as the client's own retry would.

- The first call after a quiet moment waits ``GATEWAY_REDIS_BATCH_WINDOW`` (10 ms; 0 means the
  rest of the event-loop pass) so the calls of a burst share its batch, and
  ``GATEWAY_REDIS_BATCH_WINDOW_BUSY`` (20 ms) while the replica is busy (``busy``: the replica
  passes a ``CpuShare``, over half a core over the last 50 ms or more). Then its CPU is what
  sets the connect rate, and larger batches leave more of it to the handshakes (a storm at
  100 in flight, 20 ms against 10: 0.85× the CPU per connect, 1.11× the connects/s;
  docs/benchmarks.md, round 13); a replica with CPU to spare keeps the shorter wait. The wait
  ends early once every caller that could still join is in (``expected``: the replica passes
  its count of handshakes in progress): with few handshakes at a time, all of them soon wait
  on the batch, no one else can join it before their replies are back, and waiting out the
  window would only add to every handshake.
- One batch is in flight at a time (one connection): calls made meanwhile form the next
  one, which goes out as soon as the reply is in. Under load, batches grow by themselves
  instead of opening connections; a close storm of 10,000 sockets is a handful of batches.
- ``run`` waits for the reply; ``post`` does not (a disconnect needs no answer) and its
  failures are reported once per batch to ``on_error``, not once per call.

- Calls of one script next to each other in a batch go out as one ``EVALSHA`` of the script's
  grouped form (``BatchScript``), which runs the script's body once per call, in order, with
  each call's own ``KEYS`` and ``ARGV``: redis-py packs one command and parses one reply
  instead of one per call (~19 → ~11 µs of the replica's CPU per call in a batch of 100),
  and Redis starts one script instead of many.

Each call still runs atomically, and a group as a whole; groups stop at ``MAX_GROUP`` calls,
so one holds Redis for ~0.5 ms at most (1,024 admits in one script: ~4 ms in one piece, where
their separate scripts took ~3.7 ms with other clients' commands let in between). A
connection error or timeout fails every call of its batch, a script error only its own call
(the grouped form catches it per call), and ``NOSCRIPT`` (a restarted or flushed Redis) loads
the script and sends the affected calls once more.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError

from services.gateway.redis_wire import PARTIAL, RedisWire, own_connection

CLIENT_NAME = "sockgate-scripts"  # as Redis' CLIENT LIST shows the batch's connection

# The most calls in one batch (bounds one write and one reply buffer).
MAX_BATCH = 1024
# The most calls in one grouped EVALSHA (bounds how long one script holds Redis).
MAX_GROUP = 128

# The grouped form of a script: ARGV starts with the number of calls and each call's key and
# argument counts; then come the calls' KEYS back to back, and their ARGV. A call that fails
# (an error reply or a Lua error) fails alone; a call that returns nil leaves a nil reply
# (false), not a hole that would end the array.
_GROUPED = """
local function call_one(KEYS, ARGV)
{body}
end
local calls, key_count, arg_count = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local replies = {{}}
for call = 0, calls - 1 do
  local keys, args = {{}}, {{}}
  for i = 1, key_count do keys[i] = KEYS[call * key_count + i] end
  for i = 1, arg_count do args[i] = ARGV[3 + call * arg_count + i] end
  local ok, reply = pcall(call_one, keys, args)
  if not ok and type(reply) ~= 'table' then reply = redis.error_reply(tostring(reply)) end
  if reply == nil then reply = false end
  replies[call + 1] = reply
end
return replies
"""


class BatchScript:
    """A Lua script for ``ScriptBatch``: run alone (``single``) or many calls at once.

    ``body`` is the script proper, run once per call with the call's ``KEYS`` and ``ARGV``;
    ``prelude`` (local helper functions and their state) is defined once per ``EVALSHA``, so a
    group's calls share it: the liveness cache of ``liveness.LUA_PRELUDE`` answers a whole
    group from one look at each replica's deadline, as if its calls ran in the same instant.
    ``single`` is an ordinary redis-py script, for calls outside a batch.
    """

    def __init__(self, redis: Redis, body: str, *, prelude: str = "") -> None:
        self.single: AsyncScript = redis.register_script(prelude + body)
        self.grouped: AsyncScript = redis.register_script(prelude + _GROUPED.format(body=body))

    def scripts(self) -> tuple[AsyncScript, AsyncScript]:
        """Both forms, for loading them into Redis."""
        return self.single, self.grouped


@dataclass(slots=True)
class _Call:
    script: BatchScript
    args: tuple[Any, ...]
    key_count: int
    future: asyncio.Future[Any] | None  # None: posted, nobody waits for the reply
    op: str


class CpuShare:
    """Whether this process has been busy lately: its CPU time over the wall time that passed,
    at least ``threshold`` of one core (asyncio runs the replica on one).

    Measured over spans of at least ``span`` seconds, when asked: the last span decides until
    the next one ends, so a burst after a quiet minute is seen as busy within ``span``.
    """

    def __init__(
        self,
        threshold: float = 0.5,
        span: float = 0.05,
        *,
        cpu: Callable[[], float] = time.process_time,
        wall: Callable[[], float] = time.monotonic,
    ) -> None:
        self._threshold = threshold
        self._span = span
        self._cpu = cpu
        self._wall = wall
        self._since = wall()
        self._cpu_since = cpu()
        self._busy = False

    def __call__(self) -> bool:
        now = self._wall()
        elapsed = now - self._since
        if elapsed >= self._span:
            used = self._cpu()
            self._busy = used - self._cpu_since >= self._threshold * elapsed
            self._since, self._cpu_since = now, used
        return self._busy


class ScriptBatch:
    """Runs registered scripts one batch at a time on its own connection (see the module doc)."""

    def __init__(
        self,
        redis: Redis,
        *,
        timeout: float,
        window: float = 0.0,
        busy_window: float | None = None,
        busy: Callable[[], bool] | None = None,
        on_error: Callable[[str, BaseException], None] | None = None,
        expected: Callable[[], int] | None = None,
    ) -> None:
        """``busy_window`` (default: ``window``) replaces ``window`` while ``busy()`` says so."""
        self._redis = redis
        self._timeout = timeout
        self._window = window
        self._busy_window = window if busy_window is None else busy_window
        self._on_error = on_error
        self._expected = expected
        self._busy = busy
        self._queue: list[_Call] = []
        self._waiting = 0  # queued calls whose caller waits for the reply
        self._timer: asyncio.TimerHandle | None = None
        self._armed = False
        self._sender: asyncio.Task[None] | None = None
        self._connection: AbstractConnection | None = None
        self._wire: RedisWire | None = None
        self.batches = 0  # batches written so far

    async def run(self, script: BatchScript, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """``script(keys, args)``'s reply, sent in the next batch."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._add(_Call(script, (*keys, *args), len(keys), future, ""))
        return await future

    def post(self, script: BatchScript, keys: Sequence[str], args: Sequence[Any], op: str) -> None:
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
        await self._disconnect()

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
        window = self._busy_window if self._busy is not None and self._busy() else self._window
        if window > 0:
            self._timer = loop.call_later(window, self._fire)
        else:
            loop.call_soon(self._fire)

    def _all_in(self) -> bool:
        """Whether every caller ``expected`` counts is already waiting in the queue."""
        if self._expected is None or max(self._window, self._busy_window) <= 0:
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
                replies = await self._round_trip(calls)
                missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
                if missing:
                    for batch_script in {calls[i].script for i in missing}:
                        for script in batch_script.scripts():
                            script.sha = await self._redis.script_load(script.script)
                    again = await self._round_trip([calls[i] for i in missing])
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

    async def _round_trip(self, calls: list[_Call]) -> list[Any]:
        """Each call's reply (or error), one ``EVALSHA`` per group of calls (``_groups``)."""
        groups = _groups(calls)
        commands = [_command(group) for group in groups]
        # EVALSHA directly: checking for the scripts first would be one more round trip per
        # batch; NOSCRIPT is handled by the caller instead.
        reused = self._wire is not None
        try:
            try:
                grouped = await self._exchange(commands)
            except _Unanswered:
                if not reused:
                    raise
                await self._disconnect()
                grouped = await self._exchange(commands)  # on a new connection, once
        except _Unanswered as exc:
            await self._disconnect()
            raise exc.error from None
        except BaseException:
            await self._disconnect()  # replies may still come: the stream is out of step
            raise
        replies: list[Any] = []
        for group, reply in zip(groups, grouped, strict=True):
            if len(group) == 1:
                replies.append(reply)
            elif isinstance(reply, list) and len(reply) == len(group):
                replies.extend(reply)
            else:  # the group failed as a whole (NOSCRIPT, say): each call did
                error = reply if isinstance(reply, Exception) else ResponseError("bad reply")
                replies.extend(_copy(error) for _ in group)
        return replies

    async def _exchange(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Writes ``commands`` at once and reads their replies, in order.

        Raises ``_Unanswered`` when the connection fails before any byte of a reply came in.
        """
        wire = self._wire or await self._connect()
        wire.send_all(commands)
        self.batches += 1
        replies: list[Any] = []
        answered = False
        while len(replies) < len(commands):
            reply = wire.next_reply()
            if reply is PARTIAL:
                try:
                    await wire.read()
                except (RedisConnectionError, OSError) as exc:
                    if answered:
                        raise
                    raise _Unanswered(exc) from None
                answered = True
                continue
            replies.append(reply)
        return replies

    async def _connect(self) -> RedisWire:
        connection = self._connection = own_connection(self._redis, CLIENT_NAME)
        try:
            await connection.connect()  # type: ignore[no-untyped-call]  # untyped in redis-py
        except (RedisError, OSError) as exc:
            raise _Unanswered(exc) from None
        self._wire = RedisWire(connection, as_client=True)
        return self._wire

    async def _disconnect(self) -> None:
        connection, self._connection, self._wire = self._connection, None, None
        if connection is not None:
            with contextlib.suppress(RedisError, OSError):
                await connection.disconnect(nowait=True)  # a frozen Redis must not hold us


class _Unanswered(Exception):
    """A batch's connection failed before Redis answered any of it (``error`` says how)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def _command(group: list[_Call]) -> tuple[Any, ...]:
    """The ``EVALSHA`` of one group: the script's single form for one call, else its grouped
    form with every call's keys, then the counts, then every call's arguments."""
    first = group[0]
    if len(group) == 1:
        return ("EVALSHA", first.script.single.sha, first.key_count, *first.args)
    key_count = first.key_count
    keys = [key for call in group for key in call.args[:key_count]]
    args = [arg for call in group for arg in call.args[key_count:]]
    counts = (len(group), key_count, len(first.args) - key_count)
    return ("EVALSHA", first.script.grouped.sha, len(keys), *keys, *counts, *args)


def _groups(calls: list[_Call]) -> list[list[_Call]]:
    """``calls`` in order, cut into runs of calls of one script with the same counts, each
    run at most ``MAX_GROUP`` long."""
    groups: list[list[_Call]] = []
    for call in calls:
        if groups and len(groups[-1]) < MAX_GROUP:
            last = groups[-1][0]
            same = last.script is call.script and last.key_count == call.key_count
            if same and len(last.args) == len(call.args):
                groups[-1].append(call)
                continue
        groups.append([call])
    return groups


def _copy(exc: BaseException) -> BaseException:
    """A fresh exception per caller (each await adds its own traceback), same type and text."""
    if isinstance(exc, asyncio.CancelledError):
        return RedisConnectionError("the batch was cancelled")
    try:
        return type(exc)(*exc.args)
    except Exception:
        return exc
