"""What a trader reads: the engine's order book, trade book and realized P&L per strategy and day, and
the order events of a user after a given event id (the live stream's source)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from sqlalchemy import Select, select

from store import validation as check
from store.base import StoreBase
from store.models import Order, OrderEvent, Strategy
from store.orders import _weighted_entry

IST = ZoneInfo("Asia/Kolkata")
MAX_EVENTS = 500


@dataclass(frozen=True)
class BookOrder:
    """One order of the engine with what its strategy adds: product, account, name."""

    workflow_id: str
    strategy_id: int
    strategy_name: str
    user_id: int
    account_id: int
    order_type: str
    transaction_type: str
    symbol: str
    exchange: str
    product: str
    quantity: int
    filled_quantity: int
    average_price: Decimal | None
    status: str
    outcome: str | None
    exit_reason: str | None
    broker_order_id: str | None
    tag: str
    created_at: datetime
    filled_at: datetime | None
    completed_at: datetime | None
    applied_quantity: int
    applied_average_price: Decimal | None


@dataclass(frozen=True)
class RealizedExit:
    """One exit's realized P&L, against the position's average entry price then."""

    order: BookOrder
    quantity: int
    price: Decimal
    entry_price: Decimal
    realized: Decimal


@dataclass(frozen=True)
class StreamEvent:
    id: int
    event_type: str
    workflow_id: str
    strategy_id: int
    symbol: str
    data: dict
    created_at: datetime


def ist_day(moment: datetime) -> date:
    return moment.astimezone(IST).date()


def realized_exits(orders: list[BookOrder]) -> list[RealizedExit]:
    """Replay one strategy's fills in the order they happened, as the store applied them: a BUY moves
    the weighted entry price, an exit realizes (price - entry) x quantity."""
    held, entry = 0, None
    exits: list[RealizedExit] = []
    filled = [order for order in orders if order.applied_quantity > 0 and order.applied_average_price is not None]
    filled.sort(key=lambda order: (order.filled_at or order.created_at, order.created_at, order.workflow_id))
    for order in filled:
        price, quantity = order.applied_average_price, order.applied_quantity
        assert price is not None
        if order.transaction_type == "BUY":
            entry = _weighted_entry(held, entry, quantity, price)
            held += quantity
            continue
        basis = entry if entry is not None else Decimal(0)
        exits.append(RealizedExit(order, quantity, price, basis, (price - basis) * quantity))
        held = max(0, held - quantity)
        if held == 0:
            entry = None
    return exits


class ViewsMixin(StoreBase):
    async def book_orders(
        self,
        *,
        user_id: int | None = None,
        strategy_id: int | None = None,
        account_id: int | None = None,
        day: date | None = None,
        filled_only: bool = False,
    ) -> list[BookOrder]:
        """The engine's orders in scope, oldest first; `day` (IST) on when each was created."""
        query: Select = select(Order, Strategy).join(Strategy, Strategy.id == Order.strategy_id)
        if user_id is not None:
            query = query.where(Order.user_id == check.positive_int(user_id, "user_id"))
        if strategy_id is not None:
            query = query.where(Order.strategy_id == check.positive_int(strategy_id, "strategy_id"))
        if account_id is not None:
            query = query.where(Strategy.broker_account_id == check.positive_int(account_id, "account_id"))
        if filled_only:
            query = query.where(Order.applied_quantity > 0)
        if day is not None:
            start = datetime.combine(day, time(0), IST)
            query = query.where(Order.created_at >= start, Order.created_at < start + timedelta(days=1))
        async with self._read() as session:
            rows = (await session.execute(query.order_by(Order.created_at, Order.id))).all()
        return [_book_order(order, strategy) for order, strategy in rows]

    async def realized_by_strategy(
        self, *, user_id: int | None = None, strategy_id: int | None = None
    ) -> dict[int, tuple[list[BookOrder], list[RealizedExit]]]:
        """Every filled order and every realized exit, per strategy."""
        orders = await self.book_orders(user_id=user_id, strategy_id=strategy_id, filled_only=True)
        per_strategy: dict[int, list[BookOrder]] = defaultdict(list)
        for order in orders:
            per_strategy[order.strategy_id].append(order)
        return {sid: (fills, realized_exits(fills)) for sid, fills in sorted(per_strategy.items())}

    async def user_events_after(self, user_id: int, after_id: int, limit: int = MAX_EVENTS) -> list[StreamEvent]:
        """The user's order events with an id above `after_id`, oldest first."""
        user = check.positive_int(user_id, "user_id")
        after = check.non_negative_int(after_id, "after_id")
        query = (
            select(OrderEvent, Order.strategy_id, Order.symbol)
            .join(Order, Order.id == OrderEvent.order_id)
            .where(Order.user_id == user, OrderEvent.id > after)
            .order_by(OrderEvent.id)
            .limit(check.positive_int(limit, "limit"))
        )
        async with self._read() as session:
            rows = (await session.execute(query)).all()
        return [
            StreamEvent(event.id, event.event_type, event.workflow_id, sid, symbol, event.data, event.created_at)
            for event, sid, symbol in rows
        ]

    async def events_at_or_below(self, after_id: int, up_to_id: int) -> list[int]:
        """Every event id in (after_id, up_to_id], of any user: a gap is a transaction not yet committed."""
        query = (
            select(OrderEvent.id)
            .where(OrderEvent.id > after_id, OrderEvent.id <= up_to_id)
            .order_by(OrderEvent.id)
        )
        async with self._read() as session:
            return list(await session.scalars(query))

    async def newest_event_id(self) -> int:
        async with self._read() as session:
            newest = await session.scalar(select(OrderEvent.id).order_by(OrderEvent.id.desc()).limit(1))
        return int(newest or 0)


def _book_order(order: Order, strategy: Strategy) -> BookOrder:
    return BookOrder(
        workflow_id=order.workflow_id, strategy_id=order.strategy_id, strategy_name=strategy.name,
        user_id=order.user_id, account_id=strategy.broker_account_id, order_type=order.order_type,
        transaction_type=order.transaction_type, symbol=order.symbol, exchange=order.exchange,
        product=strategy.product, quantity=order.quantity, filled_quantity=order.filled_quantity,
        average_price=order.average_price, status=order.status, outcome=order.outcome,
        exit_reason=order.exit_reason, broker_order_id=order.broker_order_id, tag=order.tag,
        created_at=order.created_at, filled_at=order.filled_at, completed_at=order.completed_at,
        applied_quantity=order.applied_quantity, applied_average_price=order.applied_average_price,
    )
