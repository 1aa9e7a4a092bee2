"""The order lifecycle: begin, placement, broker updates, fill, finish, events and the outbox."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from sqlalchemy import text

from store import (
    Fill,
    FillMismatch,
    HistoryQuery,
    InvalidInput,
    OrderInFlight,
    OrderNotFound,
    PlacementConflict,
    Store,
    StrategyNotFound,
    StrategyRecord,
)
from tests.fixtures.db import FILLED_AT, accept, new_order, seed_strategy, trade

T0 = datetime(2026, 11, 24, 3, 50, tzinfo=UTC)
IST = timezone(timedelta(hours=5, minutes=30))


class Refused(Exception):
    pass


async def table_counts(store: Store) -> dict[str, int]:
    async with store.engine.connect() as connection:
        return {
            table: (await connection.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one()
            for table in ("orders", "order_logs", "order_events")
        }


async def test_begin_order_records_the_attempt_and_claims_the_strategy(store: Store) -> None:
    strategy = await seed_strategy(store)
    order = await store.begin_order(new_order(strategy, "BUY", workflow_id="order:1:1:entry/run-a"), accept)

    assert (order.workflow_id, order.status, order.filled_quantity, order.quantity) == (
        "order:1:1:entry/run-a",
        "NEW",
        0,
        10,
    )
    assert order.outcome is None and order.broker_order_id is None
    after = await store.get_strategy(strategy.id)
    assert after.active_order_workflow_id == after.last_order_workflow_id == order.workflow_id
    assert after.version == strategy.version + 1
    assert [e.event_type for e in await store.order_events(order.workflow_id)] == ["ATTEMPTED"]
    (log,) = (await store.order_history(HistoryQuery())).items
    assert (log.status, log.order_type, log.workflow_id) == ("ATTEMPTING", "BUY", order.workflow_id)
    assert log.order_data == {"product": "MIS", "order_type": "MARKET"}
    assert log.completed_at is None


async def test_a_refusing_validation_writes_nothing(store: Store) -> None:
    strategy = await seed_strategy(store)
    seen: list[StrategyRecord] = []

    def refuse(locked: StrategyRecord) -> None:
        seen.append(locked)
        raise Refused("market closed")

    order = new_order(strategy)
    with pytest.raises(Refused, match="market closed"):
        await store.begin_order(order, refuse)
    assert seen == [strategy]
    with pytest.raises(OrderNotFound):
        await store.get_order(order.workflow_id)
    assert await store.get_strategy(strategy.id) == strategy
    assert await table_counts(store) == {"orders": 0, "order_logs": 0, "order_events": 0}


async def test_begin_order_replayed_returns_the_same_order_without_validating(store: Store) -> None:
    strategy = await seed_strategy(store)
    order = new_order(strategy)
    calls: list[int] = []

    def count(locked: StrategyRecord) -> None:
        calls.append(locked.id)

    first = await store.begin_order(order, count)
    counts = await table_counts(store)
    again = await store.begin_order(order, count)

    assert again == first
    assert calls == [strategy.id]
    assert await table_counts(store) == counts


async def test_one_order_in_flight_per_strategy(store: Store) -> None:
    strategy = await seed_strategy(store)
    first = await store.begin_order(new_order(strategy, "BUY"), accept)

    with pytest.raises(OrderInFlight, match=first.workflow_id) as busy:
        await store.begin_order(new_order(strategy, "BUY"), accept)
    assert busy.value.active_workflow_id == first.workflow_id

    await store.finish_order(first.workflow_id, "FAILED", "REJECTED", {}, "insufficient margin", FILLED_AT)
    second = await store.begin_order(new_order(strategy, "BUY"), accept)
    assert (await store.get_strategy(strategy.id)).active_order_workflow_id == second.workflow_id


async def test_sl_sell_marks_the_stop_loss_on_the_strategy(store: Store) -> None:
    strategy = await seed_strategy(store)
    _, holding = await trade(store, strategy, "BUY", 10, "2500.05")

    await store.begin_order(new_order(holding, "SL_SELL", trigger_price=Decimal("2399.95")), accept)
    after = await store.get_strategy(strategy.id)
    assert (after.status, after.sl_triggered, after.sl_trigger_price, after.exit_reason) == (
        "SL_TRIGGERED",
        True,
        Decimal("2399.95"),
        "STOP_LOSS",
    )


async def test_sl_sell_on_a_stopped_strategy_keeps_it_stopped(store: Store) -> None:
    strategy = await seed_strategy(store)
    await trade(store, strategy, "BUY", 10, "2500.05")
    await store.stop_strategies(strategy.user_id, "emergency stop")

    await store.begin_order(new_order(strategy, "SL_SELL", trigger_price=Decimal("2400")), accept)
    after = await store.get_strategy(strategy.id)
    assert (after.status, after.sl_triggered, after.exit_reason) == ("STOPPED", True, "STOP_LOSS")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"quantity": -5}, "quantity must be a positive integer"),
        ({"order_type": "SHORT"}, "order_type must be one of"),
        ({"transaction_type": "BUY", "order_type": "SELL"}, "a SELL order is a SELL at the broker, not BUY"),
        ({"trigger_price": "abc"}, "trigger_price must be a decimal number"),
        ({"tag": "has-dash"}, "tag"),
        ({"tag": "A" * 21}, "tag must be at most 20"),
        ({"order_data": {"when": object()}}, "order_data must hold only JSON values"),
        ({"workflow_id": ""}, "workflow_id must be a non-empty string"),
        ({"attempted_at": datetime(2026, 1, 1)}, "timezone-aware"),
    ],
)
async def test_bad_orders_are_refused_before_anything_is_written(
    store: Store, change: dict[str, object], message: str
) -> None:
    strategy = await seed_strategy(store)
    order = dataclasses.replace(new_order(strategy), **change)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match=message):
        await store.begin_order(order, accept)
    assert await table_counts(store) == {"orders": 0, "order_logs": 0, "order_events": 0}


async def test_orders_of_unknown_or_foreign_strategies_are_refused(store: Store) -> None:
    strategy = await seed_strategy(store)
    with pytest.raises(StrategyNotFound):
        await store.begin_order(dataclasses.replace(new_order(strategy), strategy_id=999), accept)
    with pytest.raises(InvalidInput, match="belongs to user"):
        await store.begin_order(dataclasses.replace(new_order(strategy), user_id=strategy.user_id + 1), accept)
    other = await seed_strategy(store)
    taken = await store.begin_order(new_order(strategy), accept)
    with pytest.raises(InvalidInput, match="already holds an order of strategy"):
        await store.begin_order(new_order(other, workflow_id=taken.workflow_id), accept)


async def test_placement_is_recorded_once_and_a_second_broker_order_is_a_conflict(store: Store) -> None:
    strategy = await seed_strategy(store)
    order = await store.begin_order(new_order(strategy), accept)

    placed = await store.record_placement(order.workflow_id, "250101000001", T0, adopted=True)
    assert (placed.broker_order_id, placed.placed_at, placed.adopted, placed.status) == (
        "250101000001",
        T0,
        True,
        "PLACED",
    )
    events = await store.order_events(order.workflow_id)
    assert await store.record_placement(order.workflow_id, "250101000001", T0, adopted=True) == placed
    assert await store.order_events(order.workflow_id) == events
    assert [event.event_type for event in events] == ["ATTEMPTED", "ADOPTED"]
    assert events[-1].data == {"broker_order_id": "250101000001", "placed_at": T0.isoformat()}
    assert events[-1].created_at == placed.updated_at

    with pytest.raises(PlacementConflict, match="check the broker's order book for a duplicate"):
        await store.record_placement(order.workflow_id, "250101000002", T0, adopted=False)
    with pytest.raises(OrderNotFound):
        await store.record_placement("order:missing", "1", T0, adopted=False)


async def test_the_placement_window_is_remembered_and_cleared(store: Store) -> None:
    strategy = await seed_strategy(store)
    order = await store.begin_order(new_order(strategy), accept)
    assert await store.placement_started_at(order.workflow_id) is None

    await store.set_placement_started(order.workflow_id, T0)
    assert await store.placement_started_at(order.workflow_id) == T0
    await store.set_placement_started(order.workflow_id, T0)
    await store.set_placement_started(order.workflow_id, None)
    assert await store.placement_started_at(order.workflow_id) is None
    kinds = [e.event_type for e in await store.order_events(order.workflow_id)]
    assert kinds == ["ATTEMPTED", "PLACEMENT_SENT", "PLACEMENT_NOT_SENT"]


async def test_broker_updates_never_move_an_order_backwards(store: Store) -> None:
    strategy = await seed_strategy(store)
    order = await store.begin_order(new_order(strategy), accept)
    wf = order.workflow_id

    def at(seconds: int) -> datetime:
        return T0 + timedelta(seconds=seconds)

    assert await store.record_order_update(wf, "OPEN", 0, Decimal("0"), at(2))
    assert not await store.record_order_update(wf, "OPEN PENDING", 0, Decimal("0"), at(1)), "older, same fill"
    assert await store.record_order_update(wf, "OPEN", 6, Decimal("2500.05"), at(3))
    assert not await store.record_order_update(wf, "OPEN", 4, Decimal("2500.10"), at(9)), "lower fill"
    assert not await store.record_order_update(wf, "OPEN", 6, Decimal("2500.05"), at(3)), "nothing new"
    assert await store.record_order_update(wf, "COMPLETE", 10, Decimal("2500.0833333"), at(4))
    assert not await store.record_order_update(wf, "OPEN", 10, Decimal("2500.08"), at(5)), "after terminal"
    assert not await store.record_order_update(wf, "CANCELLED", 10, Decimal("2500.08"), at(6)), "after terminal"

    stored = await store.get_order(wf)
    assert (stored.status, stored.filled_quantity, stored.average_price) == ("COMPLETE", 10, Decimal("2500.083333"))
    assert stored.broker_updated_at == at(4)
    statuses = [(e.data["status"], e.data["filled_quantity"]) for e in (await store.order_events(wf))[1:]]
    assert statuses == [("OPEN", 0), ("OPEN", 6), ("COMPLETE", 10)]

    with pytest.raises(FillMismatch, match="reports 11 filled of 10"):
        await store.record_order_update(wf, "OPEN", 11, Decimal("1"), None)
    with pytest.raises(InvalidInput, match="filled_quantity must be zero or more"):
        await store.record_order_update(wf, "OPEN", -1, Decimal("1"), None)
    with pytest.raises(InvalidInput, match="average_price must be a decimal number"):
        await store.record_order_update(wf, "OPEN", 1, "n/a", None)  # type: ignore[arg-type]


async def test_buy_then_sell_realises_exact_pnl_and_starts_the_next_cycle(store: Store) -> None:
    strategy = await seed_strategy(store)

    buy, long = await trade(store, strategy, "BUY", 10, "2500.05")
    assert (long.position, long.open_quantity, long.entry_price, long.entry_filled_at) == (
        "LONG",
        10,
        Decimal("2500.05"),
        FILLED_AT,
    )
    assert (buy.filled_quantity, buy.average_price, buy.status, buy.outcome) == (
        10,
        Decimal("2500.05"),
        "COMPLETE",
        "SUCCESS",
    )

    _, flat = await trade(store, long, "SELL", 10, "2510.15")
    assert (flat.position, flat.open_quantity, flat.exit_price, flat.exit_filled_at) == (
        "FLAT",
        0,
        Decimal("2510.15"),
        FILLED_AT,
    )
    assert flat.realized_pnl == Decimal("101.00")
    assert (str(flat.exit_price), str(flat.realized_pnl)) == ("2510.15", "101.00"), "no column padding"
    assert (flat.position_cycle, flat.exit_reason, flat.status) == (2, "SCHEDULED_EXIT", "RUNNING")
    assert flat.active_order_workflow_id is None


async def test_a_losing_round_trip_in_paise(store: Store) -> None:
    strategy = await seed_strategy(store, quantity=7)
    _, long = await trade(store, strategy, "BUY", 7, "2500.05")
    _, flat = await trade(store, long, "SELL", 7, "2499.90")
    assert flat.realized_pnl == Decimal("-1.05")


async def test_apply_fill_twice_changes_nothing(store: Store) -> None:
    strategy = await seed_strategy(store)
    order = await store.begin_order(new_order(strategy), accept)
    fill = Fill(order.workflow_id, 10, Decimal("2500.05"), "COMPLETE", FILLED_AT)

    first = await store.apply_fill(fill)
    events = await store.order_events(order.workflow_id)
    second = await store.apply_fill(fill)

    assert second == first
    assert first.open_quantity == 10 and first.version == strategy.version + 2
    assert await store.order_events(order.workflow_id) == events


async def test_adding_to_a_position_averages_the_entry_price(store: Store) -> None:
    strategy = await seed_strategy(store)
    _, after_first = await trade(store, strategy, "BUY", 4, "100.10", quantity=4)
    _, after_second = await trade(store, after_first, "BUY", 6, "100.25", quantity=6)
    assert (after_second.open_quantity, after_second.entry_price) == (10, Decimal("100.19"))

    _, after_third = await trade(store, after_second, "BUY", 3, "101", quantity=3)
    # (100.19 * 10 + 101 * 3) / 13 = 100.376923076..., kept to six places.
    assert after_third.entry_price == Decimal("100.376923")


async def test_a_stop_loss_exit_in_two_parts(store: Store) -> None:
    strategy = await seed_strategy(store)
    _, long = await trade(store, strategy, "BUY", 10, "2500.05")

    _, partly = await trade(store, long, "SL_SELL", 4, "2399.95", trigger_price=Decimal("2400"))
    assert (partly.status, partly.position, partly.open_quantity) == ("SL_TRIGGERED", "LONG", 6)
    assert partly.realized_pnl == Decimal("-400.40")
    assert partly.position_cycle == 1

    _, flat = await trade(store, partly, "SELL", 6, "2390.00", quantity=6)
    assert (flat.status, flat.position, flat.open_quantity, flat.position_cycle) == ("RUNNING", "FLAT", 0, 2)
    assert flat.exit_reason == "STOP_LOSS", "the stop-loss stays the reason of this exit"
    assert flat.realized_pnl == Decimal("-400.40") + Decimal("-660.30")


async def test_a_new_entry_forgets_the_previous_exit(store: Store) -> None:
    strategy = await seed_strategy(store)
    _, long = await trade(store, strategy, "BUY", 10, "2500.05")
    _, flat = await trade(store, long, "SL_SELL", 10, "2399.95", trigger_price=Decimal("2400"))
    assert flat.sl_triggered and flat.exit_reason == "STOP_LOSS"

    _, again = await trade(store, flat, "BUY", 10, "2410")
    assert (again.sl_triggered, again.sl_trigger_price, again.exit_reason, again.exit_price) == (
        False,
        None,
        None,
        None,
    )
    assert again.realized_pnl == Decimal("-1001.00")


async def test_an_unfilled_order_changes_no_position(store: Store) -> None:
    strategy = await seed_strategy(store)
    order, after = await trade(store, strategy, "BUY", 0, "0")
    assert (after.position, after.open_quantity, after.entry_price) == ("FLAT", 0, None)
    assert (order.status, order.filled_quantity, order.outcome) == ("CANCELLED", 0, "FAILED")
    assert order.fill_applied_at is not None


async def test_fills_that_cannot_be_true_are_refused_and_change_nothing(store: Store) -> None:
    strategy = await seed_strategy(store)
    _, long = await trade(store, strategy, "BUY", 10, "2500.05")

    oversold = await store.begin_order(new_order(long, "SELL", quantity=20), accept)
    with pytest.raises(FillMismatch, match="holds 10"):
        await store.apply_fill(Fill(oversold.workflow_id, 20, Decimal("2510"), "COMPLETE", FILLED_AT))
    with pytest.raises(FillMismatch, match="exceeds the 20 requested"):
        await store.apply_fill(Fill(oversold.workflow_id, 21, Decimal("2510"), "COMPLETE", FILLED_AT))
    with pytest.raises(InvalidInput, match="above zero"):
        await store.apply_fill(Fill(oversold.workflow_id, 5, Decimal("0"), "COMPLETE", FILLED_AT))
    with pytest.raises(InvalidInput, match="not float"):
        await store.apply_fill(Fill(oversold.workflow_id, 5, 2510.5, "COMPLETE", FILLED_AT))  # type: ignore[arg-type]
    with pytest.raises(OrderNotFound):
        await store.apply_fill(Fill("order:missing", 5, Decimal("1"), "COMPLETE", FILLED_AT))

    unchanged = await store.get_strategy(strategy.id)
    assert (unchanged.open_quantity, unchanged.realized_pnl, unchanged.position) == (10, Decimal("0"), "LONG")
    assert unchanged.version == long.version + 1, "only begin_order of the SELL wrote to it"
    assert (await store.get_order(oversold.workflow_id)).fill_applied_at is None


async def test_finish_order_closes_the_audit_row_once(store: Store) -> None:
    strategy = await seed_strategy(store)
    order = await store.begin_order(new_order(strategy, attempted_at=T0), accept)
    await store.apply_fill(Fill(order.workflow_id, 10, Decimal("2500.05"), "COMPLETE", FILLED_AT))
    done_at = T0 + timedelta(seconds=1, milliseconds=234)

    finished = await store.finish_order(
        order.workflow_id, "SUCCESS", "COMPLETE", {"average_price": Decimal("2500.05")}, None, done_at
    )
    state = (await table_counts(store), await store.get_strategy(strategy.id))
    again = await store.finish_order(order.workflow_id, "ERROR", "FAILED", {}, "replayed late", done_at)

    assert again == finished
    assert (await table_counts(store), await store.get_strategy(strategy.id)) == state
    assert (finished.outcome, finished.status, finished.completed_at) == ("SUCCESS", "COMPLETE", done_at)
    (log,) = (await store.order_history(HistoryQuery())).items
    assert (log.status, log.result, log.error_message) == ("SUCCESS", {"average_price": "2500.05"}, None)
    assert (log.completed_at, log.execution_time_ms) == (done_at, 1234)
    after = await store.get_strategy(strategy.id)
    assert after.active_order_workflow_id is None and after.last_error is None


async def test_a_failed_order_leaves_its_error_on_the_strategy(store: Store) -> None:
    strategy = await seed_strategy(store)
    order = await store.begin_order(new_order(strategy), accept)
    await store.finish_order(order.workflow_id, "FAILED", "REJECTED", {}, "Insufficient funds", FILLED_AT)
    after = await store.get_strategy(strategy.id)
    assert (after.last_error, after.active_order_workflow_id) == ("Insufficient funds", None)

    with pytest.raises(InvalidInput, match="outcome must be one of ERROR, FAILED, SUCCESS"):
        await store.finish_order(order.workflow_id, "DONE", "X", {}, None, FILLED_AT)


async def test_the_trail_is_append_only_and_lifecycle_events_are_not_doubled(store: Store) -> None:
    strategy = await seed_strategy(store)
    order, _ = await trade(store, strategy, "BUY", 10, "2500.05")
    wf = order.workflow_id

    assert await store.append_order_event(wf, "CANCEL_SENT", {"broker_order_id": order.broker_order_id})
    assert not await store.append_order_event(wf, "ORDER_EXECUTED", {"again": True})
    assert not await store.append_order_event(wf, "PLACED", {"broker_order_id": order.broker_order_id})
    await store.record_order_update(wf, "OPEN", 3, Decimal("2500"), None)  # after the fill: ignored
    assert await store.append_order_event(wf, "STATUS", {"status": "OPEN", "filled_quantity": 3})
    assert not await store.append_order_event(wf, "STATUS", {"status": "OPEN", "filled_quantity": 3, "x": 1})

    events = await store.order_events(wf)
    assert [e.event_type for e in events] == [
        "ATTEMPTED",
        "PLACED",
        "FILL_APPLIED",
        "ORDER_EXECUTED",
        "CANCEL_SENT",
        "STATUS",
    ]
    assert [e.id for e in events] == sorted(e.id for e in events)
    assert all(e.workflow_id == wf and e.order_id == order.id for e in events)

    with pytest.raises(InvalidInput, match="event_type"):
        await store.append_order_event(wf, "lower case", {})
    with pytest.raises(OrderNotFound):
        await store.append_order_event("order:missing", "NOTE", {})
    with pytest.raises(OrderNotFound):
        await store.order_events("order:missing")


async def test_the_outbox_hands_out_each_executed_order_until_published(store: Store) -> None:
    strategy = await seed_strategy(store)
    buy, long = await trade(store, strategy, "BUY", 10, "2500.05")
    sell, _ = await trade(store, long, "SELL", 10, "2510.15")

    pending = await store.unpublished_events()
    assert [e.workflow_id for e in pending] == [buy.workflow_id, sell.workflow_id]
    executed = pending[1].data
    assert (executed["outcome"], executed["order_type"], executed["filled_quantity"]) == ("SUCCESS", "SELL", 10)
    assert Decimal(executed["average_price"]) == Decimal("2510.15")
    assert executed["strategy_id"] == strategy.id and executed["user_id"] == strategy.user_id

    assert [e.workflow_id for e in await store.unpublished_events(limit=1)] == [buy.workflow_id]
    assert await store.mark_events_published([pending[0].id]) == 1
    assert await store.mark_events_published([pending[0].id]) == 0
    assert [e.id for e in await store.unpublished_events()] == [pending[1].id]
    assert await store.mark_events_published([]) == 0
    assert await store.unpublished_events("FILL_APPLIED") != []


async def test_money_is_stored_exactly(store: Store) -> None:
    strategy = await seed_strategy(store, quantity=3)
    _, long = await trade(store, strategy, "BUY", 3, "0.10")
    await trade(store, long, "SELL", 3, "0.30")

    async with store.engine.connect() as connection:
        if store.dialect == "sqlite":
            row = (await connection.execute(text("SELECT typeof(realized_pnl), realized_pnl FROM strategies"))).one()
            assert tuple(row) == ("text", "0.600000")
        else:
            row = (await connection.execute(text("SELECT realized_pnl::text FROM strategies"))).one()
            assert tuple(row) == ("0.600000",)
    assert (await store.get_strategy(strategy.id)).realized_pnl == Decimal("0.60")


async def test_timestamps_come_back_aware_in_utc(store: Store) -> None:
    strategy = await seed_strategy(store)
    order = await store.begin_order(new_order(strategy, attempted_at=datetime(2026, 11, 24, 9, 20, tzinfo=IST)), accept)
    placed = await store.record_placement(order.workflow_id, "1", datetime(2026, 11, 24, 9, 20, 1, tzinfo=IST), False)
    assert placed.placed_at == datetime(2026, 11, 24, 3, 50, 1, tzinfo=UTC)
    assert placed.placed_at is not None and placed.placed_at.tzinfo == UTC
    (log,) = (await store.order_history(HistoryQuery())).items
    assert log.attempted_at == datetime(2026, 11, 24, 3, 50, tzinfo=UTC)


async def test_an_unresolved_order_is_settled_later_from_the_brokers_record(store: Store) -> None:
    strategy = await seed_strategy(store, quantity=10)
    order = await store.begin_order(new_order(strategy), accept)
    await store.record_placement(order.workflow_id, "B1", FILLED_AT, adopted=False)
    # The run saw 4 filled, then lost track of the order: it ended UNRESOLVED (audited ERROR).
    await store.apply_fill(Fill(order.workflow_id, 4, Decimal("100.00"), "OPEN", FILLED_AT))
    await store.finish_order(order.workflow_id, "ERROR", "OPEN", {"outcome": "UNRESOLVED"}, "lost", FILLED_AT)

    settled = await store.settle_order(order.workflow_id, "COMPLETE", 10, Decimal("103.00"), FILLED_AT)
    again = await store.settle_order(order.workflow_id, "COMPLETE", 10, Decimal("103.00"), FILLED_AT)

    assert (settled.outcome, settled.status, settled.applied_quantity) == ("SUCCESS", "COMPLETE", 10)
    assert again == settled
    after = await store.get_strategy(strategy.id)
    # 4 at 100.00 and 6 at 105.00 average 103.00: the strategy holds what the broker filled, priced as it did.
    assert (after.open_quantity, after.entry_price) == (10, Decimal("103.00"))
    kinds = [event.event_type for event in await store.order_events(order.workflow_id)]
    assert kinds.count("FILL_ADDED") == 1 and kinds.count("SETTLED") == 1
    with pytest.raises(InvalidInput, match="still OPEN"):
        await store.settle_order(order.workflow_id, "OPEN", 10, Decimal("103.00"), FILLED_AT)


async def test_the_first_transaction_brings_the_accounts_credentials_or_none_without_a_usable_token(
    store: Store,
) -> None:
    strategy = await seed_strategy(store)
    pacing = {"spacing": timedelta(milliseconds=100), "max_wait": timedelta(seconds=30)}
    first = new_order(strategy, workflow_id="order:1:1:entry/run-a")
    order, slot, credentials = await store.begin_order_and_reserve(
        strategy.id, first.workflow_id, lambda _: first, accept, **pacing
    )
    assert slot is not None and slot.granted
    assert credentials == await store.broker_credentials(strategy.broker_account_id)
    assert (credentials.api_key, credentials.access_token) == ("kite-api-key", "kite-token")
    # A replay brings them too.
    again, no_slot, same = await store.begin_order_and_reserve(
        strategy.id, first.workflow_id, lambda _: first, accept, **pacing
    )
    assert (again, no_slot, same) == (order, None, credentials)

    await store.set_access_token(strategy.broker_account_id, "kite-token", T0)  # expired long ago
    *_, expired = await store.begin_order_and_reserve(strategy.id, first.workflow_id, lambda _: first, accept, **pacing)
    assert expired is None
