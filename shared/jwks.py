"""A cache of the auth service's public keys, fetched from its JWKS document.

``JwksKeySource`` is the ``shared.tokens.KeySource`` of every gateway replica:

- ``get(kid)`` is a dictionary lookup, so the handshake hot path never waits on the network;
- ``get_unknown(kid)`` refetches when a token names a key the cache lacks (a key that was just
  rotated in), but at most once per cooldown however many tokens ask: a burst of forged
  ``kid`` values costs the JWKS endpoint one request, and every caller that arrives while a
  fetch is in flight waits for that same fetch;
- a background task refreshes the document every ``refresh_interval`` (with jitter, so replicas
  spread out) and retries with exponential backoff while the endpoint fails, including when it
  is down at start-up;
- a fetch that fails in any way (HTTP error, timeout, oversized or non-JSON body, no usable key)
  keeps the last good keys; a successful one replaces them, so a key removed from the document
  stops verifying after the next refresh.

The document is parsed strictly: only RSA signature keys for RS256 of at least 2048 bits with a
well-formed ``kid`` are kept. A key carrying private members is refused outright: publishing it
means the key leaked, and verifying with it would accept tokens anyone could have signed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import random
import re
import time
from collections.abc import Callable
from typing import Any, Literal

import httpx
import orjson
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey, RSAPublicNumbers

from shared.tokens import ALGORITHM

log = logging.getLogger(__name__)

FetchResult = Literal["ok", "error", "invalid"]
"""What a fetch came to: ``ok`` keys replaced, ``error`` transport/HTTP failure, ``invalid``
a document that was fetched but unusable. Either failure keeps the previous keys."""

MAX_DOCUMENT_BYTES = 1 << 20
MIN_KEY_BITS = 2048
# Verification cost grows with the modulus; nothing legitimate publishes larger keys.
MAX_KEY_BITS = 8192
MAX_KEYS = 64

# The kid shape TokenVerifier accepts: a key published under any other kid could never be chosen.
_KID_SHAPE = re.compile(r"^[A-Za-z0-9_-]{1,128}\Z")
_B64URL = re.compile(r"^[A-Za-z0-9_-]+\Z")
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


class JwksInvalid(Exception):
    """A fetched JWKS document cannot be used at all."""


def _b64url_uint(value: object, member: str) -> int:
    if not isinstance(value, str) or not _B64URL.match(value):
        raise ValueError(f"{member} is not base64url")
    try:
        # The shape check above already refused padding and every non-alphabet character.
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except binascii.Error:
        raise ValueError(f"{member} is not base64url") from None
    return int.from_bytes(raw, "big")


def _public_key(jwk: dict[str, Any]) -> RSAPublicKey:
    """The key a JWK describes, or ``ValueError`` saying why it is not usable here."""
    if _PRIVATE_MEMBERS & jwk.keys():
        raise ValueError("the key has private members")
    if jwk.get("kty") != "RSA":
        raise ValueError("kty is not RSA")
    if jwk.get("use", "sig") != "sig":
        raise ValueError("use is not sig")
    if jwk.get("alg", ALGORITHM) != ALGORITHM:
        raise ValueError(f"alg is not {ALGORITHM}")
    key_ops = jwk.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        raise ValueError("key_ops does not allow verify")
    n = _b64url_uint(jwk.get("n"), "n")
    e = _b64url_uint(jwk.get("e"), "e")
    if not MIN_KEY_BITS <= n.bit_length() <= MAX_KEY_BITS:
        raise ValueError(f"the modulus is not between {MIN_KEY_BITS} and {MAX_KEY_BITS} bits")
    # cryptography checks the rest (e odd, 3 <= e < n) and raises ValueError.
    return RSAPublicNumbers(e, n).public_key()


def parse_jwks(body: bytes) -> dict[str, RSAPublicKey]:
    """The usable keys of a JWKS document by ``kid``; unusable keys are skipped with a warning.

    Raises ``JwksInvalid`` when the document is not a JWKS or holds no usable key.
    """
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise JwksInvalid("the document is not JSON") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JwksInvalid("the document has no keys list")
    keys: dict[str, RSAPublicKey] = {}
    for index, jwk in enumerate(document["keys"]):
        if not isinstance(jwk, dict):
            log.warning("skipping a JWK that is not an object", extra={"index": index})
            continue
        kid = jwk.get("kid")
        if not isinstance(kid, str) or not _KID_SHAPE.match(kid):
            log.warning("skipping a JWK without a well-formed kid", extra={"index": index})
            continue
        if kid in keys:
            # The first one wins: two keys under one kid means the publisher is confused.
            log.warning("skipping a JWK with a duplicate kid", extra={"kid": kid})
            continue
        if len(keys) >= MAX_KEYS:
            log.warning("skipping JWKs beyond the limit", extra={"limit": MAX_KEYS})
            break
        try:
            keys[kid] = _public_key(jwk)
        except ValueError as exc:
            log.warning("skipping an unusable JWK", extra={"kid": kid, "reason": str(exc)})
    if not keys:
        raise JwksInvalid("the document holds no usable key")
    return keys


class JwksKeySource:
    """Public keys from a JWKS URL, cached in memory; a ``shared.tokens.KeySource``.

    ``http`` is owned by the caller (so tests and the app choose transport, limits and TLS);
    redirects are never followed whatever it is configured with. ``on_fetch`` is told the
    ``FetchResult`` of every fetch, for metrics. ``clock`` measures the unknown-kid cooldown.
    """

    def __init__(
        self,
        url: str,
        *,
        http: httpx.AsyncClient,
        refresh_interval: float = 300,
        unknown_kid_cooldown: float = 30,
        fetch_timeout: float = 5,
        on_fetch: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_bytes: int = MAX_DOCUMENT_BYTES,
        retry_initial: float = 0.5,
        retry_max: float = 30,
    ) -> None:
        if refresh_interval <= 0 or fetch_timeout <= 0 or unknown_kid_cooldown < 0:
            raise ValueError("intervals and timeouts must be positive")
        self._url = url
        self._http = http
        self._refresh_interval = refresh_interval
        self._cooldown = unknown_kid_cooldown
        self._fetch_timeout = fetch_timeout
        self._on_fetch = on_fetch
        self._clock = clock
        self._max_bytes = max_bytes
        self._retry_initial = retry_initial
        self._retry_max = max(retry_initial, min(retry_max, refresh_interval))
        self._keys: dict[str, RSAPublicKey] = {}
        self._inflight: asyncio.Task[FetchResult] | None = None
        self._runner: asyncio.Task[None] | None = None
        self._last_unknown_fetch: float | None = None
        self._closed = False

    @property
    def ready(self) -> bool:
        """Whether at least one key is known, so tokens can be verified at all."""
        return bool(self._keys)

    @property
    def kids(self) -> frozenset[str]:
        """The ``kid`` of every cached key."""
        return frozenset(self._keys)

    async def start(self) -> None:
        """Fetches once, then refreshes in the background; never raises on a failed fetch.

        While the first fetch keeps failing, the background task retries with backoff, and
        ``ready`` stays false so the service can report it is not ready yet.
        """
        if self._runner is not None or self._closed:
            raise RuntimeError("the key source was already started")
        result = await self.refresh()
        if result != "ok":
            log.warning("no JWKS at start-up; retrying in the background", extra={"url": self._url})
        self._runner = asyncio.create_task(self._run(failures=int(result != "ok")), name="jwks")

    async def close(self) -> None:
        """Stops the background refresh and any fetch in flight."""
        self._closed = True
        tasks = [task for task in (self._runner, self._inflight) if task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            # asyncio.wait rather than awaiting each: it never re-raises their CancelledError,
            # so a cancellation of close() itself is not mistaken for theirs.
            await asyncio.wait(tasks)
        self._runner = self._inflight = None

    def get(self, kid: str) -> RSAPublicKey | None:
        """The cached key with ``kid``; no I/O."""
        return self._keys.get(kid)

    async def get_unknown(self, kid: str) -> RSAPublicKey | None:
        """The key with ``kid`` after at most one refetch per cooldown, else ``None``."""
        key = self._keys.get(kid)
        if key is not None or self._closed:
            return key
        inflight = self._inflight
        if inflight is not None and not inflight.done():
            await self._wait(inflight)
            return self._keys.get(kid)
        now = self._clock()
        if self._last_unknown_fetch is not None and now - self._last_unknown_fetch < self._cooldown:
            return None
        # Set before the first await, so every concurrent caller sees the fetch that follows.
        self._last_unknown_fetch = now
        await self.refresh()
        return self._keys.get(kid)

    async def refresh(self) -> FetchResult:
        """Fetches the document now, or joins the fetch in flight; returns how it went."""
        if self._closed:
            raise RuntimeError("the key source is closed")
        task = self._inflight
        if task is None or task.done():
            task = asyncio.create_task(self._fetch(), name="jwks-fetch")
            self._inflight = task
        return await self._wait(task)

    @staticmethod
    async def _wait(task: asyncio.Task[FetchResult]) -> FetchResult:
        # Waiting without awaiting the task itself: a caller that is cancelled (a client that
        # hung up mid-handshake) must not cancel the fetch other callers share.
        await asyncio.wait([task])
        return "error" if task.cancelled() else task.result()

    async def _run(self, failures: int) -> None:
        while True:
            if failures:
                ceiling = min(self._retry_max, self._retry_initial * 2 ** (failures - 1))
                delay = random.uniform(ceiling / 2, ceiling)
            else:
                delay = self._refresh_interval * random.uniform(0.9, 1.0)
            await asyncio.sleep(delay)
            try:
                result = await self.refresh()
            except Exception:
                # The refresher must outlive any bug in one fetch; the cache stays as it was.
                log.exception("JWKS refresh crashed", extra={"url": self._url})
                result = "error"
            failures = 0 if result == "ok" else failures + 1

    async def _fetch(self) -> FetchResult:
        result = await self._fetch_once()
        if self._on_fetch is not None:
            try:
                self._on_fetch(result)
            except Exception:
                log.exception("the JWKS on_fetch callback failed")
        return result

    async def _fetch_once(self) -> FetchResult:
        try:
            # The overall deadline also bounds a server that trickles its body byte by byte,
            # which httpx's per-read timeouts alone would not.
            async with asyncio.timeout(self._fetch_timeout):
                body = await self._download()
            keys = parse_jwks(body)
        except (httpx.HTTPError, TimeoutError) as exc:
            log.warning(
                "JWKS fetch failed; keeping the last good keys",
                extra={"url": self._url, "error": type(exc).__name__},
            )
            return "error"
        except JwksInvalid as exc:
            log.warning(
                "JWKS document refused; keeping the last good keys",
                extra={"url": self._url, "reason": str(exc)},
            )
            return "invalid"
        if keys.keys() != self._keys.keys():
            log.info(
                "JWKS keys changed",
                extra={
                    "added": sorted(keys.keys() - self._keys.keys()),
                    "removed": sorted(self._keys.keys() - keys.keys()),
                },
            )
        self._keys = keys
        return "ok"

    async def _download(self) -> bytes:
        """The document's bytes, read up to the size cap."""
        async with self._http.stream(
            "GET",
            self._url,
            # identity: a compressed chunk could expand far past the cap before it is counted.
            headers={"Accept": "application/json", "Accept-Encoding": "identity"},
            follow_redirects=False,
            timeout=self._fetch_timeout,
        ) as response:
            if response.status_code != 200:
                raise httpx.HTTPStatusError(
                    f"JWKS answered {response.status_code}",
                    request=response.request,
                    response=response,
                )
            too_large = JwksInvalid(f"the document is larger than {self._max_bytes} bytes")
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self._max_bytes:
                raise too_large
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > self._max_bytes:
                    raise too_large
            return bytes(body)
