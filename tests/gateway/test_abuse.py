"""Hostile clients (SECURITY 17, 18, 19): oversized frames, malformed packets, event floods.

Each attack must end the attacker's own connection and nothing else: the replica stays up
and a bystander's socket keeps working.
"""

from __future__ import annotations

import asyncio
import time

import httpx

from tests.gateway.clients import NodeClients, RawSocket
from tests.gateway.conftest import Cluster, Gateway, Stack, unique


async def assert_bystander_fine(node: NodeClients, gateway: Gateway, token: str) -> None:
    """A fresh socket on ``gateway`` still joins and round-trips a message."""
    name = unique("bystander")
    room = unique("public:by-")
    assert (await node.connect(name, gateway.url, token=token))["type"] == "connect"
    assert (await node.emit(name, "join", {"room": room}))["ok"] is True
    assert (await node.emit(name, "message", {"room": room, "text": "still here"}))["ok"] is True
    assert gateway.process.alive()


async def test_oversized_websocket_frame_closes_the_connection(
    cluster: Cluster, node: NodeClients
) -> None:
    async with RawSocket.open(cluster.a.url) as raw:
        assert (await raw.connect(cluster.signer.token())).startswith("40")
        await raw.send('42["message",{"room":"public:x","text":"' + "x" * 200_000 + '"}]')
        assert await raw.closed()
    await assert_bystander_fine(node, cluster.a, cluster.signer.token())


async def test_oversized_or_garbage_polling_body_closes_the_session(
    cluster: Cluster, node: NodeClients
) -> None:
    base = cluster.b.url + "/socket.io/?EIO=4&transport=polling"
    bodies = {
        "oversized": "4" + "x" * 200_000,
        "unknown engine.io type": "9nonsense",
        "empty packet between separators": '42["x",{}]\x1e\x1e42["y",{}]',
        "base64 binary": "bAAAA",
    }
    async with httpx.AsyncClient(timeout=10) as http:
        for case, body in bodies.items():
            opened = await http.get(base)
            sid = opened.text[opened.text.index('"sid":"') + 7 :].split('"')[0]
            url = f"{base}&sid={sid}"
            token = cluster.signer.token()
            assert (await http.post(url, content='40{"token":"' + token + '"}')).text == "OK"
            assert (await http.get(url)).text.startswith("40"), case
            refused = await http.post(url, content=body)
            assert refused.status_code == 400, case
            after = await http.get(url)
            assert after.status_code == 400, case  # the session is gone
    assert "Traceback" not in cluster.b.logs()
    await assert_bystander_fine(node, cluster.b, cluster.signer.token())


MALFORMED = {
    "binary event with attachments": '451-["message",{"_placeholder":true,"num":0}]',
    "huge attachment count": '459999999999-["message",{}]',
    "binary frame": b"\x04\x01\x02\x03",
    "event data not a list": '42"just a string"',
    "event name not a string": "42[1,2]",
    "empty event": "42[]",
    "reserved event name": '42["disconnect","spoof"]',
    "unsolicited ack": '43["whatever"]',
    "connect error from a client": '44{"message":"x"}',
    "invalid json": '42["message",{',
    "deeply nested json": "42" + "[" * 100_000 + "]" * 100_000,
    "huge integer": '42["message",' + "9" * 5000 + "]",
    "connect data not an object": '40"string-auth"',
    "unknown socket.io packet type": "49",
    "unknown engine.io packet type": "9nonsense",
}


async def test_malformed_packets_close_only_that_socket(
    cluster: Cluster, node: NodeClients
) -> None:
    """SECURITY 18: each bad packet closes its socket; the replica and bystanders are fine."""
    for case, frame in MALFORMED.items():
        async with RawSocket.open(cluster.a.url) as raw:
            assert (await raw.connect(cluster.signer.token())).startswith("40"), case
            await raw.send(frame)
            assert await raw.closed(timeout=5), case
    assert cluster.a.metric("gateway_protocol_errors_total") >= len(MALFORMED) - 2
    await assert_bystander_fine(node, cluster.a, cluster.signer.token())
    assert "Traceback" not in cluster.a.logs()


async def test_event_flood_is_rate_limited_then_disconnected(
    cluster: Cluster, node: NodeClients
) -> None:
    """SECURITY 19: a flooding socket gets rate_limited acks, then is cut; others unaffected."""
    room = unique("public:flood-")
    token = cluster.signer.token()
    await node.connect("calm", cluster.b.url, token=cluster.signer.token())
    await node.emit("calm", "join", {"room": room})
    await node.connect("flooder", cluster.b.url, token=token)
    await node.emit("flooder", "join", {"room": room})

    flood = asyncio.create_task(
        node.flood("flooder", "message", {"room": room, "text": "spam"}, count=3000)
    )
    # While the flood runs, the calm client's round trips stay quick.
    latencies = []
    while not flood.done():
        started = time.perf_counter()
        assert (await node.emit("calm", "leave", {"room": unique("public:")}))["ok"] is False
        latencies.append(time.perf_counter() - started)
        await asyncio.sleep(0.1)
    results = await flood
    assert results.get("rate_limited", 0) > 0, results
    assert results.get("ok", 0) <= 60, results  # the burst plus what refilled meanwhile
    disconnect = await node.next("flooder", "disconnect")
    assert disconnect["reason"] == "io server disconnect"
    assert max(latencies) < 1.0, latencies
    assert cluster.b.metric("gateway_rate_limited_total") > 0
    assert cluster.b.metric("gateway_server_disconnects_total", reason="rate_abuse") >= 1
    await assert_bystander_fine(node, cluster.b, cluster.signer.token())


async def test_sessions_without_a_connection_are_closed(stack: Stack) -> None:
    """Engine.IO sessions that never connect, or drop their connection, do not linger."""
    auth = stack.auth(None)
    gateway = stack.gateway(auth, None, GATEWAY_HANDSHAKE_TIMEOUT="1")
    async with RawSocket.open(gateway.url) as idle, RawSocket.open(gateway.url) as quitter:
        assert (await quitter.connect(auth.signer.token())).startswith("40")
        await quitter.send("41")  # Socket.IO DISCONNECT, Engine.IO session kept open
        started = time.monotonic()
        assert await idle.closed(timeout=5)
        assert await quitter.closed(timeout=5)
        assert time.monotonic() - started < 4


async def _answer_pings(sock: RawSocket, seconds: float) -> None:
    """Answers the server's Engine.IO pings for ``seconds`` (no other frame is expected)."""
    try:
        async with asyncio.timeout(seconds):
            while True:
                frame = await sock.recv(timeout=seconds + 5)
                raise AssertionError(f"unexpected frame {frame!r}")
    except TimeoutError:
        pass


async def test_a_client_that_stops_answering_pings_is_cut(stack: Stack) -> None:
    """The Engine.IO heartbeat ends a silent session; a client that answers stays connected."""
    auth = stack.auth(None)
    gateway = stack.gateway(auth, None, GATEWAY_PING_INTERVAL="1", GATEWAY_PING_TIMEOUT="1")
    async with (
        RawSocket.open(gateway.url, ping_interval=None) as silent,
        RawSocket.open(gateway.url, ping_interval=None) as alive,
    ):
        assert (await silent.connect(auth.signer.token())).startswith("40")
        assert (await alive.connect(auth.signer.token())).startswith("40")
        assert gateway.metric("gateway_connected_sockets") == 2
        started = time.monotonic()
        answering = asyncio.create_task(_answer_pings(alive, 6))
        # A ping after 1 s, its pong due 1 s later, found within one more ping_timeout.
        assert await silent.closed(timeout=8)
        assert time.monotonic() - started < 5
        await answering  # five pings answered in time: still open
        assert alive.ws.close_code is None
        assert gateway.metric("gateway_connected_sockets") == 1
