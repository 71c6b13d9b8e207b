"""Token lifetime on live sockets: warn before ``exp``, cut the socket after it.

Each socket gets two event-loop timers (no task per socket): one sends ``token_expiring {exp}``
``lead`` seconds before ``exp`` (at once if that moment has passed), the other cuts the socket
``leeway`` seconds after ``exp`` (the same leeway the handshake grants). ``reauth`` with a fresh
token reschedules both.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from services.gateway.connections import Connection


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

    def schedule(self, conn: Connection) -> None:
        """(Re)arms the timers of ``conn`` for its current token."""
        conn.cancel_timers()
        loop = asyncio.get_running_loop()
        remaining = conn.claims.exp - self._clock()
        conn.timers.append(loop.call_later(max(0.0, remaining - self._lead), self._warn, conn))
        conn.timers.append(loop.call_later(max(0.0, remaining + self._leeway), self._expire, conn))
