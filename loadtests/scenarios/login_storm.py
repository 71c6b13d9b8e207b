"""Login storm against the auth service: throughput is bounded by password hashing, by design.

Every login verifies an argon2id hash (about 20 ms of one core with the OWASP parameters) and
the service runs at most ``AUTH_HASH_CONCURRENCY`` hashes at once, queueing the rest for up to
``AUTH_HASH_QUEUE_TIMEOUT`` s before answering 503. So as users double, logins/s stays flat at
the hashing limit while latency doubles, until the queue timeout turns the excess into 503s.
That plateau is the figure this scenario shows; it is a defence (an attacker's guesses are as
expensive), not a defect. Gateways never hash: their connects stay cheap meanwhile.

Users log in back to back (no wait) as their own account (registered once in ``on_start``).
The load steps through ``LOGIN_STEPS`` users [5,10,20,40,80; at most 1000 each], each held
``LOGIN_STEP_SECONDS`` s [15]; then the test stops. Target: ``--host`` or
``SOCKGATE_AUTH_URL`` (loopback only). From one address the per-address limit answers 429
first: raise ``AUTH_IP_RATE_PER_MINUTE``/``AUTH_IP_BURST`` for this test (``make loadtest``'s
cluster does).

Read in the report: ``/v1/auth/login`` requests/s against the user count (the charts of the HTML
report), its latency percentiles, and failures by status (429 per-address limit, 503 hashing
queue full).
"""

from __future__ import annotations

import os

from locust import HttpUser, constant, task
from locust.env import Environment

from loadtests.gateway_user import ca_file, check_loopback, worker_slot
from loadtests.scenarios._common import PASSWORD, BoundedShape, env_float, register

STEPS = [
    max(1, min(1000, int(n))) for n in os.environ.get("LOGIN_STEPS", "5,10,20,40,80").split(",")
]
STEP_SECONDS = env_float("LOGIN_STEP_SECONDS", 15, 2, 300)
_numbers = iter(range(1_000_000))


class LoginUser(HttpUser):
    """Logs in as fast as the service answers."""

    host = os.environ.get("SOCKGATE_AUTH_URL", "http://127.0.0.1:8000")
    wait_time = constant(0)

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        check_loopback(self.host or "")
        self.client.verify = ca_file() or True
        index, workers = worker_slot(environment)
        self.username = f"login{index + next(_numbers) * workers}"

    def on_start(self) -> None:
        register(self.client, self.username)

    @task
    def login(self) -> None:
        body = {"username": self.username, "password": PASSWORD}
        with self.client.post(
            "/v1/auth/login", json=body, name="/v1/auth/login", catch_response=True
        ) as response:
            if response.status_code == 200:
                response.success()
            elif response.status_code == 429:
                response.failure("429 per-address rate limit")
            elif response.status_code == 503:
                response.failure("503 hashing queue full")
            else:
                response.failure(f"{response.status_code} {response.text[:80]}")


class LoginStepShape(BoundedShape):
    """``LOGIN_STEPS`` users, ``LOGIN_STEP_SECONDS`` s each, then stop."""

    def stage(self, elapsed: float) -> tuple[int, float] | None:
        step = int(elapsed // STEP_SECONDS)
        if step < len(STEPS):
            return STEPS[step], 100
        return None
