"""Waiting in async tests for something another process or task will make true."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def eventually(
    check: Callable[[], bool], timeout: float, what: str = "the condition", interval: float = 0.05
) -> None:
    """Polls ``check`` every ``interval`` seconds until it holds; fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(interval)
