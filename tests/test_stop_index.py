"""The market-data service's parts without I/O: the stop index, the id cursor, the instruments cache."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from starter.market_data import IdCursor, InstrumentTokens
from starter.stop_losses import StopIndex, stop_loss_level
from store.records import StrategyRecord

NOW = datetime(2026, 12, 2, 4, 0, tzinfo=UTC)


def long_position(strategy_id: int, *, stop: str | None = "95", pct: str | None = None, entry: str = "100",
                  account: int = 1, cycle: int = 1, status: str = "RUNNING", open_quantity: int = 10) -> StrategyRecord:
    return StrategyRecord(
        id=strategy_id, user_id=1, broker_account_id=account, name=f"s{strategy_id}", symbol="INFY",
        exchange="NSE", quantity=10, product="MIS", entry_time=None, exit_time=None,
        stop_loss_price=None if stop is None else Decimal(stop), stop_loss_pct=None if pct is None else Decimal(pct),
        status=status, stop_reason=None, stopped_at=None, position="LONG" if open_quantity else "FLAT",
        open_quantity=open_quantity, entry_price=Decimal(entry), entry_filled_at=NOW, exit_price=None,
        exit_filled_at=None, realized_pnl=Decimal(0), position_cycle=cycle, sl_triggered=False,
        sl_trigger_price=None, exit_reason=None, needs_intervention=False, intervention_reason=None,
        intervention_at=None, intervention_cleared_by=None, intervention_cleared_at=None, last_error=None,
        last_action=None, last_order_workflow_id=None, active_order_workflow_id=None, version=1,
        created_at=NOW, updated_at=NOW,
    )


def test_a_tick_crosses_exactly_the_stops_at_or_above_its_price_and_only_once() -> None:
    index = StopIndex()
    for strategy_id, level in ((1, "95"), (2, "97.5"), (3, "90"), (4, "97.5")):
        index.put(long_position(strategy_id, stop=level), instrument_token=408065)
    index.put(long_position(5, stop="99"), instrument_token=2953217)  # another instrument

    assert index.crossed(408065, Decimal("98")) == []
    hit = index.crossed(408065, Decimal("95"))
    assert sorted(stop.strategy_id for stop in hit) == [1, 2, 4]
    assert index.crossed(408065, Decimal("94")) == []  # fired stops are gone: repeats send nothing
    assert [stop.strategy_id for stop in index.crossed(408065, Decimal("89.95"))] == [3]
    assert 5 in index and index.instrument_tokens() == {2953217}


def test_a_percent_stop_follows_the_filled_entry_price() -> None:
    strategy = long_position(1, stop=None, pct="2.5", entry="1523.40")
    assert stop_loss_level(strategy) == Decimal("1485.315")
    index = StopIndex()
    index.put(strategy, 1)
    assert index.crossed(1, Decimal("1485.35")) == []
    assert [stop.level for stop in index.crossed(1, Decimal("1485.30"))] == [Decimal("1485.315")]
    # No entry price yet (nothing filled): nothing to follow.
    assert stop_loss_level(dataclasses.replace(strategy, entry_price=None)) is None


def test_a_moved_stop_replaces_the_old_level_and_an_unwatched_strategy_leaves() -> None:
    index = StopIndex()
    index.put(long_position(1, stop="95"), 7)
    index.put(long_position(1, stop="90"), 7)
    assert index.crossed(7, Decimal("94")) == []
    index.put(long_position(1, stop="90", status="STOPPED"), 7)
    assert 1 not in index and index.crossed(7, Decimal("80")) == []
    index.put(long_position(2, stop="90", open_quantity=0), 7)
    assert 2 not in index and index.instrument_tokens() == set()


def test_a_stop_that_sold_only_part_stays_watched_once_no_order_is_in_flight() -> None:
    index = StopIndex()
    index.put(long_position(1, status="SL_TRIGGERED"), 7)
    assert 1 in index
    in_flight = dataclasses.replace(long_position(1, status="SL_TRIGGERED"), active_order_workflow_id="order:1:1:exit")
    index.put(in_flight, 7)
    assert 1 not in index


def test_a_fired_stop_stays_out_until_rearmed_or_a_new_position_cycle() -> None:
    index = StopIndex()
    index.put(long_position(1), 7)
    assert len(index.crossed(7, Decimal("90"))) == 1
    index.put(long_position(1), 7)  # the same position re-read from the store: still fired
    assert 1 not in index and index.fired(1)
    index.rearm(1)  # its exit ended without selling
    index.put(long_position(1), 7)
    assert 1 in index
    index.crossed(7, Decimal("90"))
    index.put(long_position(1, cycle=2), 7)  # the next position of the strategy
    assert 1 in index


def test_a_full_reload_keeps_fired_marks_of_the_same_cycle_only() -> None:
    index = StopIndex()
    index.put(long_position(1), 7)
    index.put(long_position(2), 7)
    index.crossed(7, Decimal("90"))
    index.replace_all([(long_position(1), 7), (long_position(2, cycle=2), 7), (long_position(3, account=2), 9)])
    assert 1 not in index and 2 in index and 3 in index
    assert index.instrument_tokens(account_id=2) == {9} and index.accounts() == {1, 2}


def test_the_cursor_waits_for_an_id_committed_late_then_gives_up_on_it() -> None:
    now = [0.0]
    cursor = IdCursor(10, grace=5.0, clock=lambda: now[0])
    cursor.advance([11, 13])  # 12 is not committed yet
    assert cursor.position == 11 and cursor.unseen([12, 13, 14]) == [12, 14]
    cursor.advance([12, 13])
    assert cursor.position == 13
    cursor.advance([15])
    now[0] = 6.0
    cursor.advance([])
    assert cursor.position == 15


async def test_the_instruments_dump_is_fetched_once_a_day_and_kept_in_a_file(tmp_path: Path) -> None:
    fetched: list[str] = []
    day = ["2026-12-02"]

    async def fetch() -> dict[str, int]:
        fetched.append(day[0])
        return {"NSE:INFY": 408065}

    first = InstrumentTokens(tmp_path, fetch, today=lambda: day[0])
    assert await first.token_of("NSE", "INFY") == 408065
    assert await first.token_of("NSE", "NOSUCH") is None
    # A restarted service reads the day's file instead of fetching again.
    again = InstrumentTokens(tmp_path, fetch, today=lambda: day[0])
    assert await again.token_of("NSE", "INFY") == 408065
    assert fetched == ["2026-12-02"]
    day[0] = "2026-12-03"
    assert await again.token_of("NSE", "INFY") == 408065
    assert fetched == ["2026-12-02", "2026-12-03"]
    assert cached_files(tmp_path) == {"instruments-2026-12-03.json": {"NSE:INFY": 408065}}


def cached_files(folder: Path) -> dict[str, object]:
    return {path.name: json.loads(path.read_text()) for path in folder.iterdir()}


@pytest.mark.parametrize("price", ["95", "94.95"])
def test_a_tick_at_or_below_the_level_triggers(price: str) -> None:
    index = StopIndex()
    index.put(long_position(1, stop="95"), 7)
    assert len(index.crossed(7, Decimal(price))) == 1
