"""The gateway's replacements for python-socketio/engineio internals, checked against the originals.

The manager's reverse room index must always agree with the stock full scan, the lean
packet queue must behave as ``asyncio.Queue`` for everything engineio asks of it, and the
request translation and event dispatch must give what python-engineio's own would. The
fan-out's Redis wire relies on redis-py's connection streams, and its publishes on the message
python-socketio's pub/sub manager builds. A broadcast's frames written at once must never
overtake frames held for the same socket.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import re
import weakref
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import engineio.packet
import pytest
import socketio
import uvicorn
from engineio.async_drivers import asgi as asgi_driver
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from socketio.async_pubsub_manager import AsyncPubSubManager
from socketio.base_manager import BaseManager
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState
from websockets import http11
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from services.gateway import server as server_module
from services.gateway.channel_publisher import ChannelPublisher
from services.gateway.fanout import LocalManager, RedisManager
from services.gateway.metrics import GatewayMetrics
from services.gateway.protocols import (
    WEBSOCKET_LOGGER,
    GatewayHttpProtocol,
    GatewayWebSocketProtocol,
    quiet_websocket_logger,
)
from services.gateway.redis_wire import PARTIAL, RedisWire
from services.gateway.server import Flag, PacketQueue
from services.gateway.subscriber import RedisSubscriber
from shared.metrics import new_registry
from tests.support.processes import RedisServer
from tests.support.waiting import eventually


def test_reverse_room_index_agrees_with_the_full_scan() -> None:
    manager = LocalManager(GatewayMetrics(new_registry(process_metrics=False)))
    rng = random.Random(1234)
    sids = [f"sid{i}" for i in range(40)]
    rooms = [f"public:room{i}" for i in range(15)]
    for step in range(6000):
        sid, room, roll = rng.choice(sids), rng.choice(rooms), rng.random()
        if roll < 0.5:
            manager.basic_enter_room(sid, "/", room, eio_sid=f"e-{sid}")
        elif roll < 0.8:
            manager.basic_leave_room(sid, "/", room)
        elif roll < 0.93:
            manager.basic_disconnect(sid, "/")
        else:
            manager.basic_close_room(room, "/")
        if step % 250 == 0 or step == 5999:
            for each in sids:
                expected = BaseManager.get_rooms(manager, each, "/")
                assert sorted(manager.get_rooms(each, "/")) == sorted(expected), (step, each)


def test_disconnect_leaves_every_room_of_the_socket_only() -> None:
    manager = LocalManager(GatewayMetrics(new_registry(process_metrics=False)))
    for room in ("public:a", "public:b", "user:1"):
        manager.basic_enter_room("s1", "/", room, eio_sid="e1")
    manager.basic_enter_room("s2", "/", "public:a", eio_sid="e2")
    manager.basic_disconnect("s1", "/")
    assert manager.get_rooms("s1", "/") == []
    assert manager.get_rooms("s2", "/") == ["public:a"]
    assert set(manager.rooms["/"]) == {"public:a"}


async def test_packet_queue_behaves_like_an_asyncio_queue() -> None:
    queue, reference = PacketQueue(), asyncio.Queue[int]()
    rng = random.Random(99)
    for _ in range(2000):
        if rng.random() < 0.55:
            item = rng.randrange(10_000)
            queue.put_nowait(item)
            reference.put_nowait(item)
        elif not reference.empty():
            assert queue.get_nowait() == reference.get_nowait()
        else:
            with pytest.raises(asyncio.QueueEmpty):
                queue.get_nowait()
        assert queue.qsize() == reference.qsize()
        assert queue.empty() == reference.empty()


async def test_packet_queue_wakes_a_waiting_getter_and_joins() -> None:
    queue = PacketQueue()
    getter = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    assert not getter.done()
    queue.put_nowait("frame")
    assert await asyncio.wait_for(getter, 1) == "frame"

    # A cancelled getter must not swallow the wake-up meant for the next one.
    first = asyncio.create_task(queue.get())
    second = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    first.cancel()
    queue.put_nowait("next")
    assert await asyncio.wait_for(second, 1) == "next"

    queue.put_nowait("a")
    joined = asyncio.create_task(queue.join())
    await asyncio.sleep(0)
    assert not joined.done()
    for _ in range(3):  # "frame", "next" and "a" were taken out or are pending
        if not queue.empty():
            queue.get_nowait()
        queue.task_done()
    await asyncio.wait_for(joined, 1)
    with pytest.raises(ValueError, match="too many"):
        queue.task_done()


def test_packet_queue_reports_every_put() -> None:
    """A websocket session starts its writer from ``on_put``; every put must reach it."""
    queue = PacketQueue()
    seen: list[int] = []
    queue.on_put = lambda: seen.append(queue.qsize())
    queue.put_nowait("a")
    asyncio.run(queue.put("b"))
    queue.put_nowait(None)
    assert seen == [1, 2, 3]
    assert [queue.get_nowait() for _ in range(3)] == ["a", "b", None]


@pytest.mark.parametrize("make", [asyncio.Event, Flag], ids=["asyncio.Event", "Flag"])
async def test_flag_behaves_like_an_asyncio_event(make: type[asyncio.Event] | type[Flag]) -> None:
    """uvicorn's flow control uses ``set``, ``clear``, ``is_set`` and ``wait``."""
    flag = make()
    assert not flag.is_set()
    waiters = [asyncio.ensure_future(flag.wait()) for _ in range(3)]
    cancelled = asyncio.ensure_future(flag.wait())
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    cancelled.cancel()
    await asyncio.gather(cancelled, return_exceptions=True)
    flag.set()
    assert flag.is_set()
    assert await asyncio.gather(*waiters) == [True, True, True]
    assert await flag.wait() is True  # set: returns at once
    flag.clear()
    assert not flag.is_set()
    late = asyncio.ensure_future(flag.wait())
    await asyncio.sleep(0)
    assert not late.done()
    flag.set()
    assert await late is True


def _scope(kind: str, **extra: object) -> dict[str, object]:
    scope: dict[str, object] = {
        "type": kind,
        "path": "/socket.io/",
        "query_string": b"EIO=4&transport=websocket",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"authorization", b"Bearer abc.def.ghi"),
            (b"x-many", b"one"),
            (b"X-Many", b"two"),
            (b"content-type", b"text/plain"),
            (b"x-bad", b"\xff\xfe"),
            (b"upgrade", b"websocket"),
        ],
    }
    scope.update(extra)
    return scope


@pytest.mark.parametrize(
    ("scope", "first_event"),
    [
        (_scope("websocket"), {"type": "websocket.connect"}),
        (_scope("http", method="GET", query_string=b""), {"type": "http.request"}),
        (_scope("http", method="POST"), {"type": "http.request", "body": b"4hi"}),
        (_scope("websocket"), {"type": "websocket.disconnect"}),
    ],
)
async def test_translate_request_builds_the_stock_environ(
    scope: dict[str, object], first_event: dict[str, object]
) -> None:
    async def receive() -> dict[str, object]:
        return first_event

    async def send(_message: object) -> None:
        return None

    ours = await server_module._translate_request(scope, receive, send)
    stock = await asgi_driver.translate_request(scope, receive, send)
    assert set(ours) == set(stock)
    for key, value in stock.items():
        if key != "wsgi.input":
            assert ours[key] == value, key
    if stock.get("REQUEST_METHOD") == "POST":  # python-engineio reads no other body
        assert await ours["wsgi.input"].read() == await stock["wsgi.input"].read()
    elif stock:
        assert await ours["wsgi.input"].read() == b""


async def test_a_polling_body_is_read_in_chunks_and_checked() -> None:
    chunks = [
        {"type": "http.request", "body": b"4one\x1e", "more_body": True},
        {"type": "http.request", "body": b"4two", "more_body": False},
    ]
    scope = _scope("http", method="POST")

    async def receive() -> dict[str, object]:
        return chunks.pop(0)

    environ = await server_module._translate_request(scope, receive, receive)
    body = environ["wsgi.input"]
    assert await body.read(100) == b"4one\x1e4two"
    assert await body.read() == b""

    bad = [{"type": "http.request", "body": b"4ok\x1e{not engine.io"}]

    async def receive_bad() -> dict[str, object]:
        return bad.pop(0)

    environ = await server_module._translate_request(scope, receive_bad, receive_bad)
    with pytest.raises(server_module.MalformedPayload):
        await environ["wsgi.input"].read()


async def test_engine_events_run_inline_with_the_stock_error_rules(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = server_module.EngineServer(async_mode="asgi")
    calls: list[tuple[object, ...]] = []

    async def message(*args: object) -> str:
        calls.append(args)
        return "handled"

    async def connect(_sid: str, _environ: object) -> None:
        raise RuntimeError("boom")

    async def disconnect(sid: str) -> None:  # a legacy handler without the reason
        calls.append(("disconnect", sid))

    server.on("message", message)
    server.on("connect", connect)
    server.on("disconnect", disconnect)
    assert await server._trigger_event("message", "sid1", "data") == "handled"
    assert calls == [("sid1", "data")]
    with caplog.at_level("ERROR"):
        assert await server._trigger_event("connect", "sid1", {}) is False
    assert "connect async handler error" in caplog.text
    assert await server._trigger_event("disconnect", "sid1", "client disconnect") is None
    assert calls[-1] == ("disconnect", "sid1")
    assert await server._trigger_event("unknown", "sid1") is None


@pytest.mark.parametrize(
    ("query", "direct"),
    [
        (b"EIO=4&transport=websocket", True),
        (b"transport=websocket&EIO=4&t=abc", True),
        (b"EIO=3&transport=websocket", False),  # the stock path refuses the version
        (b"EIO=4&transport=websocket&sid=abc", False),  # an upgrade of a polling session
        (b"EIO=4&transport=polling", False),
        (b"EIO=4", False),
        (b"EIO=4&transport=websocket&j=1", False),
        (b"EIO=4&EIO=4&transport=websocket", False),
        (b"\xff\xfe", False),
    ],
)
def test_only_new_websocket_sessions_take_the_direct_path(query: bytes, direct: bool) -> None:
    server = server_module.EngineServer(async_mode="asgi")
    assert server._opens_websocket({"type": "websocket", "query_string": query}) is direct


@pytest.mark.parametrize("size", [0, 10, 125, 126, 65_535, 65_536])
def test_a_prepared_frame_is_what_websockets_would_send(size: int) -> None:
    text = "é" * (size // 2) + "x" * (size % 2)
    pkt = engineio.packet.Packet(engineio.packet.MESSAGE, text)
    connection = ServerProtocol()
    connection.state = State.OPEN
    connection.send_text(pkt.encode().encode())
    assert server_module._text_frame(pkt) == b"".join(connection.data_to_send())
    assert server_module._text_frame(pkt) is server_module._text_frame(pkt)  # made once


class _Protocol:
    """The attributes of uvicorn's sans-I/O protocol that ``_trim_handshake_state`` touches."""

    def __init__(self, scope: dict[str, object], writable: asyncio.Event) -> None:
        self.scope = scope
        self.request = None
        self.response = None
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        self.writable = writable


def test_accepted_websockets_share_the_scope_parts_every_socket_has() -> None:
    def accepted(subprotocols: list[str]) -> _Protocol:
        scope = {
            "type": "websocket",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "extensions": {"websocket.http.response": {}},
            "state": {},
            "subprotocols": subprotocols,
            "path": "/socket.io/",
            "headers": [(b"authorization", b"Bearer abc.def.ghi")],
        }
        event = asyncio.Event()
        event.set()
        proto = _Protocol(scope, event)
        server_module._trim_handshake_state(proto)  # type: ignore[arg-type]
        return proto

    first, second, other = accepted([]), accepted([]), accepted(["chat"])
    for key in ("asgi", "extensions", "state", "subprotocols"):
        assert first.scope[key] is second.scope[key], key
    assert other.scope["subprotocols"] == ["chat"]  # what differs stays the socket's own
    assert other.scope["asgi"] is first.scope["asgi"]
    assert first.scope["path"] == "/socket.io/"
    assert first.scope["headers"] == []  # the environ holds its own copy
    assert first.writable.is_set()


def test_the_websocket_protocol_makes_no_per_socket_info_records(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """uvicorn's INFO lines per socket are never built; its warnings and errors still pass."""

    async def app(scope: object, receive: object, send: object) -> None:
        return None

    config = uvicorn.Config(app, ws=GatewayWebSocketProtocol, log_config=None)
    config.load()
    assert config.ws_protocol_class is GatewayWebSocketProtocol
    quiet_websocket_logger()
    loop = asyncio.new_event_loop()
    try:
        proto = GatewayWebSocketProtocol(config, ServerState(), {}, _loop=loop)
    finally:
        loop.close()
    for logger in (proto.logger, proto.conn.logger):
        assert logger.name == WEBSOCKET_LOGGER
        assert not logger.isEnabledFor(logging.INFO)
    with caplog.at_level(logging.INFO):  # even when the root logger takes INFO
        proto.conn.logger.info("connection open")
        proto.logger.error("ASGI callable returned without completing handshake.")
    assert [r.getMessage() for r in caplog.records] == [
        "ASGI callable returned without completing handshake."
    ]


class _Transport:
    """Just enough of an asyncio transport for uvicorn's protocols to take a request."""

    def __init__(self) -> None:
        self.protocol: object = None
        self.written = b""
        self.writes = 0

    def get_extra_info(self, name: str, default: object = None) -> object:
        info = {"sockname": ("127.0.0.1", 8001), "peername": ("127.0.0.1", 50000)}
        return info.get(name, default)

    def set_protocol(self, protocol: object) -> None:
        self.protocol = protocol

    def write(self, data: bytes) -> None:
        self.written += data
        self.writes += 1

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        return None

    def pause_reading(self) -> None:
        return None

    def resume_reading(self) -> None:
        return None


@pytest.mark.parametrize("http", [GatewayHttpProtocol, HttpToolsProtocol])
async def test_the_http_protocol_is_freed_once_a_websocket_takes_over(
    http: type[HttpToolsProtocol],
) -> None:
    """After the upgrade the HTTP protocol is garbage; ours leaves no cycle for the GC."""

    async def app(scope: object, receive: object, send: object) -> None:
        return None

    config = uvicorn.Config(app, http=http, ws=GatewayWebSocketProtocol, log_config=None)
    config.load()
    transport = _Transport()
    request = _HANDSHAKES["plain"][0] + b"\r\n"
    gc.disable()
    try:
        protocol = http(config, ServerState(), {}, _loop=asyncio.get_running_loop())
        protocol.connection_made(transport)  # type: ignore[arg-type]
        protocol.data_received(request)
        assert isinstance(transport.protocol, GatewayWebSocketProtocol)
        freed = weakref.ref(protocol)
        del protocol
        # uvicorn's own keeps a cycle (protocol <-> parser) that only the cyclic GC frees
        assert (freed() is None) is (http is GatewayHttpProtocol)
    finally:
        gc.enable()
    await asyncio.sleep(0.05)  # the websocket's ASGI task ends (the app never accepts)
    assert transport.written.startswith(b"HTTP/1.1 500 ")


_UPGRADE_LINE = b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n"
_UPGRADE_HEADERS = (
    b"Host: 127.0.0.1:8001\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
)
_KEY = b"Sec-WebSocket-Key: c2l4dGVlbiBieXRlIGtleQ==\r\n"
_HANDSHAKES = {  # name: (request without its final CRLF, handed over as parsed)
    "plain": (_UPGRADE_LINE + _UPGRADE_HEADERS + _KEY, True),
    "more headers": (
        _UPGRADE_LINE
        + _UPGRADE_HEADERS
        + _KEY
        + b"Authorization: Bearer a.b.c\r\nOrigin: http://x\r\nCookie: a=b; c=d\r\n"
        + b"Sec-WebSocket-Protocol: chat, superchat\r\nSec-WebSocket-Protocol: other\r\n",
        True,
    ),
    "latin-1 value": (_UPGRADE_LINE + _UPGRADE_HEADERS + _KEY + b"X-Name: caf\xe9\r\n", True),
    "padded value": (_UPGRADE_LINE + _UPGRADE_HEADERS + _KEY + b"X-Pad: \t a b \t \r\n", True),
    "empty body": (_UPGRADE_LINE + _UPGRADE_HEADERS + _KEY + b"Content-Length: 0\r\n", True),
    "128 headers": (
        _UPGRADE_LINE + _UPGRADE_HEADERS + _KEY + b"".join(b"X-%d: v\r\n" % i for i in range(123)),
        True,
    ),
    "HTTP/1.0": (_UPGRADE_LINE.replace(b"1.1", b"1.0") + _UPGRADE_HEADERS + _KEY, True),
    "no key": (_UPGRADE_LINE + _UPGRADE_HEADERS, True),  # websockets' 400, from the same request
    "old version": (_UPGRADE_LINE + _UPGRADE_HEADERS.replace(b"13", b"8") + _KEY, True),
    # what websockets' parser refuses takes uvicorn's path
    "a body": (_UPGRADE_LINE + _UPGRADE_HEADERS + _KEY + b"Content-Length: 3\r\n", False),
    "chunked": (_UPGRADE_LINE + _UPGRADE_HEADERS + _KEY + b"Transfer-Encoding: chunked\r\n", False),
    "129 headers": (
        _UPGRADE_LINE + _UPGRADE_HEADERS + _KEY + b"".join(b"X-%d: v\r\n" % i for i in range(124)),
        False,
    ),
    "a long line": (
        _UPGRADE_LINE + _UPGRADE_HEADERS + _KEY + b"X-L: " + b"a" * 9000 + b"\r\n",
        False,
    ),
    "POST": (_UPGRADE_LINE.replace(b"GET", b"POST") + _UPGRADE_HEADERS + _KEY, False),
}


async def _echo_app(scope: Any, receive: Any, send: Any) -> None:
    """Accepts a websocket and sends back, as text, the first message it receives."""
    if scope["type"] != "websocket":
        return
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    message = await receive()
    if message["type"] == "websocket.receive":
        await send({"type": "websocket.send", "text": f"echo {message.get('text')}"})


@pytest.fixture
def websockets_header_reads() -> Iterator[list[None]]:
    """One entry each time websockets' HTTP parser reads a request's headers."""
    reads: list[None] = []
    parse_headers = http11.parse_headers

    def counted(*args: Any, **kwargs: Any) -> Any:
        reads.append(None)
        return (yield from parse_headers(*args, **kwargs))

    http11.parse_headers = counted
    try:
        yield reads
    finally:
        http11.parse_headers = parse_headers


async def _handshake(http: type[HttpToolsProtocol], request: bytes) -> tuple[bytes, Any]:
    """What a client sending ``request`` then one text frame gets, and the websocket's state."""
    config = uvicorn.Config(_echo_app, http=http, ws=GatewayWebSocketProtocol, log_config=None)
    config.load()
    transport = _Transport()
    protocol = http(config, ServerState(), {}, _loop=asyncio.get_running_loop())
    protocol.connection_made(transport)  # type: ignore[arg-type]
    protocol.data_received(request + b"\r\n")
    await asyncio.sleep(0.01)
    websocket = transport.protocol
    state = None
    if isinstance(websocket, GatewayWebSocketProtocol):
        if websocket.conn.state is State.OPEN:
            websocket.data_received(Frame(Opcode.TEXT, b"hi").serialize(mask=True))
            await asyncio.sleep(0.01)
        scope = getattr(websocket, "scope", {})
        state = (
            websocket.conn.state,
            type(websocket.conn.handshake_exc),
            {key: value for key, value in scope.items() if key != "state"},
        )
    return re.sub(rb"Date: [^\r]*\r\n", b"", transport.written), state


@pytest.mark.parametrize("name", list(_HANDSHAKES))
async def test_an_upgrade_is_handed_over_parsed_with_the_outcome_of_uvicorns_path(
    name: str, websockets_header_reads: list[None]
) -> None:
    """The handshake's answer, scope and state are the same as when websockets re-reads it."""
    request, handed_over = _HANDSHAKES[name]
    stock = await _handshake(HttpToolsProtocol, request)
    assert len(websockets_header_reads) == 1
    ours = await _handshake(GatewayHttpProtocol, request)
    assert ours == stock
    assert len(websockets_header_reads) == (1 if handed_over else 2)
    if name == "plain":  # the handed-over websocket reads frames afterwards
        assert ours[0].startswith(b"HTTP/1.1 101 ")
        assert Frame(Opcode.TEXT, b"echo hi").serialize(mask=False) in ours[0]


async def test_redis_py_connections_expose_the_stream_pair_the_fanout_wire_uses(
    redis_server: RedisServer,
) -> None:
    """``RedisWire`` reads and writes a connected redis-py connection's own streams."""
    client = Redis.from_url(redis_server.url)
    pool = client.connection_pool
    connection = pool.connection_class(**pool.connection_kwargs)
    await connection.connect()  # type: ignore[no-untyped-call]
    try:
        wire = RedisWire(connection)
        wire.send("PING")
        wire.send("ECHO", b"\x00bytes\r\n")
        replies: list[object] = []
        while len(replies) < 2:
            await wire.read()
            while (reply := wire.next_reply()) is not PARTIAL:
                replies.append(reply)
        assert replies == [b"PONG", b"\x00bytes\r\n"]
        assert not wire.closing() and wire.buffered() == 0
    finally:
        await connection.disconnect()
        await client.aclose()


async def test_a_room_emit_publishes_the_message_python_socketio_would(
    redis_server: RedisServer,
) -> None:
    """Published first, by the gateway's own emit, it is still the stock message, byte for byte,
    ending with the replica's ``host_id`` (what the echo check looks for)."""
    channel = f"sockgate:test-emit-{random.randrange(10**9)}"
    client = Redis.from_url(redis_server.url)
    metrics = GatewayMetrics(CollectorRegistry())
    publisher = ChannelPublisher(client, metrics=metrics, retry_max=0.2)
    manager = RedisManager(channel=channel, metrics=metrics, publisher=publisher)
    subscriber = RedisSubscriber(
        client,
        handlers={channel: manager.handle_message},
        on_subscribed=[],
        metrics=metrics,
        retry_max=0.2,
    )
    manager.subscriber = subscriber
    listener = Redis.from_url(redis_server.url).pubsub(ignore_subscribe_messages=True)
    await listener.subscribe(channel)
    await publisher.start()
    await subscriber.start()
    try:
        assert await subscriber.wait_subscribed(5)
        await eventually(lambda: publisher.connected, 5, "the publisher connected")
        emits: list[tuple[Any, dict[str, Any]]] = [
            ({"id": "1", "text": "hé"}, {"room": "public:a", "skip_sid": "s1"}),
            (({"id": "2"},), {"to": "public:b"}),
            ({"id": "3"}, {"room": "user:u1", "namespace": "/"}),
        ]
        for data, where in emits:
            await AsyncPubSubManager.emit(manager, "message", data, **where)  # stock
            await manager.emit("message", data, **where)  # the gateway's
        raw: list[bytes] = []
        async with asyncio.timeout(5):
            while len(raw) < 2 * len(emits):
                message = await listener.get_message(timeout=1.0)  # None: the confirmation
                if message is not None:
                    raw.append(message["data"])
        for stock, ours in zip(raw[::2], raw[1::2], strict=True):
            assert ours == stock
            assert ours.endswith(manager._own_ending)
    finally:
        await subscriber.close()
        await publisher.close()
        await listener.aclose()  # type: ignore[no-untyped-call]
        await client.aclose()


async def test_room_broadcasts_are_written_at_once_only_while_passes_hold_one() -> None:
    flushes = server_module.Flushes()
    assert flushes.room_emit() is True  # the first of a pass, after quiet ones
    assert flushes.room_emit() is False  # a second in the same pass is held
    await asyncio.sleep(0)
    assert flushes.room_emit() is False  # the pass after a busy one is held throughout
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # passes without broadcasts change nothing
    assert flushes.room_emit() is True  # the last pass with broadcasts had one
    await asyncio.sleep(0)
    assert flushes.room_emit() is True


async def test_a_frame_written_at_once_never_overtakes_held_ones() -> None:
    """``at_once`` writes straight to the transport only when nothing is held for the socket."""
    loop = asyncio.get_running_loop()
    engine = server_module.EngineServer(async_mode="asgi")
    opened: asyncio.Future[server_module._GuardedWebSocket] = loop.create_future()
    done = asyncio.Event()
    frames = [Frame(Opcode.TEXT, b"4%d" % n).serialize(mask=False) for n in range(4)]
    written_at_accept: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()  # websocket.connect
        websocket = server_module._GuardedWebSocket(None, engine)
        await websocket.accept({"asgi.receive": receive, "asgi.send": send})
        # the 101 is held for the first frame: at_once waits behind it
        assert websocket.send_frame_now(frames[0], at_once=True)
        written_at_accept.append(transport.writes)
        opened.set_result(websocket)
        await done.wait()

    config = uvicorn.Config(
        app, http=GatewayHttpProtocol, ws=GatewayWebSocketProtocol, log_config=None
    )
    config.load()
    transport = _Transport()
    protocol = GatewayHttpProtocol(config, ServerState(), {}, _loop=loop)
    protocol.connection_made(transport)  # type: ignore[arg-type]
    protocol.data_received(_HANDSHAKES["plain"][0] + b"\r\n")
    websocket = await asyncio.wait_for(opened, 2)
    try:
        assert written_at_accept == [0]
        await asyncio.sleep(0)
        assert transport.written.startswith(b"HTTP/1.1 101 ")
        assert transport.written.endswith(frames[0])
        assert transport.writes == 1  # the 101 and the frame in one write

        # nothing held: written before the call returns, one write each
        assert websocket.send_frame_now(frames[1], at_once=True)
        assert transport.written.endswith(frames[1])
        assert transport.writes == 2

        # a held frame first: the next one joins it, in order, at the end of the pass
        assert websocket.send_frame_now(frames[2])
        assert websocket.send_frame_now(frames[3], at_once=True)
        assert transport.writes == 2
        await asyncio.sleep(0)
        assert transport.writes == 3
        assert transport.written.endswith(frames[2] + frames[3])
    finally:
        done.set()
        await asyncio.sleep(0.01)  # the app returns; uvicorn closes the websocket


async def test_emits_that_reach_no_socket_here_do_not_make_a_pass_busy() -> None:
    """Another replica's messages for rooms with no member here (most of them, in a large
    cluster) must not keep this replica's broadcasts held."""
    engine = server_module.EngineServer(async_mode="asgi")
    server = SimpleNamespace(eio=engine, packet_class=socketio.packet.Packet)
    manager = LocalManager(GatewayMetrics(new_registry(process_metrics=False)))
    manager.set_server(server)
    manager.basic_enter_room("s1", "/", None, eio_sid="e1")
    manager.basic_enter_room("s1", "/", "public:a", eio_sid="e1")
    for room, skip in (("public:a", "s1"), ("public:a", "s1"), ("public:none", None)):
        await manager.emit("message", {"n": 1}, "/", room=room, skip_sid=skip)
    await asyncio.sleep(0)
    assert engine.flushes.room_emit() is True  # the pass before had no broadcast at all
