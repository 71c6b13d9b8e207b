"""A tiny interactive client for the local cluster: connect, join a room, chat.

    .venv/bin/python -m deploy.local.try_client http://127.0.0.1:8001 "$TOKEN" [room]

Lines typed on standard input are sent as messages to the room; messages and presence events
from others are printed as they arrive. Ctrl-D or Ctrl-C leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import Any

import socketio


async def chat(url: str, token: str, room: str) -> None:
    client = socketio.AsyncClient(reconnection=False)

    @client.on("message")
    async def on_message(data: dict[str, Any]) -> None:
        print(f"[{data.get('room')}] {data.get('sender', {}).get('name')}: {data.get('text')}")

    @client.on("presence")
    async def on_presence(data: dict[str, Any]) -> None:
        print(f"[{data.get('room')}] {data.get('user', {}).get('name')} {data.get('event')}s")

    @client.on("connect_error")
    async def on_refused(data: Any) -> None:
        print(f"refused: {data}")

    await client.connect(url, auth={"token": token}, transports=["websocket"], wait_timeout=5)
    print(f"connected as {client.sid}; join: {await client.call('join', {'room': room})}")
    loop = asyncio.get_running_loop()
    try:
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            ack = await client.call("message", {"room": room, "text": line.rstrip("\n")})
            if not ack.get("ok"):
                print(f"not sent: {ack}")
    finally:
        await client.disconnect()


def main() -> None:
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    room = sys.argv[3] if len(sys.argv) > 3 else "public:lobby"
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(chat(sys.argv[1], sys.argv[2], room))


if __name__ == "__main__":
    main()
