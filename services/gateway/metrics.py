"""The gateway's Prometheus metrics, built on the registry the app is given.

Label values are always from small fixed sets: event names a client invents are counted as
``other``, so no client can grow the number of series.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from shared.metrics import LATENCY_BUCKETS

KNOWN_EVENTS = frozenset({"join", "leave", "message", "reauth", "who"})


class GatewayMetrics:
    """Every metric one replica exports."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.connected_sockets = Gauge(
            "gateway_connected_sockets", "Socket.IO connections open on this replica.",
            registry=registry,
        )  # fmt: skip
        self.handshakes = Counter(
            "gateway_handshakes",
            "Socket.IO handshakes by result (accepted, refused) and refusal code.",
            ["result", "code"],
            registry=registry,
        )
        self.handshake_seconds = Histogram(
            "gateway_handshake_duration_seconds",
            "Time from the CONNECT packet to the answer, accepted or refused.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.events = Counter(
            "gateway_events",
            "Client events by name and result (ok or the error code).",
            ["event", "result"],
            registry=registry,
        )
        self.deliveries = Counter(
            "gateway_deliveries",
            "Server events handed to local sockets (one per recipient).",
            registry=registry,
        )
        self.rate_limited = Counter(
            "gateway_rate_limited", "Client events refused by the rate limit.", registry=registry
        )
        self.protocol_errors = Counter(
            "gateway_protocol_errors",
            "Malformed or forbidden packets; each closes its connection.",
            registry=registry,
        )
        self.server_disconnects = Counter(
            "gateway_server_disconnects",
            "Sockets this replica closed, by reason.",
            ["reason"],
            registry=registry,
        )
        self.redis_up = Gauge(
            "gateway_redis_up",
            "1 while subscribed to Redis (always 0 in single-node mode).",
            registry=registry,
        )
        self.redis_reconnects = Counter(
            "gateway_redis_reconnects", "Redis subscriptions (re)established.", registry=registry
        )
        self.redis_publish_failures = Counter(
            "gateway_redis_publish_failures",
            "Fan-out messages that could not be published to Redis.",
            registry=registry,
        )
        self.redis_rejected = Counter(
            "gateway_redis_messages_rejected",
            "Messages on the gateway's Redis channels ignored as malformed or hostile.",
            ["channel"],
            registry=registry,
        )
        self.revocations = Counter(
            "gateway_revocations", "Revocations received from the auth service.", registry=registry
        )
        self.jwks_fetches = Counter(
            "gateway_jwks_fetches", "JWKS fetches by result.", ["result"], registry=registry
        )
        self.auth_service_calls = Counter(
            "gateway_auth_service_calls",
            "Calls to the auth service made for a connection. Stays 0: tokens are verified "
            "locally against cached keys (JWKS fetches are counted separately).",
            registry=registry,
        )
        self.cluster_state_errors = Counter(
            "gateway_cluster_state_errors",
            "Presence and connection-count updates that could not reach Redis (skipped while "
            "it is down, or failed), by operation; the replica rewrites its state once back.",
            ["op"],
            registry=registry,
        )
        self.replica_resyncs = Counter(
            "gateway_replica_resyncs",
            "Times this replica rewrote its presence and connection counts in Redis.",
            registry=registry,
        )
        self.replicas_reaped = Counter(
            "gateway_replicas_reaped",
            "Dead replicas whose presence and connection counts this replica removed.",
            registry=registry,
        )
        self.publishes = Counter(
            "gateway_publishes",
            "POST /v1/publish requests by result (accepted, or why they were refused).",
            ["result"],
            registry=registry,
        )
        self.draining = Gauge(
            "gateway_draining", "1 once SIGTERM started the drain.", registry=registry
        )

    def event(self, name: str, result: str) -> None:
        """Counts one client event under a bounded label set."""
        self.events.labels(name if name in KNOWN_EVENTS else "other", result).inc()
