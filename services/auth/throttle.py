"""Throttles for the password endpoints: per account and per client address.

Per account: after ``free_failures`` failed logins the account waits an exponentially growing
delay (1 s, 2 s, 4 s … capped at ``max_delay``) before the next attempt is even checked. A
success resets it, and the record is forgotten once the cap has passed without failures, so a
real user is slowed, never locked out for good. Unknown accounts are throttled the same way,
so throttling tells an attacker nothing about which accounts exist.

Per address: a token bucket. State is in memory and bounded (least recently used entries are
dropped); with several workers each keeps its own, which only multiplies the limits.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from services.auth.errors import Throttled

_MAX_ENTRIES = 100_000


@dataclass(slots=True)
class _Failures:
    count: int
    last: float
    locked_until: float


class LoginThrottle:
    """Exponential delay per account after repeated failed logins."""

    def __init__(
        self,
        *,
        free_failures: int,
        max_delay: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._free = free_failures
        self._max_delay = max_delay
        self._clock = clock
        self._entries: OrderedDict[str, _Failures] = OrderedDict()

    def check(self, account: str) -> None:
        """Raises ``Throttled`` while ``account`` must wait."""
        entry = self._entries.get(account)
        if entry is None:
            return
        now = self._clock()
        if now - entry.last > 2 * self._max_delay:
            del self._entries[account]
        elif entry.locked_until > now:
            raise Throttled(entry.locked_until - now)

    def failure(self, account: str) -> None:
        """Records a failed login for ``account``."""
        now = self._clock()
        entry = self._entries.pop(account, None) or _Failures(0, now, 0.0)
        entry.count += 1
        entry.last = now
        excess = entry.count - self._free
        if excess > 0:
            entry.locked_until = now + min(self._max_delay, 2.0 ** (excess - 1))
        self._entries[account] = entry
        while len(self._entries) > _MAX_ENTRIES:
            self._entries.popitem(last=False)

    def success(self, account: str) -> None:
        """Forgets the failures of ``account`` after a good login."""
        self._entries.pop(account, None)


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class AddressLimiter:
    """A token bucket per client address."""

    def __init__(
        self, *, per_minute: int, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate = per_minute / 60.0
        self._burst = float(burst)
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def hit(self, address: str) -> None:
        """Takes one token for ``address``; raises ``Throttled`` when none is left."""
        now = self._clock()
        bucket = self._buckets.pop(address, None) or _Bucket(self._burst, now)
        bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.at) * self._rate)
        bucket.at = now
        self._buckets[address] = bucket
        while len(self._buckets) > _MAX_ENTRIES:
            self._buckets.popitem(last=False)
        if bucket.tokens < 1.0:
            raise Throttled((1.0 - bucket.tokens) / self._rate)
        bucket.tokens -= 1.0
