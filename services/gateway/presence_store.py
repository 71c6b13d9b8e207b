"""Room presence in Redis: every replica's members of every room, for the whole cluster.

::

    sockgate:presence:{room}        hash: user id -> {"name", "on": {replica: 1}, "shown"}
    sockgate:replica:{id}:rooms     hash: room -> users that replica holds there (for reaping)

A replica is listed under a user's ``on`` while it holds at least one socket of the user in
the room; the user is present while some replica listed there is alive (``liveness``).
``shown`` is what the room was last told about the user: each script compares it with the new
state, so it knows whether its change is an arrival or a departure for the whole cluster, and
the reaper of a dead replica announces exactly the departures nobody announced yet.

A change is one script on one entry, O(1) in the size of the room (sent in the hot path's
batches), made only when a replica's first socket of a user enters the room or its last one
leaves. Entries move
by ±1, so two changes racing on different connections end in the same state in either order.
``who`` reads the room's hash (O(members)), and so do ``reap`` and ``resync``, which run once
per dead replica or per lost write.

Every script reads entries defensively: an entry that is not what a gateway writes is skipped
(or dropped), never an error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from services.gateway.liveness import LUA_PRELUDE, REPLICAS_KEY, Liveness, replica_key
from services.gateway.redis_batch import BatchScript, ScriptBatch

KEY_PREFIX = "sockgate:presence:"

_ENTRY = """
local function decode(raw)
  if not raw then return nil end
  local ok, entry = pcall(cjson.decode, raw)
  if not ok or type(entry) ~= 'table' or type(entry.on) ~= 'table' then return nil end
  return entry
end
local function present(entry, replicas, now)
  for id, n in pairs(entry.on) do
    if type(n) == 'number' and n > 0 and is_live(replicas, id, now) then return true end
  end
  return false
end
-- Stores (or drops) the entry; 1 arrival, -1 departure, 0 nothing new to announce.
local function settle(key, field, entry, replicas, now)
  local here = present(entry, replicas, now)
  local change = 0
  if here and not entry.shown then change = 1 elseif entry.shown and not here then change = -1 end
  entry.shown = here
  if next(entry.on) == nil then
    redis.call('HDEL', key, field)
  else
    redis.call('HSET', key, field, cjson.encode(entry))
  end
  return change
end
local function name_of(entry)
  if type(entry.name) == 'string' then return entry.name end
  return ''
end
"""

# KEYS: room, replicas, my rooms. ARGV: me, user, name, delta (1 or -1), room. -> change
_CHANGE = """
local now = now_ms()
local me, user, delta = ARGV[1], ARGV[2], tonumber(ARGV[4])
local entry = decode(redis.call('HGET', KEYS[1], user)) or {on = {}, shown = false}
local n = (tonumber(entry.on[me]) or 0) + delta
if n == 0 then entry.on[me] = nil else entry.on[me] = n end
if delta > 0 then entry.name = ARGV[3] end
local change = settle(KEYS[1], user, entry, KEYS[2], now)
if redis.call('HINCRBY', KEYS[3], ARGV[5], delta) <= 0 then redis.call('HDEL', KEYS[3], ARGV[5]) end
return change
"""

# KEYS: room, replicas. ARGV: most members. -> {1 if cut short, {user, name, ...}}
_WHO = """
local now = now_ms()
local limit = tonumber(ARGV[1])
local flat = redis.call('HGETALL', KEYS[1])
local out, count = {}, 0
for i = 1, #flat, 2 do
  local entry = decode(flat[i + 1])
  if entry and present(entry, KEYS[2], now) then
    if count == limit then return {1, out} end
    count = count + 1
    out[#out + 1] = flat[i]
    out[#out + 1] = name_of(entry)
  end
end
return {0, out}
"""

# KEYS: room, replicas. ARGV: the dead replica. -> {user, name, change, ...}
_REAP = """
local now = now_ms()
if is_live(KEYS[2], ARGV[1], now) then return {} end
local flat = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #flat, 2 do
  local entry = decode(flat[i + 1])
  if entry and entry.on[ARGV[1]] ~= nil then
    entry.on[ARGV[1]] = nil
    local change = settle(KEYS[1], flat[i], entry, KEYS[2], now)
    if change ~= 0 then
      out[#out + 1] = flat[i]; out[#out + 1] = name_of(entry); out[#out + 1] = change
    end
  end
end
return out
"""

# KEYS: room, replicas, my rooms. ARGV: me, room, then user, name for each local member.
# Makes my part of the room exactly that. -> {user, name, change, ...}
_RESYNC = """
local now = now_ms()
local me = ARGV[1]
local want, total = {}, 0
for i = 3, #ARGV, 2 do
  want[ARGV[i]] = ARGV[i + 1]
  total = total + 1
end
local out = {}
local function apply(user, entry)
  local change = settle(KEYS[1], user, entry, KEYS[2], now)
  if change ~= 0 then
    out[#out + 1] = user; out[#out + 1] = name_of(entry); out[#out + 1] = change
  end
end
local flat = redis.call('HGETALL', KEYS[1])
for i = 1, #flat, 2 do
  local user = flat[i]
  local entry = decode(flat[i + 1])
  if entry == nil then
    redis.call('HDEL', KEYS[1], user)
  elseif want[user] == nil and entry.on[me] ~= nil then
    entry.on[me] = nil
    apply(user, entry)
  end
end
for user, name in pairs(want) do
  local entry = decode(redis.call('HGET', KEYS[1], user)) or {on = {}, shown = false}
  entry.on[me] = 1
  entry.name = name
  apply(user, entry)
end
if total > 0 then
  redis.call('HSET', KEYS[3], ARGV[2], total)
else
  redis.call('HDEL', KEYS[3], ARGV[2])
end
return out
"""


def room_key(room: str) -> str:
    """The hash of ``room``'s members."""
    return KEY_PREFIX + room


@dataclass(frozen=True, slots=True)
class Member:
    """A user present in a room."""

    id: str
    name: str

    def wire(self) -> dict[str, str]:
        """The ``{id, name}`` object clients see."""
        return {"id": self.id, "name": self.name}


@dataclass(frozen=True, slots=True)
class Announcement:
    """A change of the cluster's presence that a room must be told about."""

    room: str
    member: Member
    change: int
    """1 arrival, -1 departure."""


class RedisPresence:
    """The Redis side of presence; every call goes through ``Liveness``.

    Joins and leaves (``change``) share the hot path's batches (``ScriptBatch``): a thousand
    sockets leaving at once are a few round trips, not a thousand.
    """

    def __init__(
        self, redis: Redis, *, liveness: Liveness, batch: ScriptBatch, max_members: int
    ) -> None:
        self._redis = redis
        self._liveness = liveness
        self._batch = batch
        self._max_members = max_members
        self._change = BatchScript(redis, _CHANGE, prelude=LUA_PRELUDE + _ENTRY)
        self._who = redis.register_script(LUA_PRELUDE + _ENTRY + _WHO)
        self._reap = redis.register_script(LUA_PRELUDE + _ENTRY + _REAP)
        self._resync = redis.register_script(LUA_PRELUDE + _ENTRY + _RESYNC)

    @property
    def _me(self) -> str:
        return self._liveness.replica_id

    def _my_rooms(self, replica: str | None = None) -> str:
        return replica_key(replica or self._me, "rooms")

    async def change(self, room: str, member: Member, delta: int) -> int:
        """This replica's first socket of ``member`` entered ``room`` (+1), or its last left (-1).

        Returns 1 when the user just arrived in the room for the whole cluster, -1 when they
        just left it, else 0; ``ClusterUnavailable`` when Redis cannot be asked.
        """
        keys = [room_key(room), REPLICAS_KEY, self._my_rooms()]
        args: list[str | int] = [self._me, member.id, member.name, delta, room]
        result = await self._liveness.call(
            "presence", lambda: self._batch.run(self._change, keys, args)
        )
        return int(result)

    async def who(self, room: str) -> tuple[list[Member], bool]:
        """The room's present members across the cluster, and whether the list was cut short."""
        keys = [room_key(room), REPLICAS_KEY]
        truncated, flat = await self._liveness.call(
            "who", lambda: self._who(keys=keys, args=[self._max_members])
        )
        members = [Member(_text(flat[i]), _text(flat[i + 1])) for i in range(0, len(flat), 2)]
        return members, bool(truncated)

    async def reap(self, replica: str) -> list[Announcement]:
        """Removes the dead ``replica`` from every room it had members in."""
        announcements: list[Announcement] = []
        async for raw_room, _sockets in self._redis.hscan_iter(self._my_rooms(replica)):
            room = _text(raw_room)
            flat = await self._reap(keys=[room_key(room), REPLICAS_KEY], args=[replica])
            announcements += _announcements(room, flat)
        return announcements

    async def resync(
        self, rooms: Iterable[str], local: Callable[[str], Sequence[Member]]
    ) -> list[Announcement]:
        """Makes this replica's part of each room exactly ``local(room)``: its members here,
        read just before the room is written.

        ``rooms`` are the rooms this replica has members in; those Redis still lists for it
        are added.
        """
        listed = {_text(room) for room in await self._redis.hkeys(self._my_rooms())}
        announcements: list[Announcement] = []
        for room in sorted(listed.union(rooms)):
            args: list[Any] = [self._me, room]
            for member in local(room):
                args += [member.id, member.name]
            flat = await self._resync(
                keys=[room_key(room), REPLICAS_KEY, self._my_rooms()], args=args
            )
            announcements += _announcements(room, flat)
        return announcements

    def replica_keys(self, replica: str) -> list[str]:
        """The keys only ``replica`` writes."""
        return [self._my_rooms(replica)]


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _announcements(room: str, flat: Sequence[Any]) -> list[Announcement]:
    return [
        Announcement(room, Member(_text(flat[i]), _text(flat[i + 1])), int(flat[i + 2]))
        for i in range(0, len(flat), 3)
    ]
