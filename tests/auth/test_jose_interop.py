"""The official Node ``jose`` library accepts the service's access tokens, and only as meant.

``tests/node/verify_jose.mjs`` runs ``createRemoteJWKSet`` + ``jwtVerify`` (issuer, audience,
``typ: "at+jwt"``, RS256 only) against the live JWKS endpoint, as a third-party resource
server would. ``jose`` comes from the root package.json (``npm ci``).
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
from typing import Any

import httpx
import pytest

from tests.auth.conftest import AuthService
from tests.support.processes import ROOT

SCRIPT = ROOT / "tests" / "node" / "verify_jose.mjs"
CLAIMS = {"iss", "sub", "aud", "exp", "iat", "jti", "name"}


@pytest.fixture(scope="module")
def node() -> str:
    found = shutil.which("node")
    if found is None:
        pytest.fail("node is not installed; the interop tests need Node.js 18 or later")
    if not (ROOT / "node_modules" / "jose" / "package.json").exists():
        pytest.fail("jose is not installed: run `npm ci` at the repository root")
    return found


def verify_with_jose(
    node: str,
    service: AuthService,
    token: str,
    *,
    issuer: str | None = None,
    audience: str = "gateway",
) -> dict[str, Any]:
    request = {
        "jwks_url": f"{service.url}/.well-known/jwks.json",
        "token": token,
        "issuer": issuer if issuer is not None else service.url,
        "audience": audience,
    }
    run = subprocess.run(
        [node, str(SCRIPT)],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        check=False,
    )
    assert run.returncode in (0, 1), run.stderr or run.stdout
    result: dict[str, Any] = json.loads(run.stdout)
    assert result["ok"] is (run.returncode == 0), result
    return result


@pytest.fixture(scope="module")
def issued(shared_auth: AuthService) -> tuple[dict[str, Any], str]:
    """A registered user and a freshly issued access token of theirs."""
    with shared_auth.client() as client:
        user = shared_auth.register(client, "jose-user")
        token = str(shared_auth.login(client, "jose-user")["access_token"])
    return user, token


def test_jose_verifies_a_fresh_access_token(
    node: str, shared_auth: AuthService, issued: tuple[dict[str, Any], str]
) -> None:
    user, token = issued
    started = int(time.time())
    result = verify_with_jose(node, shared_auth, token)

    assert result["ok"], result
    header, payload = result["header"], result["payload"]
    assert header["alg"] == "RS256"
    assert header["typ"] == "at+jwt"
    published = httpx.get(f"{shared_auth.url}/.well-known/jwks.json").json()["keys"]
    assert header["kid"] == published[0]["kid"]

    assert set(payload) == CLAIMS, payload  # nothing secret: no email, no hash
    assert "email" not in payload
    assert payload["iss"] == shared_auth.url
    assert payload["sub"] == user["id"]
    assert payload["aud"] == "gateway"
    assert payload["name"] == "jose-user"
    assert isinstance(payload["jti"], str) and len(payload["jti"]) >= 16
    assert started - 60 <= payload["iat"] <= started + 5
    assert payload["exp"] - payload["iat"] == 900  # AUTH_ACCESS_TTL's default


@pytest.mark.parametrize(
    ("audience", "issuer", "claim"),
    [
        ("chat", None, "aud"),
        ("gateway", "http://127.0.0.1:1", "iss"),
    ],
    ids=["wrong-audience", "wrong-issuer"],
)
def test_jose_refuses_the_token_for_another_audience_or_issuer(
    node: str,
    shared_auth: AuthService,
    issued: tuple[dict[str, Any], str],
    audience: str,
    issuer: str | None,
    claim: str,
) -> None:
    result = verify_with_jose(node, shared_auth, issued[1], issuer=issuer, audience=audience)

    assert not result["ok"]
    assert result["code"] == "ERR_JWT_CLAIM_VALIDATION_FAILED", result
    assert result["claim"] == claim, result


def test_jose_refuses_a_tampered_token(
    node: str, shared_auth: AuthService, issued: tuple[dict[str, Any], str]
) -> None:
    header, payload, signature = issued[1].split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["name"] = "mallory"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()

    result = verify_with_jose(node, shared_auth, f"{header}.{forged}.{signature}")

    assert not result["ok"]
    assert result["code"] == "ERR_JWS_SIGNATURE_VERIFICATION_FAILED", result
