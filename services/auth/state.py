"""What the lifespan opens and the routes use: one object on ``app.state.sockgate``."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as redis
from prometheus_client import CollectorRegistry

from services.auth.accounts import Accounts
from services.auth.clients import ServiceClients
from services.auth.keys import KeyRing
from services.auth.metrics import AuthMetrics
from services.auth.passwords import Passwords
from services.auth.settings import AuthSettings
from services.auth.store import UserStore
from services.auth.throttle import AddressLimiter


@dataclass
class AppState:
    """The service's live parts, built in the lifespan and closed with it."""

    settings: AuthSettings
    store: UserStore
    keys: KeyRing
    passwords: Passwords
    accounts: Accounts
    clients: ServiceClients
    address_limiter: AddressLimiter
    metrics: AuthMetrics
    registry: CollectorRegistry
    redis: redis.Redis | None
