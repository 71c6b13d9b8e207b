"""The broadcast path: a client's ``message`` event to everyone else in the room, cluster-wide.

event -> validation -> policy -> fan-out, in ``Broadcaster.message``. Presence notices
(``presence {room, user, event}``, decided in ``presence``) and backend notifications take the
same fan-out. Fan-out is python-socketio's ``emit`` to the room: the client manager delivers
to this replica's members and, in cluster mode, publishes once on Redis for the other
replicas (see ``fanout``).
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from services.gateway.connections import Connection
from services.gateway.protocol import Ack, EventError, expect, ok
from services.gateway.rooms import check_name
from services.gateway.server import NAMESPACE, GatewayServer


class Broadcaster:
    """Sends room traffic for the sockets of this replica."""

    def __init__(self, *, server: GatewayServer, max_message_bytes: int) -> None:
        self._server = server
        self._max_message_bytes = max_message_bytes

    async def message(self, conn: Connection, payload: object) -> Ack:
        """``message {room, text}`` -> ``message {id, room, text, sender, ts}`` to the room."""
        # Validation: exactly {room: str, text: str}, a well-formed room, bounded text.
        room, text = expect(payload, room=str, text=str)
        check_name(room)
        if not text:
            raise EventError("bad_request", "text must not be empty")
        if len(text) > self._max_message_bytes or (
            len(text.encode("utf-8", "surrogatepass")) > self._max_message_bytes
        ):
            raise EventError("bad_request", f"text is longer than {self._max_message_bytes} bytes")
        # Policy: joining checked the room against the token; sending needs membership.
        if room not in conn.rooms and room != conn.user_room:
            raise EventError("not_joined", "join the room before sending to it")
        # Fan-out: everyone in the room on every replica but the sending socket.
        message_id = uuid.uuid4().hex
        ts = int(time.time() * 1000)
        event = {
            "id": message_id,
            "room": room,
            "text": text,
            "sender": {"id": conn.sub, "name": conn.claims.name},
            "ts": ts,
        }
        await self.emit("message", event, room=room, skip_sid=conn.sid)
        return ok(id=message_id, ts=ts)

    async def presence(
        self,
        room: str,
        user: dict[str, str],
        change: Literal["join", "leave"],
        *,
        skip_sid: str | None = None,
    ) -> None:
        """Tells ``room`` that ``user`` ({id, name}) arrived or left (see ``presence``)."""
        event = {"room": room, "user": user, "event": change}
        await self.emit("presence", event, room=room, skip_sid=skip_sid)

    async def emit(
        self, event: str, data: dict[str, Any], *, room: str, skip_sid: str | None = None
    ) -> None:
        """Fans ``event`` out to ``room`` across the cluster."""
        await self._server.emit(event, data, to=room, skip_sid=skip_sid, namespace=NAMESPACE)
