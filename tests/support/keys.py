"""RSA keys and hand-made tokens for tests that forge or inspect tokens."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from jwt.algorithms import RSAAlgorithm


def new_rsa_key() -> RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def private_pem(key: RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_pem(key: RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def thumbprint_kid(key: RSAPrivateKey) -> str:
    """The RFC 7638 thumbprint the auth service uses as ``kid``."""
    from services.auth.keys import jwk_thumbprint

    return jwk_thumbprint(key.public_key())


def write_key(keys_dir: Path, key: RSAPrivateKey, created: int | None = None) -> Path:
    """Places ``key`` in ``keys_dir`` under the auth service's file naming."""
    from services.auth.keys import key_filename

    keys_dir.mkdir(parents=True, exist_ok=True)
    path = keys_dir / key_filename(created or int(time.time()), thumbprint_kid(key))
    path.write_bytes(private_pem(key))
    path.chmod(0o600)
    return path


def mint(
    key: Any,
    *,
    kid: str | None,
    issuer: str,
    audience: str | list[str] = "gateway",
    sub: str = "user-1",
    name: str = "alice",
    ttl: int = 300,
    alg: str = "RS256",
    typ: str | None = "at+jwt",
    extra_headers: dict[str, Any] | None = None,
    drop: tuple[str, ...] = (),
    **claims: Any,
) -> str:
    """A token with exactly the header and claims asked for, for forging tests."""
    now = int(time.time())
    payload: dict[str, Any] = {
        "iss": issuer,
        "sub": sub,
        "aud": audience,
        "iat": now,
        "exp": now + ttl,
        "jti": uuid.uuid4().hex,
        "name": name,
    }
    payload.update(claims)
    for claim in drop:
        payload.pop(claim, None)
    headers: dict[str, Any] = dict(extra_headers or {})
    if kid is not None:
        headers["kid"] = kid
    if typ is not None:
        headers["typ"] = typ
    return jwt.encode(payload, key, algorithm=alg, headers=headers)


def public_jwk_json(key: RSAPrivateKey) -> str:
    return RSAAlgorithm.to_jwk(key.public_key())
