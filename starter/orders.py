"""Starting order workflows: the entry points every starter (API, CLI, schedules, listeners) uses.

`place_buy_order(strategy)`, `place_sell_order(strategy)` and `place_sl_sell_order(strategy,
trigger_price)` start one `OrderWorkflow` under the intent's workflow id. Temporal refuses a second start
of the same id while one runs, and after one that succeeded: a repeated trigger raises
`DuplicateOrderError` naming the workflow that already handles it.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from temporalio.client import Client, WorkflowHandle
from temporalio.exceptions import WorkflowAlreadyStartedError

from engine.errors import DuplicateOrderError
from engine.ids import OrderType
from engine.models import OrderIntent, OrderResult
from engine.order_start import intent_workflow_id, order_start_options
from engine.settings import Settings
from store import Store
from store.records import ExitReason, StrategyRecord, StrategyStatus
from workflows.order import OrderWorkflow


class NothingToExit(ValueError):
    """An exit was asked of a strategy that holds nothing."""

    def __init__(self, strategy: StrategyRecord):
        super().__init__(
            f"strategy {strategy.id} ({strategy.name}) holds no {strategy.symbol}: there is nothing to exit"
        )
        self.strategy_id = strategy.id


STOP_LOSS_PRIORITY = 1  # lower runs first; stop-losses overtake routine entries and exits
ROUTINE_PRIORITY = 3

OrderHandle = WorkflowHandle[OrderWorkflow, OrderResult]


class OrderStarter:
    def __init__(self, client: Client, store: Store, settings: Settings):
        self.client = client
        self.store = store
        self.settings = settings

    async def place_buy_order(
        self, strategy: StrategyRecord | int, *, requested_by: str = "system", reason: str | None = None
    ) -> OrderHandle:
        return await self.start_order(strategy, OrderType.BUY, requested_by=requested_by, reason=reason)

    async def place_sell_order(
        self, strategy: StrategyRecord | int, *, requested_by: str = "system", reason: str | None = None
    ) -> OrderHandle:
        return await self.start_order(strategy, OrderType.SELL, requested_by=requested_by, reason=reason)

    async def place_sl_sell_order(
        self,
        strategy: StrategyRecord | int,
        trigger_price: Decimal,
        *,
        trigger_tick_at: datetime | None = None,
        requested_by: str = "market-data",
        reason: str | None = None,
    ) -> OrderHandle:
        """`trigger_price` and `trigger_tick_at`: the price and arrival time of the tick that crossed the stop."""
        if not isinstance(trigger_price, Decimal):
            raise TypeError(f"trigger_price must be a Decimal, got {type(trigger_price).__name__}")
        if trigger_tick_at is not None and trigger_tick_at.tzinfo is None:
            raise ValueError("trigger_tick_at must carry a time zone (e.g. datetime.now(UTC))")
        return await self.start_order(
            strategy,
            OrderType.SL_SELL,
            trigger_price=trigger_price,
            trigger_tick_at=trigger_tick_at,
            requested_by=requested_by,
            reason=reason or f"stop-loss triggered at {trigger_price}",
        )

    async def exit_position(
        self, strategy: StrategyRecord | int, *, requested_by: str, reason: str | None = None
    ) -> OrderHandle:
        """An operator's market SELL of whatever the strategy still holds, whatever its state: after a
        partial exit, a failed stop-loss or an emergency stop without square-off. It shares the exit leg
        (or its remainder's) with every other exit, so it never runs beside another exit of the position."""
        record = strategy if isinstance(strategy, StrategyRecord) else await self.store.get_strategy(strategy)
        if record.open_quantity <= 0:
            raise NothingToExit(record)
        return await self.start_order(
            record,
            OrderType.SELL,
            requested_by=requested_by,
            reason=reason or f"exit of the position by {requested_by}",
            exit_reason=ExitReason.MANUAL,
            # A STOPPED strategy accepts only a square-off: the operator's exit is one.
            square_off=record.status == StrategyStatus.STOPPED,
        )

    async def start_order(
        self,
        strategy: StrategyRecord | int,
        order_type: OrderType,
        *,
        trigger_price: Decimal | None = None,
        trigger_tick_at: datetime | None = None,
        requested_by: str = "system",
        reason: str | None = None,
        exit_reason: ExitReason | None = None,
        square_off: bool = False,
    ) -> OrderHandle:
        record = strategy if isinstance(strategy, StrategyRecord) else await self.store.get_strategy(strategy)
        workflow_id = intent_workflow_id(record, order_type)
        if order_type is not OrderType.BUY and exit_reason is None:
            exit_reason = ExitReason.default_for(order_type.value)
        intent = OrderIntent(
            strategy_id=record.id,
            user_id=record.user_id,
            order_type=order_type,
            trigger_price=trigger_price,
            trigger_tick_at=trigger_tick_at,
            requested_by=requested_by,
            reason=reason,
            exit_reason=exit_reason.value if exit_reason is not None else None,
            square_off=square_off,
        )
        urgent = order_type is OrderType.SL_SELL or exit_reason in (ExitReason.MANUAL, ExitReason.SQUARE_OFF)
        quantity = record.quantity if order_type is OrderType.BUY else record.open_quantity
        try:
            return await self.client.start_workflow(
                OrderWorkflow.run,
                intent,
                id=workflow_id,
                request_eager_start=True,
                **order_start_options(
                    self.settings,
                    record,
                    order_type,
                    priority_key=STOP_LOSS_PRIORITY if urgent else ROUTINE_PRIORITY,
                    summary=f"{order_type} {quantity} {record.symbol} for strategy {record.id} ({record.name})",
                    details=f"requested by {requested_by}" + (f": {reason}" if reason else ""),
                    exit_reason=intent.exit_reason,
                ),
            )
        except WorkflowAlreadyStartedError:
            existing = self.client.get_workflow_handle(workflow_id)
            description = await existing.describe()
            status = description.status.name if description.status else "UNKNOWN"
            raise DuplicateOrderError(workflow_id, status) from None
