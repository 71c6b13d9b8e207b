"""Password hashing with argon2id: bounded concurrency, off the event loop.

Hashing is deliberately expensive, so it is the service's capacity limit: a semaphore bounds
the hashes in flight (200 parallel logins queue instead of exhausting memory and threads), and
a request that waits longer than the queue timeout is answered ``Busy`` (503) instead of
hanging. argon2-cffi releases the GIL while hashing, so the worker threads use every core.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from services.auth.errors import Busy

T = TypeVar("T")


class Passwords:
    """Hashes and verifies passwords; ``verify_or_dummy`` keeps unknown users as slow as known."""

    def __init__(
        self,
        *,
        time_cost: int,
        memory_kib: int,
        parallelism: int,
        concurrency: int,
        queue_timeout: float,
    ) -> None:
        self._hasher = PasswordHasher(
            time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism
        )
        self._slots = asyncio.Semaphore(concurrency)
        self._queue_timeout = queue_timeout
        self._executor = ThreadPoolExecutor(concurrency, thread_name_prefix="argon2")
        # A real hash of a random password, verified against when the user does not exist.
        self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(16))

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _run(self, fn: Callable[..., T], *args: str) -> T:
        try:
            async with asyncio.timeout(self._queue_timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise Busy("password hashing is saturated") from None
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, fn, *args)
        finally:
            self._slots.release()

    async def hash(self, password: str) -> str:
        """An argon2id hash of ``password`` with the current parameters."""
        return await self._run(self._hasher.hash, password)

    async def verify(self, password_hash: str, password: str) -> bool:
        """Whether ``password`` matches ``password_hash``; a malformed hash never matches."""
        return await self._run(self._verify_sync, password_hash, password)

    async def verify_or_dummy(self, password_hash: str | None, password: str) -> bool:
        """``verify`` against the stored hash, or against a dummy one so both paths cost alike."""
        if password_hash is None:
            await self._run(self._verify_sync, self._dummy_hash, password)
            return False
        return await self.verify(password_hash, password)

    def needs_rehash(self, password_hash: str) -> bool:
        """Whether the hash was made with other parameters than the current ones."""
        try:
            return self._hasher.check_needs_rehash(password_hash)
        except InvalidHashError:
            return True

    def _verify_sync(self, password_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
