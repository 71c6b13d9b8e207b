"""``UserStore`` over the stdlib ``sqlite3``: the embedded default store.

Each store owns one connection and one worker thread, and every sqlite call runs on that
thread: the event loop never blocks on disk or on a lock, the connection is never shared
between threads, and callers within one process queue up instead of fighting over the
database lock. Other processes that open the same file are kept in order by SQLite's own
locking: WAL lets readers run beside the single writer, and ``busy_timeout`` bounds how long
a writer waits for the lock before the call fails with ``StoreUnavailable``.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from services.auth.store.base import (
    DuplicateUser,
    NewUser,
    RefreshRecord,
    StoreError,
    StoreUnavailable,
    UserRecord,
)

T = TypeVar("T")

MEMORY = ":memory:"

# SQLite has no TTL index: expired refresh rows are deleted by add_refresh_token, at most
# this often per store, which is enough to keep the tables from growing without bound.
PURGE_INTERVAL_SECONDS = 60.0

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS users (
        id TEXT PRIMARY KEY,
        username TEXT NOT NULL,
        username_norm TEXT NOT NULL UNIQUE,
        email TEXT NOT NULL,
        email_norm TEXT NOT NULL UNIQUE,
        password_hash TEXT NOT NULL,
        created_at REAL NOT NULL,
        revoked_before INTEGER
    )""",
    """CREATE TABLE IF NOT EXISTS refresh_families (
        family_id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL,
        revoked_at REAL,
        expires_at REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS refresh_tokens (
        token_hash TEXT PRIMARY KEY,
        family_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        issued_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        used_at REAL
    )""",
    "CREATE INDEX IF NOT EXISTS refresh_tokens_family_id ON refresh_tokens (family_id)",
    "CREATE INDEX IF NOT EXISTS refresh_tokens_user_id ON refresh_tokens (user_id)",
    "CREATE INDEX IF NOT EXISTS refresh_tokens_expires_at ON refresh_tokens (expires_at)",
    "CREATE INDEX IF NOT EXISTS refresh_families_user_id ON refresh_families (user_id)",
    "CREATE INDEX IF NOT EXISTS refresh_families_expires_at ON refresh_families (expires_at)",
)

# Columns in UserRecord's field order, so a row unpacks straight into the record.
_SELECT_USER = (
    "SELECT id, username, email, password_hash, created_at, revoked_before FROM users WHERE "
)

# A token whose family row is gone (purged) counts as revoked: refuse rather than guess.
_SELECT_REFRESH = """
    SELECT t.token_hash, t.family_id, t.user_id, t.issued_at, t.expires_at, t.used_at,
           f.family_id IS NULL OR f.revoked_at IS NOT NULL
    FROM refresh_tokens AS t LEFT JOIN refresh_families AS f ON f.family_id = t.family_id
    WHERE t.token_hash = ?
"""


class SQLiteUserStore:
    """Users and refresh-token families in one SQLite file (or in memory)."""

    def __init__(self, path: str | Path, *, busy_timeout: float = 2.0) -> None:
        self._path = str(path)
        self._busy_timeout = busy_timeout
        self._worker: ThreadPoolExecutor | None = None
        # Touched only on the worker thread.
        self._conn: sqlite3.Connection | None = None
        self._next_purge = 0.0

    async def open(self) -> None:
        """Creates the file's folder, connects, turns on WAL and creates the schema."""
        if self._worker is not None:
            return
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        try:
            await self._on_worker(self._connect)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Closes the connection and stops the worker thread."""
        worker, self._worker = self._worker, None
        if worker is None:
            return
        # Queued calls run before this one (the worker is FIFO); later calls see the store
        # closed because _worker is already None.
        await asyncio.get_running_loop().run_in_executor(worker, self._disconnect)
        worker.shutdown(wait=False)

    async def ping(self) -> None:
        """Runs a trivial query."""
        await self._run(lambda conn: conn.execute("SELECT 1").fetchone())

    async def create_user(self, user: NewUser) -> UserRecord:
        """Inserts the user; the unique indexes on the normalised names refuse duplicates."""

        def insert(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(
                    "INSERT INTO users (id, username, username_norm, email, email_norm,"
                    " password_hash, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        user.id,
                        user.username,
                        user.username_norm,
                        user.email,
                        user.email_norm,
                        user.password_hash,
                        user.created_at,
                    ),
                )
            except sqlite3.IntegrityError as exc:
                # The message names the column: "UNIQUE constraint failed: users.email_norm".
                if "users.username_norm" in str(exc):
                    raise DuplicateUser("username") from exc
                if "users.email_norm" in str(exc):
                    raise DuplicateUser("email") from exc
                raise

        await self._run(insert)
        return user.stored()

    async def get_user(self, user_id: str) -> UserRecord | None:
        """The user with this id."""
        return await self._find_user("id = ?", user_id)

    async def find_user_by_username(self, username_norm: str) -> UserRecord | None:
        """The user with this normalised username."""
        return await self._find_user("username_norm = ?", username_norm)

    async def find_user_by_email(self, email_norm: str) -> UserRecord | None:
        """The user with this normalised email."""
        return await self._find_user("email_norm = ?", email_norm)

    async def set_password_hash(self, user_id: str, password_hash: str) -> None:
        """Replaces the user's password hash."""
        await self._execute(
            "UPDATE users SET password_hash = ? WHERE id = ?", (password_hash, user_id)
        )

    async def set_revoked_before(self, user_id: str, revoked_before: int) -> None:
        """Raises revoked_before; MAX in the statement keeps a concurrent higher value."""
        await self._execute(
            "UPDATE users SET revoked_before = MAX(COALESCE(revoked_before, ?1), ?1) WHERE id = ?2",
            (revoked_before, user_id),
        )

    async def add_refresh_token(
        self,
        *,
        token_hash: str,
        family_id: str,
        user_id: str,
        issued_at: float,
        expires_at: float,
    ) -> None:
        """Stores the token and creates or extends its family, in one transaction."""

        def add(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                if time.monotonic() >= self._next_purge:
                    # issued_at is the core's "now", the clock every other call uses.
                    conn.execute("DELETE FROM refresh_tokens WHERE expires_at < ?", (issued_at,))
                    conn.execute("DELETE FROM refresh_families WHERE expires_at < ?", (issued_at,))
                    self._next_purge = time.monotonic() + PURGE_INTERVAL_SECONDS
                # A family lives as long as its longest-lived token.
                conn.execute(
                    "INSERT INTO refresh_families (family_id, user_id, expires_at)"
                    " VALUES (?, ?, ?) ON CONFLICT (family_id) DO UPDATE"
                    " SET expires_at = MAX(expires_at, excluded.expires_at)",
                    (family_id, user_id, expires_at),
                )
                conn.execute(
                    "INSERT INTO refresh_tokens (token_hash, family_id, user_id, issued_at,"
                    " expires_at) VALUES (?, ?, ?, ?, ?)",
                    (token_hash, family_id, user_id, issued_at, expires_at),
                )

        await self._run(add)

    async def get_refresh_token(self, token_hash: str) -> RefreshRecord | None:
        """The token with this hash, with whether its family is revoked."""
        row = await self._run(lambda conn: conn.execute(_SELECT_REFRESH, (token_hash,)).fetchone())
        if row is None:
            return None
        _, family_id, user_id, issued_at, expires_at, used_at, revoked = row
        return RefreshRecord(
            token_hash=token_hash,
            family_id=family_id,
            user_id=user_id,
            issued_at=issued_at,
            expires_at=expires_at,
            used_at=used_at,
            family_revoked=bool(revoked),
        )

    async def consume_refresh_token(self, token_hash: str, now: float) -> bool:
        """Marks the token used; the ``used_at IS NULL`` guard lets only one writer match."""
        changed = await self._execute(
            "UPDATE refresh_tokens SET used_at = ? WHERE token_hash = ? AND used_at IS NULL",
            (now, token_hash),
        )
        return changed == 1

    async def successor_issued_at(self, family_id: str, after: float) -> float | None:
        """When the family's first token issued after ``after`` was issued."""
        row = await self._run(
            lambda conn: conn.execute(
                "SELECT MIN(issued_at) FROM refresh_tokens WHERE family_id = ? AND issued_at > ?",
                (family_id, after),
            ).fetchone()
        )
        return None if row is None or row[0] is None else float(row[0])

    async def revoke_family(self, family_id: str, now: float) -> None:
        """Revokes the family; its tokens, later ones included, read as revoked through it."""
        await self._execute(
            "UPDATE refresh_families SET revoked_at = ? WHERE family_id = ? AND revoked_at IS NULL",
            (now, family_id),
        )

    async def revoke_user_families(self, user_id: str, now: float) -> int:
        """Revokes the user's live families (not revoked, not expired) and counts them."""
        return await self._execute(
            "UPDATE refresh_families SET revoked_at = ?1"
            " WHERE user_id = ?2 AND revoked_at IS NULL AND expires_at > ?1",
            (now, user_id),
        )

    async def _find_user(self, where: str, value: str) -> UserRecord | None:
        row = await self._run(lambda conn: conn.execute(_SELECT_USER + where, (value,)).fetchone())
        return None if row is None else UserRecord(*row)

    async def _execute(self, sql: str, params: tuple[Any, ...]) -> int:
        """Runs one statement (atomic on its own) and returns how many rows it changed."""
        return await self._run(lambda conn: conn.execute(sql, params).rowcount)

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Runs ``work`` with the connection on the worker thread."""
        return await self._on_worker(functools.partial(self._with_connection, work))

    async def _on_worker(self, call: Callable[[], T]) -> T:
        """Runs ``call`` on the worker thread and turns sqlite errors into store errors."""
        if self._worker is None:
            raise StoreUnavailable("the SQLite store is not open")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._worker, call)
        except sqlite3.IntegrityError as exc:
            raise StoreError(f"SQLite refused the write: {exc}") from exc
        except sqlite3.Error as exc:
            # "database is locked" after busy_timeout lands here, as do I/O and corruption.
            raise StoreUnavailable(f"SQLite: {exc}") from exc

    def _with_connection(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._conn is None:
            raise StoreUnavailable("the SQLite store is not open")
        return work(self._conn)

    def _connect(self) -> None:
        if self._path != MEMORY:
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: no implicit transactions; the few multi-statement writes
        # open their own. timeout is SQLite's busy_timeout.
        conn = sqlite3.connect(self._path, timeout=self._busy_timeout, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            with _transaction(conn):
                for statement in _SCHEMA:
                    conn.execute(statement)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """A write transaction that takes the write lock up front.

    A deferred transaction that reads and then writes can fail with SQLITE_BUSY on the
    upgrade, which busy_timeout does not wait out; BEGIN IMMEDIATE waits for the lock instead.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        # COMMIT itself can fail (a lock held past busy_timeout); never leave it open.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
