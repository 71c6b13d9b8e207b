"""The auth service's signing keys: RSA private keys as PEM files in one folder.

A file is named ``{created}-{kid}.pem`` where ``created`` is a Unix time and ``kid`` the key's
RFC 7638 thumbprint, so every process that reads the folder agrees without any other state:

- the newest key signs;
- an older key stays published in the JWKS until ``retired + access_ttl + leeway`` has passed,
  where ``retired`` is when the next newer key was created (its last token has expired then);
- ``prune`` deletes keys past that point.

Running services re-read the folder when its modification time changes (checked at most once a
second), so ``keys rotate`` takes effect without a restart and several workers sharing the
folder always sign with the same key.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

log = logging.getLogger(__name__)

KEY_SIZE = 2048
_FILENAME = re.compile(r"^(?P<created>\d{1,12})-(?P<kid>[A-Za-z0-9_-]{43})\.pem$")
_RELOAD_CHECK_SECONDS = 1.0


def _b64url_uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def public_jwk(public_key: RSAPublicKey) -> dict[str, str]:
    """The required members of ``public_key`` as a JWK (``kty``, ``n``, ``e``)."""
    numbers = public_key.public_numbers()
    return {"e": _b64url_uint(numbers.e), "kty": "RSA", "n": _b64url_uint(numbers.n)}


def jwk_thumbprint(public_key: RSAPublicKey) -> str:
    """The RFC 7638 SHA-256 thumbprint of the key, base64url: its ``kid``."""
    canonical = orjson.dumps(public_jwk(public_key), option=orjson.OPT_SORT_KEYS)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()


def key_filename(created: int, kid: str) -> str:
    """The file name a key created at ``created`` with ``kid`` is stored under."""
    return f"{created}-{kid}.pem"


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A loaded key with its identity and age."""

    kid: str
    created: int
    private_key: RSAPrivateKey
    path: Path

    @property
    def public_key(self) -> RSAPublicKey:
        return self.private_key.public_key()

    def jwk(self) -> dict[str, str]:
        """The public JWK as published: never a private member."""
        return {**public_jwk(self.public_key), "kid": self.kid, "use": "sig", "alg": "RS256"}


class KeyFolderError(Exception):
    """The key folder holds something unusable."""


def load_keys(keys_dir: Path) -> list[SigningKey]:
    """Every well-named key in ``keys_dir``, oldest first; other files are ignored."""
    keys: list[SigningKey] = []
    for path in sorted(keys_dir.glob("*.pem")):
        match = _FILENAME.match(path.name)
        if not match:
            log.warning("ignoring badly named key file", extra={"file": path.name})
            continue
        private_key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(private_key, RSAPrivateKey) or private_key.key_size < KEY_SIZE:
            raise KeyFolderError(f"{path.name} is not an RSA key of at least {KEY_SIZE} bits")
        kid = jwk_thumbprint(private_key.public_key())
        if kid != match["kid"]:
            raise KeyFolderError(f"{path.name}: the file name does not match the key's thumbprint")
        keys.append(SigningKey(kid, int(match["created"]), private_key, path))
    keys.sort(key=lambda k: (k.created, k.kid))
    return keys


def generate_key(keys_dir: Path, now: float | None = None) -> SigningKey:
    """Creates a new RSA key file (mode 0600) in ``keys_dir``; it becomes the newest."""
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_SIZE)
    created = int(now if now is not None else time.time())
    existing = load_keys(keys_dir)
    if existing and existing[-1].created >= created:
        created = existing[-1].created + 1  # the newest must stay unambiguous
    kid = jwk_thumbprint(private_key.public_key())
    path = keys_dir / key_filename(created, kid)
    pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Written under a temporary name and renamed, so a reader never sees half a key.
    tmp = keys_dir / f".{path.name}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    tmp.rename(path)
    return SigningKey(kid, created, private_key, path)


def ensure_key(keys_dir: Path) -> None:
    """Generates a first key when ``keys_dir`` has none; safe when several workers race."""
    # Keys present: touch nothing, so a read-only mount (a Kubernetes Secret) works as it is.
    if keys_dir.is_dir() and load_keys(keys_dir):
        return
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = keys_dir / ".generate.lock"
    try:
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        # Another worker is generating; wait for its key to appear.
        deadline = time.monotonic() + 30
        while not load_keys(keys_dir) and time.monotonic() < deadline:
            time.sleep(0.05)
        return
    try:
        if not load_keys(keys_dir):
            key = generate_key(keys_dir)
            log.info("generated the first signing key", extra={"kid": key.kid})
    finally:
        os.close(fd)
        lock.unlink(missing_ok=True)


def retirement_times(keys: list[SigningKey]) -> dict[str, int | None]:
    """When each key stopped signing (the next key's creation); ``None`` for the signer."""
    result: dict[str, int | None] = {}
    for older, newer in itertools.pairwise(keys):
        result[older.kid] = newer.created
    if keys:
        result[keys[-1].kid] = None
    return result


def expired_keys(keys: list[SigningKey], *, access_ttl: int, now: float) -> list[SigningKey]:
    """Retired keys whose every token has expired (with a minute's margin for leeway)."""
    retired = retirement_times(keys)
    return [
        key for key in keys if (at := retired[key.kid]) is not None and at + access_ttl + 60 <= now
    ]


class KeyRing:
    """The keys of one folder, re-read when it changes; signs with the newest."""

    def __init__(self, keys_dir: Path, *, access_ttl: int) -> None:
        self._dir = keys_dir
        self._access_ttl = access_ttl
        self._keys: list[SigningKey] = []
        self._mtime_ns = -1
        self._checked_at = 0.0

    def load(self) -> None:
        """Reads the folder, generating a first key when it is empty."""
        ensure_key(self._dir)
        self._reload(force=True)

    def _reload(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked_at < _RELOAD_CHECK_SECONDS:
            return
        self._checked_at = now
        mtime_ns = self._dir.stat().st_mtime_ns
        if not force and mtime_ns == self._mtime_ns:
            return
        keys = load_keys(self._dir)
        if not keys:
            raise KeyFolderError(f"no signing key in {self._dir}")
        self._keys, self._mtime_ns = keys, mtime_ns

    @property
    def signer(self) -> SigningKey:
        """The key new tokens are signed with."""
        self._reload()
        return self._keys[-1]

    def published(self) -> list[SigningKey]:
        """Keys still in the JWKS: the signer and retired keys with live tokens."""
        self._reload()
        gone = {
            key.kid
            for key in expired_keys(self._keys, access_ttl=self._access_ttl, now=time.time())
        }
        return [key for key in self._keys if key.kid not in gone]

    def jwks(self) -> dict[str, Any]:
        """The JWKS document: public keys only, newest first."""
        return {"keys": [key.jwk() for key in reversed(self.published())]}

    # KeySource, so the service verifies its own tokens with shared.tokens.TokenVerifier.
    def get(self, kid: str) -> RSAPublicKey | None:
        """The public key for ``kid`` while it is published: the service trusts what the
        gateways trust, so a retired key whose tokens have all expired verifies nothing."""
        key = next((k for k in self.published() if k.kid == kid), None)
        return key.public_key if key is not None else None

    async def get_unknown(self, kid: str) -> RSAPublicKey | None:
        return None
