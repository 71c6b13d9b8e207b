"""Connection storm, then a thundering herd, against the gateway replicas.

Stages, each bounded (environment variables, defaults in brackets):

1. ramp: ``STORM_USERS`` users [1000, at most 20000] spawned at ``STORM_RATE``/s [100], each
   opening one authenticated socket (``SIO connect``);
2. hold ``STORM_HOLD`` s [10]: every socket idle, as a crowd of connected apps;
3. herd: every user drops its socket at the same moment, as when a load balancer or a replica
   restarts, and reconnects: the first attempt after a random wait in ``[0, STORM_JITTER)`` s
   [2; 0 means all at once], then capped exponential backoff with full jitter after a refusal,
   never sooner than the server's ``retry_after_ms`` (``GatewayUser.reconnect``);
4. hold ``STORM_AFTER`` s [20]; then the shape ends the test.

Read in the report: ``SIO connect`` (handshake percentiles; failures by refusal code, e.g.
``unavailable:overloaded`` when a replica sheds the herd) and ``SIO reconnect`` (the time until
each user is back, waits included).
"""

from __future__ import annotations

from locust import constant, task
from locust.exception import StopUser

from loadtests.gateway_user import GatewayUser, start_herd
from loadtests.scenarios._common import BoundedShape, env_float, env_int

USERS = env_int("STORM_USERS", 1000, 1, 20_000)
RATE = env_float("STORM_RATE", 100, 1, 2000)
HOLD = env_float("STORM_HOLD", 10, 0, 600)
JITTER = env_float("STORM_JITTER", 2.0, 0, 60)
AFTER = env_float("STORM_AFTER", 20, 1, 600)


class StormUser(GatewayUser):
    """Holds one idle socket; comes back (with backoff) whenever it loses it."""

    wait_time = constant(2)

    def on_start(self) -> None:
        if self.connect() is not None and not self.reconnect(jitter=1.0):
            raise StopUser()

    @task
    def stay_connected(self) -> None:
        if self.sio is None and not self.reconnecting and not self.reconnect(jitter=1.0):
            raise StopUser()


class StormShape(BoundedShape):
    """Ramp, hold, herd, hold, stop (see the module doc)."""

    def __init__(self) -> None:
        super().__init__()
        self.herd_sent = False

    def stage(self, elapsed: float) -> tuple[int, float] | None:
        herd_at = USERS / RATE + HOLD
        if elapsed >= herd_at and not self.herd_sent:
            self.herd_sent = True
            start_herd(self.runner.environment, JITTER)
        if elapsed < herd_at + AFTER:
            return USERS, RATE
        return None
