"""Small settings classes that each service's settings combine.

Every class reads the environment through pydantic-settings. Fields that the design fixes to a
name without a service prefix (``REDIS_URL``, ``JWT_ISSUER`` …) carry that name as an alias, so
they read the same variable whichever service's settings include them. Tests build settings by
field name (``populate_by_name``) instead of patching the environment.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

COMMON_CONFIG = SettingsConfigDict(
    populate_by_name=True,
    extra="ignore",
    frozen=True,
    env_ignore_empty=True,
)


class LogSettings(BaseSettings):
    """How a service writes its logs."""

    model_config = COMMON_CONFIG

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", validation_alias=AliasChoices("LOG_LEVEL", "log_level")
    )
    log_format: Literal["json", "text"] = Field(
        "json", validation_alias=AliasChoices("LOG_FORMAT", "log_format")
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


class RedisSettings(BaseSettings):
    """Where Redis is; unset means the service runs without it."""

    model_config = COMMON_CONFIG

    redis_url: str | None = Field(None, validation_alias=AliasChoices("REDIS_URL", "redis_url"))

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("REDIS_URL must start with redis://, rediss:// or unix://")
        return value


class JWTVerifySettings(BaseSettings):
    """What a verifier of sockgate access tokens accepts."""

    model_config = COMMON_CONFIG

    jwt_issuer: str = Field(
        "http://127.0.0.1:8000", validation_alias=AliasChoices("JWT_ISSUER", "jwt_issuer")
    )
    jwt_audience: str = Field(
        "gateway", validation_alias=AliasChoices("JWT_AUDIENCE", "jwt_audience")
    )
    jwks_url: str | None = Field(None, validation_alias=AliasChoices("JWKS_URL", "jwks_url"))
    jwt_leeway: int = Field(
        10, ge=0, le=30, validation_alias=AliasChoices("JWT_LEEWAY", "jwt_leeway")
    )
    jwt_max_token_bytes: int = Field(
        8192,
        ge=512,
        le=65536,
        validation_alias=AliasChoices("JWT_MAX_TOKEN_BYTES", "jwt_max_token_bytes"),
    )
    jwks_refresh_interval: float = Field(
        300.0,
        gt=0,
        validation_alias=AliasChoices("JWKS_REFRESH_INTERVAL", "jwks_refresh_interval"),
    )
    jwks_unknown_kid_cooldown: float = Field(
        30.0,
        ge=0,
        validation_alias=AliasChoices("JWKS_UNKNOWN_KID_COOLDOWN", "jwks_unknown_kid_cooldown"),
    )
    jwks_fetch_timeout: float = Field(
        5.0, gt=0, validation_alias=AliasChoices("JWKS_FETCH_TIMEOUT", "jwks_fetch_timeout")
    )

    @property
    def resolved_jwks_url(self) -> str:
        """``JWKS_URL`` when set, else the JWKS document under the issuer."""
        return self.jwks_url or f"{self.jwt_issuer.rstrip('/')}/.well-known/jwks.json"
