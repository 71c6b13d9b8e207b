"""This replica's heartbeat in Redis, and the clean-up after replicas that died.

State that replicas share through Redis (room presence, connections per user) is kept per
replica: each replica writes only its own part, tagged with its id, and a part counts only
while its replica is alive::

    sockgate:replicas                   sorted set: replica id -> deadline (ms, Redis's clock)
    sockgate:replica:{id}:reaping       lock held while a dead replica is being cleaned up

Every replica pushes its deadline ``ttl`` ahead every ``ttl / 3`` seconds: one round trip a
period, whatever the number of sockets. Scripts compare deadlines with Redis's own clock
(``TIME``), so the replicas' clocks never need to agree, and a replica that stopped beating is
dead to every reader the moment its deadline passes. The first replica to beat after that
*reaps* it, under a lock: each ``ReplicaState`` removes what the dead replica held (presence
announces the departures), then the dead replica leaves the set.

A replica can find itself newly added on a beat: it was reaped while alive (cut off from Redis
for longer than ``ttl``), or Redis restarted empty. Then, and after any of its writes failed
(``mark_dirty``), it rewrites its state from memory (``resync``) on the beat.

``call`` is how the hot paths (handshakes, joins) reach Redis: skipped at once while the
subscription is down, bounded by a timeout, and any failure marks the state dirty and raises
``ClusterUnavailable`` so the caller carries on with what this replica knows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)

T = TypeVar("T")

REPLICAS_KEY = "sockgate:replicas"
_REPLICA_ID = re.compile(r"^[0-9a-f]{32}\Z")
_DEAD_PER_BEAT = 16
_CLOSE_TIMEOUT = 2.0

LUA_PRELUDE = """
local now_cache
local function now_ms()
  if now_cache == nil then
    local t = redis.call('TIME')
    now_cache = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return now_cache
end
local live_cache = {}
local function is_live(replicas, id, now)
  local live = live_cache[id]
  if live == nil then
    local deadline = redis.call('ZSCORE', replicas, id)
    live = deadline ~= false and tonumber(deadline) >= now
    live_cache[id] = live
  end
  return live
end
"""
"""Lua helpers every cluster-state script starts with: Redis's clock and replica liveness.

Both are read once per script run: a grouped ``EVALSHA`` (``redis_batch.BatchScript``) answers
all its calls from one ``TIME`` and one look at each replica's deadline, as if they ran in the
same instant (a group of 128 holds Redis ~0.5 ms; deadlines are seconds). One ``TIME`` per
group instead of per call saved 11–17 % of the admit script's time in Redis (groups of 12–83).
"""

# KEYS: replicas. ARGV: me, ttl in ms, most dead to return.
# -> {1 if I was not in the set (else 0), {ids whose deadline passed}}
_BEAT = """
local now = now_ms()
local added = redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now, 'LIMIT', 0, ARGV[3])
return {added, dead}
"""

# KEYS: replicas, then the dead replica's own keys. ARGV: the dead replica.
# Only a replica that is still dead leaves the set (it may have come back meanwhile).
_FINISH_REAP = """
if is_live(KEYS[1], ARGV[1], now_ms()) then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
for i = 2, #KEYS do redis.call('DEL', KEYS[i]) end
return 1
"""


def replica_key(replica: str, what: str) -> str:
    """A key that belongs to one replica (``sockgate:replica:{id}:{what}``)."""
    return f"sockgate:replica:{replica}:{what}"


class ClusterUnavailable(Exception):
    """Redis could not be asked just now; the caller decides with local knowledge."""


class ReplicaState(Protocol):
    """Cluster state a replica keeps in Redis under its id."""

    def replica_keys(self, replica: str) -> list[str]:
        """Keys that belong to ``replica`` alone, deleted once it is reaped."""
        ...

    async def reap(self, replica: str) -> None:
        """Removes what the dead ``replica`` held (it is still dead when each script runs)."""
        ...

    async def resync(self) -> None:
        """Rewrites this replica's part from memory."""
        ...


class Liveness:
    """The heartbeat, the reaper and the guarded Redis calls (see the module doc)."""

    def __init__(
        self,
        redis: Redis,
        *,
        ttl: float,
        timeout: float,
        up: Callable[[], bool],
        metrics: GatewayMetrics,
        replica_id: str | None = None,
    ) -> None:
        self.replica_id = replica_id or uuid.uuid4().hex
        self._redis = redis
        self._ttl = ttl
        self._timeout = timeout
        self._up = up
        self._metrics = metrics
        self._states: list[ReplicaState] = []
        self._dirty = True  # the first beat writes whatever exists by then
        self._healthy = True
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._beat_script = redis.register_script(LUA_PRELUDE + _BEAT)
        self._finish_script = redis.register_script(LUA_PRELUDE + _FINISH_REAP)

    @property
    def interval(self) -> float:
        """Seconds between beats."""
        return self._ttl / 3

    def register(self, state: ReplicaState) -> None:
        """Adds ``state`` to what is resynced and reaped."""
        self._states.append(state)

    def mark_dirty(self) -> None:
        """A write was lost: the next successful beat rewrites this replica's state."""
        self._dirty = True

    async def wake(self) -> None:
        """Beats now rather than at the next period (the subscription came back)."""
        self._wake.set()

    async def call(self, op: str, command: Callable[[], Awaitable[T]]) -> T:
        """Runs ``command`` against Redis for a hot path, or raises ``ClusterUnavailable``."""
        if not self._up():
            self.lost(op)
            raise ClusterUnavailable(op)
        try:
            async with asyncio.timeout(self._timeout):
                return await command()
        except (RedisError, OSError, TimeoutError) as exc:
            self.failed(op, exc)
            raise ClusterUnavailable(op) from None

    @property
    def up(self) -> bool:
        """Whether hot-path calls are attempted (the subscription is up)."""
        return self._up()

    def failed(self, op: str, exc: BaseException) -> None:
        """A hot-path write failed (counted and logged): the next beat resyncs."""
        self.lost(op)
        log.warning("a cluster state update failed", extra={"op": op, "error": repr(exc)})

    def lost(self, op: str) -> None:
        """A hot-path write was skipped or lost (counted): the next beat resyncs."""
        self._metrics.cluster_state_errors.labels(op).inc()
        self._dirty = True

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Beats once (waiting at most one period), then keeps beating in the background."""
        try:
            async with asyncio.timeout(self.interval):
                await self._beat()
        except Exception as exc:
            log.warning("first heartbeat failed; retrying", extra={"error": repr(exc)})
        self._task = asyncio.create_task(self._run(), name="replica-heartbeat")

    async def close(self) -> None:
        """Stops beating and expires this replica at once, so another one reaps what is left."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(_CLOSE_TIMEOUT):
                await self._redis.zadd(REPLICAS_KEY, {self.replica_id: 0}, xx=True)

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self._beat()
            except (RedisError, OSError, TimeoutError) as exc:
                self._dirty = True
                if self._healthy:
                    log.warning("heartbeat failed", extra={"error": repr(exc)})
                self._healthy = False
            except Exception:
                self._dirty = True
                log.exception("heartbeat failed")

    async def _beat(self) -> None:
        ttl_ms = int(self._ttl * 1000)
        added, dead = await self._beat_script(
            keys=[REPLICAS_KEY], args=[self.replica_id, ttl_ms, _DEAD_PER_BEAT]
        )
        if not self._healthy:
            log.info("heartbeat restored")
            self._healthy = True
        if added or self._dirty:
            self._dirty = False
            try:
                for state in self._states:
                    await state.resync()
            except BaseException:
                self._dirty = True
                raise
            self._metrics.replica_resyncs.inc()
            log.info("cluster state rewritten", extra={"replica": self.replica_id})
        for raw in dead:
            replica = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
            if replica != self.replica_id:
                await self._reap(replica)

    async def _reap(self, replica: str) -> None:
        if not _REPLICA_ID.match(replica):
            # Not written by a gateway: nothing of it to clean, and it must not block the set.
            await self._redis.zrem(REPLICAS_KEY, replica)
            return
        lock = replica_key(replica, "reaping")
        if not await self._redis.set(lock, self.replica_id, nx=True, ex=max(10, int(self._ttl))):
            return  # another replica is on it
        try:
            for state in self._states:
                await state.reap(replica)
            keys = [key for state in self._states for key in state.replica_keys(replica)]
            reaped: Any = await self._finish_script(keys=[REPLICAS_KEY, *keys], args=[replica])
        finally:
            await self._redis.delete(lock)
        if reaped:
            self._metrics.replicas_reaped.inc()
            log.info("reaped a dead replica", extra={"replica": replica})
