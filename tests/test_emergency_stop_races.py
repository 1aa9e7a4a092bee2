"""The emergency stop against orders caught half-way: entries queued for the broker, a square-off at the
broker when a second stop comes, a placement whose answer was lost. Real Temporal dev server, PostgreSQL,
and the paper broker in a process of its own (its timing is not the test's)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle

from engine.models import OrderResult, Outcome
from engine.temporal import ended_order_result
from starter.control import start_emergency_stop, wait_for_emergency_stop
from store import Store
from tests.fixtures.db import create_pg_database, drop_pg_database, pg_database_url
from tests.fixtures.paper import PaperBrokerProcess
from tests.fixtures.temporal import Engine, make_engine, replay_task_queue

WAIT_SECONDS = 30.0
OWN_IDS_FROM = 1_500_000_000 + uuid.uuid4().int % 100_000_000
# The broker's answer to what the engine recorded: the outcome a stop's report must show.
OUTCOME_OF_BROKER_STATUS = {"COMPLETE": Outcome.FILLED.value, "CANCELLED": Outcome.CANCELLED.value}


async def wait_until(condition: Any, what: str, seconds: float = WAIT_SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def broker_orders(engine: Engine, api_key: str) -> list[dict[str, Any]]:
    return [o for o in engine.paper.control.orders() if o["api_key"] == api_key and o["order_id"] is not None]


async def order_end(handle: WorkflowHandle[Any, Any]) -> OrderResult:
    """The order's result, whether its workflow completed, failed or was canceled (nothing filled)."""
    try:
        return OrderResult.model_validate(await handle.result())
    except WorkflowFailureError as failed:
        ended = await ended_order_result(handle, failed)
        assert ended is not None, failed
        return ended


@asynccontextmanager
async def engine_apart(
    client: Client, store: Store, paper: PaperBrokerProcess, **settings: object
) -> AsyncIterator[Engine]:
    """An engine on the broker process; every workflow it ran is replayed afterwards."""
    async for built in make_engine(client, store, paper, True, **settings):
        yield built
    await replay_task_queue(client, built.settings.task_queue)


async def test_entries_queued_before_a_stop_do_not_leave_after_it(
    temporal_client: Client, engine_store: Store, paper_process: PaperBrokerProcess
) -> None:
    # Two orders a second: a queue that takes seconds to drain.
    async with engine_apart(temporal_client, engine_store, paper_process, broker_orders_per_second=2) as engine:
        await entries_queued_before_a_stop(engine)


async def entries_queued_before_a_stop(engine: Engine) -> None:
    strategies = [await engine.strategy("INFY", quantity=1, api_key="queued") for _ in range(16)]
    buys = await asyncio.gather(*(engine.starter.place_buy_order(strategy) for strategy in strategies))
    await wait_until(lambda: broker_orders(engine, "queued"), "the first BUY at the broker")

    stop_id = await start_emergency_stop(
        engine.client, engine.settings, user_id=strategies[0].user_id, square_off=False, reason="runaway",
        requested_by="alice",
    )
    report = await wait_for_emergency_stop(engine.client, stop_id)
    ends = [await order_end(buy) for buy in buys]
    await asyncio.sleep(1.5)  # three more pacing slots: anything still queued would have left by now
    at_broker = {order["tag"]: order for order in broker_orders(engine, "queued")}

    assert 0 < len(at_broker) < len(buys), f"the stop came while entries were queued: {len(at_broker)} sent"
    for strategy, end in zip(strategies, ends, strict=True):
        order = await engine.store.get_order(end.order_key)
        after = await engine.store.get_strategy(strategy.id)
        sent = at_broker.get(order.tag)
        if sent is None:  # stopped in the queue: never sent, and the report says so
            assert end.outcome is Outcome.CANCELLED and "was not sent to the broker" in (end.message or "")
            assert (after.position, after.open_quantity) == ("FLAT", 0)
            continue
        # Sent before the stop committed: the check and the stop take the strategy's lock in turn.
        assert order.placement_sent_at is not None and after.stopped_at is not None
        assert order.placement_sent_at < after.stopped_at
        assert end.outcome.value == OUTCOME_OF_BROKER_STATUS[sent["status"]]
        assert after.open_quantity == sent["filled_quantity"]
    stopped = [await engine.store.get_strategy(s.id) for s in strategies]
    assert all(s.status == "STOPPED" for s in stopped)
    # The report names the entries in flight when the stop took the strategies: an entry that filled and
    # ended first (the fast path finishes a market order within its watch) was not in flight then.
    reported_filled = {e.workflow_id for e in report.orders_filled_before_cancel}
    finished_before = set()
    for buy, end, after in zip(buys, ends, stopped, strict=True):
        if end.outcome is Outcome.FILLED and buy.id not in reported_filled:
            completed = (await engine.store.get_order(end.order_key)).completed_at
            assert completed is not None and after.stopped_at is not None and completed < after.stopped_at
            finished_before.add(buy.id)
    # What the report calls cancelled is what the broker (or the queue) cancelled; fills are named as fills.
    assert sorted(e.workflow_id for e in report.orders_cancelled) == sorted(
        buy.id for buy, end in zip(buys, ends, strict=True) if end.outcome is Outcome.CANCELLED
    )
    assert sorted(reported_filled | finished_before) == sorted(
        buy.id for buy, end in zip(buys, ends, strict=True) if end.outcome is Outcome.FILLED
    )
    assert len(report.orders_cancelled) + len(report.orders_filled_before_cancel) + len(finished_before) == len(buys)


@pytest.fixture
async def own_store(engine_secret_key: str) -> AsyncIterator[Store]:
    """A database of its own: a global stop stops every strategy in it."""
    name = await create_pg_database("composed_stop")
    store = await Store.connect(pg_database_url(name), engine_secret_key)
    try:
        await store.migrate()
        # Order workflow ids carry the strategy id: keep clear of the ids of the shared engine database.
        async with store.engine.begin() as connection:
            await connection.execute(text(f"ALTER SEQUENCE strategies_id_seq RESTART WITH {OWN_IDS_FROM}"))
        yield store
    finally:
        await store.close()
        await drop_pg_database(name)


async def test_a_global_stop_leaves_another_stops_square_off_working(
    temporal_client: Client, own_store: Store, paper_process: PaperBrokerProcess
) -> None:
    async with engine_apart(temporal_client, own_store, paper_process, order_timeout_seconds=60) as engine:
        await global_stop_during_a_square_off(engine)


async def global_stop_during_a_square_off(engine: Engine) -> None:
    strategy = await engine.strategy("HDFCBANK", quantity=3, api_key="composed")
    await (await engine.starter.place_buy_order(strategy)).result()
    engine.paper.control.set_fill(delay_seconds=8)  # the square-off SELL rests at the broker a while

    def sells() -> list[dict[str, Any]]:
        return [o for o in broker_orders(engine, "composed") if o["side"] == "SELL"]

    user_stop = await start_emergency_stop(
        engine.client, engine.settings, user_id=strategy.user_id, square_off=True, reason="user panic",
        requested_by="alice",
    )
    await wait_until(sells, "the square-off SELL at the broker")
    global_stop = await start_emergency_stop(
        engine.client, engine.settings, user_id=None, square_off=False, reason="exchange outage",
        requested_by="admin",
    )
    global_report = await wait_for_emergency_stop(engine.client, global_stop)
    [sell] = sells()
    cancels = [r for r in engine.paper.control.requests() if r["route"] == "cancel_order"]
    user_report = await wait_for_emergency_stop(engine.client, user_stop)
    after = await engine.store.get_strategy(strategy.id)

    assert sell["status"] == "OPEN" and cancels == []  # the global stop ended with the SELL still working
    exit_id = f"order:{strategy.id}:1:exit"
    assert global_report.exits_left_working == [exit_id]
    assert global_report.orders_cancelled == [] and global_report.orders_filled_before_cancel == []
    [squared] = user_report.squared_off
    assert (squared.workflow_id, squared.outcome, squared.filled_quantity) == (exit_id, Outcome.FILLED.value, 3)
    assert user_report.problems == []
    assert (after.status, after.position, after.open_quantity, after.needs_intervention) == (
        "STOPPED", "FLAT", 0, False
    )


@pytest.mark.parametrize("interruption", ["emergency stop", "cancel"])
async def test_a_stop_or_cancel_during_a_lost_placement_answer_keeps_the_fill(
    temporal_client: Client, engine_store: Store, paper_process: PaperBrokerProcess, interruption: str
) -> None:
    async with engine_apart(temporal_client, engine_store, paper_process, broker_http_timeout_seconds=7) as engine:
        await interrupted_lost_placement(engine, interruption)


async def interrupted_lost_placement(engine: Engine, interruption: str) -> None:
    api_key = f"lost-{interruption.replace(' ', '-')}"
    strategy = await engine.strategy("SBIN", quantity=4, api_key=api_key)
    # The broker takes the BUY (it fills at once) but its answer comes after the client has given up.
    engine.paper.control.add_fault("accept_then_timeout", route="place_order", count=1, seconds=12)
    # The BUY first waits 3 s in its account's queue: with the 7 s answer it lives longer than 80% of
    # its workflow task, so the interruption reaches the workflow while the attempt still runs.
    _, account_id = await engine.account(api_key)
    await engine.store.reserve_send_slot(account_id, timedelta(seconds=3))

    buy = await engine.starter.place_buy_order(strategy)
    await wait_until(lambda: broker_orders(engine, api_key), "the BUY at the broker")
    if interruption == "cancel":
        await buy.signal("cancel", "changed my mind")  # as an operator's cancel does: the signal, then
        await buy.cancel()  # Temporal's cancel request
        report = None
    else:
        stop_id = await start_emergency_stop(
            engine.client, engine.settings, user_id=strategy.user_id, square_off=False, reason="mid-placement",
            requested_by="alice",
        )
        report = await wait_for_emergency_stop(engine.client, stop_id)
    end = await order_end(buy)
    after = await engine.store.get_strategy(strategy.id)

    [at_broker] = broker_orders(engine, api_key)
    assert (at_broker["status"], at_broker["filled_quantity"]) == ("COMPLETE", 4)
    # Looked up by its tag before anything ended: the store holds what the broker holds.
    assert (end.outcome, end.filled_quantity, end.broker_order_id) == (Outcome.FILLED, 4, at_broker["order_id"])
    assert (after.position, after.open_quantity) == ("LONG", 4)
    if report is not None:
        assert report.orders_cancelled == []
        assert [(e.workflow_id, e.filled_quantity) for e in report.orders_filled_before_cancel] == [(buy.id, 4)]


@pytest.mark.parametrize("square_off", [False, True])
async def test_a_stop_leaves_a_working_stop_loss_to_finish(
    temporal_client: Client, engine_store: Store, paper_process: PaperBrokerProcess, square_off: bool
) -> None:
    async with engine_apart(temporal_client, engine_store, paper_process, order_timeout_seconds=60) as engine:
        await stop_during_a_stop_loss(engine, square_off)


async def stop_during_a_stop_loss(engine: Engine, square_off: bool) -> None:
    api_key = f"protected-{square_off}"
    strategy = await engine.strategy("TCS", quantity=5, api_key=api_key)
    await (await engine.starter.place_buy_order(strategy)).result()
    engine.paper.control.set_fill(delay_seconds=6)  # the stop-loss SELL rests at the broker a while
    stop_loss = await engine.starter.place_sl_sell_order(await engine.store.get_strategy(strategy.id), Decimal("2400"))
    await wait_until(lambda: len(broker_orders(engine, api_key)) == 2, "the stop-loss at the broker")

    stop_id = await start_emergency_stop(
        engine.client, engine.settings, user_id=strategy.user_id, square_off=square_off, reason="halt",
        requested_by="alice",
    )
    report = await wait_for_emergency_stop(engine.client, stop_id)
    ended = await order_end(stop_loss)
    after = await engine.store.get_strategy(strategy.id)

    assert [r for r in engine.paper.control.requests() if r["route"] == "cancel_order"] == []
    assert report.exits_left_working == [stop_loss.id] and report.orders_cancelled == []
    if square_off:  # the square-off is the stop-loss already working: it waits for it, sends no second SELL
        assert [(e.workflow_id, e.outcome, e.filled_quantity) for e in report.squared_off] == [
            (stop_loss.id, Outcome.FILLED.value, 5)
        ]
    assert (ended.outcome, ended.filled_quantity) == (Outcome.FILLED, 5)
    assert len([o for o in broker_orders(engine, api_key) if o["side"] == "SELL"]) == 1
    assert (after.status, after.position, after.exit_reason) == ("STOPPED", "FLAT", "STOP_LOSS")
    assert report.problems == []


async def test_a_cancel_during_a_lost_placement_answer_cancels_the_order_at_the_broker(
    temporal_client: Client, engine_store: Store, paper_process: PaperBrokerProcess
) -> None:
    async with engine_apart(temporal_client, engine_store, paper_process, broker_http_timeout_seconds=7) as engine:
        await cancel_during_a_lost_answer_of_a_resting_order(engine)


async def cancel_during_a_lost_answer_of_a_resting_order(engine: Engine) -> None:
    api_key = "lost-resting"
    strategy = await engine.strategy("ITC", quantity=6, api_key=api_key)
    engine.paper.control.set_fill(delay_seconds=60)  # the BUY rests at the broker
    engine.paper.control.add_fault("accept_then_timeout", route="place_order", count=1, seconds=12)
    _, account_id = await engine.account(api_key)
    await engine.store.reserve_send_slot(account_id, timedelta(seconds=3))  # as above: outlive the task

    buy = await engine.starter.place_buy_order(strategy)
    await wait_until(lambda: broker_orders(engine, api_key), "the BUY at the broker")
    await buy.signal("cancel", "changed my mind")
    await buy.cancel()
    end = await order_end(buy)
    after = await engine.store.get_strategy(strategy.id)

    [at_broker] = broker_orders(engine, api_key)
    # Found by its tag, then cancelled at the broker: nothing is left open that the store does not know.
    assert (at_broker["status"], at_broker["filled_quantity"]) == ("CANCELLED", 0)
    assert (end.outcome, end.broker_order_id) == (Outcome.CANCELLED, at_broker["order_id"])
    cancels = [r for r in engine.paper.control.requests() if r["route"] == "cancel_order"]
    assert [r["order_id"] for r in cancels] == [at_broker["order_id"]]
    assert (after.position, after.open_quantity, after.needs_intervention) == ("FLAT", 0, False)
