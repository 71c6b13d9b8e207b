"""The local cluster behind a real nginx (the Debian package), end to end.

nginx runs as a child process with a throwaway config (everything under the test's tmp dir,
``daemon off``), in front of the auth service and two gateway replicas, routed the way
deploy/nginx/nginx.conf routes them:

- ``/v1/auth/``, ``/v1/users/``, ``/.well-known/`` to the auth service;
- ``/socket.io/`` to the gateways: a WebSocket that opens without an Engine.IO ``sid`` (clients
  with ``transports: ["websocket"]``) to the least-loaded replica, since it needs no
  stickiness; everything else (long-polling, and the upgrade of a polling session) hashed on
  the client address, so a session keeps reaching the replica that holds it;
- WebSocket upgrade headers passed through (``map $http_upgrade $connection_upgrade``).

The official Node client (over WebSocket, over long-polling, and polling upgraded to
WebSocket) and a python-socketio client exchange messages through it. Then the replica that
holds the polling sessions gets SIGTERM: the clients it held reconnect through nginx to the
other replica and keep messaging. A replacement starts on the first one's port and the other
replica gets SIGTERM too: now every client moves, and messaging goes on.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import signal

import httpx
import pytest

from tests.gateway.clients import NodeClients, PyClient
from tests.gateway.conftest import PASSWORD, Auth, Gateway, Stack, unique
from tests.support.processes import Process, free_port, wait_http_ok

NGINX_CONF = """
daemon off;
worker_processes 1;
{user}
pid {dir}/nginx.pid;
error_log {dir}/error.log notice;

events {{
    worker_connections 1024;
}}

http {{
    # Which replica served each request: the test checks that sessions stick.
    log_format routed '$arg_sid|$upstream_addr|$status|$request_method $uri';
    access_log {dir}/access.log routed;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;

    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      '';
    }}

    map "$http_upgrade:$arg_sid" $gateway_pool {{
        "~*^websocket:$" gateways_balanced;
        default          gateways_sticky;
    }}

    upstream gateways_sticky {{
        hash $remote_addr consistent;
        {gateways}
    }}

    upstream gateways_balanced {{
        least_conn;
        {gateways}
    }}

    upstream auth {{
        server 127.0.0.1:{auth_port};
        keepalive 8;
    }}

    server {{
        listen 127.0.0.1:{port};

        proxy_http_version 1.1;
        proxy_set_header Host            $http_host;
        proxy_set_header X-Forwarded-For $remote_addr;
        proxy_set_header Upgrade         $http_upgrade;
        proxy_set_header Connection      $connection_upgrade;
        proxy_connect_timeout 2s;

        location = /healthz {{
            return 200 "ok\\n";
        }}

        location /socket.io/ {{
            proxy_pass http://$gateway_pool;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_next_upstream error timeout;
            proxy_next_upstream_tries 2;
        }}

        location /v1/auth/ {{
            proxy_pass http://auth;
        }}

        location /v1/users/ {{
            proxy_pass http://auth;
        }}

        location /.well-known/ {{
            proxy_pass http://auth;
        }}

        location / {{
            return 404;
        }}
    }}
}}
"""


def nginx_binary() -> str:
    """The nginx executable; the test fails (not skips) without it."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if found is None:
        pytest.fail("nginx is required for this test: apt-get install nginx (the Debian package)")
    return found


def start_nginx(stack: Stack, auth: Auth, gateways: list[Gateway]) -> str:
    """Runs nginx in front of ``auth`` and ``gateways``; returns its base URL."""
    workdir = stack.workdir / "nginx"
    workdir.mkdir()
    port = free_port()
    servers = "\n        ".join(
        f"server 127.0.0.1:{gateway.port} max_fails=1 fail_timeout=1s;" for gateway in gateways
    )
    # Run as root (a CI container), the master would hand its workers to "nobody", who cannot
    # enter the test's private tmp dir.
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else ""
    conf = workdir / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            dir=workdir,
            user=user,
            gateways=servers,
            auth_port=httpx.URL(auth.url).port,
            port=port,
        )
    )
    args = [nginx_binary(), "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "error.log")]
    process = Process(args, {"PATH": "/usr/sbin:/usr/bin:/bin"}, workdir / "stdout.log").start()
    stack.processes.append(process)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(f"{url}/healthz", timeout=10, proc=process)
    except RuntimeError as exc:
        errors = (workdir / "error.log").read_text() if (workdir / "error.log").exists() else ""
        raise AssertionError(f"nginx did not start: {exc}\n{errors}") from None
    return url


def routes(stack: Stack) -> dict[str, set[str]]:
    """Engine.IO session id -> the upstreams nginx sent its requests to."""
    seen: dict[str, set[str]] = {}
    for line in (stack.workdir / "nginx" / "access.log").read_text().splitlines():
        sid, upstream, *_ = line.split("|")
        if sid not in ("", "-") and upstream not in ("", "-"):
            seen.setdefault(sid, set()).add(upstream)
    return seen


async def reconnected(node: NodeClients, name: str) -> bool:
    """If Node socket ``name`` lost its connection, waits until it is back; ``True`` if so."""
    kinds = [m["type"] for m in node.drain_events(name) if m["type"] in ("connect", "disconnect")]
    if "disconnect" not in kinds:
        return False
    if kinds[-1] != "connect":
        await node.next(name, "connect", timeout=20)
    return True


async def py_reconnected(client: PyClient) -> bool:
    """The same for a python-socketio client."""
    kinds = [kind for kind, _ in client.received() if kind in ("connect", "disconnect")]
    if "disconnect" not in kinds:
        return False
    if kinds[-1] != "connect":
        await client.next_event("connect", timeout=20)
    return True


async def sigterm(victim: Gateway) -> None:
    """SIGTERM, then the replica drains and exits cleanly."""
    victim.process.signal(signal.SIGTERM)
    assert await asyncio.to_thread(victim.process.wait, 15) == 0, victim.logs()[-2000:]


async def test_cluster_behind_nginx_survives_replica_restarts(
    stack: Stack, node: NodeClients, py_clients: list[PyClient]
) -> None:
    redis = stack.redis()
    auth = stack.auth(None)
    fast_retry = {"GATEWAY_OVERLOAD_RETRY_AFTER_MS": "200"}
    a, b = (stack.gateway(auth, redis, **fast_retry) for _ in range(2))
    lb = start_nginx(stack, auth, [a, b])

    # The auth service through nginx: keys, registration, login, profile.
    async with httpx.AsyncClient(base_url=lb, timeout=30) as http:
        jwks = await http.get("/.well-known/jwks.json")
        assert jwks.status_code == 200 and jwks.json()["keys"], jwks.text
        name = unique("py")
        registered = await http.post(
            "/v1/auth/register",
            json={"username": name, "email": f"{name}@example.com", "password": PASSWORD},
        )
        assert registered.status_code == 201, registered.text
        login = await http.post("/v1/auth/login", json={"username": name, "password": PASSWORD})
        assert login.status_code == 200, login.text
        token = login.json()["access_token"]
        me = await http.get("/v1/users/me", headers={"Authorization": f"Bearer {token}"})
        assert me.json()["username"] == name

    # The official Node client over each transport, and python-socketio, all through nginx.
    room = unique("public:lb-")
    transports = {"ws": ["websocket"], "poll": ["polling"], "upgrade": ["polling", "websocket"]}
    for socket, kinds in transports.items():
        reply = await node.connect(
            socket, lb, token=auth.signer.token(name=socket), transports=kinds, reconnect=True
        )
        assert reply["type"] == "connect", reply
    py = PyClient(reconnection=True)
    py_clients.append(py)
    await py.connect(lb, token=token)

    async def exchange(step: str) -> None:
        """Everyone (re)joins the room; messages go both ways between Node and Python."""
        for socket in transports:
            assert (await node.emit(socket, "join", {"room": room}))["ok"] is True
        assert (await py.call("join", {"room": room}))["ok"] is True
        text = f"{step} from python"
        await py.call("message", {"room": room, "text": text})
        for socket in transports:
            while (await node.next_event(socket, "message"))["text"] != text:
                pass  # what the other Node sockets said earlier
        for socket in transports:
            text = f"{step} from {socket}"
            await node.emit(socket, "message", {"room": room, "text": text})
            while (await py.next_event("message"))["text"] != text:
                pass
        ack = await py.call("who", {"room": room})
        assert sorted(m["name"] for m in ack["members"]) == sorted([name, *transports]), ack

    async def moved() -> set[str]:
        """Which clients lost their replica and came back through nginx."""
        names = {socket for socket in transports if await reconnected(node, socket)}
        return names | ({"python"} if await py_reconnected(py) else set())

    await exchange("first")
    counts = {gateway.port: gateway.metric("gateway_connected_sockets") for gateway in (a, b)}
    assert sum(counts.values()) == 4 and min(counts.values()) >= 1, counts  # both serve
    # Polling sessions stick to one replica, from their first request to their last.
    assert routes(stack) and all(len(upstreams) == 1 for upstreams in routes(stack).values())

    # 1. SIGTERM the replica holding the polling sessions (the one with more sockets): its
    # clients reconnect through nginx to the other one.
    victim, survivor = sorted((a, b), key=lambda g: g.metric("gateway_connected_sockets"))[::-1]
    await sigterm(victim)
    assert {"poll", "upgrade"} <= await moved()
    assert survivor.metric("gateway_connected_sockets") == 4
    await exchange("second")

    # 2. A replacement comes up where the first one was; then the survivor goes too, and
    # every client, whatever its transport, moves to the replacement.
    replacement = stack.gateway(auth, redis, port=victim.port, **fast_retry)
    await sigterm(survivor)
    assert await moved() == {*transports, "python"}
    assert replacement.metric("gateway_connected_sockets") == 4
    await exchange("third")
