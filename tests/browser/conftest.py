"""The demo in a real browser: Debian's Chromium driven by Playwright, against real processes.

One cluster for the module: Redis, the auth service serving the demo (short access tokens, so
a refresh happens within a test), and two gateway replicas that accept the page's origin and
no other. Chromium is the system's (``apt-get install chromium``): Playwright's own browser
downloads are never used. Each test gets fresh browser contexts (a clean profile each).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from playwright.sync_api import sync_playwright

from tests.auth.conftest import AuthService, launch_auth
from tests.support.processes import Process, RedisServer, free_port, start_service

ACCESS_TTL = 40  # the smallest the auth service allows is 30
REFRESH_MARGIN = 30  # so the page refreshes ~10 s after logging in
PASSWORD = "correct horse battery"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
FANOUT_CHANNEL = "sockgate:socketio"


@dataclass
class DemoCluster:
    """The running processes and where the page is."""

    redis: RedisServer
    auth: AuthService
    gateways: list[str]
    spare_port: int
    workdir: Path
    processes: list[Process]

    @property
    def page_url(self) -> str:
        return f"{self.auth.url}/demo/"

    @property
    def spare_url(self) -> str:
        """A third replica the page knows of, started and stopped by the tests that use it."""
        return f"http://127.0.0.1:{self.spare_port}"

    def start_spare(self) -> Process:
        return _start_gateway(self.spare_port, self.auth, self.redis.url, self.workdir)

    def publish_notification(self, room: str, data: dict[str, Any]) -> None:
        """What a backend does: a ``notification`` to a policy room, fanned out by Redis.

        Written on the gateways' fan-out channel in the shape they accept (see
        services/gateway/fanout.py); every replica delivers it to its local members.
        """
        message = {
            "method": "emit",
            "event": "notification",
            "data": [data],
            "namespace": "/",
            "room": room,
            "skip_sid": None,
            "callback": None,
            "host_id": "browser-test-backend",
        }
        client = redis.Redis.from_url(self.redis.url, socket_timeout=5)
        try:
            receivers = client.publish(FANOUT_CHANNEL, orjson.dumps(message))
        finally:
            client.close()
        assert receivers >= len(self.gateways), "every gateway should be subscribed"


def _start_gateway(port: int, auth: AuthService, redis_url: str, workdir: Path) -> Process:
    env = {
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(port),
        "JWT_ISSUER": auth.url,
        "REDIS_URL": redis_url,
        # The page's origin and nothing wider.
        "GATEWAY_CORS_ORIGINS": auth.url,
        "LOG_LEVEL": "INFO",
    }
    url = f"http://127.0.0.1:{port}"
    return start_service("services.gateway", env, workdir / f"gateway-{port}.log", f"{url}/readyz")


@pytest.fixture(scope="module")
def demo_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoCluster]:
    """Redis, the auth service with the demo, two gateways (module-wide; stopped by pid)."""
    workdir = tmp_path_factory.mktemp("demo")
    processes: list[Process] = []
    redis_server = RedisServer(free_port(), workdir).start()
    try:
        ports = [free_port(), free_port()]
        spare_port = free_port()
        gateways = [f"http://127.0.0.1:{port}" for port in ports]
        auth = launch_auth(
            workdir,
            redis=redis_server,
            AUTH_DEMO="true",
            AUTH_DEMO_GATEWAYS=",".join([*gateways, f"http://127.0.0.1:{spare_port}"]),
            AUTH_ACCESS_TTL=str(ACCESS_TTL),
            AUTH_IP_RATE_PER_MINUTE="100000",
            AUTH_IP_BURST="10000",
        )
        processes.append(auth.process)
        for port in ports:
            processes.append(_start_gateway(port, auth, redis_server.url, workdir))
        yield DemoCluster(redis_server, auth, gateways, spare_port, workdir, processes)
    finally:
        for process in reversed(processes):
            process.stop()
        redis_server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Debian Chromium (never a downloaded browser).

    Module-scoped on purpose: while sync Playwright runs, its event loop counts as running in
    this thread, which breaks every asyncio test after it in the session.
    """
    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail("Chromium is required: apt-get install -y chromium")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS, timeout=30_000
        )
        yield launched
        launched.close()


@pytest.fixture
def new_context(browser: Any) -> Iterator[Any]:
    """Makes fresh browser contexts (a clean profile each: two contexts are two people)."""
    contexts: list[Any] = []

    def make() -> Any:
        context = browser.new_context(viewport={"width": 1360, "height": 820})
        context.set_default_timeout(15_000)
        contexts.append(context)
        return context

    yield make
    for context in contexts:
        context.close()
