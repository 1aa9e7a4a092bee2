"""A whole trading day against the paper broker in its own process, as a trader lives it: the morning's
Kite login through the redirect, scheduled entries, ticks streamed to the market-data service and a
stop-loss sold from one, another strategy's scheduled exit, the token dying (06:00 IST came round on
the broker's clock), an entry refused with one alert, the login again, the entry resumed. Every broker
order exactly once."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import text
from temporalio.client import Client

from apps.api.main import create_app
from apps.market_data import build_service, serve
from apps.worker import build_worker
from engine.market_hours import IST
from engine.models import OrderResult, Outcome
from starter.logins import AccountLogins
from starter.schedules import Leg, StrategySchedules, schedule_id
from store import Store
from store.records import StrategyRecord, StrategySpec
from tests.fixtures.db import create_pg_database, drop_pg_database, pg_database_url
from tests.fixtures.paper import PaperBrokerProcess
from tests.fixtures.temporal import Engine, make_engine, replay_task_queue
from tests.test_schedules import scheduled_results

WAIT_SECONDS = 20.0
OWN_IDS_FROM = 1_800_000_000 + uuid.uuid4().int % 100_000_000
API_KEY = "day-trader"
API_URL = "http://engine.example"


@pytest_asyncio.fixture(loop_scope="session")
async def day_store(engine_secret_key: str) -> AsyncIterator[Store]:
    name = await create_pg_database("trading_day")
    store = await Store.connect(pg_database_url(name), engine_secret_key)
    try:
        await store.migrate()
        async with store.engine.begin() as connection:  # schedule ids carry strategy ids: the server is shared
            await connection.execute(text(f"ALTER SEQUENCE strategies_id_seq RESTART WITH {OWN_IDS_FROM}"))
        yield store
    finally:
        await store.close()
        await drop_pg_database(name)


@pytest.fixture
def broker(tmp_path: Path) -> Any:
    with PaperBrokerProcess(tmp_path / "paper-broker.log") as process:
        yield process


@pytest_asyncio.fixture(loop_scope="session")
async def day(temporal_client: Client, day_store: Store, broker: PaperBrokerProcess) -> AsyncIterator[Engine]:
    async for engine in make_engine(temporal_client, day_store, broker, start_worker=False,
                                    market_data_poll_seconds=0.05):
        worker, _ = build_worker(engine.client, engine.store, engine.settings, events=engine.events)
        async with worker:
            yield engine
        schedules = StrategySchedules(engine.client, engine.settings)
        for strategy in await engine.store.list_strategies():
            await schedules.delete(strategy.id)
    await replay_task_queue(temporal_client, engine.settings.task_queue)


async def eventually(what: str, condition: Any) -> Any:
    deadline = asyncio.get_running_loop().time() + WAIT_SECONDS
    while True:
        value = await condition()
        if value:
            return value
        assert asyncio.get_running_loop().time() < deadline, f"never: {what}"
        await asyncio.sleep(0.05)


async def log_in(engine: Engine, account_id: int) -> str:
    """The morning's login as a person does it; returns the page the browser ends on."""
    url = await AccountLogins(engine.store, engine.settings).login_url(account_id)
    location = engine.paper.control.log_in(url)
    app = create_app(engine.settings, engine.client, engine.store)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=API_URL) as api:
        page = await api.get(location)
    assert page.status_code == 200, page.text
    return page.text


async def fire(engine: Engine, strategy: StrategyRecord, leg: Leg, firing: int = 1) -> OrderResult | None:
    """The strategy's entry or exit schedule fires now; the order it started, once ended."""
    schedule = engine.client.get_schedule_handle(schedule_id(strategy.id, leg))
    await schedule.trigger()
    results = await scheduled_results(engine.client, schedule.id, firing)
    workflow_id = results[firing - 1].order_workflow_id
    assert workflow_id is not None, results[firing - 1]
    handle = engine.client.get_workflow_handle(workflow_id, result_type=OrderResult)
    try:
        return await handle.result()
    except Exception:
        return None  # ended with nothing filled: its outcome is in the store


async def test_a_trading_day(day: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    control = day.paper.control
    user, _ = await day.store.create_user(f"trader-{uuid.uuid4().hex[:6]}")
    account = await day.store.add_broker_account(user.id, broker="kite", api_key=API_KEY, api_secret="paper-secret")
    control.register_redirect(API_KEY, f"{API_URL}/kite/login/{account.id}/redirect")
    for symbol, price in (("RELIANCE", "2500"), ("INFY", "1500"), ("TCS", "3500")):
        control.set_price(symbol, price)

    async def strategy(symbol: str, quantity: int, **stop: Any) -> StrategyRecord:
        made = await day.store.create_strategy(StrategySpec(
            user_id=user.id, broker_account_id=account.id, name=f"{symbol.lower()}-{uuid.uuid4().hex[:4]}",
            symbol=symbol, quantity=quantity, entry_time=time(9, 15), exit_time=time(15, 10), **stop,
        ))
        running = await day.store.set_strategy_status(made.id, "RUNNING")
        await StrategySchedules(day.client, day.settings).sync(running)
        return running

    # Before 09:15: the login.
    page = await log_in(day, account.id)
    assert f"Broker account {account.id} is logged in to Kite" in page
    protected = await strategy("RELIANCE", 4, stop_loss_price=Decimal("2450"))
    timed = await strategy("INFY", 3)
    late = await strategy("TCS", 2)

    settings = day.settings.model_copy(update={"instruments_cache_dir": tmp_path, "market_data_metrics_port": 0})
    service = build_service(settings, day.store, day.starter)
    stop_service = asyncio.Event()
    service_task = asyncio.create_task(serve(settings, day.store, day.starter, stop_service, service))
    try:
        # The open: scheduled entries.
        for entering in (protected, timed):
            bought = await fire(day, entering, Leg.ENTRY)
            assert bought is not None and bought.outcome is Outcome.FILLED
        await eventually("the stop armed", lambda: _armed(service, protected.id))

        # The day's ticks: RELIANCE falls through its stop; the service sells it from a tick.
        for price in ("2480", "2460.50", "2449.95", "2440", "2445"):
            control.set_price("RELIANCE", price)
        after_stop = await eventually("the stop-loss sold", lambda: _flat(day, protected.id))
        assert after_stop.exit_reason == "STOP_LOSS"

        # 15:10: the other strategy's scheduled exit.
        sold = await fire(day, timed, Leg.EXIT)
        assert sold is not None and (sold.outcome, sold.filled_quantity) == (Outcome.FILLED, 3)

        # 06:00 IST comes round on the broker's clock: the day's token is dead.
        now = datetime.now(IST) + timedelta(seconds=control.clock()["offset_seconds"])
        six = now.replace(hour=6, minute=0, second=0, microsecond=0)
        next_six = six if six > now else six + timedelta(days=1)
        control.set_clock(advance_seconds=(next_six - now).total_seconds() + 60)
        refused = await fire(day, late, Leg.ENTRY)
        assert refused is None  # refused before anything reached the broker
        account_now = await day.store.get_broker_account(account.id)
        assert not account_now.logged_in_at(datetime.now(UTC))
        alerts = [r.getMessage() for r in caplog.records
                  if r.name == "engine.alerts" and f"log in to Kite for account {account.id}" in r.getMessage()]
        assert len(alerts) == 1, alerts
        assert not (await day.store.get_strategy(late.id)).needs_intervention

        # The login again; the entry goes out.
        await log_in(day, account.id)
        resumed = await fire(day, late, Leg.ENTRY, firing=2)
        assert resumed is not None and (resumed.outcome, resumed.filled_quantity) == (Outcome.FILLED, 2)
    finally:
        stop_service.set()
        await service_task

    orders = [o for o in control.orders() if o["api_key"] == API_KEY]
    sides = sorted((o["tradingsymbol"], o["side"], o["quantity"], o["status"]) for o in orders)
    assert sides == [
        ("INFY", "BUY", 3, "COMPLETE"), ("INFY", "SELL", 3, "COMPLETE"),
        ("RELIANCE", "BUY", 4, "COMPLETE"), ("RELIANCE", "SELL", 4, "COMPLETE"),
        ("TCS", "BUY", 2, "COMPLETE"),
    ], sides
    assert len({o["tag"] for o in orders}) == len(orders)  # every broker order exactly once
    positions = {s.symbol: (s.position, s.open_quantity) for s in await day.store.list_strategies()}
    assert positions == {"RELIANCE": ("FLAT", 0), "INFY": ("FLAT", 0), "TCS": ("LONG", 2)}


async def _armed(service: Any, strategy_id: int) -> bool:
    return service.index.stop_of(strategy_id) is not None


async def _flat(engine: Engine, strategy_id: int) -> StrategyRecord | None:
    strategy = await engine.store.get_strategy(strategy_id)
    return strategy if strategy.position == "FLAT" and strategy.active_order_workflow_id is None else None
