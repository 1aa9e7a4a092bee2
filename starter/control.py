"""Control entry points for the API and the command line: cancel an order, emergency stop, manual
intervention.

    answer = await cancel_order(client, "order:42:3:entry", "changed my mind")
    workflow_id = await start_emergency_stop(client, settings, user_id=7, square_off=True,
                                             reason="broker outage", requested_by="alice")
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.common import Priority, WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.control import EmergencyStopRequest
from engine.models import CancelAnswer, OrderResult, Outcome
from engine.settings import Settings
from engine.temporal import ended_order_result
from store import Store
from store.records import StrategyRecord
from workflows.emergency_stop import EmergencyStopReport, EmergencyStopWorkflow, emergency_stop_id
from workflows.order import OrderWorkflow

OrderHandle = WorkflowHandle[OrderWorkflow, OrderResult]

# How the order workflow's request_cancel answers when the order ended before any cancel reached the broker.
ENDED_BEFORE_CANCEL = "the order already ended"
# The stop's first step is one database transaction; this only bounds a caller kept waiting by an outage.
STOPPED_CONFIRMATION_TIMEOUT = timedelta(seconds=60)
EMERGENCY_PRIORITY = 1  # ahead of routine work, like a stop-loss


class ControlError(Exception):
    """Base of the control entry points' errors."""


class InvalidControlRequest(ControlError, ValueError):
    """The request itself is wrong; the message says what to fix. Retrying it unchanged fails again."""


class UnknownOrder(ControlError, LookupError):
    def __init__(self, workflow_id: str):
        super().__init__(f"no order workflow {workflow_id!r}; take the id from the answer that started the order")
        self.workflow_id = workflow_id


class OrderAlreadyFinished(ControlError):
    """The order ended before the cancel reached it: there is nothing left to cancel."""

    def __init__(self, workflow_id: str, outcome: str, message: str | None = None):
        text = f"order {workflow_id} already ended as {outcome}; there is nothing left to cancel"
        super().__init__(text + (f" ({message})" if message else ""))
        self.workflow_id = workflow_id
        self.outcome = outcome


class EmergencyStopRefused(ControlError):
    """The stop could not stop the strategies (e.g. an unknown user); nothing was changed."""


class EmergencyStopUnconfirmed(ControlError):
    """The stop was started, but did not confirm in time that the strategies are stopped."""

    def __init__(self, workflow_id: str, waited: timedelta):
        super().__init__(
            f"emergency stop {workflow_id} is running, but the strategies were not confirmed stopped within "
            f"{waited.total_seconds():g}s (is the database reachable?); it keeps trying: follow the workflow"
        )
        self.workflow_id = workflow_id


# Cancel.


async def cancel_order(client: Client, workflow_id: str, reason: str) -> CancelAnswer:
    """Cancel an order in flight and answer once the broker answered the cancel.

    `accepted=False` with the broker's message when the broker refused it — usually because a fill
    raced the cancel; that fill is kept and applied. Raises OrderAlreadyFinished when the order had
    ended before, UnknownOrder for an id no order workflow has.
    """
    reason = _text(reason, "reason")
    workflow_id = _text(workflow_id, "workflow_id")
    handle: OrderHandle = client.get_workflow_handle(workflow_id, result_type=OrderResult)
    try:
        description = await handle.describe()
    except RPCError as error:
        if error.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT):
            raise UnknownOrder(workflow_id) from None
        raise
    if description.status != WorkflowExecutionStatus.RUNNING:
        raise await _already_finished(client, workflow_id)
    run: OrderHandle = client.get_workflow_handle(workflow_id, run_id=description.run_id, result_type=OrderResult)
    try:
        answer = await run.execute_update(OrderWorkflow.request_cancel, reason)
    except (WorkflowUpdateFailedError, RPCError) as error:
        if isinstance(error, RPCError) and error.status not in (RPCStatusCode.NOT_FOUND,):
            raise
        raise await _already_finished(client, workflow_id) from None  # it ended as the update arrived
    await _request_cancellation(run)
    if answer.accepted:
        return answer
    ended = await _ended_as(client, workflow_id)
    if ended is None:
        return answer  # the broker refused the cancel; the order goes on to its end
    outcome, message = ended
    if outcome == Outcome.CANCELLED.value:  # cancelled before it reached the broker
        return CancelAnswer(accepted=True, message=message or "cancelled before it reached the broker")
    if not answer.message.startswith(ENDED_BEFORE_CANCEL):
        return answer  # the broker refused the cancel (a fill raced it) and the order has ended since
    raise OrderAlreadyFinished(workflow_id, outcome, message)


async def _request_cancellation(run: WorkflowHandle[Any, Any]) -> None:
    """Temporal's cancel request after the order's own cancel: a run that ends with nothing filled
    then reads "Canceled" in the UI (workflows/order.py). A run that has ended already needs none."""
    try:
        await run.cancel()
    except RPCError as error:
        if error.status not in (RPCStatusCode.NOT_FOUND, RPCStatusCode.FAILED_PRECONDITION):
            raise


async def _already_finished(client: Client, workflow_id: str) -> OrderAlreadyFinished:
    ended = await _ended_as(client, workflow_id)
    outcome, message = ended if ended is not None else ("RUNNING", None)
    return OrderAlreadyFinished(workflow_id, outcome, message)


async def _ended_as(client: Client, workflow_id: str) -> tuple[str, str | None] | None:
    """(outcome, message) of the order's latest run, or None while it runs."""
    handle: OrderHandle = client.get_workflow_handle(workflow_id, result_type=OrderResult)
    description = await handle.describe()
    if description.status == WorkflowExecutionStatus.RUNNING:
        return None
    try:
        result: OrderResult = await handle.result(follow_runs=False)
    except WorkflowFailureError as failed:
        ended = await ended_order_result(handle, failed)
        if ended is not None:
            return ended.outcome.value, ended.message
        status = description.status.name if description.status else "ENDED"
        return status, str(failed.cause or failed)
    return result.outcome.value, result.message


# Emergency stop.


async def start_emergency_stop(
    client: Client,
    settings: Settings,
    *,
    user_id: int | None,
    square_off: bool,
    reason: str,
    requested_by: str,
) -> str:
    """Start (or join) the emergency stop of a user, or of every user with `user_id=None`; returns its
    workflow id once every strategy in scope is STOPPED. Cancelling orders in flight, squaring off
    and the alert go on durably in the workflow (`wait_for_emergency_stop` waits for its report)."""
    if user_id is not None and (isinstance(user_id, bool) or not isinstance(user_id, int) or user_id < 1):
        raise InvalidControlRequest(f"user_id must be a positive whole number, or None for every user; got {user_id!r}")
    request = EmergencyStopRequest(
        user_id=user_id,
        square_off=bool(square_off),
        reason=_text(reason, "reason"),
        requested_by=_text(requested_by, "requested_by"),
    )
    workflow_id = emergency_stop_id(user_id)
    start = WithStartWorkflowOperation(
        EmergencyStopWorkflow.run,
        request,
        id=workflow_id,
        task_queue=settings.task_queue,
        # Pressed twice: the second joins the stop already running.
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        static_summary=f"EMERGENCY STOP of {request.scope}" + (" with square-off" if square_off else ""),
        static_details=f"requested by {request.requested_by}: {request.reason}",
        priority=Priority(priority_key=EMERGENCY_PRIORITY),
    )
    try:
        await asyncio.wait_for(
            # The request rides on the update too: a press that joins a running stop can add a square-off.
            client.execute_update_with_start_workflow(
                EmergencyStopWorkflow.strategies_stopped, request, start_workflow_operation=start
            ),
            STOPPED_CONFIRMATION_TIMEOUT.total_seconds(),
        )
    except TimeoutError:
        raise EmergencyStopUnconfirmed(workflow_id, STOPPED_CONFIRMATION_TIMEOUT) from None
    except WorkflowUpdateFailedError as failed:
        cause = failed.cause
        raise EmergencyStopRefused(cause.message if isinstance(cause, ApplicationError) else str(failed)) from None
    return workflow_id


async def wait_for_emergency_stop(client: Client, workflow_id: str) -> EmergencyStopReport:
    """The stop's report, once it has cancelled, squared off and alerted."""
    handle: WorkflowHandle[EmergencyStopWorkflow, EmergencyStopReport] = client.get_workflow_handle(
        workflow_id, result_type=EmergencyStopReport
    )
    return await handle.result()


# Manual intervention.


async def list_interventions(store: Store, user_id: int | None = None) -> list[StrategyRecord]:
    """Strategies waiting for a person (a partial fill, a timeout, an exit that failed), oldest first."""
    return await store.list_interventions(user_id)


async def clear_intervention(store: Store, strategy_id: int, cleared_by: str) -> StrategyRecord:
    """Mark a strategy's intervention done; the reason and time stay on record."""
    return await store.clear_intervention(strategy_id, _text(cleared_by, "cleared_by"))


def _text(value: object, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidControlRequest(f"{name} must be a non-empty text, got {value!r}")
    return value.strip()
