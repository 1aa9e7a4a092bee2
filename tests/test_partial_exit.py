"""What a partial exit leaves can always be sold, once: by a new trigger, a square-off or an operator.

Real Temporal dev server, PostgreSQL and the paper broker through kiteconnect. The broker fills half of
each order and the order times out: the remainder is cancelled and the strategy holds the rest.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest
from temporalio.client import WorkflowFailureError

from engine.errors import DuplicateOrderError
from engine.models import OrderResult, Outcome
from starter.control import start_emergency_stop, wait_for_emergency_stop
from tests.fixtures.temporal import Engine


def sells(engine: Engine, api_key: str = "acct1") -> list[dict[str, Any]]:
    return [
        order for order in engine.paper.control.orders()
        if order["api_key"] == api_key and order["order_id"] is not None and order["side"] == "SELL"
    ]


def fill_half_then_time_out(engine: Engine) -> None:
    assert engine.parts is not None
    engine.parts.order_activities.settings = engine.settings.model_copy(update={"order_timeout_seconds": 1.0})
    engine.paper.control.set_fill(fill_ratio="0.5")


def fill_all(engine: Engine) -> None:
    assert engine.parts is not None
    engine.parts.order_activities.settings = engine.settings
    engine.paper.control.set_fill(fill_ratio="1")


async def test_a_new_sell_sells_the_remainder_of_a_partial_exit_once(engine: Engine) -> None:
    strategy = await engine.strategy("INFY", quantity=10)
    await (await engine.starter.place_buy_order(strategy)).result()
    fill_half_then_time_out(engine)
    partial: OrderResult = await (await engine.starter.place_sell_order(strategy.id)).result()
    assert (partial.outcome, partial.filled_quantity) == (Outcome.PARTIALLY_FILLED, 5)
    held = await engine.store.get_strategy(strategy.id)
    assert (held.open_quantity, held.needs_intervention) == (5, True)
    await engine.store.clear_intervention(strategy.id, "ops")
    fill_all(engine)

    rest = await engine.starter.place_sell_order(strategy.id)
    result = await rest.result()

    assert rest.id == f"order:{strategy.id}:1:exit-5"
    assert (result.outcome, result.filled_quantity) == (Outcome.FILLED, 5)
    after = await engine.store.get_strategy(strategy.id)
    assert (after.position, after.open_quantity, after.position_cycle) == ("FLAT", 0, 2)
    assert after.exit_reason == "SCHEDULED_EXIT"
    with pytest.raises(DuplicateOrderError, match="COMPLETED") as repeated:
        await engine.starter.place_sell_order(strategy.id)  # the same intent again: refused
    assert repeated.value.workflow_id == rest.id
    orders = sells(engine)
    assert [order["filled_quantity"] for order in orders] == [5, 5]  # never more than was held


async def test_after_a_partial_stop_loss_racing_exits_sell_the_remainder_once(engine: Engine) -> None:
    strategy = await engine.strategy("TCS", quantity=10)
    await (await engine.starter.place_buy_order(strategy)).result()
    fill_half_then_time_out(engine)
    await (await engine.starter.place_sl_sell_order(strategy.id, Decimal("3400"))).result()
    assert (await engine.store.get_strategy(strategy.id)).status == "SL_TRIGGERED"
    fill_all(engine)

    sell, stop = await asyncio.gather(
        engine.starter.place_sell_order(strategy.id),
        engine.starter.place_sl_sell_order(strategy.id, Decimal("3390")),
        return_exceptions=True,
    )

    winners = [o for o in (sell, stop) if not isinstance(o, BaseException)]
    assert len(winners) == 1, (sell, stop)
    assert isinstance(sell if winners[0] is stop else stop, DuplicateOrderError)
    result = await winners[0].result()
    assert result.filled_quantity == 5
    after = await engine.store.get_strategy(strategy.id)
    assert (after.status, after.open_quantity, after.exit_reason) == ("RUNNING", 0, "STOP_LOSS")
    assert [order["filled_quantity"] for order in sells(engine)] == [5, 5]


async def test_a_square_off_sells_what_a_partial_exit_left(engine: Engine) -> None:
    strategy = await engine.strategy("SBIN", quantity=10, api_key="sq1")
    await (await engine.starter.place_buy_order(strategy)).result()
    fill_half_then_time_out(engine)
    await (await engine.starter.place_sell_order(strategy.id)).result()
    fill_all(engine)

    stop_id = await start_emergency_stop(
        engine.client, engine.settings, user_id=strategy.user_id, square_off=True, reason="halt",
        requested_by="alice",
    )
    report = await wait_for_emergency_stop(engine.client, stop_id)

    assert report.problems == []
    [squared] = report.squared_off
    assert (squared.outcome, squared.filled_quantity) == (Outcome.FILLED.value, 5)
    after = await engine.store.get_strategy(strategy.id)
    assert (after.status, after.open_quantity, after.exit_reason) == ("STOPPED", 0, "SQUARE_OFF")
    assert [order["filled_quantity"] for order in sells(engine, "sq1")] == [5, 5]
    # The Temporal UI finds it by what it was.
    query = f'ExitReason="SQUARE_OFF" AND StrategyId="{strategy.id}"'
    for _ in range(100):
        found = [execution.id async for execution in engine.client.list_workflows(query)]
        if found:
            break
        await asyncio.sleep(0.1)
    assert found == [f"order:{strategy.id}:1:exit-5"]


async def test_an_operator_exits_what_a_partly_filled_buy_left_on_a_stopped_strategy(engine: Engine) -> None:
    strategy = await engine.strategy("HDFCBANK", quantity=10, api_key="op1")
    fill_half_then_time_out(engine)
    bought = await (await engine.starter.place_buy_order(strategy)).result()
    assert (bought.outcome, bought.filled_quantity) == (Outcome.PARTIALLY_FILLED, 5)
    fill_all(engine)
    stop_id = await start_emergency_stop(
        engine.client, engine.settings, user_id=strategy.user_id, square_off=False, reason="look first",
        requested_by="alice",
    )
    await wait_for_emergency_stop(engine.client, stop_id)
    with pytest.raises(DuplicateOrderError):  # the entry leg never tops up a partly filled BUY
        await engine.starter.place_buy_order(strategy.id)

    handle = await engine.starter.exit_position(strategy.id, requested_by="ops")
    result = await handle.result()

    assert (result.outcome, result.filled_quantity) == (Outcome.FILLED, 5)
    after = await engine.store.get_strategy(strategy.id)
    assert (after.status, after.open_quantity, after.exit_reason) == ("STOPPED", 0, "MANUAL")
    order = await engine.store.get_order(result.order_key)
    assert (order.exit_reason, order.requested_by) == ("MANUAL", "ops")


async def test_a_failed_stop_loss_leaves_the_position_sellable(engine: Engine) -> None:
    strategy = await engine.strategy("INFY", quantity=4, api_key="sl1")
    await (await engine.starter.place_buy_order(strategy)).result()
    engine.paper.control.add_fault("reject", route="place_order", count=1)
    stop = await engine.starter.place_sl_sell_order(strategy.id, Decimal("1400"))
    with pytest.raises(WorkflowFailureError):  # rejected: nothing filled, the intent may be tried again
        await stop.result()
    assert (await engine.store.get_strategy(strategy.id)).status == "SL_TRIGGERED"

    result = await (await engine.starter.place_sell_order(strategy.id)).result()

    assert (result.outcome, result.filled_quantity) == (Outcome.FILLED, 4)
    after = await engine.store.get_strategy(strategy.id)
    assert (after.status, after.open_quantity) == ("RUNNING", 0)
