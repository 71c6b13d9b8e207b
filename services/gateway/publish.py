"""``POST /v1/publish``: a backend sends a ``notification`` to a user or a room, cluster-wide.

The request carries the service credential (``GATEWAY_PUBLISH_TOKEN``) as a Bearer token,
compared in constant time; without a configured credential the endpoint does not exist.
The body is ``{"room": ..., "event": "notification", "data": {...}}`` or the same with
``"user": sub`` instead of ``room``. Targets follow the room policy's prefixes, so a socket id
can never be addressed. Delivery goes through the same fan-out as client messages.
"""

from __future__ import annotations

import hmac
import logging

import orjson
from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from services.gateway.broadcast import Broadcaster
from services.gateway.rooms import is_targetable, user_room

log = logging.getLogger(__name__)

PUBLISHABLE_EVENTS = frozenset({"notification"})


def _problem(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


class Publisher:
    """The ``/v1/publish`` endpoint."""

    def __init__(
        self, *, broadcaster: Broadcaster, token: SecretStr | None, max_bytes: int
    ) -> None:
        self._broadcaster = broadcaster
        self._token = token.get_secret_value().encode() if token is not None else None
        self._max_bytes = max_bytes

    async def endpoint(self, request: Request) -> Response:
        """Authenticates, validates and fans out one publish request."""
        if self._token is None:
            return _problem(404, "not_found", "publishing is not enabled on this gateway")
        scheme, _, credential = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            credential.strip().encode(), self._token
        ):
            return _problem(401, "unauthorized", "a valid service credential is required")
        too_large = _problem(413, "too_large", f"the body is larger than {self._max_bytes} bytes")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self._max_bytes:
            return too_large
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > self._max_bytes:
                return too_large
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            return _problem(400, "bad_request", "the body is not JSON")
        try:
            room, data = _target(payload)
        except ValueError as exc:
            return _problem(422, "bad_request", str(exc))
        await self._broadcaster.emit("notification", data, room=room)
        log.info("notification published", extra={"room": room})
        return JSONResponse({"ok": True, "room": room}, status_code=202)


def _target(payload: object) -> tuple[str, dict[str, object]]:
    """The room and data of a publish body; ``ValueError`` says what is wrong."""
    if not isinstance(payload, dict):
        raise ValueError("the body must be an object")
    allowed = {"room", "user", "event", "data"}
    if not payload.keys() <= allowed or ("room" in payload) == ("user" in payload):
        raise ValueError("the body must have event, data and exactly one of room or user")
    if payload.get("event") not in PUBLISHABLE_EVENTS:
        raise ValueError(f"event must be one of: {', '.join(sorted(PUBLISHABLE_EVENTS))}")
    data = payload.get("data")
    if not isinstance(data, dict):
        raise ValueError("data must be an object")
    if "user" in payload:
        user = payload["user"]
        if not isinstance(user, str) or not 0 < len(user) <= 128:
            raise ValueError("user must be a user id")
        room = user_room(user)
    else:
        room = payload["room"]
    if not is_targetable(room):
        raise ValueError("room must be a public:, private: or user: room")
    assert isinstance(room, str)
    return room, data
