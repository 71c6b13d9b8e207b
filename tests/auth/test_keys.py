"""Signing keys end to end: first key, rotation under load, pruning, several workers.

The service runs as a real process; ``python -m services.auth keys …`` runs beside it on the
same folder, as an operator would. The helpers of ``services.auth.keys`` are unit-tested last.
"""

from __future__ import annotations

import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from services.auth.keys import (
    KeyFolderError,
    SigningKey,
    expired_keys,
    generate_key,
    key_filename,
    load_keys,
    retirement_times,
)
from tests.auth.conftest import AuthService, launch_auth
from tests.support.keys import mint, new_rsa_key, private_pem, thumbprint_kid, write_key
from tests.support.processes import ROOT

PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}
ACCESS_TTL = 900  # AUTH_ACCESS_TTL's default, which the services below run with
DAY = 86400

T = TypeVar("T")


def keys_cli(service: AuthService, action: str) -> str:
    """Runs ``python -m services.auth keys ACTION`` with the service's own environment."""
    run = subprocess.run(
        [sys.executable, "-m", "services.auth", "keys", action],
        env=service.process.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


def eventually(probe: Callable[[], T | None], timeout: float = 3.0) -> T:
    """Polls ``probe`` until it returns something other than ``None``."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"not reached within {timeout}s")
        time.sleep(0.05)


def pem_files(keys_dir: Path) -> list[Path]:
    return sorted(keys_dir.glob("*.pem"))


def jwks_kids(client: httpx.Client) -> list[str]:
    return [key["kid"] for key in client.get("/.well-known/jwks.json").json()["keys"]]


def signing_kid(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


def me_status(client: httpx.Client, token: str) -> int:
    return client.get("/v1/users/me", headers={"Authorization": f"Bearer {token}"}).status_code


# (a) A fresh folder gets one key, published without a private member.


def test_a_fresh_folder_gets_one_private_key_and_publishes_only_its_public_part(
    auth_service: AuthService,
) -> None:
    [path] = pem_files(auth_service.keys_dir)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(auth_service.keys_dir.stat().st_mode) & 0o077 == 0
    private_key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(private_key, RSAPrivateKey)
    assert private_key.key_size == 2048

    response = httpx.get(f"{auth_service.url}/.well-known/jwks.json")
    assert response.status_code == 200
    [jwk] = response.json()["keys"]
    assert set(jwk) == {"kid", "kty", "use", "alg", "n", "e"}
    assert not PRIVATE_MEMBERS & set(jwk)
    assert (jwk["kty"], jwk["use"], jwk["alg"]) == ("RSA", "sig", "RS256")
    assert jwk["kid"] == thumbprint_kid(private_key)
    assert path.name.endswith(f"-{jwk['kid']}.pem")
    cache_control = response.headers["cache-control"]
    assert "max-age=" in cache_control
    assert int(cache_control.split("max-age=")[1].split(",")[0]) > 0


# (b) Rotation while the service runs.


def test_rotate_takes_effect_without_restart_and_old_tokens_keep_working(
    auth_service: AuthService,
) -> None:
    with auth_service.client() as client:
        auth_service.register(client, "rotator")
        old_token = auth_service.login(client, "rotator")["access_token"]
        [old_kid] = jwks_kids(client)
        assert signing_kid(old_token) == old_kid

        out = keys_cli(auth_service, "rotate")
        [new_path] = [p for p in pem_files(auth_service.keys_dir) if old_kid not in p.name]
        new_kid = new_path.name.removesuffix(".pem").split("-", 1)[1]
        assert new_kid in out
        assert stat.S_IMODE(new_path.stat().st_mode) == 0o600

        # The running service notices the folder changed (checked at most once a second).
        def both_published() -> list[str] | None:
            kids = jwks_kids(client)
            return kids if len(kids) == 2 else None

        def signed_with_new_key() -> str | None:
            token = str(auth_service.login(client, "rotator")["access_token"])
            return token if signing_kid(token) == new_kid else None

        started = time.monotonic()
        assert eventually(both_published) == [new_kid, old_kid]  # newest first
        new_token = eventually(signed_with_new_key)
        assert time.monotonic() - started < 2.5
        assert me_status(client, old_token) == 200
        assert me_status(client, new_token) == 200


# (c) Pruning deletes only what no live token can need.


def test_prune_deletes_only_the_expired_retired_key(tmp_path: Path) -> None:
    now = int(time.time())
    keys_dir = tmp_path / "keys"
    expired, retired, signer = new_rsa_key(), new_rsa_key(), new_rsa_key()
    # `expired` was retired 9 days ago (when `retired` was created): all its tokens are dead.
    # `retired` was retired 10 s ago (when `signer` was created): its tokens may still live.
    write_key(keys_dir, expired, created=now - 10 * DAY)
    write_key(keys_dir, retired, created=now - 9 * DAY)
    write_key(keys_dir, signer, created=now - 10)
    expired_kid, retired_kid, signer_kid = map(thumbprint_kid, (expired, retired, signer))

    service = launch_auth(tmp_path)
    try:
        with service.client() as client:
            assert jwks_kids(client) == [signer_kid, retired_kid]
            user = service.register(client, "pruned")
            forged = mint(
                expired,
                kid=expired_kid,
                issuer=service.url,
                audience="gateway",
                sub=user["id"],
                name="pruned",
            )
            # Still on disk but no longer published: the service trusts only what it publishes.
            assert me_status(client, forged) == 401
            still_live = mint(
                retired,
                kid=retired_kid,
                issuer=service.url,
                audience="gateway",
                sub=user["id"],
                name="pruned",
            )
            assert me_status(client, still_live) == 200
            assert signing_kid(service.login(client, "pruned")["access_token"]) == signer_kid

            listing = keys_cli(service, "list")
            states = {line.split()[0]: line.split()[-1] for line in listing.splitlines()[1:]}
            assert states[signer_kid] == "signing"
            assert states[retired_kid] == "published"
            assert "expired (prune)" in next(
                line for line in listing.splitlines() if expired_kid in line
            )

            out = keys_cli(service, "prune")
            assert f"pruned {expired_kid}" in out
            assert retired_kid not in out and signer_kid not in out
            assert {p.name.split("-", 1)[1] for p in pem_files(keys_dir)} == {
                f"{retired_kid}.pem",
                f"{signer_kid}.pem",
            }
            assert me_status(client, forged) == 401
            assert me_status(client, still_live) == 200
            assert "nothing to prune" in keys_cli(service, "prune")
            listing = keys_cli(service, "list")
            assert expired_kid not in listing
            assert jwks_kids(client) == [signer_kid, retired_kid]
    finally:
        service.process.stop()


# (d) Several workers share one folder, hence one signer.


def test_two_workers_on_a_fresh_folder_sign_with_one_key(tmp_path: Path) -> None:
    service = launch_auth(tmp_path, AUTH_WORKERS="2", AUTH_IP_BURST="1000")
    try:
        with service.client() as client:
            service.register(client, "workers")
            kids = set()
            # A fresh connection each, so the kernel spreads them over both workers.
            for _ in range(20):
                with service.client() as fresh:
                    kids.add(signing_kid(service.login(fresh, "workers")["access_token"]))
            assert len(kids) == 1
            [path] = pem_files(service.keys_dir)
            assert kids == {path.name.removesuffix(".pem").split("-", 1)[1]}
            assert jwks_kids(client) == list(kids)
    finally:
        service.process.stop()


# (e) Unit tests of the folder rules.


@pytest.fixture(scope="module")
def rsa_key() -> RSAPrivateKey:
    return new_rsa_key()


def _key(kid: str, created: int, private_key: RSAPrivateKey) -> SigningKey:
    return SigningKey(kid, created, private_key, Path(key_filename(created, kid)))


def test_retirement_times_are_the_next_keys_creation(rsa_key: RSAPrivateKey) -> None:
    keys = [_key("a", 100, rsa_key), _key("b", 200, rsa_key), _key("c", 300, rsa_key)]
    assert retirement_times(keys) == {"a": 200, "b": 300, "c": None}
    assert retirement_times(keys[:1]) == {"a": None}
    assert retirement_times([]) == {}


def test_expired_keys_are_retired_for_longer_than_a_token_lives(
    rsa_key: RSAPrivateKey,
) -> None:
    keys = [_key("a", 100, rsa_key), _key("b", 200, rsa_key), _key("c", 300, rsa_key)]
    margin = 60  # the leeway verifiers allow

    def kids(now: float) -> list[str]:
        return [k.kid for k in expired_keys(keys, access_ttl=ACCESS_TTL, now=now)]

    assert kids(now=200 + ACCESS_TTL + margin - 1) == []
    assert kids(now=200 + ACCESS_TTL + margin) == ["a"]
    assert kids(now=300 + ACCESS_TTL + margin) == ["a", "b"]
    assert kids(now=10**12) == ["a", "b"]  # the signer never expires
    assert expired_keys(keys[-1:], access_ttl=ACCESS_TTL, now=10**12) == []


def test_load_keys_ignores_badly_named_files(tmp_path: Path, rsa_key: RSAPrivateKey) -> None:
    good = write_key(tmp_path, rsa_key, created=1_700_000_000)
    pem = private_pem(rsa_key)
    for name in (
        "notes.pem",
        "key.pem",
        "1700000000-short.pem",
        f"x-{thumbprint_kid(rsa_key)}.pem",
    ):
        (tmp_path / name).write_bytes(pem)
    (tmp_path / "README").write_text("not a key")

    [loaded] = load_keys(tmp_path)

    assert loaded.path == good
    assert loaded.kid == thumbprint_kid(rsa_key)
    assert loaded.created == 1_700_000_000


def test_load_keys_refuses_a_file_named_after_another_key(
    tmp_path: Path, rsa_key: RSAPrivateKey
) -> None:
    impostor_name = key_filename(1_700_000_000, thumbprint_kid(new_rsa_key()))
    (tmp_path / impostor_name).write_bytes(private_pem(rsa_key))

    with pytest.raises(KeyFolderError, match="thumbprint"):
        load_keys(tmp_path)


def test_load_keys_refuses_a_weak_key(tmp_path: Path) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - to be refused
    (tmp_path / key_filename(1_700_000_000, thumbprint_kid(weak))).write_bytes(private_pem(weak))

    with pytest.raises(KeyFolderError, match="2048"):
        load_keys(tmp_path)


def test_generate_key_makes_the_newest_key_even_within_one_second(tmp_path: Path) -> None:
    first = generate_key(tmp_path, now=1_700_000_000)
    second = generate_key(tmp_path, now=1_700_000_000)

    assert second.created == first.created + 1
    assert [k.kid for k in load_keys(tmp_path)] == [first.kid, second.kid]
    assert all(stat.S_IMODE(k.path.stat().st_mode) == 0o600 for k in (first, second))
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind
