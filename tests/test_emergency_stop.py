"""The emergency stop end to end: real Temporal dev server, PostgreSQL, the paper broker, and a worker
process killed half-way through."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleHandle,
    ScheduleIntervalSpec,
    ScheduleSpec,
    ScheduleState,
    WorkflowExecutionStatus,
    WorkflowFailureError,
)
from temporalio.exceptions import ApplicationError

from brokers.paper.testing import PaperBrokerServer
from dev.devserver import DevServer
from engine.ids import OrderType
from engine.models import OrderIntent, OrderResult, Outcome
from engine.temporal import ended_order_result
from starter.control import EmergencyStopRefused, start_emergency_stop, wait_for_emergency_stop
from store import HistoryQuery, Store
from tests.fixtures.db import create_pg_database, drop_pg_database, pg_database_url
from tests.fixtures.temporal import Engine, engine_settings, make_engine
from workflows.emergency_stop import ALL_USERS_ID
from workflows.order import OrderWorkflow

PROJECT_ROOT = Path(__file__).resolve().parent.parent
WAIT_SECONDS = 20.0
SYMBOLS = ("RELIANCE", "INFY", "TCS", "SBIN", "HDFCBANK")


def paper_orders(engine: Engine, api_key: str) -> list[dict[str, Any]]:
    return [o for o in engine.paper.control.orders() if o["api_key"] == api_key and o["order_id"] is not None]


async def failure_of(handle: Any) -> ApplicationError:
    with pytest.raises(WorkflowFailureError) as failed:
        await handle.result()
    cause = failed.value.cause
    assert isinstance(cause, ApplicationError)
    return cause


async def unfilled_end(handle: Any) -> OrderResult:
    """The result of a run that ended with nothing filled: Failed, or Canceled when a cancel ended it."""
    with pytest.raises(WorkflowFailureError) as failed:
        await handle.result()
    ended = await ended_order_result(handle, failed.value)
    assert ended is not None, failed.value.cause
    status = (await handle.describe()).status
    cancelled = ended.outcome is Outcome.CANCELLED
    expected = WorkflowExecutionStatus.CANCELED if cancelled else WorkflowExecutionStatus.FAILED
    assert status == expected, (status, ended)
    return ended


async def wait_until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_no_order_reaches_the_broker_after_the_stop(engine: Engine) -> None:
    engine.paper.control.set_fill(delay_seconds=60)  # every BUY rests at the broker until cancelled
    strategies = [await engine.strategy(symbol, quantity=2, api_key="panic") for symbol in SYMBOLS]
    user_id = strategies[0].user_id
    buys = await asyncio.gather(*(engine.starter.place_buy_order(strategy) for strategy in strategies))
    await wait_until(lambda: paper_orders(engine, "panic"), "the first BUY at the broker")

    stop_id = await start_emergency_stop(
        engine.client, engine.settings, user_id=user_id, square_off=False, reason="runaway strategy",
        requested_by="alice",
    )
    stopped = [await engine.store.get_strategy(strategy.id) for strategy in strategies]
    report = await wait_for_emergency_stop(engine.client, stop_id)
    stop_returned = time.time()

    # When start_emergency_stop returned, every strategy was already STOPPED, with the reason and time.
    assert stop_id == f"emergency-stop:user:{user_id}"
    assert all(s.status == "STOPPED" and s.stopped_at is not None for s in stopped)
    assert all(s.stop_reason == "emergency stop by alice: runaway strategy" for s in stopped)
    # Every BUY ended unfilled: cancelled at the broker, or refused by validation if it came too late.
    ends = [await unfilled_end(buy) for buy in buys]
    assert {end.outcome for end in ends} <= {Outcome.CANCELLED, Outcome.INVALID}
    at_broker = paper_orders(engine, "panic")
    assert at_broker and all(order["status"] == "CANCELLED" for order in at_broker)
    # Each order at the broker had passed validation before the stop: the stop cancelled it.
    assert len(report.orders_cancelled) >= len(at_broker)
    assert {end.workflow_id for end in report.orders_cancelled} <= {buy.id for buy in buys}
    assert all(end.outcome == Outcome.CANCELLED.value for end in report.orders_cancelled)
    assert sorted(report.strategies_stopped) == sorted(s.id for s in strategies)

    # New triggers are refused by validation: nothing more reaches the broker.
    retries = [await engine.starter.place_buy_order(strategy) for strategy in strategies]
    refusals = [await failure_of(retry) for retry in retries]
    assert all(r.type == Outcome.INVALID.value and "STOPPED, not RUNNING" in r.message for r in refusals)
    after = paper_orders(engine, "panic")
    assert len(after) == len(at_broker)
    assert max(order["received_at_epoch"] for order in after) <= stop_returned


async def test_pressing_it_twice_is_harmless_and_squares_off_once(engine: Engine) -> None:
    engine.paper.control.set_price("HDFCBANK", "1600.10")
    holding = await engine.strategy("HDFCBANK", quantity=3, api_key="twice")
    flat = await engine.strategy("ITC", quantity=5, api_key="twice")
    await (await engine.starter.place_buy_order(holding)).result()
    engine.paper.control.set_price("HDFCBANK", "1590.00")
    user_id = holding.user_id

    async with strategy_schedules(engine, holding.id) as schedules:
        first = await start_emergency_stop(
            engine.client, engine.settings, user_id=user_id, square_off=False, reason="market halt",
            requested_by="alice",
        )
        # Pressed again, now with a square-off: it joins the stop if still running, else runs anew.
        second = await start_emergency_stop(
            engine.client, engine.settings, user_id=user_id, square_off=True, reason="market halt",
            requested_by="alice",
        )
        report = await wait_for_emergency_stop(engine.client, second)
        paused = [(await schedule.describe()).schedule.state for schedule in schedules]
    third = await start_emergency_stop(  # after it finished: a new run of the same steps
        engine.client, engine.settings, user_id=user_id, square_off=True, reason="market halt", requested_by="bob"
    )
    again = await wait_for_emergency_stop(engine.client, third)

    assert first == second == third == f"emergency-stop:user:{user_id}"
    assert all(state.paused and state.note == "emergency stop: market halt" for state in paused)
    [square_off] = report.squared_off
    assert square_off.outcome == Outcome.FILLED.value and square_off.filled_quantity == 3
    assert again.squared_off == [] and again.problems == []
    sells = [o for o in paper_orders(engine, "twice") if o["side"] == "SELL"]
    assert len(sells) == 1  # squared off once, however often the button was pressed
    after = await engine.store.get_strategy(holding.id)
    assert (after.status, after.position, after.open_quantity) == ("STOPPED", "FLAT", 0)
    assert after.realized_pnl == Decimal("-30.30")  # (1590.00 - 1600.10) * 3
    assert (await engine.store.get_strategy(flat.id)).status == "STOPPED"
    # The bypass of "RUNNING only" is on record: who, why, and that it was a square-off.
    sell_log = [r for r in (await engine.store.order_history(HistoryQuery(strategy_id=holding.id))).items
                if r.order_type == "SELL"]
    assert len(sell_log) == 1 and sell_log[0].order_data["square_off"] is True
    order = await engine.store.get_order(sell_log[0].workflow_id)
    assert order.requested_by == "alice" and order.reason == "square-off: market halt"


@asynccontextmanager
async def strategy_schedules(engine: Engine, strategy_id: int) -> AsyncIterator[list[ScheduleHandle]]:
    """The strategy's entry and exit schedules, as the scheduler names them; removed afterwards."""
    handles = []
    for leg in ("entry", "exit"):
        handles.append(
            await engine.client.create_schedule(
                f"strategy:{strategy_id}:{leg}",
                Schedule(
                    action=ScheduleActionStartWorkflow(
                        "OrderWorkflow", id=f"never-{uuid.uuid4()}", task_queue=engine.settings.task_queue
                    ),
                    spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=timedelta(days=3650))]),
                    state=ScheduleState(paused=False),
                ),
            )
        )
    try:
        yield handles
    finally:
        for handle in handles:
            await handle.delete()


@pytest.mark.parametrize(
    ("status", "order_type", "square_off", "message"),
    [
        ("RUNNING", OrderType.SELL, True, "only a stopped strategy is squared off"),
        ("STOPPED", OrderType.BUY, True, "a square-off is a SELL"),
        ("STOPPED", OrderType.SL_SELL, True, "a square-off is a SELL"),
        ("STOPPED", OrderType.SELL, False, "STOPPED, not RUNNING"),
    ],
)
async def test_only_a_stopped_strategys_square_off_bypasses_running_only(
    engine: Engine, status: str, order_type: OrderType, square_off: bool, message: str
) -> None:
    strategy = await engine.strategy("TCS", quantity=2)
    await (await engine.starter.place_buy_order(strategy)).result()
    await engine.store.set_strategy_status(strategy.id, status, reason="test")
    sent_before = len(engine.paper.control.orders())

    handle = await engine.client.start_workflow(
        OrderWorkflow.run,
        OrderIntent(
            strategy_id=strategy.id, user_id=strategy.user_id, order_type=order_type, square_off=square_off,
            trigger_price=Decimal("1") if order_type is OrderType.SL_SELL else None,
        ),
        id=f"square-off-rule-{uuid.uuid4()}",
        task_queue=engine.settings.task_queue,
    )
    failure = await failure_of(handle)

    assert failure.type == Outcome.INVALID.value and message in failure.message
    assert len(engine.paper.control.orders()) == sent_before


async def test_a_stop_of_an_unknown_user_is_refused(engine: Engine) -> None:
    with pytest.raises(EmergencyStopRefused, match="user 987654 does not exist"):
        await start_emergency_stop(
            engine.client, engine.settings, user_id=987654, square_off=False, reason="test", requested_by="alice"
        )


@pytest.fixture
async def own_store(engine_secret_key: str) -> AsyncIterator[Store]:
    """A database of its own: a global stop stops every strategy in it."""
    name = await create_pg_database("global_stop")
    store = await Store.connect(pg_database_url(name), engine_secret_key)
    try:
        await store.migrate()
        yield store
    finally:
        await store.close()
        await drop_pg_database(name)


async def test_the_global_stop_stops_every_user(
    temporal_client: Client, own_store: Store, paper: PaperBrokerServer
) -> None:
    async for engine in make_engine(temporal_client, own_store, paper):
        ours = [await engine.strategy("INFY", api_key=key) for key in ("user1", "user2", "user3")]

        stop_id = await start_emergency_stop(
            engine.client, engine.settings, user_id=None, square_off=False, reason="exchange outage",
            requested_by="admin",
        )
        report = await wait_for_emergency_stop(engine.client, stop_id)

        assert stop_id == ALL_USERS_ID and report.scope == "every user"
        assert sorted(report.strategies_stopped) == [s.id for s in ours]
        assert {s.status for s in await engine.store.list_strategies()} == {"STOPPED"}


# A worker process killed half-way through the stop.


def worker_process(environment: dict[str, str], log_file: Path) -> subprocess.Popen[bytes]:
    with open(log_file, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "worker.py"], cwd=PROJECT_ROOT, env=environment, stdout=log, stderr=log,
            stdin=subprocess.DEVNULL,
        )


async def test_a_worker_killed_half_way_through_the_stop_leaves_the_rest_to_another(
    engine: Engine, temporal_server: DevServer, engine_secret_key: str, tmp_path: Path
) -> None:
    # The orders run on the test's own worker; the stop on worker processes of a task queue of its own.
    stop_settings = engine_settings("unused://", engine.paper.url, task_queue=f"control-{uuid.uuid4()}")
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "PAYLOAD_CODEC"))},
        "DATABASE_URL": engine.store.engine.url.render_as_string(hide_password=False),
        "ENGINE_SECRET_KEY": engine_secret_key,
        "ENGINE_KITE_ROOT": engine.paper.url,
        "ENGINE_TASK_QUEUE": stop_settings.task_queue,
        "ENGINE_METRICS_PORT": "0",
        "ENGINE_TEMPORAL_METRICS_PORT": "0",
        "TEMPORAL_ADDRESS": temporal_server.address,
        "ENGINE_ENFORCE_MARKET_HOURS": "false",
        "ENGINE_BROKER_HTTP_TIMEOUT_SECONDS": "2",
    }
    engine.paper.control.set_fill(delay_seconds=60)
    strategies = [await engine.strategy(symbol, quantity=1, api_key="crash") for symbol in SYMBOLS[:2]]
    buys = await asyncio.gather(*(engine.starter.place_buy_order(strategy) for strategy in strategies))
    await wait_until(lambda: len(paper_orders(engine, "crash")) == 2, "both BUYs at the broker")
    # Each cancel takes a while at the broker: the stop is still waiting for the orders when killed.
    engine.paper.control.add_fault("latency", route="cancel_order", count=None, seconds=0.6)

    first = worker_process(environment, tmp_path / "worker-1.log")
    second: subprocess.Popen[bytes] | None = None
    try:
        stop_id = await start_emergency_stop(
            engine.client, stop_settings, user_id=strategies[0].user_id, square_off=False, reason="kill test",
            requested_by="alice",
        )
        await wait_until(
            lambda: any(r["route"] == "cancel_order" for r in engine.paper.control.requests()),
            "the stop's cancels to go out",
        )
        first.send_signal(signal.SIGKILL)
        first.wait()
        second = worker_process(environment, tmp_path / "worker-2.log")

        report = await asyncio.wait_for(wait_for_emergency_stop(engine.client, stop_id), 60)
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()

    assert sorted(end.workflow_id for end in report.orders_cancelled) == sorted(buy.id for buy in buys)
    assert all(end.outcome == Outcome.CANCELLED.value for end in report.orders_cancelled)
    assert all(o["status"] == "CANCELLED" for o in paper_orders(engine, "crash"))
    description = await engine.client.get_workflow_handle(stop_id).describe()
    assert description.status == WorkflowExecutionStatus.COMPLETED
    identities = {
        event.activity_task_started_event_attributes.identity
        for event in (await engine.client.get_workflow_handle(stop_id).fetch_history()).events
        if event.HasField("activity_task_started_event_attributes")
    } | {
        event.workflow_task_started_event_attributes.identity
        for event in (await engine.client.get_workflow_handle(stop_id).fetch_history()).events
        if event.HasField("workflow_task_started_event_attributes")
    }
    assert any(identity.startswith(f"{first.pid}@") for identity in identities)
    assert second is not None and any(identity.startswith(f"{second.pid}@") for identity in identities)
