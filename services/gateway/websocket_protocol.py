"""uvicorn's sans-I/O websocket protocol, without the log records it makes for every socket."""

from __future__ import annotations

import logging
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

# Where the gateway's websocket protocol logs; ``quiet_websocket_logger`` sets it to WARNING.
WEBSOCKET_LOGGER = "uvicorn.error.websocket"


class GatewayWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's ``websockets-sansio`` protocol logging to ``uvicorn.error.websocket``.

    For every websocket, uvicorn logs '"WebSocket /socket.io/" [accepted]' and websockets logs
    "connection open" and "connection closed", all at INFO on ``uvicorn.error``. The gateway
    never prints them (``__main__._ConnectionLogFilter``), but a logger's filter runs on a
    record already built (caller lookup, timestamp, thread): ~15 µs per socket for three
    records nobody reads. Logged through a WARNING-level child of ``uvicorn.error``, those
    INFO calls return at once; warnings and errors (a failed ASGI app, a bad frame) still
    reach the root handlers, as before.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        logger = logging.getLogger(WEBSOCKET_LOGGER)
        self.logger = logger
        self.conn.logger = logger


def quiet_websocket_logger(*filters: logging.Filter) -> None:
    """Sets ``uvicorn.error.websocket`` to WARNING, with ``filters`` on its records."""
    logger = logging.getLogger(WEBSOCKET_LOGGER)
    logger.setLevel(logging.WARNING)
    for record_filter in filters:
        logger.addFilter(record_filter)
