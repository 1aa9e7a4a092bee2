"""The store's view queries on PostgreSQL and SQLite alike: the day's book, realized P&L by replay,
and a user's events after an id."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from dev.bench_views import fill_store
from engine.settings import Settings
from starter.views import Scope, TradingViews, today_ist
from store import Store
from store.views import ist_day


async def test_views_read_the_same_on_both_databases(store: Store) -> None:
    await fill_store(store, strategies=2, days=2)
    views = TradingViews(store, Settings())  # reads the store only: no broker asked

    everything = await views.pnl(Scope())
    day_one = ist_day(datetime(2026, 11, 2, 4, 0, tzinfo=UTC))
    one_day = await views.pnl(Scope(), day=day_one)
    # Buy 10 at 2500.05, sell 10 at 2510.55 (MIS): gross 105.00, charges 26.55, each strategy, each day.
    assert [(row.strategy_id, row.date, row.gross, row.charges.total, row.net) for row in one_day.rows] == [
        (1, day_one, Decimal("105.00"), Decimal("26.55"), Decimal("78.45")),
        (2, day_one, Decimal("105.00"), Decimal("26.55"), Decimal("78.45")),
    ]
    assert len(everything.rows) == 4 and everything.totals.net == Decimal("313.80")
    assert {row.date for row in everything.rows} == {day_one, day_one + timedelta(days=1)}
    [sold] = one_day.rows[0].exits
    assert (sold.side, sold.quantity, sold.price, sold.entry_price, sold.exit_reason) == (
        "SELL", 10, Decimal("2510.55"), Decimal("2500.05"), "SCHEDULED_EXIT",
    )

    # The store stamps each order with the time it was written: all today, none on another day.
    assert len(await store.book_orders(day=today_ist())) == 8
    assert await store.book_orders(day=today_ist() - timedelta(days=1)) == []
    assert len(await store.book_orders(strategy_id=2, filled_only=True)) == 4

    events = await store.user_events_after(1, 0)
    assert [event.id for event in events] == sorted(event.id for event in events)
    assert sum(1 for event in events if event.event_type == "ORDER_EXECUTED") == 8
    later = await store.user_events_after(1, events[3].id)
    assert [event.id for event in later] == [event.id for event in events[4:]]
    assert await store.user_events_after(2, 0) == []
    assert await store.newest_event_id() == events[-1].id

