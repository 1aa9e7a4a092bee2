"""EmergencyStopWorkflow: stop a user's strategies (or everyone's) at once, then clean up durably.

stop the strategies (one transaction: no new order passes validation from here on) → pause their
schedules → cancel their entries in flight and wait for them to end (exits keep working: they are
what a stop is for) → optionally square off open positions no exit covers, with ordinary order
workflows → CRITICAL alert.

Its id is `emergency-stop:user:{id}` or `emergency-stop:all`, started with conflict policy
USE_EXISTING: pressing the button twice joins the stop already running, and a stop after a finished
one runs the same idempotent steps again. A worker killed half-way leaves the rest to another.

AlertDeliveryWorkflow: delivers one alert to every configured sink, each retried on its own. The
workflow raising the alert starts it as a child it abandons, so a failing webhook never holds up the
order (or the stop) that raised it.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from pydantic import BaseModel
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, FailureError

with workflow.unsafe.imports_passed_through():
    from activities.alerts import AlertActivities
    from activities.control import (
        AlertDelivery,
        AlertDeliveryActivities,
        CancelOrders,
        ControlActivities,
        EmergencyStopRequest,
        OrderEnd,
        OrderRun,
        PauseSchedules,
        SquareOff,
        StoppedStrategies,
        WaitForOrders,
    )
    from engine.models import Alert, AlertLevel

EMERGENCY_STOP_WORKFLOW = "EmergencyStopWorkflow"
ALL_USERS_ID = "emergency-stop:all"

STEP_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200), backoff_coefficient=2.0, maximum_interval=timedelta(seconds=10)
)
# A cancelled order ends within its own timeout plus the cancel's grace; this only bounds a stuck wait.
ORDERS_END_WITHIN = timedelta(minutes=15)
# How long a crashed worker's waiting step goes unnoticed before another worker takes it over.
WAIT_HEARTBEAT_TIMEOUT = timedelta(seconds=5)
ALERT_DELIVERY_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=500), backoff_coefficient=2.0, maximum_interval=timedelta(minutes=1)
)
ALERT_DELIVERY_WITHIN = timedelta(hours=1)


def emergency_stop_id(user_id: int | None) -> str:
    return ALL_USERS_ID if user_id is None else f"emergency-stop:user:{user_id}"


class StopProgress(BaseModel):
    """What the progress query answers."""

    stage: str
    strategies_stopped: list[int] | None = None
    stopped_at: str | None = None
    schedules_paused: int | None = None
    orders_cancelled: list[OrderEnd] | None = None
    orders_filled_before_cancel: list[OrderEnd] | None = None
    exits_left_working: list[str] | None = None
    squared_off: list[OrderEnd] | None = None
    problems: list[str] = []


class EmergencyStopReport(BaseModel):
    """The workflow's result."""

    workflow_id: str
    scope: str
    reason: str
    requested_by: str
    strategies_stopped: list[int]
    stopped_at: str
    schedules_paused: int
    # The entries in flight it cancelled, as each ended at the broker: cancelled with nothing filled...
    orders_cancelled: list[OrderEnd]
    # ...or filled (wholly or in part) before the cancel reached it: the fill is kept and applied.
    orders_filled_before_cancel: list[OrderEnd] = []
    # Exits (SELL, SL_SELL, a square-off) it found working and left alone: exits are what a stop is for.
    exits_left_working: list[str] = []
    squared_off: list[OrderEnd]
    problems: list[str]


class AlertDeliveryRequest(BaseModel):
    alert: Alert


async def raise_alert(alert: Alert) -> None:
    """Log the alert now; hand its delivery to the configured sinks over to a workflow of its own."""
    has_sinks = await workflow.execute_local_activity_method(
        AlertActivities.log_alert, alert, start_to_close_timeout=timedelta(seconds=5)
    )
    if has_sinks:
        await deliver_alert_later(alert)


async def deliver_alert_later(alert: Alert) -> None:
    """Start the alert's delivery as a child this workflow abandons: it outlives the workflow, and a
    failing sink never holds it up."""
    info = workflow.info()
    await workflow.start_child_workflow(
        AlertDeliveryWorkflow.run,
        AlertDeliveryRequest(alert=alert),
        id=f"alert:{info.workflow_id}:{info.run_id}:{workflow.uuid4().hex[:12]}",
        parent_close_policy=workflow.ParentClosePolicy.ABANDON,
        static_summary=f"{alert.level} alert: {alert.title}",
    )


@workflow.defn(name="AlertDeliveryWorkflow")
class AlertDeliveryWorkflow:
    @workflow.run
    async def run(self, request: AlertDeliveryRequest) -> list[str]:
        """Deliver to every sink the worker has configured; returns the sinks that got it."""
        sinks = await workflow.execute_local_activity_method(
            AlertDeliveryActivities.configured_sinks, start_to_close_timeout=timedelta(seconds=5)
        )
        deliveries = [
            workflow.execute_activity_method(
                AlertDeliveryActivities.deliver_alert,
                AlertDelivery(sink=sink, alert=request.alert),
                start_to_close_timeout=timedelta(seconds=15),
                schedule_to_close_timeout=ALERT_DELIVERY_WITHIN,
                retry_policy=ALERT_DELIVERY_RETRY,
            )
            for sink in sinks
        ]
        outcomes = await asyncio.gather(*deliveries, return_exceptions=True)
        delivered = [sink for sink, outcome in zip(sinks, outcomes, strict=True) if outcome is None]
        if len(delivered) < len(sinks):
            undelivered = sorted(set(sinks) - set(delivered))
            raise ApplicationError(f"alert not delivered to {', '.join(undelivered)}", non_retryable=True)
        return delivered


@workflow.defn(name=EMERGENCY_STOP_WORKFLOW)
class EmergencyStopWorkflow:
    @workflow.init
    def __init__(self, request: EmergencyStopRequest) -> None:
        self._progress = StopProgress(stage="starting")
        self._stopped: StoppedStrategies | None = None
        self._refused: str | None = None
        self._square_off = request.square_off

    @workflow.update
    async def strategies_stopped(self, request: EmergencyStopRequest | None = None) -> StopProgress:
        """Answers once every strategy in scope is STOPPED (the rest goes on in the background).

        A press that joins this stop and asks for a square-off adds it, if this one had none."""
        if request is not None and request.square_off:
            self._square_off = True
        await workflow.wait_condition(lambda: self._stopped is not None or self._refused is not None)
        if self._refused is not None:
            raise ApplicationError(self._refused, type="EmergencyStopRefused", non_retryable=True)
        return self._progress

    @workflow.query
    def progress(self) -> StopProgress:
        return self._progress

    @workflow.run
    async def run(self, request: EmergencyStopRequest) -> EmergencyStopReport:
        # 1. At once, in one transaction: nothing of theirs passes validation from here on.
        self._set_stage("stopping strategies")
        try:
            stopped = await workflow.execute_local_activity_method(
                ControlActivities.stop_strategies,
                request,
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=STEP_RETRY,
            )
        except FailureError as refused:
            self._refused = _message(refused)
            raise ApplicationError(
                f"emergency stop of {request.scope} refused: {self._refused}", non_retryable=True
            ) from None
        self._stopped = stopped
        progress = self._progress
        progress.strategies_stopped = stopped.strategy_ids
        progress.stopped_at = stopped_at = stopped.stopped_at.isoformat()

        # 2. No schedule of theirs fires while they are stopped.
        self._set_stage("pausing schedules")
        progress.schedules_paused = paused = await workflow.execute_activity_method(
            ControlActivities.pause_schedules,
            PauseSchedules(strategy_ids=stopped.strategy_ids, note=f"emergency stop: {request.reason}"),
            start_to_close_timeout=timedelta(minutes=5),
            heartbeat_timeout=timedelta(seconds=30),
            retry_policy=STEP_RETRY,
        )

        # 3. Cancel the entries in flight and wait for each to end (a raced fill is kept and applied).
        # Exits in flight keep working, whoever started them: a stop never undoes an exit.
        self._set_stage("cancelling orders in flight")
        entries = [s.entry_in_flight for s in stopped.strategies if s.entry_in_flight is not None]
        progress.exits_left_working = exits = [
            s.exit_in_flight.workflow_id for s in stopped.strategies if s.exit_in_flight is not None
        ]
        ended = await self._cancel_and_wait(entries, request.reason)
        progress.orders_cancelled = cancelled = [end for end in ended if _cancelled(end)]
        progress.orders_filled_before_cancel = filled = [end for end in ended if end.filled_quantity > 0]
        progress.problems.extend(
            f"order {end.workflow_id} ended {end.outcome or end.status}: {end.message or 'see the order'}"
            for end in ended
            if end.outcome in (None, "UNRESOLVED")
        )

        progress.squared_off = squared_off = list[OrderEnd]()
        squared = False
        while True:
            # 4. Square off open positions through ordinary order workflows (an audited exception).
            if self._square_off and not squared:
                squared = True
                squared_off.extend(await self._square_off_positions(stopped, request))

            # 5. Tell a person.
            self._set_stage("alerting")
            report = EmergencyStopReport(
                workflow_id=workflow.info().workflow_id,
                scope=request.scope,
                reason=request.reason,
                requested_by=request.requested_by,
                strategies_stopped=stopped.strategy_ids,
                stopped_at=stopped_at,
                schedules_paused=paused,
                orders_cancelled=cancelled,
                orders_filled_before_cancel=filled,
                exits_left_working=exits,
                squared_off=squared_off,
                problems=list(progress.problems),
            )
            await raise_alert(
                Alert(
                    level=AlertLevel.CRITICAL,
                    title=f"emergency stop of {request.scope}",
                    message=_summary(report),
                    user_id=request.user_id,
                    workflow_id=report.workflow_id,
                    created_at=workflow.now(),
                )
            )
            if not self._square_off or squared:  # a square-off asked for meanwhile goes round once more
                break
        self._set_stage("done")
        return report

    async def _square_off_positions(self, stopped: StoppedStrategies, request: EmergencyStopRequest) -> list[OrderEnd]:
        self._set_stage("squaring off open positions")
        started = await workflow.execute_activity_method(
            ControlActivities.square_off,
            SquareOff(strategy_ids=stopped.strategy_ids, reason=request.reason, requested_by=request.requested_by),
            start_to_close_timeout=timedelta(minutes=5),
            retry_policy=STEP_RETRY,
        )
        self._progress.problems.extend(started.problems)
        ended = await self._wait_for(started.orders)
        self._progress.problems.extend(
            f"square-off {end.workflow_id} ended {end.outcome or end.status}: {end.message or 'see the order'}"
            for end in ended
            if end.outcome != "FILLED"
        )
        return ended

    async def _cancel_and_wait(self, orders: list[OrderRun], reason: str) -> list[OrderEnd]:
        if not orders:
            return []
        signalled = await workflow.execute_activity_method(
            ControlActivities.cancel_orders,
            CancelOrders(orders=orders, reason=f"emergency stop: {reason}"),
            start_to_close_timeout=timedelta(minutes=2),
            retry_policy=STEP_RETRY,
        )
        return await self._wait_for(signalled)

    async def _wait_for(self, orders: list[OrderRun]) -> list[OrderEnd]:
        if not orders:
            return []
        return await workflow.execute_activity_method(
            ControlActivities.wait_for_orders,
            WaitForOrders(orders=orders),
            start_to_close_timeout=ORDERS_END_WITHIN,
            heartbeat_timeout=WAIT_HEARTBEAT_TIMEOUT,
            retry_policy=STEP_RETRY,
        )

    def _set_stage(self, stage: str) -> None:
        self._progress.stage = stage
        workflow.set_current_details(stage)


def _message(error: FailureError) -> str:
    cause = error.cause if isinstance(error, ActivityError) else error
    return cause.message if isinstance(cause, FailureError) else str(error)


def _cancelled(end: OrderEnd) -> bool:
    """Cancelled with nothing filled: at the broker, or before it left for the broker."""
    return end.outcome == "CANCELLED" and end.filled_quantity == 0


def _summary(report: EmergencyStopReport) -> str:
    parts = [
        f"{len(report.strategies_stopped)} strategies stopped by {report.requested_by} ({report.reason})",
        f"{report.schedules_paused} schedules paused",
        f"{len(report.orders_cancelled)} entries in flight cancelled",
    ]
    if report.orders_filled_before_cancel:
        held = sum(end.filled_quantity for end in report.orders_filled_before_cancel)
        parts.append(f"{len(report.orders_filled_before_cancel)} entries filled before the cancel ({held} shares held)")
    if report.exits_left_working:
        parts.append(f"{len(report.exits_left_working)} exits left working")
    if report.squared_off:
        filled = sum(1 for end in report.squared_off if end.outcome == "FILLED")
        parts.append(f"{filled} of {len(report.squared_off)} positions squared off")
    if report.problems:
        parts.append("needs a person: " + "; ".join(report.problems))
    return "; ".join(parts)
