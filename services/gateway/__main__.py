"""``python -m services.gateway``: one gateway replica under uvicorn, settings from the env.

uvicorn runs with per-message deflate off (a zlib context per connection costs memory and CPU
on every frame; see docs on performance), the sans-I/O websockets protocol by default, uvloop
and httptools. The first SIGTERM drains (``Gateway.drain``) before uvicorn stops; a second
SIGTERM or SIGINT stops at once. Whatever happens, the process exits within
``GATEWAY_DRAIN_GRACE`` seconds of the first signal.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import threading
from types import FrameType

import uvicorn

from services.gateway.app import Gateway, create_app
from services.gateway.protocols import (
    GatewayHttpProtocol,
    GatewayWebSocketProtocol,
    quiet_websocket_logger,
)
from services.gateway.settings import GatewaySettings
from shared.logging import configure_logging

log = logging.getLogger("services.gateway")

# ``tune_gc``'s thresholds: a young generation of 20,000 allocations instead of CPython's 700,
# a middle collection every 250 young ones (5 million allocations) and a full one every 1,000
# middle ones (CPython: 10, 10). A young generation of 100,000 made the same total work come in
# 30 ms pauses, which every handshake in flight waits out; at 20,000 they take 5-9 ms. Middle
# collections walk every socket opened since the last one (270 ms with thousands of sockets),
# so they stay as rare as before (docs/benchmarks.md, round 4).
_GC_THRESHOLDS = (20_000, 250, 1000)

# Left for uvicorn after the drain: closing what remains and the lifespan shutdown.
_SHUTDOWN_SECONDS = 2


class DrainingServer(uvicorn.Server):
    """uvicorn's server with SIGTERM turned into a drain bounded by the grace period."""

    def __init__(self, config: uvicorn.Config, gateway: Gateway, grace: float) -> None:
        super().__init__(config)
        self._gateway = gateway
        self._grace = grace
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task[None] | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        """Serves until stopped, remembering the loop for the signal handler."""
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """The first SIGTERM starts the drain; anything else is uvicorn's usual exit."""
        if sig != signal.SIGTERM or self._drain_task is not None or self._loop is None:
            super().handle_exit(sig, frame)
            return
        # Signal handlers run between bytecodes of the loop's thread: hand over to the loop.
        self._loop.call_soon_threadsafe(self._start_drain)
        # The hard bound, independent of the loop: even a wedged loop cannot outlive it.
        watchdog = threading.Timer(self._grace, _exit_now)
        watchdog.daemon = True
        watchdog.start()

    def _start_drain(self) -> None:
        if self._drain_task is None:
            self._drain_task = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        budget = max(0.0, self._grace - _SHUTDOWN_SECONDS)
        try:
            async with asyncio.timeout(budget):
                await self._gateway.drain()
        except TimeoutError:
            log.warning("drain did not finish in time; stopping anyway")
        except Exception:
            log.exception("drain failed; stopping anyway")
        self.should_exit = True


class _ConnectionLogFilter(logging.Filter):
    """Drops uvicorn's per-connection lines and strips query strings from the rest.

    uvicorn logs every websocket request line (query string included) and every open/close at
    INFO: noise at tens of thousands of sockets, and a token a client wrongly put in the query
    string would land in the log.
    """

    _DROPPED = ("connection open", "connection closed")

    def filter(self, record: logging.LogRecord) -> bool:
        """Whether to keep ``record`` (query strings stripped from its arguments)."""
        if isinstance(record.msg, str) and (
            record.msg in self._DROPPED or '"WebSocket %s"' in record.msg
        ):
            return False
        if isinstance(record.args, tuple):
            record.args = tuple(
                arg.partition("?")[0] if isinstance(arg, str) else arg for arg in record.args
            )
        return True


def _exit_now() -> None:
    logging.getLogger("services.gateway").error("grace period over; exiting")
    logging.shutdown()
    os._exit(1)


def tune_gc() -> None:
    """Makes garbage collection cheap for a server holding many long-lived objects.

    Profiles of handshake storms showed the tail latency was CPython's cyclic GC: every 700
    allocations a young collection runs, and the full collections it triggers walk every live
    object (each socket holds dozens). Freezing what exists after start-up (modules, the app)
    keeps it out of every collection, and a young generation of 20,000 allocations makes
    collections rare and short; reference counting still frees almost everything at once. Measured
    with the quick benchmark, same session, 100 handshakes in flight: 742 -> 869 connects/s,
    p99 254 -> 162 ms, 1.27 -> 1.07 CPU-ms per connect (``docs/benchmarks.md``).
    ``GATEWAY_GC_TUNING=false`` keeps CPython's defaults.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*_GC_THRESHOLDS)


def main() -> None:
    """Reads ``GatewaySettings`` from the environment and serves until drained."""
    settings = GatewaySettings()
    configure_logging(settings)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).addFilter(_ConnectionLogFilter())
    quiet_websocket_logger(_ConnectionLogFilter())
    gateway = create_app(settings)
    config = uvicorn.Config(
        gateway,
        interface="asgi3",  # Gateway.__call__ returns its handler's coroutine (see its doc)
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=GatewayHttpProtocol,
        ws=GatewayWebSocketProtocol if settings.ws == "websockets-sansio" else settings.ws,
        ws_per_message_deflate=False,
        ws_max_size=settings.max_frame_bytes,
        # Engine.IO's heartbeat (GATEWAY_PING_INTERVAL / GATEWAY_PING_TIMEOUT) already finds
        # dead peers and keeps proxies from idling sockets out; uvicorn's own websocket pings
        # would be a second heartbeat: a timer and a frame per socket every 20 s.
        ws_ping_interval=None,
        ws_ping_timeout=None,
        # Nothing in the gateway reads the client's address; uvicorn's X-Forwarded-For
        # middleware would run on every request and stay suspended, a coroutine frame, for
        # every websocket's life.
        proxy_headers=False,
        lifespan="on",
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=_SHUTDOWN_SECONDS,
    )
    if settings.gc_tuning:
        tune_gc()
    DrainingServer(config, gateway, settings.drain_grace).run()


if __name__ == "__main__":
    main()
