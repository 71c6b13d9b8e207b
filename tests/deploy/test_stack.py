"""The compose topology on loopback: clients → nginx (TLS) → auth and two gateways → Redis.

The same wiring as docker-compose.yml, without Docker: the public URL is nginx's HTTPS port and
is the token issuer; gateways fetch the JWKS from the auth service directly; both services
share one Redis. The clients verify nginx's certificate, as a browser would.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
import socketio
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

from tests.deploy.lb import LbPorts, running_nginx
from tests.support.processes import Process, RedisServer, free_port, start_service

TIMEOUT = 10.0
PASSWORD = "correct horse battery staple"
EIO_PATH = "/socket.io/?EIO=4"
RECORD_SEPARATOR = "\x1e"


@dataclass(frozen=True)
class Stack:
    """The running stack: its public URL, the CA to trust, and each gateway's own URL."""

    public_url: str
    ca_file: Path
    gateway_urls: tuple[str, ...]

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Redis, auth and two gateways on loopback ports behind the test nginx; stopped by pid."""
    home = tmp_path_factory.mktemp("stack")
    processes: list[Process | RedisServer] = []
    try:
        redis = RedisServer(free_port(), home).start()
        processes.append(redis)
        https_port, auth_port = free_port(), free_port()
        public_url = f"https://127.0.0.1:{https_port}"
        auth_url = f"http://127.0.0.1:{auth_port}"
        auth_env = {
            "AUTH_HOST": "127.0.0.1",
            "AUTH_PORT": str(auth_port),
            "AUTH_ISSUER": public_url,
            "AUTH_DATABASE_URL": f"sqlite:///{home / 'auth.db'}",
            "AUTH_KEYS_DIR": str(home / "keys"),
            "AUTH_TRUST_FORWARDED_FOR": "true",
            "AUTH_ARGON2_MEMORY_KIB": "8192",
            "AUTH_ARGON2_TIME_COST": "1",
            "REDIS_URL": redis.url,
        }
        processes.append(
            start_service("services.auth", auth_env, home / "auth.log", f"{auth_url}/readyz")
        )
        gateway_ports = (free_port(), free_port())
        for port in gateway_ports:
            gateway_env = {
                "GATEWAY_HOST": "127.0.0.1",
                "GATEWAY_PORT": str(port),
                "JWT_ISSUER": public_url,
                "JWKS_URL": f"{auth_url}/.well-known/jwks.json",
                "REDIS_URL": redis.url,
                # A quick drain at the end of the module.
                "GATEWAY_DRAIN_DELAY": "0",
                "GATEWAY_DRAIN_SPREAD": "0.2",
                "GATEWAY_DRAIN_GRACE": "3",
            }
            processes.append(
                start_service(
                    "services.gateway",
                    gateway_env,
                    home / f"gateway-{port}.log",
                    f"http://127.0.0.1:{port}/readyz",
                )
            )
        ports = LbPorts(https_port, free_port(), gateway_ports, gateway_ports, (auth_port,))
        with running_nginx(home, ports):
            yield Stack(
                public_url,
                home / "tls.crt",
                tuple(f"http://127.0.0.1:{port}" for port in gateway_ports),
            )
    finally:
        for process in reversed(processes):
            process.stop()


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert isinstance(claims, dict)
    return claims


async def _login(stack: Stack, username: str) -> str:
    async with httpx.AsyncClient(
        base_url=stack.public_url, verify=stack.ssl_context(), timeout=TIMEOUT
    ) as http:
        registered = await http.post(
            "/v1/auth/register",
            json={"username": username, "email": f"{username}@example.com", "password": PASSWORD},
        )
        assert registered.status_code in (201, 409), registered.text
        login = await http.post("/v1/auth/login", json={"username": username, "password": PASSWORD})
        assert login.status_code == 200, login.text
        token = login.json()["access_token"]
        assert isinstance(token, str)
        return token


@dataclass
class Client:
    """A python-socketio client on WebSocket whose HTTP session trusts the stack's certificate.

    (Long-polling is driven by hand with ``EngineIO`` below.)
    """

    sio: socketio.AsyncClient
    session: aiohttp.ClientSession
    messages: asyncio.Queue[dict[str, Any]]


@pytest.fixture
async def clients(stack: Stack) -> AsyncIterator[list[Client]]:
    """Clients made by the test through ``connect``; all closed at the end."""
    made: list[Client] = []
    yield made
    for client in made:
        if client.sio.connected:
            await client.sio.disconnect()
        # Let the client's background tasks end before its HTTP session closes under them.
        tasks = [t for t in (client.sio.eio.read_loop_task, client.sio.eio.write_loop_task) if t]
        if tasks:
            await asyncio.wait(tasks, timeout=TIMEOUT)
        await client.sio.eio.disconnect(abort=True)
        await client.session.close()
    # A closed TLS connection finishes its shutdown on later turns of the event loop, and the
    # loop ends with the test: give it those turns (aiohttp's advice for a graceful close).
    await asyncio.sleep(0.25)


async def connect(
    stack: Stack,
    made: list[Client],
    token: str,
    origin: str | None = None,
) -> Client:
    """Connects a ``Client`` with ``token``, sending ``origin`` (default: the public URL)."""
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=stack.ssl_context()))
    client = Client(socketio.AsyncClient(reconnection=False, http_session=session), session,
                    asyncio.Queue())  # fmt: skip
    made.append(client)

    async def on_message(data: dict[str, Any]) -> None:
        client.messages.put_nowait(data)

    client.sio.on("message", on_message)
    await client.sio.connect(
        stack.public_url,
        auth={"token": token},
        headers={"Origin": origin or stack.public_url},
        transports=["websocket"],
        wait_timeout=TIMEOUT,
    )
    return client


async def _per_gateway(stack: Stack, series: str) -> list[float]:
    """The value of one sample (``name{labels}`` as exposed) on each gateway replica."""
    values = []
    async with httpx.AsyncClient(timeout=TIMEOUT) as http:
        for url in stack.gateway_urls:
            text = (await http.get(f"{url}/metrics")).text
            line = next((x for x in text.splitlines() if x.startswith(f"{series} ")), None)
            values.append(float(line.split()[1]) if line else 0.0)
    return values


async def _no_sockets_left(stack: Stack) -> None:
    """Waits until earlier tests' sockets are gone, so least_conn starts from zero."""
    async with asyncio.timeout(TIMEOUT):
        while any(await _per_gateway(stack, "gateway_connected_sockets")):
            await asyncio.sleep(0.05)


async def test_tokens_are_issued_under_the_public_url(stack: Stack) -> None:
    token = await _login(stack, "issuer_check")
    assert _claims(token)["iss"] == stack.public_url
    async with httpx.AsyncClient(verify=stack.ssl_context(), timeout=TIMEOUT) as http:
        jwks = await http.get(f"{stack.public_url}/.well-known/jwks.json")
        assert jwks.status_code == 200
        assert jwks.json()["keys"]
        discovery = await http.get(f"{stack.public_url}/.well-known/openid-configuration")
        assert discovery.json()["issuer"] == stack.public_url


class EngineIO:
    """Engine.IO v4 by hand: long-polling first, optionally upgraded to a WebSocket.

    python-socketio's client leaves polling responses unreleased, which the suite's
    warnings-as-errors turns into failures at random; driving the protocol directly also lets
    the test see every request of the session go through the load balancer.
    """

    def __init__(self, stack: Stack, http: httpx.AsyncClient) -> None:
        self._stack = stack
        self._http = http
        self.sid = ""
        self._ws: ClientConnection | None = None

    async def open(self) -> None:
        response = await self._http.get(f"{EIO_PATH}&transport=polling")
        assert response.status_code == 200, response.text
        assert response.text.startswith("0"), response.text
        self.sid = json.loads(response.text[1:])["sid"]

    async def send(self, packet: str) -> None:
        if self._ws is not None:
            await self._ws.send(packet)
            return
        response = await self._http.post(
            f"{EIO_PATH}&transport=polling&sid={self.sid}", content=packet.encode()
        )
        # A replica that does not hold the session answers 400: stickiness was lost.
        assert response.status_code == 200, response.text

    async def receive(self) -> list[str]:
        if self._ws is not None:
            message = await asyncio.wait_for(self._ws.recv(), TIMEOUT)
            assert isinstance(message, str)
            return [message]
        response = await self._http.get(f"{EIO_PATH}&transport=polling&sid={self.sid}")
        assert response.status_code == 200, response.text
        return response.text.split(RECORD_SEPARATOR)

    async def until(self, prefix: str) -> str:
        """Reads packets until one starts with ``prefix``; answers pings on the way."""
        async with asyncio.timeout(TIMEOUT):
            while True:
                for packet in await self.receive():
                    if packet == "2":
                        await self.send("3")
                    elif packet.startswith(prefix):
                        return packet

    async def upgrade(self) -> None:
        """Moves the session to a WebSocket (same sid, so it must reach the same replica)."""
        ws_url = self._stack.public_url.replace("https://", "wss://")
        self._ws = await ws_connect(
            f"{ws_url}{EIO_PATH}&transport=websocket&sid={self.sid}",
            ssl=self._stack.ssl_context(),
            origin=self._stack.public_url,  # type: ignore[arg-type]
            open_timeout=TIMEOUT,
        )
        await self._ws.send("2probe")
        assert await asyncio.wait_for(self._ws.recv(), TIMEOUT) == "3probe"
        await self._ws.send("5")

    async def close(self) -> None:
        """Ends the session (Engine.IO CLOSE), so the replica forgets it at once."""
        if self.sid:
            await self.send("1")
        if self._ws is not None:
            await self._ws.close()


@pytest.mark.parametrize("upgrade", [False, True], ids=["long-polling", "polling-then-upgrade"])
async def test_a_polling_session_sticks_to_its_replica(
    stack: Stack, clients: list[Client], upgrade: bool
) -> None:
    receiver = await connect(stack, clients, await _login(stack, "sticky_receiver"))
    token = await _login(stack, "sticky_sender")
    room = f"public:sticky-{upgrade}"
    await receiver.sio.call("join", {"room": room}, timeout=TIMEOUT)
    async with httpx.AsyncClient(
        base_url=stack.public_url,
        verify=stack.ssl_context(),
        headers={"Origin": stack.public_url},
        timeout=TIMEOUT,
    ) as http:
        session = EngineIO(stack, http)
        await session.open()
        try:
            await session.send("40" + json.dumps({"token": token}))
            assert (await session.until("4")).startswith("40{"), "the handshake was refused"
            if upgrade:
                await session.upgrade()
            await session.send("420" + json.dumps(["join", {"room": room}]))
            assert json.loads((await session.until("430"))[3:]) == [{"ok": True, "room": room}]
            # Several round trips, each a new request through the balancer in polling mode.
            for n in range(1, 4):
                await session.send(
                    f"42{n}" + json.dumps(["message", {"room": room, "text": f"hi {n}"}])
                )
                ack = json.loads((await session.until(f"43{n}"))[len(f"43{n}") :])
                assert ack[0]["ok"] is True, ack
                received = await asyncio.wait_for(receiver.messages.get(), TIMEOUT)
                assert received["text"] == f"hi {n}"
        finally:
            await session.close()


async def test_websocket_clients_from_one_address_spread_over_the_replicas(
    stack: Stack, clients: list[Client]
) -> None:
    token = await _login(stack, "spread")
    await _no_sockets_left(stack)
    accepted = 'gateway_handshakes_total{code="",result="accepted"}'
    before = await _per_gateway(stack, accepted)
    first = await connect(stack, clients, token)
    second = await connect(stack, clients, token)
    after = await _per_gateway(stack, accepted)
    # least_conn on the balanced pool: one new socket on each replica, though every client
    # here has the same address; a room message then crosses replicas through Redis.
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1]
    room = "public:spread"
    for client in (first, second):
        await client.sio.call("join", {"room": room}, timeout=TIMEOUT)
    await first.sio.call("message", {"room": room, "text": "across"}, timeout=TIMEOUT)
    assert (await asyncio.wait_for(second.messages.get(), TIMEOUT))["text"] == "across"


async def test_same_origin_is_recognised_behind_tls_termination(
    stack: Stack, clients: list[Client]
) -> None:
    # The gateway sees plain HTTP from nginx; X-Forwarded-Proto and Host make the public
    # origin its own, and any other origin is still refused.
    token = await _login(stack, "origin_check")
    await connect(stack, clients, token, origin=stack.public_url)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await connect(stack, clients, token, origin="https://evil.example")
