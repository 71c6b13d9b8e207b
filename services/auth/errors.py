"""Domain errors of the auth core; routes translate them into HTTP answers.

::

    AuthError
    ├── InvalidCredentials     unknown user or wrong password (one error for both)
    ├── UserExists             the username or email is taken
    ├── InvalidRefreshToken    unknown, expired, spent or revoked refresh token
    ├── NotAuthenticated       missing or refused access token (``code`` from shared.tokens)
    ├── Throttled              too many attempts; ``retry_after`` seconds
    └── Busy                   password hashing is saturated past its queue timeout
"""

from __future__ import annotations


class AuthError(Exception):
    """A request the auth core refuses."""


class InvalidCredentials(AuthError):
    """The login or the password is wrong; callers never learn which."""


class UserExists(AuthError):
    """Registration refused because ``field`` is taken."""

    def __init__(self, field: str) -> None:
        super().__init__(f"{field} is already registered")
        self.field = field


class InvalidRefreshToken(AuthError):
    """The refresh token cannot be used."""


class NotAuthenticated(AuthError):
    """The access token is missing or refused."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Throttled(AuthError):
    """Too many attempts; try again after ``retry_after`` seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"too many attempts, retry after {retry_after:.0f}s")
        self.retry_after = retry_after


class Busy(AuthError):
    """The service is saturated; try again shortly."""
