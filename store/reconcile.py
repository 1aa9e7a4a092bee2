"""Reconciliation's writes: orders settled from the broker's own record, Kite's square-off applied,
and the reports of every run.

Each repair is one transaction under the strategy's and the order's locks (the order path's lock
order), writes a RECONCILED event saying who did what and why, and changes nothing when repeated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from engine.order_state import TERMINAL_STATUSES
from store import validation as check
from store.base import StoreBase, strategy_record, to_record, utc_now
from store.errors import FillMismatch, InvalidInput, PlacementConflict
from store.models import BrokerAccount, Order, OrderEvent, OrderLog, ReconcileReportRow, Strategy
from store.orders import _apply_fill_to_position, _event
from store.records import (
    ExitReason,
    Fill,
    LogStatus,
    OrderEventType,
    OrderRecord,
    OrderType,
    StrategyRecord,
)
from store.types import MONEY_QUANTUM, readable

RECONCILED = "RECONCILED"
NOT_PLACED = "NOT_PLACED"
SQUARE_OFF_PREFIX = "broker-square-off"
_NOT_ALPHANUMERIC = re.compile(r"[^A-Za-z0-9]")


@dataclass(frozen=True)
class BrokerResolution:
    """The broker's final word on one order, and who applies it why."""

    broker_order_id: str
    status: str
    filled_quantity: int
    average_price: Decimal
    filled_at: datetime
    by: str
    why: str


@dataclass(frozen=True)
class BrokerSquareOff:
    """A position the broker closed itself: its order, price and time."""

    strategy_id: int
    broker_order_id: str
    average_price: Decimal
    filled_at: datetime
    by: str
    why: str


def square_off_workflow_id(strategy_id: int, cycle: int) -> str:
    """One per position cycle: applying the same square-off twice finds this id taken."""
    return f"{SQUARE_OFF_PREFIX}:{strategy_id}:{cycle}"


def _remaining_price(total: int, total_price: Decimal, applied: int, applied_price: Decimal | None) -> Decimal:
    """The average price of the part of a fill not yet applied."""
    if applied == 0 or applied_price is None:
        return total_price
    rest = (total_price * total - applied_price * applied) / (total - applied)
    return readable(rest.quantize(MONEY_QUANTUM, rounding=ROUND_HALF_EVEN))


class ReconcileMixin(StoreBase):
    async def broker_account_ids(self) -> list[int]:
        async with self._read() as session:
            return list(await session.scalars(select(BrokerAccount.id).order_by(BrokerAccount.id)))

    async def account_strategies(self, account_id: int) -> list[StrategyRecord]:
        account = check.positive_int(account_id, "account_id")
        async with self._read() as session:
            await self._account_row(session, account)
            rows = await session.scalars(
                select(Strategy).where(Strategy.broker_account_id == account).order_by(Strategy.id)
            )
            return [strategy_record(row) for row in rows]

    async def orders_to_reconcile(self, account_id: int, tags: list[str]) -> list[OrderRecord]:
        """The account's orders the broker may know more about: unfinished ones, finished ones the
        broker never confirmed a final state of, and every order carrying one of `tags`."""
        account = check.positive_int(account_id, "account_id")
        unsettled = or_(
            Order.outcome.is_(None),
            Order.broker_order_id.is_not(None) & Order.status.not_in(sorted(TERMINAL_STATUSES)),
        )
        wanted = or_(unsettled, Order.tag.in_(tags)) if tags else unsettled
        query = (
            select(Order)
            .join(Strategy, Strategy.id == Order.strategy_id)
            .where(Strategy.broker_account_id == account, wanted)
            .order_by(Order.id)
        )
        async with self._read() as session:
            return [to_record(OrderRecord, row) for row in await session.scalars(query)]

    async def resolve_order_from_broker(self, workflow_id: str, resolution: BrokerResolution) -> bool:
        """Bring one order, its audit row and its strategy to the broker's final state; release the
        strategy's claim. Fills are applied exactly once: only what no earlier step applied is added.
        Returns whether anything changed."""
        status = check.text(resolution.status, "status", max_length=32).upper()
        if status not in TERMINAL_STATUSES:
            raise InvalidInput(f"an order is resolved from a final broker state, not {status}")
        filled = check.non_negative_int(resolution.filled_quantity, "filled_quantity")
        price = check.broker_price(resolution.average_price, "average_price")
        filled_at = check.aware_datetime(resolution.filled_at, "filled_at")
        async with self._write() as session:
            order, strategy = await self._lock_order_and_strategy(session, workflow_id)
            if filled > order.quantity:
                raise FillMismatch(
                    f"broker order {resolution.broker_order_id} filled {filled} of order {workflow_id}'s "
                    f"{order.quantity}; it is not this order"
                )
            if order.broker_order_id not in (None, resolution.broker_order_id):
                raise PlacementConflict(
                    f"order {workflow_id} is broker order {order.broker_order_id}, not {resolution.broker_order_id}"
                )
            # What the strategy already holds of this order (the order path applies fills in increments).
            applied = order.applied_quantity if order.fill_applied_at is not None else 0
            if filled < applied:
                raise FillMismatch(
                    f"the broker reports {filled} filled of order {workflow_id}, but {applied} were applied; "
                    "check the position at the broker"
                )
            before = {"status": order.status, "filled_quantity": applied, "outcome": order.outcome}
            now = utc_now()
            changes: list[str] = []
            if order.broker_order_id is None:
                order.broker_order_id, order.adopted, order.placed_at = resolution.broker_order_id, True, now
                session.add(_event(order, OrderEventType.ADOPTED,
                                   {"broker_order_id": resolution.broker_order_id, "placed_at": now}, now))
                changes.append("adopted")
            if filled > applied:
                rest = Fill(workflow_id=order.workflow_id, filled_quantity=filled - applied,
                            average_price=_remaining_price(filled, price, applied, order.applied_average_price),
                            status=status, filled_at=filled_at)
                _apply_fill_to_position(strategy, order, rest)
                order.filled_at = filled_at
                order.applied_quantity, order.applied_average_price = filled, price
                changes.append(f"{filled - applied} filled applied")
            if order.fill_applied_at is None:
                order.fill_applied_at = now
            if (order.status, order.filled_quantity) != (status, filled):
                changes.append(f"status {order.status} -> {status}")
            order.status, order.filled_quantity = status, filled
            if filled > 0:
                order.average_price = price
            final = LogStatus.SUCCESS if filled > 0 else LogStatus.FAILED
            if order.outcome != final:
                changes.append(f"outcome {order.outcome or 'unfinished'} -> {final}")
                await self._close_log(session, order, final, {"status": status, "filled_quantity": filled,
                                                              "average_price": str(price)}, None, now)
                order.outcome = final
                order.completed_at = order.completed_at or now
            if strategy.active_order_workflow_id == order.workflow_id:
                strategy.active_order_workflow_id = None
                changes.append("claim released")
            if not changes:
                return False
            order.updated_at = strategy.updated_at = now
            strategy.last_action = f"reconciled {order.order_type} order {order.workflow_id}: {', '.join(changes)}"
            await self._audit(session, order, strategy, resolution.by, resolution.why, changes, before, now)
            await session.flush()
            return True

    async def close_unplaced_order(self, workflow_id: str, by: str, why: str) -> bool:
        """An order no workflow follows and the broker never received: FAILED, its claim released."""
        async with self._write() as session:
            order, strategy = await self._lock_order_and_strategy(session, workflow_id)
            if order.outcome is not None or order.broker_order_id is not None:
                return False
            now = utc_now()
            before = {"status": order.status, "filled_quantity": 0, "outcome": None}
            await self._close_log(session, order, LogStatus.FAILED, {"status": NOT_PLACED}, why, now)
            order.outcome, order.status, order.completed_at, order.updated_at = LogStatus.FAILED, NOT_PLACED, now, now
            changes = ["outcome unfinished -> FAILED (never reached the broker)"]
            if strategy.active_order_workflow_id == order.workflow_id:
                strategy.active_order_workflow_id = None
                changes.append("claim released")
            strategy.last_error = why
            strategy.last_action = f"reconciled {order.order_type} order {order.workflow_id}: {', '.join(changes)}"
            strategy.updated_at = now
            await self._audit(session, order, strategy, by, why, changes, before, now)
            await session.flush()
            return True

    async def apply_broker_square_off(self, square_off: BrokerSquareOff) -> OrderRecord | None:
        """Close the strategy's open position at the broker's square-off price, as an order of its own
        (so the audit log shows it), exit reason BROKER_SQUARE_OFF. None if there was nothing to close
        or this cycle's square-off is already applied."""
        price = check.broker_price(square_off.average_price, "average_price")
        if price == 0:
            raise InvalidInput("a square-off fills at a price above zero")
        filled_at = check.aware_datetime(square_off.filled_at, "filled_at")
        broker_id = check.text(square_off.broker_order_id, "broker_order_id", max_length=64)
        async with self._write() as session:
            strategy = await self._strategy_row(session, square_off.strategy_id, lock=True)
            if strategy.open_quantity == 0:
                return None
            workflow_id = square_off_workflow_id(strategy.id, strategy.position_cycle)
            if await session.scalar(select(Order.id).where(Order.workflow_id == workflow_id)) is not None:
                return None
            now = utc_now()
            quantity = strategy.open_quantity
            order = Order(
                workflow_id=workflow_id, strategy_id=strategy.id, user_id=strategy.user_id,
                order_type=OrderType.SELL, transaction_type="SELL", quantity=quantity,
                symbol=strategy.symbol, exchange=strategy.exchange,
                tag=(_NOT_ALPHANUMERIC.sub("", broker_id)[:20] or "BROKER"),
                requested_by=check.text(square_off.by, "by", max_length=64), reason=square_off.why,
                broker_order_id=broker_id, adopted=True, status="COMPLETE", filled_quantity=quantity,
                average_price=price, outcome=LogStatus.SUCCESS, created_at=now, placed_at=filled_at,
                filled_at=filled_at, fill_applied_at=now, completed_at=now, updated_at=now,
                applied_quantity=quantity, applied_average_price=price, exit_reason=ExitReason.BROKER_SQUARE_OFF,
            )
            session.add(order)
            await session.flush()
            result = {"status": "COMPLETE", "filled_quantity": quantity, "average_price": str(price),
                      "broker_order_id": broker_id, "exit_reason": ExitReason.BROKER_SQUARE_OFF.value}
            session.add(OrderLog(
                order_id=order.id, workflow_id=workflow_id, user_id=strategy.user_id, strategy_id=strategy.id,
                order_type=OrderType.SELL, order_data={"placed_by": "broker", "product": strategy.product},
                # Recorded when the reconcile found it: the history lists it after the orders before it.
                status=LogStatus.SUCCESS, result=result, attempted_at=now, completed_at=now, execution_time_ms=0,
            ))
            strategy.exit_reason = ExitReason.BROKER_SQUARE_OFF
            before_pnl = strategy.realized_pnl
            _apply_fill_to_position(strategy, order, Fill(workflow_id=workflow_id, filled_quantity=quantity,
                                                         average_price=price, status="COMPLETE", filled_at=filled_at))
            strategy.last_action = f"squared off by the broker: {quantity} at {price} (broker order {broker_id})"
            strategy.updated_at = now
            session.add(_event(order, OrderEventType.ADOPTED, {"broker_order_id": broker_id, "placed_at": filled_at},
                               now))
            session.add(_event(order, OrderEventType.FILL_APPLIED, {
                "status": "COMPLETE", "filled_quantity": quantity, "average_price": price, "filled_at": filled_at,
                "open_quantity": strategy.open_quantity, "realized_pnl": strategy.realized_pnl}, now))
            changes = [f"position of {quantity} closed at {price}",
                       f"realized P&L {readable(strategy.realized_pnl - before_pnl)}"]
            await self._audit(session, order, strategy, square_off.by, square_off.why, changes,
                              {"open_quantity": quantity}, now)
            await session.flush()
            return to_record(OrderRecord, order)

    async def save_reconcile_report(self, account_id: int, report: dict[str, Any], counts: dict[str, int]) -> int:
        """Store one run's report; returns its id."""
        account = check.positive_int(account_id, "account_id")
        document = check.json_object(report, "report")
        async with self._write() as session:
            await self._account_row(session, account)
            row = ReconcileReportRow(
                broker_account_id=account,
                requested_by=check.text(document.get("requested_by"), "requested_by", max_length=64),
                dry_run=bool(document.get("dry_run")),
                matched=counts["matched"], repaired=counts["repaired"], needs_person=counts["needs_person"],
                report=document,
                started_at=datetime.fromisoformat(document["started_at"]),
                finished_at=datetime.fromisoformat(document["finished_at"]),
            )
            session.add(row)
            await session.flush()
            return row.id

    async def reconcile_reports(self, account_id: int, limit: int = 20) -> list[dict[str, Any]]:
        """The account's latest reports, newest first, each with its id."""
        account = check.positive_int(account_id, "account_id")
        count = check.positive_int(limit, "limit")
        async with self._read() as session:
            await self._account_row(session, account)
            rows = await session.scalars(
                select(ReconcileReportRow)
                .where(ReconcileReportRow.broker_account_id == account)
                .order_by(ReconcileReportRow.id.desc())
                .limit(count)
            )
            return [row.report | {"report_id": row.id} for row in rows]

    async def _close_log(
        self, session: AsyncSession, order: Order, status: LogStatus, result: dict[str, Any],
        error: str | None, now: datetime,
    ) -> None:
        log = await session.scalar(select(OrderLog).where(OrderLog.order_id == order.id).with_for_update())
        if log is None:
            return
        log.status, log.result = status, (log.result or {}) | result | {"reconciled": True}
        if error is not None:
            log.error_message = error
        if log.completed_at is None:
            log.completed_at = now
            log.execution_time_ms = max(0, round((now - log.attempted_at).total_seconds() * 1000))

    async def _audit(
        self, session: AsyncSession, order: Order, strategy: Strategy, by: str, why: str,
        changes: list[str], before: dict[str, Any], now: datetime,
    ) -> None:
        """The RECONCILED event (who, what, why); and the outbox's ORDER_EXECUTED if the order never had one."""
        session.add(_event(order, RECONCILED, {"by": by, "why": why, "what": changes, "before": before,
                                                "status": order.status, "filled_quantity": order.filled_quantity,
                                                "average_price": order.average_price,
                                                "open_quantity": strategy.open_quantity}, now))
        executed = await session.scalar(select(OrderEvent.id).where(
            OrderEvent.order_id == order.id, OrderEvent.event_type == OrderEventType.ORDER_EXECUTED).limit(1))
        if executed is None:
            session.add(_event(order, OrderEventType.ORDER_EXECUTED, {
                "workflow_id": order.workflow_id, "strategy_id": order.strategy_id, "user_id": order.user_id,
                "order_type": order.order_type, "symbol": order.symbol, "exchange": order.exchange,
                "outcome": order.outcome, "status": order.status, "broker_order_id": order.broker_order_id,
                "quantity": order.quantity, "filled_quantity": order.filled_quantity,
                "average_price": order.average_price, "error": None, "completed_at": now,
                "result": {"reconciled": True}}, now))
