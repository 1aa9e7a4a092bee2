"""The engine against the stricter paper broker: Kite's refusals end an order at once, with Kite's words."""

from __future__ import annotations

import pytest
from temporalio.client import WorkflowFailureError

from tests.fixtures.temporal import Engine


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
