"""The auth HTTP API end to end, against a real uvicorn process on a loopback port.

Covers the contract in DESIGN.md and SECURITY.md items 22–27 and 32.
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.auth.conftest import AuthService, launch_auth

PASSWORD = "s3cret-pass!"


def _segment(token: str, index: int) -> dict[str, Any]:
    part = token.split(".")[index]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return decoded


def _metric(client: httpx.Client, name: str, labels: str = "") -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(f"{name}{labels} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- registration -------------------------------------------------------------------------


def test_register_returns_the_public_profile(shared_auth: AuthService) -> None:
    with shared_auth.client() as client:
        response = client.post(
            "/v1/auth/register",
            json={"username": "reg_ok", "email": "Reg_OK@Example.com", "password": PASSWORD},
        )
    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"id", "username", "email"}
    assert body["username"] == "reg_ok"


def test_register_conflicts_on_normalised_username_and_email(shared_auth: AuthService) -> None:
    with shared_auth.client() as client:
        shared_auth.register(client, "dup_user")
        same_name = client.post(
            "/v1/auth/register",
            json={"username": "DUP_User", "email": "other@example.com", "password": PASSWORD},
        )
        same_email = client.post(
            "/v1/auth/register",
            json={"username": "other_user", "email": "DUP_USER@example.com", "password": PASSWORD},
        )
    assert same_name.status_code == 409
    assert same_name.json()["error"]["code"] == "conflict"
    assert same_email.status_code == 409


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"username": "ab", "email": "a@example.com", "password": PASSWORD},
        {"username": "has space", "email": "a@example.com", "password": PASSWORD},
        {"username": "x" * 33, "email": "a@example.com", "password": PASSWORD},
        {"username": "okname", "email": "not-an-email", "password": PASSWORD},
        {"username": "okname", "email": "a@example.com", "password": "short"},
        {"username": "okname", "email": "a@example.com", "password": "p" * 257},
        {"username": 12345, "email": "a@example.com", "password": PASSWORD},
        {"username": ["a"], "email": "a@example.com", "password": PASSWORD},
        {"username": "okname", "email": "a@example.com", "password": PASSWORD, "admin": True},
    ],
)
def test_register_rejects_invalid_input_with_422(shared_auth: AuthService, body: Any) -> None:
    with shared_auth.client() as client:
        response = client.post("/v1/auth/register", json=body)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    # Never echo input back: it could be a password.
    assert PASSWORD not in response.text and "p" * 257 not in response.text


def test_non_json_and_wrong_content_are_clean_4xx(shared_auth: AuthService) -> None:
    with shared_auth.client() as client:
        garbage = client.post(
            "/v1/auth/login",
            content=b"\xff\xfe{not json",
            headers={"content-type": "application/json"},
        )
        array = client.post("/v1/auth/login", json=[1, 2, 3])
        missing = client.get("/v1/nope")
        wrong_method = client.get("/v1/auth/login")
    assert garbage.status_code == 422 and garbage.json()["error"]["code"] == "invalid_request"
    assert array.status_code == 422
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert wrong_method.status_code == 405


def test_duplicate_registration_race_has_exactly_one_winner(auth_service: AuthService) -> None:
    """SECURITY 27: the unique index decides; every loser gets 409."""

    def attempt(i: int) -> int:
        with httpx.Client(base_url=auth_service.url, timeout=30) as client:
            return client.post(
                "/v1/auth/register",
                json={"username": "racer", "email": f"racer{i}@example.com", "password": PASSWORD},
            ).status_code

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        statuses = list(pool.map(attempt, range(12)))
    assert sorted(statuses) == [201] + [409] * 11


# --- login ---------------------------------------------------------------------------------


def test_login_issues_an_rs256_access_token_and_a_refresh_token(shared_auth: AuthService) -> None:
    with shared_auth.client() as client:
        user = shared_auth.register(client, "tok_user")
        body = shared_auth.login(client, "tok_user@example.com")  # by email works too
        jwks = client.get("/.well-known/jwks.json").json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 900
    header = _segment(body["access_token"], 0)
    claims = _segment(body["access_token"], 1)
    assert header["alg"] == "RS256" and header["typ"] == "at+jwt"
    assert header["kid"] in {key["kid"] for key in jwks["keys"]}
    assert set(claims) == {"iss", "sub", "aud", "exp", "iat", "jti", "name"}
    assert claims["iss"] == shared_auth.url and claims["aud"] == "gateway"
    assert claims["sub"] == user["id"] and claims["name"] == "tok_user"
    assert claims["exp"] - claims["iat"] == 900
    # Opaque, 256 bits: 43 base64url characters, not a JWT.
    assert len(body["refresh_token"]) == 43 and "." not in body["refresh_token"]


def test_unknown_user_and_wrong_password_look_the_same_and_both_hash(
    shared_auth: AuthService,
) -> None:
    """SECURITY 24."""
    with shared_auth.client() as client:
        shared_auth.register(client, "known_user")
        before = _metric(client, "auth_password_hash_seconds_count")
        wrong = client.post(
            "/v1/auth/login", json={"username": "known_user", "password": "nope-nope"}
        )
        after_wrong = _metric(client, "auth_password_hash_seconds_count")
        unknown = client.post(
            "/v1/auth/login", json={"username": "ghost_user", "password": "nope-nope"}
        )
        after_unknown = _metric(client, "auth_password_hash_seconds_count")
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    assert after_wrong == before + 1
    assert after_unknown == after_wrong + 1


def test_oversized_passwords_are_clean_4xx_never_truncated(shared_auth: AuthService) -> None:
    """SECURITY 25: 1 MB is refused by the body cap; past the field limit is a 422."""
    long_password = "a" * 256
    with shared_auth.client() as client:
        client.post(
            "/v1/auth/register",
            json={"username": "long_pw", "email": "long_pw@example.com", "password": long_password},
        ).raise_for_status()
        huge = client.post(
            "/v1/auth/login", json={"username": "long_pw", "password": "a" * 1_000_000}
        )
        over = client.post(
            "/v1/auth/login", json={"username": "long_pw", "password": long_password + "b"}
        )
        prefix = client.post("/v1/auth/login", json={"username": "long_pw", "password": "a" * 72})
        exact = client.post(
            "/v1/auth/login", json={"username": "long_pw", "password": long_password}
        )
    assert huge.status_code == 413 and huge.json()["error"]["code"]
    assert over.status_code == 422
    assert prefix.status_code == 401  # a 72-byte prefix must not match (no bcrypt truncation)
    assert exact.status_code == 200


def test_parallel_logins_are_bounded_not_exhausting(tmp_path: Path) -> None:
    """SECURITY 25: 200 parallel logins queue behind the hashing limit and all complete."""
    service = launch_auth(
        tmp_path,
        AUTH_IP_BURST="100000",
        AUTH_IP_RATE_PER_MINUTE="1000000",
        AUTH_HASH_CONCURRENCY="2",
    )
    try:
        with service.client() as client:
            service.register(client, "storm_user")

        def attempt(_: int) -> int:
            with httpx.Client(base_url=service.url, timeout=60) as client:
                return client.post(
                    "/v1/auth/login", json={"username": "storm_user", "password": PASSWORD}
                ).status_code

        with concurrent.futures.ThreadPoolExecutor(50) as pool:
            futures = [pool.submit(attempt, i) for i in range(200)]
            # While the storm runs, the service still answers cheap requests.
            with service.client() as client:
                health = client.get("/healthz", timeout=5)
            statuses = [f.result() for f in futures]
        assert health.status_code == 200
        assert statuses.count(200) == 200
        assert service.process.alive()
    finally:
        service.process.stop()


def test_failed_logins_throttle_the_account_then_let_the_user_back(tmp_path: Path) -> None:
    """SECURITY 26: exponential delay per account, never a permanent lockout."""
    service = launch_auth(tmp_path, AUTH_LOGIN_FREE_FAILURES="3", AUTH_LOGIN_MAX_DELAY="2")
    try:
        with service.client() as client:
            service.register(client, "victim")
            statuses = [
                client.post(
                    "/v1/auth/login", json={"username": "victim", "password": "bad-guess"}
                ).status_code
                for _ in range(5)
            ]
            blocked = client.post(
                "/v1/auth/login", json={"username": "victim", "password": PASSWORD}
            )
            assert blocked.status_code == 429
            retry_after = int(blocked.headers["Retry-After"])
            assert 1 <= retry_after <= 2
            # An unknown account is throttled the same way: throttling reveals nothing.
            ghost = [
                client.post(
                    "/v1/auth/login", json={"username": "nobody_here", "password": "x"}
                ).status_code
                for _ in range(5)
            ]
            time.sleep(retry_after + 0.2)
            back = client.post("/v1/auth/login", json={"username": "victim", "password": PASSWORD})
        assert statuses[:4] == [401, 401, 401, 401]
        assert statuses[4] == 429
        assert ghost[:4] == [401, 401, 401, 401] and ghost[4] == 429
        assert back.status_code == 200
    finally:
        service.process.stop()


def test_per_address_limit_answers_429(tmp_path: Path) -> None:
    service = launch_auth(tmp_path, AUTH_IP_BURST="5", AUTH_IP_RATE_PER_MINUTE="1")
    try:
        with service.client() as client:
            statuses = [
                client.post(
                    "/v1/auth/login", json={"username": f"u{i}", "password": "x"}
                ).status_code
                for i in range(7)
            ]
        assert statuses[:5] == [401] * 5
        assert statuses[5:] == [429, 429]
    finally:
        service.process.stop()


# --- refresh rotation ---------------------------------------------------------------------


def test_refresh_rotates_and_reuse_revokes_the_whole_family(shared_auth: AuthService) -> None:
    """SECURITY 22."""
    with shared_auth.client() as client:
        shared_auth.register(client, "rotator")
        first = shared_auth.login(client, "rotator")
        second = client.post("/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
        assert second.status_code == 200
        second_body = second.json()
        assert second_body["refresh_token"] != first["refresh_token"]
        assert (
            client.get("/v1/users/me", headers=_bearer(second_body["access_token"])).status_code
            == 200
        )
        third = client.post(
            "/v1/auth/refresh", json={"refresh_token": second_body["refresh_token"]}
        )
        assert third.status_code == 200
        reuse_before = _metric(client, "auth_refreshes_total", '{result="reuse_detected"}')

        replay = client.post("/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
        newest = client.post(
            "/v1/auth/refresh", json={"refresh_token": third.json()["refresh_token"]}
        )
        reuse_after = _metric(client, "auth_refreshes_total", '{result="reuse_detected"}')
        # Another login starts its own family, untouched by the revocation.
        other = shared_auth.login(client, "rotator")
        other_refresh = client.post(
            "/v1/auth/refresh", json={"refresh_token": other["refresh_token"]}
        )
    assert replay.status_code == 401
    assert replay.json()["error"]["code"] == "invalid_refresh_token"
    assert newest.status_code == 401
    assert reuse_after == reuse_before + 1
    assert other_refresh.status_code == 200


def test_concurrent_refreshes_leave_exactly_one_chain(shared_auth: AuthService) -> None:
    """SECURITY 23: of two refreshes racing, one wins; the loser does not revoke the winner."""
    for round_ in range(5):
        with shared_auth.client() as client:
            if round_ == 0:
                shared_auth.register(client, "racer_refresh")
            pair = shared_auth.login(client, "racer_refresh")
        start = threading.Barrier(2)

        def attempt(
            _: int, token: str = pair["refresh_token"], start: Any = start
        ) -> httpx.Response:
            with httpx.Client(base_url=shared_auth.url, timeout=30) as client:
                client.get("/healthz")  # connect first, so both requests leave together
                start.wait(timeout=10)
                return client.post("/v1/auth/refresh", json={"refresh_token": token})

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            responses = list(pool.map(attempt, range(2)))
        assert sorted(r.status_code for r in responses) == [200, 401]
        (winner,) = [r for r in responses if r.status_code == 200]
        with shared_auth.client() as client:
            survivor = client.post(
                "/v1/auth/refresh", json={"refresh_token": winner.json()["refresh_token"]}
            )
        assert survivor.status_code == 200


@pytest.mark.parametrize("token", ["x" * 43, "short", "bad chars !!!!!!!!!!!!!!!!!!!!", "a" * 200])
def test_refresh_with_unknown_or_malformed_token(shared_auth: AuthService, token: str) -> None:
    with shared_auth.client() as client:
        response = client.post("/v1/auth/refresh", json={"refresh_token": token})
    assert response.status_code in (401, 422)
    assert response.status_code == (401 if token == "x" * 43 else 422)


def test_logout_revokes_the_family(shared_auth: AuthService) -> None:
    with shared_auth.client() as client:
        shared_auth.register(client, "leaver")
        pair = shared_auth.login(client, "leaver")
        rotated = client.post(
            "/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]}
        ).json()
        out = client.post("/v1/auth/logout", json={"refresh_token": rotated["refresh_token"]})
        after = client.post("/v1/auth/refresh", json={"refresh_token": rotated["refresh_token"]})
        again = client.post("/v1/auth/logout", json={"refresh_token": rotated["refresh_token"]})
    assert out.status_code == 204
    assert after.status_code == 401
    assert again.status_code == 204  # idempotent


# --- bearer endpoints ---------------------------------------------------------------------


def test_me_requires_a_valid_bearer_token(shared_auth: AuthService) -> None:
    with shared_auth.client() as client:
        user = shared_auth.register(client, "me_user")
        pair = shared_auth.login(client, "me_user")
        ok = client.get("/v1/users/me", headers=_bearer(pair["access_token"]))
        missing = client.get("/v1/users/me")
        garbage = client.get("/v1/users/me", headers=_bearer("not.a.token"))
        refresh_as_access = client.get("/v1/users/me", headers=_bearer(pair["refresh_token"]))
        header, payload, signature = pair["access_token"].split(".")
        tampered_payload = (
            base64.urlsafe_b64encode(
                json.dumps({**_segment(pair["access_token"], 1), "sub": "someone-else"}).encode()
            )
            .rstrip(b"=")
            .decode()
        )
        tampered = client.get(
            "/v1/users/me", headers=_bearer(f"{header}.{tampered_payload}.{signature}")
        )
    assert ok.status_code == 200 and ok.json() == user
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "token_missing"
    assert garbage.status_code == 401 and garbage.json()["error"]["code"] == "token_invalid"
    assert refresh_as_access.status_code == 401
    assert tampered.status_code == 401


def test_logout_all_revokes_tokens_and_families_but_not_new_logins(
    shared_auth: AuthService,
) -> None:
    with shared_auth.client() as client:
        shared_auth.register(client, "everywhere")
        a = shared_auth.login(client, "everywhere")
        b = shared_auth.login(client, "everywhere")
        out = client.post("/v1/auth/logout-all", headers=_bearer(a["access_token"]))
        old_access = client.get("/v1/users/me", headers=_bearer(b["access_token"]))
        old_refresh = client.post("/v1/auth/refresh", json={"refresh_token": b["refresh_token"]})
        fresh = shared_auth.login(client, "everywhere")  # same second as the revocation
        fresh_me = client.get("/v1/users/me", headers=_bearer(fresh["access_token"]))
        unauthenticated = client.post("/v1/auth/logout-all")
    assert out.status_code == 204
    assert old_access.status_code == 401 and old_access.json()["error"]["code"] == "token_revoked"
    assert old_refresh.status_code == 401
    assert fresh_me.status_code == 200
    assert unauthenticated.status_code == 401


def test_logout_all_publishes_the_revocation_for_gateways(
    tmp_path: Path, redis_server: Any
) -> None:
    import redis as redis_sync

    from shared.revocation import CHANNEL, Revocation, key_for

    service = launch_auth(tmp_path, redis=redis_server)
    listener = redis_sync.Redis.from_url(redis_server.url)
    pubsub = listener.pubsub()
    try:
        pubsub.subscribe(CHANNEL)
        assert pubsub.get_message(timeout=2)["type"] == "subscribe"
        with service.client() as client:
            user = service.register(client, "pubbed")
            pair = service.login(client, "pubbed")
            assert (
                client.post(
                    "/v1/auth/logout-all", headers=_bearer(pair["access_token"])
                ).status_code
                == 204
            )
        message = pubsub.get_message(timeout=5)
        assert message is not None and message["type"] == "message"
        revocation = Revocation.decode(message["data"])
        assert revocation.sub == user["id"]
        assert revocation.revoked_before > _segment(pair["access_token"], 1)["iat"]
        assert int(listener.get(key_for(user["id"]))) == revocation.revoked_before
        assert 0 < listener.ttl(key_for(user["id"])) <= 900 + 60
    finally:
        pubsub.close()
        listener.close()
        service.process.stop()


# --- operations ---------------------------------------------------------------------------


def test_discovery_health_and_metrics(shared_auth: AuthService) -> None:
    with shared_auth.client() as client:
        discovery = client.get("/.well-known/openid-configuration").json()
        jwks = client.get("/.well-known/jwks.json")
        ready = client.get("/readyz")
        metrics = client.get("/metrics")
    assert discovery["issuer"] == shared_auth.url
    assert discovery["jwks_uri"] == f"{shared_auth.url}/.well-known/jwks.json"
    assert discovery["token_endpoint"].startswith(shared_auth.url)
    assert "max-age=" in jwks.headers["cache-control"]
    for key in jwks.json()["keys"]:
        assert not {"d", "p", "q", "dp", "dq", "qi"} & set(key)
    assert ready.status_code == 200 and ready.json()["checks"] == {"keys": "ok", "database": "ok"}
    assert metrics.headers["content-type"].startswith("text/plain")
    for name in (
        "auth_http_requests_total",
        "auth_http_request_duration_seconds",
        "auth_logins_total",
        "auth_registrations_total",
        "auth_refreshes_total",
        "auth_tokens_issued_total",
    ):
        assert name in metrics.text
    assert 'route="/v1/auth/login"' in metrics.text


def test_logs_hold_no_passwords_or_tokens(tmp_path: Path) -> None:
    service = launch_auth(tmp_path, LOG_LEVEL="DEBUG")
    try:
        with service.client() as client:
            service.register(client, "logged", password="very-secret-pw-123")
            pair = service.login(client, "logged", password="very-secret-pw-123")
            client.post(
                "/v1/auth/login", json={"username": "logged", "password": "wrong-secret-456"}
            )
            client.post("/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]})
            client.post("/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]})  # reuse
            client.post("/v1/auth/logout-all", headers=_bearer(pair["access_token"]))
    finally:
        service.process.stop()
    logs = service.process.logs()
    assert "login failed" in logs and "refresh token reuse detected" in logs
    for secret in (
        "very-secret-pw-123",
        "wrong-secret-456",
        pair["refresh_token"],
        pair["access_token"],
    ):
        assert secret not in logs
    assert "Traceback" not in logs
    for line in logs.splitlines():
        json.loads(line)  # structured: every line is one JSON object


def test_rehash_on_login_when_parameters_change(tmp_path: Path) -> None:
    service = launch_auth(tmp_path)
    with service.client() as client:
        service.register(client, "rehash_me")
    service.process.stop()
    with sqlite3.connect(service.db_path) as db:
        (old_hash,) = db.execute("SELECT password_hash FROM users").fetchone()
    assert "m=8192,t=1" in old_hash
    service = launch_auth(tmp_path, AUTH_ARGON2_MEMORY_KIB="9216", AUTH_ARGON2_TIME_COST="2")
    try:
        with service.client() as client:
            service.login(client, "rehash_me")
    finally:
        service.process.stop()
    with sqlite3.connect(service.db_path) as db:
        (new_hash,) = db.execute("SELECT password_hash FROM users").fetchone()
    assert new_hash.startswith("$argon2id$") and "m=9216,t=2" in new_hash


def test_locked_database_answers_503_quickly_and_recovers(tmp_path: Path) -> None:
    """SECURITY 32: the database unavailable is a clear 503, never a hang or a 500."""
    service = launch_auth(tmp_path)
    try:
        with service.client() as client:
            service.register(client, "before_lock")
            locker = sqlite3.connect(service.db_path, isolation_level=None)
            locker.execute("BEGIN EXCLUSIVE")
            try:
                started = time.monotonic()
                locked = client.post(
                    "/v1/auth/register",
                    json={
                        "username": "during_lock",
                        "email": "d@example.com",
                        "password": PASSWORD,
                    },
                )
                elapsed = time.monotonic() - started
                login = client.post(
                    "/v1/auth/login", json={"username": "before_lock", "password": PASSWORD}
                )
            finally:
                locker.execute("ROLLBACK")
                locker.close()
            after = client.post(
                "/v1/auth/register",
                json={"username": "during_lock", "email": "d@example.com", "password": PASSWORD},
            )
    finally:
        service.process.stop()
    assert locked.status_code == 503
    assert locked.json()["error"]["code"] == "unavailable"
    assert "Retry-After" in locked.headers
    assert elapsed < 10
    assert login.status_code == 503
    assert after.status_code == 201
    assert "Traceback" not in locked.text
