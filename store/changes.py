"""What the market-data service follows: order events and strategy events after an id, and the
strategies they concern. Both reads walk a primary key, so a poll with nothing new costs one index probe."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select

from store import validation as check
from store.base import StoreBase, strategy_record
from store.models import Order, OrderEvent, Strategy, StrategyEvent
from store.records import StrategyChange, StrategyRecord


class ChangesMixin(StoreBase):
    async def order_changes_after(self, after_id: int, limit: int = 500) -> list[StrategyChange]:
        """Order events with an id above `after_id`, oldest first: each may open, close or re-arm a position."""
        after = check.non_negative_int(after_id, "after_id")
        count = check.positive_int(limit, "limit")
        query = (
            select(OrderEvent.id, Order.strategy_id, OrderEvent.event_type, Order.order_type, Order.outcome)
            .join(Order, Order.id == OrderEvent.order_id)
            .where(OrderEvent.id > after)
            .order_by(OrderEvent.id)
            .limit(count)
        )
        async with self._read() as session:
            rows = (await session.execute(query)).all()
        return [StrategyChange("order", row.id, row.strategy_id, row.event_type, row.order_type, row.outcome)
                for row in rows]

    async def strategy_changes_after(self, after_id: int, limit: int = 500) -> list[StrategyChange]:
        """Strategy events (settings or status changed) with an id above `after_id`, oldest first."""
        after = check.non_negative_int(after_id, "after_id")
        count = check.positive_int(limit, "limit")
        query = (select(StrategyEvent.id, StrategyEvent.strategy_id, StrategyEvent.event_type)
                 .where(StrategyEvent.id > after).order_by(StrategyEvent.id).limit(count))
        async with self._read() as session:
            rows = (await session.execute(query)).all()
        return [StrategyChange("strategy", row.id, row.strategy_id, row.event_type) for row in rows]

    async def last_change_ids(self) -> tuple[int, int]:
        """The newest order event id and strategy event id (0 when none): where a full reload starts following."""
        async with self._read() as session:
            orders = await session.scalar(select(OrderEvent.id).order_by(OrderEvent.id.desc()).limit(1))
            strategies = await session.scalar(select(StrategyEvent.id).order_by(StrategyEvent.id.desc()).limit(1))
        return int(orders or 0), int(strategies or 0)

    async def strategies_by_id(self, strategy_ids: Iterable[int]) -> list[StrategyRecord]:
        ids = sorted({check.positive_int(strategy_id, "strategy_id") for strategy_id in strategy_ids})
        if not ids:
            return []
        async with self._read() as session:
            rows = await session.scalars(select(Strategy).where(Strategy.id.in_(ids)).order_by(Strategy.id))
            return [strategy_record(row) for row in rows]

    async def open_positions_with_stop_loss(self) -> list[StrategyRecord]:
        """Strategies holding a position with a stop-loss set, RUNNING or SL_TRIGGERED (a stop-loss that sold
        only part, or failed): what the market-data service watches (`starter.stop_losses.watched`)."""
        query = (
            select(Strategy)
            .where(Strategy.status.in_(("RUNNING", "SL_TRIGGERED")), Strategy.open_quantity > 0,
                   (Strategy.stop_loss_price.is_not(None)) | (Strategy.stop_loss_pct.is_not(None)))
            .order_by(Strategy.id)
        )
        async with self._read() as session:
            return [strategy_record(row) for row in await session.scalars(query)]
