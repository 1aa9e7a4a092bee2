"""The market-data service end to end: the paper broker in its own process streaming ticks to the real
`KiteTicker`, a real worker on the Temporal dev server, PostgreSQL; the SL_SELL counted at the broker."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from rich.console import Console
from sqlalchemy import text
from temporalio.client import Client

from apps.api.schemas import OrderStatusOut
from apps.cli.main import run as cli_run
from apps.cli.orders import order_status_table
from apps.market_data import build_service, serve, status_lines
from engine.models import OrderResult
from starter.deps import Services
from starter.market_data import MarketDataService
from store import Store
from store.records import StrategyRecord, StrategySpec
from tests.fixtures.db import create_pg_database, drop_pg_database, pg_database_url
from tests.fixtures.paper import PaperBrokerProcess
from tests.fixtures.ports import free_port
from tests.fixtures.temporal import Engine, make_engine, replay_task_queue

WAIT_SECONDS = 20.0
# Order workflow ids carry the strategy id: keep clear of the other databases' ids on the one server.
OWN_IDS_FROM = 1_700_000_000 + uuid.uuid4().int % 100_000_000


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def market_store(engine_secret_key: str) -> AsyncIterator[Store]:
    """A database of its own: the service watches every open position with a stop-loss in it."""
    name = await create_pg_database("market_data")
    store = await Store.connect(pg_database_url(name), engine_secret_key)
    try:
        await store.migrate()
        async with store.engine.begin() as connection:
            await connection.execute(text(f"ALTER SEQUENCE strategies_id_seq RESTART WITH {OWN_IDS_FROM}"))
        yield store
    finally:
        await store.close()
        await drop_pg_database(name)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with PaperBrokerProcess(tmp_path_factory.mktemp("market-data") / "paper-broker.log") as process:
        yield process


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def engine(temporal_client: Client, market_store: Store, broker: PaperBrokerProcess) -> AsyncIterator[Engine]:
    async for built in make_engine(temporal_client, market_store, broker, market_data_poll_seconds=0.05):
        yield built
    await replay_task_queue(temporal_client, built.settings.task_queue)


@asynccontextmanager
async def running_service(engine: Engine, cache: Path, **options: Any) -> AsyncIterator[MarketDataService]:
    settings = engine.settings.model_copy(update={"instruments_cache_dir": cache, "market_data_metrics_port": 0,
                                                   **options.pop("settings", {})})
    service = build_service(settings, engine.store, engine.starter, **options)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, engine.store, engine.starter, stop, service))
    try:
        await asyncio.wait_for(service.loaded.wait(), WAIT_SECONDS)
        yield service
    finally:
        stop.set()
        await task


async def wait_until(what: str, condition: Callable[[], Any], timeout: float = WAIT_SECONDS) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        assert asyncio.get_running_loop().time() < deadline, f"never: {what}"
        await asyncio.sleep(0.02)


async def long_position(engine: Engine, symbol: str, api_key: str, **stop: Any) -> StrategyRecord:
    """A RUNNING strategy that bought 5 at the paper broker's current price."""
    user_id, account_id = await engine.account(api_key)
    strategy = await engine.store.create_strategy(StrategySpec(
        user_id=user_id, broker_account_id=account_id, name=f"{symbol.lower()}-{uuid.uuid4().hex[:6]}",
        symbol=symbol, quantity=5, **stop,
    ))
    strategy = await engine.store.set_strategy_status(strategy.id, "RUNNING")
    result = await (await engine.starter.place_buy_order(strategy)).result()
    assert result.filled_quantity == 5
    return await engine.store.get_strategy(strategy.id)


def sells_of(engine: Engine, api_key: str, symbol: str) -> list[dict[str, Any]]:
    return [o for o in engine.paper.control.orders()
            if o["api_key"] == api_key and o["side"] == "SELL" and o.get("tradingsymbol", symbol) == symbol]


def subscribed_tokens(engine: Engine, api_key: str) -> set[int]:
    return {int(token) for connection in engine.paper.control.ticker_connections()
            if connection["api_key"] == api_key for token in connection["modes"]}


async def closed(engine: Engine, strategy: StrategyRecord) -> bool:
    return (await engine.store.get_strategy(strategy.id)).position == "FLAT"


async def exit_order_of(engine: Engine, strategy: StrategyRecord) -> tuple[Any, OrderResult]:
    current = await engine.store.get_strategy(strategy.id)
    assert current.last_order_workflow_id is not None
    order = await engine.store.get_order(current.last_order_workflow_id)
    workflow_id = current.last_order_workflow_id.split("/")[0]
    result = await engine.client.get_workflow_handle(workflow_id, result_type=OrderResult).result()
    return order, result


async def test_a_position_opened_after_start_is_subscribed_and_repeated_ticks_sell_it_once(
    engine: Engine, tmp_path: Path
) -> None:
    async with running_service(engine, tmp_path) as service:
        strategy = await long_position(engine, "INFY", "md-once", stop_loss_price=Decimal("1490"))
        # Learnt from the order events: armed, and the account's ticker subscribed to INFY (408065).
        await wait_until("INFY subscribed", lambda: 408065 in subscribed_tokens(engine, "md-once"))
        assert service.index.stop_of(strategy.id) is not None
        assert not sells_of(engine, "md-once", "INFY")

        for price in ("1495", "1489.50", "1488", "1487", "1489.50", "1486"):
            engine.paper.control.set_price("INFY", price)
        await wait_until("the position closed", lambda: closed(engine, strategy))

        order, result = await exit_order_of(engine, strategy)
        assert [sell["quantity"] for sell in sells_of(engine, "md-once", "INFY")] == [5]
        assert (result.order_type.value, result.filled_quantity) == ("SL_SELL", 5)
        # The crossing tick's price and arrival time are on the order.
        assert order.trigger_price == Decimal("1489.50") and order.trigger_tick_at is not None
        assert order.requested_by == "market-data"
        # ... and in the order's detail, as the HTTP API and the CLI show it.
        report = await Services.assemble(engine.settings, engine.client, engine.store).order_status(
            order.workflow_id.split("/")[0])
        recorded = OrderStatusOut.of(report).recorded
        assert recorded is not None and recorded.trigger_tick_at == order.trigger_tick_at
        rendered = Console(width=200, record=True)
        rendered.print(order_status_table(report))
        assert f"1489.50 at {order.trigger_tick_at}" in rendered.export_text()
        assert (service.counts.sl_sell_started, service.counts.sl_sell_duplicates) == (1, 0)
        # Flat: no longer watched, and the instrument unsubscribed.
        await wait_until("INFY unsubscribed", lambda: 408065 not in subscribed_tokens(engine, "md-once"))
        assert strategy.id not in service.index


async def test_a_changed_stop_loss_moves_the_stop_and_a_percent_stop_follows_the_fill(
    engine: Engine, tmp_path: Path
) -> None:
    engine.paper.control.set_price("TCS", "3100")
    async with running_service(engine, tmp_path) as service:
        strategy = await long_position(engine, "TCS", "md-moved", stop_loss_pct=Decimal("2"))
        assert strategy.entry_price == Decimal("3100")
        await wait_until("armed", lambda: service.index.stop_of(strategy.id) is not None)
        assert service.index.stop_of(strategy.id).level == Decimal("3038")  # type: ignore[union-attr]

        await engine.store.update_strategy(strategy.id, stop_loss_pct=None, stop_loss_price=Decimal("3090"))
        await wait_until("moved", lambda: getattr(service.index.stop_of(strategy.id), "level", None) == Decimal("3090"))
        engine.paper.control.set_price("TCS", "3089.95")  # above the old stop (3038), through the new one
        await wait_until("the position closed", lambda: closed(engine, strategy))

        order, _ = await exit_order_of(engine, strategy)
        assert order.trigger_price == Decimal("3089.95")
        assert len(sells_of(engine, "md-moved", "TCS")) == 1


async def test_a_stop_already_through_at_start_sells_on_the_first_tick(engine: Engine, tmp_path: Path) -> None:
    engine.paper.control.set_price("SBIN", "800")
    strategy = await long_position(engine, "SBIN", "md-gap", stop_loss_price=Decimal("790"))
    engine.paper.control.set_price("SBIN", "760")  # the open gaps down through the stop
    async with running_service(engine, tmp_path) as service:
        await wait_until("the position closed", lambda: closed(engine, strategy))
        order, result = await exit_order_of(engine, strategy)
        assert order.trigger_price == Decimal("760") and result.order_type.value == "SL_SELL"
        assert len(sells_of(engine, "md-gap", "SBIN")) == 1
        assert service.counts.sl_sell_started == 1


async def test_a_dropped_connection_reconnects_with_the_new_token_and_restores_subscriptions(
    engine: Engine, tmp_path: Path
) -> None:
    engine.paper.control.set_price("ITC", "410")
    async with running_service(engine, tmp_path) as service:
        strategy = await long_position(engine, "ITC", "md-drop", stop_loss_price=Decimal("400"))
        await wait_until("ITC subscribed", lambda: 424961 in subscribed_tokens(engine, "md-drop"))
        feed = service.feeds[strategy.broker_account_id]
        reloads = service.counts.reloads

        # The morning's new token: the old one is dead at the broker, the new one in the store.
        engine.paper.control.expire_tokens("md-drop")
        fresh = engine.paper.login("md-drop")
        await engine.store.set_access_token(strategy.broker_account_id, fresh, None)
        assert engine.paper.control.drop_ticker_connections("md-drop") == 1

        await wait_until("reconnected", lambda: feed.connects == 2 and feed.connected)
        await wait_until("ITC subscribed again", lambda: 424961 in subscribed_tokens(engine, "md-drop"))
        await wait_until("a full reload after the reconnect", lambda: service.counts.reloads > reloads)

        engine.paper.control.set_price("ITC", "399.95")
        await wait_until("the position closed", lambda: closed(engine, strategy))
        assert len(sells_of(engine, "md-drop", "ITC")) == 1
        assert service.health()[0]["connected"] is True


async def test_health_shows_per_account_and_one_alert_comes_when_ticks_stop_in_market_hours(
    engine: Engine, tmp_path: Path
) -> None:
    alerts: list[tuple[str, str]] = []

    async def alert(title: str, message: str) -> None:
        alerts.append((title, message))

    port = free_port()
    settings = {"market_data_metrics_port": port, "market_data_stale_seconds": 0.5, "metrics_host": "127.0.0.1"}
    engine.paper.control.set_price("LT", "3600")
    async with running_service(engine, tmp_path, settings=settings, market_open=lambda moment: True,
                               alert=alert) as service:
        strategy = await long_position(engine, "LT", "md-quiet", stop_loss_price=Decimal("3500"))
        account = strategy.broker_account_id
        await wait_until("LT subscribed", lambda: 2939649 in subscribed_tokens(engine, "md-quiet"))
        lines = await asyncio.to_thread(status_lines, engine.settings.model_copy(update=settings))
        assert f"account {account}: connected, 1 instruments subscribed" in "\n".join(lines)
        # `engine market-data --status` prints the same lines.
        printed = Console(width=200, record=True)
        services = Services.assemble(engine.settings.model_copy(update=settings), engine.client, engine.store)
        assert await cli_run(["market-data", "--status"], printed, services) == 0
        assert f"account {account}: connected, 1 instruments subscribed" in printed.export_text()

        # The price stands still: no ticks (heartbeats only). One alert, however long it lasts.
        await wait_until("an alert", lambda: alerts)
        await wait_until("three stale periods", lambda: (service.health()[-1]["last_tick_age_seconds"] or 0) > 2.5)
        assert len(alerts) == 1 and alerts[0][0] == f"no ticks for account {account}"
        assert "stop-losses are not being watched" in alerts[0][1]

        engine.paper.control.set_price("LT", "3601")  # ticks again: the next silence alerts again
        await wait_until("a second alert after ticks resumed and stopped", lambda: len(alerts) == 2)
        await engine.starter.exit_position(strategy, requested_by="test")
        await wait_until("the position closed", lambda: closed(engine, strategy))
