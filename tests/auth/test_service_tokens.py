"""The client-credentials grant (``POST /v1/auth/token``) on a running auth service."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.auth.conftest import AuthService, launch_auth

SECRET = "s" * 40
CLIENTS = json.dumps([{"id": "backend", "secret": SECRET, "scopes": ["publish"]}])


def _claims(token: str) -> dict[str, object]:
    part = token.split(".")[1]
    decoded: dict[str, object] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return decoded


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthService]:
    auth = launch_auth(Path(tmp_path_factory.mktemp("clients")), AUTH_SERVICE_CLIENTS=CLIENTS)
    yield auth
    auth.process.stop()


def test_basic_credentials_get_a_scoped_service_token(service: AuthService) -> None:
    with service.client() as client:
        response = client.post(
            "/v1/auth/token", data={"grant_type": "client_credentials"}, auth=("backend", SECRET)
        )
        jwks = client.get("/.well-known/jwks.json").json()
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["scope"] == "publish"
    assert body["expires_in"] == 900
    claims = _claims(body["access_token"])
    assert claims["sub"] == "client:backend"
    assert claims["scope"] == "publish"
    assert claims["client_id"] == "backend"
    assert claims["iss"] == service.url
    assert claims["aud"] == "gateway"
    header = json.loads(base64.urlsafe_b64decode(body["access_token"].split(".")[0] + "=="))
    assert header["typ"] == "at+jwt"
    assert header["kid"] in {key["kid"] for key in jwks["keys"]}


def test_form_credentials_and_an_explicit_scope(service: AuthService) -> None:
    with service.client() as client:
        response = client.post(
            "/v1/auth/token",
            data={
                "grant_type": "client_credentials",
                "client_id": "backend",
                "client_secret": SECRET,
                "scope": "publish",
            },
        )
    assert response.status_code == 200
    assert response.json()["scope"] == "publish"


def test_wrong_secret_and_unknown_client_look_the_same(service: AuthService) -> None:
    with service.client() as client:
        wrong = client.post(
            "/v1/auth/token", data={"grant_type": "client_credentials"}, auth=("backend", "nope")
        )
        unknown = client.post(
            "/v1/auth/token", data={"grant_type": "client_credentials"}, auth=("ghost", SECRET)
        )
        missing = client.post("/v1/auth/token", data={"grant_type": "client_credentials"})
        garbled = client.post(
            "/v1/auth/token",
            data={"grant_type": "client_credentials"},
            headers={"Authorization": "Basic !!!not-base64"},
        )
    assert wrong.status_code == unknown.status_code == missing.status_code == 401
    assert garbled.status_code == 401
    assert wrong.json() == unknown.json()
    assert wrong.json()["error"]["code"] == "invalid_client"


def test_ungranted_scope_and_unsupported_grant_are_refused(service: AuthService) -> None:
    with service.client() as client:
        scope = client.post(
            "/v1/auth/token",
            data={"grant_type": "client_credentials", "scope": "publish admin"},
            auth=("backend", SECRET),
        )
        grant = client.post(
            "/v1/auth/token", data={"grant_type": "password"}, auth=("backend", SECRET)
        )
        json_body = client.post(
            "/v1/auth/token", json={"grant_type": "client_credentials"}, auth=("backend", SECRET)
        )
    assert scope.status_code == 400
    assert scope.json()["error"]["code"] == "invalid_scope"
    assert grant.status_code == 422
    assert json_body.status_code == 422


def test_no_clients_configured_means_no_service_tokens(tmp_path: Path) -> None:
    auth = launch_auth(tmp_path)
    try:
        with httpx.Client(base_url=auth.url, timeout=10) as client:
            response = client.post(
                "/v1/auth/token", data={"grant_type": "client_credentials"}, auth=("x", SECRET)
            )
        assert response.status_code == 401
    finally:
        auth.process.stop()


def test_weak_client_secrets_are_refused_at_start_up(tmp_path: Path) -> None:
    weak = json.dumps([{"id": "backend", "secret": "short", "scopes": ["publish"]}])
    with pytest.raises(RuntimeError, match="secret"):
        launch_auth(tmp_path, AUTH_SERVICE_CLIENTS=weak)
