"""Schemathesis over the live auth service's OpenAPI document (SECURITY.md item 33).

Two complementary runs against one real uvicorn process:

- the ``schemathesis run --checks all`` CLI fuzzes every operation (coverage and fuzzing
  phases, positive and negative data) and must find no 5xx and no response that strays from
  the schema (status code, content type, headers, body);
- every operation is then called once with *real* data (a registered user, a live refresh
  token, a valid access token) through the Python API's ``call_and_validate``, because random
  data never reaches the success paths of refresh and logout, whose answers must conform too.

Per-address limits are raised so throttling doesn't dominate; the per-account login throttle
stays as it is (the fuzzer's failed logins hit it, and its 429 is documented).
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis

from tests.auth.conftest import AuthService, launch_auth

MAX_EXAMPLES = 300
# Valid, deliverable-looking addresses whose local parts carry what trips naive parsers.
VALID_EMAILS = [
    "a@example.com",
    "first.last@mail.example.org",
    "o'brien+tag@example.net",
    "!#$%&'*+-/=?^_`{|}~@x.example.io",
    "UPPER.Case@Example.COM",
    "0@0.example.dev",
]
RUN_TIMEOUT = 75  # seconds; the run takes well under 20 s on two cores


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthService]:
    svc = launch_auth(
        tmp_path_factory.mktemp("auth-fuzz"),
        AUTH_IP_BURST="100000",
        AUTH_IP_RATE_PER_MINUTE="1000000",
    )
    yield svc
    svc.process.stop()


def _access_token(service: AuthService, client: httpx.Client) -> str:
    name = f"fz-{uuid.uuid4().hex[:12]}"
    service.register(client, name)
    return str(service.login(client, name)["access_token"])


def _config(service: AuthService, client: httpx.Client) -> str:
    # One user per authenticated operation: the first successful logout-all revokes its
    # caller's tokens, which must not turn every later GET /v1/users/me into a 401. Static
    # tokens rather than a dynamic login: the fuzzer also tries the configured username with
    # wrong passwords, and the per-account throttle would then lock the re-login out.
    me = _access_token(service, client)
    logout_all = _access_token(service, client)
    return f"""
[auth]
auto-signup = false

[dictionaries.emails]
values = {json.dumps(VALID_EMAILS)}

# The generator draws `format: email` domains from a TLD list that includes `test`, a
# special-use name (RFC 6761) the service refuses like every address it cannot deliver to.
# Generated registrations take their email from this list instead (only on this operation);
# the rest of the request is still generated, and the email stays fuzzed everywhere else.
[[operations]]
include-path = "/v1/auth/register"
parameters = {{ "body.email" = {{ dictionary = "emails" }} }}

[[operations]]
include-path = "/v1/users/me"
headers = {{ Authorization = "Bearer {me}" }}

[[operations]]
include-path = "/v1/auth/logout-all"
headers = {{ Authorization = "Bearer {logout_all}" }}
"""


def test_fuzzing_with_all_checks_finds_nothing(service: AuthService, tmp_path: Path) -> None:
    with service.client() as client:
        config = tmp_path / "schemathesis.toml"
        config.write_text(_config(service, client))
    report_path = tmp_path / "report.json"
    args = [
        sys.executable, "-m", "schemathesis.cli",
        "--config-file", str(config),
        "--no-color",
        "run", f"{service.url}/openapi.json",
        "--checks", "all",
        "--max-examples", str(MAX_EXAMPLES),
        "--workers", "2",
        "--request-timeout", "10",
        "--generation-database", "none",
        "--report", "json",
        "--report-json-path", str(report_path),
    ]  # fmt: skip
    # cwd is the test's folder: the CLI leaves .hypothesis/ and .schemathesis/ where it runs.
    run = subprocess.run(
        args, cwd=tmp_path, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False
    )
    output = run.stdout[-12000:] + run.stderr[-4000:]
    assert run.returncode == 0, output
    report: dict[str, Any] = json.loads(report_path.read_text())
    assert report["complete"], output
    assert report["failures"] == [], output
    assert report["errors"] == [], output
    assert report["operations"]["tested"] == report["operations"]["total"] >= 9, report
    assert report["phases"]["coverage"]["status"] == "success", report["phases"]
    assert report["phases"]["fuzzing"]["status"] == "success", report["phases"]
    # The bearer tokens were used: the authenticated success paths were reached and checked.
    rates = report["valid_rates"]
    assert rates["GET /v1/users/me"]["fuzzing"]["accepted"] > 0, rates
    assert report["warnings"]["missing_auth"] == [], report["warnings"]
    # Nothing unexpected reached the service's catch-all handler either.
    assert '"unhandled error"' not in service.process.logs()
    assert service.process.alive()


def test_success_paths_conform_to_the_schema(service: AuthService) -> None:
    schema = schemathesis.openapi.from_url(f"{service.url}/openapi.json")
    name = f"ok-{uuid.uuid4().hex[:12]}"
    password = "a-good-passw0rd"

    def call(
        method: str, path: str, status: int, body: Any = None, token: str | None = None
    ) -> Any:
        operation = schema[path][method]
        case = operation.Case(body=body) if body is not None else operation.Case()
        headers = {"Authorization": f"Bearer {token}"} if token else None
        response = case.call_and_validate(base_url=service.url, headers=headers)
        assert response.status_code == status, (method, path, response.text)
        return response.json() if response.content else None

    registration = {"username": name, "email": f"{name}@example.com", "password": password}
    user = call("POST", "/v1/auth/register", 201, registration)
    call("POST", "/v1/auth/register", 409, registration)
    call("POST", "/v1/auth/login", 401, {"username": name, "password": "not-the-password"})
    pair = call("POST", "/v1/auth/login", 200, {"username": name, "password": password})
    renewed = call("POST", "/v1/auth/refresh", 200, {"refresh_token": pair["refresh_token"]})
    # The spent refresh token is reused: its family is revoked, the renewed token with it.
    call("POST", "/v1/auth/refresh", 401, {"refresh_token": pair["refresh_token"]})
    call("POST", "/v1/auth/logout", 204, {"refresh_token": renewed["refresh_token"]})
    fresh = call("POST", "/v1/auth/login", 200, {"username": name, "password": password})
    assert call("GET", "/v1/users/me", 200, token=fresh["access_token"]) == user
    call("GET", "/v1/users/me", 401)
    call("POST", "/v1/auth/logout-all", 204, token=fresh["access_token"])
    assert call("GET", "/.well-known/jwks.json", 200)["keys"]
    assert call("GET", "/.well-known/openid-configuration", 200)["issuer"] == service.url
    call("GET", "/healthz", 200)
    call("GET", "/readyz", 200)
