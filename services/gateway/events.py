"""Client events: the router every event passes through, and ``join``/``leave``/``who``/``reauth``.

The router charges the socket's rate limit first (a refused event costs nothing more), then
runs the handler and turns its outcome into the ack. ``message`` is the broadcast path and
lives in ``broadcast``; who is in a room, and the ``presence`` events, live in ``presence``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from services.gateway.broadcast import Broadcaster
from services.gateway.connections import Connection, Connections, lean_claims
from services.gateway.expiry import ExpiryScheduler
from services.gateway.metrics import GatewayMetrics
from services.gateway.presence import Presence, PresenceUnavailable
from services.gateway.protocol import Ack, EventError, error, expect, ok
from services.gateway.revocations import Revocations
from services.gateway.rooms import check_join, check_name, still_allowed
from services.gateway.server import GatewayServer
from shared.tokens import TokenError, TokenVerifier

log = logging.getLogger(__name__)

Handler = Callable[[Connection, object], Awaitable[Ack]]
Cut = Callable[[Connection, str], None]


class EventRouter:
    """Dispatches client events to their handlers; one entry point, one ack shape."""

    def __init__(
        self,
        *,
        server: GatewayServer,
        connections: Connections,
        broadcaster: Broadcaster,
        presence: Presence,
        verifier: TokenVerifier,
        revocations: Revocations,
        expiry: ExpiryScheduler,
        metrics: GatewayMetrics,
        cut: Cut,
        max_rooms_per_socket: int,
    ) -> None:
        self._server = server
        self._connections = connections
        self._presence = presence
        self._verifier = verifier
        self._revocations = revocations
        self._expiry = expiry
        self._metrics = metrics
        self._cut = cut
        self._max_rooms = max_rooms_per_socket
        self._handlers: dict[str, Handler] = {
            "join": self.join,
            "leave": self.leave,
            "message": broadcaster.message,
            "reauth": self.reauth,
            "who": self.who,
        }

    async def dispatch(self, event: str, sid: str, *args: object) -> Ack:
        """Handles one client event; the return value is the ack."""
        conn = self._connections.get(sid)
        if conn is None or conn.closing:
            return error("not_connected", "the connection is closing")
        if not conn.bucket.take():
            self._metrics.rate_limited.inc()
            self._metrics.event(event, "rate_limited")
            if conn.abuse.strike():
                self._cut(conn, "rate_abuse")
            return error("rate_limited", "too many events; slow down")
        handler = self._handlers.get(event)
        try:
            if handler is None:
                raise EventError("bad_request", "unknown event")
            if len(args) != 1:
                raise EventError("bad_request", "an event carries exactly one payload object")
            ack = await handler(conn, args[0])
        except EventError as exc:
            ack = error(exc.code, exc.message)
        except Exception:
            log.exception("event handler failed", extra={"event": event, "sub": conn.sub})
            ack = error("internal", "the gateway could not handle this event")
        self._metrics.event(event, "ok" if ack["ok"] else ack["error"]["code"])
        return ack

    async def join(self, conn: Connection, payload: object) -> Ack:
        """``join {room}``: enter a room the policy opens to this user."""
        (room,) = expect(payload, room=str)
        check_name(room)
        check_join(room, conn.claims)
        if room == conn.user_room or room in conn.rooms:
            return ok(room=room)
        if len(conn.rooms) >= self._max_rooms:
            raise EventError("too_many_rooms", f"a socket may join at most {self._max_rooms} rooms")
        conn.rooms.add(room)
        await self._server.enter_room(conn.sid, room)
        await self._presence.entered(conn, room)
        return ok(room=room)

    async def leave(self, conn: Connection, payload: object) -> Ack:
        """``leave {room}``: leave a room joined before."""
        (room,) = expect(payload, room=str)
        check_name(room)
        if room == conn.user_room:
            raise EventError("forbidden", "a socket stays in its own user room")
        if room not in conn.rooms:
            raise EventError("not_joined", "this socket is not in that room")
        await self._leave(conn, room)
        return ok(room=room)

    async def who(self, conn: Connection, payload: object) -> Ack:
        """``who {room}``: the users present in a room this socket joined, across the cluster."""
        (room,) = expect(payload, room=str)
        check_name(room)
        check_join(room, conn.claims)
        if room == conn.user_room:
            members = [{"id": conn.sub, "name": conn.claims.name}]
            return ok(room=room, members=members)
        if room not in conn.rooms:
            raise EventError("not_joined", "join the room before asking who is in it")
        try:
            present, truncated = await self._presence.who(room)
        except PresenceUnavailable as exc:
            raise EventError("unavailable", str(exc)) from None
        ack = ok(room=room, members=[member.wire() for member in present])
        if truncated:
            ack["truncated"] = True
        return ack

    async def reauth(self, conn: Connection, payload: object) -> Ack:
        """``reauth {token}``: replace the socket's token with a fresh one of the same user."""
        (token,) = expect(payload, token=str)
        try:
            claims = await self._verifier.verify(token)
        except TokenError as exc:
            raise EventError(exc.code, exc.message) from None
        if claims.sub != conn.sub:
            raise EventError("forbidden", "the token belongs to another user")
        if self._revocations.is_revoked(claims.sub, claims.iat):
            raise EventError("token_revoked", "the token has been revoked")
        if conn.closing or self._connections.get(conn.sid) is not conn:
            raise EventError("not_connected", "the connection is closing")
        conn.claims = lean_claims(claims)
        # The new token may list fewer private rooms: membership follows the token.
        for room in sorted(conn.rooms):
            if not still_allowed(room, claims):
                await self._leave(conn, room)
        self._expiry.schedule(conn)
        return ok(exp=claims.exp)

    async def _leave(self, conn: Connection, room: str) -> None:
        conn.rooms.discard(room)
        await self._server.leave_room(conn.sid, room)
        await self._presence.left(conn, room)
