"""What every scenario shares: bounded knobs from the environment and a bounded shape."""

from __future__ import annotations

import os
from typing import ClassVar

from locust import LoadTestShape
from locust.clients import HttpSession

PASSWORD = "load test password, not a secret"


def register(session: HttpSession, username: str) -> None:
    """Creates the account ``username`` (already there counts as success)."""
    body = {"username": username, "email": f"{username}@example.com", "password": PASSWORD}
    with session.post(
        "/v1/auth/register", json=body, name="/v1/auth/register", catch_response=True
    ) as response:
        if response.status_code in (201, 409):
            response.success()


def env_int(name: str, default: int, low: int, high: int) -> int:
    """``int(os.environ[name])`` clamped to ``[low, high]``, or ``default``."""
    raw = os.environ.get(name)
    value = int(raw) if raw else default
    return max(low, min(high, value))


def env_float(name: str, default: float, low: float, high: float) -> float:
    """``float(os.environ[name])`` clamped to ``[low, high]``, or ``default``."""
    raw = os.environ.get(name)
    value = float(raw) if raw else default
    return max(low, min(high, value))


class BoundedShape(LoadTestShape):
    """A shape that also ends the test at ``--run-time``.

    Locust ignores ``--run-time`` while a shape runs; reading it here keeps it a hard bound
    whatever the stages add up to.
    """

    abstract: ClassVar[bool] = True
    use_common_options: ClassVar[bool] = True

    def tick(self) -> tuple[int, float] | None:
        assert self.runner is not None
        options = self.runner.environment.parsed_options
        limit = getattr(options, "run_time", None) if options is not None else None
        if limit and self.get_run_time() >= limit:
            return None
        return self.stage(self.get_run_time())

    def stage(self, elapsed: float) -> tuple[int, float] | None:
        """(users, spawn rate) at ``elapsed`` seconds, or ``None`` when the test is over.

        Each scenario's shape defines its stages; this abstract base has none, so it ends at once.
        """
        return None
