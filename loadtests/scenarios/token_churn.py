"""Token churn: short-lived access tokens, refreshed through the auth service, ``reauth``-ed.

Every user is a real account: it registers (once; 409 when it exists) and logs in through the
auth service, connects with the access token, and before the token expires (at
``CHURN_REFRESH_AT`` of its lifetime [0.5], or as soon as the gateway sends
``token_expiring``) refreshes it (``POST /v1/auth/refresh``, which rotates the refresh token)
and hands the new one to its live socket with ``reauth``. A socket cut because its token ran
out is a failure (``SIO expired``); the user then reconnects with a fresh token.

For churn worth measuring, run the auth service with a short ``AUTH_ACCESS_TTL`` (at least
30 s; ``make loadtest SCENARIO=token_churn`` uses 60) and the gateway with a
``GATEWAY_TOKEN_EXPIRING_LEAD`` below it (20). The auth service's per-address limits apply to
register and login: raise ``AUTH_IP_RATE_PER_MINUTE``/``AUTH_IP_BURST`` for a load test from
one address.

Users: ``CHURN_USERS`` [100, at most 5000] arriving at ``CHURN_SPAWN_RATE``/s [10: each costs
two password hashes], held ``CHURN_HOLD`` s [90]. The auth service: ``SOCKGATE_AUTH_URL``
(loopback only).

Read in the report: ``/v1/auth/refresh`` and ``SIO reauth`` (latency, failures by code),
``SIO expired`` (should stay at zero), ``/v1/auth/login``.
"""

from __future__ import annotations

import os
import random
import time
from contextlib import suppress
from typing import Any

import socketio
from locust import constant, task
from locust.clients import HttpSession
from locust.env import Environment
from locust.exception import StopUser

from loadtests.gateway_user import AckError, GatewayUser, ca_file, check_loopback, worker_slot
from loadtests.scenarios._common import PASSWORD, BoundedShape, env_float, env_int, register

USERS = env_int("CHURN_USERS", 100, 1, 5000)
SPAWN_RATE = env_float("CHURN_SPAWN_RATE", 10, 0.5, 500)
HOLD = env_float("CHURN_HOLD", 90, 5, 900)
REFRESH_AT = env_float("CHURN_REFRESH_AT", 0.5, 0.1, 0.9)


class ChurnUser(GatewayUser):
    """A logged-in user whose socket outlives many short access tokens."""

    wait_time = constant(1)

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        auth_url = check_loopback(os.environ.get("SOCKGATE_AUTH_URL", "http://127.0.0.1:8000"))
        self.auth = HttpSession(auth_url, environment.events.request, self)
        self.auth.verify = ca_file() or True
        index, workers = worker_slot(environment)
        self.username = f"churn{index + self.number * workers}"
        self.refresh_token = ""
        self.refresh_due = 0.0
        self.expired = False

    def on_start(self) -> None:
        self.register()
        if not self.login():
            raise StopUser()
        if self.connect() is not None and not self.reconnect(jitter=1.0):
            raise StopUser()

    def register_handlers(self, client: socketio.Client) -> None:
        client.on("token_expiring", self._on_token_expiring)

    def on_disconnect(self, client: socketio.Client, reason: object) -> None:
        if client is self.sio and time.time() >= self.refresh_due:
            self.expired = True  # cut while the token was due for renewal
        super().on_disconnect(client, reason)

    def _on_token_expiring(self, data: Any = None) -> None:
        self.refresh_due = 0.0  # renew at the next task tick

    # --- the auth service -----------------------------------------------------------------

    def register(self) -> None:
        register(self.auth, self.username)

    def login(self) -> bool:
        return self._token_pair("/v1/auth/login", {"username": self.username, "password": PASSWORD})

    def refresh(self) -> bool:
        return self._token_pair("/v1/auth/refresh", {"refresh_token": self.refresh_token})

    def _token_pair(self, path: str, body: dict[str, Any]) -> bool:
        """POSTs ``body`` to ``path`` and keeps the token pair it answers; False on refusal."""
        with self.auth.post(path, json=body, name=path, catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code} {response.text[:80]}")
                return False
            self._take(response.json())
            return True

    def _take(self, pair: dict[str, Any]) -> None:
        self.token = pair["access_token"]
        self.refresh_token = pair["refresh_token"]
        lifetime = float(pair.get("expires_in", 60))
        self.refresh_due = time.time() + lifetime * REFRESH_AT * random.uniform(0.9, 1.0)

    # --- the loop -------------------------------------------------------------------------

    @task
    def keep_token_fresh(self) -> None:
        if self.expired:
            self.expired = False
            self.report("expired", time.perf_counter(), AckError("socket cut: token expired"))
        if time.time() >= self.refresh_due:
            if not (self.refresh() or self.login()):
                return
            if self.sio is not None:
                with suppress(AckError):  # reported as a failed SIO reauth
                    self.call("reauth", {"token": self.token})
        if self.sio is None and not self.reconnecting and not self.reconnect(jitter=1.0):
            raise StopUser()


class ChurnShape(BoundedShape):
    """Ramp to ``CHURN_USERS``, hold ``CHURN_HOLD`` s, stop."""

    def stage(self, elapsed: float) -> tuple[int, float] | None:
        if elapsed < USERS / SPAWN_RATE + HOLD:
            return USERS, SPAWN_RATE
        return None
