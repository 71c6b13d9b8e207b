"""Typed dependencies the routes declare: the core, the caller, the client address."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.auth.accounts import Accounts
from services.auth.state import AppState
from services.auth.store import UserRecord

_bearer = HTTPBearer(auto_error=False, description="An access token from /v1/auth/login.")


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.sockgate
    return state


def get_accounts(state: Annotated[AppState, Depends(get_state)]) -> Accounts:
    return state.accounts


async def get_current_user(
    accounts: Annotated[Accounts, Depends(get_accounts)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> UserRecord:
    return await accounts.authenticate(credentials.credentials if credentials else None)


def client_address(request: Request, state: Annotated[AppState, Depends(get_state)]) -> str:
    """The caller's address; ``X-Forwarded-For`` only when the proxy is trusted."""
    if state.settings.trust_forwarded_for:
        forwarded = request.headers.get("x-forwarded-for", "")
        if forwarded:
            return forwarded.split(",")[0].strip()[:64]
    return request.client.host if request.client else "unknown"


State = Annotated[AppState, Depends(get_state)]
AccountsDep = Annotated[Accounts, Depends(get_accounts)]
CurrentUser = Annotated[UserRecord, Depends(get_current_user)]
ClientAddress = Annotated[str, Depends(client_address)]
