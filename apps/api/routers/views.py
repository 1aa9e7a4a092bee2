"""What a trader sees: positions, the order book, the trade book and realized P&L of the caller's own
strategies and accounts, with `broker=true` beside what Kite reports (docs/pnl.md). The numbers are the
CLI's (`engine positions|orders|trades|pnl --json`): both read `starter.views`."""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import date
from typing import Annotated, TypeVar

from fastapi import APIRouter, Query, status

from apps.api.deps import ServicesDep, UserDep, owned_account, owned_strategy
from apps.api.errors import ERROR_RESPONSES, ORDER_RESPONSES, ApiError
from starter.deps import MAX_ID, Services
from starter.views import BrokerUnavailable, OrderBookOut, PnlOut, PositionsOut, Scope, TradeBookOut, TradingViews
from store.records import UserRecord

router = APIRouter(tags=["views"])

T = TypeVar("T")

StrategyQuery = Annotated[int | None, Query(gt=0, le=MAX_ID, description="one of your strategies")]
AccountQuery = Annotated[int | None, Query(gt=0, le=MAX_ID, description="one of your broker accounts")]
BrokerQuery = Annotated[bool, Query(description="ask Kite too, with the account's stored token, and mark differences")]
DayQuery = Annotated[date | None, Query(alias="date", description="the day (IST); today when left out")]


async def _scope(services: Services, user: UserRecord, strategy_id: int | None, account_id: int | None) -> Scope:
    if strategy_id is not None and account_id is not None:
        raise ApiError(status.HTTP_400_BAD_REQUEST, "give strategy_id or account_id, not both")
    if strategy_id is not None:
        await owned_strategy(services, user, strategy_id)
    if account_id is not None:
        await owned_account(services, user, account_id)
    return Scope(user_id=user.id, strategy_id=strategy_id, account_id=account_id)


async def _read(services: Services, read: Awaitable[T], views: TradingViews) -> T:
    try:
        return await read
    except BrokerUnavailable as down:
        raise ApiError(status.HTTP_502_BAD_GATEWAY, f"{down}; log in to Kite again or retry") from None
    finally:
        views.close()


@router.get("/positions", response_model=PositionsOut, responses=ORDER_RESPONSES,
            summary="Your positions per strategy and per account and instrument, beside Kite's with broker=true")
async def positions(
    services: ServicesDep, user: UserDep, strategy_id: StrategyQuery = None, account_id: AccountQuery = None,
    broker: BrokerQuery = False,
) -> PositionsOut:
    scope = await _scope(services, user, strategy_id, account_id)
    views = TradingViews(services.store, services.settings)
    return await _read(services, views.positions(scope, broker=broker), views)


@router.get("/orders", response_model=OrderBookOut, responses=ORDER_RESPONSES,
            summary="The day's order book of your strategies, beside Kite's with broker=true")
async def order_book(
    services: ServicesDep, user: UserDep, strategy_id: StrategyQuery = None, account_id: AccountQuery = None,
    day: DayQuery = None, broker: BrokerQuery = False,
) -> OrderBookOut:
    scope = await _scope(services, user, strategy_id, account_id)
    views = TradingViews(services.store, services.settings)
    return await _read(services, views.order_book(scope, day=day, broker=broker), views)


@router.get("/trades", response_model=TradeBookOut, responses=ORDER_RESPONSES,
            summary="The day's trade book of your strategies, beside Kite's with broker=true")
async def trade_book(
    services: ServicesDep, user: UserDep, strategy_id: StrategyQuery = None, account_id: AccountQuery = None,
    day: DayQuery = None, broker: BrokerQuery = False,
) -> TradeBookOut:
    scope = await _scope(services, user, strategy_id, account_id)
    views = TradingViews(services.store, services.settings)
    return await _read(services, views.trade_book(scope, day=day, broker=broker), views)


@router.get("/pnl", response_model=PnlOut, responses=ERROR_RESPONSES,
            summary="Realized P&L per strategy and day (IST), gross and after Zerodha's charges")
async def pnl(
    services: ServicesDep, user: UserDep, strategy_id: StrategyQuery = None,
    day: Annotated[date | None, Query(alias="date", description="one day (IST); every day when left out")] = None,
) -> PnlOut:
    scope = await _scope(services, user, strategy_id, None)
    views = TradingViews(services.store, services.settings)
    return await _read(services, views.pnl(scope, day=day), views)
