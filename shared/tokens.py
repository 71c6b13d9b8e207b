"""Verification of sockgate access tokens, for any service that accepts them.

The error hierarchy, each carrying the refusal ``code`` of the gateway contract::

    TokenError
    ├── TokenMissing   token_missing   no token was presented
    ├── TokenInvalid   token_invalid   malformed, forged, wrong alg/typ/iss/aud, unknown key …
    ├── TokenExpired   token_expired   ``exp`` is past, beyond the leeway
    └── TokenRevoked   token_revoked   issued before the user's "revoked before" time

Every check that can be made without cryptography runs first, on the raw string: the size cap,
the base64url shape, then the header (``alg`` exactly RS256, ``typ`` at+jwt, a well-formed
``kid``, no ``crit``). Only then is a key looked up, and only in the key source the verifier was
built with: ``jku``, ``x5u`` and ``jwk`` headers are never read, so no token can point the
verifier at a key of its choosing. PyJWT checks the signature and the registered claims.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from dataclasses import dataclass
from typing import Any, Protocol

import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from jwt.api_jws import PyJWS
from jwt.utils import base64url_decode, base64url_encode

ALGORITHM = "RS256"
ACCESS_TOKEN_TYPE = "at+jwt"  # noqa: S105 - a media type, not a secret
REQUIRED_CLAIMS = ("exp", "iat", "sub", "iss", "aud")

_B64URL = r"[A-Za-z0-9_-]"  # one character of the base64url alphabet
_SEGMENT = rf"{_B64URL}+"
_JWS_SHAPE = re.compile(rf"^{_SEGMENT}\.{_SEGMENT}\.{_SEGMENT}\Z")
_KID_SHAPE = re.compile(rf"^{_B64URL}{{1,128}}\Z")
_MAX_HEADER_BYTES = 1024
_B64URL_ALPHABET_ONLY = re.compile(rf"{_B64URL}*".encode())


class TokenError(Exception):
    """A token was refused; ``code`` is the machine-readable reason."""

    code = "token_invalid"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class TokenMissing(TokenError):
    """No token was presented."""

    code = "token_missing"


class TokenInvalid(TokenError):
    """The token is malformed, forged, or not meant for this verifier."""

    code = "token_invalid"


class TokenExpired(TokenError):
    """The token's ``exp`` has passed."""

    code = "token_expired"


class TokenRevoked(TokenError):
    """The token was issued before its user revoked every session."""

    code = "token_revoked"


class KeySource(Protocol):
    """Where a verifier finds public keys by ``kid``.

    ``get`` is the hot path and must not do I/O. ``get_unknown`` is called when ``get`` misses;
    it may refetch (a JWKS source does, at most once per cooldown) and returns ``None`` when the
    key is still unknown.
    """

    def get(self, kid: str) -> RSAPublicKey | None: ...

    async def get_unknown(self, kid: str) -> RSAPublicKey | None: ...


@dataclass(frozen=True, slots=True)
class AccessClaims:
    """The verified claims of an access token that services act on."""

    sub: str
    name: str
    iat: int
    exp: int
    jti: str
    rooms: frozenset[str]
    scope: frozenset[str]
    raw: dict[str, Any]


def _b64url_decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


class _SegmentCheckingJWS(PyJWS):
    """PyJWS whose base64url check of each segment is one regex match, not a Python loop.

    PyJWT 2.15 checks every character of every segment against the alphabet in a generator
    (GHSA-hxm8-2xgr-2p9m): ~540 iterations per access token, 18 of the 48 µs ``decode`` takes.
    This is the same function (PyJWT 2.15.1's ``_decode_base64url_segment``) with that loop
    replaced by a compiled regex; ``tests/test_token_verification.py`` checks it gives the same
    bytes or the same error as PyJWT's own on every kind of segment.
    """

    @staticmethod
    def _decode_base64url_segment(segment: bytes, name: str) -> bytes:
        padding = 0
        stripped = segment
        while stripped.endswith(b"="):
            stripped = stripped[:-1]
            padding += 1
            if padding > 2:
                raise jwt.DecodeError(f"Invalid {name} padding")
        if padding and len(segment) % 4 != 0:
            raise jwt.DecodeError(f"Invalid {name} padding")
        if len(stripped) % 4 == 1 or _B64URL_ALPHABET_ONLY.fullmatch(stripped) is None:
            raise jwt.DecodeError(f"Invalid {name} padding")
        try:
            decoded = base64url_decode(stripped)
        except (TypeError, binascii.Error) as err:
            raise jwt.DecodeError(f"Invalid {name} padding") from err
        if base64url_encode(decoded) != stripped:
            raise jwt.DecodeError(f"Invalid {name} padding")
        return decoded


class _PyJWT(jwt.PyJWT):
    """PyJWT with ``_SegmentCheckingJWS`` underneath and the payload parsed by orjson.

    Options and checks are PyJWT's own. ``_decode_payload`` is PyJWT's documented hook for
    decoding the payload another way: the standard library's ``json`` first sniffs the
    encoding of the bytes, then decodes in Python (~2.2 µs for an access token's payload,
    orjson ~0.45). orjson refuses ``NaN`` and lone surrogates (the token is then refused, as
    any payload that is not a JSON object is) and reads integers beyond 64 bits as floats.
    """

    def __init__(self) -> None:
        super().__init__()
        self._jws = _SegmentCheckingJWS(options=self._get_sig_options())

    def _decode_payload(self, decoded: dict[str, Any]) -> dict[str, Any]:
        try:
            payload = orjson.loads(decoded["payload"])
        except orjson.JSONDecodeError as exc:
            raise jwt.DecodeError(f"Invalid payload string: {exc}") from exc
        if not isinstance(payload, dict):
            raise jwt.DecodeError("Invalid payload string: must be a json object")
        return payload


class TokenVerifier:
    """Verifies RS256 access tokens against one issuer, one audience and one key source."""

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        keys: KeySource,
        leeway: int = 10,
        max_token_bytes: int = 8192,
    ) -> None:
        if not 0 <= leeway <= 30:
            raise ValueError("leeway must be between 0 and 30 seconds")
        self._issuer = issuer
        self._audience = audience
        self._keys = keys
        self._leeway = leeway
        self._max_token_bytes = max_token_bytes
        self._jwt = _PyJWT()

    def header(self, token: object) -> dict[str, Any]:
        """Checks the token's shape and header without any key; returns the header."""
        if token is None or token == "":
            raise TokenMissing("no token was presented")
        if not isinstance(token, str):
            raise TokenInvalid("the token must be a string")
        if len(token) > self._max_token_bytes:
            raise TokenInvalid("the token is larger than allowed")
        if not _JWS_SHAPE.match(token):
            raise TokenInvalid("the token is not a compact JWS")
        encoded_header = token.partition(".")[0]
        if len(encoded_header) > _MAX_HEADER_BYTES:
            raise TokenInvalid("the token header is larger than allowed")
        try:
            header = orjson.loads(_b64url_decode(encoded_header))
        except (binascii.Error, ValueError):
            raise TokenInvalid("the token header is not base64url JSON") from None
        if not isinstance(header, dict):
            raise TokenInvalid("the token header is not a JSON object")
        if header.get("alg") != ALGORITHM:
            raise TokenInvalid("the token is not signed with RS256")
        if str(header.get("typ", "")).lower() not in (
            ACCESS_TOKEN_TYPE,
            f"application/{ACCESS_TOKEN_TYPE}",
        ):
            raise TokenInvalid("the token is not an access token")
        if "crit" in header:
            raise TokenInvalid("the token has critical header parameters this verifier lacks")
        kid = header.get("kid")
        if not isinstance(kid, str) or not _KID_SHAPE.match(kid):
            raise TokenInvalid("the token's key id is missing or malformed")
        return header

    async def verify(self, token: object) -> AccessClaims:
        """Verifies ``token`` fully; raises a ``TokenError`` subclass when it is refused."""
        header = self.header(token)
        assert isinstance(token, str)  # header() refused everything else
        kid: str = header["kid"]
        key = self._keys.get(kid)
        if key is None:
            key = await self._keys.get_unknown(kid)
            if key is None:
                raise TokenInvalid("the token is signed by an unknown key")
        return self.verify_with_key(token, key)

    def verify_with_key(self, token: str, key: RSAPublicKey) -> AccessClaims:
        """Checks signature and claims of a token whose header already passed ``header``."""
        try:
            claims = self._jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": list(REQUIRED_CLAIMS), "strict_aud": False},
            )
        except jwt.ExpiredSignatureError:
            raise TokenExpired("the token has expired") from None
        except jwt.InvalidTokenError:
            raise TokenInvalid("the token failed verification") from None
        return _access_claims(claims)


@functools.lru_cache(maxsize=1024)
def _interned(items: tuple[str, ...]) -> frozenset[str]:
    """One shared frozenset per distinct set of rooms or scopes.

    Most tokens carry the same few (often none); each socket keeps its claims for its life,
    and since Python 3.10 every ``frozenset(...)``, even an empty one, is a new object.
    """
    return frozenset(items)


def _access_claims(claims: dict[str, Any]) -> AccessClaims:
    sub, iat, exp = claims["sub"], claims["iat"], claims["exp"]
    if not isinstance(sub, str) or not sub or len(sub) > 128:
        raise TokenInvalid("the token's subject is malformed")
    if not isinstance(iat, int | float) or not isinstance(exp, int | float):
        raise TokenInvalid("the token's times are malformed")
    name = claims.get("name", "")
    jti = claims.get("jti", "")
    rooms = claims.get("rooms", [])
    scope = claims.get("scope", "")
    if not isinstance(name, str) or not isinstance(jti, str) or not isinstance(scope, str):
        raise TokenInvalid("the token's claims are malformed")
    if not isinstance(rooms, list) or not all(isinstance(r, str) for r in rooms):
        raise TokenInvalid("the token's rooms claim is malformed")
    return AccessClaims(
        sub=sub,
        name=name,
        iat=int(iat),
        exp=int(exp),
        jti=jti,
        rooms=_interned(tuple(rooms)),
        scope=_interned(tuple(scope.split())),
        raw=claims,
    )
