"""Parallel writers on one strategy lose nothing: PostgreSQL (row locks, separate connections) and
SQLite (the embedded mode, one writer at a time, waiting instead of failing)."""

from __future__ import annotations

import asyncio
from decimal import Decimal

from store import Fill, Store, StrategyRecord
from tests.fixtures.db import FILLED_AT, accept, new_order, seed_strategy, trade

ENTRY = Decimal("2500.05")


async def begun_sells(store: Store, strategy: StrategyRecord, count: int) -> list[str]:
    """`count` one-share SELL orders, begun and finished one after another (one in flight at a time),
    their fills not yet applied: the fills are what the test races."""
    workflow_ids = []
    for _ in range(count):
        order = await store.begin_order(new_order(strategy, "SELL", quantity=1), accept)
        await store.finish_order(order.workflow_id, "SUCCESS", "COMPLETE", {}, None, FILLED_AT)
        workflow_ids.append(order.workflow_id)
    return workflow_ids


async def race_one_strategy(stores: list[Store], writers: int) -> None:
    """`writers` fills, settings changes and intervention notes on one strategy at once, spread over
    the given stores (each with its own connections)."""
    store = stores[0]

    def nth(i: int) -> Store:
        return stores[i % len(stores)]

    strategy = await seed_strategy(store, quantity=writers)
    _, long = await trade(store, strategy, "BUY", writers, str(ENTRY))
    sells = await begun_sells(store, long, writers)
    before = await store.get_strategy(strategy.id)
    exit_prices = [Decimal("2501.00") + Decimal("0.05") * i for i in range(writers)]
    stop_losses = [Decimal("2400.00") + Decimal("0.05") * i for i in range(writers)]

    await asyncio.gather(
        *(
            nth(i).apply_fill(Fill(workflow_id, 1, price, "COMPLETE", FILLED_AT))
            for i, (workflow_id, price) in enumerate(zip(sells, exit_prices, strict=True))
        ),
        *(nth(i + 1).update_strategy(strategy.id, stop_loss_price=price) for i, price in enumerate(stop_losses)),
        *(nth(i).mark_intervention(strategy.id, f"check {i}") for i in range(writers)),
    )

    after = await store.get_strategy(strategy.id)
    assert (after.open_quantity, after.position, after.position_cycle) == (0, "FLAT", before.position_cycle + 1)
    assert after.realized_pnl == sum(price - ENTRY for price in exit_prices)
    assert after.stop_loss_price in stop_losses
    assert after.needs_intervention
    # every fill, every settings change and every intervention note after the first changed the row once
    assert after.version == before.version + 3 * writers
    for workflow_id in sells:
        assert (await store.get_order(workflow_id)).fill_applied_at is not None


async def test_twenty_parallel_writers_on_one_postgresql_strategy(pg_store: Store) -> None:
    await race_one_strategy([pg_store], 20)


async def test_parallel_writers_on_sqlite_wait_their_turn(sqlite_url: str, engine_secret_key: str) -> None:
    # Two stores on one file, as a worker and the API would have: they meet at SQLite's file lock.
    stores = [await Store.connect(sqlite_url, engine_secret_key) for _ in range(2)]
    try:
        await race_one_strategy(stores, 10)
    finally:
        for store in stores:
            await store.close()


async def test_replayed_fills_racing_each_other_apply_once(pg_store: Store) -> None:
    strategy = await seed_strategy(pg_store)
    order = await pg_store.begin_order(new_order(strategy), accept)
    fill = Fill(order.workflow_id, 10, ENTRY, "COMPLETE", FILLED_AT)

    results = await asyncio.gather(*(pg_store.apply_fill(fill) for _ in range(10)))

    after = await pg_store.get_strategy(strategy.id)
    assert (after.open_quantity, after.entry_price) == (10, ENTRY)
    assert all(result == after for result in results)
    assert [e.event_type for e in await pg_store.order_events(order.workflow_id)].count("FILL_APPLIED") == 1


async def test_racing_begin_orders_let_exactly_one_through(pg_store: Store) -> None:
    strategy = await seed_strategy(pg_store)
    outcomes = await asyncio.gather(
        *(pg_store.begin_order(new_order(strategy), accept) for _ in range(10)), return_exceptions=True
    )
    begun = [o for o in outcomes if not isinstance(o, BaseException)]
    refused = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(begun) == 1
    assert all(type(error).__name__ == "OrderInFlight" for error in refused)
    assert (await pg_store.get_strategy(strategy.id)).active_order_workflow_id == begun[0].workflow_id
