"""The store's reconciliation writes, on PostgreSQL and SQLite: each applies once, and a repeat changes nothing."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from store import FillMismatch, HistoryQuery, Store
from store.reconcile import BrokerResolution, BrokerSquareOff
from store.records import Fill
from tests.fixtures.db import FILLED_AT, accept, new_order, seed_strategy, trade

NOW = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)


def resolution(broker_order_id: str, status: str, filled: int, price: str) -> BrokerResolution:
    return BrokerResolution(broker_order_id=broker_order_id, status=status, filled_quantity=filled,
                            average_price=Decimal(price), filled_at=NOW, by="reconcile (test)", why="a test")


async def test_a_resolution_applies_only_the_fill_no_step_applied_and_releases_the_claim(store: Store) -> None:
    strategy = await seed_strategy(store, quantity=10)
    order, _ = await trade(store, strategy, "BUY", 4, "100", quantity=10, finish=False)
    assert (await store.get_strategy(strategy.id)).active_order_workflow_id == order.workflow_id

    changed = await store.resolve_order_from_broker(order.workflow_id, resolution(str(order.broker_order_id),
                                                                                  "COMPLETE", 10, "101"))

    assert changed
    after = await store.get_strategy(strategy.id)
    assert (after.open_quantity, after.active_order_workflow_id) == (10, None)
    assert after.entry_price == Decimal("101")  # 4 at 100 and the other 6 at 101.666667
    record = await store.get_order(order.workflow_id)
    assert (record.status, record.filled_quantity, record.average_price, record.outcome) == (
        "COMPLETE", 10, Decimal("101.00"), "SUCCESS")
    kinds = [event.event_type for event in await store.order_events(order.workflow_id)]
    assert kinds.count("RECONCILED") == 1 and kinds.count("ORDER_EXECUTED") == 1
    [log] = (await store.order_history(HistoryQuery(strategy_id=strategy.id))).items
    assert log.status == "SUCCESS" and log.result is not None and log.result["reconciled"] is True

    assert not await store.resolve_order_from_broker(order.workflow_id, resolution(str(order.broker_order_id),
                                                                                   "COMPLETE", 10, "101"))
    assert await store.get_strategy(strategy.id) == after
    assert [event.event_type for event in await store.order_events(order.workflow_id)] == kinds


async def test_a_resolution_adopts_an_unplaced_order_and_refuses_a_smaller_fill(store: Store) -> None:
    strategy = await seed_strategy(store, quantity=5)
    begun = await store.begin_order(new_order(strategy, "BUY"), accept)

    assert await store.resolve_order_from_broker(begun.workflow_id, resolution("B1", "COMPLETE", 5, "250.5"))

    record = await store.get_order(begun.workflow_id)
    assert (record.broker_order_id, record.adopted, record.filled_quantity) == ("B1", True, 5)
    assert (await store.get_strategy(strategy.id)).open_quantity == 5
    with pytest.raises(FillMismatch, match="5 were applied"):
        await store.resolve_order_from_broker(begun.workflow_id, resolution("B1", "COMPLETE", 3, "250.5"))


async def test_an_unplaced_order_is_closed_failed_once(store: Store) -> None:
    strategy = await seed_strategy(store)
    begun = await store.begin_order(new_order(strategy, "BUY"), accept)

    assert await store.close_unplaced_order(begun.workflow_id, "reconcile (test)", "nothing at the broker")

    record = await store.get_order(begun.workflow_id)
    assert (record.outcome, record.status) == ("FAILED", "NOT_PLACED")
    after = await store.get_strategy(strategy.id)
    assert after.active_order_workflow_id is None and after.last_error == "nothing at the broker"
    assert not await store.close_unplaced_order(begun.workflow_id, "reconcile (test)", "nothing at the broker")
    assert await store.get_strategy(strategy.id) == after


async def test_the_brokers_square_off_closes_the_position_once(store: Store) -> None:
    strategy = await seed_strategy(store, quantity=10, product="MIS")
    _, held = await trade(store, strategy, "BUY", 10, "2500")
    square_off = BrokerSquareOff(strategy_id=strategy.id, broker_order_id="2612020001", average_price=Decimal("2487.5"),
                                 filled_at=FILLED_AT, by="reconcile (test)", why="the broker squared off")

    order = await store.apply_broker_square_off(square_off)

    assert order is not None and (order.order_type, order.filled_quantity, order.outcome) == ("SELL", 10, "SUCCESS")
    after = await store.get_strategy(strategy.id)
    assert (after.position, after.open_quantity, after.exit_reason) == ("FLAT", 0, "BROKER_SQUARE_OFF")
    assert after.realized_pnl == Decimal("-125.00") and after.position_cycle == held.position_cycle + 1
    logs = (await store.order_history(HistoryQuery(strategy_id=strategy.id))).items
    assert [log.order_type for log in logs] == ["SELL", "BUY"] and logs[0].status == "SUCCESS"
    assert await store.apply_broker_square_off(square_off) is None
    assert await store.get_strategy(strategy.id) == after


async def test_reports_are_kept_per_account_newest_first(store: Store) -> None:
    strategy = await seed_strategy(store)
    for requested_by in ("schedule", "operator"):
        document: dict[str, object] = {"requested_by": requested_by, "dry_run": False, "started_at": NOW.isoformat(),
                    "finished_at": NOW.isoformat(), "lines": []}
        await store.save_reconcile_report(strategy.broker_account_id, document,
                                          {"matched": 1, "repaired": 0, "needs_person": 0})

    reports = await store.reconcile_reports(strategy.broker_account_id)

    assert [report["requested_by"] for report in reports] == ["operator", "schedule"]
    assert reports[0]["report_id"] > reports[1]["report_id"]
    assert await store.broker_account_ids() == [strategy.broker_account_id]


async def test_orders_to_reconcile_are_the_unsettled_and_the_tagged(store: Store) -> None:
    strategy = await seed_strategy(store, quantity=2)
    settled, _ = await trade(store, strategy, "BUY", 2, "10")
    _, _ = await trade(store, await store.get_strategy(strategy.id), "SELL", 2, "11")
    unsettled = await store.begin_order(new_order(await store.get_strategy(strategy.id), "BUY"), accept)

    plain = await store.orders_to_reconcile(strategy.broker_account_id, [])
    tagged = await store.orders_to_reconcile(strategy.broker_account_id, [settled.tag])

    assert [order.workflow_id for order in plain] == [unsettled.workflow_id]
    assert [order.workflow_id for order in tagged] == [settled.workflow_id, unsettled.workflow_id]


async def test_a_resolution_and_the_order_paths_later_fill_apply_the_broker_fill_once(store: Store) -> None:
    """The order path applies fills in increments (applied_quantity); a reconcile's resolution adds to
    the same count, so whichever comes second adds nothing the other applied."""
    strategy = await seed_strategy(store, quantity=10)
    order, _ = await trade(store, strategy, "BUY", 4, "100", quantity=10, finish=False)
    await store.resolve_order_from_broker(order.workflow_id, resolution(str(order.broker_order_id), "COMPLETE", 10,
                                                                        "101"))
    resolved = await store.get_strategy(strategy.id)

    late = await store.apply_fill(Fill(order.workflow_id, 10, Decimal("101"), "COMPLETE", NOW))

    assert (late.open_quantity, late.entry_price) == (10, resolved.entry_price) == (10, Decimal("101"))
    record = await store.get_order(order.workflow_id)
    assert (record.applied_quantity, record.applied_average_price) == (10, Decimal("101"))


async def test_the_brokers_square_off_is_recorded_as_applied_with_its_reason(store: Store) -> None:
    strategy = await seed_strategy(store, quantity=10, product="MIS")
    await trade(store, strategy, "BUY", 10, "2500")
    square_off = BrokerSquareOff(strategy_id=strategy.id, broker_order_id="2612020009", average_price=Decimal("2490"),
                                 filled_at=FILLED_AT, by="reconcile (test)", why="the broker squared off")
    record = await store.apply_broker_square_off(square_off)
    assert record is not None
    pnl = (await store.get_strategy(strategy.id)).realized_pnl

    again = await store.apply_fill(Fill(record.workflow_id, 10, Decimal("2490"), "COMPLETE", NOW))

    assert (record.applied_quantity, record.exit_reason) == (10, "BROKER_SQUARE_OFF")
    assert (again.open_quantity, again.realized_pnl) == (0, pnl) == (0, Decimal("-100.00"))
