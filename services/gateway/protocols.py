"""uvicorn's HTTP and websocket protocols as the gateway runs them (``uvicorn.Config(http=, ws=)``).

- ``GatewayHttpProtocol``: httptools' protocol, handing a websocket upgrade over as parsed and
  leaving no garbage cycle behind it.
- ``GatewayWebSocketProtocol``: the sans-I/O websocket protocol, with no log records made per
  socket and the 101 response sent together with the Engine.IO OPEN packet.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, cast

from uvicorn.logging import TRACE_LOG_LEVEL
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.datastructures import Headers
from websockets.http11 import MAX_LINE_LENGTH, MAX_NUM_HEADERS, Request
from websockets.http11 import _token_re as _HEADER_NAME  # websockets' own checks, reused
from websockets.http11 import _value_re as _HEADER_VALUE
from websockets.server import ServerProtocol

# Where the gateway's websocket protocol logs; ``quiet_websocket_logger`` sets it to WARNING.
WEBSOCKET_LOGGER = "uvicorn.error.websocket"
_websocket_log = logging.getLogger(WEBSOCKET_LOGGER)


class GatewayHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, handing a websocket upgrade over as already parsed.

    - uvicorn writes the upgrade request httptools has parsed back out as bytes, and the
      websocket protocol parses them again with websockets' parser, in Python, a line at a
      time (~17 µs per handshake). Here the request websockets' parser would make is built
      from httptools' parts (``handshake_request``, ~6.5 µs), under the same limits and
      checks; anything those would refuse takes uvicorn's path, so websockets answers it
      exactly as before (``tests/gateway/test_internals.py`` compares the two).
    - The protocol and its ``httptools`` parser hold each other (the parser keeps six bound
      callbacks of the protocol). uvicorn breaks that cycle in ``connection_lost``, which
      never comes once the transport has switched to the websocket protocol: every websocket
      left ~20 objects (the protocol, its parser, flow control, an ``Event``, deques, the
      request's header tuples) for the cyclic GC to find, ~5 % of a replica's CPU in a
      connection storm. Dropping the parser right after the switch, as ``connection_lost``
      would, lets reference counting free them at once.
    """

    def handle_websocket_upgrade(self) -> None:
        request = None
        if issubclass(self.ws_protocol_class, GatewayWebSocketProtocol):  # type: ignore[arg-type]
            request = handshake_request(self.scope["method"], self.url, self.scope["headers"])
        if request is None:
            super().handle_websocket_upgrade()
        else:
            self._hand_over(request)
        self.parser = None  # type: ignore[assignment]  # as uvicorn's connection_lost does

    def _hand_over(self, request: Request) -> None:
        """uvicorn 0.54's ``handle_websocket_upgrade`` with ``request`` given, not re-read."""
        if self.logger.level <= TRACE_LOG_LEVEL:
            prefix = f"{self.client[0]}:{self.client[1]} - " if self.client else ""
            self.logger.log(TRACE_LOG_LEVEL, "%sUpgrading to WebSocket", prefix)
        self.connections.discard(self)
        protocol = cast(
            GatewayWebSocketProtocol,
            self.ws_protocol_class(  # type: ignore[call-arg, misc]
                config=self.config,
                server_state=self.server_state,
                app_state=self.app_state,
            ),
        )
        protocol.connection_made(self.transport)
        protocol.handshake(request)
        self.transport.set_protocol(protocol)


def handshake_request(
    method: str, target: bytes, raw_headers: Iterable[tuple[bytes, bytes]]
) -> Request | None:
    """The request websockets' parser makes of uvicorn's re-written upgrade request.

    ``None`` whenever that parser could refuse it or read it differently (a method other
    than GET, a line or a header count over its limits, a name or value its checks refuse, a
    body): those requests take uvicorn's path, and websockets gives its own answer.
    """
    if method != "GET":
        return None
    if len(target) + 16 >= MAX_LINE_LENGTH or not target.isascii() or b" " in target:
        return None  # the request line, "GET <target> HTTP/1.1\r\n", as websockets reads it
    headers = Headers()
    for count, (raw_name, raw_value) in enumerate(raw_headers, 1):
        if count > MAX_NUM_HEADERS or len(raw_name) + len(raw_value) + 4 >= MAX_LINE_LENGTH:
            return None
        value = raw_value.strip(b" \t")
        if _HEADER_NAME.fullmatch(raw_name) is None or _HEADER_VALUE.fullmatch(value) is None:
            return None
        headers.set_insecure(raw_name.decode("ascii"), value.decode("iso-8859-1"))
    if "Transfer-Encoding" in headers or not set(headers.get_all("Content-Length")) <= {"0"}:
        return None
    return Request(target.decode("ascii"), headers, "GET", "HTTP/1.1")


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

    def handshake(self, request: Request) -> None:
        """Takes ``request`` as if websockets' parser had just read it from the connection.

        websockets' server parser reads the request, then goes on to read frames
        (``ServerProtocol.parse``); the connection starts at the frame part, and the request
        is handled as uvicorn handles the parser's event.
        """
        conn = self.conn
        conn.parser = super(ServerProtocol, conn).parse()
        next(conn.parser)
        self.handle_connect(request)

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
