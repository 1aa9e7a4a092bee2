"""ScheduledOrderWorkflow: what a strategy's Temporal Schedule starts at its entry or exit time.

A Schedule can only start a workflow with a fixed input, but an order's workflow id depends on the
strategy's position cycle at the moment it fires. So the schedule starts this small workflow, and its
one local activity starts the order through the ordinary entry point (`OrderStarter.start_order`). A
schedule that fires twice meets the order workflow's id the second time: one order, and a clean
"already handled" result here.
"""

from __future__ import annotations

from datetime import datetime, time, timedelta
from enum import StrEnum

from pydantic import BaseModel, Field
from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey

with workflow.unsafe.imports_passed_through():
    from engine.ids import OrderType

# The activity lives with the schedules (starter.schedules.ScheduledOrderActivities); the name ties them.
START_SCHEDULED_ORDER = "start_scheduled_order"
# Set by the Temporal server on every workflow a schedule starts: the time the action was due.
SCHEDULED_START_TIME = SearchAttributeKey.for_datetime("TemporalScheduledStartTime")


class ScheduledOrder(BaseModel):
    """The schedule's fixed input: which strategy, which leg, and how late the order may still go out."""

    strategy_id: int
    order_type: OrderType
    schedule_id: str
    max_delay_seconds: float = Field(default=60.0, gt=0)
    # The time of day (IST) the schedule was made for: a fire counts only while the strategy still has it.
    at: time | None = None
    # Set by the workflow for its activity: the moment this fire was due, when a schedule started it.
    due_at: datetime | None = None


class ScheduledOutcome(StrEnum):
    STARTED = "STARTED"  # an order workflow was started
    ALREADY_HANDLED = "ALREADY_HANDLED"  # this leg's order workflow already exists: nothing new was sent
    # No order: the strategy is stopped or gone, holds nothing to exit, no longer has this time, or the
    # due time has passed.
    SKIPPED = "SKIPPED"


class ScheduledOrderResult(BaseModel):
    outcome: ScheduledOutcome
    order_workflow_id: str | None = None
    message: str


@workflow.defn(name="ScheduledOrderWorkflow")
class ScheduledOrderWorkflow:
    @workflow.run
    async def run(self, request: ScheduledOrder) -> ScheduledOrderResult:
        info = workflow.info()
        due = info.typed_search_attributes.get(SCHEDULED_START_TIME) or info.workflow_start_time
        remaining = due + timedelta(seconds=request.max_delay_seconds) - workflow.now()
        if remaining <= timedelta(0):
            # A market order that missed its time must not go out late.
            return ScheduledOrderResult(
                outcome=ScheduledOutcome.SKIPPED,
                message=f"due at {due.isoformat()}, more than {request.max_delay_seconds:g}s ago: not sent late",
            )
        return await workflow.execute_local_activity(
            START_SCHEDULED_ORDER,
            request.model_copy(update={"due_at": info.typed_search_attributes.get(SCHEDULED_START_TIME)}),
            result_type=ScheduledOrderResult,
            schedule_to_close_timeout=remaining,
            start_to_close_timeout=min(remaining, timedelta(seconds=15)),
            # Only transient failures (Temporal or the database unreachable) come out of the activity.
            retry_policy=RetryPolicy(
                initial_interval=timedelta(milliseconds=500), maximum_interval=timedelta(seconds=5)
            ),
        )
