"""Forged and foreign tokens at ``GET /v1/users/me`` of a running auth service.

The service verifies its own tokens with the same ``shared.tokens.TokenVerifier`` the gateways
use (SECURITY.md 1–14 are covered in depth in tests/test_token_verification.py); this checks the
wiring end to end: the service's real key, a real user, and tokens that differ in one way each.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from tests.auth.conftest import AuthService, launch_auth
from tests.support.keys import mint, new_rsa_key, public_pem, thumbprint_kid, write_key


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    return ".".join(
        [_b64(json.dumps(header).encode()), _b64(json.dumps(claims).encode()), _b64(signature)]
    )


@pytest.fixture(scope="module")
def service_key() -> RSAPrivateKey:
    return new_rsa_key()


@pytest.fixture(scope="module")
def service(
    tmp_path_factory: pytest.TempPathFactory, service_key: RSAPrivateKey
) -> Iterator[tuple[AuthService, str]]:
    tmp = tmp_path_factory.mktemp("forged")
    write_key(tmp / "keys", service_key)
    auth = launch_auth(Path(tmp))
    with auth.client() as client:
        user_id = auth.register(client, "target")["id"]
    yield auth, user_id
    auth.process.stop()


def _status(auth: AuthService, token: str) -> tuple[int, str]:
    with httpx.Client(base_url=auth.url, timeout=10) as client:
        response = client.get("/v1/users/me", headers={"Authorization": f"Bearer {token}"})
    return response.status_code, response.json().get("error", {}).get("code", "")


def test_a_token_minted_with_the_service_key_is_accepted(
    service: tuple[AuthService, str], service_key: RSAPrivateKey
) -> None:
    auth, user_id = service
    token = mint(service_key, kid=thumbprint_kid(service_key), issuer=auth.url, sub=user_id)
    assert _status(auth, token) == (200, "")


@pytest.mark.parametrize(
    "variant",
    [
        "alg_none",
        "hs256_public_pem",
        "crit",
        "no_exp",
        "no_iat",
        "no_sub",
        "no_iss",
        "no_aud",
        "wrong_iss",
        "prefixed_iss",
        "wrong_aud",
        "typ_jwt",
        "kid_path",
        "kid_huge",
        "foreign_key_same_kid",
        "future_iat",
    ],
)
def test_forged_tokens_are_refused(
    service: tuple[AuthService, str], service_key: RSAPrivateKey, variant: str
) -> None:
    auth, user_id = service
    kid = thumbprint_kid(service_key)
    now = int(time.time())
    claims = {"iss": auth.url, "sub": user_id, "aud": "gateway", "iat": now, "exp": now + 300}
    good: dict[str, Any] = {"kid": kid, "issuer": auth.url, "sub": user_id}
    if variant == "alg_none":
        token = _unsigned({"alg": "none", "typ": "at+jwt", "kid": kid}, claims)
    elif variant == "hs256_public_pem":
        header = {"alg": "HS256", "typ": "at+jwt", "kid": kid}
        signing_input = _unsigned(header, claims).rsplit(".", 1)[0]
        mac = hmac.new(public_pem(service_key), signing_input.encode(), hashlib.sha256).digest()
        token = f"{signing_input}.{_b64(mac)}"
    elif variant == "crit":
        token = mint(service_key, **good, extra_headers={"crit": ["exp"], "exp": 1})
    elif variant.startswith("no_"):
        token = mint(service_key, **good, drop=(variant[3:],))
    elif variant == "wrong_iss":
        token = mint(service_key, kid=kid, issuer="http://evil.example", sub=user_id)
    elif variant == "prefixed_iss":
        token = mint(service_key, kid=kid, issuer=auth.url + ".evil.example", sub=user_id)
    elif variant == "wrong_aud":
        token = mint(service_key, **good, audience="someone-else")
    elif variant == "typ_jwt":
        token = mint(service_key, **good, typ="JWT")
    elif variant == "kid_path":
        token = mint(service_key, kid="../../etc/passwd", issuer=auth.url, sub=user_id)
    elif variant == "kid_huge":
        token = mint(service_key, kid="k" * 10_000, issuer=auth.url, sub=user_id)
    elif variant == "foreign_key_same_kid":
        token = mint(new_rsa_key(), **good)
    elif variant == "future_iat":
        token = mint(service_key, **good, iat=now + 3600)
    else:  # pragma: no cover - the parametrize list and the branches go together
        raise AssertionError(variant)
    status, code = _status(auth, token)
    assert status == 401
    assert code == "token_invalid"


def test_an_expired_token_says_so(
    service: tuple[AuthService, str], service_key: RSAPrivateKey
) -> None:
    auth, user_id = service
    token = mint(
        service_key, kid=thumbprint_kid(service_key), issuer=auth.url, sub=user_id, ttl=-120
    )
    assert _status(auth, token) == (401, "token_expired")


def test_a_valid_token_for_a_user_that_does_not_exist(
    service: tuple[AuthService, str], service_key: RSAPrivateKey
) -> None:
    auth, _ = service
    token = mint(service_key, kid=thumbprint_kid(service_key), issuer=auth.url, sub="ghost")
    assert _status(auth, token) == (401, "token_invalid")
