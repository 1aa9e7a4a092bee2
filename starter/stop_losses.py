"""The stop-losses in memory: per instrument, ordered by trigger level, so a tick costs a lookup.

A long position's stop triggers when a tick's price is at or below its level. Each instrument keeps
its stops as a sorted list of `(level, strategy_id)`: a tick above the highest level (the usual case)
is one comparison; otherwise a bisection finds the stops it crossed. A crossed stop is taken out and
remembered as fired for its position cycle, so repeated ticks never ask for the same exit twice; it is
armed again only when its exit ended without closing the position (`rearm`).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from store.records import StrategyRecord, StrategyStatus


def stop_loss_level(strategy: StrategyRecord) -> Decimal | None:
    """The price at or below which a long position must be sold: the absolute setting, or the percent
    setting applied to the filled entry price."""
    if strategy.stop_loss_price is not None:
        return strategy.stop_loss_price
    if strategy.stop_loss_pct is not None and strategy.entry_price is not None:
        return strategy.entry_price * (1 - strategy.stop_loss_pct / 100)
    return None


def watched(strategy: StrategyRecord) -> bool:
    """Whether a stop of this strategy can start an exit: long, with a stop-loss level, and RUNNING, or
    SL_TRIGGERED with no order in flight (a stop-loss that failed or sold only part: the rest must stay
    reachable by the next trigger)."""
    if strategy.open_quantity <= 0 or stop_loss_level(strategy) is None:
        return False
    if strategy.status == StrategyStatus.SL_TRIGGERED:
        return strategy.active_order_workflow_id is None
    return strategy.status == StrategyStatus.RUNNING


@dataclass(frozen=True)
class Stop:
    strategy_id: int
    account_id: int
    instrument_token: int
    level: Decimal
    position_cycle: int


class StopIndex:
    def __init__(self) -> None:
        self._levels: dict[int, list[tuple[Decimal, int]]] = {}  # instrument token -> sorted (level, strategy)
        self._stops: dict[int, Stop] = {}  # strategy id -> its armed stop
        self._fired: dict[int, int] = {}  # strategy id -> the position cycle whose stop fired

    def __len__(self) -> int:
        return len(self._stops)

    def __contains__(self, strategy_id: object) -> bool:
        return strategy_id in self._stops

    def stop_of(self, strategy_id: int) -> Stop | None:
        return self._stops.get(strategy_id)

    def put(self, strategy: StrategyRecord, instrument_token: int) -> Stop | None:
        """Arm (or move) the strategy's stop from its current record; a strategy not `watched` is
        taken out. A stop that fired in this position cycle stays out until `rearm`."""
        self.remove(strategy.id)
        level = stop_loss_level(strategy)
        if level is None or not watched(strategy):
            return None
        if self._fired.get(strategy.id) == strategy.position_cycle:
            return None
        stop = Stop(strategy.id, strategy.broker_account_id, instrument_token, level, strategy.position_cycle)
        self._stops[strategy.id] = stop
        bisect.insort(self._levels.setdefault(instrument_token, []), (level, strategy.id))
        return stop

    def remove(self, strategy_id: int) -> None:
        stop = self._stops.pop(strategy_id, None)
        if stop is None:
            return
        levels = self._levels[stop.instrument_token]
        index = bisect.bisect_left(levels, (stop.level, strategy_id))
        if index < len(levels) and levels[index] == (stop.level, strategy_id):
            del levels[index]
        if not levels:
            del self._levels[stop.instrument_token]

    def crossed(self, instrument_token: int, price: Decimal) -> list[Stop]:
        """The armed stops of the instrument at or above `price`, taken out and marked fired."""
        levels = self._levels.get(instrument_token)
        if not levels or levels[-1][0] < price:
            return []
        start = bisect.bisect_left(levels, (price, 0))
        hit = [self._stops.pop(strategy_id) for _, strategy_id in levels[start:]]
        del levels[start:]
        if not levels:
            del self._levels[instrument_token]
        for stop in hit:
            self._fired[stop.strategy_id] = stop.position_cycle
        return hit

    def rearm(self, strategy_id: int) -> None:
        """Forget that the strategy's stop fired: its next `put` arms it again."""
        self._fired.pop(strategy_id, None)

    def fired(self, strategy_id: int) -> bool:
        return strategy_id in self._fired

    def instrument_tokens(self, account_id: int | None = None) -> set[int]:
        """The instruments with an armed stop (of one account): what the ticker must be subscribed to."""
        if account_id is None:
            return set(self._levels)
        return {stop.instrument_token for stop in self._stops.values() if stop.account_id == account_id}

    def accounts(self) -> set[int]:
        return {stop.account_id for stop in self._stops.values()}

    def replace_all(self, armed: Iterable[tuple[StrategyRecord, int]]) -> None:
        """A full reload: exactly these stops, fired marks kept for strategies still in the same cycle."""
        self._levels.clear()
        self._stops.clear()
        strategies = list(armed)
        cycles = {strategy.id: strategy.position_cycle for strategy, _ in strategies}
        self._fired = {sid: cycle for sid, cycle in self._fired.items() if cycles.get(sid) == cycle}
        for strategy, token in strategies:
            self.put(strategy, token)
