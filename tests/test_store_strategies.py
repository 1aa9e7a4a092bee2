"""Strategies: configuration, status transitions, emergency stop, manual intervention, bad input."""

from __future__ import annotations

from datetime import time
from decimal import Decimal

import pytest
from sqlalchemy import text

from store import InvalidInput, Store, StrategyNotFound, StrategySpec, UserNotFound
from tests.fixtures.db import seed_strategy, trade


async def test_a_new_strategy_is_stopped_flat_on_cycle_one(store: Store) -> None:
    strategy = await seed_strategy(
        store,
        running=False,
        symbol="reliance",
        entry_time=time(9, 20),
        exit_time=time(15, 10),
        stop_loss_price=Decimal("2400.05"),
    )

    assert (strategy.status, strategy.position, strategy.open_quantity) == ("STOPPED", "FLAT", 0)
    assert (strategy.position_cycle, strategy.version, strategy.realized_pnl) == (1, 1, Decimal("0"))
    assert strategy.symbol == "RELIANCE"
    assert (strategy.exchange, strategy.product) == ("NSE", "MIS")
    assert (strategy.entry_time, strategy.exit_time) == (time(9, 20), time(15, 10))
    assert strategy.stop_loss_price == Decimal("2400.05")
    assert not strategy.needs_intervention and not strategy.sl_triggered
    assert await store.get_strategy(strategy.id) == strategy


async def test_list_strategies_filters_by_user_and_status(store: Store) -> None:
    first = await seed_strategy(store, running=True)
    second = await seed_strategy(store, running=False)

    assert [s.id for s in await store.list_strategies()] == [first.id, second.id]
    assert [s.id for s in await store.list_strategies(user_id=second.user_id)] == [second.id]
    assert [s.id for s in await store.list_strategies(status="RUNNING")] == [first.id]
    assert await store.list_strategies(user_id=first.user_id, status="STOPPED") == []
    with pytest.raises(InvalidInput, match="status must be one of"):
        await store.list_strategies(status="PAUSED")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("quantity", -5, "quantity must be a positive integer"),
        ("quantity", 0, "quantity must be a positive integer"),
        ("quantity", "10", "quantity must be an integer"),
        ("quantity", True, "quantity must be an integer"),
        ("stop_loss_price", "24OO", "must be a decimal number"),
        ("stop_loss_price", 2400.5, "not float"),
        ("stop_loss_price", Decimal("NaN"), "finite"),
        ("stop_loss_price", Decimal("-1"), "greater than zero"),
        ("stop_loss_price", Decimal("2400.1234567"), "more than 6 decimal places"),
        ("stop_loss_pct", Decimal("150"), "between 0 and 100"),
        ("product", "INTRADAY", "product must be one of"),
        ("exchange", "NYSE", "exchange must be one of"),
        ("symbol", "RELI ANCE", "symbol"),
        ("entry_time", "09:20", "datetime.time"),
    ],
)
async def test_bad_configuration_is_refused_and_nothing_is_written(
    store: Store, field: str, value: object, message: str
) -> None:
    user, _ = await store.create_user("alice")
    account = await store.add_broker_account(user.id, api_key="k", api_secret="s")
    values: dict[str, object] = {"symbol": "RELIANCE", "quantity": 10, field: value}
    spec = StrategySpec(user.id, account.id, "intraday", **values)  # type: ignore[arg-type]

    with pytest.raises(InvalidInput, match=message):
        await store.create_strategy(spec)
    assert await store.list_strategies() == []


async def test_a_strategy_needs_its_owners_account_and_a_free_name(store: Store) -> None:
    mine = await seed_strategy(store, username="alice", running=False)
    other = await seed_strategy(store, username="bob", running=False)

    with pytest.raises(InvalidInput, match="belongs to another user"):
        await store.create_strategy(StrategySpec(mine.user_id, other.broker_account_id, "x", "TCS", 1))
    with pytest.raises(InvalidInput, match="already has a strategy named 'intraday'"):
        await store.create_strategy(StrategySpec(mine.user_id, mine.broker_account_id, "intraday", "TCS", 1))
    with pytest.raises(UserNotFound):
        await store.create_strategy(StrategySpec(999, mine.broker_account_id, "x", "TCS", 1))
    with pytest.raises(InvalidInput, match="stop_loss_price or stop_loss_pct, not both"):
        await store.create_strategy(
            StrategySpec(
                mine.user_id,
                mine.broker_account_id,
                "both",
                "TCS",
                1,
                stop_loss_price=Decimal("1"),
                stop_loss_pct=Decimal("2"),
            )
        )
    assert len(await store.list_strategies()) == 2


async def test_update_strategy_changes_settings_and_bumps_the_version(store: Store) -> None:
    strategy = await seed_strategy(store, running=False)

    updated = await store.update_strategy(strategy.id, quantity=25, stop_loss_pct="1.5", exit_time=time(15, 0))
    assert (updated.quantity, updated.stop_loss_pct, updated.exit_time) == (25, Decimal("1.5"), time(15, 0))
    assert updated.version == strategy.version + 1
    assert updated.last_action == "settings changed: exit_time, quantity, stop_loss_pct"

    unchanged = await store.update_strategy(strategy.id, quantity=25)
    assert unchanged.version == updated.version


async def test_update_strategy_refuses_runtime_fields_and_mid_trade_changes(store: Store) -> None:
    strategy = await seed_strategy(store)
    with pytest.raises(InvalidInput, match="'open_quantity' is not a strategy setting"):
        await store.update_strategy(strategy.id, open_quantity=0)
    with pytest.raises(InvalidInput, match="nothing to update"):
        await store.update_strategy(strategy.id)

    _, holding = await trade(store, strategy, "BUY", 10, "2500.05")
    with pytest.raises(InvalidInput, match="open position or an order in flight; quantity, symbol"):
        await store.update_strategy(strategy.id, symbol="TCS", quantity=5)
    assert (await store.get_strategy(strategy.id)).version == holding.version

    moved = await store.update_strategy(strategy.id, stop_loss_price=Decimal("2450"))
    assert moved.stop_loss_price == Decimal("2450")


@pytest.mark.parametrize("missing", [999, 0])
async def test_unknown_or_invalid_strategy_ids(store: Store, missing: int) -> None:
    expected = StrategyNotFound if missing else InvalidInput
    with pytest.raises(expected):
        await store.get_strategy(missing)
    with pytest.raises(expected):
        await store.set_strategy_status(missing, "RUNNING")
    with pytest.raises(expected):
        await store.mark_intervention(missing, "why")


async def test_status_moves_along_the_transition_table(store: Store) -> None:
    strategy = await seed_strategy(store, running=False)

    with pytest.raises(InvalidInput, match="STOPPED; it cannot move to SL_TRIGGERED"):
        await store.set_strategy_status(strategy.id, "SL_TRIGGERED")
    running = await store.set_strategy_status(strategy.id, "RUNNING")
    assert running.status == "RUNNING" and running.version == strategy.version + 1

    again = await store.set_strategy_status(strategy.id, "RUNNING")
    assert again.version == running.version

    with pytest.raises(InvalidInput, match="no open position for a stop-loss"):
        await store.set_strategy_status(strategy.id, "SL_TRIGGERED")
    with pytest.raises(InvalidInput, match="status must be one of"):
        await store.set_strategy_status(strategy.id, "PAUSED")

    stopped = await store.set_strategy_status(strategy.id, "STOPPED", reason="end of day")
    assert (stopped.status, stopped.stop_reason) == ("STOPPED", "end of day")
    assert stopped.stopped_at is not None

    restarted = await store.set_strategy_status(strategy.id, "RUNNING")
    assert (restarted.stop_reason, restarted.stopped_at) == (None, None)


async def test_stop_strategies_stops_one_users_strategies_in_one_go(store: Store) -> None:
    alice_1 = await seed_strategy(store, username="alice", name="one")
    user_id, account_id = alice_1.user_id, alice_1.broker_account_id
    alice_2 = await store.create_strategy(StrategySpec(user_id, account_id, "two", "TCS", 5))
    bob = await seed_strategy(store, username="bob")

    stopped = await store.stop_strategies(user_id, "emergency stop by alice")
    assert [s.id for s in stopped] == [alice_1.id, alice_2.id]
    assert all(s.status == "STOPPED" for s in stopped)
    first_stop = next(s for s in stopped if s.id == alice_1.id)
    assert first_stop.stop_reason == "emergency stop by alice" and first_stop.stopped_at is not None
    # alice_2 was never started: it keeps its (empty) reason.
    assert next(s for s in stopped if s.id == alice_2.id).stop_reason is None
    assert (await store.get_strategy(bob.id)).status == "RUNNING"

    again = await store.stop_strategies(user_id, "pressed twice")
    assert again == stopped

    everyone = await store.stop_strategies(None, "global stop")
    assert {s.id: s.status for s in everyone} == {alice_1.id: "STOPPED", alice_2.id: "STOPPED", bob.id: "STOPPED"}
    assert next(s for s in everyone if s.id == bob.id).stop_reason == "global stop"

    with pytest.raises(UserNotFound):
        await store.stop_strategies(999, "nobody")


async def test_manual_intervention_is_marked_listed_and_cleared(store: Store) -> None:
    strategy = await seed_strategy(store)
    other = await seed_strategy(store)

    marked = await store.mark_intervention(strategy.id, "partial fill: 4 of 10")
    assert marked.needs_intervention and marked.intervention_reason == "partial fill: 4 of 10"
    assert [s.id for s in await store.list_interventions()] == [strategy.id]
    assert await store.list_interventions(user_id=other.user_id) == []

    repeated = await store.mark_intervention(strategy.id, "partial fill: 4 of 10")
    assert repeated.version == marked.version
    second = await store.mark_intervention(strategy.id, "order timed out")
    assert (second.intervention_reason, second.last_error) == ("partial fill: 4 of 10", "order timed out")
    assert second.intervention_at == marked.intervention_at

    with pytest.raises(InvalidInput, match="needs manual intervention"):
        await store.set_strategy_status((await store.set_strategy_status(strategy.id, "STOPPED")).id, "RUNNING")

    cleared = await store.clear_intervention(strategy.id, "ops-oncall")
    assert not cleared.needs_intervention
    assert (cleared.intervention_cleared_by, cleared.intervention_reason) == ("ops-oncall", "partial fill: 4 of 10")
    assert await store.list_interventions() == []
    assert (await store.clear_intervention(strategy.id, "someone else")).version == cleared.version
    assert (await store.set_strategy_status(strategy.id, "RUNNING")).status == "RUNNING"


async def test_every_update_bumps_the_version_column(store: Store) -> None:
    strategy = await seed_strategy(store, running=False)
    await store.set_strategy_status(strategy.id, "RUNNING")
    await store.mark_intervention(strategy.id, "check")
    await store.clear_intervention(strategy.id, "ops")
    async with store.engine.connect() as connection:
        version = (await connection.execute(text("SELECT version FROM strategies"))).scalar_one()
    assert version == strategy.version + 3
