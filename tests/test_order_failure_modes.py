"""Failure modes that must not mislead: a follower that spins on read faults, a fill that beat the
timeout's cancel reported as a timeout. Real Temporal, PostgreSQL and the paper broker via kiteconnect."""

from __future__ import annotations

import asyncio
import logging

import pytest

from engine.models import Outcome
from tests.fixtures.temporal import Engine


async def test_order_book_read_faults_slow_the_follower_down(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="activities.order")
    engine.paper.control.set_fill(delay_seconds=4)  # the order rests while the book cannot be read
    strategy = await engine.strategy("INFY", quantity=2, api_key="spin1")
    engine.paper.control.add_fault("http_503", route="orders", count=None)
    engine.paper.control.add_fault("http_503", route="order_history", count=None)
    handle = await engine.starter.place_buy_order(strategy)
    await asyncio.sleep(3)
    polls = [r for r in caplog.records if "polling on" in r.getMessage()]
    engine.paper.control.clear_faults()

    result = await handle.result()

    assert (result.outcome, result.filled_quantity) == (Outcome.FILLED, 2)
    # 3 s of failing reads: a handful of log lines, not one per spin of the loop.
    assert len(polls) <= 5, len(polls)


async def test_a_fill_that_beats_the_timeouts_cancel_is_a_whole_fill(engine: Engine) -> None:
    assert engine.parts is not None
    engine.parts.order_activities.settings = engine.settings.model_copy(update={"order_timeout_seconds": 1.0})
    engine.paper.control.set_fill(delay_seconds=1.5)  # fills whole, after the deadline
    engine.paper.control.add_fault("latency", route="cancel_order", count=1, seconds=1.0)  # the cancel is late
    strategy = await engine.strategy("TCS", quantity=3, api_key="late1")

    result = await (await engine.starter.place_buy_order(strategy)).result()

    assert (result.outcome, result.filled_quantity) == (Outcome.FILLED, 3)
    assert not result.needs_intervention, result.message
    after = await engine.store.get_strategy(strategy.id)
    assert (after.open_quantity, after.needs_intervention) == (3, False)
