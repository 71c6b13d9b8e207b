"""Who is in which room: ``presence`` events and the ``who`` answer, cluster-wide.

A user is *present* in a room while at least one of their sockets, on any live replica, has
joined it. Events report changes of that, once per user rather than per socket:
``presence {room, user: {id, name}, event: "join"}`` when the user's first socket enters the
room, ``"leave"`` when the last one is gone (left, disconnected, moved out by ``reauth``, or on
a replica that died). ``who {room}`` lists the present users, each once.

Each replica keeps its own sockets in a ``RoomTable`` (room -> user -> sockets). Alone, the
table is the whole answer. In cluster mode, when a user's first socket on this replica enters
a room or the last one leaves it, the change is applied in Redis too (``presence_store``),
which says whether it is news for the whole cluster; a replica that dies stops counting at its
deadline, and its departures are announced when it is reaped (``liveness``). While Redis is
unreachable, events follow this replica's table, ``who`` is refused as ``unavailable`` rather
than answered with part of the room, and the table is written back in full once Redis
answers.
"""

from __future__ import annotations

import contextlib
from typing import Literal

from services.gateway.broadcast import Broadcaster
from services.gateway.connections import Connection
from services.gateway.liveness import ClusterUnavailable
from services.gateway.presence_store import Announcement, Member, RedisPresence

Change = Literal["join", "leave"]


class RoomTable:
    """This replica's sockets by room and user (joined rooms only, not ``user:`` rooms)."""

    def __init__(self) -> None:
        self._rooms: dict[str, dict[str, tuple[str, int]]] = {}

    def add(self, room: str, member: Member) -> bool:
        """Counts one more socket of ``member`` in ``room``; ``True`` if it is the first here."""
        users = self._rooms.setdefault(room, {})
        _, sockets = users.get(member.id, ("", 0))
        users[member.id] = (member.name, sockets + 1)
        return sockets == 0

    def remove(self, room: str, user_id: str) -> bool:
        """Counts one socket less; ``True`` if it was the user's last one here."""
        users = self._rooms.get(room)
        if users is None or user_id not in users:
            return False
        name, sockets = users[user_id]
        if sockets > 1:
            users[user_id] = (name, sockets - 1)
            return False
        del users[user_id]
        if not users:
            del self._rooms[room]
        return True

    def members(self, room: str) -> list[Member]:
        """The users with a socket in ``room`` on this replica."""
        return [Member(user, name) for user, (name, _) in self._rooms.get(room, {}).items()]

    def rooms(self) -> list[str]:
        """The rooms with a socket on this replica."""
        return list(self._rooms)


class PresenceUnavailable(Exception):
    """The cluster's members cannot be listed right now (Redis unreachable)."""


class Presence:
    """Tracks joins and leaves, announces arrivals and departures, answers ``who``."""

    def __init__(
        self,
        *,
        broadcaster: Broadcaster,
        store: RedisPresence | None,
        max_members: int,
    ) -> None:
        self._broadcaster = broadcaster
        self._store = store
        self._max_members = max_members
        self.table = RoomTable()

    async def entered(self, conn: Connection, room: str) -> None:
        """``conn`` joined ``room`` (python-socketio's room already holds it)."""
        member = Member(conn.sub, conn.claims.name)
        first_here = self.table.add(room, member)
        await self._changed(room, member, 1, first_here, skip_sid=conn.sid)

    async def left(self, conn: Connection, room: str) -> None:
        """``conn`` left ``room`` or went away."""
        member = Member(conn.sub, conn.claims.name)
        last_here = self.table.remove(room, member.id)
        await self._changed(room, member, -1, last_here, skip_sid=conn.sid)

    async def _changed(
        self, room: str, member: Member, delta: int, local_news: bool, *, skip_sid: str
    ) -> None:
        if not local_news:
            return  # the user's other sockets here keep this replica's part as it was
        change = delta
        if self._store is not None:
            # Without an answer from Redis this replica's own view decides.
            with contextlib.suppress(ClusterUnavailable):
                change = await self._store.change(room, member, delta)
        if change:
            await self._announce(Announcement(room, member, change), skip_sid=skip_sid)

    async def who(self, room: str) -> tuple[list[Member], bool]:
        """The room's present users, sorted by name, and whether the list was cut short."""
        if self._store is None:
            members = self.table.members(room)
            truncated = len(members) > self._max_members
        else:
            try:
                members, truncated = await self._store.who(room)
            except ClusterUnavailable:
                raise PresenceUnavailable("presence is unavailable while Redis is down") from None
        members.sort(key=lambda member: (member.name, member.id))
        return members[: self._max_members], truncated

    async def _announce(self, news: Announcement, *, skip_sid: str | None = None) -> None:
        event: Change = "join" if news.change > 0 else "leave"
        await self._broadcaster.presence(news.room, news.member.wire(), event, skip_sid=skip_sid)

    # -- ReplicaState (see liveness) --------------------------------------------------------

    def replica_keys(self, replica: str) -> list[str]:
        """The keys only ``replica`` writes."""
        return self._store.replica_keys(replica) if self._store is not None else []

    async def reap(self, replica: str) -> None:
        """Removes a dead replica's members and announces who left with it."""
        if self._store is not None:
            for news in await self._store.reap(replica):
                await self._announce(news)

    async def resync(self) -> None:
        """Writes this replica's table back into Redis and announces what that changed."""
        if self._store is not None:
            for news in await self._store.resync(self.table.rooms(), self.table.members):
                await self._announce(news)
