"""Token lifetime on live sockets: warn before ``exp``, cut the socket after it.

Each socket is warned with ``token_expiring {exp}`` ``lead`` seconds before ``exp`` (at once if
that moment has passed) and cut ``leeway`` seconds after ``exp`` (the same leeway the handshake
grants). ``reauth`` with a fresh token reschedules both.

One event-loop timer serves every socket: the deadlines sit in a heap, one small entry per
socket, and the timer is armed for the earliest. Two timers per socket cost ~1 KB per
connection and two timer insertions per handshake; a cancelled entry (a socket gone, a token
replaced) gives up its socket at once and leaves the heap when its moment comes (or when stale
entries make up half of it).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import time
from collections.abc import Callable

from services.gateway.connections import Connection

log = logging.getLogger(__name__)

_WARN = 0
_EXPIRE = 1
# Rebuild the heap once it holds at least this many cancelled entries, and they are half of it.
_COMPACT_AT = 1024


class ExpiryEntry:
    """A socket's place in the heap: the next thing to do for it, until cancelled."""

    __slots__ = ("conn", "expire_at", "owner", "stage")

    def __init__(self, conn: Connection, owner: ExpiryScheduler, expire_at: float) -> None:
        self.conn: Connection | None = conn
        self.owner = owner
        self.expire_at = expire_at
        self.stage = _WARN

    def cancel(self) -> None:
        """Forgets the socket; the entry stays in the heap, inert, until it is popped."""
        if self.conn is not None:
            self.conn = None
            self.owner.stale += 1


class ExpiryScheduler:
    """Schedules the expiry warnings and cut-offs of connections."""

    def __init__(
        self,
        *,
        lead: float,
        leeway: float,
        warn: Callable[[Connection], None],
        expire: Callable[[Connection], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._lead = lead
        self._leeway = leeway
        self._warn = warn
        self._expire = expire
        self._clock = clock
        self._heap: list[tuple[float, int, ExpiryEntry]] = []
        self._seq = 0
        self.stale = 0
        """Cancelled entries still in the heap."""
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    def schedule(self, conn: Connection) -> None:
        """(Re)arms the warning and the cut-off of ``conn`` for its current token."""
        conn.cancel_timers()
        loop = asyncio.get_running_loop()
        now = loop.time()
        remaining = conn.claims.exp - self._clock()
        entry = ExpiryEntry(conn, self, now + max(0.0, remaining + self._leeway))
        conn.expiry = entry
        self._push(now + max(0.0, remaining - self._lead), entry)
        self._arm(loop)

    def _push(self, when: float, entry: ExpiryEntry) -> None:
        if self.stale >= _COMPACT_AT and self.stale * 2 >= len(self._heap):
            self._heap = [item for item in self._heap if item[2].conn is not None]
            heapq.heapify(self._heap)
            self.stale = 0
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, entry))

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._heap:
            return
        first = self._heap[0][0]
        if self._timer is not None:
            if self._timer_at <= first:
                return
            self._timer.cancel()
        self._timer = loop.call_at(first, self._fire)
        self._timer_at = first

    def _fire(self) -> None:
        self._timer = None
        self._timer_at = math.inf
        loop = asyncio.get_running_loop()
        now = loop.time()
        heap = self._heap
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)[2]
            conn = entry.conn
            if conn is None:
                self.stale -= 1
                continue
            if entry.stage == _WARN:
                entry.stage = _EXPIRE
                self._push(entry.expire_at, entry)
                action = self._warn
            else:
                entry.conn = None  # done: a later cancel has nothing to forget
                action = self._expire
            try:
                action(conn)
            except Exception:
                log.exception("token expiry handling failed")
        self._arm(loop)
