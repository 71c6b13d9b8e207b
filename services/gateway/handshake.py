"""The Socket.IO handshake, top to bottom, and the matching end of a socket's life.

capacity -> token -> claims -> revocation -> per-user limit (cluster-wide) -> registration and
the user room.

The token comes from the CONNECT packet's auth payload ``{token}`` or from an
``Authorization: Bearer`` header of the Engine.IO handshake request, never from the query
string (URLs end up in proxy and access logs). Verification is local (``TokenVerifier`` with
cached JWKS keys) and so is the revocation check (``Revocations``' in-memory map): neither
makes a network call except, for a token signed by a key not seen yet, the JWKS refetch the
key source allows once per cooldown. In cluster mode the per-user limit costs one Redis round
trip (``quota``), bounded by ``GATEWAY_REDIS_OP_TIMEOUT``; without an answer the replica's own
count decides.

Refusals reach the client as ``connect_error``: ``err.message`` is ``"unauthorized"`` with
``err.data.code`` the token error's code, or ``"unavailable"`` with ``overloaded`` /
``draining`` / ``too_many_connections`` and ``retry_after_ms``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from socketio.exceptions import ConnectionRefusedError as SocketRefused

from services.gateway.connections import Connection, Connections, lean_claims
from services.gateway.expiry import ExpiryScheduler
from services.gateway.limits import AbuseMeter, TokenBucket
from services.gateway.metrics import GatewayMetrics
from services.gateway.presence import Presence
from services.gateway.quota import QuotaExceeded, UserQuota
from services.gateway.revocations import Revocations
from services.gateway.server import NAMESPACE, GatewayServer
from services.gateway.settings import GatewaySettings
from shared.tokens import AccessClaims, TokenError, TokenInvalid, TokenRevoked, TokenVerifier

log = logging.getLogger(__name__)


class Unavailable(Exception):
    """The replica will not take this connection now; the client should retry later."""

    def __init__(self, code: str, message: str, retry_after_ms: int) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_ms = retry_after_ms


def presented_token(auth: object, environ: Mapping[str, Any]) -> object:
    """The token the client presented: auth payload first, then the Authorization header.

    Returns ``None`` when there is none (the verifier turns that into ``token_missing``) and
    whatever non-string the payload holds (the verifier refuses it as ``token_invalid``).
    """
    if isinstance(auth, dict) and "token" in auth:
        return auth["token"]
    header = environ.get("HTTP_AUTHORIZATION")
    if not header:
        return None
    scheme, _, credentials = str(header).partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        raise TokenInvalid("the Authorization header is not a Bearer token")
    return credentials.strip()


# A later CONNECT on the same Engine.IO session may still take its token from this header.
_KEPT_ENVIRON = ("HTTP_AUTHORIZATION",)


def forget_request(environ: dict[str, Any]) -> None:
    """Drops the handshake request from the environ python-socketio keeps, once admitted.

    python-socketio keeps the Engine.IO handshake's environ for the socket's life: ~20
    WSGI-style entries, a copy of every request header and the ASGI scope (~2 KB a socket).
    Nothing reads them after the connect but a later CONNECT on the same session, whose token
    may come from the Authorization header: that one entry is kept. (The scope's own copy of
    the headers is emptied when the websocket is accepted: ``server._trim_handshake_state``.)
    """
    kept = {key: environ[key] for key in _KEPT_ENVIRON if key in environ}
    environ.clear()  # a dict never shrinks on deletes; cleared and refilled, it does
    environ.update(kept)


class Handshake:
    """Admits sockets (``connect``) and forgets them (``disconnect``)."""

    def __init__(
        self,
        *,
        settings: GatewaySettings,
        server: GatewayServer,
        verifier: TokenVerifier,
        revocations: Revocations,
        connections: Connections,
        quota: UserQuota,
        presence: Presence,
        expiry: ExpiryScheduler,
        metrics: GatewayMetrics,
        accepting: Callable[[], bool],
    ) -> None:
        self._settings = settings
        self._server = server
        self._verifier = verifier
        self._revocations = revocations
        self._connections = connections
        self._quota = quota
        self._presence = presence
        self._expiry = expiry
        self._metrics = metrics
        self._accepting = accepting
        self._accepted = metrics.handshakes.labels("accepted", "")

    async def connect(self, sid: str, environ: dict[str, Any], auth: object = None) -> None:
        """python-socketio's connect handler: returns to accept, raises to refuse."""
        started = time.perf_counter()
        eio_sid: str = self._server.manager.eio_sid_from_sid(sid, NAMESPACE)
        accepted = False
        try:
            conn = await self._admit(sid, eio_sid, environ, auth)
            accepted = True
        except TokenError as exc:
            self._metrics.handshakes.labels("refused", exc.code).inc()
            log.info("handshake refused", extra={"code": exc.code, "reason": exc.message})
            raise SocketRefused(
                "unauthorized", {"code": exc.code, "message": exc.message}
            ) from None
        except Unavailable as exc:
            self._metrics.handshakes.labels("refused", exc.code).inc()
            data = {"code": exc.code, "message": exc.message, "retry_after_ms": exc.retry_after_ms}
            raise SocketRefused("unavailable", data) from None
        finally:
            self._server.gate.settled(eio_sid, accepted=accepted)
            self._metrics.handshake_seconds.observe(time.perf_counter() - started)
        self._accepted.inc()
        forget_request(environ)
        log.debug("socket connected", extra={"sub": conn.sub, "sid": sid})

    async def _admit(
        self, sid: str, eio_sid: str, environ: Mapping[str, Any], auth: object
    ) -> Connection:
        settings = self._settings
        retry_after_ms = settings.overload_retry_after_ms
        # 1. Capacity first: a refusal here costs no cryptography.
        if not self._accepting():
            raise Unavailable("draining", "this replica is shutting down", retry_after_ms)
        if self._server.gate.overloaded():
            raise Unavailable("overloaded", "too many handshakes in progress", retry_after_ms)
        # 2. Token -> claims, verified locally.
        claims = await self._verifier.verify(presented_token(auth, environ))
        if "client_id" in claims.raw:
            # A backend's service token (client-credentials grant) publishes; it is no user.
            raise TokenInvalid("service tokens cannot open sockets")
        # 3. Revoked by a logout everywhere?
        if self._revocations.is_revoked(claims.sub, claims.iat):
            raise TokenRevoked("the token has been revoked")
        # 4. Limits that depend on who it is, then 5. register the socket in its user room.
        try:
            async with self._quota.admission(claims.sub):
                if eio_sid not in self._server.eio.sockets:
                    # The client left while its token or its place was being checked.
                    raise Unavailable("gone", "the connection closed during the handshake", 0)
                conn = self._new_connection(sid, eio_sid, claims)
                self._connections.add(conn)
        except QuotaExceeded:
            raise Unavailable(
                "too_many_connections", "this user has too many connections", retry_after_ms
            ) from None
        await self._server.enter_room(sid, conn.user_room, namespace=NAMESPACE)
        self._expiry.schedule(conn)
        self._metrics.connected_sockets.inc()
        return conn

    def _new_connection(self, sid: str, eio_sid: str, claims: AccessClaims) -> Connection:
        settings = self._settings
        return Connection(
            sid=sid,
            eio_sid=eio_sid,
            claims=lean_claims(claims),
            bucket=TokenBucket(settings.event_rate, settings.event_burst),
            abuse=AbuseMeter(settings.event_rate, settings.abuse_threshold),
        )

    async def disconnect(self, sid: str, reason: str = "") -> None:
        """python-socketio's disconnect handler: forget the socket, tell its rooms."""
        conn = self._connections.remove(sid)
        if conn is None:
            return
        self._metrics.connected_sockets.dec()
        if conn.eio_sid in self._server.eio.sockets:
            self._server.gate.unconnected(conn.eio_sid)
        log.debug("socket disconnected", extra={"sub": conn.sub, "sid": sid, "reason": reason})
        try:
            self._quota.released(conn.sub)
        except Exception:
            log.exception("releasing a connection's place failed")
        for room in sorted(conn.rooms):
            try:
                await self._presence.left(conn, room)
            except Exception:
                log.exception("presence on disconnect failed", extra={"room": room})
