"""A real auth service under uvicorn on a loopback port, and a client for it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.processes import Process, RedisServer, free_port, start_service

FAST_HASH = {
    # Tests use cheaper argon2 parameters; the production defaults are measured in the note.
    "AUTH_ARGON2_MEMORY_KIB": "8192",
    "AUTH_ARGON2_TIME_COST": "1",
}


@dataclass
class AuthService:
    """A running auth service: its URL, key folder, database file and process."""

    url: str
    keys_dir: Path
    db_path: Path
    process: Process

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)

    def register(
        self, client: httpx.Client, name: str, password: str = "s3cret-pass!"
    ) -> dict[str, Any]:
        response = client.post(
            "/v1/auth/register",
            json={"username": name, "email": f"{name}@example.com", "password": password},
        )
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    def login(
        self, client: httpx.Client, name: str, password: str = "s3cret-pass!"
    ) -> dict[str, Any]:
        response = client.post("/v1/auth/login", json={"username": name, "password": password})
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


def launch_auth(tmp_path: Path, *, redis: RedisServer | None = None, **env: str) -> AuthService:
    """Starts ``python -m services.auth`` with a fresh SQLite file and key folder."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    keys_dir = tmp_path / "keys"
    db_path = tmp_path / "auth.db"
    full_env = {
        "AUTH_HOST": "127.0.0.1",
        "AUTH_PORT": str(port),
        "AUTH_ISSUER": url,
        "AUTH_DATABASE_URL": f"sqlite:///{db_path}",
        "AUTH_KEYS_DIR": str(keys_dir),
        **FAST_HASH,
        **env,
    }
    if redis is not None:
        full_env["REDIS_URL"] = redis.url
    process = start_service("services.auth", full_env, tmp_path / "auth.log", f"{url}/healthz")
    return AuthService(url, keys_dir, db_path, process)


@pytest.fixture
def auth_service(tmp_path: Path) -> Iterator[AuthService]:
    """A fresh auth service per test (its own database and keys)."""
    service = launch_auth(tmp_path)
    yield service
    service.process.stop()


@pytest.fixture(scope="module")
def shared_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthService]:
    """One auth service for a module's tests that don't disturb each other."""
    service = launch_auth(tmp_path_factory.mktemp("auth"))
    yield service
    service.process.stop()
