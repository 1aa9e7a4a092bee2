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
import logging
import os
import socket
import sys
import uuid
from datetime import time
from decimal import Decimal
from urllib.parse import quote

from apps.worker import build_worker
from brokers.factory import KiteBrokerFactory
from brokers.paper.testing import PaperBrokerServer
from dev.devserver import DevServer
from engine.events import EventBus
from engine.models import OrderResult
from engine.settings import DATA_DIR, Settings
from engine.temporal import connect
from starter.market_data import StopLossListener
from starter.orders import OrderStarter
from store import HistoryQuery, Store
from store.records import StrategySpec

ENTRY_PRICE = Decimal("2500.00")
FALLING_PRICES = [Decimal("2480.00"), Decimal("2455.50"), Decimal("2438.25")]
STOP_LOSS = Decimal("2450.00")
QUANTITY = 10


def port_or_free(preferred: int) -> int:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])


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
    temporal_port = port_or_free(7233)
    ui_port = port_or_free(8233)
    paper_port = port_or_free(8700)
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
    ).start()
    paper = PaperBrokerServer(host="127.0.0.1", port=paper_port)
    paper.start()
    store = await Store.connect(settings.database_url, settings.engine_secret_key)
    try:
        await store.migrate()
        await server.wait_for_frontend()
        client = await connect(server.address, environ={})
        say(f"   Temporal dev server  {server.address}   (UI {server.ui_url})")
        say(f"   paper broker         {paper.url}")
        say(f"   database             {settings.database_url}")
        events = EventBus()
        worker, _ = build_worker(client, store, settings, brokers=KiteBrokerFactory(settings), events=events)
        starter = OrderStarter(client, store, settings)
        listener = StopLossListener(store, starter)
        async with worker:
            ok = await scenario(settings, store, paper, starter, listener)
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
            say("The stack stays up for inspection; Ctrl-C stops it.")
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.Event().wait()
            return 0 if ok else 1
    finally:
        await store.close()
        paper.stop()
        server.stop()


async def scenario(
    settings: Settings,
    store: Store,
    paper: PaperBrokerServer,
    starter: OrderStarter,
    listener: StopLossListener,
) -> bool:
    say()
    say("Scenario: a strategy buys RELIANCE; the price falls; the stop-loss sells")
    run = uuid.uuid4().hex[:6]
    user, _ = await store.create_user(f"demo-{run}")
    api_key = f"demo{run}"
    token = paper.login(api_key)
    account = await store.add_broker_account(
        user.id, broker="kite", api_key=api_key, api_secret="paper-secret", access_token=token
    )
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

        say("2. the price falls; the stop-loss listener watches the paper broker's last price")
        stop = asyncio.Event()
        broker = KiteBrokerFactory(settings).for_credentials(api_key, token)
        watching = asyncio.create_task(
            listener.follow_prices(["RELIANCE"], lambda s: broker.last_price("NSE", s), 0.1, stop)
        )
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
        stop.set()
        await watching
        say("3. the listener triggered SL_SELL through place_sl_sell_order")
        current = await store.get_strategy(strategy.id)
        exit_workflow_id = (current.last_order_workflow_id or "").split("/")[0]
        exit_handle = starter.client.get_workflow_handle(exit_workflow_id, result_type=OrderResult)
        sl_result = await exit_handle.result()
        show_result("SL_SELL", sl_result)
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
