"""`make demo`: the embedded stack and one real scenario, end to end.

Starts the Temporal dev server (SQLite file and UI, search attributes registered), the paper broker, a
worker and the stop-loss listener, with SQLite as the database. Then a strategy buys RELIANCE, the price
falls through its stop-loss, and the listener's SL_SELL closes the position. Prints every step and where
to look in the Temporal UI; stays up until Ctrl-C (DEMO_EXIT=1: exits when the scenario ends, status 0
only if every step came out right).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time as time_module
import uuid
from datetime import UTC, datetime, time
from decimal import Decimal
from pathlib import Path
from urllib.parse import quote

import httpx
from temporalio.client import Client

from apps.api.main import create_app
from apps.market_data import build_service as build_market_data
from apps.worker import build_worker
from brokers.factory import KiteBrokerFactory
from brokers.paper.testing import PaperBrokerServer
from dev.devserver import DevServer
from engine.events import EventBus
from engine.models import OrderResult
from engine.settings import DATA_DIR, Settings
from engine.temporal import connect
from starter.logins import AccountLogins
from starter.market_data import MarketDataService
from starter.orders import OrderStarter
from store import HistoryQuery, Store
from store.records import StrategySpec

ENTRY_PRICE = Decimal("2500.00")
FALLING_PRICES = [Decimal("2480.00"), Decimal("2455.50"), Decimal("2438.25")]
STOP_LOSS = Decimal("2450.00")
QUANTITY = 10
# Where the HTTP API serves Kite's login redirect (`uvicorn apps.api.main:app`'s default address).
DEMO_API_URL = "http://127.0.0.1:8000"


# Fixed, printed ports (README); DEMO_*_PORT moves one when another program holds it.
PORTS = {"temporal": ("DEMO_TEMPORAL_PORT", 7233), "ui": ("DEMO_UI_PORT", 8233), "paper": ("DEMO_PAPER_PORT", 8700)}
STATE_FILE = DATA_DIR / "demo.json"  # the running demo's pid, its dev server's pid and its ports


def demo_ports() -> dict[str, int]:
    return {name: int(os.environ.get(variable, default)) for name, (variable, default) in PORTS.items()}


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind: TIME_WAIT is no owner
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_dev_server(pid: int) -> bool:
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(part.endswith(b"temporal") for part in command) and b"start-dev" in command


def previous_demo() -> dict[str, int] | None:
    """The demo still running from this folder, if any. A crashed one's dev server, still holding
    data/temporal.db, is stopped here: two dev servers on one SQLite file fail with SQLITE_BUSY."""
    try:
        state = json.loads(STATE_FILE.read_text())
    except (OSError, ValueError):
        return None
    if alive(state["pid"]):
        return dict(state)
    orphan = state.get("temporal_pid")
    if orphan and alive(orphan) and is_dev_server(orphan):
        say(f"A previous demo (pid {state['pid']}) ended without stopping its dev server: stopping pid {orphan}")
        os.kill(orphan, signal.SIGTERM)
        for _ in range(100):
            if not alive(orphan):
                break
            time_module.sleep(0.1)
    STATE_FILE.unlink(missing_ok=True)
    return None


def environment_for(settings: Settings, server: DevServer) -> list[str]:
    """What the CLI and the API need to work against the stack that is still up."""
    return [
        f"export DATABASE_URL={settings.database_url}",
        f"export TEMPORAL_ADDRESS={server.address}",
        f"export ENGINE_KITE_ROOT={settings.kite_root}",
        "export ENGINE_ENFORCE_MARKET_HOURS=false",
    ]


def say(text: str = "") -> None:
    print(text, flush=True)


class DemoFailed(Exception):
    pass


def check(condition: bool, what: str) -> None:
    say(f"   {'ok ' if condition else 'FAIL'} {what}")
    if not condition:
        raise DemoFailed(what)


def show_result(label: str, result: OrderResult) -> None:
    say(
        f"   {label}: {result.outcome} — {result.filled_quantity}/{result.requested_quantity} filled "
        f"at {result.average_price} (broker order {result.broker_order_id})"
    )


async def run_demo() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    DATA_DIR.mkdir(exist_ok=True)
    running = previous_demo()
    if running is not None:
        say(f"A demo is already running from this folder (pid {running['pid']}):")
        say(f"   Temporal UI   http://127.0.0.1:{running['ui']}")
        say(f"   paper broker  http://127.0.0.1:{running['paper']}")
        say(f"Use it, or stop it first: Ctrl-C in its terminal, or kill {running['pid']}")
        return 3
    ports = demo_ports()
    taken = [f"{port} ({name})" for name, port in ports.items() if port_in_use(port)]
    if taken:
        say(f"Port {', '.join(taken)} is in use by another program: stop it, or move the demo with "
            + ", ".join(f"{variable}=..." for variable, _ in PORTS.values()))
        return 3
    temporal_port, ui_port, paper_port = ports["temporal"], ports["ui"], ports["paper"]
    os.environ.setdefault("DATABASE_URL", f"sqlite+aiosqlite:///{DATA_DIR}/engine.db")
    settings = Settings(
        enforce_market_hours=False,
        kite_root=f"http://127.0.0.1:{paper_port}",
        order_poll_interval_seconds=0.1,
        order_timeout_seconds=30,
    )

    say("Starting the embedded stack")
    server = DevServer(
        port=temporal_port, ui_port=ui_port, db_file=str(DATA_DIR / "temporal.db"),
        log_file=str(DATA_DIR / "temporal.log"),
    )
    paper = PaperBrokerServer(host="127.0.0.1", port=paper_port)
    store: Store | None = None
    try:  # whatever started is stopped again, however the demo ends
        server.start()
        STATE_FILE.write_text(json.dumps({
            "pid": os.getpid(), "temporal_pid": server.process.pid if server.process else None, **ports,
        }))
        paper.start()
        store = await Store.connect(settings.database_url, settings.engine_secret_key)
        await store.migrate()
        await server.wait_for_frontend()
        client = await connect(server.address, environ={})
        say(f"   Temporal dev server  {server.address}   (UI {server.ui_url})")
        say(f"   paper broker         {paper.url}")
        say(f"   database             {settings.database_url}")
        events = EventBus()
        worker, _ = build_worker(client, store, settings, brokers=KiteBrokerFactory(settings), events=events)
        starter = OrderStarter(client, store, settings)
        # The market-data service, as in production: stop-losses from the paper broker's ticker WebSocket.
        market_data = build_market_data(settings.model_copy(update={"market_data_metrics_port": 0}), store, starter)
        stop_market_data = asyncio.Event()
        market_data_task = asyncio.create_task(market_data.run(stop_market_data))
        async with worker:
            try:
                ok = await scenario(settings, store, paper, starter, market_data, client)
            finally:
                stop_market_data.set()
                await market_data_task
            say()
            say("Where to look")
            namespace_url = f"{server.ui_url}/namespaces/default/workflows"
            say(f"   every order:          {namespace_url}")
            query = quote('OrderType="SL_SELL"')
            say(f"   the stop-loss orders: {namespace_url}?query={query}")
            say("   a stuck order:        filter OrderStatus=\"PLACED\" — see README, 'Finding a stuck order'")
            if os.environ.get("DEMO_EXIT") == "1":
                return 0 if ok else 1
            say()
            say("The stack stays up for inspection; Ctrl-C stops it. Meanwhile, in another shell:")
            for line in environment_for(settings, server):
                say(f"   {line}")
            say("   .venv/bin/engine strategies list          # the CLI against this stack")
            say("   .venv/bin/uvicorn apps.api.main:app       # the HTTP API against it")
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.Event().wait()
            return 0 if ok else 1
    finally:
        await tear_down(store, paper, server)


async def login_via_redirect(
    settings: Settings, store: Store, client: Client, paper: PaperBrokerServer, account_id: int, api_key: str
) -> bool:
    """The morning's login, as a trader does it: the login URL, Kite's page (the paper broker's), and
    the redirect to the engine's API, which exchanges the request token (answered in-process here)."""
    redirect = f"{DEMO_API_URL}/kite/login/{account_id}/redirect"
    paper.control.register_redirect(api_key, redirect)  # what the Kite developer console holds
    url = await AccountLogins(store, settings).login_url(account_id)
    say(f"0. log in to Kite: {url}")
    location = paper.control.log_in(url)
    say(f"   Kite's login page sends the browser to {location.split('?')[0]}?request_token=…")
    app = create_app(settings, client, store)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=DEMO_API_URL) as api:
        page = await api.get(location)
    account = await store.get_broker_account(account_id)
    logged_in = page.status_code == 200 and account.logged_in_at(datetime.now(UTC))
    check(logged_in, f"broker account {account_id} logged in as {account.broker_user_id} "
                     f"until {account.token_expires_at:%Y-%m-%d %H:%M} UTC" if logged_in else page.text)
    return logged_in


async def tear_down(store: Store | None, paper: PaperBrokerServer, server: DevServer) -> None:
    """Each part stopped on its own: one that fails to stop does not keep the others running."""
    try:
        if store is not None:
            await store.close()
    finally:
        try:
            paper.stop()
        finally:
            server.stop()
            STATE_FILE.unlink(missing_ok=True)


async def scenario(
    settings: Settings,
    store: Store,
    paper: PaperBrokerServer,
    starter: OrderStarter,
    market_data: MarketDataService,
    client: Client,
) -> bool:
    say()
    say("Scenario: a strategy buys RELIANCE; the price falls; the stop-loss sells")
    run = uuid.uuid4().hex[:6]
    user, _ = await store.create_user(f"demo-{run}")
    api_key = f"demo{run}"
    account = await store.add_broker_account(user.id, broker="kite", api_key=api_key, api_secret="paper-secret")
    if not await login_via_redirect(settings, store, client, paper, account.id, api_key):
        return False
    strategy = await store.create_strategy(
        StrategySpec(
            user_id=user.id, broker_account_id=account.id, name=f"reliance-intraday-{run}", symbol="RELIANCE",
            quantity=QUANTITY, entry_time=time(9, 20), exit_time=time(15, 10), stop_loss_price=STOP_LOSS,
        )
    )
    strategy = await store.set_strategy_status(strategy.id, "RUNNING")
    paper.control.set_price("RELIANCE", str(ENTRY_PRICE))
    say(f"1. strategy {strategy.id} '{strategy.name}': BUY {QUANTITY} RELIANCE at market, stop-loss {STOP_LOSS}")
    try:
        buy = await (await starter.place_buy_order(strategy, requested_by="demo")).result()
        show_result("BUY", buy)
        check(buy.filled_quantity == QUANTITY and buy.average_price == ENTRY_PRICE, "bought 10 at 2500.00")

        say("2. the market-data service arms the stop from the fill and subscribes on the paper broker's ticker")
        for _ in range(200):
            feed = market_data.feeds.get(account.id)
            if strategy.id in market_data.index and feed is not None and feed.subscribed:
                break
            await asyncio.sleep(0.05)
        check(strategy.id in market_data.index, f"the stop-loss of strategy {strategy.id} is armed in memory")
        say(f"   {market_data.health_lines()[0]}")
        say("   the price falls; every move streams a tick over the WebSocket")
        sl_result: OrderResult | None = None
        for price in FALLING_PRICES:
            paper.control.set_price("RELIANCE", str(price))
            say(f"   RELIANCE {price}")
            await asyncio.sleep(0.5)
            current = await store.get_strategy(strategy.id)
            if current.last_order_workflow_id and current.exit_reason == "STOP_LOSS":
                break
        for _ in range(100):
            current = await store.get_strategy(strategy.id)
            if current.position == "FLAT":
                break
            await asyncio.sleep(0.1)
        say("3. a tick crossed the stop: the service started SL_SELL through place_sl_sell_order")
        current = await store.get_strategy(strategy.id)
        exit_workflow_id = (current.last_order_workflow_id or "").split("/")[0]
        exit_handle = starter.client.get_workflow_handle(exit_workflow_id, result_type=OrderResult)
        sl_result = await exit_handle.result()
        show_result("SL_SELL", sl_result)
        exit_order = await store.get_order(current.last_order_workflow_id or "")
        say(f"   triggered by the tick at {exit_order.trigger_price} that arrived at {exit_order.trigger_tick_at}")
        check(exit_order.trigger_tick_at is not None and exit_order.requested_by == "market-data",
              "the SL_SELL came from a ticker tick, recorded on the order")
        check(sl_result.order_type.value == "SL_SELL", "the exit was a stop-loss order")
        check(sl_result.filled_quantity == QUANTITY, "sold all 10")

        final = await store.get_strategy(strategy.id)
        say(
            f"4. strategy {final.id}: position {final.position}, entry {final.entry_price}, exit {final.exit_price}, "
            f"exit reason {final.exit_reason}, stop-loss triggered at {final.sl_trigger_price}"
        )
        expected_pnl = (sl_result.average_price - ENTRY_PRICE) * QUANTITY if sl_result.average_price else None
        say(f"   realized P&L: {final.realized_pnl} INR")
        check(final.position == "FLAT" and final.open_quantity == 0, "the position is closed")
        check(final.realized_pnl == expected_pnl, f"P&L is (exit - entry) x 10 = {expected_pnl}")
        check(final.exit_reason == "STOP_LOSS" and final.sl_triggered, "exit reason STOP_LOSS")
        sent = [o for o in paper.control.orders() if o.get("api_key") == api_key]
        check(len(sent) == 2, f"the broker received exactly 2 orders ({len(sent)})")
        audit = (await store.order_history(HistoryQuery(strategy_id=strategy.id))).items
        say(f"   audit trail: {', '.join(f'{row.order_type} {row.status}' for row in reversed(audit))}")
        check([row.status for row in audit] == ["SUCCESS", "SUCCESS"], "both orders audited SUCCESS")
        return True
    except DemoFailed as failed:
        say(f"The demo failed: {failed}")
        return False


def main() -> None:
    try:
        sys.exit(asyncio.run(run_demo()))
    except KeyboardInterrupt:
        say("stopped")


if __name__ == "__main__":
    main()
