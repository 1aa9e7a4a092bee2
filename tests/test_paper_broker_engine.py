"""The engine against the stricter paper broker: Kite's refusals end an order at once, with Kite's words."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
from temporalio.client import WorkflowFailureError

from engine.models import Outcome
from tests.fixtures.temporal import Engine

WAIT_SECONDS = 10.0


def requests_for(engine: Engine, api_key: str = "acct1") -> list[dict]:
    return [request for request in engine.paper.control.orders() if request["api_key"] == api_key]


async def test_an_order_above_the_freeze_quantity_fails_once_with_no_order_and_no_retry(engine: Engine) -> None:
    strategy = await engine.strategy("TATASTEEL", quantity=100_001)

    with pytest.raises(WorkflowFailureError) as failed:
        await (await engine.starter.place_buy_order(strategy)).result()

    assert "freeze quantity of 100000" in str(failed.value.cause)
    # One request, refused with no order id: definitive, so neither retried nor looked up as a lost order.
    [request] = requests_for(engine)
    assert (request["order_id"], request["http_status"]) == (None, 400)
    after = await engine.store.get_strategy(strategy.id)
    assert (after.position, after.open_quantity, after.active_order_workflow_id) == ("FLAT", 0, None)
    assert "freeze quantity" in (after.last_error or "")


async def test_a_market_order_left_partly_filled_by_its_protection_times_out_and_keeps_the_fill(
    engine: Engine,
) -> None:
    assert engine.parts is not None
    engine.parts.order_activities.settings = engine.settings.model_copy(update={"order_timeout_seconds": 2.5})
    engine.paper.control.set_fill(partial_fills=2, partial_interval_seconds=1.0)
    strategy = await engine.strategy("INFY", quantity=10)

    handle = await engine.starter.place_buy_order(strategy)
    deadline = asyncio.get_running_loop().time() + WAIT_SECONDS
    while not [r for r in requests_for(engine) if r["filled_quantity"] == 5]:
        assert asyncio.get_running_loop().time() < deadline, requests_for(engine)
        await asyncio.sleep(0.01)
    # The price runs past the protection price (1507.50) before the second half can trade.
    engine.paper.control.set_price("INFY", "1510")
    result = await handle.result()

    assert result.outcome is Outcome.PARTIALLY_FILLED
    assert (result.filled_quantity, result.average_price, result.needs_intervention) == (5, Decimal("1500"), True)
    [request] = requests_for(engine)
    assert (request["status"], request["filled_quantity"]) == ("CANCELLED", 5)
    after = await engine.store.get_strategy(strategy.id)
    assert (after.position, after.open_quantity, after.needs_intervention) == ("LONG", 5, True)
