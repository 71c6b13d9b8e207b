"""Running a replica: single-node mode, key rotation without restart, JWKS fetch bounds, metrics."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx

from tests.gateway.clients import NodeClients, PyClient
from tests.gateway.conftest import Cluster, Stack, unique
from tests.support.keys import mint, new_rsa_key


async def test_single_node_mode_and_key_rotation_without_restart(
    stack: Stack, node: NodeClients
) -> None:
    """No REDIS_URL: rooms, presence and publishing in memory. A key added to the auth service
    is picked up live."""
    auth = stack.auth(None)
    gateway = stack.gateway(
        auth,
        None,
        JWKS_UNKNOWN_KID_COOLDOWN="0.5",
        GATEWAY_PUBLISH_RATE="0.5",
        GATEWAY_PUBLISH_BURST="3",
    )
    assert gateway.get("/readyz").json()["checks"] == {
        "draining": False,
        "keys": True,
        "redis": None,
    }
    old_token = auth.signer.token()
    room = unique("public:solo-")
    for name in ("x", "y"):
        await node.connect(name, gateway.url, token=old_token)
        await node.emit(name, "join", {"room": room})
    await node.emit("x", "message", {"room": room, "text": "local"})
    assert (await node.next_event("y", "message"))["text"] == "local"
    # Both sockets are one user: listed once.
    ack = await node.emit("y", "who", {"room": room})
    assert ack == {"ok": True, "room": room, "members": [{"id": ack["members"][0]["id"],
                                                          "name": "alice"}]}  # fmt: skip

    # Publishing: each client has its own bucket (burst 3 here), then 429 with Retry-After.
    body = {"room": room, "event": "notification", "data": {"n": 1}}
    backend, other = auth.signer.service_token(), auth.signer.service_token("reports")
    statuses = [
        httpx.post(
            gateway.url + "/v1/publish", json=body, headers={"Authorization": f"Bearer {backend}"}
        )
        for _ in range(4)
    ]
    assert [r.status_code for r in statuses] == [202, 202, 202, 429]
    assert statuses[-1].json()["error"]["code"] == "rate_limited"
    assert int(statuses[-1].headers["retry-after"]) >= 1
    other_client = httpx.post(
        gateway.url + "/v1/publish", json=body, headers={"Authorization": f"Bearer {other}"}
    )
    assert other_client.status_code == 202
    assert (await node.next_event("x", "notification")) == {"n": 1}
    assert gateway.metric("gateway_publishes_total", result="rate_limited") == 1

    new = auth.rotate()
    new_token = new.token()
    deadline = time.monotonic() + 10
    while True:  # the auth service re-reads its key folder about once a second
        reply = await node.connect(unique("rotated"), gateway.url, token=new_token)
        if reply["type"] == "connect" or time.monotonic() > deadline:
            break
        assert reply["data"]["code"] == "token_invalid"
        await asyncio.sleep(0.5)
    assert reply["type"] == "connect", reply
    # A real login now signs with the new key, and tokens of the old key still verify.
    _, real = auth.register_and_login()
    assert (await node.connect("real", gateway.url, token=real))["type"] == "connect"
    assert (await node.connect("old", gateway.url, token=old_token))["type"] == "connect"
    assert gateway.metric("gateway_jwks_fetches_total", result="ok") >= 2


async def test_burst_of_unknown_kids_costs_at_most_one_fetch_per_cooldown(
    stack: Stack, node: NodeClients
) -> None:
    """SECURITY 10, through the gateway: forged kids cannot make it hammer the JWKS."""
    auth = stack.auth(None)
    gateway = stack.gateway(auth, None, JWKS_UNKNOWN_KID_COOLDOWN="60")
    before = sum(
        gateway.metric("gateway_jwks_fetches_total", result=r) for r in ("ok", "error", "invalid")
    )
    stranger = new_rsa_key()
    for index in range(40):
        token = mint(stranger, kid=uuid.uuid4().hex, issuer=auth.url)
        reply = await node.connect(f"f{index}", gateway.url, token=token)
        assert reply["data"]["code"] == "token_invalid"
    after = sum(
        gateway.metric("gateway_jwks_fetches_total", result=r) for r in ("ok", "error", "invalid")
    )
    assert after - before <= 1
    assert (await node.connect("valid", gateway.url, token=auth.signer.token()))[
        "type"
    ] == "connect"


async def test_metrics_are_exposed(
    cluster: Cluster, node: NodeClients, py_clients: list[PyClient]
) -> None:
    room = unique("public:metrics-")
    await node.connect("m1", cluster.a.url, token=cluster.signer.token())
    py = PyClient()
    py_clients.append(py)
    await py.connect(cluster.a.url, token=cluster.signer.token())
    await py.call("join", {"room": room})
    await node.emit("m1", "join", {"room": room})
    await node.emit("m1", "message", {"room": room, "text": "counted"})
    await py.next_event("message")

    text = cluster.a.get("/metrics").text
    for series in (
        "gateway_connected_sockets",
        "gateway_handshake_duration_seconds_count",
        'gateway_handshakes_total{code="",result="accepted"}',
        'gateway_events_total{event="message",result="ok"}',
        "gateway_deliveries_total",
        'gateway_jwks_fetches_total{result="ok"}',
        "gateway_redis_up 1.0",
        "gateway_auth_service_calls_total 0.0",
        "process_resident_memory_bytes",
    ):
        assert series in text, series
    assert cluster.a.metric("gateway_connected_sockets") >= 2
    assert cluster.a.metric("gateway_deliveries_total") >= 1
    health = cluster.a.get("/healthz")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
