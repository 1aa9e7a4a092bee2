"""Control's side effects: the emergency stop's steps, and alert delivery to pluggable sinks.

`ControlActivities` holds the store, a Temporal client (to pause schedules, signal and start order
workflows) and the settings; `AlertDeliveryActivities` holds the configured `AlertSink`s. Every
activity here is idempotent: a retry after a crash repeats nothing that already happened.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Protocol

import httpx
from pydantic import BaseModel
from temporalio import activity
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
)
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from engine.ids import OrderType
from engine.models import Alert, OrderIntent, OrderResult
from engine.order_start import intent_workflow_id, order_start_options
from engine.settings import Settings
from engine.temporal import ended_order_result
from store import Store
from store.errors import StoreError
from store.records import ExitReason

log = logging.getLogger(__name__)

# The Temporal schedules of a strategy (see starter.schedules): its entry and its exit.
SCHEDULE_LEGS = ("entry", "exit")
# Task priority of a square-off: ahead of routine work, like a stop-loss (starter.orders.STOP_LOSS_PRIORITY).
SQUARE_OFF_PRIORITY = 1
# How often a waiting activity tells Temporal it is alive.
HEARTBEAT_SECONDS = 1.0


def strategy_schedule_ids(strategy_id: int) -> list[str]:
    return [f"strategy:{strategy_id}:{leg}" for leg in SCHEDULE_LEGS]


# Payloads: one model in, one out.


class EmergencyStopRequest(BaseModel):
    user_id: int | None  # None: every user's strategies (an administrator's global stop)
    square_off: bool = False
    reason: str
    requested_by: str

    @property
    def scope(self) -> str:
        return "every user" if self.user_id is None else f"user {self.user_id}"


class OrderRun(BaseModel):
    """One run of an order workflow (the store's order key is `workflow_id/run_id`)."""

    workflow_id: str
    run_id: str | None = None

    @classmethod
    def from_order_key(cls, order_key: str) -> OrderRun:
        workflow_id, _, run_id = order_key.rpartition("/")
        return cls(workflow_id=workflow_id, run_id=run_id) if workflow_id else cls(workflow_id=order_key)


class StoppedStrategy(BaseModel):
    strategy_id: int
    user_id: int
    open_quantity: int
    order_in_flight: OrderRun | None = None
    # BUY, SELL or SL_SELL: a stop cancels entries and leaves exits working.
    order_in_flight_type: str | None = None

    @property
    def entry_in_flight(self) -> OrderRun | None:
        return self.order_in_flight if self.order_in_flight_type == OrderType.BUY.value else None

    @property
    def exit_in_flight(self) -> OrderRun | None:
        return self.order_in_flight if self.order_in_flight_type != OrderType.BUY.value else None


class StoppedStrategies(BaseModel):
    """What the stop's first step did: every strategy in scope is STOPPED as of `stopped_at`."""

    strategies: list[StoppedStrategy]
    stopped_at: datetime

    @property
    def strategy_ids(self) -> list[int]:
        return [strategy.strategy_id for strategy in self.strategies]


class PauseSchedules(BaseModel):
    strategy_ids: list[int]
    note: str


class CancelOrders(BaseModel):
    orders: list[OrderRun]
    reason: str


class WaitForOrders(BaseModel):
    orders: list[OrderRun]


class OrderEnd(BaseModel):
    """How an order workflow ended, as the stop reports it."""

    workflow_id: str
    status: str  # the workflow's: COMPLETED, FAILED, TERMINATED, ...
    outcome: str | None = None  # the order's: FILLED, CANCELLED, ...
    filled_quantity: int = 0
    message: str | None = None


class SquareOff(BaseModel):
    strategy_ids: list[int]
    reason: str
    requested_by: str


class SquareOffStarted(BaseModel):
    orders: list[OrderRun]
    problems: list[str]


class AlertDelivery(BaseModel):
    sink: str
    alert: Alert


# The emergency stop's steps.


def _refusal(error: StoreError) -> Exception:
    """A store error as the activity raises it: retried only when trying again can help."""
    if error.retryable:
        return error
    return ApplicationError(str(error), type=type(error).__name__, non_retryable=True)


class ControlActivities:
    def __init__(self, store: Store, client: Client, settings: Settings):
        self.store = store
        self.client = client
        self.settings = settings

    @activity.defn(name="stop_strategies")
    async def stop_strategies(self, request: EmergencyStopRequest) -> StoppedStrategies:
        """Every strategy in scope STOPPED, in one transaction: from its commit on, no new order of
        theirs passes validation. Orders that passed before are named, to be cancelled."""
        reason = f"emergency stop by {request.requested_by}: {request.reason}"
        try:
            records = await self.store.stop_strategies(request.user_id, reason)
            strategies = []
            for record in records:
                stopped = StoppedStrategy(strategy_id=record.id, user_id=record.user_id,
                                          open_quantity=record.open_quantity)
                if record.active_order_workflow_id:
                    order = await self.store.get_order(record.active_order_workflow_id)
                    stopped.order_in_flight = OrderRun.from_order_key(record.active_order_workflow_id)
                    stopped.order_in_flight_type = order.order_type
                strategies.append(stopped)
        except StoreError as error:
            raise _refusal(error) from None
        return StoppedStrategies(
            strategies=strategies,
            stopped_at=max((r.stopped_at for r in records if r.stopped_at), default=datetime.now(UTC)),
        )

    @activity.defn(name="pause_strategy_schedules")
    async def pause_schedules(self, request: PauseSchedules) -> int:
        """Pause the strategies' entry and exit schedules; returns how many exist. A strategy without
        schedules is fine, and pausing a paused schedule again changes nothing."""
        paused = 0
        for strategy_id in request.strategy_ids:
            for schedule_id in strategy_schedule_ids(strategy_id):
                try:
                    await self.client.get_schedule_handle(schedule_id).pause(note=request.note)
                except RPCError as error:
                    if error.status == RPCStatusCode.NOT_FOUND:
                        continue
                    raise
                paused += 1
            activity.heartbeat(strategy_id)
        return paused

    @activity.defn(name="cancel_orders_in_flight")
    async def cancel_orders(self, request: CancelOrders) -> list[OrderRun]:
        """Signal `cancel` to each order run; returns them all, those that ended before the signal too:
        the stop reports how each one ended."""
        for order in request.orders:
            handle = self.client.get_workflow_handle(order.workflow_id, run_id=order.run_id)
            try:
                await handle.signal("cancel", request.reason)
                await handle.cancel()  # the run then reads "Canceled" when nothing filled (workflows/order.py)
            except RPCError as error:
                if error.status not in (RPCStatusCode.NOT_FOUND, RPCStatusCode.FAILED_PRECONDITION):
                    raise  # NOT_FOUND, FAILED_PRECONDITION: that run has already ended
        return list(request.orders)

    @activity.defn(name="wait_for_orders_to_end")
    async def wait_for_orders(self, request: WaitForOrders) -> list[OrderEnd]:
        """Wait until every order run has ended; heartbeats while it waits."""
        waits = [asyncio.create_task(self._order_end(order)) for order in request.orders]
        try:
            pending: set[asyncio.Task[OrderEnd]] = set(waits)
            while pending:
                _, pending = await asyncio.wait(pending, timeout=HEARTBEAT_SECONDS)
                activity.heartbeat(len(pending))
            return [wait.result() for wait in waits]
        finally:
            for wait in waits:
                wait.cancel()

    async def _order_end(self, order: OrderRun) -> OrderEnd:
        handle: WorkflowHandle[object, OrderResult] = self.client.get_workflow_handle(
            order.workflow_id, run_id=order.run_id, result_type=OrderResult
        )
        try:
            result = await handle.result(follow_runs=False)
        except WorkflowFailureError as failed:
            ended = await ended_order_result(handle, failed)
            description = await handle.describe()
            status = description.status.name if description.status else "UNKNOWN"
            if ended is not None:
                return OrderEnd(
                    workflow_id=order.workflow_id, status=status, outcome=ended.outcome.value,
                    filled_quantity=ended.filled_quantity, message=ended.message,
                )
            return OrderEnd(workflow_id=order.workflow_id, status=status, message=str(failed.cause or failed))
        return OrderEnd(
            workflow_id=order.workflow_id, status="COMPLETED", outcome=result.outcome.value,
            filled_quantity=result.filled_quantity, message=result.message,
        )

    @activity.defn(name="square_off_positions")
    async def square_off(self, request: SquareOff) -> SquareOffStarted:
        """A market SELL of each stopped strategy's open position, as an ordinary order workflow.

        Idempotent: the SELL's workflow id is the position's exit leg, so a retry finds the order it
        started before instead of starting another. An exit already working is waited for instead."""
        started: list[OrderRun] = []
        problems: list[str] = []
        for strategy_id in request.strategy_ids:
            try:
                strategy = await self.store.get_strategy(strategy_id)
                working = None
                if strategy.active_order_workflow_id:
                    working = await self.store.get_order(strategy.active_order_workflow_id)
            except StoreError as error:
                raise _refusal(error) from None
            if strategy.open_quantity <= 0:
                continue
            if working is not None and working.order_type != OrderType.BUY.value:
                # An exit already works (a stop-loss, another stop's square-off): wait for it, no second SELL.
                started.append(OrderRun.from_order_key(working.workflow_id))
                continue
            # The open position's exit leg (or its remainder's), the id every SELL and SL_SELL of it shares.
            workflow_id = intent_workflow_id(strategy, OrderType.SELL)
            intent = OrderIntent(
                strategy_id=strategy.id,
                user_id=strategy.user_id,
                order_type=OrderType.SELL,
                requested_by=request.requested_by,
                reason=f"square-off: {request.reason}",
                square_off=True,
                exit_reason=ExitReason.SQUARE_OFF.value,
            )
            try:
                handle = await self.client.start_workflow(
                    "OrderWorkflow",
                    intent,
                    id=workflow_id,
                    **order_start_options(
                        self.settings,
                        strategy,
                        OrderType.SELL,
                        priority_key=SQUARE_OFF_PRIORITY,
                        summary=f"SQUARE-OFF SELL {strategy.open_quantity} {strategy.symbol} "
                        f"for strategy {strategy.id} ({strategy.name})",
                        details=f"emergency stop by {request.requested_by}: {request.reason}",
                        exit_reason=ExitReason.SQUARE_OFF.value,
                    ),
                )
                started.append(OrderRun(workflow_id=handle.id, run_id=handle.result_run_id))
            except WorkflowAlreadyStartedError:
                description = await self.client.get_workflow_handle(workflow_id).describe()
                if description.status == WorkflowExecutionStatus.RUNNING:
                    started.append(OrderRun(workflow_id=workflow_id, run_id=description.run_id))
                else:
                    problems.append(
                        f"strategy {strategy.id} still holds {strategy.open_quantity} {strategy.symbol}, but its "
                        f"exit order {workflow_id} already ran: sell the rest by hand"
                    )
        return SquareOffStarted(orders=started, problems=problems)


# Alerts: logged in line by the workflow that raises them (AlertActivities.log_alert); delivered to
# every configured sink by an AlertDeliveryWorkflow of their own, each sink retried on its own.


class AlertSink(Protocol):
    """Somewhere alerts go beyond the log: a webhook, a chat room, a pager."""

    name: str

    async def send(self, alert: Alert) -> None:
        """Deliver one alert; raise to have the delivery retried."""
        ...


class WebhookAlertSink:
    """POSTs the alert as JSON to `url` (ENGINE_ALERT_WEBHOOK_URL); any answer but 2xx is retried."""

    name = "webhook"

    def __init__(self, url: str, http: httpx.AsyncClient | None = None, timeout_seconds: float = 5.0):
        self.url = url
        self._http = http
        self._timeout = timeout_seconds

    def __repr__(self) -> str:
        return f"WebhookAlertSink({httpx.URL(self.url).host!r})"  # the path may hold a token

    async def send(self, alert: Alert) -> None:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self._timeout)
        payload = alert.model_dump(mode="json")
        payload["created_at"] = payload.get("created_at") or datetime.now(UTC).isoformat()
        response = await self._http.post(self.url, json=payload)
        if response.is_error:
            raise ApplicationError(
                f"alert webhook answered HTTP {response.status_code}; retrying", type="AlertWebhookFailed"
            )


def alert_sinks_from_settings(settings: Settings) -> list[AlertSink]:
    """The sinks the environment configures: a webhook when ENGINE_ALERT_WEBHOOK_URL is set."""
    return [WebhookAlertSink(settings.alert_webhook_url)] if settings.alert_webhook_url else []


class AlertDeliveryActivities:
    def __init__(self, sinks: Sequence[AlertSink]):
        self.sinks = {sink.name: sink for sink in sinks}

    @activity.defn(name="configured_alert_sinks")
    async def configured_sinks(self) -> list[str]:
        return list(self.sinks)

    @activity.defn(name="deliver_alert")
    async def deliver_alert(self, delivery: AlertDelivery) -> None:
        sink = self.sinks.get(delivery.sink)
        if sink is None:  # configured on the worker that planned it, not on this one
            raise ApplicationError(
                f"no alert sink {delivery.sink!r} on this worker (it has: {', '.join(self.sinks) or 'none'})",
                type="AlertSinkMissing",
            )
        await sink.send(delivery.alert)
