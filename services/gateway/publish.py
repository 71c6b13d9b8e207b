"""``POST /v1/publish``: a backend sends a ``notification`` to a user or a room, cluster-wide.

credential -> scope -> rate -> size -> body -> fan-out, in ``Publisher.endpoint``.

The credential is a service token from the auth service's client-credentials grant
(``POST /v1/auth/token``) sent as ``Authorization: Bearer``: an ordinary RS256 access token of
the same issuer and audience, verified locally by the replica's ``TokenVerifier`` like any
socket's token, that must carry the ``publish`` scope. Refusals follow RFC 6750: 401 with the
token error's code (``token_missing``, ``token_invalid``, ``token_expired``,
``token_revoked``) and 403 ``insufficient_scope``, each with a ``WWW-Authenticate`` header.

Each client (``client_id`` claim, else ``sub``) has a token bucket on every replica: past it,
429 ``rate_limited`` with ``Retry-After``. The body is at most ``GATEWAY_MAX_PUBLISH_BYTES``
(413) of JSON (400 otherwise) of the shape ``{"room" | "user", "event": "notification",
"data": {...}}`` (422 with the offending fields otherwise). Targets follow the room policy's
prefixes, so a socket id can never be addressed. Delivery takes the same fan-out as client
messages: this replica's sockets at once, the other replicas' through Redis.

Every error body is ``{"error": {"code", "message"}}``, 422 adds ``"fields"``.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from services.gateway.broadcast import Broadcaster
from services.gateway.limits import TokenBucket
from services.gateway.metrics import GatewayMetrics
from services.gateway.revocations import Revocations
from services.gateway.rooms import is_targetable, user_room
from shared.tokens import (
    AccessClaims,
    TokenError,
    TokenInvalid,
    TokenMissing,
    TokenRevoked,
    TokenVerifier,
)

log = logging.getLogger(__name__)

PUBLISH_SCOPE = "publish"
# Clients are few (one per backend); the cap only bounds what forged-but-valid ids could cost.
_MAX_CLIENT_BUCKETS = 10_000


class PublishRequest(BaseModel):
    """The body of ``POST /v1/publish``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    room: str | None = Field(None, description="A public:, private: or user: room.")
    user: str | None = Field(None, min_length=1, max_length=128, description="A user id.")
    event: Literal["notification"]
    data: dict[str, Any]

    @model_validator(mode="after")
    def _one_target(self) -> PublishRequest:
        if (self.room is None) == (self.user is None):
            raise ValueError("exactly one of room or user is required")
        if self.room is not None and not is_targetable(self.room):
            raise ValueError(
                "room must be a public:, private: or user: room matching ^[A-Za-z0-9:_.-]{1,128}$"
            )
        return self

    @property
    def target(self) -> str:
        """The room the notification goes to."""
        return self.room if self.room is not None else user_room(self.user or "")


class Refused(Exception):
    """A publish request is refused with ``status`` and ``code``."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        fields: list[dict[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.fields = fields

    def response(self) -> Response:
        """The JSON error response."""
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.fields is not None:
            error["fields"] = self.fields
        return JSONResponse({"error": error}, status_code=self.status, headers=self.headers)


class ClientBuckets:
    """One token bucket per publishing client, the least recently used dropped past a cap."""

    def __init__(self, *, rate: float, burst: int, cap: int = _MAX_CLIENT_BUCKETS) -> None:
        self._rate = rate
        self._burst = burst
        self._cap = cap
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def take(self, client: str) -> bool:
        """Charges one publish to ``client``; ``False`` when it is over its rate."""
        bucket = self._buckets.get(client)
        if bucket is None:
            bucket = self._buckets[client] = TokenBucket(self._rate, self._burst)
            if len(self._buckets) > self._cap:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(client)
        return bucket.take()

    @property
    def retry_after(self) -> int:
        """Whole seconds until a bucket has a token again."""
        return max(1, math.ceil(1 / self._rate))


class Publisher:
    """The ``/v1/publish`` endpoint."""

    def __init__(
        self,
        *,
        broadcaster: Broadcaster,
        verifier: TokenVerifier,
        revocations: Revocations,
        metrics: GatewayMetrics,
        max_bytes: int,
        rate: float,
        burst: int,
    ) -> None:
        self._broadcaster = broadcaster
        self._verifier = verifier
        self._revocations = revocations
        self._metrics = metrics
        self._max_bytes = max_bytes
        self._buckets = ClientBuckets(rate=rate, burst=burst)

    async def endpoint(self, request: Request) -> Response:
        """Authenticates, validates and fans out one publish request."""
        try:
            client = await self._client(request)
            body = await self._body(request)
            room = body.target
        except Refused as refusal:
            self._metrics.publishes.labels(refusal.code).inc()
            return refusal.response()
        await self._broadcaster.emit(body.event, body.data, room=room)
        self._metrics.publishes.labels("accepted").inc()
        log.info("notification published", extra={"client": client, "room": room})
        return JSONResponse({"ok": True, "room": room}, status_code=202)

    async def _client(self, request: Request) -> str:
        """The publishing client's id, once its token, scope and rate allow the request."""
        claims = await self._claims(request.headers.get("authorization"))
        if PUBLISH_SCOPE not in claims.scope:
            raise Refused(
                403,
                "insufficient_scope",
                f"the token lacks the {PUBLISH_SCOPE!r} scope",
                headers={
                    "WWW-Authenticate": (
                        f'Bearer error="insufficient_scope", scope="{PUBLISH_SCOPE}"'
                    )
                },
            )
        client_id = claims.raw.get("client_id")
        client = client_id if isinstance(client_id, str) and client_id else claims.sub
        if not self._buckets.take(client):
            raise Refused(
                429,
                "rate_limited",
                "too many publishes from this client; slow down",
                headers={"Retry-After": str(self._buckets.retry_after)},
            )
        return client

    async def _claims(self, header: str | None) -> AccessClaims:
        scheme, _, credentials = (header or "").partition(" ")
        try:
            if not header:
                raise TokenMissing("a service token is required (Authorization: Bearer)")
            if scheme.lower() != "bearer" or not credentials.strip():
                raise TokenInvalid("the Authorization header is not a Bearer token")
            claims = await self._verifier.verify(credentials.strip())
            if self._revocations.is_revoked(claims.sub, claims.iat):
                raise TokenRevoked("the token has been revoked")
        except TokenError as exc:
            challenge = (
                "Bearer"
                if isinstance(exc, TokenMissing)
                else f'Bearer error="invalid_token", error_description="{exc.code}"'
            )
            raise Refused(
                401, exc.code, exc.message, headers={"WWW-Authenticate": challenge}
            ) from None
        return claims

    async def _body(self, request: Request) -> PublishRequest:
        """The validated body, read up to the size cap."""
        content_type = request.headers.get("content-type", "application/json")
        if content_type.split(";")[0].strip().lower() != "application/json":
            raise Refused(415, "unsupported_media_type", "the body must be application/json")
        too_large = Refused(413, "too_large", f"the body is larger than {self._max_bytes} bytes")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self._max_bytes:
            raise too_large
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > self._max_bytes:
                raise too_large
        try:
            payload = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise Refused(400, "bad_request", "the body is not JSON") from None
        try:
            return PublishRequest.model_validate(payload)
        except ValidationError as exc:
            raise Refused(
                422,
                "invalid_body",
                "the body must be {room | user, event: notification, data: {...}}",
                fields=_fields(exc),
            ) from None


def _fields(exc: ValidationError) -> list[dict[str, str]]:
    """What is wrong with which field, without echoing the input."""
    return [
        {
            "field": ".".join(str(part) for part in error["loc"]) or "body",
            "message": error["msg"].removeprefix("Value error, "),
        }
        for error in exc.errors(include_url=False, include_input=False)
    ]
