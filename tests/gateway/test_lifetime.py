"""A token's life on a live socket (SECURITY 21): expiry, ``reauth``, logout everywhere.

The test replicas run with ``JWT_LEEWAY=1`` and ``GATEWAY_TOKEN_EXPIRING_LEAD=2``: a token
with a few seconds to live gets ``token_expiring`` at once and is cut a second after ``exp``.
"""

from __future__ import annotations

import asyncio
import time

import redis

from shared.revocation import CHANNEL, Revocation, revoked_before_for
from tests.gateway.clients import NodeClients, PyClient
from tests.gateway.conftest import Cluster, unique


async def test_expiring_token_is_warned_then_cut(cluster: Cluster, node: NodeClients) -> None:
    token = cluster.signer.token(ttl=3)
    exp = int(time.time()) + 3
    await node.connect("c", cluster.a.url, token=token)
    warning = await node.next_event("c", "token_expiring", timeout=5)
    assert abs(warning["exp"] - exp) <= 1
    disconnect = await node.next("c", "disconnect", timeout=8)
    assert disconnect["reason"] == "io server disconnect"
    assert time.time() >= warning["exp"]
    reply = await node.connect("again", cluster.a.url, token=token)
    assert reply["data"]["code"] == "token_expired"


async def test_reauth_keeps_the_socket_past_the_old_expiry(
    cluster: Cluster, node: NodeClients
) -> None:
    sub = unique("re")
    await node.connect("c", cluster.b.url, token=cluster.signer.token(sub, ttl=2))
    await node.next_event("c", "token_expiring", timeout=5)
    fresh = cluster.signer.token(sub, ttl=600)
    ack = await node.emit("c", "reauth", {"token": fresh})
    assert ack == {"ok": True, "exp": ack["exp"]} and ack["exp"] > time.time() + 500
    await asyncio.sleep(3.5)
    assert not [m for m in node.drain_events("c") if m["type"] == "disconnect"]
    assert (await node.emit("c", "join", {"room": unique("public:")}))["ok"] is True


async def test_reauth_refusals(cluster: Cluster, node: NodeClients) -> None:
    sub = unique("re")
    await node.connect("c", cluster.a.url, token=cluster.signer.token(sub))
    cases = {
        "forbidden": cluster.signer.token(unique("someone-else")),
        "token_expired": cluster.signer.token(sub, ttl=-60),
        "token_invalid": cluster.signer.token(sub, audience="elsewhere"),
    }
    for code, token in cases.items():
        ack = await node.emit("c", "reauth", {"token": token})
        assert ack["ok"] is False and ack["error"]["code"] == code, (code, ack)
    assert (await node.emit("c", "join", {"room": unique("public:")}))["ok"] is True


async def test_reauth_without_a_private_room_leaves_it(cluster: Cluster, node: NodeClients) -> None:
    sub, room = unique("re"), unique("private:")
    await node.connect("member", cluster.a.url, token=cluster.signer.token(sub, rooms=[room]))
    await node.connect("peer", cluster.b.url, token=cluster.signer.token(rooms=[room]))
    await node.emit("member", "join", {"room": room})
    await node.emit("peer", "join", {"room": room})
    ack = await node.emit("member", "reauth", {"token": cluster.signer.token(sub)})
    assert ack["ok"] is True
    left = await node.next_event("peer", "presence")
    assert left["event"] == "leave" and left["room"] == room
    await node.emit("peer", "message", {"room": room, "text": "after"})
    await asyncio.sleep(0.3)
    assert not [m for m in node.drain_events("member") if m.get("event") == "message"]


async def test_logout_everywhere_disconnects_every_socket_within_a_second(
    cluster: Cluster, node: NodeClients, py_clients: list[PyClient]
) -> None:
    name, token = cluster.auth.register_and_login()
    await node.connect("on-a", cluster.a.url, token=token)
    py = PyClient()
    py_clients.append(py)
    await py.connect(cluster.b.url, token=token)

    started = time.monotonic()
    cluster.auth.logout_all(token)
    assert (await node.next("on-a", "disconnect", timeout=2))["reason"] == "io server disconnect"
    await py.next_event("disconnect", timeout=2)
    assert time.monotonic() - started < 1.5

    reply = await node.connect("retry", cluster.b.url, token=token)
    assert reply["data"]["code"] == "token_revoked"
    # Logging in again after the logout gives a token that works.
    fresh = cluster.auth.login(name)
    assert (await node.connect("after", cluster.b.url, token=fresh))["type"] == "connect"


async def test_revocation_from_the_channel_disconnects_and_is_remembered(
    cluster: Cluster, node: NodeClients
) -> None:
    sub = unique("revoked")
    old = cluster.signer.token(sub, iat=int(time.time()) - 5)
    await node.connect("c", cluster.a.url, token=old)
    client = redis.Redis.from_url(cluster.redis.url)
    try:
        revocation = Revocation(sub=sub, revoked_before=revoked_before_for(time.time() - 2))
        started = time.monotonic()
        client.publish(CHANNEL, revocation.encode())
        await node.next("c", "disconnect", timeout=2)
        assert time.monotonic() - started < 1.0
    finally:
        client.close()
    # Tokens issued before the time stay dead, on every replica; a newer one is fine.
    for gateway in (cluster.a, cluster.b):
        reply = await node.connect(unique("r"), gateway.url, token=old)
        assert reply["data"]["code"] == "token_revoked"
    fresh = cluster.signer.token(sub)
    assert (await node.connect("fresh", cluster.b.url, token=fresh))["type"] == "connect"
