"""Translation of domain errors into HTTP answers with one JSON shape.

Every error body is ``{"error": {"code", "message"}}``; a 422 adds ``fields`` naming what was
wrong, but never echoes the input (it could be a password). Anything unexpected becomes a
plain 500 body: the traceback goes to the log, never to the client.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.auth.clients import InvalidClient, InvalidScope
from services.auth.errors import (
    Busy,
    InvalidCredentials,
    InvalidRefreshToken,
    NotAuthenticated,
    Throttled,
    UserExists,
)
from services.auth.store import StoreUnavailable

log = logging.getLogger(__name__)


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    headers: dict[str, str] | None = None,
    fields: list[dict[str, Any]] | None = None,
) -> JSONResponse:
    """The one error body of the API."""
    error: dict[str, Any] = {"code": code, "message": message}
    if fields is not None:
        error["fields"] = fields
    return JSONResponse({"error": error}, status_code=status, headers=headers)


def _retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def install_error_handlers(app: FastAPI) -> None:
    """Registers the translation of every domain and protocol error on ``app``."""

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        fields = [
            {"loc": [str(p) for p in err.get("loc", ())], "type": err.get("type", "invalid")}
            for err in exc.errors()
        ]
        return error_response(422, "invalid_request", "the request is not valid", fields=fields)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.__cause__ is not None:
            # FastAPI turns a body it cannot decode (not UTF-8, nested too deep) into a 400,
            # though a JSON syntax error is a 422: both are invalid input, one documented 422.
            fields = [{"loc": ["body"], "type": "json_invalid"}]
            return error_response(422, "invalid_request", "the request is not valid", fields=fields)
        code = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}.get(
            exc.status_code, "http_error"
        )
        return error_response(
            exc.status_code, code, str(exc.detail), headers=dict(exc.headers or {})
        )

    @app.exception_handler(InvalidCredentials)
    async def invalid_credentials(_: Request, exc: InvalidCredentials) -> JSONResponse:
        return error_response(401, "invalid_credentials", "invalid username or password")

    @app.exception_handler(InvalidRefreshToken)
    async def invalid_refresh(_: Request, exc: InvalidRefreshToken) -> JSONResponse:
        return error_response(401, "invalid_refresh_token", "the refresh token is not valid")

    @app.exception_handler(NotAuthenticated)
    async def not_authenticated(_: Request, exc: NotAuthenticated) -> JSONResponse:
        return error_response(
            401, exc.code, exc.message, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
        )

    @app.exception_handler(InvalidClient)
    async def invalid_client(_: Request, exc: InvalidClient) -> JSONResponse:
        return error_response(
            401,
            "invalid_client",
            "invalid client credentials",
            headers={"WWW-Authenticate": 'Basic realm="sockgate"'},
        )

    @app.exception_handler(InvalidScope)
    async def invalid_scope(_: Request, exc: InvalidScope) -> JSONResponse:
        return error_response(400, "invalid_scope", str(exc))

    @app.exception_handler(UserExists)
    async def user_exists(_: Request, exc: UserExists) -> JSONResponse:
        return error_response(409, "conflict", f"this {exc.field} is already registered")

    @app.exception_handler(Throttled)
    async def throttled(_: Request, exc: Throttled) -> JSONResponse:
        return error_response(
            429, "too_many_requests", "too many attempts", headers=_retry_after(exc.retry_after)
        )

    @app.exception_handler(Busy)
    async def busy(_: Request, exc: Busy) -> JSONResponse:
        return error_response(503, "busy", "the service is busy", headers=_retry_after(1))

    @app.exception_handler(StoreUnavailable)
    async def store_unavailable(_: Request, exc: StoreUnavailable) -> JSONResponse:
        log.error("database unavailable", extra={"error": str(exc)})
        return error_response(
            503, "unavailable", "the database is unavailable", headers=_retry_after(2)
        )

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error", exc_info=exc)
        return error_response(500, "internal_error", "an internal error occurred")
