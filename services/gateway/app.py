"""The gateway app factory: every component built from settings and wired in one place.

``create_app(settings)`` returns a ``Gateway``, an ASGI app serving Socket.IO under
``/socket.io/`` and ``/healthz``, ``/readyz``, ``/metrics`` on the same port. Nothing runs at
import time and nothing touches the network until the ASGI lifespan starts: then the JWKS key
source fetches, and in cluster mode the Redis subscription starts. The lifespan's end closes
them. ``Gateway.drain`` is what SIGTERM runs (see ``__main__``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import socketio
from prometheus_client import CollectorRegistry
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from services.gateway.broadcast import Broadcaster
from services.gateway.channel_publisher import ChannelPublisher
from services.gateway.connections import Connection, Connections
from services.gateway.drain import Drainer
from services.gateway.events import EventRouter
from services.gateway.expiry import ExpiryScheduler
from services.gateway.fanout import LocalManager, RedisManager
from services.gateway.handshake import Handshake
from services.gateway.liveness import Liveness
from services.gateway.metrics import GatewayMetrics
from services.gateway.presence import Presence
from services.gateway.presence_store import RedisPresence
from services.gateway.publish import Publisher
from services.gateway.quota import RedisQuota, UserQuota
from services.gateway.redis_batch import CpuShare, ScriptBatch
from services.gateway.revocations import Revocations
from services.gateway.server import NAMESPACE, GatewayServer
from services.gateway.settings import GatewaySettings
from services.gateway.subscriber import RedisSubscriber
from shared import revocation
from shared.jwks import JwksKeySource
from shared.metrics import new_registry, render
from shared.tokens import KeySource, TokenVerifier

log = logging.getLogger(__name__)

# python-socketio logs every emit and packet at INFO; only its warnings are worth a line.
_LIBRARY_LOG_LEVEL = logging.WARNING
_FIRST_SUBSCRIBE_WAIT = 2.0


class Gateway:
    """One gateway replica as an ASGI app (see the module doc)."""

    def __init__(
        self, settings: GatewaySettings, *, registry: CollectorRegistry, keys: KeySource | None
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.metrics = metrics = GatewayMetrics(registry)

        # Keys and verification.
        self._http: httpx.AsyncClient | None = None
        self._jwks: JwksKeySource | None = None
        if keys is None:
            self._http = httpx.AsyncClient()
            self._jwks = JwksKeySource(
                settings.resolved_jwks_url,
                http=self._http,
                refresh_interval=settings.jwks_refresh_interval,
                unknown_kid_cooldown=settings.jwks_unknown_kid_cooldown,
                fetch_timeout=settings.jwks_fetch_timeout,
                on_fetch=lambda result: metrics.jwks_fetches.labels(result).inc(),
            )
            keys = self._jwks
        self.verifier = TokenVerifier(
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            keys=keys,
            leeway=settings.jwt_leeway,
            max_token_bytes=settings.jwt_max_token_bytes,
        )

        # Socket.IO server and room fan-out.
        self.redis: Redis | None = None
        self.channel_publisher: ChannelPublisher | None = None
        manager: LocalManager | RedisManager
        if settings.redis_url is not None:
            self.redis = redis_client(settings)
            self.channel_publisher = ChannelPublisher(
                self.redis, metrics=metrics, retry_max=settings.redis_retry_max
            )
            manager = RedisManager(
                channel=settings.redis_channel,
                metrics=metrics,
                publisher=self.channel_publisher,
            )
        else:
            manager = LocalManager(metrics)
        self.server = GatewayServer(
            client_manager=manager,
            async_mode="asgi",
            # Handlers run inline in each connection's receive loop: per-socket order is kept
            # and a flooding client cannot queue up tasks faster than they are handled.
            async_handlers=False,
            cors_allowed_origins=settings.cors_allowed_origins,
            max_http_buffer_size=settings.max_frame_bytes,
            ping_interval=settings.ping_interval,
            ping_timeout=settings.ping_timeout,
            logger=_library_logger("services.gateway.socketio"),
            engineio_logger=_library_logger("services.gateway.engineio"),
            handshake_limit=settings.max_handshakes_in_flight,
            handshake_timeout=settings.handshake_timeout,
            on_protocol_error=metrics.protocol_errors.inc,
        )
        self.connections = Connections()
        self.revocations = Revocations(
            retention=settings.revocation_retention, on_revoked=self._revoked
        )
        self.subscriber: RedisSubscriber | None = None
        self.liveness: Liveness | None = None
        if isinstance(manager, RedisManager) and self.redis is not None:
            redis = self.redis

            async def reload_revocations() -> None:
                await self.revocations.reload(redis)

            self.liveness = Liveness(
                redis,
                ttl=settings.replica_ttl,
                timeout=settings.redis_op_timeout,
                up=lambda: self.subscriber is not None and self.subscriber.up,
                metrics=metrics,
            )
            self.subscriber = RedisSubscriber(
                redis,
                handlers={
                    settings.redis_channel: manager.handle_message,
                    revocation.CHANNEL: self.revocations.handle_message,
                },
                on_subscribed=[reload_revocations, self.liveness.wake],
                metrics=metrics,
                retry_max=settings.redis_retry_max,
            )
            manager.subscriber = self.subscriber

        # The socket lifecycle and the events.
        self.drainer = Drainer(
            server=self.server,
            connections=self.connections,
            metrics=metrics,
            delay=settings.drain_delay,
            spread=settings.drain_spread,
        )
        self.broadcaster = Broadcaster(
            server=self.server, max_message_bytes=settings.max_message_bytes
        )
        # Presence and the per-user limit: this replica's view, and the cluster's in Redis,
        # whose hot-path scripts (admit, release, presence changes) share pipelines.
        self.redis_batch: ScriptBatch | None = None
        presence_store: RedisPresence | None = None
        quota_store: RedisQuota | None = None
        if self.redis is not None and self.liveness is not None:
            gate = self.server.gate
            self.redis_batch = ScriptBatch(
                self.redis,
                timeout=settings.redis_op_timeout,
                window=settings.redis_batch_window,
                busy_window=settings.redis_batch_window_busy,
                busy=CpuShare(),
                on_error=self.liveness.failed,
                expected=lambda: gate.in_flight,  # handshakes in progress
            )
            presence_store = RedisPresence(
                self.redis,
                liveness=self.liveness,
                batch=self.redis_batch,
                max_members=settings.who_max_members,
            )
            quota_store = RedisQuota(self.redis, liveness=self.liveness, batch=self.redis_batch)
        self.presence = Presence(
            broadcaster=self.broadcaster,
            store=presence_store,
            max_members=settings.who_max_members,
        )
        self.quota = UserQuota(
            limit=settings.max_connections_per_user,
            connections=self.connections,
            store=quota_store,
        )
        if self.liveness is not None:
            self.liveness.register(self.presence)
            self.liveness.register(self.quota)
        self.expiry = ExpiryScheduler(
            lead=settings.token_expiring_lead,
            leeway=settings.jwt_leeway,
            warn=self._warn_expiring,
            expire=lambda conn: self.cut(conn, "token_expired"),
        )
        self.handshake = Handshake(
            settings=settings,
            server=self.server,
            verifier=self.verifier,
            revocations=self.revocations,
            connections=self.connections,
            quota=self.quota,
            presence=self.presence,
            expiry=self.expiry,
            metrics=metrics,
            accepting=self.drainer.accepting,
        )
        self.router = EventRouter(
            server=self.server,
            connections=self.connections,
            broadcaster=self.broadcaster,
            presence=self.presence,
            verifier=self.verifier,
            revocations=self.revocations,
            expiry=self.expiry,
            metrics=metrics,
            cut=self.cut,
            max_rooms_per_socket=settings.max_rooms_per_socket,
        )
        self.server.on("connect", self.handshake.connect, namespace=NAMESPACE)
        self.server.on("disconnect", self.handshake.disconnect, namespace=NAMESPACE)
        self.server.on("*", self.router.dispatch, namespace=NAMESPACE)

        # HTTP: probes, metrics and backend publishing beside Socket.IO.
        self.publisher = Publisher(
            broadcaster=self.broadcaster,
            verifier=self.verifier,
            revocations=self.revocations,
            metrics=metrics,
            max_bytes=settings.max_publish_bytes,
            rate=settings.publish_rate,
            burst=settings.publish_burst,
        )
        routes = [
            Route("/healthz", self._healthz, methods=["GET"]),
            Route("/readyz", self._readyz, methods=["GET"]),
            Route("/metrics", self._metrics, methods=["GET"]),
            Route("/v1/publish", self.publisher.endpoint, methods=["POST"]),
        ]
        self._http_app = Starlette(routes=routes, lifespan=self._lifespan)
        self._asgi = socketio.ASGIApp(self.server, other_asgi_app=self._http_app)

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[Any]:
        """The ASGI entry point: hands each request to its handler's coroutine.

        A plain callable that returns the coroutine to await (uvicorn is told the interface,
        ``asgi3``, rather than guessing it from ``async def``): a coroutine of its own would
        stay suspended, a frame per socket, for every websocket's life. Websockets go straight
        to Engine.IO, skipping the two ASGI wrappers (which route them the same way) and
        their frames too.
        """
        handler: Awaitable[Any]
        if scope["type"] == "websocket" and _under(scope["path"], self._asgi.engineio_path):
            handler = self.server.eio.handle_request(scope, receive, send)
        else:
            handler = self._asgi(scope, receive, send)
        return handler

    # -- lifecycle --------------------------------------------------------------------------

    @asynccontextmanager
    async def _lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        await self.start()
        try:
            yield
        finally:
            await self.stop()

    async def start(self) -> None:
        """Fetches the keys and, in cluster mode, subscribes to Redis and starts beating."""
        log.info(
            "gateway starting",
            extra={"cluster": self.settings.cluster_mode, "jwks": self.settings.resolved_jwks_url},
        )
        if self._jwks is not None:
            await self._jwks.start()
        if self.channel_publisher is not None:
            await self.channel_publisher.start()
        if self.subscriber is not None:
            await self.subscriber.start()
            # Not required (readiness reports Redis), but a replica that can reach Redis
            # should not report ready a moment before it subscribed.
            await self.subscriber.wait_subscribed(_FIRST_SUBSCRIBE_WAIT)
        if self.liveness is not None:
            await self.liveness.start()

    async def stop(self) -> None:
        """Releases Redis, the key source and Socket.IO's background task."""
        if self.redis_batch is not None:
            await self.redis_batch.close()  # the last disconnects' releases
        if self.liveness is not None:
            await self.liveness.close()
        if self.subscriber is not None:
            await self.subscriber.close()
        if self.channel_publisher is not None:
            await self.channel_publisher.close()
        if self.redis is not None:
            await self.redis.aclose()
        if self._jwks is not None:
            await self._jwks.close()
        if self._http is not None:
            await self._http.aclose()
        await self.server.shutdown()
        log.info("gateway stopped")

    async def drain(self) -> None:
        """SIGTERM: fail readiness, then close every socket in spread-out batches."""
        await self.drainer.drain()

    # -- what happens to live sockets -------------------------------------------------------

    def cut(self, conn: Connection, reason: str) -> None:
        """Disconnects ``conn`` once, for ``reason`` (it does not reconnect by itself)."""
        if conn.closing:
            return
        conn.closing = True
        self.metrics.server_disconnects.labels(reason).inc()
        log.info("disconnecting a socket", extra={"sub": conn.sub, "reason": reason})
        self.server.kick(conn.sid)

    def _warn_expiring(self, conn: Connection) -> None:
        if conn.closing:
            return
        self.server.spawn(
            self.server.emit(
                "token_expiring",
                {"exp": conn.claims.exp},
                to=conn.sid,
                namespace=NAMESPACE,
                ignore_queue=True,  # the socket is here; other replicas need not hear of it
            )
        )

    async def _revoked(self, revoked: revocation.Revocation) -> None:
        self.metrics.revocations.inc()
        for conn in self.connections.of_user(revoked.sub):
            if revocation.is_revoked(conn.claims.iat, revoked.revoked_before):
                self.cut(conn, "token_revoked")

    # -- HTTP -------------------------------------------------------------------------------

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Whether the replica should get new clients, and the checks behind the answer."""
        keys_ready = self._jwks.ready if self._jwks is not None else True
        redis_up = self.subscriber.up if self.subscriber is not None else None
        checks = {"draining": self.drainer.draining, "keys": keys_ready, "redis": redis_up}
        ready = not self.drainer.draining and keys_ready and redis_up is not False
        return ready, checks

    async def _healthz(self, _request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def _readyz(self, _request: Request) -> Response:
        ready, checks = self.readiness()
        body = {"status": "ready" if ready else "unavailable", "checks": checks}
        return JSONResponse(body, status_code=200 if ready else 503)

    async def _metrics(self, _request: Request) -> Response:
        body, content_type = render(self.registry)
        return PlainTextResponse(body, headers={"Content-Type": content_type})


def redis_client(settings: GatewaySettings) -> Redis:
    """The replica's Redis client: a bounded pool whose callers wait for a free connection.

    redis-py's default pool raises ``MaxConnectionsError`` once 100 calls are in flight: a
    thousand sockets leaving their rooms at once (a client fleet dropping) lost presence
    notices and forced a full resync. ``BlockingConnectionPool`` queues those calls instead,
    each for at most the Redis operation timeout.
    """
    assert settings.redis_url is not None
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_op_timeout,
        socket_connect_timeout=2.0,
        socket_timeout=5.0,
        socket_keepalive=True,
        health_check_interval=10,
        # One immediate retry replaces a pooled connection that died with Redis; more (with
        # backoff) would hold senders up during an outage.
        retry=Retry(NoBackoff(), 1),
    )
    return Redis.from_pool(pool)  # the client owns the pool: closing it closes the pool


def _under(path: str, prefix: str) -> bool:
    """Whether ``path`` is at or below ``prefix`` (ending in ``/``), as python-engineio routes."""
    return (path if path.endswith("/") else path + "/").startswith(prefix)


def _library_logger(name: str) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.setLevel(_LIBRARY_LOG_LEVEL)
    return logger


def create_app(
    settings: GatewaySettings,
    *,
    registry: CollectorRegistry | None = None,
    keys: KeySource | None = None,
) -> Gateway:
    """Builds a gateway replica from ``settings``.

    ``registry`` receives the metrics (a fresh one with process metrics by default); ``keys``
    replaces the JWKS key source, for tests that verify against keys they hold.
    """
    return Gateway(
        settings, registry=registry if registry is not None else new_registry(), keys=keys
    )
