"""Backend publishing (``POST /v1/publish``) with service tokens from the auth service.

A backend gets a token through the client-credentials grant (``POST /v1/auth/token``) and
publishes on any replica; the notification reaches the target's sockets on every replica.
Refusals are JSON with a code, never a 500.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.gateway.clients import NodeClients
from tests.gateway.conftest import Cluster, unique


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def notification(**target: str) -> dict[str, Any]:
    return {**target, "event": "notification", "data": {"title": "hi"}}


async def test_service_token_publishes_to_a_user_and_a_room_on_both_replicas(
    cluster: Cluster, node: NodeClients
) -> None:
    token = cluster.auth.service_token()  # from the real auth service, HTTP Basic
    sub, room = unique("notified"), unique("public:news-")
    for socket, gateway in (("user-a", cluster.a), ("user-b", cluster.b)):
        reply = await node.connect(socket, gateway.url, token=cluster.signer.token(sub))
        assert reply["type"] == "connect"
    for socket, gateway in (("reader-a", cluster.a), ("reader-b", cluster.b)):
        await node.connect(socket, gateway.url, token=cluster.signer.token())
        assert (await node.emit(socket, "join", {"room": room}))["ok"] is True

    async with httpx.AsyncClient(base_url=cluster.a.url, timeout=10) as http:
        sent = await http.post(
            "/v1/publish",
            headers=bearer(token),
            json={"user": sub, "event": "notification", "data": {"kind": "ping"}},
        )
        assert sent.status_code == 202, sent.text
        assert sent.json() == {"ok": True, "room": f"user:{sub}"}
        for socket in ("user-a", "user-b"):
            assert await node.next_event(socket, "notification") == {"kind": "ping"}

        sent = await http.post(
            "/v1/publish",
            headers=bearer(token),
            json={"room": room, "event": "notification", "data": {"headline": "hello"}},
        )
        assert sent.status_code == 202, sent.text
        for socket in ("reader-a", "reader-b"):
            assert await node.next_event(socket, "notification") == {"headline": "hello"}
    assert cluster.a.metric("gateway_publishes_total", result="accepted") >= 2

    # A service token publishes; it cannot open a socket as if it were a user.
    refused = await node.connect("service-socket", cluster.b.url, token=token)
    assert refused["type"] == "connect_error"
    assert refused["message"] == "unauthorized"
    assert refused["data"]["code"] == "token_invalid"


def refusals(cluster: Cluster) -> dict[str, tuple[dict[str, str], Any, int, str]]:
    """case -> (headers, JSON body, status, error code)."""
    signer = cluster.signer
    service = bearer(signer.service_token())
    room = unique("public:")
    return {
        "no token": ({}, notification(room=room), 401, "token_missing"),
        "not a JWT": (bearer("x" * 40), notification(room=room), 401, "token_invalid"),
        "Basic credentials": (
            {"Authorization": "Basic YmFja2VuZDpzZWNyZXQ="},
            notification(room=room),
            401,
            "token_invalid",
        ),
        "expired": (
            bearer(signer.token("client:backend", scope="publish", ttl=-120)),
            notification(room=room),
            401,
            "token_expired",
        ),
        "wrong audience": (
            bearer(signer.token("client:backend", scope="publish", audience="billing")),
            notification(room=room),
            401,
            "token_invalid",
        ),
        "a user's token": (
            bearer(signer.token()),
            notification(room=room),
            403,
            "insufficient_scope",
        ),
        "another scope": (
            bearer(signer.service_token(scope="read")),
            notification(room=room),
            403,
            "insufficient_scope",
        ),
        "a socket id": (service, notification(room="AbCdEfGhIjKlMnOpQrSt"), 422, "invalid_body"),
        "an unprefixed room": (service, notification(room="lobby"), 422, "invalid_body"),
        "a malformed room": (service, notification(room="public:a b"), 422, "invalid_body"),
        "room and user": (service, notification(room=room, user="u1"), 422, "invalid_body"),
        "no target": (service, notification(), 422, "invalid_body"),
        "empty user": (service, notification(user=""), 422, "invalid_body"),
        "long user": (service, notification(user="u" * 129), 422, "invalid_body"),
        "a client event": (
            service,
            {"room": room, "event": "message", "data": {}},
            422,
            "invalid_body",
        ),
        "data not an object": (
            service,
            {"room": room, "event": "notification", "data": "text"},
            422,
            "invalid_body",
        ),
        "no data": (service, {"room": room, "event": "notification"}, 422, "invalid_body"),
        "an extra field": (
            service,
            {**notification(room=room), "skip_sid": "x"},
            422,
            "invalid_body",
        ),
        "a room that is not a string": (
            service,
            {"room": 7, "event": "notification", "data": {}},
            422,
            "invalid_body",
        ),
        "an array": (service, [notification(room=room)], 422, "invalid_body"),
    }


async def test_publish_refusals_are_clear_json(cluster: Cluster, node: NodeClients) -> None:
    room = unique("public:quiet-")
    await node.connect("listener", cluster.b.url, token=cluster.signer.token())
    await node.emit("listener", "join", {"room": room})
    service = bearer(cluster.signer.service_token())
    async with httpx.AsyncClient(base_url=cluster.a.url, timeout=10) as http:
        for case, (headers, body, status, code) in refusals(cluster).items():
            response = await http.post("/v1/publish", headers=headers, json=body)
            assert response.status_code == status, (case, response.text)
            error = response.json()["error"]
            assert error["code"] == code and error["message"], (case, error)
            if status == 422:
                assert error["fields"] and all(f["message"] for f in error["fields"]), case
            if status in (401, 403):
                assert response.headers["www-authenticate"].startswith("Bearer"), case

        raw = {
            "not JSON": (b"{nope", "application/json", 400, "bad_request"),
            "deeply nested": (b"[" * 2000 + b"]" * 2000, "application/json", 400, "bad_request"),
            "not JSON content": (b"room=public:x", "text/plain", 415, "unsupported_media_type"),
            "too large": (
                b'{"data": "' + b"x" * 100_000 + b'"}',
                "application/json",
                413,
                "too_large",
            ),
        }
        for case, (content, content_type, status, code) in raw.items():
            response = await http.post(
                "/v1/publish",
                headers={**service, "Content-Type": content_type},
                content=content,
            )
            assert response.status_code == status, (case, response.text)
            assert response.json()["error"]["code"] == code, case

        # The error bodies never echo the input; nothing reached the room.
        response = await http.post(
            "/v1/publish", headers=service, json=notification(room="secret-looking-input")
        )
        assert "secret-looking-input" not in response.text
    assert not [m for m in node.drain_events("listener") if m["type"] == "event"]
    assert cluster.a.metric("gateway_publishes_total", result="insufficient_scope") >= 2
    assert "Traceback" not in cluster.a.logs()


@pytest.mark.parametrize("method", ["GET", "PUT"])
async def test_publish_only_takes_post(cluster: Cluster, method: str) -> None:
    async with httpx.AsyncClient(base_url=cluster.a.url, timeout=10) as http:
        response = await http.request(method, "/v1/publish")
    assert response.status_code == 405
