"""Rooms and messages across two replicas, with real tokens from the auth service.

Both official client kinds take part: python-socketio and the Node ``socket.io-client``.
"""

from __future__ import annotations

import asyncio

from tests.gateway.clients import NodeClients, PyClient
from tests.gateway.conftest import Cluster, unique


async def test_python_clients_on_two_replicas_exchange_messages(
    cluster: Cluster, py_clients: list[PyClient]
) -> None:
    (alice, alice_token), (bob, bob_token) = (
        cluster.auth.register_and_login(),
        cluster.auth.register_and_login(),
    )
    room = unique("public:chat-")
    a, b = PyClient(), PyClient()
    py_clients += [a, b]
    await a.connect(cluster.a.url, token=alice_token)
    await b.connect(cluster.b.url, token=bob_token)

    assert await a.call("join", {"room": room}) == {"ok": True, "room": room}
    assert await b.call("join", {"room": room}) == {"ok": True, "room": room}
    presence = await a.next_event("presence")
    assert presence == {"room": room, "user": {"id": presence["user"]["id"], "name": bob},
                        "event": "join"}  # fmt: skip

    ack = await b.call("message", {"room": room, "text": "hello from b"})
    assert ack["ok"] is True and isinstance(ack["id"], str) and isinstance(ack["ts"], int)
    received = await a.next_event("message")
    assert received["id"] == ack["id"] and received["ts"] == ack["ts"]
    assert received["room"] == room and received["text"] == "hello from b"
    assert received["sender"]["name"] == bob

    ack = await a.call("message", {"room": room, "text": "hello from a"})
    received = await b.next_event("message")
    assert received["text"] == "hello from a" and received["sender"]["name"] == alice
    # The sender does not get its own message back.
    await asyncio.sleep(0.2)
    assert ("message", received) not in a.received()

    assert await a.call("leave", {"room": room}) == {"ok": True, "room": room}
    left = await b.next_event("presence")
    assert left["event"] == "leave" and left["user"]["name"] == alice


async def test_node_clients_on_two_replicas_exchange_messages(
    cluster: Cluster, node: NodeClients
) -> None:
    _, alice_token = cluster.auth.register_and_login()
    _, bob_token = cluster.auth.register_and_login()
    room = unique("public:node-")
    assert (await node.connect("alice", cluster.a.url, token=alice_token))["type"] == "connect"
    assert (await node.connect("bob", cluster.b.url, token=bob_token))["type"] == "connect"
    assert await node.emit("alice", "join", {"room": room}) == {"ok": True, "room": room}
    assert await node.emit("bob", "join", {"room": room}) == {"ok": True, "room": room}

    ack = await node.emit("alice", "message", {"room": room, "text": "hi bob"})
    assert ack["ok"] is True
    message = await node.next_event("bob", "message")
    assert message["text"] == "hi bob" and message["id"] == ack["id"]

    await node.emit("bob", "message", {"room": room, "text": "hi alice"})
    assert (await node.next_event("alice", "message"))["text"] == "hi alice"


async def test_node_and_python_clients_share_a_room_over_polling_and_websocket(
    cluster: Cluster, node: NodeClients, py_clients: list[PyClient]
) -> None:
    room = unique("public:mixed-")
    py = PyClient()
    py_clients.append(py)
    await py.connect(cluster.b.url, token=cluster.signer.token(), transports=["websocket"])
    reply = await node.connect(
        "poller", cluster.a.url, token=cluster.signer.token(), transports=["polling"]
    )
    assert reply["type"] == "connect"
    await node.emit("poller", "join", {"room": room})
    await py.call("join", {"room": room})
    await py.call("message", {"room": room, "text": "to the poller"})
    assert (await node.next_event("poller", "message"))["text"] == "to the poller"
    await node.emit("poller", "message", {"room": room, "text": "to python"})
    assert (await py.next_event("message"))["text"] == "to python"


async def test_sockets_of_one_user_share_their_user_room(
    cluster: Cluster, node: NodeClients
) -> None:
    sub = unique("multi")
    await node.connect("phone", cluster.a.url, token=cluster.signer.token(sub))
    await node.connect("laptop", cluster.b.url, token=cluster.signer.token(sub))
    ack = await node.emit("phone", "message", {"room": f"user:{sub}", "text": "sync"})
    assert ack["ok"] is True
    assert (await node.next_event("laptop", "message"))["text"] == "sync"


async def test_sending_needs_membership(cluster: Cluster, node: NodeClients) -> None:
    await node.connect("c", cluster.a.url, token=cluster.signer.token())
    ack = await node.emit("c", "message", {"room": unique("public:"), "text": "x"})
    assert ack["ok"] is False and ack["error"]["code"] == "not_joined"
    ack = await node.emit("c", "leave", {"room": unique("public:")})
    assert ack["error"]["code"] == "not_joined"


async def test_every_payload_is_validated(cluster: Cluster, node: NodeClients) -> None:
    await node.connect("c", cluster.a.url, token=cluster.signer.token())
    room = unique("public:v-")
    await node.emit("c", "join", {"room": room})
    bad = [
        ("join", ["public:x"]),
        ("join", [{}]),
        ("join", [{"room": 7}]),
        ("join", [{"room": "public:x", "extra": 1}]),
        ("join", [None]),
        ("join", []),
        ("join", [{"room": "public:x"}, {"room": "public:y"}]),
        ("message", [{"room": room}]),
        ("message", [{"room": room, "text": ["a"]}]),
        ("message", [{"room": room, "text": ""}]),
        ("message", [{"room": room, "text": "x" * 5000}]),
        ("message", [{"room": room, "text": "é" * 2049}]),
        ("reauth", [{"token": 12}]),
        ("who", [{}]),
        ("who", [{"room": ["public:x"]}]),
        ("no-such-event", [{}]),
    ]
    for event, args in bad:
        ack = await node.emit("c", event, *args)
        assert ack["ok"] is False, (event, args, ack)
        assert ack["error"]["code"] == "bad_request", (event, args, ack)
        assert set(ack["error"]) == {"code", "message"}
    # The socket is still fine afterwards.
    assert (await node.emit("c", "message", {"room": room, "text": "é" * 2048}))["ok"] is True
