"""uvicorn's HTTP and websocket protocols as the gateway runs them (``uvicorn.Config(http=, ws=)``).

- ``GatewayHttpProtocol``: httptools' protocol, leaving no garbage cycle behind an upgrade.
- ``GatewayWebSocketProtocol``: the sans-I/O websocket protocol, with no log records made per
  socket and the 101 response sent together with the Engine.IO OPEN packet.
"""

from __future__ import annotations

import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

# Where the gateway's websocket protocol logs; ``quiet_websocket_logger`` sets it to WARNING.
WEBSOCKET_LOGGER = "uvicorn.error.websocket"
_websocket_log = logging.getLogger(WEBSOCKET_LOGGER)


class GatewayHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, which drops its parser once a websocket takes over.

    The protocol and its ``httptools`` parser hold each other (the parser keeps six bound
    callbacks of the protocol). uvicorn breaks that cycle in ``connection_lost``, which never
    comes once the transport has switched to the websocket protocol: every websocket left
    ~20 objects (the protocol, its parser, flow control, an ``Event``, deques, the request's
    header tuples) for the cyclic GC to find, ~5 % of a replica's CPU in a connection storm.
    Dropping the parser right after the switch, as ``connection_lost`` would, lets reference
    counting free them at once.
    """

    def handle_websocket_upgrade(self) -> None:
        super().handle_websocket_upgrade()
        self.parser = None  # type: ignore[assignment]  # as uvicorn's connection_lost does


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
        self.logger = self.conn.logger = _websocket_log

    def accept_held(self) -> bool:
        """uvicorn's ``websocket.accept`` (no extra headers, no subprotocol), not yet written.

        The 101 response is left in the connection's outgoing data, where the Engine.IO OPEN
        packet the gateway sends next joins it: the caller flushes both in one write (one
        system call, one segment for the client to wake up for) where uvicorn's accept writes
        the 101 at once and the OPEN packet goes out in a second write. The steps are
        uvicorn 0.54's for the same message. Returns ``False``, having done nothing, whenever
        uvicorn's own ``send`` must take it (closing, disconnected, paused, already answered).
        """
        if (
            self.disconnected
            or self.handshake_complete
            or self.initial_response is not None
            or not self.writable.is_set()
            or self.transport.is_closing()
        ):
            return False
        headers = [
            (name.decode("latin-1").lower(), value.decode("latin-1"))
            for name, value in self.default_headers
        ]
        del self.response.headers["Date"]
        self.response.headers.update(headers)
        self.handshake_complete = True
        self.conn.send_response(self.response)
        self.start_keepalive()
        return True


def quiet_websocket_logger(*filters: logging.Filter) -> None:
    """Sets ``uvicorn.error.websocket`` to WARNING, with ``filters`` on its records."""
    _websocket_log.setLevel(logging.WARNING)
    for record_filter in filters:
        _websocket_log.addFilter(record_filter)
