"""How long the trader's views take over a store full of orders: `python -m dev.bench_views [--days N]`.

Fills a fresh SQLite store (or DATABASE_URL's PostgreSQL with --database-url) through the store's own
order path (begin, placement, fill, finish), N strategies x D days x one round trip a day, then times
the P&L over every day, one day's P&L, the day's order book and trade book, and one page of events.
Prints the numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from engine.settings import Settings
from starter.views import Scope, TradingViews, today_ist
from store import Fill, NewOrder, Store, StrategySpec
from store.views import ist_day


async def fill_store(store: Store, strategies: int, days: int) -> int:
    user, _ = await store.create_user("bench")
    account = await store.add_broker_account(user.id, broker="kite", api_key="k", api_secret="s", access_token="t")
    start = datetime(2026, 11, 2, 4, 0, tzinfo=UTC)
    orders = 0
    for n in range(strategies):
        strategy = await store.create_strategy(StrategySpec(
            user_id=user.id, broker_account_id=account.id, name=f"bench-{n}", symbol="RELIANCE", quantity=10,
        ))
        await store.set_strategy_status(strategy.id, "RUNNING")
        for day in range(days):
            at = start + timedelta(days=day)
            for leg, order_type, price in (("entry", "BUY", "2500.05"), ("exit", "SELL", "2510.55")):
                key = f"order:{strategy.id}:{day + 1}:{leg}/run"
                await store.begin_order(NewOrder(
                    workflow_id=key, strategy_id=strategy.id, user_id=user.id, order_type=order_type,
                    transaction_type=order_type, quantity=10, symbol="RELIANCE", exchange="NSE",
                    tag=f"E{strategy.id}D{day}{leg[:2]}".upper(), requested_by="bench", attempted_at=at,
                ), lambda _: None)
                await store.record_placement(key, f"{strategy.id}{day}{leg}", at, adopted=False)
                await store.apply_fill(Fill(key, 10, Decimal(price), "COMPLETE", at))
                await store.finish_order(key, "SUCCESS", "COMPLETE", {}, None, at)
                orders += 1
                at += timedelta(hours=5)
    return orders


async def timed(label: str, call: object, repeat: int = 5) -> None:
    samples = []
    for _ in range(repeat):
        began = time.perf_counter()
        await call()  # type: ignore[operator]
        samples.append((time.perf_counter() - began) * 1000)
    samples.sort()
    print(f"{label:<34} median {samples[len(samples) // 2]:8.1f} ms   best {samples[0]:8.1f} ms")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--strategies", type=int, default=10)
    parser.add_argument("--days", type=int, default=20)
    parser.add_argument("--database-url")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        url = args.database_url or f"sqlite+aiosqlite:///{Path(directory) / 'bench.db'}"
        store = await Store.connect(url, "a" * 43 + "=")
        try:
            await store.migrate()
            began = time.perf_counter()
            orders = await fill_store(store, args.strategies, args.days)
            seconds = time.perf_counter() - began
            print(f"{orders} orders through the store's order path in {seconds:.1f} s ({url.split(':')[0]})")
            views = TradingViews(store, Settings(database_url=url))
            day = ist_day(datetime(2026, 11, 2, 4, 0, tzinfo=UTC))
            everything = await views.pnl(Scope())
            print(f"P&L rows: {len(everything.rows)}; net over all days {everything.totals.net}")
            await timed("pnl, every day, every strategy", lambda: views.pnl(Scope()))
            await timed("pnl, one day", lambda: views.pnl(Scope(), day=day))
            await timed("pnl, one strategy", lambda: views.pnl(Scope(strategy_id=1)))
            # The store stamps an order's creation with the time it was written: today, for every one here.
            book = await views.order_book(Scope(), day=today_ist())
            print(f"order book of today: {len(book.orders)} orders")
            await timed("order book, one day", lambda: views.order_book(Scope(), day=today_ist()))
            await timed("trade book, one day", lambda: views.trade_book(Scope(), day=today_ist()))
            await timed("events page (500) for the user", lambda: store.user_events_after(1, 0))
        finally:
            await store.close()


if __name__ == "__main__":
    asyncio.run(main())
