"""The shape of event acks and the checks every event payload goes through.

Every client event is answered ``{"ok": true, ...}`` or
``{"ok": false, "error": {"code": ..., "message": ...}}``. Handlers raise ``EventError`` with
the code; the router turns it into the ack, so no exception (nor its trace) reaches a client.
"""

from __future__ import annotations

from typing import Any

Ack = dict[str, Any]


class EventError(Exception):
    """A client event is refused; ``code`` goes into the ack."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def ok(**fields: Any) -> Ack:
    """A success ack with ``fields``."""
    return {"ok": True, **fields}


def error(code: str, message: str) -> Ack:
    """A failure ack."""
    return {"ok": False, "error": {"code": code, "message": message}}


def expect(payload: object, **fields: type) -> list[Any]:
    """The values of exactly ``fields`` in the payload object, checked by type.

    Missing fields, extra fields, wrong types and non-object payloads are ``bad_request``:
    the contract fixes each payload, so anything else is a client bug or a probe.
    """
    if not isinstance(payload, dict):
        raise EventError("bad_request", "the payload must be an object")
    if payload.keys() != fields.keys():
        raise EventError("bad_request", f"the payload must have exactly: {', '.join(fields)}")
    values = []
    for name, kind in fields.items():
        value = payload[name]
        if not isinstance(value, kind):
            raise EventError("bad_request", f"{name} must be a {kind.__name__}")
        values.append(value)
    return values
