"""Which users revoked their sessions, and since when, as this replica knows it.

The auth service publishes a ``shared.revocation.Revocation`` on ``CHANNEL`` when a user logs
out everywhere, and stores it under ``key_for(sub)`` with an expiry. A replica keeps a
``sub -> revoked_before`` map in memory: filled from the channel, and reloaded from the keys
every time the subscription is (re)established, so revocations made while this replica was
starting or cut off from Redis are learnt too. Handshakes and ``reauth`` consult the map only,
never Redis: no network round trip on the connect path.

An entry is dropped after ``retention`` seconds (by then every token it revokes has expired).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis

from shared.revocation import KEY_PREFIX, Revocation, is_revoked

log = logging.getLogger(__name__)

# A hostile channel cannot grow the map without bound; legitimate volume is far below this.
MAX_ENTRIES = 1_000_000
_SCAN_BATCH = 500


class Revocations:
    """The ``sub -> revoked_before`` map and its feeds (channel messages, key reloads)."""

    def __init__(
        self,
        *,
        retention: float,
        on_revoked: Callable[[Revocation], Awaitable[None]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._retention = retention
        self._on_revoked = on_revoked
        self._clock = clock
        self._before: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._before)

    def is_revoked(self, sub: str, iat: int) -> bool:
        """Whether a token of ``sub`` issued at ``iat`` has been revoked."""
        return is_revoked(iat, self._before.get(sub))

    def record(self, revocation: Revocation) -> bool:
        """Remembers ``revocation``; ``True`` if it moved the user's revoked-before time."""
        current = self._before.get(revocation.sub)
        if current is not None and current >= revocation.revoked_before:
            return False
        if current is None and len(self._before) >= MAX_ENTRIES:
            self.prune()
            if len(self._before) >= MAX_ENTRIES:
                log.error("revocation map full; refusing a new entry")
                return False
        self._before[revocation.sub] = revocation.revoked_before
        return True

    def prune(self) -> None:
        """Drops entries older than the retention."""
        horizon = self._clock() - self._retention
        self._before = {sub: t for sub, t in self._before.items() if t >= horizon}

    async def handle_message(self, data: bytes) -> None:
        """A message from the revocation channel; anything but a revocation is ignored."""
        try:
            revocation = Revocation.decode(data)
        except ValueError as exc:
            raise MalformedMessage(str(exc)) from None
        if self.record(revocation):
            log.info(
                "sessions revoked",
                extra={"sub": revocation.sub, "revoked_before": revocation.revoked_before},
            )
        # Disconnect whether or not the time moved: a socket may have connected with a token
        # from before it in the moment between the map update and this message.
        await self._on_revoked(revocation)

    async def reload(self, redis: Redis) -> None:
        """Reads every stored revocation (after a (re)subscribe) and applies them."""
        loaded = 0
        batch: list[bytes | str] = []
        async for key in redis.scan_iter(match=KEY_PREFIX + "*", count=_SCAN_BATCH):
            batch.append(key)
            if len(batch) >= _SCAN_BATCH:
                loaded += await self._apply_stored(redis, batch)
                batch = []
        if batch:
            loaded += await self._apply_stored(redis, batch)
        self.prune()
        log.info("revocations reloaded", extra={"new": loaded, "known": len(self._before)})

    async def _apply_stored(self, redis: Redis, keys: list[bytes | str]) -> int:
        values = await redis.mget(keys)
        applied = 0
        for key, value in zip(keys, values, strict=True):
            name = key.decode(errors="replace") if isinstance(key, bytes) else key
            revocation = _stored_revocation(name[len(KEY_PREFIX) :], value)
            if revocation is None:
                log.warning("ignoring a malformed stored revocation")
                continue
            if self.record(revocation):
                applied += 1
                await self._on_revoked(revocation)
        return applied


def _stored_revocation(sub: str, value: object) -> Revocation | None:
    """The revocation stored under ``key_for(sub)``: a bare time, or the channel message."""
    if value is None or not sub:
        return None
    text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    if text.isdigit():
        return Revocation(sub=sub, revoked_before=int(text))
    try:
        revocation = Revocation.decode(text)
    except ValueError:
        return None
    return revocation if revocation.sub == sub else None


class MalformedMessage(ValueError):
    """A channel message that is not what the channel carries."""
