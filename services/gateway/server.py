"""python-socketio's ``AsyncServer`` hardened for hostile clients.

Stock python-socketio decodes whatever a client sends and, when a packet is malformed, logs a
traceback and keeps the connection open; it also accepts binary packets whose attachments it
buffers without bound, and dispatches client events named ``connect`` or ``disconnect`` to the
server's own lifecycle handlers. ``GatewayServer`` narrows the accepted protocol to what the
gateway's clients send:

- text frames only; packet types CONNECT, DISCONNECT and EVENT only (the gateway never asks a
  client for an ack and accepts no binary payloads);
- CONNECT data is an object or nothing; EVENT data is a list that starts with an event name
  that is not reserved;
- JSON is decoded by orjson, which refuses nesting deeper than 1024 and numbers that do not
  fit (no quadratic big-int parsing).

Anything else closes that client's connection at once and is counted, and nothing else is
affected. One layer down, ``EngineServer`` does the same for Engine.IO frames and polling
bodies, and closes sessions without waiting on the client. The server also tells the
``HandshakeGate`` when Engine.IO sessions open and close, and offers ``close_session`` /
``kick`` that never block the caller.

This overrides ``_handle_eio_*`` methods of python-socketio and two entries of
python-engineio's ASGI driver table (both pinned in pyproject.toml): they are the one place
where every packet passes, and subclasses keep the rest of the libraries unchanged. For
performance, with the same behaviour, each Engine.IO session gets a smaller packet queue
(``PacketQueue``) and a session class whose writer waits without a task per packet and whose
pings need no task (``_LeanSocket``); GET and websocket requests share one empty body reader;
the text frames a websocket writer sends in one event-loop pass go out in one write
(``_GuardedWebSocket``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import sys
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

import engineio
import engineio.async_socket
import engineio.exceptions
import engineio.packet
import orjson
import socketio
from engineio.async_drivers import asgi as asgi_driver
from engineio.exceptions import EngineIOError
from socketio import packet as sio_packet
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame as WsFrame
from websockets.frames import Opcode as WsOpcode
from websockets.protocol import State as WsState

from services.gateway.limits import HandshakeGate
from services.gateway.protocols import GatewayWebSocketProtocol

log = logging.getLogger(__name__)

NAMESPACE = "/"
# Names the JavaScript client reserves, plus python-socketio's own lifecycle events.
RESERVED_EVENTS = frozenset(
    {"connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"}
)
MAX_EVENT_NAME = 64
# Bounds every background close, so no client can keep a closing task alive.
_CLOSE_TIMEOUT = 5.0
_ACCEPTED_TYPES = frozenset("012")  # CONNECT, DISCONNECT, EVENT
_ENGINEIO_TYPES = frozenset("0123456")  # OPEN … NOOP


@functools.lru_cache(maxsize=64)
def _is_coroutine_function(handler: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(handler)


class ProtocolError(ValueError):
    """A client sent something outside the accepted protocol."""


class OrjsonCodec:
    """The ``json`` module python-socketio and python-engineio use, backed by orjson."""

    @staticmethod
    def dumps(obj: Any, **_options: Any) -> str:
        """Compact JSON text (orjson never adds whitespace, so ``separators`` is moot)."""
        return orjson.dumps(obj).decode()

    @staticmethod
    def loads(text: str | bytes, **_options: Any) -> Any:
        """Parses JSON; raises ``orjson.JSONDecodeError`` (a ``ValueError``) on bad input."""
        return orjson.loads(text)


def decode_packet(data: object) -> Any:
    """The Socket.IO packet in ``data`` if the gateway accepts it, else ``ProtocolError``."""
    if not isinstance(data, str):
        raise ProtocolError("binary frames are not accepted")
    if data[:1] not in _ACCEPTED_TYPES:
        raise ProtocolError("packet type not accepted")
    try:
        pkt = sio_packet.Packet(encoded_packet=data)
    except (ValueError, TypeError, RecursionError) as exc:
        raise ProtocolError(f"undecodable packet: {type(exc).__name__}") from None
    if pkt.packet_type == sio_packet.CONNECT:
        if pkt.data is not None and not isinstance(pkt.data, dict):
            raise ProtocolError("CONNECT data must be an object")
    elif pkt.packet_type == sio_packet.EVENT:
        payload = pkt.data
        if not isinstance(payload, list) or not payload:
            raise ProtocolError("EVENT data must be a non-empty list")
        name = payload[0]
        if not isinstance(name, str) or not 0 < len(name) <= MAX_EVENT_NAME:
            raise ProtocolError("EVENT name must be a short string")
        if name in RESERVED_EVENTS:
            raise ProtocolError("EVENT name is reserved")
    return pkt


class _GuardedWebSocket(asgi_driver.WebSocket):  # type: ignore[misc]  # engineio is untyped
    """The ASGI websocket wrapper, ending the connection on a frame that is not Engine.IO.

    python-engineio logs a traceback for every text frame with an unknown packet type and
    keeps reading, and raises out of its handler on an empty or ``b``-prefixed one; raising
    ``OSError`` here makes it close the socket cleanly instead.

    On uvicorn's sans-I/O websockets protocol, text frames are written with one
    ``transport.write`` per event-loop pass instead of one per frame: each frame is still its
    own websocket frame (Socket.IO needs one packet per frame), but the frames a socket's
    writer sends in one go (its queued packets) reach the kernel in one system call. A frame
    sent to many sockets (a room broadcast) is serialized once (``send_frame_now``). Anything
    else (other protocols, before the handshake, after a close) takes the stock path, which
    also writes out any frame still held, so frames never change order.
    """

    _protocol: WebSocketsSansIOProtocol | None = None
    _resolved = False
    _flush_armed = False

    async def send(self, message: str | bytes) -> None:
        """Sends one frame; text frames are coalesced per event-loop pass (see the class doc)."""
        if not isinstance(message, str) or not self.send_text_now(message):
            await super().send(message)

    def send_text_now(self, message: str) -> bool:
        """Sends a text frame without waiting, if the coalescing path can take it.

        Returns ``False``, having sent nothing, when the frame must take the stock path
        (another protocol, handshake not complete, closing, or the transport is paused).
        """
        return self.can_send_now() and self.send_frame_now(_serialized_text(message))

    def send_frame_now(self, frame: bytes, *, at_once: bool = False) -> bool:
        """``send_text_now`` for a text frame already serialized (``_serialized_text``).

        A room broadcast sends the same frame to every member: serialized once (server frames
        are unmasked, and the gateway runs without extensions), it is appended to each
        connection's outgoing data as websockets' ``send_text`` would append it, after the
        same state checks, and written at the end of the loop pass. ``at_once`` writes it
        now instead when nothing is held for this socket (``Flushes.room_emit`` says when).
        Returns ``False``, having sent nothing, when the stock path must take it.
        """
        if not self.can_send_now():
            return False
        proto = self._protocol
        assert proto is not None  # can_send_now found the sans-I/O protocol
        conn = proto.conn
        if conn.extensions or conn.expect_continuation_frame:
            return False
        if conn.state is not WsState.OPEN:
            raise ClientDisconnected()
        if at_once and not self._flush_armed and not conn.writes:
            transport = proto.transport
            if not transport.is_closing():
                transport.write(frame)
                return True
        conn.writes.append(frame)
        self._hold_flush()
        return True

    def _hold_flush(self) -> None:
        """Writes this socket's outgoing data at the end of the loop pass (``Flushes``)."""
        if not self._flush_armed:
            self._flush_armed = True
            self._flushes.add(self)

    def can_send_now(self) -> bool:
        """Whether ``send_text_now`` would take a frame now."""
        proto = self._sansio()
        return not (
            proto is None
            or proto.disconnected
            or not proto.handshake_complete
            or proto.close_sent
            or proto.initial_response is not None
            or not proto.writable.is_set()
        )

    async def __call__(self, environ: dict[str, Any]) -> str:
        """Accepts the websocket and runs the Engine.IO handler (the stock steps)."""
        await self.accept(environ)
        await self.handler(self)
        return ""

    async def accept(self, environ: dict[str, Any]) -> None:
        """Accepts the websocket of ``environ``'s request.

        Once the handshake is complete, the handshake-only state uvicorn's sans-I/O protocol
        keeps for the socket's life is trimmed (see ``_trim_handshake_state``).
        """
        self.asgi_receive = environ["asgi.receive"]
        self.asgi_send = environ["asgi.send"]
        proto = self._sansio()
        if isinstance(proto, GatewayWebSocketProtocol) and proto.accept_held():
            self._hold_flush()  # the 101 goes out with the first frame (the OPEN packet)
        else:
            await self.asgi_send({"type": "websocket.accept"})
        if proto is not None and proto.handshake_complete:
            _trim_handshake_state(proto)

    def _sansio(self) -> WebSocketsSansIOProtocol | None:
        """uvicorn's sans-I/O protocol behind this websocket, if the ASGI calls are its own."""
        if not self._resolved:
            self._resolved = True
            proto = getattr(self.asgi_send, "__self__", None)
            if (
                isinstance(proto, WebSocketsSansIOProtocol)
                and getattr(self.asgi_receive, "__self__", None) is proto
            ):
                self._protocol = proto
        return self._protocol

    def flush(self) -> None:
        """Writes the frames held for this socket (``Flushes`` calls it once per loop pass)."""
        self._flush_armed = False
        proto = self._protocol
        if proto is None:
            return
        output = proto.conn.data_to_send()
        if output and not proto.transport.is_closing():
            proto.transport.write(b"".join(output))

    def __init__(self, handler: Any, server: Any) -> None:
        super().__init__(handler, server)
        self._max_frame = server.max_http_buffer_size
        self._flushes: Flushes = server.flushes

    async def wait(self) -> str | bytes:
        """The next frame (python-engineio's ``websocket_wait`` and ``WebSocket.wait``).

        ``OSError`` when the websocket has ended or the frame is not an Engine.IO packet,
        ``ValueError`` when it is larger than ``max_http_buffer_size``. On uvicorn's sans-I/O
        protocol the frame is taken from its receive queue here, as its ``receive`` does: an
        idle socket waits in one coroutine frame instead of three.
        """
        proto = self._sansio()
        if proto is not None:
            queue = proto.queue
            event = await queue.get()
            if proto.read_paused and queue.empty():
                proto.read_paused = False
                proto.transport.resume_reading()
        else:
            event = await self.asgi_receive()
        if event["type"] != "websocket.receive":
            raise OSError("the websocket has ended")
        data: str | bytes | None = event.get("bytes")
        if data is None:
            data = event.get("text")
            if data is None:
                raise OSError("an empty websocket message")
            if data[:1] not in _ENGINEIO_TYPES:
                raise OSError("not an Engine.IO packet")
        if len(data) > self._max_frame:
            raise ValueError("packet is too large")
        return data


class Flushes:
    """The websockets with frames to write, written out together once per event-loop pass.

    A socket's frames of one pass are held and written in one ``transport.write``; one
    callback writes every socket's instead of one scheduled callback per socket.

    Room broadcasts are written at once, member after member, while the replica is not busy
    (``room_emit``): then a pass rarely has two broadcasts, nothing would be batched, and
    holding only delays every member's frame by the whole member loop and a pass (~20 % of the
    fan-out's median latency at 50,000 deliveries/s). From a pass's second broadcast on, and
    for the whole pass after one that had several, they are held again: under saturation a
    socket gets many frames per pass, and one write for all of them is what keeps up.
    """

    __slots__ = ("_armed", "_emits", "_pending", "_quiet")

    def __init__(self) -> None:
        self._pending: list[_GuardedWebSocket] = []
        self._armed = False
        self._emits = 0  # room broadcasts in this pass
        self._quiet = True  # the last pass with broadcasts had at most one

    def room_emit(self) -> bool:
        """Counts a room broadcast in this pass; whether its frames may be written at once."""
        self._emits += 1
        if self._emits == 1:
            asyncio.get_running_loop().call_soon(self._pass_ended)
            return self._quiet
        return False

    def _pass_ended(self) -> None:
        self._quiet = self._emits == 1
        self._emits = 0

    def add(self, websocket: _GuardedWebSocket) -> None:
        """Writes ``websocket``'s held frames at the end of this loop pass."""
        self._pending.append(websocket)
        if not self._armed:
            self._armed = True
            asyncio.get_running_loop().call_soon(self._run)

    def _run(self) -> None:
        self._armed = False
        pending, self._pending = self._pending, []
        for websocket in pending:
            try:
                websocket.flush()
            except Exception:  # one broken transport must not keep the others' frames
                log.debug("writing held frames failed", exc_info=True)


def _text_frame(pkt: engineio.packet.Packet) -> bytes:
    """``pkt`` as a serialized websocket text frame (server side), made once per packet.

    websockets serializes it (``Frame.serialize``); the bytes are kept on the packet, whose
    encoded form python-engineio caches the same way, so a broadcast to a thousand sockets
    builds one frame, not a thousand.
    """
    frame: bytes | None = getattr(pkt, "ws_frame", None)
    if frame is None:
        frame = pkt.ws_frame = _serialized_text(pkt.encode())
    return frame


def _serialized_text(text: str) -> bytes:
    """``text`` as a server's websocket text frame, serialized by websockets."""
    return WsFrame(WsOpcode.TEXT, text.encode()).serialize(mask=False)


# What every accepted websocket's scope holds in these keys (nothing writes them afterwards).
_SHARED_SCOPE_PARTS: dict[str, Any] = {
    "asgi": {"version": "3.0", "spec_version": "2.4"},
    "extensions": {"websocket.http.response": {}},
    "state": {},
    "subprotocols": [],
}


def _trim_handshake_state(proto: WebSocketsSansIOProtocol) -> None:
    """Frees what an accepted uvicorn sans-I/O websocket keeps only for its handshake.

    - The parsed upgrade request and the 101 response (uvicorn reads them only while
      accepting): dropped. When websockets' parser read the request (uvicorn's path, see
      ``protocols.GatewayHttpProtocol``) it also keeps it in its generator's frame for the
      socket's life, so its header multidict (~1.5 KB, the ASGI scope has its own copy) is
      emptied too.
    - The receive queue, an ``asyncio.Queue`` (four deques, ~2.5 KB), becomes a
      ``PacketQueue``, which has the three methods uvicorn uses (``put_nowait``, ``get``,
      ``empty``). Only the ASGI app's task reads it and it is not waiting here: whatever is
      queued moves over in order.
    - The flow-control ``asyncio.Event`` (``writable``) becomes a ``Flag``, unless something
      already waits on it.
    - The protocol's attribute dict, which outgrew its shared-key table during the handshake,
      is replaced by a compact copy.
    - The ASGI scope (uvicorn reads it only before the accept): its header list is emptied
      (the request's environ already holds its own copy), and its small parts that every
      websocket has the same (``asgi``, ``extensions``, ``state``, ``subprotocols``) become
      shared copies, when they hold what every socket's hold.
    """
    scope = getattr(proto, "scope", None)
    if isinstance(scope, dict):
        if scope.get("headers"):
            scope["headers"] = []
        for key, shared in _SHARED_SCOPE_PARTS.items():
            if scope.get(key) == shared:
                scope[key] = shared
    request = getattr(proto, "request", None)
    if request is not None:
        request.headers.clear()
    proto.request = None  # type: ignore[assignment]
    proto.response = None  # type: ignore[assignment]
    old = proto.queue
    queue = PacketQueue()
    while not old.empty():
        queue.put_nowait(old.get_nowait())
    proto.queue = queue  # type: ignore[assignment]
    writable = proto.writable
    if not getattr(writable, "_waiters", None):  # nobody waits on it yet: safe to swap
        proto.writable = Flag(writable.is_set())  # type: ignore[assignment]
    # The protocol's attributes outgrew their shared-key table during the handshake (~1.6 KB);
    # a copy of the same mapping is half that size.
    proto.__dict__ = dict(proto.__dict__)


class Flag:
    """``asyncio.Event``'s interface (``set``, ``clear``, ``is_set``, ``wait``), smaller.

    uvicorn keeps an ``asyncio.Event`` per websocket for flow control (``writable``); with its
    waiter deque it costs ~0.7 KB per connection though almost nobody ever waits on it.
    """

    __slots__ = ("_value", "_waiters")

    def __init__(self, value: bool = False) -> None:
        self._value = value
        self._waiters: list[asyncio.Future[bool]] | None = None

    def is_set(self) -> bool:
        """Whether the flag is set."""
        return self._value

    def set(self) -> None:
        """Sets the flag and wakes every waiter."""
        if self._value:
            return
        self._value = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(True)

    def clear(self) -> None:
        """Clears the flag."""
        self._value = False

    async def wait(self) -> bool:
        """Returns at once if set, else when ``set`` is next called."""
        if self._value:
            return True
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
            return True
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)


class MalformedPayload(EngineIOError):  # type: ignore[misc]
    """A polling POST body that is not a sequence of Engine.IO text packets."""


class _CheckedBody:
    """A polling POST body, read on demand, that refuses anything but Engine.IO text packets.

    Reads like python-engineio's own body reader (the request's chunks until the last, or up
    to ``length`` bytes); python-engineio answers a body it cannot decode with a logged
    traceback and keeps the session, while an ``EngineIOError`` from the read makes it close
    the session with a 400.
    """

    __slots__ = ("_event", "_payload", "_receive")

    def __init__(self, event: dict[str, Any], receive: Any) -> None:
        self._event = event
        self._receive = receive
        self._payload: bytes | None = None

    async def read(self, length: int | None = None) -> bytes:
        """The body (``length`` bytes of it); ``MalformedPayload`` when it is not Engine.IO."""
        if self._payload is None:
            event = self._event
            payload = event.get("body") or b""
            while event.get("more_body"):
                event = await self._receive()
                if event["type"] == "http.request" and (length is None or len(payload) < length):
                    payload += event.get("body") or b""
            self._event = event
            self._payload = payload
        if length is None:
            data, self._payload = self._payload, b""
        else:
            data, self._payload = self._payload[:length], self._payload[length:]
        if data and any(
            part[:1].decode("latin-1") not in _ENGINEIO_TYPES for part in data.split(b"\x1e")
        ):
            raise MalformedPayload("not an Engine.IO payload")
        return data


class _NoBody:
    """The body of a request that has none to read (GET polls, websocket upgrades)."""

    async def read(self, length: int | None = None) -> bytes:
        """Always empty."""
        return b""


_NO_BODY = _NoBody()

# The environ entries that are the same for every request (python-engineio's values).
_ENVIRON_CONSTANTS: dict[str, Any] = {
    "wsgi.errors": sys.stderr,
    "wsgi.version": (1, 0),
    "wsgi.async": True,
    "wsgi.multithread": False,
    "wsgi.multiprocess": False,
    "wsgi.run_once": False,
    "SERVER_SOFTWARE": "asgi",
    "SCRIPT_NAME": "",
    "SERVER_PROTOCOL": "HTTP/1.1",
    "REMOTE_ADDR": "127.0.0.1",
    "REMOTE_PORT": "0",
    "SERVER_NAME": "asgi",
    "SERVER_PORT": "0",
}


async def _translate_request(scope: Any, receive: Any, send: Any) -> dict[str, Any]:
    """python-engineio's ASGI ``translate_request``: the same environ, built for less.

    The stock function defines a body-reader class inside itself, so every request (every
    websocket connect) pays for building a class, and the environ of a websocket, kept for
    the socket's life, holds that class's instance (~2.4 KB a connection). Here a POST gets a
    ``_CheckedBody`` and every other request one shared empty body; the rest of the environ
    (constants, path and query, headers as ``HTTP_*`` keys, repeated headers joined with
    commas, undecodable ones skipped) is built as the stock function builds it
    (``tests/gateway/test_internals.py`` compares the two).
    """
    event = await receive()
    kind = event["type"]
    if kind != "http.request" and kind != "websocket.connect":
        return {}
    path = scope["path"]
    query = ""
    raw_query = scope.get("query_string")
    if raw_query:
        with contextlib.suppress(UnicodeDecodeError):
            query = raw_query.decode("utf-8")
    method = scope.get("method", "GET")
    environ = dict(_ENVIRON_CONSTANTS)
    environ["wsgi.input"] = _CheckedBody(event, receive) if method == "POST" else _NO_BODY
    environ["REQUEST_METHOD"] = method
    environ["PATH_INFO"] = path
    environ["QUERY_STRING"] = query
    environ["RAW_URI"] = f"{path}?{query}" if query else path
    environ["asgi.receive"] = receive
    environ["asgi.send"] = send
    environ["asgi.scope"] = scope
    for raw_name, raw_value in scope["headers"]:
        try:
            name = raw_name.upper().decode("utf-8")
            value = raw_value.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if name == "CONTENT-TYPE":
            environ["CONTENT_TYPE"] = value
        elif name == "CONTENT-LENGTH":
            environ["CONTENT_LENGTH"] = value
        else:
            key = "HTTP_" + name.replace("-", "_")
            previous = environ.get(key)
            environ[key] = value if previous is None else f"{previous},{value}"
    environ["wsgi.url_scheme"] = environ.get("HTTP_X_FORWARDED_PROTO", "http")
    return environ


class PacketQueue:
    """The outgoing packets of one Engine.IO session: an unbounded ``asyncio.Queue``, smaller.

    python-engineio gives every session an ``asyncio.Queue``: three deques and an ``Event``
    with a fourth, ~2.5 KB per connection before anything is queued. This keeps the same
    interface (``put``/``put_nowait``, ``get``/``get_nowait``, ``task_done``/``join``,
    ``qsize``/``empty``) on one list and waiter lists made only when someone waits.
    """

    __slots__ = ("_getters", "_head", "_items", "_joiners", "_unfinished", "on_put")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._head = 0
        self._unfinished = 0
        self._getters: list[asyncio.Future[None]] | None = None
        self._joiners: list[asyncio.Future[None]] | None = None
        # Called after every put (a websocket session starts its writer with it).
        self.on_put: Callable[[], None] | None = None

    def qsize(self) -> int:
        """Packets waiting."""
        return len(self._items) - self._head

    def empty(self) -> bool:
        """Whether no packet is waiting."""
        return self._head >= len(self._items)

    def put_nowait(self, item: Any) -> None:
        """Queues ``item`` and wakes one waiting ``get``."""
        self._items.append(item)
        self._unfinished += 1
        if self._getters:
            self._wake_getter()
        if self.on_put is not None:
            self.on_put()

    async def put(self, item: Any) -> None:
        """``put_nowait`` (the queue is unbounded)."""
        self.put_nowait(item)

    def get_nowait(self) -> Any:
        """The oldest packet; ``asyncio.QueueEmpty`` when there is none."""
        items, head = self._items, self._head
        if head >= len(items):
            raise asyncio.QueueEmpty
        item = items[head]
        head += 1
        if head >= len(items):
            items.clear()
            head = 0
        elif head > 64 and head * 2 > len(items):
            del items[:head]
            head = 0
        else:
            items[head - 1] = None
        self._head = head
        return item

    async def get(self) -> Any:
        """The oldest packet, waiting for one if needed."""
        while self.empty():
            waiter = asyncio.get_running_loop().create_future()
            if self._getters is None:
                self._getters = []
            self._getters.append(waiter)
            try:
                await waiter
            except BaseException:
                waiter.cancel()
                if waiter in self._getters:
                    self._getters.remove(waiter)
                if not self.empty():
                    self._wake_getter()  # pass on a wake-up this getter can no longer take
                raise
        return self.get_nowait()

    def _wake_getter(self) -> None:
        getters = self._getters
        while getters:
            waiter = getters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                return

    def task_done(self) -> None:
        """One packet taken out has been handled."""
        if self._unfinished <= 0:
            raise ValueError("task_done() called too many times")
        self._unfinished -= 1
        if self._unfinished == 0 and self._joiners:
            for joiner in self._joiners:
                if not joiner.done():
                    joiner.set_result(None)
            self._joiners = None

    async def join(self) -> None:
        """Waits until every queued packet has been handled."""
        if self._unfinished > 0:
            joiner = asyncio.get_running_loop().create_future()
            if self._joiners is None:
                self._joiners = []
            self._joiners.append(joiner)
            await joiner


class _LeanSocket(engineio.async_socket.AsyncSocket):  # type: ignore[misc]
    """python-engineio's session with two per-socket costs taken out, behaviour unchanged.

    - ``poll`` (the websocket writer's wait for the next packet) waited through
      ``asyncio.wait_for``, which wraps the queue read in a new task at every wake-up: one task
      per delivered message per recipient. ``asyncio.timeout`` bounds the same wait in place.
    - Every ping cycle started a background task that sleeps ``ping_interval`` (a task, its
      coroutine and a sleep future per idle socket); the server's ``PingWheel`` does the
      same for all sessions on one timer.
    - Every websocket had a writer task waiting on its queue for its whole life, and every
      packet went through the queue and woke it. A packet is now written at once when nothing
      is queued (``send_now``), and a writer task runs only while packets are queued
      (``_write_queued``).
    - The websocket reader and writer each waited under a timer re-armed for every frame;
      they wait without one, and the heartbeat ends silent sessions (``_websocket_handler``).
    """

    last_ping: float | None
    websocket: Any = None  # the session's websocket once it is on one
    writer: asyncio.Task[None] | None = None  # sending queued packets, while there are any
    writer_ended = False  # the end marker was taken: the websocket is closing
    connected: bool
    upgraded: bool
    upgrading: bool

    async def poll(self) -> list[Any]:
        """Waits for packets for a polling request (``QueueEmpty`` on timeout or cancel)."""
        queue = self.queue
        if queue.empty():
            # Waits outside any ``except`` block: a caught exception would stay alive, with
            # its traceback, for as long as the request waits.
            server = self.server
            try:
                async with asyncio.timeout(server.ping_interval + server.ping_timeout):
                    pkt = await queue.get()
            except (TimeoutError, asyncio.CancelledError):
                raise engineio.exceptions.QueueEmpty() from None
        else:
            pkt = queue.get_nowait()
        queue.task_done()
        if pkt is None:
            return []
        packets = [pkt]
        while True:
            try:
                pkt = queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            queue.task_done()
            if pkt is None:
                queue.put_nowait(None)
                break
            packets.append(pkt)
        return packets

    async def _websocket_handler(self, ws: Any) -> None:
        """python-engineio's websocket handler, with the reader waiting in place, unbounded.

        The stock reader wraps every wait for a frame in a new task and ``asyncio.wait_for``
        bounded by a ping cycle: an idle socket holds that task, its coroutine, a waiter
        future and a timer for its whole life, and every frame makes new ones. Here the
        reader waits in the handler's own task with no timer. A silent client is still cut
        by the heartbeat: it stops answering pings, python-engineio's service task finds the
        missed pong (within ``ping_timeout``, one pass over the sessions) and closes the
        session, and ``close`` ends the writer, which closes the websocket, which ends this
        reader. The upgrade steps, the writer task and the ending are the stock ones.
        """
        server = self.server
        websocket_wait = ws.wait

        if self.connected:
            # the socket was already connected, so this is an upgrade
            self.upgrading = True  # hold packet sends during the upgrade
            try:
                pkt = await websocket_wait()
            except OSError:
                return
            decoded_pkt = engineio.packet.Packet(encoded_packet=pkt)
            if decoded_pkt.packet_type != engineio.packet.PING or decoded_pkt.data != "probe":
                server.logger.info("%s: Failed websocket upgrade, no PING packet", self.sid)
                self.upgrading = False
                return
            await ws.send(engineio.packet.Packet(engineio.packet.PONG, data="probe").encode())
            await self.queue.put(engineio.packet.Packet(engineio.packet.NOOP))  # end poll
            try:
                pkt = await websocket_wait()
            except OSError:
                self.upgrading = False
                return
            decoded_pkt = engineio.packet.Packet(encoded_packet=pkt)
            if decoded_pkt.packet_type != engineio.packet.UPGRADE:
                self.upgraded = False
                server.logger.info(
                    "%s: Failed websocket upgrade, expected UPGRADE packet, received %s instead.",
                    self.sid,
                    pkt,
                )
                self.upgrading = False
                return
            self.upgraded = True
            self.upgrading = False
        else:
            self.connected = True
            self.upgraded = True
        self.websocket = ws
        self.queue.on_put = self._start_writer
        self._send_queued()  # whatever was queued before (the OPEN packet, say)
        server.logger.info("%s: Upgrade to websocket successful", self.sid)

        while True:
            try:
                p = await websocket_wait()
            except BaseException:  # the stock loop ends on anything, cancellation included
                break
            if p is None:
                break  # connection closed by client
            pkt, p = engineio.packet.Packet(encoded_packet=p), None
            try:
                await self.receive(pkt)
            except engineio.exceptions.UnknownPacketError:
                pass
            except engineio.exceptions.SocketIsClosedError:
                server.logger.info("Receive error -- socket is closed")
                break
            except BaseException:  # as stock: log it and keep reading
                # an unexpected error is logged and the connection ends properly
                server.logger.exception("Unknown receive error")
            # Not kept while the socket is idle (the last frame is often the CONNECT, token and
            # all).
            pkt = None

        await self.queue.put(None)  # the writer sends what is queued, then closes
        writer = self.writer
        if writer is not None:
            await writer
        await self.close(wait=False, abort=True, reason=server.reason.TRANSPORT_CLOSE)

    def _send_queued(self) -> None:
        """Writes the packets queued so far at once if it can; else a writer task sends them.

        On a websocket that can take frames now (see ``_GuardedWebSocket.send_text_now``), the
        packets queued before it was up (the OPEN packet) go out without a task. Whatever is
        left (the end marker, a paused transport) is the writer's, in order.
        """
        ws, queue = self.websocket, self.queue
        if isinstance(ws, _GuardedWebSocket) and self.writer is None:
            while not queue.empty() and ws.can_send_now():
                pkt = queue.get_nowait()
                if pkt is None:
                    queue.put_nowait(None)  # after everything else, if anything is queued
                    break
                queue.task_done()
                try:
                    ws.send_text_now(pkt.encode())
                except ClientDisconnected:
                    break  # the reader sees the closed websocket
        self._start_writer()

    def _start_writer(self) -> None:
        """Runs a writer task for the queued packets, unless one is running or the end is sent."""
        if self.writer is None and not self.writer_ended and not self.queue.empty():
            self.writer = asyncio.ensure_future(self._write_queued())

    async def _write_queued(self) -> None:
        """Sends the queued packets in order, then ends; ``None`` (the end) closes the socket.

        The stock writer is a task per socket that waits on the queue for the socket's whole
        life. Most packets now go out at once (``send_now``); this runs only while some are
        queued: before the websocket is up, while the transport is paused, or at the end.
        """
        ws, queue = self.websocket, self.queue
        try:
            while not queue.empty():
                pkt = queue.get_nowait()
                queue.task_done()
                if pkt is None:
                    break
                try:
                    await ws.send(pkt.encode())
                except BaseException:
                    break
            else:
                return  # all sent: the next queued packet starts a new writer
            self.writer_ended = True
            await ws.close()
        finally:
            self.writer = None

    async def close(
        self, wait: bool = True, abort: bool = False, reason: str | None = None
    ) -> None:
        """Closes the session (stock), then ends its transport.

        Stock python-engineio leaves a websocket open after a session closes (a ping timeout,
        a CLOSE packet) until the reader's next timeout, and a polling request waiting until
        its poll times out. Here the queue's end marker follows whatever is queued (the CLOSE
        packet included): the websocket writer sends the rest and closes the websocket, a
        waiting poll returns what is left.
        """
        await super().close(wait=wait, abort=abort, reason=reason)
        self.queue.put_nowait(None)

    async def send(self, pkt: engineio.packet.Packet) -> None:
        """Sends a packet to the client: at once when the writer is idle (``send_now``)."""
        if not await self.check_ping_timeout():
            return
        if not self.send_now(pkt):
            self.queue.put_nowait(pkt)

    def send_now(self, pkt: engineio.packet.Packet, *, at_once: bool = False) -> bool:
        """Sends ``pkt`` on the websocket now, skipping the queue and the writer task.

        Only when that cannot change the order of frames: the socket is on its websocket (not
        upgrading, not closing), nothing is queued and no writer is running (a writer may hold
        a packet while it waits for a paused transport). Returns ``False``, having sent
        nothing, when the packet has to be queued instead (which starts a writer).
        ``at_once``: see ``_GuardedWebSocket.send_frame_now``.
        """
        ws = self.websocket
        if (
            ws is None
            or self.upgrading
            or self.closing
            or self.closed
            or not isinstance(ws, _GuardedWebSocket)
            or self.writer is not None
            or self.writer_ended
            or not self.queue.empty()
            or pkt.binary
        ):
            return False
        try:
            return ws.send_frame_now(_text_frame(pkt), at_once=at_once)
        except ClientDisconnected:
            return False

    def schedule_ping(self) -> None:
        """Arms the next ping, once the previous ping's wait has completed (stock rule)."""
        if self.last_ping:
            self.last_ping = None
            self.server.pings.add(self)

    def ping_due(self) -> None:
        """Sends the next ping (called by the server's ``PingWheel``)."""
        if self.closing or self.closed:
            return
        self.last_ping = time.time()
        pkt = engineio.packet.Packet(engineio.packet.PING)
        if not self.send_now(pkt):
            self.queue.put_nowait(pkt)


class PingWheel:
    """When each session's next ping is due, for all sessions, on one event-loop timer.

    Every session waits the same ``interval`` between a pong and its next ping, so sessions
    queued in the order they were added are also in the order they are due: the timer only
    ever waits for the oldest, and each firing pings every session due by then (``slack``
    lets a burst of them go out in one pass). A timer per session costs ~0.5 KB each and one
    more timer set and cancelled per ping.
    """

    def __init__(self, interval: float, *, slack: float = 0.05) -> None:
        self._interval = interval
        self._slack = slack
        self._due: deque[tuple[float, _LeanSocket]] = deque()
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._due)

    def add(self, socket: _LeanSocket) -> None:
        """Pings ``socket`` (its ``ping_due``) one interval from now."""
        loop = asyncio.get_running_loop()
        due = loop.time() + self._interval
        self._due.append((due, socket))
        if self._timer is None:
            self._timer = loop.call_at(due + self._slack, self._fire)

    def _fire(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        queue = self._due
        while queue and queue[0][0] <= now:
            _, socket = queue.popleft()
            socket.ping_due()
        if queue:
            self._timer = loop.call_at(queue[0][0] + self._slack, self._fire)


class _Sessions(dict[str, Any]):
    """``EngineServer.sockets``: every new session becomes a ``_LeanSocket`` as it is stored.

    python-engineio builds its ``AsyncSocket`` inside ``_handle_connect`` and stores it here
    before it is used; ``_LeanSocket`` adds no state, so switching the class is safe.
    """

    def __setitem__(self, sid: str, socket: Any) -> None:
        if type(socket) is engineio.async_socket.AsyncSocket:
            socket.__class__ = _LeanSocket
        super().__setitem__(sid, socket)


class EngineServer(engineio.AsyncServer):  # type: ignore[misc]  # engineio is untyped
    """python-engineio's server with checked frames and a ``disconnect`` that never waits.

    Websocket frames and polling bodies that are not Engine.IO text packets end the session
    (see ``_GuardedWebSocket`` and ``_CheckedBody``).

    The stock ``disconnect(sid)`` queues a CLOSE packet and then waits until the client has
    collected it: a polling client that stops polling (after an oversized POST, say) holds
    that request forever, and a websocket client that does not hang up keeps its socket open.
    Here the CLOSE packet is followed by the queue's end marker, which makes the websocket
    writer close the websocket and the polling transport answer its last poll; the session
    is forgotten at once. With ``reconnect`` the CLOSE packet is left out: the transport just
    ends, which every client takes as a lost connection to re-establish (python-socketio's
    client takes a CLOSE packet as "the server is done with you" and stays away).
    """

    start_service_task: bool  # python-engineio's: whether the heartbeat task is yet to start

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sockets = _Sessions()
        self.pings = PingWheel(self.ping_interval)
        self.flushes = Flushes()
        # The driver table python-engineio picked for async_mode="asgi", with two entries
        # replaced by checked versions.
        drivers: dict[str, Any] = dict(getattr(self, "_async", {}))
        drivers.update(websocket=_GuardedWebSocket, translate_request=_translate_request)
        setattr(self, "_async", drivers)  # noqa: B010 - attribute mypy cannot see through

    async def handle_request(self, scope: Any, receive: Any, send: Any) -> None:
        """python-engineio's entry point, with a direct path for a new websocket session.

        A client that opens its session on a websocket (``EIO=4&transport=websocket``, no
        ``sid``: how the gateway's clients connect) takes the stock steps without the stock
        dispatch: ``handle_request`` → ``_handle_connect`` → ``handle_get_request`` →
        ``_upgrade_websocket`` → the websocket wrapper's ``__call__`` each stay suspended, as
        a coroutine frame, for the socket's life. Here one coroutine does their work for that
        request; every other request (polling, an upgrade, anything malformed) takes the stock
        path.
        """
        if scope.get("type") != "websocket" or not self._opens_websocket(scope):
            # The stock result (a websocket's "") is not passed on: the gateway's ASGI entry
            # returns this coroutine to uvicorn, for which an app returns None.
            await super().handle_request(scope, receive, send)
            return None
        opened = await self._open_websocket_session(scope, receive, send)
        if opened is None:
            return None  # refused, and told so
        socket, websocket = opened
        await socket._websocket_handler(websocket)  # until the websocket ends
        if socket.closed and self.sockets.get(socket.sid) is socket:
            del self.sockets[socket.sid]  # the session is over
        return None

    async def _open_websocket_session(
        self, scope: Any, receive: Any, send: Any
    ) -> tuple[_LeanSocket, _GuardedWebSocket] | None:
        """The session and its accepted websocket; ``None`` when the request was refused.

        Its own coroutine, so that what only the opening needs (the OPEN packet, the parsed
        headers) is freed once the socket is open instead of living in a suspended frame.
        """
        environ = await _translate_request(scope, receive, send)
        if not environ:
            return None
        if self.cors_allowed_origins != []:
            origin = environ.get("HTTP_ORIGIN")
            if origin:
                allowed = self._cors_allowed_origins(environ)
                if allowed is not None and origin not in allowed:
                    self._log_error_once(origin + " is not an accepted origin.", "bad-origin")
                    refusal = self._bad_request(origin + " is not an accepted origin.")
                    await self._make_response(refusal, environ)
                    return None
        connection = {
            part.strip() for part in environ.get("HTTP_CONNECTION", "").lower().split(",")
        }
        if environ.get("HTTP_UPGRADE", "").lower() != "websocket" or "upgrade" not in connection:
            self._log_error_once("Invalid websocket upgrade", "bad-upgrade")
            await self._make_response(self._bad_request("Invalid websocket upgrade"), environ)
            return None
        if self.start_service_task:
            self.start_service_task = False
            self.service_task_handle = self.start_background_task(self._service_task)
        sid = self.generate_id()
        socket = _LeanSocket(self, sid)
        self.sockets[sid] = socket
        opening = {
            "sid": sid,
            "upgrades": [],
            "pingTimeout": int(self.ping_timeout * 1000),
            "pingInterval": int(self.ping_interval + self.ping_interval_grace_period) * 1000,
            "maxPayload": self.max_http_buffer_size,
        }
        await socket.send(engineio.packet.Packet(engineio.packet.OPEN, opening))
        accepted = await self._trigger_event("connect", sid, environ, run_async=False)
        if accepted is not None and accepted is not True:
            del self.sockets[sid]
            self.logger.warning("Application rejected connection")
            await self._make_response(self._unauthorized(accepted or None), environ)
            return None
        socket.schedule_ping()
        websocket = _GuardedWebSocket(socket._websocket_handler, self)
        await websocket.accept(environ)
        return socket, websocket

    def _opens_websocket(self, scope: Any) -> bool:
        """Whether a websocket request opens a new Engine.IO session on it (stock rules)."""
        try:
            query = urllib.parse.parse_qs(scope.get("query_string", b"").decode("utf-8"))
        except UnicodeDecodeError:
            return False
        return (
            "sid" not in query
            and "j" not in query
            and query.get("EIO") == ["4"]
            and query.get("transport", ["polling"])[0] == "websocket"
            and "websocket" in self.transports
        )

    async def _trigger_event(self, event: str, *args: Any, run_async: bool = False) -> Any:
        """Runs an Engine.IO event's handler: the stock rules, without a closure per call.

        python-engineio wraps every call (every message received) in a new closure after
        asking ``inspect`` whether the handler is a coroutine function; python-socketio's
        handlers are, and run inline here (``async_handlers=False``). Errors are handled as
        stock: logged, and a failed ``connect`` handler refuses the connection. Anything else
        (a background run, a plain function) takes the stock path.
        """
        handler = self.handlers.get(event)
        if handler is None or run_async or not _is_coroutine_function(handler):
            return await super()._trigger_event(event, *args, run_async=run_async)
        try:
            try:
                return await handler(*args)
            except TypeError:
                if event == "disconnect" and len(args) == 2:
                    # legacy disconnect handlers take no reason (stock rule)
                    return await handler(args[0])
                raise
        except asyncio.CancelledError:
            return None
        except Exception:
            self.logger.exception("%s async handler error", event)
            return False if event == "connect" else None

    def create_queue(self, *args: Any, **kwargs: Any) -> PacketQueue:
        """Each session's packet queue (see ``PacketQueue``)."""
        return PacketQueue()

    async def disconnect(self, sid: str | None = None, *, reconnect: bool = False) -> None:
        """Closes one session (or all) without waiting on the client."""
        if sid is None:
            await super().disconnect()
            return
        socket = self.sockets.pop(sid, None)
        if socket is None or socket.closed or socket.closing:
            return
        await socket.close(wait=False, abort=reconnect, reason=self.reason.SERVER_DISCONNECT)


class GatewayServer(socketio.AsyncServer):  # type: ignore[misc]  # socketio is untyped
    """An ``AsyncServer`` that accepts only the gateway's protocol (see the module doc)."""

    def __init__(
        self,
        *,
        handshake_limit: int,
        handshake_timeout: float,
        on_protocol_error: Callable[[], None],
        **kwargs: Any,
    ) -> None:
        super().__init__(json=OrjsonCodec, **kwargs)
        self.gate = HandshakeGate(
            limit=handshake_limit, timeout=handshake_timeout, expire=self.close_session
        )
        self._on_protocol_error = on_protocol_error
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- Engine.IO events -------------------------------------------------------------------

    async def _handle_eio_connect(self, eio_sid: str, environ: dict[str, Any]) -> None:
        self.gate.opened(eio_sid)
        await super()._handle_eio_connect(eio_sid, environ)

    def _engineio_server_class(self) -> type[EngineServer]:
        return EngineServer

    async def _handle_eio_message(self, eio_sid: str, data: object) -> None:
        if eio_sid not in self.eio.sockets:
            return  # closed by the server; the client has not hung up yet
        try:
            pkt = decode_packet(data)
        except ProtocolError as exc:
            self._on_protocol_error()
            log.warning("closing a connection that broke the protocol", extra={"reason": str(exc)})
            self.close_session(eio_sid)
            return
        if pkt.packet_type == sio_packet.CONNECT:
            await self._handle_connect(eio_sid, pkt.namespace, pkt.data)
        elif pkt.packet_type == sio_packet.DISCONNECT:
            await self._handle_disconnect(eio_sid, pkt.namespace, self.reason.CLIENT_DISCONNECT)
        else:
            await self._handle_event(eio_sid, pkt.namespace, pkt.id, pkt.data)

    async def _handle_eio_disconnect(self, eio_sid: str, reason: str) -> None:
        try:
            await super()._handle_eio_disconnect(eio_sid, reason)
        finally:
            # After the disconnect handlers, which may have re-armed the session's timer.
            self.gate.closed(eio_sid)

    # -- closing without blocking the caller ------------------------------------------------

    def close_session(self, eio_sid: str, *, reconnect: bool = False) -> None:
        """Closes an Engine.IO session and its transport, in the background.

        With ``reconnect`` (drain) clients see only their transport end and reconnect on their
        own; without it they are told the server closed the session.
        """
        self.spawn(self.eio.disconnect(eio_sid, reconnect=reconnect))

    def kick(self, sid: str) -> None:
        """Ends a socket with a Socket.IO DISCONNECT, then closes its transport.

        The client sees "io server disconnect" and does not reconnect by itself: used when
        the client's credentials or behaviour are the reason.
        """
        eio_sid = self.manager.eio_sid_from_sid(sid, NAMESPACE)

        async def _disconnect() -> None:
            # ignore_queue: the socket is local; never ask other replicas to look for it.
            await super(GatewayServer, self).disconnect(sid, ignore_queue=True)
            if eio_sid is not None:
                await self.eio.disconnect(eio_sid)

        self.spawn(_disconnect())

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Runs ``coro`` in the background with a time bound, keeping a reference to it."""
        task = asyncio.ensure_future(asyncio.wait_for(coro, _CLOSE_TIMEOUT))
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            if not isinstance(exc, TimeoutError):
                log.warning("closing a connection failed", exc_info=exc)
