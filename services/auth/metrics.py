"""The auth service's Prometheus metrics, built on a registry the app is given."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from shared.metrics import LATENCY_BUCKETS


class AuthMetrics:
    """Every metric the auth service exports."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "auth_http_requests_total",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "auth_http_request_duration_seconds",
            "HTTP request latency by route template and method.",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.logins = Counter(
            "auth_logins_total",
            "Login attempts by result: success, invalid, throttled, busy.",
            ["result"],
            registry=registry,
        )
        self.registrations = Counter(
            "auth_registrations_total",
            "Registrations by result: created, conflict.",
            ["result"],
            registry=registry,
        )
        self.refreshes = Counter(
            "auth_refreshes_total",
            "Refresh attempts by result: success, invalid, reuse_detected, race_lost.",
            ["result"],
            registry=registry,
        )
        self.tokens_issued = Counter(
            "auth_tokens_issued_total",
            "Tokens issued by type: access, refresh, service.",
            ["type"],
            registry=registry,
        )
        self.client_grants = Counter(
            "auth_client_grants_total",
            "Client-credentials grants by result: issued, invalid_client, invalid_scope.",
            ["result"],
            registry=registry,
        )
        self.revocations = Counter(
            "auth_revocations_total",
            "logout-all revocations by how the gateways were told: published, no_redis, failed.",
            ["result"],
            registry=registry,
        )
        self.hash_seconds = Histogram(
            "auth_password_hash_seconds",
            "Time to hash or verify one password, queueing included.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
