"""The load balancer's nginx config: ``nginx -t``, then real requests through a real nginx.

The backends here are stand-ins that echo what they received, so the routing, the headers and
the choice between the sticky and the balanced gateway pool can be checked exactly. The real
services behind the same config are in test_stack.py.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.deploy.lb import LbPorts, check_config, running_nginx, write_test_config
from tests.support.processes import free_port

TIMEOUT = 5.0


@dataclass(frozen=True)
class LoadBalancer:
    """A running test nginx: its ports and the folder with its config and certificate."""

    ports: LbPorts
    home: Path


class _Echo(BaseHTTPRequestHandler):
    """A stand-in backend: answers with its name, the path and the headers it received."""

    server_version = "echo"

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        body = json.dumps(
            {
                "backend": self.server.name,  # type: ignore[attr-defined]
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
            }
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: pytest shows failures, not access logs."""


@pytest.fixture(scope="module")
def backends() -> Iterator[dict[str, int]]:
    """Three echo servers (sticky gateway pool, balanced gateway pool, auth) by name → port."""
    servers = []
    for name in ("sticky", "balanced", "auth"):
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
        server.name = name  # type: ignore[attr-defined]
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
    yield {s.name: s.server_address[1] for s in servers}  # type: ignore[attr-defined]
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def lb(
    tmp_path_factory: pytest.TempPathFactory, backends: dict[str, int]
) -> Iterator[LoadBalancer]:
    """A real nginx running the test copy of the config."""
    home = tmp_path_factory.mktemp("nginx")
    ports = LbPorts(
        https=free_port(),
        internal=free_port(),
        sticky=(backends["sticky"],),
        balanced=(backends["balanced"],),
        auth=(backends["auth"],),
    )
    with running_nginx(home, ports):
        yield LoadBalancer(ports, home)


def _request(
    lb: LoadBalancer,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> tuple[int, dict[str, str], bytes]:
    # Verified against the throwaway certificate: TLS is really terminated by nginx.
    context = ssl.create_default_context(cafile=str(lb.home / "tls.crt"))
    conn = http.client.HTTPSConnection(
        "127.0.0.1", lb.ports.https, timeout=TIMEOUT, context=context
    )
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def _backend(body: bytes) -> dict[str, object]:
    data = json.loads(body)
    assert isinstance(data, dict)
    return data


def test_nginx_accepts_the_config(tmp_path: Path) -> None:
    ports = LbPorts(8443, 8081, (8001, 8002), (8001, 8002), (8000,))
    result = check_config(tmp_path, write_test_config(tmp_path, ports))
    assert result.returncode == 0, result.stderr


def test_socketio_goes_to_the_gateways_with_forwarded_headers(lb: LoadBalancer) -> None:
    status, _, body = _request(
        lb,
        "GET",
        "/socket.io/?EIO=4&transport=polling",
        headers={"X-Forwarded-For": "6.6.6.6", "Origin": "https://127.0.0.1"},
    )
    assert status == 200
    seen = _backend(body)
    assert seen["backend"] == "sticky", "long-polling must be sticky"
    assert seen["path"] == "/socket.io/?EIO=4&transport=polling"
    headers = seen["headers"]
    assert isinstance(headers, dict)
    # Replaced, not appended: a client cannot choose the address the auth service throttles.
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-forwarded-proto"] == "https"
    assert headers["host"] == f"127.0.0.1:{lb.ports.https}"


def test_websocket_upgrade_headers_reach_the_gateway(lb: LoadBalancer) -> None:
    upgrade = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}  # fmt: skip
    # A fresh WebSocket session needs no stickiness: the least-loaded replica takes it.
    _, _, body = _request(lb, "GET", "/socket.io/?EIO=4&transport=websocket", upgrade)
    seen = _backend(body)
    assert seen["backend"] == "balanced"
    headers = seen["headers"]
    assert isinstance(headers, dict)
    assert headers["upgrade"] == "websocket"
    assert headers["connection"].lower() == "upgrade"
    # An upgrade of a polling session (it has a sid) must reach the replica that holds it.
    path = "/socket.io/?EIO=4&transport=websocket&sid=abc"
    _, _, body = _request(lb, "GET", path, upgrade)
    assert _backend(body)["backend"] == "sticky"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/auth/login"),
        ("POST", "/v1/auth/refresh"),
        ("GET", "/v1/users/me"),
        ("GET", "/.well-known/jwks.json"),
        ("GET", "/.well-known/openid-configuration"),
    ],
)
def test_auth_routes_go_to_the_auth_service(lb: LoadBalancer, method: str, path: str) -> None:
    status, _, body = _request(lb, method, path, body=b"{}" if method == "POST" else None)
    assert status == 200
    seen = _backend(body)
    assert seen["backend"] == "auth"
    assert seen["path"] == path


@pytest.mark.parametrize("path", ["/metrics", "/readyz", "/v1/publish", "/"])
def test_internal_routes_are_not_public(lb: LoadBalancer, path: str) -> None:
    status, _, _ = _request(lb, "GET", path)
    assert status == 404


def test_plain_http_is_redirected_to_https(lb: LoadBalancer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", lb.ports.https, timeout=TIMEOUT)
    try:
        conn.request("GET", "/v1/users/me")
        response = conn.getresponse()
        assert response.status == 308
        assert response.getheader("location") == f"https://127.0.0.1:{lb.ports.https}/v1/users/me"
    finally:
        conn.close()


def test_health_endpoints(lb: LoadBalancer) -> None:
    status, _, body = _request(lb, "GET", "/healthz")
    assert (status, body) == (200, b"ok\n")
    conn = http.client.HTTPConnection("127.0.0.1", lb.ports.internal, timeout=TIMEOUT)
    try:
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
    finally:
        conn.close()
