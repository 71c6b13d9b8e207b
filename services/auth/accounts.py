"""The auth core: registration, login, refresh-token rotation, logout, token checks.

Refresh tokens form families: a login starts one, each refresh spends the presented token and
adds its successor. Presenting a spent token is reuse (a stolen copy, or the victim's) and
revokes the whole family, successor included. Two refreshes racing with the same token are not
reuse: the one that spends it first wins, the other is refused without revoking, so exactly one
chain goes on. A request is racing when it arrived before the spent token's successor existed;
presented after that, the token is being replayed.
"""

from __future__ import annotations

import logging
import time
import unicodedata
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from services.auth.errors import (
    InvalidCredentials,
    InvalidRefreshToken,
    NotAuthenticated,
    Throttled,
    UserExists,
)
from services.auth.metrics import AuthMetrics
from services.auth.passwords import Passwords
from services.auth.revocations import RevocationPublisher
from services.auth.store import DuplicateUser, NewUser, UserRecord, UserStore
from services.auth.throttle import LoginThrottle
from services.auth.tokens import AccessTokenIssuer, hash_refresh_token, new_refresh_token
from shared.revocation import Revocation, is_revoked, revoked_before_for
from shared.tokens import TokenError, TokenVerifier

log = logging.getLogger("sockgate.auth.security")


def normalize_username(username: str) -> str:
    """The form uniqueness is decided on: NFKC, case-folded."""
    return unicodedata.normalize("NFKC", username).casefold()


def normalize_email(email: str) -> str:
    """The form uniqueness is decided on: trimmed, lower-cased."""
    return unicodedata.normalize("NFKC", email).strip().lower()


@dataclass(frozen=True, slots=True)
class TokenPair:
    """What a successful login or refresh returns."""

    access_token: str
    expires_in: int
    refresh_token: str


class Accounts:
    """The auth service's use cases over a store, a hasher and the signing keys."""

    def __init__(
        self,
        *,
        store: UserStore,
        passwords: Passwords,
        issuer: AccessTokenIssuer,
        verifier: TokenVerifier,
        throttle: LoginThrottle,
        metrics: AuthMetrics,
        refresh_ttl: int,
        revocations: RevocationPublisher | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._passwords = passwords
        self._issuer = issuer
        self._verifier = verifier
        self._throttle = throttle
        self._metrics = metrics
        self._refresh_ttl = refresh_ttl
        self._revocations = revocations
        self._clock = clock

    async def register(self, username: str, email: str, password: str) -> UserRecord:
        """Creates a user; ``UserExists`` when the username or email is taken."""
        password_hash = await self._timed_hash(password)
        user = NewUser(
            id=uuid.uuid4().hex,
            username=username,
            username_norm=normalize_username(username),
            email=email,
            email_norm=normalize_email(email),
            password_hash=password_hash,
            created_at=self._clock(),
        )
        try:
            record = await self._store.create_user(user)
        except DuplicateUser as exc:
            self._metrics.registrations.labels("conflict").inc()
            raise UserExists(exc.field) from None
        self._metrics.registrations.labels("created").inc()
        log.info("user registered", extra={"event": "register", "user_id": record.id})
        return record

    async def login(self, login: str, password: str) -> TokenPair:
        """Checks credentials and starts a refresh family; one error for every failure."""
        account = normalize_email(login) if "@" in login else normalize_username(login)
        try:
            self._throttle.check(account)
        except Throttled:
            self._metrics.logins.labels("throttled").inc()
            log.warning("login throttled", extra={"event": "login_throttled"})
            raise
        if "@" in login:
            user = await self._store.find_user_by_email(account)
        else:
            user = await self._store.find_user_by_username(account)
        started = time.perf_counter()
        ok = await self._passwords.verify_or_dummy(user.password_hash if user else None, password)
        self._metrics.hash_seconds.observe(time.perf_counter() - started)
        if user is None or not ok:
            self._throttle.failure(account)
            self._metrics.logins.labels("invalid").inc()
            log.warning(
                "login failed",
                extra={"event": "login_failed", "user_id": user.id if user else None},
            )
            raise InvalidCredentials("invalid username or password")
        self._throttle.success(account)
        if self._passwords.needs_rehash(user.password_hash):
            await self._store.set_password_hash(user.id, await self._timed_hash(password))
        self._metrics.logins.labels("success").inc()
        return await self._issue_pair(user, family_id=uuid.uuid4().hex)

    async def refresh(self, refresh_token: str, received_at: float | None = None) -> TokenPair:
        """Spends ``refresh_token`` and returns its successor with a new access token.

        ``received_at`` is when the request arrived; a token spent after that moment was
        spent by a concurrent request, not replayed.
        """
        started = received_at if received_at is not None else self._clock()
        token_hash = hash_refresh_token(refresh_token)
        record = await self._store.get_refresh_token(token_hash)
        if record is None or record.family_revoked or record.expires_at <= started:
            self._metrics.refreshes.labels("invalid").inc()
            raise InvalidRefreshToken("the refresh token is not valid")
        if record.used_at is not None:
            successor_at = await self._store.successor_issued_at(record.family_id, record.issued_at)
            if successor_at is None or successor_at > started:
                self._metrics.refreshes.labels("race_lost").inc()
                raise InvalidRefreshToken("the refresh token was just used")
            await self._store.revoke_family(record.family_id, self._clock())
            self._metrics.refreshes.labels("reuse_detected").inc()
            log.warning(
                "refresh token reuse detected; family revoked",
                extra={
                    "event": "refresh_reuse",
                    "user_id": record.user_id,
                    "family": record.family_id,
                },
            )
            raise InvalidRefreshToken("the refresh token is not valid")
        if not await self._store.consume_refresh_token(token_hash, self._clock()):
            # Someone spent it between our read and our write: a race, not a replay.
            self._metrics.refreshes.labels("race_lost").inc()
            raise InvalidRefreshToken("the refresh token was just used")
        user = await self._store.get_user(record.user_id)
        if user is None:
            self._metrics.refreshes.labels("invalid").inc()
            raise InvalidRefreshToken("the refresh token is not valid")
        self._metrics.refreshes.labels("success").inc()
        return await self._issue_pair(user, family_id=record.family_id)

    async def logout(self, refresh_token: str) -> None:
        """Revokes the family of ``refresh_token``; unknown tokens are ignored."""
        record = await self._store.get_refresh_token(hash_refresh_token(refresh_token))
        if record is not None:
            await self._store.revoke_family(record.family_id, self._clock())
            log.info("logout", extra={"event": "logout", "user_id": record.user_id})

    async def logout_all(self, user: UserRecord) -> None:
        """Kills every refresh family and every access token issued so far for ``user``."""
        now = self._clock()
        revocation = Revocation(sub=user.id, revoked_before=revoked_before_for(now))
        await self._store.set_revoked_before(user.id, revocation.revoked_before)
        families = await self._store.revoke_user_families(user.id, now)
        if self._revocations is None:
            result = "no_redis"
        else:
            result = "published" if await self._revocations.publish(revocation) else "failed"
        self._metrics.revocations.labels(result).inc()
        log.warning(
            "logout everywhere",
            extra={
                "event": "logout_all",
                "user_id": user.id,
                "families": families,
                "gateways": result,
            },
        )

    async def authenticate(self, access_token: str | None) -> UserRecord:
        """The user an access token belongs to, refusing revoked and foreign tokens."""
        try:
            claims = await self._verifier.verify(access_token)
        except TokenError as exc:
            raise NotAuthenticated(exc.code, exc.message) from None
        user = await self._store.get_user(claims.sub)
        if user is None:
            raise NotAuthenticated("token_invalid", "the token's user does not exist")
        if is_revoked(claims.iat, user.revoked_before):
            raise NotAuthenticated("token_revoked", "the token was revoked")
        return user

    async def _issue_pair(self, user: UserRecord, *, family_id: str) -> TokenPair:
        access_token = self._issuer.issue(user, self._clock())
        refresh_token = new_refresh_token()
        # Stamped last, right before the pair leaves: the moment the successor exists.
        now = self._clock()
        await self._store.add_refresh_token(
            token_hash=hash_refresh_token(refresh_token),
            family_id=family_id,
            user_id=user.id,
            issued_at=now,
            expires_at=now + self._refresh_ttl,
        )
        self._metrics.tokens_issued.labels("refresh").inc()
        self._metrics.tokens_issued.labels("access").inc()
        return TokenPair(access_token, self._issuer.ttl, refresh_token)

    async def _timed_hash(self, password: str) -> str:
        started = time.perf_counter()
        try:
            return await self._passwords.hash(password)
        finally:
            self._metrics.hash_seconds.observe(time.perf_counter() - started)
