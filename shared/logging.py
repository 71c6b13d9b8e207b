"""Structured logging for the services: one JSON object a line, never a secret.

Records carry their ``extra`` fields into the JSON object. Keys that name secrets (tokens,
passwords, authorization headers) are replaced by ``"[redacted]"`` whatever logs them, so a
careless ``extra={"token": ...}`` cannot leak token material.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

from shared.settings import LogSettings

_SECRET_KEYS = frozenset(
    {
        "token",
        "access_token",
        "refresh_token",
        "password",
        "authorization",
        "auth",
        "secret",
        "client_secret",
        "cookie",
    }
)
# Attributes every LogRecord has; anything else on a record came from ``extra``.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's ANSI-coloured copy of the message
}


def redact(value: Any) -> Any:
    """Returns ``value`` with every secret-named key of nested mappings hidden."""
    if isinstance(value, dict):
        return {
            k: "[redacted]" if str(k).lower() in _SECRET_KEYS else redact(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line with its ``extra`` fields, secrets redacted."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRS and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(redact(payload), default=str).decode()


class TextFormatter(logging.Formatter):
    """Human-readable lines for local development, extras appended as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s %(message)s")
        self.converter = time.gmtime

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = redact(
            {k: v for k, v in record.__dict__.items() if k not in _RECORD_ATTRS and k[0] != "_"}
        )
        return line + "".join(f" {k}={v}" for k, v in extras.items())


def configure_logging(settings: LogSettings) -> None:
    """Sends every log record to stderr in the configured format and level."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    # uvicorn's access log would print every request line, query strings included.
    logging.getLogger("uvicorn.access").disabled = True
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
