"""The "revoked before" signal the auth service sends to every gateway.

When a user logs out everywhere, the auth service records a time; every access token of that
user issued (``iat``) before it is dead. Times are whole seconds, set one second past the
moment of revocation, and new tokens are issued with ``iat`` no earlier than it, so a token is
revoked exactly when ``iat < revoked_before``: old tokens die, a login right after survives.

The auth service publishes each revocation on ``CHANNEL`` and also stores it under
``key_for(sub)`` with an expiry of the access-token lifetime, so a gateway that starts (or
resubscribes) later can still learn it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import orjson

CHANNEL = "sockgate:revocations"
KEY_PREFIX = "sockgate:revoked-before:"


def key_for(sub: str) -> str:
    """The Redis key holding ``sub``'s revoked-before time."""
    return KEY_PREFIX + sub


def revoked_before_for(now: float) -> int:
    """The revoked-before time to record for a revocation made at ``now``."""
    return math.floor(now) + 1


def is_revoked(iat: int, revoked_before: int | None) -> bool:
    """Whether a token issued at ``iat`` is dead under ``revoked_before``."""
    return revoked_before is not None and iat < revoked_before


@dataclass(frozen=True, slots=True)
class Revocation:
    """One user's sessions revoked before a time."""

    sub: str
    revoked_before: int

    def encode(self) -> bytes:
        """The message published on ``CHANNEL``."""
        return orjson.dumps({"type": "revoke_user", "sub": self.sub, "before": self.revoked_before})

    @classmethod
    def decode(cls, data: bytes | str) -> Revocation:
        """Parses a channel message; raises ``ValueError`` on anything that is not one."""
        message = orjson.loads(data)
        if not isinstance(message, dict) or message.get("type") != "revoke_user":
            raise ValueError("not a revocation message")
        sub, before = message.get("sub"), message.get("before")
        if not isinstance(sub, str) or not sub or len(sub) > 128:
            raise ValueError("revocation without a valid subject")
        if not isinstance(before, int) or isinstance(before, bool) or before < 0:
            raise ValueError("revocation without a valid time")
        return cls(sub=sub, revoked_before=before)
