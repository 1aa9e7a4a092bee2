"""What the HTTP API and the CLI share: the engine's parts, and the operations both of them offer.

`Services` holds the settings, the store, the Temporal client, the order starter and the strategy
schedules. The operations on top (order status, cancel, strategy start and stop) talk to Temporal with
bounded waits, and turn "Temporal unreachable" into one error class, `TemporalUnavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TypeVar

from temporalio.client import (
    Client,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowQueryRejectedError,
)
from temporalio.service import RPCError, RPCStatusCode

from engine.ids import OrderType
from engine.models import OrderResult, OrderStatusView, Outcome
from engine.settings import Settings
from engine.temporal import connect_config, data_converter, ended_order_result
from starter import control
from starter.control import OrderAlreadyFinished, UnknownOrder
from starter.orders import OrderStarter
from starter.schedules import StrategySchedules
from store import Store
from store.errors import OrderNotFound
from store.records import ExitReason, OrderRecord, StrategyRecord, StrategyStatus
from workflows.order import OrderWorkflow

T = TypeVar("T")

# Reads from Temporal answer within this, or the caller hears that Temporal is unreachable.
TEMPORAL_READ_TIMEOUT = timedelta(seconds=5)
# A running order answers its status query within this, or the answer comes from the store alone.
STATUS_QUERY_TIMEOUT = timedelta(seconds=2)
DEFAULT_CANCEL_WAIT_SECONDS = 10.0
ORDER_WORKFLOW_ID = re.compile(r"order:(?P<strategy_id>[1-9]\d{0,9}):(?P<cycle>\d{1,10}):(?P<leg>entry|exit)")
MAX_ID = 2**31 - 1  # the store's integer ids


class TemporalUnavailable(Exception):
    """Temporal could not be reached, or did not answer a read in time. Retrying later helps; a repeated
    order start is safe (if the first got through, the repeat is refused as a duplicate naming it)."""

    retryable = True

    def __init__(self, what: str, cause: BaseException | str):
        super().__init__(
            f"Temporal is unreachable ({what}: {cause}); check TEMPORAL_ADDRESS and that the server is up, "
            "then retry"
        )


class StrategyNotRunning(Exception):
    """An order for a stopped strategy: validation would refuse it, so it is not started at all."""

    def __init__(self, strategy: StrategyRecord, how_to_start: str):
        super().__init__(f"strategy {strategy.id} is {strategy.status}; start it ({how_to_start}) before ordering")
        self.strategy_id = strategy.id
        self.status = strategy.status


def temporal_unreachable(error: BaseException) -> bool:
    """The client's failures that mean "no connection", as opposed to an answer from the server."""
    if isinstance(error, RPCError):
        return error.status == RPCStatusCode.UNAVAILABLE
    # A lazily connected client reports a failed first connection this way.
    return isinstance(error, RuntimeError) and str(error).startswith("Failed client connect")


async def temporal_call(what: str, call: Awaitable[T], timeout: timedelta | None = TEMPORAL_READ_TIMEOUT) -> T:
    """Await a Temporal call; unreachable (or silent past `timeout`) raises TemporalUnavailable."""
    seconds = None if timeout is None else timeout.total_seconds()
    try:
        return await asyncio.wait_for(call, seconds)
    except TimeoutError:
        raise TemporalUnavailable(what, f"no answer within {seconds:g}s") from None
    except (RPCError, RuntimeError) as error:
        if temporal_unreachable(error):
            raise TemporalUnavailable(what, error) from None
        raise


def strategy_id_of(workflow_id: str) -> int | None:
    """The strategy an order workflow id belongs to (`order:{strategy}:{cycle}:{leg}`), else None."""
    match = ORDER_WORKFLOW_ID.fullmatch(workflow_id)
    if match is None:
        return None
    strategy_id = int(match["strategy_id"])
    return strategy_id if strategy_id <= MAX_ID else None


def split_order_key(order_key: str | None) -> tuple[str | None, str | None]:
    """The store keys an order by `{workflow_id}/{run_id}`: (workflow id, run id)."""
    if order_key is None:
        return None, None
    workflow_id, _, run_id = order_key.partition("/")
    return workflow_id, run_id or None


@dataclass
class Services:
    """The engine's parts for a starter. `close()` closes only what `open()` opened."""

    settings: Settings
    store: Store
    client: Client
    starter: OrderStarter
    schedules: StrategySchedules
    _owned_store: bool = field(default=False, repr=False)

    @classmethod
    def assemble(cls, settings: Settings, client: Client, store: Store, *, owns_store: bool = False) -> Services:
        return cls(
            settings=settings,
            store=store,
            client=client,
            starter=OrderStarter(client, store, settings),
            schedules=StrategySchedules(client, settings),
            _owned_store=owns_store,
        )

    @classmethod
    async def open(
        cls,
        settings: Settings | None = None,
        *,
        client: Client | None = None,
        store: Store | None = None,
        temporal_address: str | None = None,
    ) -> Services:
        """What is not given, from the environment: Settings.from_environment(), the store at DATABASE_URL, and a
        Temporal client on Temporal's own conventions (or at `temporal_address`)."""
        settings = settings or Settings.from_environment()
        owns_store = store is None
        if store is None:
            store = await Store.connect(settings.database_url, settings.engine_secret_key)
        if client is None:
            client = await connect_lazily(temporal_address)
        return cls.assemble(settings, client, store, owns_store=owns_store)

    async def close(self) -> None:
        if self._owned_store:
            await self.store.close()

    # Orders

    async def place_order(
        self,
        strategy: StrategyRecord,
        order_type: OrderType,
        *,
        trigger_price: Decimal | None = None,
        requested_by: str,
        reason: str | None,
        how_to_start: str,
    ) -> WorkflowHandle[OrderWorkflow, OrderResult]:
        """Start a manual order or a stop-loss through the ordinary entry point; DuplicateOrderError names
        the workflow that already handles the same intent."""
        if strategy.status == StrategyStatus.STOPPED:
            raise StrategyNotRunning(strategy, how_to_start)
        if order_type is OrderType.SL_SELL:
            if trigger_price is None:
                raise ValueError("a stop-loss order needs its trigger price")
            call = self.starter.place_sl_sell_order(
                strategy, trigger_price, requested_by=requested_by, reason=reason
            )
        else:
            call = self.starter.start_order(
                strategy, order_type, requested_by=requested_by, reason=reason,
                exit_reason=ExitReason.MANUAL if order_type is OrderType.SELL else None,
            )
        return await temporal_call(f"start the {order_type} order", call, timeout=None)

    def order_handle(self, workflow_id: str, run_id: str | None = None) -> WorkflowHandle[OrderWorkflow, OrderResult]:
        return self.client.get_workflow_handle_for(OrderWorkflow.run, workflow_id, run_id=run_id)

    async def order_status(self, workflow_id: str) -> OrderStatus:
        """At once, from the workflow's status query and the store; a finished order from its result."""
        description = await self._describe(workflow_id)
        run_id = description.run_id
        order = await self._stored_order(f"{workflow_id}/{run_id}")
        status = OrderStatus(
            workflow_id=workflow_id,
            run_id=run_id,
            workflow_status=description.status.name if description.status else "UNKNOWN",
            strategy_id=order.strategy_id if order else (strategy_id_of(workflow_id) or 0),
            order_type=order.order_type if order else None,
            started_at=description.start_time,
            closed_at=description.close_time,
            order=order,
        )
        if description.status == WorkflowExecutionStatus.RUNNING:
            view = await self._query_status(workflow_id, run_id)
            if view is None:
                status.note = (
                    f"no worker answered the status query within {STATUS_QUERY_TIMEOUT.total_seconds():g}s; "
                    "the rest is from the database"
                )
                status.answered_by = "store"
            else:
                status.apply_view(view)
        else:
            result = await self._final_result(workflow_id, run_id, description.status)
            if result is not None:
                status.apply_result(result)
            status.stage = "done"
            status.answered_by = "history"
        status.fill_from_store()
        return status

    async def cancel_order(
        self, workflow_id: str, reason: str, *, wait_seconds: float = DEFAULT_CANCEL_WAIT_SECONDS
    ) -> CancelOutcome:
        """Ask the order to cancel, and wait (bounded) for the broker's answer.

        The cancel goes first as a signal, which the workflow's history keeps: it holds even when the
        answer takes longer than the caller waits. `starter.control.cancel_order` then gives the answer,
        or raises OrderAlreadyFinished (with what the order ended as) or UnknownOrder."""
        description = await self._describe(workflow_id)
        if description.status != WorkflowExecutionStatus.RUNNING:
            final = await self.order_status(workflow_id)
            raise OrderAlreadyFinished(workflow_id, final.outcome or final.workflow_status, final.message)
        handle = self.order_handle(workflow_id, description.run_id)
        try:
            await temporal_call("send the cancel", handle.signal(OrderWorkflow.cancel, reason))
        except RPCError as error:
            if error.status != RPCStatusCode.NOT_FOUND:
                raise  # NOT_FOUND: it ended in between; the answer below says how
        try:
            answer = await asyncio.wait_for(control.cancel_order(self.client, workflow_id, reason), wait_seconds)
        except TimeoutError:
            return CancelOutcome(
                workflow_id=workflow_id,
                accepted=None,
                message=f"cancel requested; the broker has not confirmed it within {wait_seconds:g}s. "
                "The order workflow keeps at it: follow it with the status call",
            )
        except (RPCError, RuntimeError) as error:
            if temporal_unreachable(error):
                raise TemporalUnavailable("wait for the cancel's answer", error) from None
            raise
        return CancelOutcome(workflow_id=workflow_id, accepted=answer.accepted, message=answer.message)

    async def _describe(self, workflow_id: str) -> WorkflowExecutionDescription:
        try:
            return await temporal_call("describe the order", self.order_handle(workflow_id).describe())
        except RPCError as error:
            if error.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT):
                raise UnknownOrder(workflow_id) from None
            raise

    async def _stored_order(self, order_key: str) -> OrderRecord | None:
        try:
            return await self.store.get_order(order_key)
        except OrderNotFound:
            return None  # validation has not recorded it yet, or refused it before recording

    async def _query_status(self, workflow_id: str, run_id: str) -> OrderStatusView | None:
        handle = self.order_handle(workflow_id, run_id)
        try:
            return await temporal_call(
                "query the order's status",
                handle.query(OrderWorkflow.status, rpc_timeout=STATUS_QUERY_TIMEOUT),
                timeout=STATUS_QUERY_TIMEOUT + timedelta(seconds=1),
            )
        except (WorkflowQueryFailedError, WorkflowQueryRejectedError, RPCError, TemporalUnavailable):
            return None  # most often: no worker answered in time

    async def _final_result(
        self, workflow_id: str, run_id: str, status: WorkflowExecutionStatus | None
    ) -> OrderResult | None:
        """The OrderResult of a finished run: its return value, the details of its failure, or the memo
        of a canceled run."""
        ended = (WorkflowExecutionStatus.COMPLETED, WorkflowExecutionStatus.FAILED, WorkflowExecutionStatus.CANCELED)
        if status not in ended:
            return None
        handle = self.order_handle(workflow_id, run_id)
        try:
            return await temporal_call("read the order's result", handle.result(follow_runs=False))
        except WorkflowFailureError as failure:
            return await temporal_call("read the order's result", ended_order_result(handle, failure))

    # Strategies

    async def start_strategy(self, strategy_id: int, reason: str) -> StrategyRecord:
        """RUNNING, then its schedules created or resumed; if Temporal cannot be told, it stays STOPPED."""
        before = await self.store.get_strategy(strategy_id)
        strategy = await self.store.set_strategy_status(strategy_id, StrategyStatus.RUNNING, reason)
        try:
            await temporal_call("resume the strategy's schedules", self.schedules.sync(strategy), timeout=None)
        except TemporalUnavailable:
            if before.status == StrategyStatus.STOPPED:
                await self.store.set_strategy_status(
                    strategy_id, StrategyStatus.STOPPED, "not started: Temporal was unreachable for its schedules"
                )
            raise
        return strategy

    async def stop_strategy(self, strategy_id: int, reason: str) -> StrategyRecord:
        """STOPPED first (no order passes validation from then on), then its schedules paused."""
        strategy = await self.store.set_strategy_status(strategy_id, StrategyStatus.STOPPED, reason)
        await temporal_call("pause the strategy's schedules", self.schedules.sync(strategy), timeout=None)
        return strategy

    async def sync_schedules(self, strategy: StrategyRecord) -> None:
        await temporal_call("update the strategy's schedules", self.schedules.sync(strategy), timeout=None)

    async def update_strategy(self, strategy_id: int, **changes: object) -> StrategyRecord:
        """Change settings; new entry or exit times reach its schedules too, or the change is undone:
        the store never holds a time its schedules do not fire at."""
        before = await self.store.get_strategy(strategy_id)
        strategy = await self.store.update_strategy(strategy_id, **changes)
        if (strategy.entry_time, strategy.exit_time) == (before.entry_time, before.exit_time):
            return strategy
        try:
            await self.sync_schedules(strategy)
        except Exception:
            undo = {name: getattr(before, name) for name in changes if getattr(before, name) != getattr(strategy, name)}
            restored = await self.store.update_strategy(strategy_id, **undo)
            with contextlib.suppress(Exception):  # a schedule already moved goes back, if Temporal answers
                await temporal_call("restore the strategy's schedules", self.schedules.sync(restored))
            raise
        return strategy


async def connect_lazily(address: str | None = None) -> Client:
    """A client on Temporal's environment conventions that connects on first use, so a starter can
    come up (and say 503) while Temporal is still down."""
    config = connect_config()
    if address:
        config["target_host"] = address
    return await Client.connect(data_converter=data_converter(), lazy=True, **config)


@dataclass
class OrderStatus:
    """One order as the API and CLI show it: the workflow's live view, completed from the store."""

    workflow_id: str
    run_id: str
    workflow_status: str
    strategy_id: int
    order_type: str | None = None
    stage: str | None = None
    broker_order_id: str | None = None
    broker_status: str | None = None
    quantity: int | None = None
    filled_quantity: int = 0
    average_price: Decimal | None = None
    cancel_requested: bool = False
    outcome: str | None = None
    message: str | None = None
    needs_intervention: bool = False
    answered_by: str = "workflow"
    note: str | None = None
    started_at: datetime | None = None
    closed_at: datetime | None = None
    order: OrderRecord | None = None

    @property
    def finished(self) -> bool:
        return self.workflow_status != WorkflowExecutionStatus.RUNNING.name

    def apply_view(self, view: OrderStatusView) -> None:
        self.order_type = OrderType(view.order_type).value
        self.strategy_id = view.strategy_id
        self.stage = view.stage
        self.broker_order_id = view.broker_order_id
        self.broker_status = view.status
        self.quantity = view.quantity or None
        self.filled_quantity = view.filled_quantity
        self.average_price = view.average_price
        self.cancel_requested = view.cancel_requested
        if view.result is not None:
            self.apply_result(view.result)

    def apply_result(self, result: OrderResult) -> None:
        self.order_type = OrderType(result.order_type).value
        self.strategy_id = result.strategy_id
        self.outcome = Outcome(result.outcome).value
        self.broker_order_id = result.broker_order_id or self.broker_order_id
        self.quantity = result.requested_quantity or self.quantity
        self.filled_quantity = result.filled_quantity
        self.average_price = result.average_price
        self.message = result.message
        self.needs_intervention = result.needs_intervention

    def fill_from_store(self) -> None:
        order = self.order
        if order is None:
            return
        self.order_type = self.order_type or order.order_type
        self.broker_order_id = self.broker_order_id or order.broker_order_id
        self.broker_status = self.broker_status or order.status
        self.quantity = self.quantity or order.quantity
        if order.filled_quantity > self.filled_quantity:
            self.filled_quantity = order.filled_quantity
            self.average_price = order.average_price


@dataclass(frozen=True)
class CancelOutcome:
    workflow_id: str
    accepted: bool | None  # None: asked, but the broker's answer has not come yet
    message: str
