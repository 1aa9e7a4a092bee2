"""Cancel through `starter.control.cancel_order`: real Temporal dev server, PostgreSQL, the paper broker."""

from __future__ import annotations

import asyncio
import time

import pytest
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError, CancelledError

from engine.models import OrderResult, Outcome
from engine.temporal import ended_order_result
from starter.control import InvalidControlRequest, OrderAlreadyFinished, UnknownOrder, cancel_order
from store import HistoryQuery
from tests.fixtures.temporal import Engine
from workflows.order import OrderWorkflow

WAIT_SECONDS = 10.0

OrderHandle = WorkflowHandle[OrderWorkflow, OrderResult]


async def placed_at_broker(handle: OrderHandle) -> str:
    """Wait until the order is at the broker; returns its broker order id."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        view = await handle.query(OrderWorkflow.status)
        if view.broker_order_id:
            return view.broker_order_id
        assert time.monotonic() < deadline, f"the order never reached the broker: {view}"
        await asyncio.sleep(0.02)


async def failure_of(handle: OrderHandle) -> ApplicationError:
    with pytest.raises(WorkflowFailureError) as failed:
        await handle.result()
    cause = failed.value.cause
    assert isinstance(cause, ApplicationError)
    return cause


async def cancelled_result(handle: OrderHandle) -> OrderResult:
    """The result of a run that ended Canceled, from its memo."""
    with pytest.raises(WorkflowFailureError) as failed:
        await handle.result()
    assert isinstance(failed.value.cause, CancelledError), failed.value.cause
    assert (await handle.describe()).status == WorkflowExecutionStatus.CANCELED
    ended = await ended_order_result(handle, failed.value)
    assert ended is not None
    return ended


def paper_order(engine: Engine, broker_order_id: str) -> dict:
    [order] = [o for o in engine.paper.control.orders() if o["order_id"] == broker_order_id]
    return order


async def test_cancel_of_a_resting_order_cancels_it_at_the_broker(engine: Engine) -> None:
    engine.paper.control.set_fill(delay_seconds=30)  # rests at the broker, unfilled
    strategy = await engine.strategy("INFY", quantity=5)
    handle = await engine.starter.place_buy_order(strategy)
    broker_order_id = await placed_at_broker(handle)

    answer = await cancel_order(engine.client, handle.id, "changed my mind")

    assert answer.accepted
    # Nothing filled: the run reads "Canceled" (not "Failed") and the intent may be tried again.
    ended = await cancelled_result(handle)
    assert ended.outcome is Outcome.CANCELLED and ended.message == "changed my mind"
    assert paper_order(engine, broker_order_id)["status"] == "CANCELLED"
    after = await engine.store.get_strategy(strategy.id)
    assert (after.status, after.position, after.open_quantity) == ("RUNNING", "FLAT", 0)
    assert not after.needs_intervention and after.active_order_workflow_id is None
    [record] = (await engine.store.order_history(HistoryQuery(strategy_id=strategy.id))).items
    assert record.status == "FAILED" and record.result is not None
    assert record.result["outcome"] == "CANCELLED" and record.result["status"] == "CANCELLED"
    events = [event.event_type for event in await engine.store.order_events(record.workflow_id)]
    assert "CANCEL_SENT" in events and events[-1] == "ORDER_EXECUTED"


async def test_cancel_requested_in_temporal_cancels_at_the_broker_and_the_intent_may_be_retried(
    engine: Engine,
) -> None:
    """The Temporal UI's "Request Cancellation" is an operator's cancel like any other."""
    engine.paper.control.set_fill(delay_seconds=30)
    strategy = await engine.strategy("INFY", quantity=5)
    handle = await engine.starter.place_buy_order(strategy)
    broker_order_id = await placed_at_broker(handle)

    await handle.cancel()

    ended = await cancelled_result(handle)
    assert (ended.outcome, ended.filled_quantity, ended.broker_order_id) == (Outcome.CANCELLED, 0, broker_order_id)
    assert paper_order(engine, broker_order_id)["status"] == "CANCELLED"
    after = await engine.store.get_strategy(strategy.id)
    assert (after.position, after.active_order_workflow_id, after.needs_intervention) == ("FLAT", None, False)
    engine.paper.control.set_fill(delay_seconds=0)
    again = await engine.starter.place_buy_order(strategy)  # the same intent, a new run
    assert again.id == handle.id
    assert (await again.result()).outcome is Outcome.FILLED


@pytest.mark.parametrize(
    ("fill", "outcome", "filled", "accepted"),
    [
        # Filled after the fast path's 1 s watch, while the cancel was on its way: the broker refuses it;
        # the fill is kept.
        ({"delay_seconds": 1.5}, Outcome.FILLED, 10, False),
        # Half filled while the cancel was on its way: the rest is cancelled; the half is kept.
        ({"delay_seconds": 1.5, "fill_ratio": "0.5"}, Outcome.PARTIALLY_FILLED, 5, True),
    ],
)
async def test_a_fill_racing_the_cancel_is_kept_and_applied(
    engine: Engine, fill: dict, outcome: Outcome, filled: int, accepted: bool
) -> None:
    engine.paper.control.set_price("TCS", "3500.25")
    engine.paper.control.set_fill(**fill)
    strategy = await engine.strategy("TCS", quantity=10)
    handle = await engine.starter.place_buy_order(strategy)
    broker_order_id = await placed_at_broker(handle)
    # The cancel reaches the broker before the fill and is handled after it.
    engine.paper.control.add_fault("latency", route="cancel_order", seconds=0.8)

    answer = await cancel_order(engine.client, handle.id, "racing the fill")
    result = await handle.result()

    assert answer.accepted is accepted
    assert (result.outcome, result.filled_quantity) == (outcome, filled)
    requests = [r for r in engine.paper.control.requests() if r["order_id"] == broker_order_id]
    assert [r["route"] for r in requests] == ["place_order", "cancel_order"]
    broker = paper_order(engine, broker_order_id)
    assert broker["filled_quantity"] == filled
    after = await engine.store.get_strategy(strategy.id)
    assert (after.position, after.open_quantity, after.entry_price) == ("LONG", filled, result.average_price)
    assert after.needs_intervention is (outcome is Outcome.PARTIALLY_FILLED)


async def test_cancel_of_a_finished_order_says_it_already_ended(engine: Engine) -> None:
    strategy = await engine.strategy("SBIN", quantity=2)
    handle = await engine.starter.place_buy_order(strategy)
    await handle.result()

    with pytest.raises(OrderAlreadyFinished, match="already ended as FILLED") as ended:
        await cancel_order(engine.client, handle.id, "too late")

    assert ended.value.workflow_id == handle.id and ended.value.outcome == "FILLED"
    assert [r["route"] for r in engine.paper.control.requests()] == ["place_order"]  # no cancel was sent


async def test_cancel_of_a_rejected_order_names_the_rejection(engine: Engine) -> None:
    engine.paper.control.add_fault("reject", route="place_order", count=1, message="RMS: blocked")
    strategy = await engine.strategy("SBIN", quantity=2)
    handle = await engine.starter.place_buy_order(strategy)
    await failure_of(handle)

    with pytest.raises(OrderAlreadyFinished) as ended:
        await cancel_order(engine.client, handle.id, "too late")

    assert ended.value.outcome == "REJECTED" and "RMS: blocked" in str(ended.value)


async def test_cancel_of_an_unknown_order_or_without_a_reason_is_refused(engine: Engine) -> None:
    with pytest.raises(UnknownOrder, match="no order workflow 'order:999999:1:entry'"):
        await cancel_order(engine.client, "order:999999:1:entry", "why not")
    with pytest.raises(InvalidControlRequest, match="reason must be a non-empty text"):
        await cancel_order(engine.client, "order:1:1:entry", "  ")
