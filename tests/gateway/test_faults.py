"""Faults (SECURITY 28–31): Redis dying, hostile Redis traffic, SIGTERM, connection storms.

Tests that break or drain a replica run their own processes (``stack``); the hostile-payload
test uses the shared cluster, which must shrug it off.
"""

from __future__ import annotations

import asyncio
import signal
import time

import httpx
import orjson
import redis

from shared.revocation import CHANNEL as REVOCATIONS
from tests.gateway.clients import NodeClients, PyClient
from tests.gateway.conftest import Cluster, Gateway, Stack, unique
from tests.support.waiting import eventually

FANOUT = "sockgate:socketio"


def ready(gateway: Gateway) -> bool:
    return gateway.get("/readyz").status_code == 200


async def test_redis_killed_and_restarted_during_broadcasts(
    stack: Stack, node: NodeClients
) -> None:
    """SECURITY 28: readiness follows Redis, local rooms keep working, fan-out comes back."""
    redis_server = stack.redis()
    auth = stack.auth(None)
    a, b = stack.gateway(auth, redis_server), stack.gateway(auth, redis_server)
    room = unique("public:outage-")
    subs = {}
    for name, gateway in (("alice", a), ("carol", a), ("bob", b)):
        subs[name] = unique(name)
        assert (await node.connect(name, gateway.url, token=auth.signer.token(subs[name])))[
            "type"
        ] == "connect"
        await node.emit(name, "join", {"room": room})
    node.drain_events("alice")

    sent = 0
    stop = asyncio.Event()

    async def broadcast() -> None:
        nonlocal sent
        while not stop.is_set():
            ack = await node.emit("alice", "message", {"room": room, "text": f"m{sent}"})
            assert ack["ok"] is True
            sent += 1
            await asyncio.sleep(0.1)

    broadcaster = asyncio.create_task(broadcast())
    try:
        await node.next_event("bob", "message")
        redis_server.kill()
        await eventually(lambda: not ready(a) and not ready(b), 5, "readyz fails on both")
        body = a.get("/readyz").json()
        assert body["checks"]["redis"] is False and body["status"] == "unavailable"
        # Broadcasts go on during the outage, and the same replica still delivers them.
        during = sent
        await eventually(lambda: sent >= during + 5, 5, "broadcasts acked during the outage")
        node.drain_events("carol")
        await node.next_event("carol", "message")
        # Handshakes go on: the per-user limit falls back to the replica's own count. The
        # cluster's members cannot be listed, and the answer says so.
        assert (await node.connect("late", a.url, token=auth.signer.token()))["type"] == "connect"
        ack = await node.emit("carol", "who", {"room": room})
        assert ack["ok"] is False and ack["error"]["code"] == "unavailable", ack

        redis_server.start()
        await eventually(lambda: ready(a) and ready(b), 10, "readyz recovers on both")
        node.drain_events("bob")
        await node.next_event("bob", "message")  # across replicas again
        # Redis came back empty: every replica wrote its members back.
        deadline = time.monotonic() + 5
        while True:
            ack = await node.emit("bob", "who", {"room": room})
            members = {m["id"] for m in ack.get("members", [])}
            if members == set(subs.values()) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert members == set(subs.values()), ack
    finally:
        stop.set()
        (outcome,) = await asyncio.gather(broadcaster, return_exceptions=True)
    assert outcome is None, outcome  # no failed send on the way
    for gateway in (a, b):
        assert gateway.process.alive()
        assert gateway.metric("gateway_redis_reconnects_total") >= 2
        assert gateway.metric("gateway_redis_up") == 1
    assert a.metric("gateway_redis_publish_failures_total") > 0


async def test_hostile_payloads_on_the_redis_channels_are_ignored(
    cluster: Cluster, node: NodeClients, py_clients: list[PyClient]
) -> None:
    """SECURITY 29: anything but a well-formed emit to a policy room is dropped and logged."""
    victim_sub = unique("victim")
    reply = await node.connect("victim", cluster.a.url, token=cluster.signer.token(victim_sub))
    victim_sid = reply["sid"]

    def emit(**overrides: object) -> bytes:
        message = {
            "method": "emit", "event": "message", "data": [{"text": "pwned"}],
            "namespace": "/", "room": f"user:{victim_sub}", "skip_sid": None,
            "callback": None, "host_id": "attacker", "binary": False,
        }  # fmt: skip
        message.update(overrides)
        return orjson.dumps(message)

    hostile = {
        FANOUT: [
            b"not json at all",
            b"\xff\xfe\x00garbage",
            b"[1, 2, 3]",
            b"{" * 5000,
            b'{"method": "close_room", "room": null, "namespace": "/", "host_id": "x"}',
            orjson.dumps(
                {"method": "disconnect", "sid": victim_sid, "namespace": "/", "host_id": "x"}
            ),
            orjson.dumps(
                {
                    "method": "enter_room",
                    "sid": victim_sid,
                    "room": "public:trap",
                    "namespace": "/",
                    "host_id": "x",
                }
            ),
            emit(room=victim_sid),
            emit(room=None),
            emit(room=["public:a", f"user:{victim_sub}"]),
            emit(event="token_expiring"),
            emit(event="connect"),
            emit(data="not a list"),
            emit(binary=True),
            emit(callback=["x", "/", 1]),
            emit(namespace="/admin"),
            emit(host_id=None),
            b"x" * 1_000_000,
        ],
        REVOCATIONS: [
            b"garbage",
            b'{"type": "revoke_user", "sub": "", "before": 1}',
            b'{"type": "revoke_user", "sub": "x", "before": "soon"}',
            b'{"type": "revoke_everyone"}',
        ],
    }
    before = cluster.a.metric("gateway_redis_messages_rejected_total", channel=FANOUT)
    client = redis.Redis.from_url(cluster.redis.url)
    try:
        for channel, payloads in hostile.items():
            for payload in payloads:
                client.publish(channel, payload)
    finally:
        client.close()

    await eventually(
        lambda: (
            cluster.a.metric("gateway_redis_messages_rejected_total", channel=FANOUT)
            >= before + len(hostile[FANOUT])
        ),
        5,
        "every hostile fan-out message counted as rejected",
    )
    assert cluster.a.metric("gateway_redis_messages_rejected_total", channel=REVOCATIONS) >= 4
    assert "ignored a malformed message on a Redis channel" in cluster.a.logs()
    assert "Traceback" not in cluster.a.logs()
    # The replicas are fine: ready, the victim untouched, fan-out working.
    assert ready(cluster.a) and ready(cluster.b)
    room = unique("public:after-")
    await node.emit("victim", "join", {"room": room})
    py = PyClient()
    py_clients.append(py)
    await py.connect(cluster.b.url, token=cluster.signer.token())
    await py.call("join", {"room": room})
    await py.call("message", {"room": room, "text": "real"})
    assert (await node.next_event("victim", "message"))["text"] == "real"
    events = [m for m in node.drain_events("victim") if m["type"] in ("event", "disconnect")]
    assert all(m.get("args", [{}])[0].get("text") != "pwned" for m in events), events
    assert not [m for m in events if m["type"] == "disconnect"]


async def test_sigterm_drains_then_exits_within_grace(stack: Stack, node: NodeClients) -> None:
    """SECURITY 30: readiness fails first, sockets close in spread batches, exit in time."""
    auth = stack.auth(None)
    grace = 8.0
    gateway = stack.gateway(
        auth, None,
        GATEWAY_DRAIN_GRACE=str(grace), GATEWAY_DRAIN_DELAY="1", GATEWAY_DRAIN_SPREAD="1.5",
    )  # fmt: skip
    names = [f"s{index}" for index in range(8)]
    for name in names:
        assert (await node.connect(name, gateway.url, token=auth.signer.token()))[
            "type"
        ] == "connect"

    started = time.monotonic()
    gateway.process.signal(signal.SIGTERM)
    await eventually(lambda: not ready(gateway), 2, "readyz fails after SIGTERM")
    # Readiness failed while every socket was still open.
    assert not [m for name in names for m in node.drain_events(name) if m["type"] == "disconnect"]

    disconnects = [await node.next(name, "disconnect", timeout=grace) for name in names]
    assert {d["reason"] for d in disconnects} == {"transport close"}  # clients will reconnect
    moments = sorted(d["at"] for d in disconnects)
    assert moments[-1] - moments[0] >= 300, moments  # batches, not all at once

    exit_code = await asyncio.to_thread(gateway.process.wait, grace)
    assert exit_code == 0, gateway.logs()[-2000:]
    assert time.monotonic() - started < grace
    assert '"msg":"drained"' in gateway.logs()


async def test_handshake_storm_is_refused_fast_while_established_sockets_work(
    stack: Stack, node: NodeClients, py_clients: list[PyClient]
) -> None:
    """SECURITY 31: past the in-flight limit connects are refused as overloaded at once."""
    auth = stack.auth(None)
    gateway = stack.gateway(
        auth, None, GATEWAY_MAX_HANDSHAKES_IN_FLIGHT="4", GATEWAY_HANDSHAKE_TIMEOUT="30"
    )
    room = unique("public:storm-")
    await node.connect("calm", gateway.url, token=auth.signer.token())
    await node.emit("calm", "join", {"room": room})
    listener = PyClient()
    py_clients.append(listener)
    await listener.connect(gateway.url, token=auth.signer.token())
    await listener.call("join", {"room": room})

    # Sessions that open and never connect are handshakes in flight, like a storm's backlog.
    base = gateway.url + "/socket.io/?EIO=4&transport=polling"
    async with httpx.AsyncClient(timeout=10) as http:
        sids = []
        for _ in range(8):
            opened = (await http.get(base)).text
            sids.append(opened[opened.index('"sid":"') + 7 :].split('"')[0])

        started = time.monotonic()
        results = await node.storm(gateway.url, count=60, token=auth.signer.token())
        elapsed = time.monotonic() - started
        assert results == {"unavailable:overloaded": 60}, results
        assert elapsed < 10, elapsed
        assert gateway.metric("gateway_handshakes_total", result="refused", code="overloaded") >= 60

        # Established sockets never noticed.
        ack = await node.emit("calm", "message", {"room": room, "text": "during the storm"})
        assert ack["ok"] is True
        assert (await listener.next_event("message"))["text"] == "during the storm"

        # When the backlog clears, connects are accepted again.
        for sid in sids:
            await http.post(f"{base}&sid={sid}", content="1")
    reply = await node.connect("late", gateway.url, token=auth.signer.token())
    assert reply["type"] == "connect", reply
