"""Starting order workflows: the entry points every starter (API, CLI, schedules, listeners) uses.

`place_buy_order(strategy)`, `place_sell_order(strategy)` and `place_sl_sell_order(strategy,
trigger_price)` start one `OrderWorkflow` under the intent's workflow id. Temporal refuses a second start
of the same id while one runs, and after one that succeeded: a repeated trigger raises
`DuplicateOrderError` naming the workflow that already handles it.
"""

from __future__ import annotations

from decimal import Decimal

from temporalio.client import Client, WorkflowHandle
from temporalio.exceptions import WorkflowAlreadyStartedError

from engine.errors import DuplicateOrderError
from engine.ids import OrderType, order_workflow_id
from engine.models import OrderIntent, OrderResult
from engine.order_start import order_start_options
from engine.settings import Settings
from store import Store
from store.records import StrategyRecord
from workflows.order import OrderWorkflow

STOP_LOSS_PRIORITY = 1  # lower runs first; stop-losses overtake routine entries and exits
ROUTINE_PRIORITY = 3

OrderHandle = WorkflowHandle[OrderWorkflow, OrderResult]


def intent_workflow_id(strategy: StrategyRecord, order_type: OrderType) -> str:
    """The entry leg is the current cycle's; an exit belongs to the open position's cycle, or, when flat,
    to the cycle that just closed — so a repeated exit finds the completed one and is refused."""
    cycle = strategy.position_cycle
    if order_type is not OrderType.BUY and strategy.open_quantity <= 0:
        cycle -= 1
    return order_workflow_id(strategy.id, cycle, order_type)


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
        requested_by: str = "market-data",
        reason: str | None = None,
    ) -> OrderHandle:
        if not isinstance(trigger_price, Decimal):
            raise TypeError(f"trigger_price must be a Decimal, got {type(trigger_price).__name__}")
        return await self.start_order(
            strategy,
            OrderType.SL_SELL,
            trigger_price=trigger_price,
            requested_by=requested_by,
            reason=reason or f"stop-loss triggered at {trigger_price}",
        )

    async def start_order(
        self,
        strategy: StrategyRecord | int,
        order_type: OrderType,
        *,
        trigger_price: Decimal | None = None,
        requested_by: str = "system",
        reason: str | None = None,
    ) -> OrderHandle:
        record = strategy if isinstance(strategy, StrategyRecord) else await self.store.get_strategy(strategy)
        workflow_id = intent_workflow_id(record, order_type)
        intent = OrderIntent(
            strategy_id=record.id,
            user_id=record.user_id,
            order_type=order_type,
            trigger_price=trigger_price,
            requested_by=requested_by,
            reason=reason,
        )
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
                    priority_key=STOP_LOSS_PRIORITY if order_type is OrderType.SL_SELL else ROUTINE_PRIORITY,
                    summary=f"{order_type} {quantity} {record.symbol} for strategy {record.id} ({record.name})",
                    details=f"requested by {requested_by}" + (f": {reason}" if reason else ""),
                ),
            )
        except WorkflowAlreadyStartedError:
            existing = self.client.get_workflow_handle(workflow_id)
            description = await existing.describe()
            status = description.status.name if description.status else "UNKNOWN"
            raise DuplicateOrderError(workflow_id, status) from None
