"""The HTTP API of the auth service (contract: DESIGN.md, "Auth service HTTP API")."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Form, Request, Response, status
from fastapi.responses import JSONResponse

from services.auth.clients import InvalidClient
from services.auth.deps import AccountsDep, ClientAddress, CurrentUser, State
from services.auth.models import (
    ClientId,
    ClientSecret,
    ErrorBody,
    Health,
    Jwks,
    LoginRequest,
    OpenIdConfiguration,
    RefreshRequest,
    RegisterRequest,
    ScopeList,
    ServiceTokenResponse,
    TokenResponse,
    UserPublic,
)
from services.auth.store import StoreUnavailable, UserRecord
from shared.metrics import render

JWKS_MAX_AGE = 300


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {
        400: "The requested scope is not granted to this client.",
        401: "Not authenticated, or the credentials or token are not valid.",
        409: "The username or email is already registered.",
        413: "The request body is too large.",
        422: "The request is not valid.",
        429: "Too many attempts; see Retry-After.",
        503: "The database or the password hasher is unavailable; see Retry-After.",
    }
    return {code: {"model": ErrorBody, "description": descriptions[code]} for code in codes}


def _public(user: UserRecord) -> UserPublic:
    return UserPublic(id=user.id, username=user.username, email=user.email)


def _pair(pair: Any) -> TokenResponse:
    return TokenResponse(
        access_token=pair.access_token,
        expires_in=pair.expires_in,
        refresh_token=pair.refresh_token,
    )


api = APIRouter(prefix="/v1")


@api.post(
    "/auth/register",
    status_code=status.HTTP_201_CREATED,
    responses=_errors(409, 413, 422, 429, 503),
)
async def register(
    body: RegisterRequest, accounts: AccountsDep, state: State, address: ClientAddress
) -> UserPublic:
    """Creates an account."""
    state.address_limiter.hit(address)
    user = await accounts.register(body.username, str(body.email), body.password)
    return _public(user)


@api.post("/auth/login", responses=_errors(401, 413, 422, 429, 503))
async def login(
    body: LoginRequest, accounts: AccountsDep, state: State, address: ClientAddress
) -> TokenResponse:
    """Exchanges a username (or email) and password for an access and a refresh token."""
    state.address_limiter.hit(address)
    return _pair(await accounts.login(body.username, body.password))


@api.post("/auth/refresh", responses=_errors(401, 413, 422, 503))
async def refresh(body: RefreshRequest, accounts: AccountsDep, request: Request) -> TokenResponse:
    """Spends a refresh token for a new pair; reusing a spent one revokes its family."""
    received_at = getattr(request.state, "received_at", None)
    return _pair(await accounts.refresh(body.refresh_token, received_at))


@api.post(
    "/auth/logout",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=_errors(413, 422, 503),
)
async def logout(body: RefreshRequest, accounts: AccountsDep) -> Response:
    """Revokes the refresh token's family."""
    await accounts.logout(body.refresh_token)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@api.post(
    "/auth/logout-all",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=_errors(401, 503),
)
async def logout_all(user: CurrentUser, accounts: AccountsDep) -> Response:
    """Revokes every session of the caller and disconnects their live sockets."""
    await accounts.logout_all(user)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@api.get("/users/me", responses=_errors(401, 503))
async def me(user: CurrentUser) -> UserPublic:
    """The caller's profile."""
    return _public(user)


def _basic_credentials(header: str | None) -> tuple[str, str] | None:
    """``(client_id, secret)`` from an ``Authorization: Basic`` header, if there is one."""
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise InvalidClient("malformed Basic credentials") from None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise InvalidClient("malformed Basic credentials")
    return client_id, secret


@api.post("/auth/token", responses=_errors(400, 401, 413, 422))
async def service_token(
    state: State,
    request: Request,
    grant_type: Annotated[Literal["client_credentials"], Form()],
    client_id: Annotated[ClientId | None, Form()] = None,
    client_secret: Annotated[ClientSecret | None, Form()] = None,
    scope: Annotated[ScopeList | None, Form()] = None,
) -> ServiceTokenResponse:
    """OAuth 2.0 client-credentials grant (RFC 6749 §4.4) for backends: a scoped service token.

    Credentials come as HTTP Basic or as ``client_id``/``client_secret`` form fields.
    """
    basic = _basic_credentials(request.headers.get("authorization"))
    if basic is not None:
        client_id, client_secret = basic
    if not client_id or client_secret is None:
        raise InvalidClient("client credentials are missing")
    granted = state.clients.grant(client_id, client_secret, scope)
    return ServiceTokenResponse(
        access_token=granted.access_token, expires_in=granted.expires_in, scope=granted.scope
    )


wellknown = APIRouter()


@wellknown.get("/.well-known/jwks.json")
async def jwks(state: State, response: Response) -> Jwks:
    """The public signing keys: the signer and retired keys whose tokens may still live."""
    response.headers["Cache-Control"] = f"public, max-age={JWKS_MAX_AGE}"
    return Jwks.model_validate(state.keys.jwks())


@wellknown.get("/.well-known/openid-configuration")
async def openid_configuration(state: State, response: Response) -> OpenIdConfiguration:
    """OpenID-style discovery: where the keys and the token endpoint are."""
    issuer = state.settings.issuer
    response.headers["Cache-Control"] = f"public, max-age={JWKS_MAX_AGE}"
    return OpenIdConfiguration(
        issuer=issuer,
        jwks_uri=f"{issuer}/.well-known/jwks.json",
        token_endpoint=f"{issuer}/v1/auth/token",
        id_token_signing_alg_values_supported=["RS256"],
        token_endpoint_auth_methods_supported=["client_secret_basic", "client_secret_post"],
        grant_types_supported=["client_credentials"],
        response_types_supported=["token"],
        subject_types_supported=["public"],
    )


ops = APIRouter()


@ops.get("/healthz")
async def healthz() -> Health:
    """Liveness: the process serves requests."""
    return Health(status="ok")


@ops.get("/readyz", responses={503: {"model": Health, "description": "Not ready."}})
async def readyz(state: State) -> Any:
    """Readiness: the database answers and a signing key is loaded."""
    checks = {"keys": "ok"}
    try:
        state.keys.signer  # noqa: B018 - loading it is the check
    except Exception:  # a broken key folder must read as "not ready", whatever broke
        checks["keys"] = "unavailable"
    try:
        await state.store.ping()
        checks["database"] = "ok"
    except StoreUnavailable:
        checks["database"] = "unavailable"
    ready = all(v == "ok" for v in checks.values())
    body = Health(status="ok" if ready else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@ops.get("/metrics", response_class=Response, include_in_schema=False)
async def metrics(state: State) -> Response:
    """Prometheus metrics in text format."""
    payload, content_type = render(state.registry)
    return Response(payload, media_type=content_type)
