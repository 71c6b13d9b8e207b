"""Wire models of the HTTP API, separate from the stored records."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field, StringConstraints

# Limits are checked before anything is hashed: a 1 MB password is a 422, not a slow hash.
Username = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{3,32}$", min_length=3, max_length=32)
]
Password = Annotated[str, StringConstraints(min_length=8, max_length=256)]
LoginName = Annotated[str, StringConstraints(min_length=1, max_length=254)]
LoginPassword = Annotated[str, StringConstraints(min_length=1, max_length=256)]
ClientId = Annotated[str, StringConstraints(min_length=1, max_length=64)]
ClientSecret = Annotated[str, StringConstraints(min_length=1, max_length=256)]
ScopeList = Annotated[str, StringConstraints(max_length=256)]
RefreshToken = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{20,128}$", min_length=20, max_length=128)
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class RegisterRequest(_Strict):
    username: Username
    email: Annotated[EmailStr, Field(max_length=254)]
    password: Password


class LoginRequest(_Strict):
    username: LoginName = Field(description="The username or the email address.")
    password: LoginPassword


class RefreshRequest(_Strict):
    refresh_token: RefreshToken


class UserPublic(BaseModel):
    id: str
    username: str
    email: str


class TokenResponse(BaseModel):
    access_token: str
    token_type: Literal["Bearer"] = "Bearer"  # noqa: S105 - the scheme name
    expires_in: int
    refresh_token: str


class ServiceTokenResponse(BaseModel):
    access_token: str
    token_type: Literal["Bearer"] = "Bearer"  # noqa: S105 - the scheme name
    expires_in: int
    scope: str


class ErrorDetail(BaseModel):
    code: str
    message: str
    fields: list[dict[str, object]] | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class Jwk(BaseModel):
    kty: Literal["RSA"]
    use: Literal["sig"]
    alg: Literal["RS256"]
    kid: str
    n: str
    e: str


class Jwks(BaseModel):
    keys: list[Jwk]


class OpenIdConfiguration(BaseModel):
    issuer: str
    jwks_uri: str
    token_endpoint: str
    id_token_signing_alg_values_supported: list[str]
    token_endpoint_auth_methods_supported: list[str]
    grant_types_supported: list[str]
    response_types_supported: list[str]
    subject_types_supported: list[str]


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(default_factory=dict)
