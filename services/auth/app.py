"""The auth service's app factory: ``create_app(settings)`` builds everything, opens nothing.

The lifespan opens the user store, loads (or creates) the signing keys, connects Redis when
configured, and closes them in reverse on shutdown.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import redis.asyncio as redis
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from prometheus_client import CollectorRegistry

from services.auth.accounts import Accounts
from services.auth.clients import ServiceClients
from services.auth.demo import mount_demo
from services.auth.http_errors import install_error_handlers
from services.auth.keys import KeyRing
from services.auth.metrics import AuthMetrics
from services.auth.middleware import BodySizeLimit, RequestMetrics
from services.auth.passwords import Passwords
from services.auth.revocations import RevocationPublisher
from services.auth.routes import api, ops, wellknown
from services.auth.settings import AuthSettings
from services.auth.state import AppState
from services.auth.store import UserStore, open_store
from services.auth.throttle import AddressLimiter, LoginThrottle
from services.auth.tokens import AccessTokenIssuer
from shared.metrics import new_registry
from shared.tokens import TokenVerifier

log = logging.getLogger(__name__)


def create_app(
    settings: AuthSettings,
    *,
    registry: CollectorRegistry | None = None,
    store: UserStore | None = None,
) -> FastAPI:
    """The auth service as an ASGI app; ``store`` replaces the one named by the settings."""
    registry = registry if registry is not None else new_registry()
    metrics = AuthMetrics(registry)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        user_store = store if store is not None else open_store(settings.database_url)
        await user_store.open()
        keys = KeyRing(settings.keys_dir, access_ttl=settings.access_ttl)
        keys.load()
        passwords = Passwords(
            time_cost=settings.argon2_time_cost,
            memory_kib=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
            concurrency=settings.hash_concurrency,
            queue_timeout=settings.hash_queue_timeout,
        )
        redis_client = (
            redis.Redis.from_url(settings.redis_url, socket_timeout=2, socket_connect_timeout=2)
            if settings.redis_url
            else None
        )
        issuer = AccessTokenIssuer(
            keys, issuer=settings.issuer, audience=settings.audience, ttl=settings.access_ttl
        )
        accounts = Accounts(
            store=user_store,
            passwords=passwords,
            issuer=issuer,
            verifier=TokenVerifier(issuer=settings.issuer, audience=settings.audience, keys=keys),
            throttle=LoginThrottle(
                free_failures=settings.login_free_failures, max_delay=settings.login_max_delay
            ),
            metrics=metrics,
            refresh_ttl=settings.refresh_ttl,
            revocations=(
                RevocationPublisher(redis_client, remember_for=settings.access_ttl + 60)
                if redis_client is not None
                else None
            ),
        )
        app.state.sockgate = AppState(
            settings=settings,
            store=user_store,
            keys=keys,
            passwords=passwords,
            accounts=accounts,
            clients=ServiceClients(settings.service_clients, issuer=issuer, metrics=metrics),
            address_limiter=AddressLimiter(
                per_minute=settings.ip_rate_per_minute, burst=settings.ip_burst
            ),
            metrics=metrics,
            registry=registry,
            redis=redis_client,
        )
        log.info(
            "auth service ready",
            extra={"issuer": settings.issuer, "kid": keys.signer.kid, "redis": bool(redis_client)},
        )
        try:
            yield
        finally:
            if redis_client is not None:
                await redis_client.aclose()
            passwords.close()
            await user_store.close()

    app = FastAPI(
        title="sockgate auth",
        version="1.0.0",
        summary="Registers users, signs RS256 access tokens, rotates refresh tokens.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(api)
    app.include_router(wellknown)
    app.include_router(ops)
    if settings.demo:
        mount_demo(app, gateway_urls=settings.demo_gateway_list, page_origin=settings.issuer)
    app.add_middleware(RequestMetrics, metrics=metrics)
    if settings.cors_origin_list:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    # Added last, so outermost: oversized bodies are refused before anything reads them.
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    return app


def app_from_env() -> FastAPI:
    """The app with settings from the environment: what uvicorn workers import."""
    return create_app(AuthSettings())
