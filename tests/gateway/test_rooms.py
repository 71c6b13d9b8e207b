"""Room policy (SECURITY 20): who may join what, and that nothing leaks to an intruder."""

from __future__ import annotations

import asyncio

from tests.gateway.clients import NodeClients
from tests.gateway.conftest import Cluster, unique


async def test_intruder_cannot_join_other_users_sockets_or_unlisted_rooms(
    cluster: Cluster, node: NodeClients
) -> None:
    victim = unique("victim")
    secret_room = unique("private:board-")
    await node.connect(
        "victim", cluster.a.url, token=cluster.signer.token(victim, rooms=[secret_room])
    )
    victim_sid = (await node.connect("victim2", cluster.a.url, token=cluster.signer.token(victim)))[
        "sid"
    ]
    assert await node.emit("victim", "join", {"room": secret_room}) == {
        "ok": True,
        "room": secret_room,
    }
    await node.connect("intruder", cluster.b.url, token=cluster.signer.token(unique("mallory")))

    for room in (f"user:{victim}", victim_sid, secret_room, "lobby", "admin:all", "public:"):
        ack = await node.emit("intruder", "join", {"room": room})
        assert ack == {
            "ok": False,
            "error": {"code": "forbidden", "message": ack["error"]["message"]},
        }, room
    for room in ("", "x" * 129, "has space", "semi;colon", "ünïcode"):
        ack = await node.emit("intruder", "join", {"room": room})
        assert ack["error"]["code"] == "bad_request", room
    # Sending to a room it is not in is refused as well, socket ids included.
    for room in (f"user:{victim}", victim_sid, secret_room):
        ack = await node.emit("intruder", "message", {"room": room, "text": "psst"})
        assert ack["ok"] is False, room

    # Traffic in the victim's rooms never reaches the intruder.
    await node.emit("victim", "message", {"room": secret_room, "text": "secret"})
    await node.emit("victim2", "message", {"room": f"user:{victim}", "text": "private note"})
    assert (await node.next_event("victim", "message"))["text"] == "private note"
    await asyncio.sleep(0.3)
    leaked = [m for m in node.drain_events("intruder") if m["type"] == "event"]
    assert leaked == []


async def test_private_room_follows_the_rooms_claim(cluster: Cluster, node: NodeClients) -> None:
    room = unique("private:team-")
    await node.connect("member", cluster.a.url, token=cluster.signer.token(rooms=[room]))
    await node.connect("other", cluster.a.url, token=cluster.signer.token(rooms=["private:else"]))
    assert (await node.emit("member", "join", {"room": room}))["ok"] is True
    assert (await node.emit("other", "join", {"room": room}))["error"]["code"] == "forbidden"


async def test_user_room_is_joined_on_connect_and_cannot_be_left(
    cluster: Cluster, node: NodeClients
) -> None:
    sub = unique("self")
    await node.connect("me", cluster.a.url, token=cluster.signer.token(sub))
    assert await node.emit("me", "join", {"room": f"user:{sub}"}) == {
        "ok": True,
        "room": f"user:{sub}",
    }
    ack = await node.emit("me", "leave", {"room": f"user:{sub}"})
    assert ack["error"]["code"] == "forbidden"


async def test_rooms_per_socket_are_limited(cluster: Cluster, node: NodeClients) -> None:
    await node.connect("greedy", cluster.b.url, token=cluster.signer.token())
    acks = [await node.emit("greedy", "join", {"room": f"public:r{index}"}) for index in range(12)]
    # The test replicas allow 10 rooms a socket (GATEWAY_MAX_ROOMS_PER_SOCKET).
    assert all(ack["ok"] for ack in acks[:10])
    assert [ack["error"]["code"] for ack in acks[10:]] == ["too_many_rooms"] * 2
    await node.emit("greedy", "leave", {"room": "public:r0"})
    assert (await node.emit("greedy", "join", {"room": "public:again"}))["ok"] is True
