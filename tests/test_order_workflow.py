"""The order workflow end to end: real Temporal dev server, PostgreSQL, the paper broker through kiteconnect."""

from __future__ import annotations

import asyncio
import uuid
from datetime import date, timedelta
from decimal import Decimal

import pytest
from temporalio.client import WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError

from engine.errors import DuplicateOrderError
from engine.ids import OrderType
from engine.models import OrderIntent, OrderResult, Outcome
from tests.fixtures.temporal import Engine
from workflows.order import OrderWorkflow


def broker_orders(engine: Engine, api_key: str = "acct1") -> list[dict]:
    """Orders the paper broker created for the account (requests it refused made none)."""
    return [
        order
        for order in engine.paper.control.orders()
        if order["api_key"] == api_key and order["order_id"] is not None
    ]


async def failure_of(handle: WorkflowHandle) -> ApplicationError:
    with pytest.raises(WorkflowFailureError) as failed:
        await handle.result()
    cause = failed.value.cause
    assert isinstance(cause, ApplicationError)
    return cause


async def test_buy_fills_and_opens_the_position(engine: Engine) -> None:
    engine.paper.control.set_price("RELIANCE", "2500.50")
    strategy = await engine.strategy("RELIANCE", quantity=10)

    result = await (await engine.starter.place_buy_order(strategy)).result()

    assert result.outcome is Outcome.FILLED
    assert (result.filled_quantity, result.average_price) == (10, Decimal("2500.50"))
    after = await engine.store.get_strategy(strategy.id)
    assert (after.position, after.open_quantity, after.entry_price) == ("LONG", 10, Decimal("2500.50"))
    assert after.active_order_workflow_id is None
    [order] = broker_orders(engine)
    assert order["tag"] == (await engine.store.get_order(result.order_key)).tag
    record = await engine.store.get_order(result.order_key)
    assert (record.broker_order_id, record.filled_quantity, record.status) == (
        result.broker_order_id, 10, "COMPLETE"
    )


async def test_sell_closes_the_position_with_decimal_pnl(engine: Engine) -> None:
    engine.paper.control.set_price("INFY", "1500.05")
    strategy = await engine.strategy("INFY", quantity=7)
    await (await engine.starter.place_buy_order(strategy)).result()
    engine.paper.control.set_price("INFY", "1512.40")

    result = await (await engine.starter.place_sell_order(strategy.id)).result()

    assert result.outcome is Outcome.FILLED and result.average_price == Decimal("1512.40")
    after = await engine.store.get_strategy(strategy.id)
    assert (after.position, after.open_quantity, after.exit_price) == ("FLAT", 0, Decimal("1512.40"))
    assert after.realized_pnl == Decimal("86.45")  # (1512.40 - 1500.05) * 7
    assert after.exit_reason == "SCHEDULED_EXIT"
    assert len(broker_orders(engine)) == 2


async def test_stop_loss_sells_and_marks_the_strategy(engine: Engine) -> None:
    engine.paper.control.set_price("SBIN", "800")
    strategy = await engine.strategy("SBIN", quantity=5)
    await (await engine.starter.place_buy_order(strategy)).result()
    engine.paper.control.set_price("SBIN", "780.25")

    result = await (await engine.starter.place_sl_sell_order(strategy.id, Decimal("781"))).result()

    assert result.outcome is Outcome.FILLED
    after = await engine.store.get_strategy(strategy.id)
    assert after.sl_triggered and after.sl_trigger_price == Decimal("781")
    assert after.exit_reason == "STOP_LOSS"
    assert after.realized_pnl == Decimal("-98.75")  # (780.25 - 800) * 5
    assert after.position == "FLAT" and after.status == "RUNNING"


@pytest.mark.parametrize(
    ("setup", "order_type", "message"),
    [
        ("stopped", OrderType.BUY, "not RUNNING"),
        ("long", OrderType.BUY, "a BUY needs no open position"),
        ("flat", OrderType.SELL, "no open position"),
        ("flat", OrderType.SL_SELL, "no open position"),
    ],
)
async def test_validation_refuses_with_its_own_message(
    engine: Engine, setup: str, order_type: OrderType, message: str
) -> None:
    strategy = await engine.strategy("TCS", quantity=3, running=setup != "stopped")
    if setup == "long":
        await (await engine.starter.place_buy_order(strategy)).result()
    sent_before = len(broker_orders(engine))

    # Started under an id of its own: the starter's de-duplication would refuse a repeated entry first.
    handle = await engine.client.start_workflow(
        OrderWorkflow.run,
        OrderIntent(
            strategy_id=strategy.id,
            user_id=strategy.user_id,
            order_type=order_type,
            trigger_price=Decimal("1") if order_type is OrderType.SL_SELL else None,
        ),
        id=f"validation-{uuid.uuid4()}",
        task_queue=engine.settings.task_queue,
    )
    failure = await failure_of(handle)

    assert failure.type == Outcome.INVALID.value
    assert message in failure.message
    assert len(broker_orders(engine)) == sent_before


async def test_market_hours_are_enforced_when_configured(engine: Engine) -> None:
    assert engine.parts is not None
    engine.parts.order_activities.settings = engine.settings.model_copy(update={"enforce_market_hours": True})
    # Every day around now a holiday: closed whatever the hour.
    engine.parts.order_activities.calendar.holidays = frozenset(
        date.today() + timedelta(days=offset) for offset in range(-1, 2)
    )
    strategy = await engine.strategy("HDFCBANK", quantity=1)

    failure = await failure_of(await engine.starter.place_buy_order(strategy))

    assert "market is closed" in failure.message
    assert broker_orders(engine) == []


async def test_broker_rejection_fails_with_the_brokers_message(engine: Engine) -> None:
    strategy = await engine.strategy("RELIANCE", quantity=10)
    engine.paper.control.add_fault("reject", route="place_order", count=1, message="Insufficient funds")

    failure = await failure_of(await engine.starter.place_buy_order(strategy))

    assert failure.type == Outcome.REJECTED.value
    assert "Insufficient funds" in failure.message
    after = await engine.store.get_strategy(strategy.id)
    assert after.position == "FLAT" and after.open_quantity == 0
    assert after.active_order_workflow_id is None
    assert len(broker_orders(engine)) == 1


async def test_a_rejected_intent_may_be_tried_again(engine: Engine) -> None:
    strategy = await engine.strategy("RELIANCE", quantity=2)
    engine.paper.control.add_fault("reject", route="place_order", count=1, message="RMS: blocked")
    first = await engine.starter.place_buy_order(strategy)
    await failure_of(first)

    second = await engine.starter.place_buy_order(strategy)
    result = await second.result()

    assert second.id == first.id and result.outcome is Outcome.FILLED
    tags = {order["tag"] for order in broker_orders(engine)}
    assert len(tags) == 2  # a new run is a new order with its own tag


async def test_partial_fill_times_out_cancels_the_rest_and_asks_for_a_person(engine: Engine) -> None:
    assert engine.parts is not None
    engine.parts.order_activities.settings = engine.settings.model_copy(update={"order_timeout_seconds": 1.0})
    engine.paper.control.set_fill(fill_ratio="0.5")
    strategy = await engine.strategy("INFY", quantity=10)

    result = await (await engine.starter.place_buy_order(strategy)).result()

    assert result.outcome is Outcome.PARTIALLY_FILLED
    assert result.filled_quantity == 5 and result.needs_intervention
    [order] = broker_orders(engine)
    assert order["status"] == "CANCELLED"
    after = await engine.store.get_strategy(strategy.id)
    assert (after.open_quantity, after.needs_intervention) == (5, True)


@pytest.mark.parametrize(
    ("fault", "params"),
    [
        ("accept_then_timeout", {"seconds": 2.0}),
        ("http_503", {}),
        ("http_500", {}),
        ("http_429", {"count": 3}),
        ("drop_connection", {"after_accept": True}),
        ("drop_connection", {"after_accept": False}),
    ],
)
async def test_exactly_one_order_reaches_the_broker_whatever_the_fault(
    engine: Engine, fault: str, params: dict
) -> None:
    strategy = await engine.strategy("TCS", quantity=4)
    count = params.pop("count", 1)
    engine.paper.control.add_fault(fault, route="place_order", count=count, **params)

    result = await (await engine.starter.place_buy_order(strategy)).result()

    assert result.outcome is Outcome.FILLED and result.filled_quantity == 4
    orders = broker_orders(engine)
    assert len(orders) == 1, orders
    after = await engine.store.get_strategy(strategy.id)
    assert after.open_quantity == 4  # applied once
    audit = await engine.store.get_order(result.order_key)
    assert audit.broker_order_id == orders[0]["order_id"]


async def test_concurrent_triggers_of_one_intent_make_one_order(engine: Engine) -> None:
    strategy = await engine.strategy("SBIN", quantity=3)

    outcomes = await asyncio.gather(
        *(engine.starter.place_buy_order(strategy) for _ in range(5)), return_exceptions=True
    )

    handles = [o for o in outcomes if not isinstance(o, BaseException)]
    duplicates = [o for o in outcomes if isinstance(o, DuplicateOrderError)]
    assert len(handles) == 1 and len(duplicates) == 4
    assert all(d.workflow_id == handles[0].id for d in duplicates)
    await handles[0].result()
    with pytest.raises(DuplicateOrderError, match="COMPLETED"):
        await engine.starter.place_buy_order(strategy)  # even after the first completed
    assert len(broker_orders(engine)) == 1


async def test_sell_and_stop_loss_racing_make_one_order(engine: Engine) -> None:
    strategy = await engine.strategy("INFY", quantity=6)
    await (await engine.starter.place_buy_order(strategy)).result()

    sell, stop = await asyncio.gather(
        engine.starter.place_sell_order(strategy.id),
        engine.starter.place_sl_sell_order(strategy.id, Decimal("1400")),
        return_exceptions=True,
    )

    winners = [o for o in (sell, stop) if not isinstance(o, BaseException)]
    assert len(winners) == 1
    assert isinstance(sell if winners[0] is stop else stop, DuplicateOrderError)
    result: OrderResult = await winners[0].result()
    assert result.filled_quantity == 6
    sells = [o for o in broker_orders(engine) if o["side"] == "SELL"]
    assert len(sells) == 1


async def test_an_order_the_engine_loses_track_of_is_unresolved_and_asks_for_a_person(engine: Engine) -> None:
    engine.paper.control.set_fill(fill_ratio="0")  # the order rests OPEN
    strategy = await engine.strategy("SBIN", quantity=3)
    handle = await engine.starter.place_buy_order(strategy)
    for _ in range(100):
        if broker_orders(engine):
            break
        await asyncio.sleep(0.05)
    engine.paper.control.expire_tokens()  # following can no longer read the order book

    result = await handle.result()

    assert result.outcome is Outcome.UNRESOLVED and result.needs_intervention
    assert "log in to Kite for account" in str((await engine.store.get_strategy(strategy.id)).intervention_reason)
    record = await engine.store.get_order(result.order_key)
    assert record.outcome == "ERROR"
    with pytest.raises(DuplicateOrderError):  # the order may still be live: the intent is not retried
        await engine.starter.place_buy_order(strategy)
