"""Per-socket and per-replica limits: event rate, abuse, handshakes in flight.

Sizes (frames, message text, rooms per socket, connections per user) are plain comparisons
where they are enforced; what needs state lives here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class TokenBucket:
    """A token bucket: ``rate`` tokens a second up to ``burst``; one event takes one token."""

    __slots__ = ("_burst", "_rate", "_stamp", "_tokens")

    def __init__(self, rate: float, burst: int, now: float | None = None) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._stamp = time.monotonic() if now is None else now

    def take(self, now: float | None = None) -> bool:
        """Takes a token if one is left; ``False`` means the event is over the rate."""
        now = time.monotonic() if now is None else now
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class AbuseMeter:
    """Counts refused events, leaking at the allowed rate; full means sustained abuse.

    A client that overshoots a little (a reconnect burst) drains back to zero; one that keeps
    sending far over the rate fills it within ``threshold / (excess rate)`` seconds.
    """

    __slots__ = ("_level", "_rate", "_stamp", "_threshold")

    def __init__(self, rate: float, threshold: int) -> None:
        self._rate = rate
        self._threshold = threshold
        self._level = 0.0
        self._stamp = time.monotonic()

    def strike(self, now: float | None = None) -> bool:
        """Records one refused event; ``True`` once the socket should be cut."""
        now = time.monotonic() if now is None else now
        self._level = max(0.0, self._level - (now - self._stamp) * self._rate) + 1.0
        self._stamp = now
        return self._level > self._threshold


_SWEEP_SLACK = 0.05


class HandshakeGate:
    """Engine.IO sessions of this replica that have not yet answered a Socket.IO connect.

    That count is the handshake backlog: it grows when the event loop cannot keep up with a
    connection storm, and when clients open sessions and never connect. Past ``limit`` new
    connects are refused at once, before any token is verified. Independently, a session that
    has no accepted connection ``timeout`` seconds after it opened (never connected, or was
    refused and stayed open) is handed to ``expire``, which closes it.
    """

    def __init__(self, *, limit: int, timeout: float, expire: Callable[[str], None]) -> None:
        self._limit = limit
        self._timeout = timeout
        self._expire = expire
        self._pending: set[str] = set()
        # Session -> deadline, oldest first: every deadline is "armed + timeout", so insertion
        # order is deadline order and one timer for the oldest serves them all (a timer per
        # handshake costs more than the check it guards).
        self._deadlines: dict[str, float] = {}
        self._timer: asyncio.TimerHandle | None = None

    @property
    def in_flight(self) -> int:
        """Sessions opened and not yet answered."""
        return len(self._pending)

    def overloaded(self) -> bool:
        """Whether the backlog (the asking session included) is past the limit."""
        return len(self._pending) > self._limit

    def opened(self, eio_sid: str) -> None:
        """An Engine.IO session opened; it must connect within the timeout."""
        self._pending.add(eio_sid)
        self._arm(eio_sid)

    def unconnected(self, eio_sid: str) -> None:
        """A session lost its Socket.IO connection but stays open: it must reconnect in time.

        Without this a client could connect, send DISCONNECT and keep the bare session open,
        outside every per-user and in-flight count.
        """
        self._arm(eio_sid)

    def settled(self, eio_sid: str, *, accepted: bool) -> None:
        """The session's connect was answered; an accepted one also stops its timer."""
        self._pending.discard(eio_sid)
        if accepted:
            self._deadlines.pop(eio_sid, None)

    def closed(self, eio_sid: str) -> None:
        """The session closed."""
        self._pending.discard(eio_sid)
        self._deadlines.pop(eio_sid, None)

    def _arm(self, eio_sid: str) -> None:
        loop = asyncio.get_running_loop()
        self._deadlines.pop(eio_sid, None)  # re-armed: moves to the end, in deadline order
        self._deadlines[eio_sid] = deadline = loop.time() + self._timeout
        if self._timer is None:
            self._timer = loop.call_at(deadline, self._sweep)

    def _sweep(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        deadlines = self._deadlines
        while deadlines:
            eio_sid, deadline = next(iter(deadlines.items()))
            if deadline > now:
                # Due ones are gathered a little (one wake-up for a storm's worth).
                self._timer = loop.call_at(deadline + _SWEEP_SLACK, self._sweep)
                return
            del deadlines[eio_sid]
            self._pending.discard(eio_sid)
            self._expire(eio_sid)
