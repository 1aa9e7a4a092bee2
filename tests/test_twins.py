"""Twins: a second broker order under one order's tag, made by a request the broker acted on late.

Real Temporal dev server, PostgreSQL and the paper broker through kiteconnect (client timeout 1 s, so a
placement's window is 2 s). The paper broker holds the first placement request (latency faults add up)
and creates its order only after the client gave up on it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from engine.models import Outcome
from store.orders import twin_workflow_id
from tests.fixtures.temporal import Engine

WAIT_SECONDS = 60.0


def orders_of(engine: Engine, api_key: str) -> list[dict[str, Any]]:
    return [o for o in engine.paper.control.orders() if o["api_key"] == api_key and o["order_id"] is not None]


async def eventually(check: Any, what: str, timeout: float = WAIT_SECONDS) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


def with_settings(engine: Engine, **changes: Any) -> None:
    assert engine.parts is not None
    engine.parts.order_activities.settings = engine.settings.model_copy(update=changes)


async def test_a_buy_waits_out_a_held_request_instead_of_sending_a_twin(engine: Engine) -> None:
    with_settings(engine, resend_quiet_seconds_buy=3.0)
    strategy = await engine.strategy("INFY", quantity=5, api_key="quiet1")
    # Two latency faults add up to 3 s, past the 2 s window: the broker makes the order after the
    # client's timeout. A BUY waits a further 3 s of an absent tag before sending again, and finds it.
    engine.paper.control.add_fault("latency", route="place_order", count=1, seconds=1.5)
    engine.paper.control.add_fault("latency", route="place_order", count=1, seconds=1.5)

    result = await (await engine.starter.place_buy_order(strategy)).result()
    await asyncio.sleep(2)  # past any moment the held request could still become an order

    assert (result.outcome, result.filled_quantity) == (Outcome.FILLED, 5)
    [order] = orders_of(engine, "quiet1")
    assert order["order_id"] == result.broker_order_id
    assert (await engine.store.get_order(result.order_key)).adopted


async def test_a_filled_twin_is_applied_and_flagged_with_both_order_ids(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    with_settings(engine, twin_watch_seconds=30.0)
    strategy = await engine.strategy("TCS", quantity=4, api_key="twin1")
    # Held past the 2 s window and the BUY's 1 s quiet time: the re-sent order fills, then the held one
    # does too.
    engine.paper.control.add_fault("latency", route="place_order", count=1, seconds=5)

    result = await (await engine.starter.place_buy_order(strategy)).result()
    assert (result.outcome, result.filled_quantity) == (Outcome.FILLED, 4)

    async def doubled() -> Any:
        held = await engine.store.get_strategy(strategy.id)
        return held if held.needs_intervention else None

    after = await eventually(doubled, "the twin's fill applied and flagged")
    orders = orders_of(engine, "twin1")
    assert len(orders) == 2 and all(o["status"] == "COMPLETE" for o in orders)
    [twin] = [o for o in orders if o["order_id"] != result.broker_order_id]
    assert after.open_quantity == sum(o["filled_quantity"] for o in orders) == 8  # the store tells the truth
    assert str(result.broker_order_id) in str(after.intervention_reason)
    assert twin["order_id"] in str(after.intervention_reason)
    record = await engine.store.get_order(twin_workflow_id(result.order_key, twin["order_id"]))
    assert (record.broker_order_id, record.filled_quantity, record.outcome) == (twin["order_id"], 4, "SUCCESS")

    async def alerted() -> list[logging.LogRecord]:  # the alert follows the flag, in the next step
        return [r for r in caplog.records if r.levelno == logging.CRITICAL and "doubled" in r.getMessage()]

    assert await eventually(alerted, "the CRITICAL 'order doubled' alert")


async def test_an_open_twin_is_cancelled_while_the_order_is_followed(engine: Engine) -> None:
    with_settings(engine, twin_watch_seconds=5.0, resend_quiet_seconds_buy=0.0, order_timeout_seconds=15.0)
    engine.paper.control.set_fill(delay_seconds=60)  # every order rests OPEN
    strategy = await engine.strategy("SBIN", quantity=3, api_key="twin2")
    engine.paper.control.add_fault("latency", route="place_order", count=1, seconds=5)
    handle = await engine.starter.place_buy_order(strategy)

    async def two_orders() -> Any:
        orders = orders_of(engine, "twin2")
        return orders if len(orders) == 2 else None

    await eventually(two_orders, "the held request's order at the broker", timeout=30)
    appeared = time.monotonic()

    async def twin_cancelled() -> Any:
        return [o for o in orders_of(engine, "twin2") if o["status"] == "CANCELLED"]

    [cancelled] = await eventually(twin_cancelled, "the twin cancelled", timeout=15)
    took = time.monotonic() - appeared
    primary = [o for o in orders_of(engine, "twin2") if o["order_id"] != cancelled["order_id"]]
    assert [o["status"] for o in primary] == ["OPEN"], primary  # cancelled during the order's life
    assert took < 10, took
    description = await handle.describe()
    assert description.status is not None and description.status.name == "RUNNING"
    engine.paper.control.set_fill(delay_seconds=0)
