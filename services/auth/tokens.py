"""Issuing tokens: RS256 access tokens and opaque refresh tokens.

Access tokens carry only what a gateway needs (``sub``, ``name``) and nothing secret.
Refresh tokens are 256 random bits; the database only ever sees their SHA-256.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from typing import Any

import jwt

from services.auth.keys import KeyRing
from services.auth.store import UserRecord
from shared.tokens import ACCESS_TOKEN_TYPE, ALGORITHM


def new_refresh_token() -> str:
    """A fresh opaque refresh token: 32 random bytes, base64url."""
    return secrets.token_urlsafe(32)


def hash_refresh_token(token: str) -> str:
    """What the store keeps of a refresh token. A plain hash suffices: the token is random."""
    return hashlib.sha256(token.encode()).hexdigest()


class AccessTokenIssuer:
    """Signs access tokens with the key ring's current signer."""

    def __init__(self, keys: KeyRing, *, issuer: str, audience: str, ttl: int) -> None:
        self._keys = keys
        self._issuer = issuer
        self._audience = audience
        self.ttl = ttl

    def issue(self, user: UserRecord, now: float) -> str:
        """An access token for ``user``.

        ``iat`` is never earlier than the user's revoked-before time, so a token issued in the
        same second as a logout-all is not born revoked (see shared.revocation).
        """
        iat = max(int(now), user.revoked_before or 0)
        return self._sign(sub=user.id, name=user.username, iat=iat, now=now)

    def issue_for_client(self, client_id: str, scopes: list[str], now: float) -> str:
        """A service token for a backend: ``sub`` ``client:{id}`` and the granted ``scope``."""
        return self._sign(
            sub=f"client:{client_id}",
            name=client_id,
            iat=int(now),
            now=now,
            extra={"scope": " ".join(scopes), "client_id": client_id},
        )

    def _sign(
        self, *, sub: str, name: str, iat: int, now: float, extra: dict[str, Any] | None = None
    ) -> str:
        claims: dict[str, Any] = {
            "iss": self._issuer,
            "sub": sub,
            "aud": self._audience,
            "iat": iat,
            "exp": int(now) + self.ttl,
            "jti": uuid.uuid4().hex,
            "name": name,
            **(extra or {}),
        }
        signer = self._keys.signer
        return jwt.encode(
            claims,
            signer.private_key,
            algorithm=ALGORITHM,
            headers={"kid": signer.kid, "typ": ACCESS_TOKEN_TYPE},
        )
