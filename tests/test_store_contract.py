"""One contract for every ``UserStore`` adapter, then what only one adapter can show.

The contract runs against SQLite on a temporary file, against mongomock, and against a real
MongoDB when ``MONGODB_URL`` is set (each test then gets its own database, dropped after).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import mongomock
import pymongo
import pytest
from pymongo.errors import DuplicateKeyError

from services.auth.store import (
    DuplicateUser,
    NewUser,
    StoreUnavailable,
    UserRecord,
    UserStore,
    open_store,
)
from services.auth.store.mongo import MongoUserStore, _duplicate_field
from services.auth.store.sqlite import SQLiteUserStore

MONGODB_URL = os.environ.get("MONGODB_URL", "")
NOW = time.time()
LATER = NOW + 3600.0

Document = dict[str, Any]


def new_user(name: str = "Alice", email: str | None = None) -> NewUser:
    """A user as the core would hand it over: names already normalised."""
    email = email or f"{name}@Example.com"
    return NewUser(
        id=uuid.uuid4().hex,
        username=name,
        username_norm=name.lower(),
        email=email,
        email_norm=email.lower(),
        password_hash=f"$argon2id$hash-of-{name}",
        created_at=NOW,
    )


async def add_token(
    store: UserStore,
    token_hash: str,
    *,
    family_id: str = "family-1",
    user_id: str = "user-1",
    issued_at: float = NOW,
    expires_at: float = LATER,
) -> None:
    await store.add_refresh_token(
        token_hash=token_hash,
        family_id=family_id,
        user_id=user_id,
        issued_at=issued_at,
        expires_at=expires_at,
    )


@pytest.fixture
def one_thread() -> Iterator[ThreadPoolExecutor]:
    # mongomock makes neither a conditional update nor a unique check atomic across threads;
    # one thread gives it the atomicity a real server has.
    with ThreadPoolExecutor(max_workers=1) as executor:
        yield executor


@pytest.fixture
async def real_mongo() -> AsyncIterator[tuple[pymongo.MongoClient[Document], str]]:
    client: pymongo.MongoClient[Document] = pymongo.MongoClient(
        MONGODB_URL, serverSelectionTimeoutMS=5000
    )
    database = f"sockgate_test_{uuid.uuid4().hex[:12]}"
    try:
        yield client, database
    finally:
        await asyncio.to_thread(client.drop_database, database)
        client.close()


ADAPTERS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("mongomock", id="mongomock"),
    pytest.param(
        "mongodb",
        id="mongodb",
        marks=[
            pytest.mark.mongo,
            pytest.mark.skipif(not os.environ.get("MONGODB_URL"), reason="MONGODB_URL is not set"),
        ],
    ),
]


@pytest.fixture(params=ADAPTERS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[UserStore]:
    """An open store of each kind, empty."""
    adapter: UserStore
    if request.param == "sqlite":
        adapter = SQLiteUserStore(tmp_path / "auth.db")
    elif request.param == "mongomock":
        adapter = MongoUserStore(
            "mongodb://mongomock/",
            client=mongomock.MongoClient(),
            executor=request.getfixturevalue("one_thread"),
        )
    else:
        client, database = request.getfixturevalue("real_mongo")
        adapter = MongoUserStore(MONGODB_URL, database=database, client=client)
    await adapter.open()
    await adapter.open()  # idempotent
    try:
        yield adapter
    finally:
        await adapter.close()


# The contract.


async def test_ping(store: UserStore) -> None:
    await store.ping()


async def test_create_then_get_and_find(store: UserStore) -> None:
    user = new_user("Alice")

    created = await store.create_user(user)

    expected = UserRecord(
        id=user.id,
        username="Alice",
        email="Alice@Example.com",
        password_hash=user.password_hash,
        created_at=NOW,
        revoked_before=None,
    )
    assert created == expected
    assert await store.get_user(user.id) == expected
    assert await store.find_user_by_username("alice") == expected
    assert await store.find_user_by_email("alice@example.com") == expected


async def test_unknown_user_is_none(store: UserStore) -> None:
    await store.create_user(new_user("Alice"))

    assert await store.get_user("nobody") is None
    assert await store.find_user_by_username("bob") is None
    assert await store.find_user_by_email("bob@example.com") is None


async def test_duplicate_username_is_refused(store: UserStore) -> None:
    first = await store.create_user(new_user("Alice", "alice@example.com"))

    with pytest.raises(DuplicateUser) as refused:
        await store.create_user(new_user("ALICE", "other@example.com"))

    assert refused.value.field == "username"
    assert await store.find_user_by_username("alice") == first
    assert await store.find_user_by_email("other@example.com") is None


async def test_duplicate_email_is_refused(store: UserStore) -> None:
    first = await store.create_user(new_user("Alice", "alice@example.com"))

    with pytest.raises(DuplicateUser) as refused:
        await store.create_user(new_user("Bob", "ALICE@example.COM"))

    assert refused.value.field == "email"
    assert await store.find_user_by_email("alice@example.com") == first
    assert await store.find_user_by_username("bob") is None


async def test_concurrent_duplicates_exactly_one_wins(store: UserStore) -> None:
    users = [new_user("Alice", f"alice{n}@example.com") for n in range(20)]

    results = await asyncio.gather(*(store.create_user(u) for u in users), return_exceptions=True)

    created = [r for r in results if isinstance(r, UserRecord)]
    refused = [r for r in results if isinstance(r, DuplicateUser)]
    assert len(created) == 1
    assert len(refused) == 19
    assert {r.field for r in refused} == {"username"}
    assert await store.find_user_by_username("alice") == created[0]


async def test_set_password_hash(store: UserStore) -> None:
    user = await store.create_user(new_user("Alice"))

    await store.set_password_hash(user.id, "$argon2id$rehashed")

    found = await store.get_user(user.id)
    assert found is not None
    assert found.password_hash == "$argon2id$rehashed"


async def test_set_revoked_before_never_lowers(store: UserStore) -> None:
    user = await store.create_user(new_user("Alice"))

    async def revoked_before() -> int | None:
        found = await store.get_user(user.id)
        assert found is not None
        return found.revoked_before

    await store.set_revoked_before(user.id, 1000)
    assert await revoked_before() == 1000
    await store.set_revoked_before(user.id, 500)
    assert await revoked_before() == 1000
    await store.set_revoked_before(user.id, 2000)
    assert await revoked_before() == 2000


async def test_refresh_token_add_then_get(store: UserStore) -> None:
    await add_token(store, "hash-1", family_id="family-1", user_id="user-1")

    record = await store.get_refresh_token("hash-1")

    assert record is not None
    assert record.token_hash == "hash-1"
    assert record.family_id == "family-1"
    assert record.user_id == "user-1"
    assert record.issued_at == NOW
    assert record.expires_at == LATER
    assert record.used_at is None
    assert record.family_revoked is False


async def test_unknown_refresh_token(store: UserStore) -> None:
    await add_token(store, "hash-1")

    assert await store.get_refresh_token("no-such-hash") is None
    assert await store.consume_refresh_token("no-such-hash", NOW) is False


async def test_consume_exactly_once_under_concurrency(store: UserStore) -> None:
    await add_token(store, "hash-1")

    results = await asyncio.gather(
        *(store.consume_refresh_token("hash-1", NOW + n) for n in range(20))
    )

    assert results.count(True) == 1
    record = await store.get_refresh_token("hash-1")
    assert record is not None
    assert record.used_at == NOW + results.index(True)
    assert await store.consume_refresh_token("hash-1", NOW + 99) is False


async def test_revoke_family_covers_tokens_added_later(store: UserStore) -> None:
    await add_token(store, "before", family_id="family-1")
    await add_token(store, "elsewhere", family_id="family-2")

    await store.revoke_family("family-1", NOW)
    await add_token(store, "after", family_id="family-1")

    for token_hash, revoked in [("before", True), ("after", True), ("elsewhere", False)]:
        record = await store.get_refresh_token(token_hash)
        assert record is not None
        assert record.family_revoked is revoked, token_hash


async def test_successor_issued_at_finds_the_next_token_of_the_family(store: UserStore) -> None:
    await add_token(store, "first", issued_at=NOW)
    assert await store.successor_issued_at("family-1", NOW) is None
    await add_token(store, "third", issued_at=NOW + 20)
    await add_token(store, "second", issued_at=NOW + 10)
    await add_token(store, "foreign", family_id="family-2", issued_at=NOW + 5)

    assert await store.successor_issued_at("family-1", NOW) == NOW + 10
    assert await store.successor_issued_at("family-1", NOW + 10) == NOW + 20
    assert await store.successor_issued_at("family-1", NOW + 20) is None
    assert await store.successor_issued_at("no-such-family", NOW) is None


async def test_revoke_user_families_counts_live_ones(store: UserStore) -> None:
    await add_token(store, "expired", family_id="f-expired", expires_at=NOW - 10)
    await add_token(store, "a1", family_id="f-a")
    await add_token(store, "a2", family_id="f-a")
    await add_token(store, "b1", family_id="f-b")
    await add_token(store, "c1", family_id="f-c")
    await store.revoke_family("f-c", NOW)
    await add_token(store, "other", family_id="f-other", user_id="user-2")

    assert await store.revoke_user_families("user-1", NOW) == 2

    for token_hash in ("a1", "a2", "b1"):
        record = await store.get_refresh_token(token_hash)
        assert record is not None
        assert record.family_revoked, token_hash
    other = await store.get_refresh_token("other")
    assert other is not None
    assert not other.family_revoked
    assert await store.revoke_user_families("user-1", NOW) == 0


async def test_family_lives_as_long_as_its_longest_token(store: UserStore) -> None:
    await add_token(store, "long", family_id="family-1", expires_at=NOW + 1000)
    await add_token(store, "short", family_id="family-1", expires_at=NOW + 10)

    # At NOW + 500 the family is live only if the short token did not shorten it.
    assert await store.revoke_user_families("user-1", NOW + 500) == 1


# SQLite only.


async def test_sqlite_lock_held_elsewhere_is_unavailable_in_bounded_time(tmp_path: Path) -> None:
    path = tmp_path / "auth.db"
    store = SQLiteUserStore(path, busy_timeout=0.2)
    await store.open()
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            async with asyncio.timeout(5):
                await store.create_user(new_user("Alice"))
        assert time.monotonic() - started < 3
        other.execute("ROLLBACK")

        # Once the lock is gone, the same store works again.
        await store.create_user(new_user("Alice"))
    finally:
        other.close()
        await store.close()


async def test_sqlite_two_stores_on_one_file_act_as_one(tmp_path: Path) -> None:
    # Two stores have two connections and two threads, as two processes would.
    first = SQLiteUserStore(tmp_path / "auth.db")
    second = SQLiteUserStore(tmp_path / "auth.db")
    await first.open()
    await second.open()
    try:
        await add_token(first, "hash-1")
        results = await asyncio.gather(
            *(s.consume_refresh_token("hash-1", NOW) for _ in range(10) for s in (first, second))
        )
        assert results.count(True) == 1

        await first.create_user(new_user("Alice"))
        with pytest.raises(DuplicateUser):
            await second.create_user(new_user("alice", "another@example.com"))
    finally:
        await first.close()
        await second.close()


async def test_sqlite_creates_the_folder_and_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "var" / "nested" / "auth.db"
    store = SQLiteUserStore(path)
    await store.open()
    await store.close()

    with sqlite3.connect(path) as conn:
        (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
    conn.close()
    assert mode == "wal"


async def test_sqlite_purges_expired_refresh_tokens(tmp_path: Path) -> None:
    first = SQLiteUserStore(tmp_path / "auth.db")
    await first.open()
    await add_token(first, "stale", family_id="f-stale", issued_at=NOW - 100, expires_at=NOW - 1)
    await first.close()
    # A fresh store purges on its first add (then at most once a minute).
    second = SQLiteUserStore(tmp_path / "auth.db")
    await second.open()
    try:
        await add_token(second, "fresh", family_id="f-fresh")

        assert await second.get_refresh_token("stale") is None
        assert await second.revoke_user_families("user-1", NOW - 50) == 1  # f-fresh only
    finally:
        await second.close()


async def test_sqlite_closed_store_is_unavailable(tmp_path: Path) -> None:
    store = SQLiteUserStore(tmp_path / "auth.db")
    with pytest.raises(StoreUnavailable):
        await store.ping()
    await store.open()
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.get_user("anyone")


async def test_sqlite_in_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store("sqlite:///:memory:")
    await store.open()
    try:
        user = await store.create_user(new_user("Alice"))
        assert await store.get_user(user.id) == user
    finally:
        await store.close()
    assert list(tmp_path.iterdir()) == []  # no file named ":memory:"


# MongoDB only.


async def test_mongo_unreachable_server_is_unavailable_in_bounded_time() -> None:
    store = MongoUserStore("mongodb://127.0.0.1:1/", server_selection_timeout_ms=200)
    started = time.monotonic()
    try:
        async with asyncio.timeout(10):
            with pytest.raises(StoreUnavailable):
                await store.open()
            with pytest.raises(StoreUnavailable):
                await store.ping()
            with pytest.raises(StoreUnavailable):
                await store.find_user_by_username("alice")
    finally:
        await store.close()
    assert time.monotonic() - started < 5


async def test_mongomock_has_the_unique_and_ttl_indexes(one_thread: ThreadPoolExecutor) -> None:
    client: pymongo.MongoClient[Document] = mongomock.MongoClient()
    store = MongoUserStore("mongodb://mongomock/", client=client, executor=one_thread)
    await store.open()
    await store.close()
    db = client["sockgate"]

    users = db.users.index_information()
    assert users["username_norm"]["key"] == [("username_norm", 1)]
    assert users["username_norm"]["unique"] is True
    assert users["email_norm"]["key"] == [("email_norm", 1)]
    assert users["email_norm"]["unique"] is True
    for collection in (db.refresh_tokens, db.refresh_families):
        ttl = collection.index_information()["expires_at_ttl"]
        assert ttl["key"] == [("expires_at", 1)]
        assert ttl["expireAfterSeconds"] == 0


async def test_mongo_database_name(one_thread: ThreadPoolExecutor) -> None:
    client: pymongo.MongoClient[Document] = mongomock.MongoClient()
    for url, database, expected in [
        ("mongodb://h1:27017,h2:27017/accounts?replicaSet=rs0", None, "accounts"),
        ("mongodb://h1/", None, "sockgate"),
        ("mongodb://h1/accounts", "override", "override"),
    ]:
        store = MongoUserStore(url, database=database, client=client, executor=one_thread)
        await store.open()
        await store.create_user(new_user(expected))
        await store.close()
        assert client[expected].users.count_documents({}) == 1, url


def test_mongo_duplicate_field_from_a_server_error() -> None:
    # The shape a real server gives (mongomock gives no details; the store then looks).
    by_pattern = DuplicateKeyError(
        "E11000", 11000, {"keyPattern": {"email_norm": 1}, "keyValue": {"email_norm": "x"}}
    )
    by_message = DuplicateKeyError(
        "E11000",
        11000,
        {
            "errmsg": "E11000 duplicate key error collection: sockgate.users"
            ' index: username_norm dup key: { username_norm: "email_norm" }'
        },
    )
    by_id = DuplicateKeyError("E11000", 11000, {"keyPattern": {"_id": 1}})

    assert _duplicate_field(by_pattern) == "email"
    assert _duplicate_field(by_message) == "username"
    assert _duplicate_field(by_id) is None


# open_store.


async def test_open_store_sqlite_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    absolute = tmp_path / "abs" / "auth.db"
    for url, created in [
        ("sqlite:///./var/auth.db", tmp_path / "var" / "auth.db"),
        ("sqlite:///relative/auth.db", tmp_path / "relative" / "auth.db"),
        (f"sqlite:///{absolute}", absolute),  # four slashes: the path is absolute
    ]:
        store = open_store(url)
        assert isinstance(store, SQLiteUserStore)
        await store.open()
        await store.close()
        assert created.is_file(), url


def test_open_store_mongodb() -> None:
    # Building a store does no I/O, so unresolvable hosts are fine here.
    assert isinstance(open_store("mongodb://db.invalid:27017/sockgate"), MongoUserStore)
    assert isinstance(open_store("mongodb+srv://cluster.invalid/sockgate"), MongoUserStore)


@pytest.mark.parametrize(
    "url",
    ["postgresql://admin:s3cret@db/auth", "sqlite://auth.db", "sqlite:///", "auth.db"],
)
def test_open_store_refuses_other_urls(url: str) -> None:
    with pytest.raises(ValueError, match="sqlite:///") as refused:
        open_store(url)
    assert "s3cret" not in str(refused.value)
