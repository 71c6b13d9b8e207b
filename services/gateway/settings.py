"""The gateway replica's settings: the shared Redis, JWT and log settings plus its own.

Variables the design fixes without a prefix (``REDIS_URL``, ``JWT_ISSUER``, ``JWT_AUDIENCE``,
``JWKS_URL``, ``LOG_LEVEL`` …) come from the shared classes; everything that belongs to the
gateway alone is read with the ``GATEWAY_`` prefix, e.g. ``GATEWAY_PORT`` or
``GATEWAY_EVENT_RATE``. Tests build the class by field name instead of patching the environment.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from shared.settings import COMMON_CONFIG, JWTVerifySettings, LogSettings, RedisSettings

SAME_ORIGIN = None
"""``cors_allowed_origins`` value meaning "only the origin the request was sent to"."""


class GatewaySettings(RedisSettings, JWTVerifySettings, LogSettings):
    """Everything one gateway replica needs; validated once at start-up."""

    # Inputs stay out of error messages: a removed secret setting must not be echoed.
    model_config = SettingsConfigDict(
        **COMMON_CONFIG, env_prefix="GATEWAY_", hide_input_in_errors=True
    )

    host: str = "127.0.0.1"
    port: int = Field(8001, ge=1, le=65535)
    cors_origins: str | None = Field(
        None,
        description="Comma-separated Origin allowlist; unset means same origin only, "
        "'*' any origin (only when set explicitly).",
    )
    ws: Literal["websockets-sansio", "wsproto", "websockets"] = "websockets-sansio"

    # Protocol limits.
    max_frame_bytes: int = Field(
        65536,
        ge=1024,
        le=16 * 1024 * 1024,
        description="Largest Engine.IO frame or polling body accepted; larger ones close.",
    )
    max_message_bytes: int = Field(
        4096, ge=1, le=1024 * 1024, description="Largest `message` text, UTF-8 bytes."
    )
    max_rooms_per_socket: int = Field(50, ge=1)
    max_connections_per_user: int = Field(
        20,
        ge=1,
        description="Sockets one user may hold across the cluster (per replica while Redis is "
        "unreachable).",
    )
    max_handshakes_in_flight: int = Field(
        256, ge=1, description="Engine.IO sessions still without a Socket.IO connection."
    )
    overload_retry_after_ms: int = Field(1000, ge=0)
    handshake_timeout: float = Field(
        10.0, gt=0, description="Seconds a session may stay open without connecting."
    )

    # Event rate per socket: a token bucket, then a disconnect on sustained abuse.
    event_rate: float = Field(20.0, gt=0, description="Events per second refilled.")
    event_burst: int = Field(40, ge=1, description="Bucket size.")
    abuse_threshold: int = Field(
        50,
        ge=1,
        description="Rate-limited events (leaking at event_rate) before the socket is cut.",
    )

    # Token lifetime on live sockets.
    token_expiring_lead: float = Field(
        60.0, ge=0, description="Seconds before `exp` that `token_expiring` is sent."
    )

    # Engine.IO heartbeat.
    ping_interval: float = Field(25.0, gt=0)
    ping_timeout: float = Field(20.0, gt=0)

    # Backend publishing (POST /v1/publish) with service tokens from the auth service.
    max_publish_bytes: int = Field(65536, ge=256, le=1024 * 1024)
    publish_rate: float = Field(
        50.0, gt=0, description="Publishes per second refilled, per client and replica."
    )
    publish_burst: int = Field(100, ge=1, description="Publish bucket size per client.")
    publish_token: str | None = Field(
        None,
        description="Removed: backends authenticate with a service token (see the validator).",
    )

    # Presence.
    who_max_members: int = Field(
        1000, ge=1, le=100_000, description="Most members one `who` answer lists."
    )

    # Redis.
    redis_channel: str = Field("sockgate:socketio", min_length=1, max_length=200)
    redis_retry_max: float = Field(
        2.0, gt=0, description="Ceiling of the resubscribe backoff, seconds."
    )
    replica_ttl: float = Field(
        30.0,
        ge=1.0,
        le=3600.0,
        description="Seconds without a heartbeat after which a replica counts as dead: the "
        "room members and connections it held stop counting. Heartbeats run every third of it.",
    )
    redis_op_timeout: float = Field(
        1.0,
        gt=0,
        le=10.0,
        description="Seconds a handshake or room event waits on Redis before carrying on "
        "with what this replica knows.",
    )
    redis_max_connections: int = Field(
        100,
        ge=2,
        le=10_000,
        description="Connections to Redis this replica opens at most (the subscription's "
        "included). When all are busy, a call waits for one (up to the Redis operation "
        "timeout) instead of failing: a burst of disconnects must not lose presence notices.",
    )
    redis_batch_window: float = Field(
        0.010,
        ge=0,
        le=0.05,
        description="Seconds the first per-user-limit Redis call after a quiet moment waits "
        "for others to share its batch (0: the rest of the event-loop pass), or less: once "
        "every handshake in progress waits on it, it goes at once. Each batch costs the replica "
        "a round trip's work; under a connection storm fewer, larger batches save CPU "
        "(docs/operations.md).",
    )
    redis_batch_window_busy: float = Field(
        0.020,
        ge=0,
        le=0.05,
        description="The same wait while the replica is busy (over half a core lately), when "
        "its CPU sets the connect rate: 20 ms against 10 took 0.85x the CPU per connect in a "
        "storm (docs/operations.md). Set it to GATEWAY_REDIS_BATCH_WINDOW to wait the same "
        "at any load.",
    )
    revocation_retention: float = Field(
        86400.0,
        gt=0,
        description="How long a user's revoked-before time is kept; at least the token TTL.",
    )

    # SIGTERM.
    drain_grace: float = Field(
        20.0, gt=0, description="Seconds from SIGTERM to exit, whatever happens."
    )
    drain_delay: float = Field(
        1.0, ge=0, description="Seconds /readyz fails before the first socket is closed."
    )
    drain_spread: float = Field(
        5.0, ge=0, description="Seconds over which the sockets are closed in batches."
    )

    # Garbage collection (see ``__main__``).
    gc_tuning: bool = Field(
        True,
        description="Freeze the start-up heap and raise the young-generation threshold; "
        "off restores CPython's defaults.",
    )

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if value == "*":
            return value
        for origin in _split(value):
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.path:
                raise ValueError(
                    f"GATEWAY_CORS_ORIGINS: {origin!r} is not an origin like https://host[:port]"
                )
        return value

    @field_validator("publish_token")
    @classmethod
    def _no_static_publish_token(cls, value: str | None) -> None:
        if value is not None:
            raise ValueError(
                "GATEWAY_PUBLISH_TOKEN is no longer read: backends publish with a service token "
                "from the auth service (POST /v1/auth/token, scope publish; AUTH_SERVICE_CLIENTS)"
            )
        return None

    @model_validator(mode="after")
    def _drain_fits_grace(self) -> GatewaySettings:
        if self.drain_delay + self.drain_spread >= self.drain_grace:
            raise ValueError(
                "GATEWAY_DRAIN_DELAY + GATEWAY_DRAIN_SPREAD must be less than GATEWAY_DRAIN_GRACE"
            )
        return self

    @property
    def cors_allowed_origins(self) -> str | list[str] | None:
        """The value for python-socketio: ``None`` same origin, ``"*"`` any, else a list."""
        if self.cors_origins is None:
            return SAME_ORIGIN
        if self.cors_origins == "*":
            return "*"
        return _split(self.cors_origins)

    @property
    def cluster_mode(self) -> bool:
        """Whether rooms fan out between replicas through Redis."""
        return self.redis_url is not None


def _split(value: str) -> list[str]:
    return [origin.strip().rstrip("/") for origin in value.split(",") if origin.strip()]
