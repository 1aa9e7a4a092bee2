"""Strategies: configuration, lifecycle status, emergency stop and manual intervention."""

from __future__ import annotations

import re
from dataclasses import asdict
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from store import validation as check
from store.base import StoreBase, flag_for_intervention, strategy_record, utc_now
from store.errors import AlreadyExists, InvalidInput
from store.models import Strategy, StrategyEvent
from store.records import PositionSide, StrategyEventType, StrategyRecord, StrategySpec, StrategyStatus

EXCHANGES = frozenset({"NSE", "BSE", "NFO", "BFO", "CDS", "BCD", "MCX"})
PRODUCTS = frozenset({"CNC", "MIS", "NRML", "MTF"})
SYMBOL = re.compile(r"[A-Z0-9][A-Z0-9&_.\-]{0,39}")

CONFIG_FIELDS = frozenset(
    {
        "broker_account_id",
        "name",
        "symbol",
        "exchange",
        "quantity",
        "product",
        "entry_time",
        "exit_time",
        "stop_loss_price",
        "stop_loss_pct",
    }
)
# What an open position or an order in flight was placed with; changing it mid-trade would orphan them.
TRADE_BOUND_FIELDS = frozenset({"broker_account_id", "symbol", "exchange", "quantity", "product"})

# status -> statuses it may move to. Moving to the same status changes nothing.
STATUS_TRANSITIONS: dict[StrategyStatus, frozenset[StrategyStatus]] = {
    StrategyStatus.STOPPED: frozenset({StrategyStatus.RUNNING}),
    StrategyStatus.RUNNING: frozenset({StrategyStatus.STOPPED, StrategyStatus.SL_TRIGGERED}),
    StrategyStatus.SL_TRIGGERED: frozenset({StrategyStatus.RUNNING, StrategyStatus.STOPPED}),
}


def _checked_config(values: dict[str, Any]) -> dict[str, Any]:
    """Each configuration field checked and normalised; cross-field rules on the whole set."""
    checked: dict[str, Any] = {}
    for name, value in values.items():
        if name == "broker_account_id":
            checked[name] = check.positive_int(value, name)
        elif name == "name":
            checked[name] = check.text(value, name, max_length=100)
        elif name == "symbol":
            raw = value.upper() if isinstance(value, str) else value
            checked[name] = check.text(raw, name, max_length=40, pattern=SYMBOL)
        elif name == "exchange":
            checked[name] = check.choice(value.upper() if isinstance(value, str) else value, name, EXCHANGES)
        elif name == "quantity":
            checked[name] = check.positive_int(value, name)
        elif name == "product":
            checked[name] = check.choice(value.upper() if isinstance(value, str) else value, name, PRODUCTS)
        elif name in ("entry_time", "exit_time"):
            checked[name] = check.time_of_day(value, name)
        elif name == "stop_loss_price":
            checked[name] = None if value is None else check.price(value, name)
        elif name == "stop_loss_pct":
            checked[name] = None if value is None else check.percentage(value, name)
        else:
            raise InvalidInput(f"{name!r} is not a strategy setting; settings are {', '.join(sorted(CONFIG_FIELDS))}")
    return checked


def _check_config_consistent(config: dict[str, Any]) -> None:
    if config.get("stop_loss_price") is not None and config.get("stop_loss_pct") is not None:
        raise InvalidInput("set stop_loss_price or stop_loss_pct, not both")
    entry, exit_ = config.get("entry_time"), config.get("exit_time")
    if entry is not None and entry == exit_:
        raise InvalidInput(f"entry_time and exit_time are both {entry}; they must differ")


def _strategy_event(strategy: Strategy, kind: StrategyEventType, data: dict[str, Any]) -> StrategyEvent:
    """The change, for whoever follows strategy_events by id (the market-data service's stop-losses)."""
    return StrategyEvent(strategy_id=strategy.id, event_type=kind, data=data, created_at=utc_now())


class StrategiesMixin(StoreBase):
    async def create_strategy(self, spec: StrategySpec) -> StrategyRecord:
        """A new strategy, STOPPED and FLAT, on cycle 1. Start it with set_strategy_status(RUNNING)."""
        values = asdict(spec)
        user_id = check.positive_int(values.pop("user_id"), "user_id")
        config = _checked_config(values)
        _check_config_consistent(config)
        now = utc_now()
        async with self._write() as session:
            await self._user_row(session, user_id)
            await self._check_account_belongs(session, config["broker_account_id"], user_id)
            await self._check_name_free(session, user_id, config["name"])
            strategy = Strategy(
                user_id=user_id,
                **config,
                status=StrategyStatus.STOPPED,
                position=PositionSide.FLAT,
                open_quantity=0,
                realized_pnl=Decimal(0),
                position_cycle=1,
                sl_triggered=False,
                needs_intervention=False,
                created_at=now,
                updated_at=now,
            )
            session.add(strategy)
            await session.flush()
            return strategy_record(strategy)

    async def get_strategy(self, strategy_id: int) -> StrategyRecord:
        async with self._read() as session:
            return strategy_record(await self._strategy_row(session, strategy_id))

    async def list_strategies(self, user_id: int | None = None, status: str | None = None) -> list[StrategyRecord]:
        query = select(Strategy).order_by(Strategy.id)
        if user_id is not None:
            query = query.where(Strategy.user_id == check.positive_int(user_id, "user_id"))
        if status is not None:
            query = query.where(Strategy.status == check.choice(status, "status", StrategyStatus))
        async with self._read() as session:
            return [strategy_record(row) for row in await session.scalars(query)]

    async def update_strategy(self, strategy_id: int, **changes: Any) -> StrategyRecord:
        """Change configuration only. Symbol, exchange, quantity, product and broker account are
        refused while a position is open or an order is in flight."""
        if not changes:
            raise InvalidInput(f"nothing to update; pass one or more of {', '.join(sorted(CONFIG_FIELDS))}")
        checked = _checked_config(changes)
        async with self._write() as session:
            strategy = await self._strategy_row(session, strategy_id, lock=True)
            changed = {name: value for name, value in checked.items() if getattr(strategy, name) != value}
            if not changed:
                return strategy_record(strategy)
            bound = sorted(TRADE_BOUND_FIELDS & changed.keys())
            if bound and (strategy.open_quantity > 0 or strategy.active_order_workflow_id is not None):
                raise InvalidInput(
                    f"strategy {strategy_id} has an open position or an order in flight; "
                    f"{', '.join(bound)} can change only when it is flat and idle"
                )
            merged = {name: getattr(strategy, name) for name in CONFIG_FIELDS} | changed
            _check_config_consistent(merged)
            if "broker_account_id" in changed:
                await self._check_account_belongs(session, changed["broker_account_id"], strategy.user_id)
            if "name" in changed:
                await self._check_name_free(session, strategy.user_id, changed["name"])
            for name, value in changed.items():
                setattr(strategy, name, value)
            strategy.last_action = f"settings changed: {', '.join(sorted(changed))}"
            strategy.updated_at = utc_now()
            session.add(_strategy_event(strategy, StrategyEventType.SETTINGS_CHANGED, {"changed": sorted(changed)}))
            await session.flush()
            return strategy_record(strategy)

    async def set_strategy_status(self, strategy_id: int, status: str, reason: str | None = None) -> StrategyRecord:
        """Move along STATUS_TRANSITIONS; the same status again changes nothing."""
        target = StrategyStatus(check.choice(status, "status", StrategyStatus))
        why = check.optional_text(reason, "reason", max_length=2000)
        async with self._write() as session:
            strategy = await self._strategy_row(session, strategy_id, lock=True)
            current = StrategyStatus(strategy.status)
            if target == current:
                return strategy_record(strategy)
            if target not in STATUS_TRANSITIONS[current]:
                raise InvalidInput(f"strategy {strategy_id} is {current}; it cannot move to {target}")
            if target == StrategyStatus.RUNNING and strategy.needs_intervention:
                raise InvalidInput(
                    f"strategy {strategy_id} needs manual intervention ({strategy.intervention_reason}); "
                    "clear it before starting the strategy"
                )
            if target == StrategyStatus.SL_TRIGGERED and strategy.open_quantity == 0:
                raise InvalidInput(f"strategy {strategy_id} has no open position for a stop-loss to trigger on")
            now = utc_now()
            if target == StrategyStatus.STOPPED:
                strategy.stop_reason, strategy.stopped_at = why, now
            elif target == StrategyStatus.RUNNING:
                strategy.stop_reason, strategy.stopped_at = None, None
            strategy.status = target
            strategy.last_action = f"status {current} -> {target}" + (f": {why}" if why else "")
            strategy.updated_at = now
            change = {"from": str(current), "to": str(target)}
            session.add(_strategy_event(strategy, StrategyEventType.STATUS_CHANGED, change))
            await session.flush()
            return strategy_record(strategy)

    async def stop_strategies(self, user_id: int | None, reason: str) -> list[StrategyRecord]:
        """Emergency stop, in one transaction: every strategy of the user (None: of everyone) STOPPED.

        Returns all of them, those stopped before included: the caller still has to cancel their
        orders in flight and square off their open positions."""
        why = check.text(reason, "reason", max_length=2000)
        query = select(Strategy).order_by(Strategy.id).with_for_update()
        async with self._write() as session:
            if user_id is not None:
                await self._user_row(session, user_id)
                query = query.where(Strategy.user_id == user_id)
            strategies = list(await session.scalars(query))
            now = utc_now()
            for strategy in strategies:
                if strategy.status != StrategyStatus.STOPPED:
                    strategy.last_action = f"status {strategy.status} -> STOPPED: {why}"
                    session.add(_strategy_event(strategy, StrategyEventType.STATUS_CHANGED,
                                                {"from": str(strategy.status), "to": "STOPPED"}))
                    strategy.status = StrategyStatus.STOPPED
                    strategy.stop_reason, strategy.stopped_at = why, now
                    strategy.updated_at = now
            await session.flush()
            return [strategy_record(strategy) for strategy in strategies]

    async def mark_intervention(self, strategy_id: int, reason: str) -> StrategyRecord:
        """Flag the strategy for a person. If already flagged, the first reason stays (it is usually
        the cause) and the new one goes to last_error."""
        why = check.text(reason, "reason", max_length=2000)
        async with self._write() as session:
            strategy = await self._strategy_row(session, strategy_id, lock=True)
            flag_for_intervention(strategy, why, utc_now())
            await session.flush()
            return strategy_record(strategy)

    async def clear_intervention(self, strategy_id: int, cleared_by: str) -> StrategyRecord:
        """Unflag it; intervention_reason and intervention_at keep describing what was cleared."""
        who = check.text(cleared_by, "cleared_by", max_length=64)
        async with self._write() as session:
            strategy = await self._strategy_row(session, strategy_id, lock=True)
            if not strategy.needs_intervention:
                return strategy_record(strategy)
            now = utc_now()
            strategy.needs_intervention = False
            strategy.intervention_cleared_by, strategy.intervention_cleared_at = who, now
            strategy.last_action = f"intervention cleared by {who}"
            strategy.updated_at = now
            await session.flush()
            return strategy_record(strategy)

    async def list_interventions(self, user_id: int | None = None) -> list[StrategyRecord]:
        query = select(Strategy).where(Strategy.needs_intervention.is_(True))
        if user_id is not None:
            query = query.where(Strategy.user_id == check.positive_int(user_id, "user_id"))
        async with self._read() as session:
            rows = await session.scalars(query.order_by(Strategy.intervention_at, Strategy.id))
            return [strategy_record(row) for row in rows]

    async def _check_account_belongs(self, session: AsyncSession, account_id: int, user_id: int) -> None:
        account = await self._account_row(session, account_id)
        if account.user_id != user_id:
            raise InvalidInput(f"broker account {account_id} belongs to another user; use one of user {user_id}'s")

    async def _check_name_free(self, session: AsyncSession, user_id: int, name: str) -> None:
        taken = await session.scalar(select(Strategy.id).where(Strategy.user_id == user_id, Strategy.name == name))
        if taken is not None:
            raise AlreadyExists(f"user {user_id} already has a strategy named {name!r} (id {taken}); choose another")
