"""Room deliveries keep their order when a slow reader makes the server queue its frames.

Room broadcasts are written to an idle websocket directly and queued for the socket's writer
otherwise (``_LeanSocket.send_now``). A reader that stops reading fills the kernel buffers,
uvicorn pauses the transport, frames queue up; when it reads again the writer drains the queue
while new broadcasts keep arriving. Every frame must still arrive exactly once and in order.
The client is a raw websocket speaking Engine.IO/Socket.IO by hand, so the test decides when
it reads; broadcasts come in through the fan-out channel as another replica's would.
"""

from __future__ import annotations

import asyncio

import orjson
import websockets
from redis.asyncio import Redis

from tests.gateway.conftest import Cluster, unique

MESSAGES = 3000
PAD = "x" * 4000  # 12 MB in all: more than loopback's socket buffers hold


async def _next_packet(ws: websockets.ClientConnection) -> str:
    """The next Engine.IO message packet's Socket.IO payload, answering pings on the way."""
    while True:
        frame = await ws.recv()
        assert isinstance(frame, str)
        if frame == "2":
            await ws.send("3")
            continue
        assert frame.startswith("4"), frame
        return frame[1:]


async def test_a_slow_reader_gets_every_broadcast_in_order(cluster: Cluster) -> None:
    _, token = cluster.auth.register_and_login()
    room = unique("public:order-")
    url = f"ws://127.0.0.1:{cluster.a.port}/socket.io/?EIO=4&transport=websocket"
    redis = Redis.from_url(cluster.redis.url)
    # max_queue: the client library stops reading from the socket after 4 unread frames.
    async with websockets.connect(url, max_queue=4, compression=None, max_size=2**20) as ws:
        opened = await ws.recv()
        assert isinstance(opened, str) and opened.startswith("0{")
        await ws.send("40" + orjson.dumps({"token": token}).decode())
        assert (await _next_packet(ws)).startswith("0{")
        await ws.send("420" + orjson.dumps(["join", {"room": room}]).decode())
        assert await _next_packet(ws) == "30" + orjson.dumps([{"ok": True, "room": room}]).decode()

        base = {"method": "emit", "event": "notification", "namespace": "/", "room": room,
                "skip_sid": None, "callback": None, "host_id": "another-replica"}  # fmt: skip

        async def publish() -> None:
            for start in range(0, MESSAGES, 100):
                async with redis.pipeline(transaction=False) as pipe:
                    for seq in range(start, start + 100):
                        message = base | {"data": [{"seq": seq, "pad": PAD}]}
                        pipe.publish("sockgate:socketio", orjson.dumps(message))
                    await pipe.execute()
                await asyncio.sleep(0.01)

        publisher = asyncio.create_task(publish())
        await asyncio.sleep(1.0)  # not reading: the server's buffers fill and it pauses
        received: list[int] = []
        async with asyncio.timeout(60):
            while len(received) < MESSAGES:
                payload = await _next_packet(ws)
                assert payload.startswith("2"), payload
                name, data = orjson.loads(payload[1:])
                if name == "notification":
                    received.append(data["seq"])
        await publisher
    await redis.aclose()
    assert received == list(range(MESSAGES))
