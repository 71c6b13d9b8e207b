"""Connections per user across the cluster (``GATEWAY_MAX_CONNECTIONS_PER_USER``).

Each replica counts its own sockets per user (``Connections``, plus handshakes of the user
still in progress). In cluster mode it also keeps that count in Redis beside the other
replicas' counts::

    sockgate:conns:{sub}            hash: replica id -> the user's sockets there
    sockgate:replica:{id}:users     set: users with sockets on that replica (for reaping)

A handshake is admitted by one script, one round trip: the counts of the live replicas
(``liveness``) plus this socket must stay within the limit, and this replica's count goes up
in the same atomic step, so two replicas admitting one user at the same moment cannot both take
the last place. A disconnect takes the count down again. A dead replica's counts stop counting
at its deadline and are deleted when it is reaped.

Redis down or slow: the replica admits on its own count alone (an outage must not refuse
everyone) and rewrites its counts once Redis answers again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio import Redis

from services.gateway.connections import Connections
from services.gateway.liveness import (
    LUA_PRELUDE,
    REPLICAS_KEY,
    ClusterUnavailable,
    Liveness,
    replica_key,
)
from services.gateway.redis_batch import BatchScript, ScriptBatch

KEY_PREFIX = "sockgate:conns:"
_BATCH = 500

# KEYS: the user's counts, replicas, my users. ARGV: me, limit, user. -> 1 admitted, 0 full
_ADMIT = """
local now = now_ms()
local flat = redis.call('HGETALL', KEYS[1])
local total = 1
for i = 1, #flat, 2 do
  local n = tonumber(flat[i + 1]) or 0
  if n > 0 and (flat[i] == ARGV[1] or is_live(KEYS[2], flat[i], now)) then total = total + n end
end
if total > tonumber(ARGV[2]) then return 0 end
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('SADD', KEYS[3], ARGV[3])
return 1
"""

# KEYS: the user's counts, my users. ARGV: me, user, delta or absolute count, mode.
_SET = """
local n
if ARGV[4] == 'add' then
  n = redis.call('HINCRBY', KEYS[1], ARGV[1], tonumber(ARGV[3]))
else
  n = tonumber(ARGV[3])
  if n > 0 then redis.call('HSET', KEYS[1], ARGV[1], n) end
end
if n <= 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('SREM', KEYS[2], ARGV[2])
else
  redis.call('SADD', KEYS[2], ARGV[2])
end
return n
"""

# KEYS: replicas, then the counts of users the dead replica had. ARGV: the dead replica.
_REAP = """
if is_live(KEYS[1], ARGV[1], now_ms()) then return 0 end
for i = 2, #KEYS do redis.call('HDEL', KEYS[i], ARGV[1]) end
return #KEYS - 1
"""


def user_key(sub: str) -> str:
    """The hash of ``sub``'s connection counts per replica."""
    return KEY_PREFIX + sub


class QuotaExceeded(Exception):
    """The user already holds as many connections as allowed."""


class RedisQuota:
    """The Redis side of the per-user limit; hot-path calls go through ``Liveness``."""

    def __init__(self, redis: Redis, *, liveness: Liveness, batch: ScriptBatch) -> None:
        self._redis = redis
        self._liveness = liveness
        self._batch = batch
        self._admit = BatchScript(redis, _ADMIT, prelude=LUA_PRELUDE)
        self._set = BatchScript(redis, _SET)
        self._reap = redis.register_script(LUA_PRELUDE + _REAP)

    @property
    def _me(self) -> str:
        return self._liveness.replica_id

    def _users(self, replica: str | None = None) -> str:
        return replica_key(replica or self._me, "users")

    async def admit(self, sub: str, limit: int) -> bool:
        """Counts one more socket of ``sub`` here if the cluster-wide total allows it."""
        keys = [user_key(sub), REPLICAS_KEY, self._users()]
        result = await self._liveness.call(
            "admit", lambda: self._batch.run(self._admit, keys, [self._me, limit, sub])
        )
        return bool(result)

    def release(self, sub: str) -> None:
        """Counts one socket of ``sub`` less here, in the next batch (nothing waits for it).

        A failure marks the replica's cluster state for a resync (``Liveness.failed``), which
        rewrites its counts from memory; so does a release skipped while Redis is down.
        """
        if not self._liveness.up:
            self._liveness.lost("release")
            return
        keys = [user_key(sub), self._users()]
        self._batch.post(self._set, keys, [self._me, sub, -1, "add"], op="release")

    async def resync(self, local: dict[str, int]) -> None:
        """Makes this replica's counts exactly ``local`` (user -> sockets here)."""
        listed = {_text(sub) for sub in await self._redis.smembers(self._users())}
        subs = sorted(listed.union(local))
        for start in range(0, len(subs), _BATCH):
            async with self._redis.pipeline(transaction=False) as pipe:
                for sub in subs[start : start + _BATCH]:
                    args: list[str | int] = [self._me, sub, local.get(sub, 0), "set"]
                    keys = [user_key(sub), self._users()]
                    await self._set.single(keys=keys, args=args, client=pipe)
                await pipe.execute()

    async def reap(self, replica: str) -> None:
        """Deletes the dead ``replica``'s counts."""
        batch: list[str] = []
        async for sub in self._redis.sscan_iter(self._users(replica)):
            batch.append(user_key(_text(sub)))
            if len(batch) >= _BATCH:
                await self._reap(keys=[REPLICAS_KEY, *batch], args=[replica])
                batch = []
        if batch:
            await self._reap(keys=[REPLICAS_KEY, *batch], args=[replica])

    def replica_keys(self, replica: str) -> list[str]:
        """The keys only ``replica`` writes."""
        return [self._users(replica)]


class UserQuota:
    """Admits a user's sockets within the limit, cluster-wide when Redis is there."""

    def __init__(self, *, limit: int, connections: Connections, store: RedisQuota | None) -> None:
        self._limit = limit
        self._connections = connections
        self._store = store
        self._pending: dict[str, int] = {}

    def _here(self, sub: str) -> int:
        return self._connections.count_for(sub) + self._pending.get(sub, 0)

    @asynccontextmanager
    async def admission(self, sub: str) -> AsyncIterator[None]:
        """Holds a place for one more socket of ``sub`` while the body registers it.

        Raises ``QuotaExceeded`` when the user has no place left. If the body fails, the place
        is given back; if it succeeds, the registered socket holds it until ``released``.
        """
        if self._here(sub) >= self._limit:
            raise QuotaExceeded(sub)
        self._pending[sub] = self._pending.get(sub, 0) + 1
        try:
            counted = False
            if self._store is not None:
                try:
                    counted = await self._store.admit(sub, self._limit)
                    if not counted:
                        raise QuotaExceeded(sub)
                except ClusterUnavailable:
                    counted = False  # this replica's own count decided
            try:
                yield
            except BaseException:
                if counted:
                    self.released(sub)
                raise
        finally:
            left = self._pending[sub] - 1
            if left:
                self._pending[sub] = left
            else:
                del self._pending[sub]

    def released(self, sub: str) -> None:
        """One socket of ``sub`` went away (or a place held for it was given back)."""
        if self._store is not None:
            self._store.release(sub)

    # -- ReplicaState (see liveness) --------------------------------------------------------

    def replica_keys(self, replica: str) -> list[str]:
        """The keys only ``replica`` writes."""
        return self._store.replica_keys(replica) if self._store is not None else []

    async def reap(self, replica: str) -> None:
        """Deletes a dead replica's counts."""
        if self._store is not None:
            await self._store.reap(replica)

    async def resync(self) -> None:
        """Writes this replica's counts back into Redis."""
        if self._store is not None:
            subs = {conn.sub for conn in self._connections}.union(self._pending)
            await self._store.resync({sub: self._here(sub) for sub in subs})


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
