"""Clients the gateway tests drive: the official Node client, python-socketio, raw Engine.IO.

- ``NodeClients`` runs tests/node/gateway_client.mjs (the official ``socket.io-client``) and
  exposes its sockets as awaitables;
- ``PyClient`` wraps python-socketio's ``AsyncClient`` and records what it receives;
- ``RawSocket`` speaks Engine.IO/Socket.IO by hand over a websocket, for malformed packets.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import shutil
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import socketio
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

from tests.support.processes import ROOT

DRIVER = ROOT / "tests" / "node" / "gateway_client.mjs"
TIMEOUT = 10.0


def node_available() -> bool:
    """Whether node and the installed socket.io-client are there (``npm ci`` ran)."""
    return (
        shutil.which("node") is not None and (ROOT / "node_modules" / "socket.io-client").is_dir()
    )


@dataclass
class NodeSocket:
    """What one Node socket reported, in order."""

    events: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)


class NodeClients:
    """One Node process holding named ``socket.io-client`` sockets."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc
        self._sockets: dict[str, NodeSocket] = defaultdict(NodeSocket)
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._refs = itertools.count(1)
        self._reader = asyncio.create_task(self._read())
        self.stderr = b""

    @classmethod
    @contextlib.asynccontextmanager
    async def start(cls) -> AsyncIterator[NodeClients]:
        """Starts the driver; stops it (by its pid) on exit."""
        proc = await asyncio.create_subprocess_exec(
            "node", str(DRIVER), cwd=ROOT,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        clients = cls(proc)
        try:
            ready = await clients._socket("").events.get()
            assert ready["type"] == "ready", ready
            yield clients
        finally:
            await clients._stop()

    async def _stop(self) -> None:
        assert self._proc.stdin is not None
        if self._proc.returncode is None:
            self._proc.stdin.close()
            try:
                await asyncio.wait_for(self._proc.wait(), 5)
            except TimeoutError:
                self._proc.kill()
                await self._proc.wait()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        if self._proc.stderr is not None:
            self.stderr = await self._proc.stderr.read()

    def _socket(self, name: str) -> NodeSocket:
        return self._sockets[name]

    async def _read(self) -> None:
        assert self._proc.stdout is not None
        while line := await self._proc.stdout.readline():
            message = json.loads(line)
            ref = message.get("ref")
            if ref is not None and ref in self._replies:
                future = self._replies.pop(ref)
                if not future.done():  # its waiter may have timed out or been cancelled
                    future.set_result(message)
                continue
            self._socket(message.get("id", "")).events.put_nowait(message)

    def _send(self, command: dict[str, Any]) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(command).encode() + b"\n")

    async def _request(self, command: dict[str, Any], timeout: float) -> dict[str, Any]:
        ref = next(self._refs)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[ref] = future
        self._send({**command, "ref": ref})
        try:
            # asyncio.timeout rather than wait_for: on 3.11 wait_for can swallow a
            # cancellation that races with the reply, and the caller would never stop.
            async with asyncio.timeout(timeout):
                return await future
        finally:
            self._replies.pop(ref, None)

    async def connect(
        self,
        name: str,
        url: str,
        *,
        token: str | None = None,
        auth: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        query: dict[str, str] | None = None,
        transports: list[str] | None = None,
        reconnect: bool = False,
    ) -> dict[str, Any]:
        """Connects socket ``name``; returns its ``connect`` or ``connect_error`` report.

        ``reconnect`` makes the socket reconnect on its own after losing its connection (and
        after an ``unavailable`` refusal), quickly, as a real client would.
        """
        options: dict[str, Any] = {"transports": transports or ["websocket"]}
        if reconnect:
            options.update(
                reconnection=True,
                reconnectionDelay=200,
                reconnectionDelayMax=1000,
                retryUnavailable=True,
            )
        if auth is not None:
            options["auth"] = auth
        elif token is not None:
            options["auth"] = {"token": token}
        if headers:
            options["extraHeaders"] = headers
        if query:
            options["query"] = query
        self._send({"op": "connect", "id": name, "url": url, "options": options})
        return await self.next(name, "connect", "connect_error")

    async def emit(self, name: str, event: str, *args: Any, timeout: float = TIMEOUT) -> Any:
        """Emits with an ack callback; returns the ack's first argument."""
        reply = await self._request(
            {"op": "emit", "id": name, "event": event, "args": list(args)}, timeout
        )
        assert reply["type"] == "ack", reply
        return reply["args"][0] if reply["args"] else None

    async def flood(self, name: str, event: str, *args: Any, count: int) -> dict[str, int]:
        """Emits ``count`` events at once; returns the acks counted by result."""
        reply = await self._request(
            {"op": "flood", "id": name, "event": event, "args": list(args), "count": count},
            60,
        )
        results: dict[str, int] = reply["results"]
        return results

    async def storm(
        self, url: str, *, count: int, token: str, transports: list[str] | None = None
    ) -> dict[str, Any]:
        """Opens ``count`` sockets at once; returns how their handshakes ended, counted."""
        options = {"transports": transports or ["websocket"], "auth": {"token": token}}
        reply = await self._request(
            {"op": "storm", "id": "storm", "url": url, "count": count, "options": options}, 60
        )
        results: dict[str, Any] = reply["results"]
        return results

    async def next(self, name: str, *types: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The next report of socket ``name`` whose type is one of ``types``."""
        queue = self._socket(name).events
        async with asyncio.timeout(timeout):
            while True:
                message = await queue.get()
                if message["type"] in types:
                    return message

    async def next_event(self, name: str, event: str, timeout: float = TIMEOUT) -> Any:
        """The payload of the next server ``event`` socket ``name`` receives."""
        queue = self._socket(name).events
        async with asyncio.timeout(timeout):
            while True:
                message = await queue.get()
                if message["type"] == "event" and message["event"] == event:
                    return message["args"][0]

    def drain_events(self, name: str) -> list[dict[str, Any]]:
        """Everything socket ``name`` reported so far and nobody consumed."""
        queue = self._socket(name).events
        items = []
        while not queue.empty():
            items.append(queue.get_nowait())
        return items

    async def close(self, name: str) -> None:
        """Closes socket ``name``."""
        self._send({"op": "close", "id": name})
        await self.next(name, "closed")


class PyClient:
    """python-socketio's ``AsyncClient``, recording server events and disconnects."""

    def __init__(self, *, reconnection: bool = False) -> None:
        # Reconnecting clients retry fast: tests wait for them.
        self.sio = socketio.AsyncClient(
            reconnection=reconnection,
            reconnection_delay=0.2,
            reconnection_delay_max=1,
            randomization_factor=0.1,
        )
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.connect_error: Any = None
        self.sio.on("*", self._on_event)
        self.sio.on("connect", self._on_connect)
        self.sio.on("disconnect", self._on_disconnect)
        self.sio.on("connect_error", self._on_connect_error)

    async def _on_event(self, event: str, *args: Any) -> None:
        self.events.put_nowait((event, args[0] if args else None))

    async def _on_connect(self) -> None:
        self.events.put_nowait(("connect", None))

    async def _on_disconnect(self, reason: Any = None) -> None:
        self.events.put_nowait(("disconnect", reason))

    async def _on_connect_error(self, data: Any = None) -> None:
        self.connect_error = data

    async def connect(
        self,
        url: str,
        *,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        transports: list[str] | None = None,
    ) -> None:
        """Connects; raises ``socketio.exceptions.ConnectionError`` when refused."""
        await self.sio.connect(
            url,
            auth={"token": token} if token is not None else None,
            headers=headers or {},
            transports=transports or ["websocket"],
            wait_timeout=TIMEOUT,
        )

    async def call(self, event: str, data: Any, timeout: float = TIMEOUT) -> Any:
        """Emits with an ack and returns it."""
        return await self.sio.call(event, data, timeout=timeout)

    async def next_event(self, event: str, timeout: float = TIMEOUT) -> Any:
        """The payload of the next ``event`` (``disconnect`` included)."""
        async with asyncio.timeout(timeout):
            while True:
                name, data = await self.events.get()
                if name == event:
                    return data

    def received(self) -> list[tuple[str, Any]]:
        """Everything received and not consumed yet."""
        items = []
        while not self.events.empty():
            items.append(self.events.get_nowait())
        return items

    async def close(self) -> None:
        """Disconnects if connected; safe to call twice."""
        if self.sio.connected:
            await self.sio.disconnect()
        # The Engine.IO client may hold its HTTP session after a refused connect.
        await self.sio.eio.disconnect(abort=True)

    async def __aenter__(self) -> PyClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class RawSocket:
    """Engine.IO v4 over a websocket, packet by packet, for protocol abuse."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, base_url: str, **kwargs: Any) -> AsyncIterator[RawSocket]:
        """Opens the websocket and reads the Engine.IO OPEN packet."""
        url = base_url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
        async with ws_connect(url, max_size=None, compression=None, **kwargs) as ws:
            sock = cls(ws)
            opened = await sock.recv()
            assert isinstance(opened, str) and opened.startswith("0"), opened
            yield sock

    async def send(self, frame: str | bytes) -> None:
        await self.ws.send(frame)

    async def recv(self, timeout: float = TIMEOUT) -> str | bytes:
        """The next frame, answering Engine.IO pings on the way."""
        while True:
            frame = await asyncio.wait_for(self.ws.recv(), timeout)
            if frame == "2":
                await self.ws.send("3")
                continue
            return frame

    async def connect(self, token: str) -> str:
        """Sends the Socket.IO CONNECT; returns the server's answer packet."""
        await self.send("40" + json.dumps({"token": token}))
        answer = await self.recv()
        assert isinstance(answer, str)
        return answer

    async def closed(self, timeout: float = TIMEOUT) -> bool:
        """Waits until the server closes the websocket; ``True`` if it did in time."""
        try:
            async with asyncio.timeout(timeout):
                async for _frame in self.ws:
                    pass
        except TimeoutError:
            return False
        except Exception:
            return True
        return True
