"""Draining a replica on SIGTERM without a reconnect stampede.

1. ``/readyz`` starts failing, so the load balancer stops sending new clients; for ``delay``
   seconds new handshakes are still served (the balancer needs that long to notice).
2. New handshakes are refused (``unavailable``/``draining``) and the open sockets are closed
   in batches spread over ``spread`` seconds, by ending their transport without an Engine.IO
   CLOSE packet: clients (the JavaScript and the Python ones alike) see a lost connection and
   reconnect on their own, through the balancer, to another replica.
3. Engine.IO sessions that never connected are closed too; then the server may exit.

The hard bound on the whole shutdown is the caller's (``__main__`` enforces the grace period).
"""

from __future__ import annotations

import asyncio
import logging
import math

from services.gateway.connections import Connections
from services.gateway.metrics import GatewayMetrics
from services.gateway.server import GatewayServer

log = logging.getLogger(__name__)

_BATCH_INTERVAL = 0.1
_SETTLE_TIMEOUT = 1.0


class Drainer:
    """Runs the drain once and exposes where it is (``draining``, ``accepting``)."""

    def __init__(
        self,
        *,
        server: GatewayServer,
        connections: Connections,
        metrics: GatewayMetrics,
        delay: float,
        spread: float,
    ) -> None:
        self._server = server
        self._connections = connections
        self._metrics = metrics
        self._delay = delay
        self._spread = spread
        self.draining = False
        """Set at once on drain: readiness fails."""
        self.closing = False
        """Set after the delay: handshakes are refused and sockets closed."""

    def accepting(self) -> bool:
        """Whether new handshakes are accepted."""
        return not self.closing

    async def drain(self) -> None:
        """Fails readiness, then closes every socket in spread-out batches."""
        if self.draining:
            return
        self.draining = True
        self._metrics.draining.set(1)
        log.info("draining", extra={"sockets": len(self._connections)})
        await asyncio.sleep(self._delay)
        self.closing = True
        conns = list(self._connections)
        batches = max(1, math.ceil(self._spread / _BATCH_INTERVAL))
        size = max(1, math.ceil(len(conns) / batches))
        for start in range(0, len(conns), size):
            for conn in conns[start : start + size]:
                conn.closing = True
                self._metrics.server_disconnects.labels("drain").inc()
                self._server.close_session(conn.eio_sid, reconnect=True)
            await asyncio.sleep(_BATCH_INTERVAL)
        for eio_sid in list(self._server.eio.sockets):
            self._server.close_session(eio_sid, reconnect=True)
        await self._settle()
        log.info("drained", extra={"closed": len(conns), "left": len(self._connections)})

    async def _settle(self) -> None:
        """Gives the closes a moment to reach the clients before the server stops."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _SETTLE_TIMEOUT
        # Polling: disconnects arrive one by one from many transports; nothing to await.
        while len(self._connections) and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
