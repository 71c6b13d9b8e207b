"""Real processes for the gateway tests: Redis, the auth service, gateway replicas.

The session-wide ``cluster`` (one Redis, one auth service, two replicas) serves every test
that leaves it as it found it: tests use their own users and rooms. Tests that kill, drain or
overload a replica start their own processes with ``Stack.gateway(...)`` / ``Stack.redis()``.

The auth service's key folder is seeded with a key the tests hold, so they can mint tokens the
gateways accept (and forge ones they must refuse) besides logging in for real ones.
"""

from __future__ import annotations

import itertools
import json
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from tests.gateway.clients import NodeClients, PyClient, node_available
from tests.support.keys import mint, new_rsa_key, thumbprint_kid, write_key
from tests.support.processes import Process, RedisServer, free_port, start_service

AUDIENCE = "gateway"
ALLOWED_ORIGIN = "http://allowed.example"
PASSWORD = "correct horse battery staple"
# The backend the auth service grants service tokens (scope publish) in every test stack.
SERVICE_CLIENT = "backend"
SERVICE_SECRET = "test-backend-secret-0123456789abcdef"

# Settings every test replica runs with: a short leeway and warning lead so expiry tests are
# quick, a short unknown-kid cooldown so rotation is picked up at once, few rooms a socket.
GATEWAY_ENV = {
    "JWT_AUDIENCE": AUDIENCE,
    "JWT_LEEWAY": "1",
    "JWKS_UNKNOWN_KID_COOLDOWN": "0.2",
    "GATEWAY_TOKEN_EXPIRING_LEAD": "2",
    "GATEWAY_CORS_ORIGINS": ALLOWED_ORIGIN,
    "GATEWAY_REDIS_RETRY_MAX": "0.5",
    "GATEWAY_MAX_ROOMS_PER_SOCKET": "10",
    "GATEWAY_DRAIN_DELAY": "0.1",
    "GATEWAY_DRAIN_SPREAD": "0.3",
    "LOG_LEVEL": "INFO",
}
AUTH_ENV = {
    "AUTH_ARGON2_MEMORY_KIB": "8192",
    "AUTH_ARGON2_TIME_COST": "1",
    "AUTH_IP_RATE_PER_MINUTE": "100000",
    "AUTH_IP_BURST": "10000",
    "AUTH_LOGIN_FREE_FAILURES": "100",
    "AUTH_SERVICE_CLIENTS": json.dumps(
        [{"id": SERVICE_CLIENT, "secret": SERVICE_SECRET, "scopes": ["publish"]}]
    ),
}
_names = itertools.count(1)


def without_channel_access(server: RedisServer) -> str:
    """A URL of ``server`` for an ACL user that may run any command on any key, but may not
    publish or subscribe to any channel (Redis answers ``NOPERM``)."""
    with redis.Redis.from_url(server.url) as admin:
        admin.execute_command(
            "ACL", "SETUSER", "nochannels", "on", ">pw", "~*", "+@all", "resetchannels"
        )
    return server.url.replace("redis://", "redis://nochannels:pw@")


def unique(prefix: str) -> str:
    """A name no other test uses (users, rooms)."""
    return f"{prefix}{next(_names)}x{uuid.uuid4().hex[:6]}"


@dataclass
class Signer:
    """A private key the issuer publishes, for minting tokens in tests."""

    key: RSAPrivateKey
    kid: str
    issuer: str

    def token(self, sub: str | None = None, **kwargs: Any) -> str:
        """A valid access token (override anything with ``kwargs``; see ``mint``)."""
        kwargs.setdefault("audience", AUDIENCE)
        return mint(self.key, kid=self.kid, issuer=self.issuer, sub=sub or unique("u"), **kwargs)

    def service_token(self, client: str = SERVICE_CLIENT, scope: str = "publish") -> str:
        """A token shaped like the auth service's client-credentials grant issues."""
        return self.token(f"client:{client}", name=client, scope=scope, client_id=client)


@dataclass
class Auth:
    """A running auth service with a seeded signing key."""

    url: str
    keys_dir: Path
    process: Process
    signer: Signer

    @property
    def jwks_url(self) -> str:
        return f"{self.url}/.well-known/jwks.json"

    def register_and_login(self, username: str | None = None) -> tuple[str, str]:
        """A new user and a real access token for it: ``(username, token)``."""
        name = username or unique("user")
        with httpx.Client(base_url=self.url, timeout=30) as client:
            response = client.post(
                "/v1/auth/register",
                json={"username": name, "email": f"{name}@example.com", "password": PASSWORD},
            )
            assert response.status_code == 201, response.text
        return name, self.login(name)

    def login(self, username: str) -> str:
        """A fresh access token for an existing user."""
        with httpx.Client(base_url=self.url, timeout=30) as client:
            response = client.post(
                "/v1/auth/login", json={"username": username, "password": PASSWORD}
            )
            assert response.status_code == 200, response.text
            return str(response.json()["access_token"])

    def service_token(self) -> str:
        """A real service token: the client-credentials grant with HTTP Basic credentials."""
        with httpx.Client(base_url=self.url, timeout=30) as client:
            response = client.post(
                "/v1/auth/token",
                data={"grant_type": "client_credentials"},
                auth=(SERVICE_CLIENT, SERVICE_SECRET),
            )
            assert response.status_code == 200, response.text
            body = response.json()
        assert body["token_type"] == "Bearer" and body["scope"] == "publish", body
        return str(body["access_token"])

    def logout_all(self, token: str) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            response = client.post(
                "/v1/auth/logout-all", headers={"Authorization": f"Bearer {token}"}
            )
            assert response.status_code == 204, response.text

    def rotate(self) -> Signer:
        """Adds a newer key; the auth service signs with it from now on."""
        key = new_rsa_key()
        write_key(self.keys_dir, key, created=int(time.time()) + 1)
        return Signer(key, thumbprint_kid(key), self.signer.issuer)


@dataclass
class Gateway:
    """A running replica."""

    port: int
    process: Process

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=5, **kwargs)

    def metric(self, name: str, **labels: str) -> float:
        """One sample from /metrics (0 when absent)."""
        wanted = name + (
            "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else ""
        )
        for line in self.get("/metrics").text.splitlines():
            sample, _, value = line.rpartition(" ")
            if sample == wanted:
                return float(value)
        return 0.0

    def logs(self) -> str:
        return self.process.logs()


@dataclass
class Stack:
    """Starts processes for one fixture and stops them all, by pid, at the end."""

    workdir: Path
    processes: list[Process | RedisServer] = field(default_factory=list)

    def redis(self, port: int | None = None) -> RedisServer:
        path = self.workdir / f"redis-{next(_names)}"
        path.mkdir()
        server = RedisServer(port or free_port(), path).start()
        self.processes.append(server)
        return server

    def auth(self, redis: RedisServer | None) -> Auth:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        keys_dir = self.workdir / "auth-keys"
        key = new_rsa_key()
        write_key(keys_dir, key, created=int(time.time()) - 60)
        env = {
            "AUTH_HOST": "127.0.0.1",
            "AUTH_PORT": str(port),
            "AUTH_ISSUER": url,
            "AUTH_AUDIENCE": AUDIENCE,
            "AUTH_DATABASE_URL": f"sqlite:///{self.workdir / 'auth.db'}",
            "AUTH_KEYS_DIR": str(keys_dir),
            **AUTH_ENV,
        }
        if redis is not None:
            env["REDIS_URL"] = redis.url
        process = start_service("services.auth", env, self.workdir / "auth.log", f"{url}/healthz")
        self.processes.append(process)
        return Auth(url, keys_dir, process, Signer(key, thumbprint_kid(key), url))

    def gateway(
        self,
        auth: Auth,
        redis: RedisServer | None,
        *,
        ready: bool = True,
        port: int | None = None,
        **env: str,
    ) -> Gateway:
        port = port or free_port()
        full_env = {
            **GATEWAY_ENV,
            "GATEWAY_HOST": "127.0.0.1",
            "GATEWAY_PORT": str(port),
            "JWT_ISSUER": auth.url,
            "JWKS_URL": auth.jwks_url,
            **env,
        }
        if redis is not None:
            full_env["REDIS_URL"] = redis.url
        log_path = self.workdir / f"gateway-{port}.log"
        health = f"http://127.0.0.1:{port}/{'readyz' if ready else 'healthz'}"
        process = start_service("services.gateway", full_env, log_path, health)
        self.processes.append(process)
        return Gateway(port, process)

    def stop(self) -> None:
        """SIGTERM to every process at once (they drain in parallel), then wait for each."""
        for item in self.processes:
            proc = item.process if isinstance(item, RedisServer) else item
            if proc is not None:
                proc.signal(signal.SIGTERM)
        for item in reversed(self.processes):
            item.stop()


@dataclass
class Cluster:
    """Redis, the auth service and two gateway replicas."""

    redis: RedisServer
    auth: Auth
    a: Gateway
    b: Gateway

    @property
    def signer(self) -> Signer:
        return self.auth.signer


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of the test's own, to freeze or reconfigure without touching the others."""
    server = RedisServer(free_port(), tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """Processes for one test."""
    processes = Stack(tmp_path)
    yield processes
    processes.stop()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The shared cluster (see the module doc)."""
    processes = Stack(tmp_path_factory.mktemp("cluster"))
    try:
        redis = processes.redis()
        auth = processes.auth(redis)
        a = processes.gateway(auth, redis)
        b = processes.gateway(auth, redis)
        yield Cluster(redis, auth, a, b)
    finally:
        processes.stop()


@pytest.fixture
async def node() -> AsyncIterator[NodeClients]:
    """The official socket.io-client, driven from the test."""
    if not node_available():
        pytest.fail("node and node_modules/socket.io-client are required: run `npm ci`")
    async with NodeClients.start() as clients:
        yield clients


@pytest.fixture
async def py_clients() -> AsyncIterator[list[PyClient]]:
    """python-socketio clients made by the test; all closed at the end."""
    made: list[PyClient] = []
    yield made
    for client in made:
        await client.close()
