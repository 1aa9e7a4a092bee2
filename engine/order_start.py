"""How an order workflow is started, wherever it is started from (starters, schedules, square-off)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Protocol

from temporalio.common import (
    Priority,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)

from engine.ids import OrderType
from engine.settings import Settings
from engine.temporal import ORDER_STATUS, ORDER_TYPE, STRATEGY_ID, SYMBOL, USER_ID


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


def order_start_options(
    settings: Settings,
    strategy: OrderedStrategy,
    order_type: OrderType,
    *,
    priority_key: int,
    summary: str,
    details: str,
) -> dict[str, Any]:
    """`Client.start_workflow` keyword arguments for one order of `strategy` (all but id and input)."""
    return {
        "task_queue": settings.task_queue,
        # A second start of the same intent is refused while one runs, and after one that succeeded.
        "id_conflict_policy": WorkflowIDConflictPolicy.FAIL,
        "id_reuse_policy": WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
        # A replay after a crash re-runs the placement; the task timeout outlasts a broker request.
        "task_timeout": timedelta(seconds=max(10.0, settings.broker_http_timeout_seconds + 3)),
        "search_attributes": TypedSearchAttributes(
            [
                SearchAttributePair(STRATEGY_ID, str(strategy.id)),
                SearchAttributePair(USER_ID, str(strategy.user_id)),
                SearchAttributePair(ORDER_TYPE, order_type.value),
                SearchAttributePair(SYMBOL, strategy.symbol),
                SearchAttributePair(ORDER_STATUS, "STARTED"),
            ]
        ),
        "static_summary": summary,
        "static_details": details,
        "priority": Priority(priority_key=priority_key, fairness_key=f"account-{strategy.broker_account_id}"),
    }
