"""User storage for the auth service: the ``UserStore`` port, its records and errors, and
``open_store``, which picks the adapter for a ``DATABASE_URL``."""

from __future__ import annotations

from urllib.parse import urlsplit

from services.auth.store.base import (
    DuplicateUser,
    NewUser,
    RefreshRecord,
    StoreError,
    StoreUnavailable,
    UserRecord,
    UserStore,
)
from services.auth.store.mongo import MongoUserStore
from services.auth.store.sqlite import SQLiteUserStore

__all__ = [
    "DuplicateUser",
    "NewUser",
    "RefreshRecord",
    "StoreError",
    "StoreUnavailable",
    "UserRecord",
    "UserStore",
    "open_store",
]

_SQLITE_PREFIX = "sqlite:///"


def open_store(database_url: str) -> UserStore:
    """The store for ``database_url``, not yet opened: call ``await store.open()``.

    ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``, ``sqlite:///:memory:``
    (one process only), ``mongodb://…`` and ``mongodb+srv://…``.
    """
    # Errors name the scheme only: the rest of the URL may hold a password.
    scheme = urlsplit(database_url).scheme
    if scheme == "sqlite":
        path = database_url.removeprefix(_SQLITE_PREFIX)
        if path == database_url or not path:
            raise ValueError(
                "a sqlite DATABASE_URL has three slashes and a path: sqlite:///./var/auth.db,"
                " sqlite:////abs/path.db or sqlite:///:memory:"
            )
        return SQLiteUserStore(path)
    if scheme in ("mongodb", "mongodb+srv"):
        return MongoUserStore(database_url)
    raise ValueError(
        f"DATABASE_URL scheme {scheme!r} is not supported; use sqlite:///path/to/file.db,"
        " sqlite:///:memory:, mongodb:// or mongodb+srv://"
    )
