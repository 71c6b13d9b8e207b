"""The handshake: where the token may come from, and every refusal the JS client can see.

SECURITY.md 1, 2, 5, 6, 7, 14, 15, 16 as the gateway sees them, through the official
``socket.io-client``: a refusal is ``connect_error`` with ``err.message === "unauthorized"``
and ``err.data.code``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time

import pytest
import socketio

from tests.gateway.clients import NodeClients, PyClient, RawSocket
from tests.gateway.conftest import ALLOWED_ORIGIN, Cluster, unique
from tests.support.keys import mint, new_rsa_key, public_pem


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256_with_public_key(cluster: Cluster) -> str:
    """The classic alg confusion: HMAC keyed with the RSA public key's PEM text."""
    header = {"alg": "HS256", "typ": "at+jwt", "kid": cluster.signer.kid}
    now = int(time.time())
    claims = {
        "iss": cluster.signer.issuer, "aud": "gateway", "sub": unique("u"), "iat": now,
        "exp": now + 300, "jti": "x", "name": "mallory",
    }  # fmt: skip
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    secret = public_pem(cluster.signer.key)
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def refused_tokens(cluster: Cluster) -> dict[str, tuple[str | None, str]]:
    signer = cluster.signer
    stranger = new_rsa_key()
    _, payload, _ = signer.token().split(".")
    alg_none = _b64(json.dumps({"alg": "none", "typ": "at+jwt", "kid": signer.kid}).encode())
    unsigned = f"{alg_none}.{payload}."
    return {
        "missing": (None, "token_missing"),
        "empty": ("", "token_missing"),
        "garbage": ("not-a-jwt", "token_invalid"),
        "forged with a foreign key under a known kid": (
            mint(stranger, kid=signer.kid, issuer=signer.issuer),
            "token_invalid",
        ),
        "expired": (signer.token(ttl=-120), "token_expired"),
        "typ is not at+jwt": (signer.token(typ="JWT"), "token_invalid"),
        "refresh typ": (signer.token(typ="refresh+jwt"), "token_invalid"),
        "alg none": (unsigned, "token_invalid"),
        "alg confusion (HS256 keyed with the public key)": (
            hs256_with_public_key(cluster),
            "token_invalid",
        ),
        "wrong issuer": (
            mint(signer.key, kid=signer.kid, issuer=signer.issuer + ".evil.example"),
            "token_invalid",
        ),
        "wrong audience": (signer.token(audience="billing"), "token_invalid"),
        "no sub": (signer.token(drop=("sub",)), "token_invalid"),
        "unknown kid": (mint(stranger, kid="no-such-key", issuer=signer.issuer), "token_invalid"),
        "tampered payload": (_tampered(signer.token()), "token_invalid"),
    }


def _tampered(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "admin"
    return f"{header}.{_b64(json.dumps(claims).encode())}.{signature}"


async def test_js_client_sees_each_refusal_code(cluster: Cluster, node: NodeClients) -> None:
    for index, (case, (token, code)) in enumerate(refused_tokens(cluster).items()):
        reply = await node.connect(f"c{index}", cluster.a.url, token=token)
        assert reply["type"] == "connect_error", case
        assert reply["message"] == "unauthorized", case
        assert reply["data"]["code"] == code, (case, reply)
        assert isinstance(reply["data"]["message"], str) and reply["data"]["message"], case
    assert cluster.a.metric("gateway_handshakes_total", result="refused", code="token_invalid") > 0


async def test_non_string_token_in_auth_payload_is_invalid(
    cluster: Cluster, node: NodeClients
) -> None:
    reply = await node.connect("c", cluster.b.url, auth={"token": {"nested": "object"}})
    assert reply["data"]["code"] == "token_invalid"


async def test_token_only_in_the_query_string_is_refused_and_never_logged(
    cluster: Cluster, node: NodeClients
) -> None:
    token = cluster.signer.token()
    for transports in (["websocket"], ["polling"]):
        reply = await node.connect(
            unique("q"), cluster.a.url, query={"token": token}, transports=transports
        )
        assert reply["type"] == "connect_error"
        assert reply["data"]["code"] == "token_missing"
    # SECURITY 16: nothing in the replica's log carries token material.
    header, payload, signature = token.split(".")
    logs = cluster.a.logs()
    for part in (token, payload, signature):
        assert part not in logs


async def test_real_token_never_appears_in_logs(cluster: Cluster, node: NodeClients) -> None:
    _, token = cluster.auth.register_and_login()
    await node.connect("ok", cluster.b.url, token=token)
    await node.emit("ok", "reauth", {"token": token})
    await node.connect("hdr", cluster.b.url, headers={"Authorization": f"Bearer {token}"})
    for gateway in (cluster.a, cluster.b):
        assert token.split(".")[2] not in gateway.logs()


async def test_authorization_header_is_accepted(
    cluster: Cluster, node: NodeClients, py_clients: list[PyClient]
) -> None:
    token = cluster.signer.token()
    for transports in (["websocket"], ["polling"]):
        reply = await node.connect(
            unique("h"),
            cluster.a.url,
            headers={"Authorization": f"Bearer {token}"},
            transports=transports,
        )
        assert reply["type"] == "connect", reply
    py = PyClient()
    py_clients.append(py)
    await py.connect(cluster.b.url, headers={"Authorization": f"Bearer {token}"})
    assert py.sio.connected
    reply = await node.connect(
        "basic", cluster.a.url, headers={"Authorization": "Basic Zm9vOmJhcg=="}
    )
    assert reply["data"]["code"] == "token_invalid"


async def test_python_client_is_refused_with_the_same_data(
    cluster: Cluster, py_clients: list[PyClient]
) -> None:
    py = PyClient()
    py_clients.append(py)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await py.connect(cluster.a.url, token=cluster.signer.token(ttl=-60))
    assert py.connect_error == {
        "message": "unauthorized",
        "data": {"code": "token_expired", "message": "the token has expired"},
    }


async def test_origin_allowlist(cluster: Cluster, node: NodeClients) -> None:
    """SECURITY 15: foreign Origin refused, allowlisted accepted, no Origin still needs a token."""
    token = cluster.signer.token()
    for transports in (["websocket"], ["polling"]):
        foreign = await node.connect(
            unique("o"), cluster.a.url, token=token, transports=transports,
            headers={"Origin": "http://evil.example"},
        )  # fmt: skip
        assert foreign["type"] == "connect_error", transports
        assert foreign["message"] != "unauthorized"  # refused before Socket.IO even starts
        allowed = await node.connect(
            unique("o"), cluster.a.url, token=token, transports=transports,
            headers={"Origin": ALLOWED_ORIGIN},
        )  # fmt: skip
        assert allowed["type"] == "connect", transports
    no_origin = await node.connect("no-origin", cluster.a.url)
    assert no_origin["data"]["code"] == "token_missing"
    with_token = await node.connect("no-origin-token", cluster.a.url, token=token)
    assert with_token["type"] == "connect"


async def test_connecting_and_leaving_logs_no_errors(cluster: Cluster, node: NodeClients) -> None:
    """Sockets that come and go on either transport leave no error in the replica's log."""
    logged_before = len(cluster.a.logs())
    open_before = cluster.a.metric("gateway_connected_sockets")
    names = []
    for transports in (["websocket"], ["polling"], ["polling", "websocket"]):
        name = unique("quiet")
        result = await node.connect(
            name, cluster.a.url, token=cluster.signer.token(), transports=transports
        )
        assert result["type"] == "connect", transports
        names.append(name)
    for name in names:
        await node.close(name)
    deadline = time.monotonic() + 5
    while cluster.a.metric("gateway_connected_sockets") > open_before:
        assert time.monotonic() < deadline, "the sockets did not close"
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # the transports' own ends come after the disconnect handlers
    records = [
        json.loads(line)
        for line in cluster.a.logs()[logged_before:].splitlines()
        if line.startswith("{")
    ]
    assert [r for r in records if r.get("level") in ("error", "critical")] == []


async def test_connecting_costs_no_auth_service_call(cluster: Cluster, node: NodeClients) -> None:
    for index in range(5):
        await node.connect(f"c{index}", cluster.a.url, token=cluster.signer.token())
    assert cluster.a.metric("gateway_auth_service_calls_total") == 0
    assert cluster.a.metric("gateway_handshakes_total", result="accepted", code="") >= 5


async def test_a_header_token_serves_a_second_connect_on_the_same_session(
    cluster: Cluster,
) -> None:
    """Admitted sockets forget the request's headers, except the Authorization header."""
    token = cluster.signer.token()
    headers = {"Authorization": f"Bearer {token}"}
    async with RawSocket.open(cluster.a.url, additional_headers=headers) as sock:
        await sock.send("40")
        first = await sock.recv()
        assert isinstance(first, str) and first.startswith("40{"), first
        await sock.send("41")  # leaves the namespace; the Engine.IO session stays
        await sock.send("40")
        again = await sock.recv()
        assert isinstance(again, str) and again.startswith("40{"), again
        assert again != first  # a new Socket.IO session id


async def test_the_upgrade_response_and_the_open_packet_arrive_together(cluster: Cluster) -> None:
    """The 101 and Engine.IO's OPEN packet leave in one write, so one read holds both."""
    host, _, port = cluster.a.url.removeprefix("http://").partition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        key = base64.b64encode(b"sixteen byte key").decode()
        writer.write(
            (
                "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n"
                f"Host: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        first = await asyncio.wait_for(reader.read(65536), 5)
    finally:
        writer.close()
    head, _, rest = first.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 ")
    accept = base64.b64encode(
        hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()  # noqa: S324
    )
    assert b"\r\nSec-WebSocket-Accept: " + accept in head
    assert b"\r\ndate: " in head.lower()
    # an unmasked text frame (0x81), a 7-bit length, then the OPEN packet ("0{...}")
    assert rest[:1] == b"\x81" and rest[1] < 126 and len(rest) == 2 + rest[1]
    opening = json.loads(rest[2:].decode().removeprefix("0"))
    assert rest[2:3] == b"0" and opening["upgrades"] == [] and opening["sid"]
