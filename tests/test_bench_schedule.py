"""The benchmark's steady run: how the floor and the engine take turns, and how their segments add up."""

from __future__ import annotations

import pytest

from dev.bench import RunResult, alternating, combined, segment_sizes


def test_segments_share_the_orders_out_as_equally_as_they_can():
    assert segment_sizes(1000, 2) == [500, 500]
    assert segment_sizes(1001, 4) == [251, 250, 250, 250]
    assert segment_sizes(3, 5) == [1, 1, 1]  # never a segment of nothing
    assert sum(segment_sizes(997, 3)) == 997


def test_the_sides_take_turns_so_a_steady_drift_costs_both_the_same():
    assert alternating(4) == [("floor", "engine"), ("engine", "floor"), ("floor", "engine"), ("engine", "floor")]
    # A speed that falls by one unit per segment: each side's segments add up to the same total.
    slots = [side for pair in alternating(4) for side in pair]
    assert sum(i for i, side in enumerate(slots) if side == "floor") == sum(
        i for i, side in enumerate(slots) if side == "engine"
    )


def run(orders: int, seconds: float, spent: dict[str, float], first_started: float) -> RunResult:
    return RunResult(
        orders, seconds, spent, eager=orders // 2, handles=[], results=[f"r{first_started + i}" for i in range(orders)],
        started_at={i: first_started + i for i in range(orders)},
    )


def test_a_sides_segments_add_up_to_one_run():
    one = run(2, 1.0, {"server": 30.0, "worker": 50.0, "worker: main thread": 20.0}, 100)
    two = run(3, 2.0, {"server": 45.0, "worker": 40.0, "worker: main thread": 10.0}, 200)
    both = combined([one, two])
    assert (both.orders, both.seconds, both.eager) == (5, 3.0, 2)
    assert both.rate == pytest.approx(5 / 3)
    # CPU per order is the segments' CPU over all their orders, not an average of their per-order figures.
    assert both.cpu_per_order == {"server": 15.0, "worker": 18.0, "worker: main thread": 6.0, "all processes": 33.0}
    assert both.results == ["r100", "r101", "r200", "r201", "r202"]
    assert both.started_at == {0: 100, 1: 101, 2: 200, 3: 201, 4: 202}
