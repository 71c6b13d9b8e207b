"""Presence across replicas: ``presence`` events once per user, ``who`` from any replica, and
what a replica killed with SIGKILL leaves behind (its members and connections expire).
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

from tests.gateway.clients import NodeClients
from tests.gateway.conftest import Cluster, Stack, unique

TTL = 3.0


def names(ack: dict[str, Any]) -> list[str]:
    """The member names of a ``who`` ack, which must be well-formed."""
    assert ack["ok"] is True, ack
    assert set(ack) == {"ok", "room", "members"}, ack
    assert all(set(member) == {"id", "name"} for member in ack["members"]), ack
    assert len({member["id"] for member in ack["members"]}) == len(ack["members"]), ack
    return sorted(member["name"] for member in ack["members"])


def presence_events(node: NodeClients, name: str) -> list[tuple[str, str]]:
    """The ``presence`` events socket ``name`` got so far, as (event, user name)."""
    return [
        (m["args"][0]["event"], m["args"][0]["user"]["name"])
        for m in node.drain_events(name)
        if m["type"] == "event" and m["event"] == "presence"
    ]


async def test_who_answers_for_the_whole_cluster_and_presence_is_per_user(
    cluster: Cluster, node: NodeClients
) -> None:
    room = unique("public:who-")
    alice, bob, carol = unique("alice"), unique("bob"), unique("carol")
    carol_sub = unique("c")
    sockets = {
        "alice": (cluster.a, cluster.signer.token(name=alice)),
        "bob": (cluster.b, cluster.signer.token(name=bob)),
        "carol-a": (cluster.a, cluster.signer.token(carol_sub, name=carol)),
        "carol-b": (cluster.b, cluster.signer.token(carol_sub, name=carol)),
    }
    for socket, (gateway, token) in sockets.items():
        assert (await node.connect(socket, gateway.url, token=token))["type"] == "connect"
        assert (await node.emit(socket, "join", {"room": room}))["ok"] is True

    everyone = sorted([alice, bob, carol])
    for socket in sockets:  # asked on either replica, by any member: one entry per user
        ack = await node.emit(socket, "who", {"room": room})
        assert ack["room"] == room and names(ack) == everyone, (socket, ack)

    # Arrivals are announced per user: carol's second socket was no news.
    await asyncio.sleep(0.3)
    assert presence_events(node, "alice") == [("join", bob), ("join", carol)]
    assert presence_events(node, "bob") == [("join", carol)]
    # One of carol's sockets leaving is no departure either; the last one is.
    await node.emit("carol-b", "leave", {"room": room})
    assert names(await node.emit("bob", "who", {"room": room})) == everyone
    await node.close("carol-a")
    assert await node.next_event("bob", "presence") == {
        "room": room,
        "user": {"id": carol_sub, "name": carol},
        "event": "leave",
    }
    assert names(await node.emit("alice", "who", {"room": room})) == sorted([alice, bob])
    assert presence_events(node, "alice") == [("leave", carol)]

    # Who may ask about what.
    refused = {
        "carol-b": ({"room": room}, "not_joined"),  # left it
        "bob": ({"room": unique("private:")}, "forbidden"),
        "alice": ({"room": "has space"}, "bad_request"),
    }
    for socket, (payload, code) in refused.items():
        ack = await node.emit(socket, "who", payload)
        assert ack["ok"] is False and ack["error"]["code"] == code, (socket, ack)
    assert (await node.emit("alice", "who", {"room": room, "x": 1}))["error"]["code"] == (
        "bad_request"
    )
    own = await node.emit("carol-b", "who", {"room": f"user:{carol_sub}"})
    assert own["members"] == [{"id": carol_sub, "name": carol}]


async def test_a_killed_replica_members_and_connections_expire(
    stack: Stack, node: NodeClients
) -> None:
    """After SIGKILL nothing tells the cluster; the replica's heartbeat just stops."""
    redis = stack.redis()
    auth = stack.auth(None)
    env = {"GATEWAY_REPLICA_TTL": str(TTL), "GATEWAY_MAX_CONNECTIONS_PER_USER": "2"}
    a, b = stack.gateway(auth, redis, **env), stack.gateway(auth, redis, **env)
    room = unique("public:crash-")
    carol_sub, dave_sub = unique("carol"), unique("dave")
    sockets = {
        "alice": (a, auth.signer.token(name="alice")),
        "bob": (b, auth.signer.token(name="bob")),
        "carol-a": (a, auth.signer.token(carol_sub, name="carol")),
        "carol-b": (b, auth.signer.token(carol_sub, name="carol")),
    }
    for socket, (gateway, token) in sockets.items():
        assert (await node.connect(socket, gateway.url, token=token))["type"] == "connect"
        assert (await node.emit(socket, "join", {"room": room}))["ok"] is True
    assert names(await node.emit("alice", "who", {"room": room})) == ["alice", "bob", "carol"]

    # The per-user limit holds across replicas: one socket on each, the third is refused.
    dave = auth.signer.token(dave_sub, name="dave")
    assert (await node.connect("dave-a", a.url, token=dave))["type"] == "connect"
    assert (await node.connect("dave-b", b.url, token=dave))["type"] == "connect"
    for gateway in (a, b):
        refused = await node.connect(unique("dave"), gateway.url, token=dave)
        assert refused["type"] == "connect_error", refused
        assert refused["message"] == "unavailable"
        assert refused["data"]["code"] == "too_many_connections"
    node.drain_events("alice")

    killed = time.monotonic()
    b.process.signal(signal.SIGKILL)
    while "bob" in names(await node.emit("alice", "who", {"room": room})):
        assert time.monotonic() - killed < TTL + 1.5, "bob still listed after the expiry"
        await asyncio.sleep(0.2)
    # Carol still has a socket on the live replica; bob's departure is announced once reaped.
    assert names(await node.emit("carol-a", "who", {"room": room})) == ["alice", "carol"]
    left = await node.next_event("alice", "presence", timeout=TTL + 2)
    assert left["event"] == "leave" and left["user"]["name"] == "bob", left
    await asyncio.sleep(0.3)
    assert presence_events(node, "alice") == []

    # Dave's socket on the dead replica no longer counts: a second one fits on the live one.
    assert (await node.connect("dave-a2", a.url, token=dave))["type"] == "connect"
    assert a.metric("gateway_replicas_reaped_total") == 1
