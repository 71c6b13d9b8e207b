"""Telling the gateways that a user logged out everywhere, through Redis."""

from __future__ import annotations

import logging

import redis.asyncio as redis
from redis.exceptions import RedisError

from shared.revocation import CHANNEL, Revocation, key_for

log = logging.getLogger(__name__)


class RevocationPublisher:
    """Stores and publishes revocations; a gateway that was down reads the stored key."""

    def __init__(self, client: redis.Redis, *, remember_for: int) -> None:
        self._client = client
        self._remember_for = remember_for

    async def publish(self, revocation: Revocation) -> bool:
        """Sends ``revocation``; False (logged) when Redis could not be reached."""
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.set(key_for(revocation.sub), revocation.revoked_before, ex=self._remember_for)
                pipe.publish(CHANNEL, revocation.encode())
                await pipe.execute()
        except (RedisError, OSError):
            log.exception("could not publish a revocation", extra={"sub": revocation.sub})
            return False
        return True
