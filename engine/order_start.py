"""How an order workflow is started, wherever it is started from (starters, schedules, square-off)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Protocol

from temporalio.common import (
    Priority,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)

from engine.ids import OrderType, order_workflow_id
from engine.settings import Settings
from engine.temporal import EXIT_REASON, ORDER_STATUS, ORDER_TYPE, STRATEGY_ID, SYMBOL, USER_ID


class OrderedStrategy(Protocol):
    """What starting an order needs to know of its strategy (the store's StrategyRecord is one)."""

    @property
    def id(self) -> int: ...
    @property
    def user_id(self) -> int: ...
    @property
    def symbol(self) -> str: ...
    @property
    def broker_account_id(self) -> int: ...
    @property
    def position_cycle(self) -> int: ...
    @property
    def open_quantity(self) -> int: ...
    @property
    def last_order_workflow_id(self) -> str | None: ...
    @property
    def exit_filled_at(self) -> datetime | None: ...


def intent_workflow_id(strategy: OrderedStrategy, order_type: OrderType) -> str:
    """The workflow id of an intent, from the strategy's state: equal triggers get equal ids.

    The entry leg is the current cycle's. An exit belongs to the open position's cycle; once part of
    the position was sold (an exit filled in this cycle), it names the remainder it sells. When flat,
    an exit is the one that closed the last cycle, so a repeated exit finds it completed and is refused.
    """
    cycle = strategy.position_cycle
    if order_type is OrderType.BUY:
        return order_workflow_id(strategy.id, cycle, order_type)
    if strategy.open_quantity <= 0:
        last = (strategy.last_order_workflow_id or "").partition("/")[0]
        if last.startswith(f"order:{strategy.id}:{cycle - 1}:exit"):
            return last
        return order_workflow_id(strategy.id, cycle - 1, order_type)
    partly_sold = strategy.exit_filled_at is not None
    return order_workflow_id(strategy.id, cycle, order_type, strategy.open_quantity if partly_sold else None)


def order_start_options(
    settings: Settings,
    strategy: OrderedStrategy,
    order_type: OrderType,
    *,
    priority_key: int,
    summary: str,
    details: str,
    exit_reason: str | None = None,
) -> dict[str, Any]:
    """`Client.start_workflow` keyword arguments for one order of `strategy` (all but id and input)."""
    labels = [
        SearchAttributePair(STRATEGY_ID, str(strategy.id)),
        SearchAttributePair(USER_ID, str(strategy.user_id)),
        SearchAttributePair(ORDER_TYPE, order_type.value),
        SearchAttributePair(SYMBOL, strategy.symbol),
        SearchAttributePair(ORDER_STATUS, "STARTED"),
    ]
    if exit_reason is not None:
        labels.append(SearchAttributePair(EXIT_REASON, exit_reason))
    return {
        "task_queue": settings.task_queue,
        # A second start of the same intent is refused while one runs, and after one that succeeded.
        "id_conflict_policy": WorkflowIDConflictPolicy.FAIL,
        "id_reuse_policy": WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
        # A replay after a crash re-runs the placement; the task timeout outlasts a broker request.
        "task_timeout": timedelta(seconds=max(10.0, settings.broker_http_timeout_seconds + 3)),
        "search_attributes": TypedSearchAttributes(labels),
        "static_summary": summary,
        "static_details": details,
        "priority": Priority(priority_key=priority_key, fairness_key=f"account-{strategy.broker_account_id}"),
    }
