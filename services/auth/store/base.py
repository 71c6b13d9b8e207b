"""The port between the auth core and its databases: records, errors and ``UserStore``.

Adapters (``sqlite.py``, ``mongo.py``) implement ``UserStore``; one contract test suite runs
against each. The core hands adapters values that are already validated and normalised; an
adapter only stores, finds, and enforces uniqueness and atomicity.

Errors::

    StoreError
    ├── StoreUnavailable   the database cannot be reached or is locked past the timeout
    └── DuplicateUser      a unique index refused the user; ``field`` says which
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol


class StoreError(Exception):
    """A store operation failed."""


class StoreUnavailable(StoreError):
    """The database cannot serve requests right now."""


class DuplicateUser(StoreError):
    """The normalised username or email is taken."""

    def __init__(self, field: Literal["username", "email"]) -> None:
        super().__init__(f"{field} is taken")
        self.field: Literal["username", "email"] = field


@dataclass(frozen=True, slots=True)
class NewUser:
    """A user about to be stored; ``id`` is chosen by the core."""

    id: str
    username: str
    username_norm: str
    email: str
    email_norm: str
    password_hash: str
    created_at: float

    def stored(self) -> UserRecord:
        """The record of this user as just stored (never revoked yet)."""
        return UserRecord(
            id=self.id,
            username=self.username,
            email=self.email,
            password_hash=self.password_hash,
            created_at=self.created_at,
            revoked_before=None,
        )


@dataclass(frozen=True, slots=True)
class UserRecord:
    """A stored user."""

    id: str
    username: str
    email: str
    password_hash: str
    created_at: float
    revoked_before: int | None


@dataclass(frozen=True, slots=True)
class RefreshRecord:
    """A stored refresh token (by hash) with the state of its family."""

    token_hash: str
    family_id: str
    user_id: str
    issued_at: float
    expires_at: float
    used_at: float | None
    family_revoked: bool


class UserStore(Protocol):
    """Persistence of users and refresh-token families."""

    async def open(self) -> None:
        """Connects and creates the schema or indexes; idempotent."""

    async def close(self) -> None:
        """Releases connections."""

    async def ping(self) -> None:
        """Returns when the database answers; raises ``StoreUnavailable`` otherwise."""

    async def create_user(self, user: NewUser) -> UserRecord:
        """Stores ``user``; raises ``DuplicateUser`` when its username or email is taken."""

    async def get_user(self, user_id: str) -> UserRecord | None:
        """The user with this id."""

    async def find_user_by_username(self, username_norm: str) -> UserRecord | None:
        """The user with this normalised username."""

    async def find_user_by_email(self, email_norm: str) -> UserRecord | None:
        """The user with this normalised email."""

    async def set_password_hash(self, user_id: str, password_hash: str) -> None:
        """Replaces the user's password hash (a rehash with new parameters)."""

    async def set_revoked_before(self, user_id: str, revoked_before: int) -> None:
        """Raises the user's revoked-before time to ``revoked_before`` (never lowers it)."""

    async def add_refresh_token(
        self,
        *,
        token_hash: str,
        family_id: str,
        user_id: str,
        issued_at: float,
        expires_at: float,
    ) -> None:
        """Stores a refresh token; creates its family when new, extends its expiry otherwise."""

    async def get_refresh_token(self, token_hash: str) -> RefreshRecord | None:
        """The token with this hash, with whether its family is revoked."""

    async def consume_refresh_token(self, token_hash: str, now: float) -> bool:
        """Marks the token used if it is unused; True only for the one caller that did.

        Must be atomic across processes: of any number of concurrent callers with the same
        hash, exactly one gets True.
        """

    async def successor_issued_at(self, family_id: str, after: float) -> float | None:
        """When the family's first token issued after ``after`` was issued, if there is one.

        A spent token's successor is that token; its time tells a replay (presented after the
        successor existed) from a race (presented while it was still being made).
        """

    async def revoke_family(self, family_id: str, now: float) -> None:
        """Revokes every token of the family, those issued later included."""

    async def revoke_user_families(self, user_id: str, now: float) -> int:
        """Revokes every family of the user; returns how many were live."""
