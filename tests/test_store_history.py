"""The audit log: filters by user, strategy, status, order type and time; keyset pagination."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from store import HistoryQuery, InvalidInput, Store, StrategyRecord, StrategySpec
from tests.fixtures.db import accept, new_order, seed_strategy

T0 = datetime(2026, 11, 24, 3, 45, tzinfo=UTC)


@dataclass
class Audit:
    store: Store
    a: StrategyRecord
    b: StrategyRecord
    c: StrategyRecord
    names: dict[int, str]  # order_logs.id -> name given below

    async def page(self, **filters: object) -> list[str]:
        page = await self.store.order_history(HistoryQuery(**filters))  # type: ignore[arg-type]
        return [self.names[row.id] for row in page.items]


async def attempt(store: Store, strategy: StrategyRecord, minute: int, outcome: str, order_type: str = "BUY") -> int:
    """An order attempted at T0 + minute and finished with `outcome`; returns its audit row id."""
    at = T0 + timedelta(minutes=minute)
    order = await store.begin_order(new_order(strategy, order_type, attempted_at=at), accept)
    error = None if outcome == "SUCCESS" else "refused"
    await store.finish_order(order.workflow_id, outcome, "X", {}, error, at + timedelta(seconds=2))
    (row,) = [r for r in (await store.order_history(HistoryQuery(limit=500))).items if r.order_id == order.id]
    return row.id


@pytest.fixture
async def audit(store: Store) -> Audit:
    """Seven attempts: alice's strategies a (4) and b (2), bob's c (1); a1 and b0 share an instant."""
    a = await seed_strategy(store, username="alice", name="a")
    b = await store.create_strategy(StrategySpec(a.user_id, a.broker_account_id, "b", "TCS", 5))
    c = await seed_strategy(store, username="bob", name="c")
    names = {
        await attempt(store, a, 0, "SUCCESS"): "a0",
        await attempt(store, a, 10, "FAILED", "SELL"): "a1",
        await attempt(store, b, 10, "SUCCESS"): "b0",
        await attempt(store, c, 20, "ERROR"): "c0",
        await attempt(store, a, 30, "SUCCESS", "SL_SELL"): "a2",
        await attempt(store, b, 40, "FAILED"): "b1",
        await attempt(store, a, 50, "SUCCESS"): "a3",
    }
    return Audit(store, a, b, c, names)


async def test_history_is_newest_first_with_ties_broken_by_id(audit: Audit) -> None:
    assert await audit.page() == ["a3", "b1", "a2", "c0", "b0", "a1", "a0"]


async def test_history_filters(audit: Audit) -> None:
    assert await audit.page(user_id=audit.a.user_id) == ["a3", "b1", "a2", "b0", "a1", "a0"]
    assert await audit.page(user_id=audit.c.user_id) == ["c0"]
    assert await audit.page(strategy_id=audit.b.id) == ["b1", "b0"]
    assert await audit.page(status="FAILED") == ["b1", "a1"]
    assert await audit.page(status="ERROR", user_id=audit.a.user_id) == []
    assert await audit.page(order_type="SL_SELL") == ["a2"]
    assert await audit.page(order_type="BUY", strategy_id=audit.a.id) == ["a3", "a0"]
    assert await audit.page(since=T0 + timedelta(minutes=10), until=T0 + timedelta(minutes=40)) == [
        "a2",
        "c0",
        "b0",
        "a1",
    ]
    assert await audit.page(since=T0 + timedelta(minutes=50)) == ["a3"]
    assert await audit.page(until=T0 + timedelta(minutes=10)) == ["a0"]


async def test_pages_follow_one_another_without_gaps_or_repeats(audit: Audit) -> None:
    seen: list[str] = []
    cursor = None
    sizes = []
    while True:
        page = await audit.store.order_history(HistoryQuery(limit=2, cursor=cursor))
        sizes.append(len(page.items))
        seen += [audit.names[row.id] for row in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == ["a3", "b1", "a2", "c0", "b0", "a1", "a0"]
    assert sizes == [2, 2, 2, 1]


async def test_pagination_within_a_filter(audit: Audit) -> None:
    first = await audit.store.order_history(HistoryQuery(user_id=audit.a.user_id, limit=3))
    assert [audit.names[r.id] for r in first.items] == ["a3", "b1", "a2"]
    rest = await audit.store.order_history(HistoryQuery(user_id=audit.a.user_id, limit=3, cursor=first.next_cursor))
    assert [audit.names[r.id] for r in rest.items] == ["b0", "a1", "a0"]
    assert rest.next_cursor is None


async def test_a_page_that_ends_exactly_has_no_next_cursor(audit: Audit) -> None:
    page = await audit.store.order_history(HistoryQuery(limit=7))
    assert len(page.items) == 7 and page.next_cursor is None


async def test_history_rows_carry_the_audit_fields(audit: Audit) -> None:
    page = await audit.store.order_history(HistoryQuery(strategy_id=audit.b.id, status="FAILED"))
    (row,) = page.items
    assert (row.order_type, row.status, row.error_message, row.execution_time_ms) == ("BUY", "FAILED", "refused", 2000)
    assert (row.user_id, row.strategy_id) == (audit.a.user_id, audit.b.id)
    assert row.attempted_at == T0 + timedelta(minutes=40)
    assert row.completed_at == T0 + timedelta(minutes=40, seconds=2)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        (HistoryQuery(cursor="not-a-cursor"), "cursor is not one this store issued"),
        (HistoryQuery(cursor="W10"), "cursor is not one this store issued"),
        (HistoryQuery(limit=0), "limit must be a positive integer"),
        (HistoryQuery(limit=501), "limit must be at most 500"),
        (HistoryQuery(status="DONE"), "status must be one of"),
        (HistoryQuery(order_type="SHORT"), "order_type must be one of"),
        (HistoryQuery(since=T0, until=T0), "must be before until"),
        (HistoryQuery(since=datetime(2026, 1, 1)), "timezone-aware"),
        (HistoryQuery(user_id=-1), "user_id must be a positive integer"),
    ],
)
async def test_bad_history_queries_say_what_to_fix(store: Store, query: HistoryQuery, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        await store.order_history(query)
