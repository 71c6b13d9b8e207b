"""The client-credentials grant: backends trade their id and secret for a scoped service token.

A service token is an ordinary RS256 access token from the same issuer and for the same
audience, so gateways verify it with the keys they already have; ``sub`` is ``client:{id}``
and ``scope`` lists what it may do (``publish``: ``POST /v1/publish`` on any gateway).
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from services.auth.errors import AuthError
from services.auth.metrics import AuthMetrics
from services.auth.settings import ServiceClient
from services.auth.tokens import AccessTokenIssuer

log = logging.getLogger("sockgate.auth.security")


class InvalidClient(AuthError):
    """Unknown client id or wrong secret (one error for both)."""


class InvalidScope(AuthError):
    """The client asked for a scope it was not granted."""


@dataclass(frozen=True, slots=True)
class ServiceToken:
    """What a successful client-credentials grant returns."""

    access_token: str
    expires_in: int
    scope: str


class ServiceClients:
    """Checks client credentials and issues service tokens."""

    def __init__(
        self,
        clients: list[ServiceClient],
        *,
        issuer: AccessTokenIssuer,
        metrics: AuthMetrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clients = {client.id: client for client in clients}
        self._issuer = issuer
        self._metrics = metrics
        self._clock = clock

    def grant(self, client_id: str, secret: str, requested: str | None) -> ServiceToken:
        """A service token for a client whose secret matches; scopes default to all granted."""
        client = self._clients.get(client_id)
        # Compare against something even for an unknown id, so timing does not tell ids apart.
        expected = client.secret.get_secret_value() if client else "x" * 32
        if not hmac.compare_digest(expected.encode(), secret.encode()) or client is None:
            self._metrics.client_grants.labels("invalid_client").inc()
            log.warning("client credentials refused", extra={"event": "client_refused"})
            raise InvalidClient("invalid client credentials")
        scopes: list[str] = requested.split() if requested else list(client.scopes)
        if not scopes or not set(scopes) <= set(client.scopes):
            self._metrics.client_grants.labels("invalid_scope").inc()
            raise InvalidScope("the requested scope is not granted to this client")
        token = self._issuer.issue_for_client(client.id, scopes, self._clock())
        self._metrics.client_grants.labels("issued").inc()
        self._metrics.tokens_issued.labels("service").inc()
        log.info("service token issued", extra={"event": "client_token", "client": client.id})
        return ServiceToken(token, self._issuer.ttl, " ".join(scopes))
