"""The API's dependencies: the services, the caller (by API key), and what the caller owns."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Depends, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from apps.api.errors import ApiError
from starter.control import UnknownOrder
from starter.deps import Services, strategy_id_of
from store.errors import StrategyNotFound
from store.records import StrategyRecord, UserRecord

API_KEY_SHAPE = re.compile(r"[A-Za-z0-9_\-]{1,200}")

bearer = HTTPBearer(auto_error=False, description="the API key from `engine users create`")


def services_of(request: Request) -> Services:
    services: Services | None = getattr(request.app.state, "services", None)
    if services is None:
        raise ApiError(status.HTTP_503_SERVICE_UNAVAILABLE, "the API is starting; retry in a moment")
    return services


ServicesDep = Annotated[Services, Depends(services_of)]


async def authenticate(services: Services, authorization: str | None) -> UserRecord:
    """The user an `Authorization: Bearer <API key>` header names; ApiError 401 for anything else."""
    challenge = {"WWW-Authenticate": "Bearer"}
    scheme, _, key = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ApiError(
            status.HTTP_401_UNAUTHORIZED, "send your API key as `Authorization: Bearer <key>`", headers=challenge
        )
    key = key.strip()
    user = await services.store.user_by_api_key(key) if API_KEY_SHAPE.fullmatch(key) else None
    if user is None:
        raise ApiError(
            status.HTTP_401_UNAUTHORIZED, "that API key is not valid; ask an operator for a new one", headers=challenge
        )
    return user


async def current_user(
    request: Request,
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],  # documents the scheme
) -> UserRecord:
    # The request guard authenticated the caller before the body was read (apps/api/guards.py).
    user: UserRecord | None = getattr(request.state, "user", None)
    if user is None:
        user = await authenticate(services, request.headers.get("authorization"))
    return user


UserDep = Annotated[UserRecord, Depends(current_user)]


async def owned_strategy(services: Services, user: UserRecord, strategy_id: int) -> StrategyRecord:
    """The user's strategy; another user's answers exactly like a missing one."""
    strategy = await services.store.get_strategy(strategy_id)
    if strategy.user_id != user.id:
        raise StrategyNotFound(strategy_id)
    return strategy


async def owned_order(services: Services, user: UserRecord, workflow_id: str) -> int:
    """The strategy id of the user's order workflow; UnknownOrder for anyone else's."""
    strategy_id = strategy_id_of(workflow_id)
    if strategy_id is None:
        raise UnknownOrder(workflow_id)
    try:
        await owned_strategy(services, user, strategy_id)
    except StrategyNotFound:
        raise UnknownOrder(workflow_id) from None
    return strategy_id


def requested_by(user: UserRecord) -> str:
    return f"api:{user.username}"[:64]


async def owned_account(services: Services, user: UserRecord, account_id: int) -> None:
    account = await services.store.get_broker_account(account_id)
    if account.user_id != user.id:
        raise ApiError(
            status.HTTP_404_NOT_FOUND, f"broker account {account_id} does not exist; add it first or check the id"
        )
