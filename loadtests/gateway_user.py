"""The Locust side of sockgate: a Socket.IO user that reports what matters as Locust requests.

Locust ships an experimental ``SocketIOUser`` (``locust.contrib.socketio``) over
python-socketio's client. It times ``connect`` but cannot tell a refusal's code, reports
events with no latency and keeps one client for the user's life. ``GatewayUser`` keeps the
same client library (the sync ``socketio.Client`` over ``websocket-client``, gevent-patched by
Locust) and adds what sockgate's contract needs:

========================  =============  ==================================================
request (type / name)     response time  failure
========================  =============  ==================================================
``SIO connect``           handshake      ``unauthorized:<code>`` / ``unavailable:<code>``
``SIO join``              ack            the ack's ``error.code``
``SIO message``           ack            the ack's ``error.code``
``SIO reauth``            ack            the ack's ``error.code``
``SIO delivery``          now − ``ts``   — (every ``message`` received, from its own ``ts``)
``SIO reconnect``         until back     gave up after the attempts allowed
========================  =============  ==================================================

Configuration is read from the environment, so the same locustfiles run against ``make run``,
the cluster ``make loadtest`` starts, or a compose deployment published on loopback:

- ``SOCKGATE_TOKENS``: the JSON written by ``loadtests.mint_tokens`` (default
  ``var/loadtest/tokens.json``); user *k* of worker *w* takes token ``w + k × workers``;
- ``SOCKGATE_GATEWAYS``: comma-separated replica URLs to spread users over (default: the
  ``--host`` given to Locust). Every target must be a loopback URL: load is never sent anywhere
  else;
- ``SOCKGATE_CA_FILE``: a CA bundle to trust for ``https://`` targets, e.g. the self-signed
  ``deploy/certs/tls.crt`` of the compose load balancer.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import time
import weakref
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

import gevent
import requests
import socketio
from locust import User, events
from locust.env import Environment
from locust.exception import StopUser
from locust.runners import MasterRunner

from loadtests.mint_tokens import is_loopback_url

REQUEST_TYPE = "SIO"
DEFAULT_TOKENS = "var/loadtest/tokens.json"
HANDSHAKE_TIMEOUT = 10.0
ACK_TIMEOUT = 10.0


class Refused(Exception):
    """The gateway refused the handshake; ``str`` is ``message:code`` as the client saw it."""

    def __init__(self, message: str, code: str, retry_after_ms: int | None = None) -> None:
        super().__init__(f"{message}:{code}")
        self.message = message
        self.code = code
        self.retry_after_ms = retry_after_ms


class AckError(Exception):
    """An event was answered ``{ok: false, error: {code}}``, or not answered in time."""


def check_loopback(url: str) -> str:
    """``url`` when it is a loopback URL; otherwise the run stops here."""
    if not is_loopback_url(url):
        raise SystemExit(f"refusing to send load to {url!r}: only loopback targets are allowed")
    return url.rstrip("/")


@cache
def load_tokens(path: str) -> tuple[str, ...]:
    """The minted tokens (read once per process)."""
    document = json.loads(Path(path).read_text())
    return tuple(entry["token"] for entry in document["tokens"])


def worker_slot(environment: Environment) -> tuple[int, int]:
    """(this process's index, number of worker processes), so users take disjoint tokens."""
    runner = environment.runner
    index = getattr(runner, "worker_index", 0) or 0
    options = environment.parsed_options
    workers = max(1, int(getattr(options, "processes", 0) or 0)) if options else 1
    return index, workers


LIVE_USERS: weakref.WeakSet[GatewayUser] = weakref.WeakSet()
"""The gateway users alive in this process: what a ``herd`` message reaches."""


class GatewayUser(User):
    """One simulated client: one socket at a time, measured as described in the module doc."""

    abstract = True
    _counter: ClassVar[itertools.count[int]] = itertools.count()

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.sio: socketio.Client | None = None
        self.rooms: set[str] = set()
        self.reconnecting = False
        self.number = next(GatewayUser._counter)
        index, workers = worker_slot(environment)
        tokens = load_tokens(os.environ.get("SOCKGATE_TOKENS", DEFAULT_TOKENS))
        self.token = tokens[(index + self.number * workers) % len(tokens)]
        urls = os.environ.get("SOCKGATE_GATEWAYS") or self.host or ""
        self.urls = [check_loopback(u.strip()) for u in urls.split(",") if u.strip()]
        if not self.urls:
            raise SystemExit("no gateway URL: pass --host or set SOCKGATE_GATEWAYS")
        self.url = self.urls[(index + self.number * workers) % len(self.urls)]

    # --- reporting ------------------------------------------------------------------------

    def report(
        self,
        name: str,
        started: float,
        exception: BaseException | None = None,
        length: int = 0,
    ) -> None:
        """Fires a Locust request ``SIO name`` that took since ``started`` (perf_counter)."""
        self.environment.events.request.fire(
            request_type=REQUEST_TYPE,
            name=name,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=length,
            exception=exception,
            context={},
        )

    # --- the socket -----------------------------------------------------------------------

    def connect(self, name: str = "connect") -> Refused | None:
        """Opens a socket with this user's token; ``None`` when accepted, else the refusal."""
        self.close()
        client = socketio.Client(reconnection=False, handle_sigint=False, **client_tls_options())
        refusal: dict[str, Any] = {}
        client.on("connect_error", lambda data=None: refusal.setdefault("data", data))
        client.on("message", self._on_message)
        client.on("disconnect", lambda reason=None: self.on_disconnect(client, reason))
        self.register_handlers(client)
        started = time.perf_counter()
        try:
            client.connect(
                self.url,
                auth={"token": self.token},
                transports=["websocket"],
                wait_timeout=HANDSHAKE_TIMEOUT,
            )
        except socketio.exceptions.ConnectionError as exc:
            error = _refusal(refusal.get("data"), exc)
            self.report(name, started, error)
            return error
        self.report(name, started)
        self.sio = client
        self.rooms = set()
        LIVE_USERS.add(self)
        return None

    def register_handlers(self, client: socketio.Client) -> None:
        """Hook for scenarios: more event handlers on a new client."""

    def on_disconnect(self, client: socketio.Client, reason: object) -> None:
        """The server or the network ended the socket (also called after ``close``)."""
        if client is self.sio:
            self.sio = None

    def close(self) -> None:
        """Closes the socket, if any."""
        client, self.sio = self.sio, None
        if client is not None:
            client.disconnect()

    def call(self, event: str, payload: dict[str, Any], name: str | None = None) -> dict[str, Any]:
        """Emits ``event`` and waits for its ack; reported as ``SIO <name or event>``."""
        started = time.perf_counter()
        if self.sio is None:
            error = AckError("not_connected")
            self.report(name or event, started, error)
            raise error
        try:
            ack = self.sio.call(event, payload, timeout=ACK_TIMEOUT)
        except socketio.exceptions.TimeoutError:
            error = AckError("ack_timeout")
            self.report(name or event, started, error)
            raise error from None
        except socketio.exceptions.BadNamespaceError:
            error = AckError("not_connected")
            self.report(name or event, started, error)
            raise error from None
        if not isinstance(ack, dict) or not ack.get("ok"):
            code = ack.get("error", {}).get("code", "unknown") if isinstance(ack, dict) else "bad"
            error = AckError(code)
            self.report(name or event, started, error)
            raise error
        self.report(name or event, started)
        return ack

    def join(self, room: str) -> bool:
        try:
            self.call("join", {"room": room})
        except AckError:
            return False
        self.rooms.add(room)
        return True

    def _on_message(self, data: Any = None) -> None:
        # Delivery latency from the message's own ts (the gateway's clock, ms since epoch).
        if not isinstance(data, dict) or not isinstance(data.get("ts"), int | float):
            return
        self.environment.events.request.fire(
            request_type=REQUEST_TYPE,
            name="delivery",
            response_time=max(0.0, time.time() * 1000 - data["ts"]),
            response_length=len(str(data.get("text", ""))),
            exception=None,
            context={},
        )

    # --- reconnecting -----------------------------------------------------------------------

    def reconnect(
        self,
        *,
        jitter: float = 1.0,
        base: float = 0.5,
        cap: float = 10.0,
        attempts: int = 8,
        sleep: Callable[[float], None] = gevent.sleep,
    ) -> bool:
        """Reconnects with full jitter and capped exponential backoff; honours retry_after_ms.

        The first attempt waits a random time in ``[0, jitter)``, spreading a herd of clients
        over that window; after a refusal the wait is random in ``[0, min(cap, base × 2ⁿ))``,
        or at least the server's ``retry_after_ms``. ``SIO reconnect`` is the time until the
        socket is back, waits included.
        """
        if self.reconnecting:
            return False
        self.reconnecting = True
        try:
            started = time.perf_counter()
            delay = random.uniform(0, jitter)
            for attempt in range(attempts):
                sleep(delay)
                refusal = self.connect()
                if refusal is None:
                    self.report("reconnect", started)
                    self.on_reconnected()
                    return True
                if refusal.message == "unauthorized":
                    break  # a new attempt with the same token is refused the same way
                delay = random.uniform(0, min(cap, base * 2 ** (attempt + 1)))
                if refusal.retry_after_ms:
                    delay = max(delay, refusal.retry_after_ms / 1000 * random.uniform(1.0, 1.5))
            self.report("reconnect", started, AckError("gave up"))
            return False
        finally:
            self.reconnecting = False

    def on_reconnected(self) -> None:
        """Hook for scenarios: rejoin rooms and so on."""

    def herd(self, jitter: float) -> None:
        """Thundering herd: drop the socket now and come back (see ``reconnect``)."""
        self.close()
        self.reconnect(jitter=jitter)

    def on_stop(self) -> None:
        self.close()
        LIVE_USERS.discard(self)


def ca_file() -> str | None:
    """The CA bundle to verify ``https://`` targets with, when one is configured."""
    return os.environ.get("SOCKGATE_CA_FILE") or None


def client_tls_options() -> dict[str, Any]:
    """``socketio.Client`` options trusting ``SOCKGATE_CA_FILE`` (Engine.IO passes the session's
    ``verify`` on to its websocket transport)."""
    bundle = ca_file()
    if bundle is None:
        return {}
    session = requests.Session()
    session.verify = bundle
    return {"http_session": session}


def _refusal(data: Any, exc: Exception) -> Refused:
    """The refusal as the official clients see it: ``err.message`` and ``err.data.code``."""
    if isinstance(data, dict) and "message" in data:
        detail = data.get("data") if isinstance(data.get("data"), dict) else {}
        retry = detail.get("retry_after_ms")
        return Refused(
            str(data["message"]),
            str(detail.get("code", "none")),
            int(retry) if isinstance(retry, int | float) else None,
        )
    return Refused("error", str(data or exc)[:80])


# --- the thundering herd, sent by a LoadTestShape -----------------------------------------------

HERD_MESSAGE = "sockgate_herd"


def start_herd(environment: Environment, jitter: float) -> None:
    """Tells every gateway user in every worker to disconnect and reconnect now."""
    assert environment.runner is not None
    environment.runner.send_message(HERD_MESSAGE, {"jitter": jitter})


def _on_herd(environment: Environment, msg: Any, **kwargs: Any) -> None:
    jitter = float(msg.data.get("jitter", 1.0))
    for user in list(LIVE_USERS):
        gevent.spawn(user.herd, jitter)


@events.init.add_listener
def _register_herd(environment: Environment, **kwargs: Any) -> None:
    if environment.runner is not None and not isinstance(environment.runner, MasterRunner):
        environment.runner.register_message(HERD_MESSAGE, _on_herd)


def stop_if_disconnected(user: GatewayUser) -> None:
    """Helper for tasks: a user whose socket is gone and cannot come back stops."""
    if user.sio is None and not user.reconnect(jitter=1.0):
        raise StopUser()
