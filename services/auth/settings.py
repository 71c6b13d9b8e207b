"""The auth service's settings, read once from ``AUTH_*`` variables (and shared pieces)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic_settings import SettingsConfigDict

from shared.settings import COMMON_CONFIG, LogSettings, RedisSettings


class ServiceClient(BaseModel):
    """A backend allowed the client-credentials grant, and the scopes it may ask for."""

    id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    secret: SecretStr = Field(min_length=32)
    scopes: list[Literal["publish"]] = Field(min_length=1)


class AuthSettings(LogSettings, RedisSettings):
    """Everything the auth service needs; validated before anything is built."""

    model_config = SettingsConfigDict(**{**COMMON_CONFIG, "env_prefix": "AUTH_"})

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    workers: int = Field(1, ge=1, le=64)
    issuer: str = "http://127.0.0.1:8000"
    audience: str = "gateway"
    database_url: str = "sqlite:///./var/auth.db"
    keys_dir: Path = Path("./var/keys")
    access_ttl: int = Field(900, ge=30, le=86400)
    refresh_ttl: int = Field(2592000, ge=300, le=31536000)

    # Password hashing: argon2id, OWASP's minimum (19 MiB, t=2, p=1) unless raised.
    argon2_time_cost: int = Field(2, ge=1, le=10)
    argon2_memory_kib: int = Field(19456, ge=1024, le=1048576)
    argon2_parallelism: int = Field(1, ge=1, le=8)
    hash_concurrency: int = Field(4, ge=1, le=64)
    hash_queue_timeout: float = Field(10.0, gt=0)

    # Login throttling: per account exponential delay, per client address a token bucket.
    login_free_failures: int = Field(5, ge=1, le=100)
    login_max_delay: float = Field(900.0, gt=0)
    ip_rate_per_minute: int = Field(60, ge=1)
    ip_burst: int = Field(30, ge=1)
    trust_forwarded_for: bool = False

    # Backends that may obtain service tokens (``POST /v1/auth/token``), as JSON:
    # [{"id": "backend", "secret": "<32+ characters>", "scopes": ["publish"]}]. No default.
    service_clients: list[ServiceClient] = Field(default_factory=list)

    max_body_bytes: int = Field(65536, ge=1024)
    cors_origins: str = ""

    # AUTH_DEMO=true serves the demo page (web/) at /demo/, using the gateways listed.
    demo: bool = False
    demo_gateways: str = "http://127.0.0.1:8001,http://127.0.0.1:8002"

    @property
    def demo_gateway_list(self) -> list[str]:
        return [g.strip() for g in self.demo_gateways.split(",") if g.strip()]

    @field_validator("issuer")
    @classmethod
    def _issuer_is_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")) or value.endswith("/"):
            raise ValueError("AUTH_ISSUER must be an http(s) URL without a trailing slash")
        return value

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if not value.startswith(("sqlite:///", "mongodb://", "mongodb+srv://")):
            raise ValueError("AUTH_DATABASE_URL must be sqlite:///… or mongodb://…")
        return value

    @model_validator(mode="after")
    def _refresh_outlives_access(self) -> AuthSettings:
        if self.refresh_ttl <= self.access_ttl:
            raise ValueError("AUTH_REFRESH_TTL must be longer than AUTH_ACCESS_TTL")
        return self

    @field_validator("service_clients")
    @classmethod
    def _unique_clients(cls, value: list[ServiceClient]) -> list[ServiceClient]:
        if len({client.id for client in value}) != len(value):
            raise ValueError("AUTH_SERVICE_CLIENTS has two clients with the same id")
        return value

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]
