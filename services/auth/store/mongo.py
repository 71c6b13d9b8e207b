"""``UserStore`` over MongoDB with the synchronous pymongo driver.

Every driver call runs in a thread (asyncio's pool, or the executor given) so the event loop
never waits on the network, and every call is bounded by the client's timeouts. Uniqueness
comes from unique indexes on the normalised names, single-use refresh tokens from a
conditional update of one document (atomic on the server), and expiry from TTL indexes, which
need BSON datetimes: refresh documents carry ``expires_at`` as a datetime for the TTL monitor
and ``expires_at_epoch`` as the exact float the API returns.

The indexes are ensured before the first operation (in ``open``, or on the first call after
an ``open`` that found the server down), so no user is ever written without them.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Callable
from concurrent.futures import Executor
from datetime import UTC, datetime
from typing import Any, Literal, ParamSpec, TypeVar
from urllib.parse import unquote, urlsplit

from pymongo import ASCENDING, MongoClient
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError, PyMongoError

from services.auth.store.base import (
    DuplicateUser,
    NewUser,
    RefreshRecord,
    StoreError,
    StoreUnavailable,
    UserRecord,
)

P = ParamSpec("P")
T = TypeVar("T")

Document = dict[str, Any]

DEFAULT_DATABASE = "sockgate"

# Index names are fixed so an index found in an error message maps back to its field.
_USER_FIELDS: dict[str, Literal["username", "email"]] = {
    "username_norm": "username",
    "email_norm": "email",
}


class MongoUserStore:
    """Users and refresh-token families in a MongoDB database."""

    def __init__(
        self,
        url: str,
        *,
        database: str | None = None,
        client: MongoClient[Document] | None = None,
        server_selection_timeout_ms: int = 2000,
        socket_timeout_ms: int = 10_000,
        executor: Executor | None = None,
    ) -> None:
        """``client`` (e.g. a ``mongomock.MongoClient``) is used as given and never closed.

        ``socket_timeout_ms`` bounds each network read of a client this store creates, so a
        server that stops answering mid-call gives ``StoreUnavailable``, not a hang.
        ``executor`` runs the blocking driver calls (default: asyncio's thread pool). Give
        mongomock a one-thread executor: unlike a server, it does not make a conditional
        update or a unique-index check atomic across threads.
        """
        self._url = url
        self._database_name = database or database_from_url(url) or DEFAULT_DATABASE
        self._given_client = client
        self._selection_timeout_ms = server_selection_timeout_ms
        self._socket_timeout_ms = socket_timeout_ms
        self._executor = executor
        self._client: MongoClient[Document] | None = None
        self._indexed = False

    async def open(self) -> None:
        """Creates the client (no I/O but an SRV lookup) and ensures the indexes."""
        if self._client is None:
            given = self._given_client
            self._client = given if given is not None else await self._call(self._new_client)
        await self._call(self._db)

    async def close(self) -> None:
        """Closes the client this store created; a given client is left to its owner."""
        client, self._client = self._client, None
        self._indexed = False
        if client is not None and client is not self._given_client:
            await asyncio.get_running_loop().run_in_executor(self._executor, client.close)

    async def ping(self) -> None:
        """Asks the server for ``ping``."""
        await self._call(lambda: self._database().command("ping"))

    async def create_user(self, user: NewUser) -> UserRecord:
        """Inserts the user with its id as ``_id``; the unique indexes refuse duplicates."""
        await self._call(self._insert_user, user)
        return user.stored()

    async def get_user(self, user_id: str) -> UserRecord | None:
        """The user with this id."""
        return await self._find_user({"_id": user_id})

    async def find_user_by_username(self, username_norm: str) -> UserRecord | None:
        """The user with this normalised username."""
        return await self._find_user({"username_norm": username_norm})

    async def find_user_by_email(self, email_norm: str) -> UserRecord | None:
        """The user with this normalised email."""
        return await self._find_user({"email_norm": email_norm})

    async def set_password_hash(self, user_id: str, password_hash: str) -> None:
        """Replaces the user's password hash."""
        await self._call(
            lambda: self._db().users.update_one(
                {"_id": user_id}, {"$set": {"password_hash": password_hash}}
            )
        )

    async def set_revoked_before(self, user_id: str, revoked_before: int) -> None:
        """Raises revoked_before; the filter matches only when the new value is higher."""
        # Not $max: its comparison with a null field differs between MongoDB and mongomock.
        await self._call(
            lambda: self._db().users.update_one(
                {
                    "_id": user_id,
                    "$or": [
                        {"revoked_before": None},
                        {"revoked_before": {"$lt": revoked_before}},
                    ],
                },
                {"$set": {"revoked_before": revoked_before}},
            )
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
        """Creates or extends the family, then stores the token.

        The family goes first: a token is never readable before its family exists.
        """
        expires = _datetime(expires_at)

        def add() -> None:
            db = self._db()
            # A family lives as long as its longest-lived token.
            db.refresh_families.update_one(
                {"_id": family_id},
                {
                    "$setOnInsert": {"user_id": user_id, "revoked_at": None},
                    "$max": {"expires_at": expires, "expires_at_epoch": expires_at},
                },
                upsert=True,
            )
            db.refresh_tokens.insert_one(
                {
                    "_id": token_hash,
                    "family_id": family_id,
                    "user_id": user_id,
                    "issued_at": issued_at,
                    "expires_at": expires,
                    "expires_at_epoch": expires_at,
                    "used_at": None,
                }
            )

        await self._call(add)

    async def get_refresh_token(self, token_hash: str) -> RefreshRecord | None:
        """The token with this hash, with whether its family is revoked."""

        def get() -> RefreshRecord | None:
            db = self._db()
            token = db.refresh_tokens.find_one({"_id": token_hash})
            if token is None:
                return None
            family = db.refresh_families.find_one({"_id": token["family_id"]}, {"revoked_at": 1})
            return RefreshRecord(
                token_hash=token["_id"],
                family_id=token["family_id"],
                user_id=token["user_id"],
                issued_at=token["issued_at"],
                expires_at=token["expires_at_epoch"],
                used_at=token["used_at"],
                # A family the TTL monitor already removed counts as revoked: refuse, not guess.
                family_revoked=family is None or family["revoked_at"] is not None,
            )

        return await self._call(get)

    async def consume_refresh_token(self, token_hash: str, now: float) -> bool:
        """Marks the token used; the server matches ``used_at: None`` for one writer only."""
        result = await self._call(
            lambda: self._db().refresh_tokens.update_one(
                {"_id": token_hash, "used_at": None}, {"$set": {"used_at": now}}
            )
        )
        return result.modified_count == 1

    async def successor_issued_at(self, family_id: str, after: float) -> float | None:
        """When the family's first token issued after ``after`` was issued."""
        token = await self._call(
            lambda: self._db().refresh_tokens.find_one(
                {"family_id": family_id, "issued_at": {"$gt": after}},
                sort=[("issued_at", ASCENDING)],
                projection={"issued_at": True},
            )
        )
        return None if token is None else float(token["issued_at"])

    async def revoke_family(self, family_id: str, now: float) -> None:
        """Revokes the family; its tokens, later ones included, read as revoked through it."""
        await self._call(
            lambda: self._db().refresh_families.update_one(
                {"_id": family_id, "revoked_at": None}, {"$set": {"revoked_at": now}}
            )
        )

    async def revoke_user_families(self, user_id: str, now: float) -> int:
        """Revokes the user's live families (not revoked, not expired) and counts them."""
        result = await self._call(
            lambda: self._db().refresh_families.update_many(
                {"user_id": user_id, "revoked_at": None, "expires_at_epoch": {"$gt": now}},
                {"$set": {"revoked_at": now}},
            )
        )
        return result.modified_count

    async def _find_user(self, query: Document) -> UserRecord | None:
        doc = await self._call(lambda: self._db().users.find_one(query))
        if doc is None:
            return None
        return UserRecord(
            id=doc["_id"],
            username=doc["username"],
            email=doc["email"],
            password_hash=doc["password_hash"],
            created_at=doc["created_at"],
            revoked_before=doc["revoked_before"],
        )

    def _insert_user(self, user: NewUser) -> None:
        users = self._db().users
        try:
            users.insert_one(
                {
                    "_id": user.id,
                    "username": user.username,
                    "username_norm": user.username_norm,
                    "email": user.email,
                    "email_norm": user.email_norm,
                    "password_hash": user.password_hash,
                    "created_at": user.created_at,
                    "revoked_before": None,
                }
            )
        except DuplicateKeyError as exc:
            field = _duplicate_field(exc) or _taken_field(users, user)
            if field is None:
                raise StoreError(f"a user with id {user.id!r} exists") from exc
            raise DuplicateUser(field) from exc

    async def _call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Runs a blocking driver call in a thread and turns driver errors into store errors."""
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._executor, functools.partial(fn, *args, **kwargs)
            )
        except DuplicateKeyError as exc:
            raise StoreError(f"MongoDB refused a duplicate key: {exc}") from exc
        except PyMongoError as exc:
            # Server selection timeouts, lost connections, failed commands.
            raise StoreUnavailable(f"MongoDB: {exc}") from exc

    def _database(self) -> Database[Document]:
        if self._client is None:
            raise StoreUnavailable("the MongoDB store is not open")
        return self._client[self._database_name]

    def _db(self) -> Database[Document]:
        """The database, its indexes ensured (they cost a round trip only the first time)."""
        db = self._database()
        if not self._indexed:
            _ensure_indexes(db)
            self._indexed = True
        return db

    def _new_client(self) -> MongoClient[Document]:
        return MongoClient(
            self._url,
            serverSelectionTimeoutMS=self._selection_timeout_ms,
            connectTimeoutMS=self._selection_timeout_ms,
            # Not timeoutMS: pymongo then ignores serverSelectionTimeoutMS and waits for it.
            socketTimeoutMS=self._socket_timeout_ms,
            appname="sockgate-auth",
        )


def database_from_url(url: str) -> str | None:
    """The database named in the path of a ``mongodb://`` URL, if any."""
    name = unquote(urlsplit(url).path.lstrip("/"))
    return name or None


def _ensure_indexes(db: Database[Document]) -> None:
    """Creates the indexes; a no-op for those that exist."""
    db.users.create_index([("username_norm", ASCENDING)], unique=True, name="username_norm")
    db.users.create_index([("email_norm", ASCENDING)], unique=True, name="email_norm")
    db.refresh_families.create_index([("user_id", ASCENDING)], name="user_id")
    db.refresh_tokens.create_index(
        [("family_id", ASCENDING), ("issued_at", ASCENDING)], name="family_issued_at"
    )
    # expireAfterSeconds=0: the TTL monitor deletes a document once expires_at has passed.
    for collection in (db.refresh_families, db.refresh_tokens):
        collection.create_index(
            [("expires_at", ASCENDING)], expireAfterSeconds=0, name="expires_at_ttl"
        )


def _duplicate_field(error: DuplicateKeyError) -> Literal["username", "email"] | None:
    """The user field a server's duplicate-key error names: keyPattern, else the index name."""
    details = error.details or {}
    keys = list(details.get("keyPattern") or {})
    if not keys:
        # "E11000 duplicate key error collection: sockgate.users index: email_norm dup key: …"
        found = re.search(r"index: (\S+) dup key", str(details.get("errmsg", "")))
        keys = [found.group(1)] if found else []
    return next((_USER_FIELDS[key] for key in keys if key in _USER_FIELDS), None)


def _taken_field(users: Collection[Document], user: NewUser) -> Literal["username", "email"] | None:
    """Which field is taken, found by looking; for errors that do not say (mongomock's)."""
    for key, field in _USER_FIELDS.items():
        if users.find_one({key: getattr(user, key)}, {"_id": 1}) is not None:
            return field
    return None


def _datetime(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)
