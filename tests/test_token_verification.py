"""SECURITY.md items 1-14: ``TokenVerifier`` over a ``JwksKeySource`` fed by a real JWKS server.

The JWKS is served by ``tests.support.jwks_server`` in its own process on a loopback port, so
fetch counts, slowness, outages and rotation are real HTTP. A second server plays the attacker's
host: tokens point ``jku``/``x5u`` at it, and it must never see a request.

The key source sits behind ``RecordingKeys``, which notes every lookup the verifier makes, so a
test can show a token was refused before any key was looked up, not only before a fetch.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import random
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from jwt.api_jws import PyJWS

from services.auth.keys import public_jwk
from shared.jwks import JwksKeySource
from shared.tokens import (
    AccessClaims,
    KeySource,
    TokenError,
    TokenExpired,
    TokenInvalid,
    TokenMissing,
    TokenVerifier,
    _PyJWT,
    _SegmentCheckingJWS,
)
from tests.support.jwks_server import JwksServer
from tests.support.keys import (
    mint,
    new_rsa_key,
    public_jwk_json,
    public_pem,
    thumbprint_kid,
)
from tests.support.waiting import eventually

ISSUER = "http://127.0.0.1:8000"
AUDIENCE = "gateway"
LEEWAY = 10


# --------------------------------------------------------------------------- keys and tokens


@dataclass(frozen=True)
class Keys:
    """The auth service's current key, the key it rotates to, and an attacker's key."""

    signer: RSAPrivateKey
    next: RSAPrivateKey
    attacker: RSAPrivateKey

    @property
    def signer_kid(self) -> str:
        return thumbprint_kid(self.signer)


def jwk_of(key: RSAPrivateKey, **members: Any) -> dict[str, Any]:
    """The public JWK the auth service would publish for ``key``."""
    jwk: dict[str, Any] = {
        **public_jwk(key.public_key()),
        "kid": thumbprint_kid(key),
        "use": "sig",
        "alg": "RS256",
    }
    jwk.update(members)
    return jwk


def jwks_of(*keys: RSAPrivateKey) -> dict[str, Any]:
    return {"keys": [jwk_of(key) for key in keys]}


def token(key: RSAPrivateKey, *, kid: str | None = None, **kwargs: Any) -> str:
    """A token for our issuer and audience, signed by ``key`` under its own kid by default."""
    return mint(
        key,
        kid=thumbprint_kid(key) if kid is None else kid,
        issuer=ISSUER,
        audience=kwargs.pop("audience", AUDIENCE),
        **kwargs,
    )


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(value: dict[str, Any]) -> str:
    return b64(orjson.dumps(value))


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    payload = {"iss": ISSUER, "sub": "user-1", "aud": AUDIENCE, "iat": now, "exp": now + 300}
    payload.update(overrides)
    return payload


def forge(header: dict[str, Any], payload: dict[str, Any], key: RSAPrivateKey | None = None) -> str:
    """A token with any header and payload, RS256-signed by ``key`` or with a junk signature.

    By hand, because PyJWT refuses to encode some of what attackers send (a non-string
    ``kid`` or ``iss``).
    """
    signing_input = f"{segment(header)}.{segment(payload)}"
    signature = (
        key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        if key is not None
        else b"\x00" * 256
    )
    return f"{signing_input}.{b64(signature)}"


def forge_hmac(secret: bytes, header: dict[str, Any], payload: dict[str, Any]) -> str:
    """An HMAC-SHA256-signed token; PyJWT refuses to sign with a PEM key, so by hand."""
    signing_input = f"{segment(header)}.{segment(payload)}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


# --------------------------------------------------------------------------- servers and rig


class RecordingKeys:
    """A ``KeySource`` that delegates to a real one and records every lookup made through it."""

    def __init__(self, inner: KeySource) -> None:
        self.inner = inner
        self.lookups: list[tuple[str, str]] = []

    def get(self, kid: str) -> RSAPublicKey | None:
        self.lookups.append(("get", kid))
        return self.inner.get(kid)

    async def get_unknown(self, kid: str) -> RSAPublicKey | None:
        self.lookups.append(("get_unknown", kid))
        return await self.inner.get_unknown(kid)


@dataclass
class Rig:
    """A verifier over a started ``JwksKeySource``, with what it looked up and fetched."""

    verifier: TokenVerifier
    source: JwksKeySource
    keys: RecordingKeys
    fetches: list[str] = field(default_factory=list)

    async def verify(self, token: object) -> AccessClaims:
        return await self.verifier.verify(token)

    async def refuse(self, token: object, error: type[TokenError] = TokenInvalid) -> TokenError:
        with pytest.raises(error) as info:
            await self.verifier.verify(token)
        return info.value


MakeRig = Callable[..., Awaitable[Rig]]


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys(signer=new_rsa_key(), next=new_rsa_key(), attacker=new_rsa_key())


@pytest.fixture(scope="module")
def jwks_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JwksServer]:
    server = JwksServer(tmp_path_factory.mktemp("jwks")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def attacker_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JwksServer]:
    server = JwksServer(tmp_path_factory.mktemp("attacker")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def jwks(jwks_process: JwksServer, keys: Keys) -> JwksServer:
    """The issuer's JWKS server, publishing only the current signing key, counters at zero."""
    jwks_process.reset()
    jwks_process.publish(jwks_of(keys.signer))
    return jwks_process


@pytest.fixture
def attacker(attacker_process: JwksServer, keys: Keys) -> JwksServer:
    """The attacker's server, publishing the attacker's key, counters at zero."""
    attacker_process.reset()
    attacker_process.publish(jwks_of(keys.attacker))
    return attacker_process


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
async def make_rig(http: httpx.AsyncClient, jwks: JwksServer) -> AsyncIterator[MakeRig]:
    """Builds started rigs (JWKS URL and source options overridable); closes them after."""
    sources: list[JwksKeySource] = []

    async def make(url: str | None = None, max_token_bytes: int = 8192, **options: Any) -> Rig:
        fetches: list[str] = []
        settings: dict[str, Any] = {
            "refresh_interval": 60,
            "unknown_kid_cooldown": 30,
            "fetch_timeout": 1.0,
            **options,
        }
        source = JwksKeySource(url or jwks.url, http=http, on_fetch=fetches.append, **settings)
        sources.append(source)
        await source.start()
        recording = RecordingKeys(source)
        verifier = TokenVerifier(
            issuer=ISSUER,
            audience=AUDIENCE,
            keys=recording,
            leeway=LEEWAY,
            max_token_bytes=max_token_bytes,
        )
        return Rig(verifier, source, recording, fetches)

    yield make
    for source in sources:
        await source.close()


@pytest.fixture
async def rig(make_rig: MakeRig, jwks: JwksServer) -> Rig:
    """The default rig: started, its one start-up fetch done and counted."""
    made = await make_rig()
    assert made.source.ready
    assert jwks.jwks_requests() == 1
    return made


async def test_a_valid_token_verifies(rig: Rig, keys: Keys) -> None:
    claims = await rig.verify(token(keys.signer, rooms=["private:x"]))
    assert (claims.sub, claims.name, claims.rooms) == ("user-1", "alice", frozenset({"private:x"}))


@pytest.mark.parametrize("missing", [None, ""])
async def test_no_token_is_token_missing(rig: Rig, missing: str | None) -> None:
    error = await rig.refuse(missing, TokenMissing)
    assert error.code == "token_missing"


@pytest.mark.parametrize("value", [b"a.b.c", 42, ["a", "b", "c"], {"token": "x"}])
async def test_a_non_string_token_is_refused(rig: Rig, value: object) -> None:
    await rig.refuse(value)
    assert rig.keys.lookups == []


# --------------------------------------------------------------------------- 1. alg none


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
@pytest.mark.parametrize("keep_signature", [False, True])
async def test_alg_none_is_refused(rig: Rig, keys: Keys, alg: str, keep_signature: bool) -> None:
    valid = token(keys.signer)
    _, payload, signature = valid.split(".")
    header = segment({"alg": alg, "typ": "at+jwt", "kid": keys.signer_kid})
    forged = f"{header}.{payload}.{signature if keep_signature else ''}"
    await rig.refuse(forged)
    assert rig.keys.lookups == []


async def test_alg_none_minted_by_pyjwt_is_refused(rig: Rig, keys: Keys) -> None:
    forged = mint(None, kid=keys.signer_kid, issuer=ISSUER, alg="none")
    assert forged.endswith(".")
    await rig.refuse(forged)


# --------------------------------------------------------------------------- 2. HS256 confusion


HMAC_SECRETS: dict[str, Callable[[RSAPrivateKey], bytes]] = {
    "public PEM": public_pem,
    "public PEM stripped": lambda key: public_pem(key).strip(),
    "JWK text": lambda key: public_jwk_json(key).encode(),
    "published JWK text": lambda key: orjson.dumps(jwk_of(key)),
}


@pytest.mark.parametrize("secret_of", list(HMAC_SECRETS))
@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512", "RS256"])
async def test_hmac_signed_with_the_public_key_is_refused(
    rig: Rig, keys: Keys, secret_of: str, alg: str
) -> None:
    secret = HMAC_SECRETS[secret_of](keys.signer)
    header = {"alg": alg, "typ": "at+jwt", "kid": keys.signer_kid}
    await rig.refuse(forge_hmac(secret, header, claims()))


# --------------------------------------------------------------------------- 3. crit


@pytest.mark.parametrize(
    "crit_headers",
    [
        {"crit": ["x-unknown"], "x-unknown": True},
        {"crit": ["exp"], "exp": 1},
        {"crit": ["b64"], "b64": True},
        {"crit": []},
        {"crit": "x-unknown"},
    ],
)
async def test_crit_header_is_refused(rig: Rig, keys: Keys, crit_headers: dict[str, Any]) -> None:
    await rig.refuse(token(keys.signer, extra_headers=crit_headers))
    assert rig.keys.lookups == []


# --------------------------------------------------------------------------- 4. required claims


@pytest.mark.parametrize("claim", ["exp", "iat", "sub", "iss", "aud"])
async def test_missing_required_claim_is_refused(rig: Rig, keys: Keys, claim: str) -> None:
    await rig.refuse(token(keys.signer, drop=(claim,)))


@pytest.mark.parametrize(
    "overrides",
    [{"sub": ""}, {"sub": 42}, {"exp": "tomorrow"}, {"iat": None}, {"aud": None}, {"iss": None}],
)
async def test_malformed_required_claim_is_refused(
    rig: Rig, keys: Keys, overrides: dict[str, Any]
) -> None:
    header = {"alg": "RS256", "typ": "at+jwt", "kid": keys.signer_kid}
    await rig.refuse(forge(header, claims(**overrides), keys.signer))


# --------------------------------------------------------------------------- 5. time claims


async def test_expired_token_is_token_expired(rig: Rig, keys: Keys) -> None:
    error = await rig.refuse(token(keys.signer, ttl=-(LEEWAY + 30)), TokenExpired)
    assert error.code == "token_expired"


async def test_expired_within_the_leeway_is_accepted(rig: Rig, keys: Keys) -> None:
    await rig.verify(token(keys.signer, ttl=-(LEEWAY // 2)))


@pytest.mark.parametrize("claim", ["nbf", "iat"])
async def test_future_nbf_or_iat_beyond_the_leeway_is_refused(
    rig: Rig, keys: Keys, claim: str
) -> None:
    error = await rig.refuse(token(keys.signer, **{claim: int(time.time()) + LEEWAY + 60}))
    assert error.code == "token_invalid"


@pytest.mark.parametrize("claim", ["nbf", "iat"])
async def test_future_nbf_or_iat_within_the_leeway_is_accepted(
    rig: Rig, keys: Keys, claim: str
) -> None:
    await rig.verify(token(keys.signer, **{claim: int(time.time()) + LEEWAY // 2}))


async def test_the_leeway_cannot_exceed_thirty_seconds(rig: Rig) -> None:
    with pytest.raises(ValueError, match="leeway"):
        TokenVerifier(issuer=ISSUER, audience=AUDIENCE, keys=rig.source, leeway=31)


# --------------------------------------------------------------------------- 6. iss and aud


@pytest.mark.parametrize(
    "issuer",
    [
        "http://evil.example",
        ISSUER + ".evil.com",
        ISSUER + "/evil",
        ISSUER + "/",
        ISSUER + "0",
        "https://127.0.0.1:8000",
        "HTTP://127.0.0.1:8000",
        ISSUER[:-1],
        [ISSUER],
    ],
)
async def test_wrong_issuer_is_refused(rig: Rig, keys: Keys, issuer: Any) -> None:
    header = {"alg": "RS256", "typ": "at+jwt", "kid": keys.signer_kid}
    await rig.refuse(forge(header, claims(iss=issuer), keys.signer))


@pytest.mark.parametrize(
    "audience",
    ["other", AUDIENCE + "-admin", AUDIENCE[:-1], AUDIENCE.upper(), ["other"], [], [[AUDIENCE]]],
)
async def test_wrong_audience_is_refused(rig: Rig, keys: Keys, audience: Any) -> None:
    await rig.refuse(token(keys.signer, audience=audience))


@pytest.mark.parametrize("audience", [AUDIENCE, [AUDIENCE], ["other", AUDIENCE]])
async def test_audience_containing_ours_is_accepted(rig: Rig, keys: Keys, audience: Any) -> None:
    await rig.verify(token(keys.signer, audience=audience))


# --------------------------------------------------------------------------- 7. token types


@pytest.mark.parametrize(
    "typ", [None, "JWT", "jwt", "refresh+jwt", "id_token", "id+jwt", "at+jwt+x", "", 7]
)
async def test_other_token_types_are_refused(rig: Rig, keys: Keys, typ: Any) -> None:
    await rig.refuse(token(keys.signer, typ=typ))
    assert rig.keys.lookups == []


@pytest.mark.parametrize("typ", ["at+jwt", "AT+JWT", "application/at+jwt"])
async def test_access_token_types_are_accepted(rig: Rig, keys: Keys, typ: str) -> None:
    await rig.verify(token(keys.signer, typ=typ))


async def test_an_id_token_shaped_token_is_refused(rig: Rig, keys: Keys) -> None:
    id_token = token(keys.signer, typ="JWT", nonce="n-0S6_WzA2Mj", azp="web", at_hash="x")
    await rig.refuse(id_token)


@pytest.mark.parametrize(
    "refresh_token",
    [
        secrets.token_urlsafe(48),
        "rt_" + secrets.token_hex(32),
        f"{secrets.token_urlsafe(16)}.{secrets.token_urlsafe(32)}",
    ],
)
async def test_a_refresh_token_is_refused(rig: Rig, refresh_token: str) -> None:
    await rig.refuse(refresh_token)
    assert rig.keys.lookups == []


# --------------------------------------------------------------------------- 8. hostile kid


@pytest.mark.parametrize(
    "kid",
    [
        "../../etc/passwd",
        "/etc/passwd",
        "..%2F..%2Fetc%2Fpasswd",
        "' OR 1=1 --",
        '{"$ne": null}',
        {"$ne": None},
        12345,
        1.5,
        True,
        ["a"],
        None,
        "",
        "kid\n",
        "k" * 129,
        "k" * 10 * 1024,
    ],
    ids=lambda kid: repr(kid)[:24],
)
async def test_hostile_kid_is_refused_without_any_lookup(
    make_rig: MakeRig, jwks: JwksServer, keys: Keys, kid: Any
) -> None:
    # A cap large enough that the 10 KB kid reaches the header checks, not only the size cap.
    rig = await make_rig(max_token_bytes=65536)
    await rig.refuse(forge({"alg": "RS256", "typ": "at+jwt", "kid": kid}, claims(), keys.signer))
    assert rig.keys.lookups == []
    assert jwks.jwks_requests() == 1  # the start-up fetch only


async def test_a_token_without_kid_is_refused(rig: Rig, keys: Keys) -> None:
    await rig.refuse(mint(keys.signer, kid=None, issuer=ISSUER))
    assert rig.keys.lookups == []


async def test_a_well_formed_unknown_kid_does_fetch(rig: Rig, jwks: JwksServer, keys: Keys) -> None:
    """The control for the tests above: a lookup that passes the checks reaches the server."""
    await rig.refuse(token(keys.signer, kid="unknown-kid"))
    assert rig.keys.lookups == [("get", "unknown-kid"), ("get_unknown", "unknown-kid")]
    assert jwks.jwks_requests() == 2


# --------------------------------------------------------------------------- 9. jku, x5u, jwk


def _pointing_headers(attacker: JwksServer, keys: Keys) -> dict[str, Any]:
    return {
        "jku": attacker.url,
        "x5u": attacker.base_url + "/cert.pem",
        "jwk": jwk_of(keys.attacker),
        "x5c": [b64(b"not a certificate")],
    }


async def test_key_pointing_headers_are_ignored_on_a_valid_token(
    rig: Rig, attacker: JwksServer, jwks: JwksServer, keys: Keys
) -> None:
    await rig.verify(token(keys.signer, extra_headers=_pointing_headers(attacker, keys)))
    assert attacker.total_requests() == 0
    assert jwks.jwks_requests() == 1


@pytest.mark.parametrize("kid_of", ["attacker", "signer"])
async def test_attacker_key_embedded_or_linked_is_refused(
    rig: Rig, attacker: JwksServer, keys: Keys, kid_of: str
) -> None:
    kid = thumbprint_kid(keys.attacker) if kid_of == "attacker" else keys.signer_kid
    forged = token(keys.attacker, kid=kid, extra_headers=_pointing_headers(attacker, keys))
    await rig.refuse(forged)
    assert attacker.total_requests() == 0
    assert thumbprint_kid(keys.attacker) not in rig.source.kids


# --------------------------------------------------------------------------- 10. unknown-kid burst


async def test_a_burst_of_unknown_kids_fetches_once_while_valid_tokens_keep_working(
    make_rig: MakeRig, jwks: JwksServer, keys: Keys
) -> None:
    rig = await make_rig(unknown_kid_cooldown=30, fetch_timeout=5)
    payload = claims()
    forged = [
        forge({"alg": "RS256", "typ": "at+jwt", "kid": secrets.token_urlsafe(32)}, payload)
        for _ in range(1000)
    ]
    valid = token(keys.signer)
    jwks.control(delay=1.0)  # hold the refetch in flight while the burst piles up behind it

    burst = [asyncio.create_task(rig.verify(t)) for t in forged]
    await eventually(lambda: len(rig.keys.lookups) >= 2 * len(forged), 5, "the lookups")
    for _ in range(50):
        await rig.verify(valid)
    assert not any(task.done() for task in burst), "valid tokens must not wait for the fetch"

    results = await asyncio.gather(*burst, return_exceptions=True)
    assert all(isinstance(result, TokenInvalid) for result in results)
    assert jwks.jwks_requests() == 2  # start-up + exactly one refetch for the whole burst

    # Within the cooldown, further unknown kids cost nothing at all.
    more = [forge({"alg": "RS256", "typ": "at+jwt", "kid": f"k{i}"}, payload) for i in range(100)]
    results = await asyncio.gather(*(rig.verify(t) for t in more), return_exceptions=True)
    assert all(isinstance(result, TokenInvalid) for result in results)
    assert jwks.jwks_requests() == 2
    assert rig.fetches == ["ok", "ok"]


@dataclass
class FakeClock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_unknown_kids_refetch_again_once_the_cooldown_has_passed(
    make_rig: MakeRig, jwks: JwksServer, keys: Keys
) -> None:
    clock = FakeClock()
    rig = await make_rig(unknown_kid_cooldown=30, clock=clock)
    unknown = token(keys.attacker)
    await rig.refuse(unknown)
    assert jwks.jwks_requests() == 2
    clock.now += 29
    await rig.refuse(unknown)
    assert jwks.jwks_requests() == 2
    clock.now += 2
    await rig.refuse(unknown)
    assert jwks.jwks_requests() == 3


async def test_a_cancelled_caller_does_not_cancel_the_shared_fetch(
    make_rig: MakeRig, jwks: JwksServer, keys: Keys
) -> None:
    rig = await make_rig(fetch_timeout=5)
    jwks.publish(jwks_of(keys.signer, keys.next))
    jwks.control(delay=0.3)
    first = asyncio.create_task(rig.source.get_unknown(thumbprint_kid(keys.next)))
    await asyncio.sleep(0.1)
    second = asyncio.create_task(rig.source.get_unknown(thumbprint_kid(keys.next)))
    await asyncio.sleep(0)
    first.cancel()
    assert await second is not None
    assert first.cancelled()
    assert jwks.jwks_requests() == 2


# --------------------------------------------------------------------------- 11. slow or down JWKS


class LoopWatch:
    """Ticks every 10 ms and keeps the longest gap, to show the event loop never blocked."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            self.longest = max(self.longest, now - last)
            last = now

    def __enter__(self) -> LoopWatch:
        self._task = asyncio.create_task(self._tick())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


async def keep_verifying(rig: Rig, valid: str, seconds: float) -> int:
    count = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await rig.verify(valid)
        count += 1
        await asyncio.sleep(0.01)
    return count


async def test_slow_jwks_keeps_the_last_good_keys_and_never_blocks_the_loop(
    make_rig: MakeRig, jwks: JwksServer, keys: Keys
) -> None:
    rig = await make_rig(refresh_interval=0.1, fetch_timeout=0.3, retry_initial=0.1)
    valid = token(keys.signer)
    jwks.control(delay=2)  # every refresh from now on outlasts the fetch timeout
    with LoopWatch() as watch:
        verified = await keep_verifying(rig, valid, seconds=1.2)
        # A token with an unknown kid waits for (at most) one timed-out fetch, not forever.
        started = time.monotonic()
        await rig.refuse(token(keys.next))
        assert time.monotonic() - started < 1.0
    assert verified > 20
    assert "error" in rig.fetches
    # A loop blocked on the fetch would stall for its whole 0.3 s timeout.
    assert watch.longest < 0.2
    assert rig.source.kids == {keys.signer_kid}


@pytest.fixture
def own_jwks(tmp_path: Path, keys: Keys) -> Iterator[JwksServer]:
    """A JWKS server of the test's own, so it can be stopped and started again."""
    server = JwksServer(tmp_path)
    server.publish(jwks_of(keys.signer))
    try:
        yield server
    finally:
        server.stop()


async def test_jwks_down_keeps_the_last_good_keys(
    make_rig: MakeRig, own_jwks: JwksServer, keys: Keys
) -> None:
    own_jwks.start()
    rig = await make_rig(own_jwks.url, refresh_interval=0.1, retry_initial=0.1)
    own_jwks.stop()
    valid = token(keys.signer)
    with LoopWatch() as watch:
        await keep_verifying(rig, valid, seconds=0.6)
        await rig.refuse(token(keys.next))
    assert rig.fetches[0] == "ok"
    assert rig.fetches.count("error") >= 2
    assert watch.longest < 0.2
    assert rig.source.ready


async def test_jwks_down_at_start_up_does_not_raise_and_recovers(
    make_rig: MakeRig, own_jwks: JwksServer, keys: Keys
) -> None:
    started = time.monotonic()
    rig = await make_rig(own_jwks.url, retry_initial=0.1, retry_max=0.3)
    assert time.monotonic() - started < 1.0
    assert not rig.source.ready
    await rig.refuse(token(keys.signer))

    own_jwks.start()
    await eventually(lambda: rig.source.ready, 10, "the key source ready")
    await rig.verify(token(keys.signer))
    assert rig.fetches[0] == "error"
    assert rig.fetches[-1] == "ok"


@pytest.mark.parametrize(
    ("body", "result"),
    [
        (b"<html>not json</html>", "invalid"),
        (b"", "invalid"),
        (b"[]", "invalid"),
        (b'{"keys": []}', "invalid"),
        (b'{"keys": {"kid": "x"}}', "invalid"),
        (b'{"keys": [{"kty": "RSA", "kid": "x", "n": "AQAB", "e": "AQAB"}]}', "invalid"),
    ],
)
async def test_an_unusable_document_keeps_the_last_good_keys(
    rig: Rig, jwks: JwksServer, keys: Keys, body: bytes, result: str
) -> None:
    jwks.publish_raw(body)
    assert await rig.source.refresh() == result
    assert rig.source.kids == {keys.signer_kid}
    await rig.verify(token(keys.signer))


@pytest.mark.parametrize("status", [404, 500, 503])
async def test_an_http_error_keeps_the_last_good_keys(
    rig: Rig, jwks: JwksServer, keys: Keys, status: int
) -> None:
    jwks.control(status=status)
    assert await rig.source.refresh() == "error"
    await rig.verify(token(keys.signer))
    assert rig.fetches == ["ok", "error"]


async def test_a_redirect_is_not_followed(
    rig: Rig, jwks: JwksServer, attacker: JwksServer, keys: Keys
) -> None:
    jwks.control(redirect=attacker.url)
    assert await rig.source.refresh() == "error"
    assert attacker.total_requests() == 0
    assert rig.source.kids == {keys.signer_kid}


async def test_an_oversized_document_is_refused(
    make_rig: MakeRig, jwks: JwksServer, keys: Keys
) -> None:
    rig = await make_rig(max_bytes=4096)
    document = jwks_of(keys.next)
    document["padding"] = "x" * 8192
    jwks.publish(document)
    assert await rig.source.refresh() == "invalid"
    assert rig.source.kids == {keys.signer_kid}


async def test_the_document_is_parsed_strictly(rig: Rig, jwks: JwksServer, keys: Keys) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - must be refused
    leaked = keys.next
    leaked_numbers = leaked.private_numbers()
    private_members = {"d": b64(leaked_numbers.d.to_bytes(256, "big"))}
    jwks.publish(
        {
            "keys": [
                jwk_of(keys.signer),
                jwk_of(leaked, **private_members),
                jwk_of(keys.attacker, kty="EC"),
                jwk_of(keys.attacker, use="enc", kid="enc-key"),
                jwk_of(keys.attacker, alg="RS512", kid="rs512-key"),
                jwk_of(keys.attacker, alg="HS256", kid="hs256-key"),
                jwk_of(keys.attacker, kid=12345),
                jwk_of(keys.attacker, kid="../../etc/passwd"),
                jwk_of(keys.attacker, kid="trailing-newline\n"),
                jwk_of(keys.attacker, key_ops=["encrypt"], kid="ops-key"),
                jwk_of(weak),
                jwk_of(keys.attacker, n=jwk_of(keys.attacker)["n"] + "==", kid="padded"),
                jwk_of(keys.attacker, e="not base64!", kid="bad-e"),
                {**jwk_of(keys.attacker, kid="no-n"), "n": None},
                jwk_of(keys.attacker, kid=keys.signer_kid),  # a second key under a known kid
                "not an object",
            ]
        }
    )
    assert await rig.source.refresh() == "ok"
    assert rig.source.kids == {keys.signer_kid}
    await rig.verify(token(keys.signer))
    await rig.refuse(token(leaked))  # published with its private part: never trusted


# --------------------------------------------------------------------------- 12. rotation


async def test_a_new_key_is_accepted_without_a_restart(
    rig: Rig, jwks: JwksServer, keys: Keys
) -> None:
    jwks.publish(jwks_of(keys.next, keys.signer))
    claims = await rig.verify(token(keys.next))
    assert claims.sub == "user-1"
    assert jwks.jwks_requests() == 2
    assert rig.source.kids == {keys.signer_kid, thumbprint_kid(keys.next)}
    await rig.verify(token(keys.signer))  # the older key stays valid while it is published


async def test_a_removed_key_is_refused_after_the_next_refresh(
    make_rig: MakeRig, jwks: JwksServer, keys: Keys
) -> None:
    rig = await make_rig(refresh_interval=0.2)
    old = token(keys.signer)
    await rig.verify(old)
    jwks.publish(jwks_of(keys.next))
    await eventually(lambda: keys.signer_kid not in rig.source.kids, 5, "the key gone")
    await rig.refuse(old)
    await rig.verify(token(keys.next))


# --------------------------------------------------------------------------- 13. size and shape


async def test_a_token_over_the_size_cap_is_refused_before_parsing(
    rig: Rig, jwks: JwksServer, keys: Keys
) -> None:
    big = token(keys.signer, kid="unknown-kid", padding="x" * 9000)
    error = await rig.refuse(big)
    assert "larger" in error.message
    assert rig.keys.lookups == []
    assert jwks.jwks_requests() == 1


def _reshaped(valid: str) -> list[str]:
    header, payload, signature = valid.split(".")
    return [
        f"{header}.{payload[:10]}+{payload[11:]}.{signature}",
        f"{header}.{payload}.{signature[:10]}/{signature[11:]}",
        f"{header}=.{payload}.{signature}",
        f"{header}.{payload}.{signature}==",
        f"{header}.{payload}.{signature}\n",
        f" {header}.{payload}.{signature}",
        f"{header}.{payload} .{signature}",
        f"{header}.{payload}.{signature[:10]}é{signature[11:]}",
        f"{header}%2E{payload}.{signature}",
        f"{header}.{payload}.{signature}.{signature}",
        f"{header}.{payload}",
        f"{header}..{signature}",
        f".{payload}.{signature}",
        f"Bearer {header}.{payload}.{signature}",
        f"{header}.{payload}.{signature}\x00",
    ]


@pytest.mark.parametrize("index", range(len(_reshaped("a.b.c"))))
async def test_a_token_that_is_not_base64url_is_refused_before_parsing(
    rig: Rig, jwks: JwksServer, keys: Keys, index: int
) -> None:
    # Signed by a key the cache lacks: had the shape check let it through, a fetch would show.
    reshaped = _reshaped(token(keys.next))[index]
    error = await rig.refuse(reshaped)
    assert "compact JWS" in error.message
    assert rig.keys.lookups == []
    assert jwks.jwks_requests() == 1


async def test_a_header_that_is_not_json_is_refused(rig: Rig, keys: Keys) -> None:
    _, payload, signature = token(keys.signer).split(".")
    for header in (b64(b"not json"), b64(b'["alg", "RS256"]'), b64(b"\xff\xfe"), "A"):
        await rig.refuse(f"{header}.{payload}.{signature}")
    assert rig.keys.lookups == []


# --------------------------------------------------------------------------- 14. forgery


@pytest.mark.parametrize(
    "tamper",
    [
        {"sub": "admin"},
        {"exp": int(time.time()) + 86400},
        {"aud": [AUDIENCE, "admin"]},
        {"rooms": ["private:secret"]},
    ],
)
async def test_a_tampered_payload_is_refused(rig: Rig, keys: Keys, tamper: dict[str, Any]) -> None:
    header, payload, signature = token(keys.signer).split(".")
    original = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    await rig.refuse(f"{header}.{segment({**original, **tamper})}.{signature}")


async def test_a_tampered_header_or_signature_is_refused(rig: Rig, keys: Keys) -> None:
    header, payload, signature = token(keys.signer).split(".")
    extra = segment({"alg": "RS256", "typ": "at+jwt", "kid": keys.signer_kid, "x": 1})
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    await rig.refuse(f"{extra}.{payload}.{signature}")
    await rig.refuse(f"{header}.{payload}.{flipped}")
    await rig.refuse(f"{header}.{payload}.{b64(b'')}A")


async def test_a_foreign_key_reusing_a_known_kid_is_refused(
    rig: Rig, jwks: JwksServer, keys: Keys
) -> None:
    await rig.refuse(token(keys.attacker, kid=keys.signer_kid))
    assert rig.keys.lookups == [("get", keys.signer_kid)]
    assert jwks.jwks_requests() == 1


# --------------------------------------------------------------------------- PyJWT's segment check


def _segments() -> Iterator[bytes]:
    """Base64url segments of every shape PyJWT's check tells apart, valid and not."""
    rng = random.Random(5)
    for size in range(0, 40):
        encoded = base64.urlsafe_b64encode(rng.randbytes(size))
        stripped = encoded.rstrip(b"=")
        yield encoded  # padded
        yield stripped  # unpadded, as JWS has it
        yield stripped + b"=" * 3  # too much padding
        yield stripped + b"="  # padding that does not fit the length
        yield stripped[:-1]  # a length of 4k+1, or a truncated final group
        if stripped:
            last = stripped[-1:]
            yield stripped[:-1] + (b"B" if last != b"B" else b"C")  # non-canonical final bits
            for junk in (b"!", b"+", b"/", b" ", b"\n", b".", b"\xc3\xa9", b"\x00", b"="):
                cut = rng.randrange(len(stripped))
                yield stripped[:cut] + junk + stripped[cut + 1 :]
    yield b"=="
    yield b"===="
    yield b"A\n"


def test_the_segment_check_matches_pyjwts_own() -> None:
    """``_SegmentCheckingJWS`` replaces a PyJWT loop; it must accept and refuse the same."""

    def outcome(check: Callable[[bytes, str], bytes], segment: bytes) -> tuple[str, Any]:
        try:
            return "decoded", check(segment, "payload")
        except jwt.DecodeError as exc:
            return "refused", str(exc)

    checked = refused = 0
    for segment in _segments():
        ours = outcome(_SegmentCheckingJWS._decode_base64url_segment, segment)
        assert ours == outcome(PyJWS._decode_base64url_segment, segment), segment
        checked += 1
        refused += ours[0] == "refused"
    assert checked > 500 and 0 < refused < checked


async def test_the_verifier_decodes_through_the_regex_segment_check(rig: Rig, keys: Keys) -> None:
    assert isinstance(rig.verifier._jwt._jws, _SegmentCheckingJWS)
    header, payload, signature = token(keys.signer).split(".")
    assert (await rig.verifier.verify(f"{header}.{payload}.{signature}")).sub
    await rig.refuse(f"{header}.{payload}.{signature[:-1]}")  # a length of 4k+1


def test_the_payload_is_parsed_as_pyjwt_parses_it_or_refused() -> None:
    """orjson reads a payload as PyJWT's ``json`` does; what it alone refuses stays refused."""

    def outcome(decoder: jwt.PyJWT, payload: bytes) -> tuple[str, Any]:
        try:
            return "decoded", decoder._decode_payload({"payload": payload})
        except jwt.DecodeError:
            return "refused", None

    same = [
        b'{"sub": "u1", "rooms": ["a", "b"], "exp": 1900000000, "name": "caf\\u00e9"}',
        b'{"a": 1, "a": 2}',
        b'{"nested": {"x": [1.5, null, true]}}',
        b"[]",
        b'"a string"',
        b"{",
        b"",
        b"\xff",
    ]
    for payload in same:
        assert outcome(_PyJWT(), payload) == outcome(jwt.PyJWT(), payload), payload
    assert outcome(_PyJWT(), same[0])[0] == "decoded"
    for stricter in (b'{"exp": NaN}', b'{"s": "\\ud800"}'):
        assert outcome(jwt.PyJWT(), stricter)[0] == "decoded"
        assert outcome(_PyJWT(), stricter) == ("refused", None), stricter
    huge = b'{"exp": 1' + b"0" * 30 + b"}"  # beyond 64 bits: a float, as large
    assert outcome(_PyJWT(), huge) == ("decoded", {"exp": 1e30})
