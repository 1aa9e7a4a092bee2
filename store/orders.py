"""The order lifecycle, keyed by workflow id: begin, placement, broker updates, fill, finish.

Every write here is idempotent by the workflow id, because Temporal replays activities: a second call
with the same arguments leaves the database as the first one did.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from sqlalchemy import LABEL_STYLE_TABLENAME_PLUS_COL, bindparam, case, insert, select, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from engine.order_state import is_terminal
from store import validation as check
from store.base import (
    BROKER_ACCOUNTS,
    ORDER_EVENTS,
    ORDER_LOGS,
    ORDERS,
    STRATEGIES,
    LockedRow,
    StoreBase,
    flag_for_intervention,
    lock_row,
    row_by,
    strategy_record,
    to_record,
    utc_now,
    write_back,
)
from store.errors import (
    CredentialsMissing,
    EntryStopped,
    FillMismatch,
    InvalidInput,
    OrderInFlight,
    OrderNotFound,
    PlacementConflict,
    StrategyNotFound,
)
from store.models import WORKFLOW_ID_LENGTH, Order, OrderEvent, OrderLog, Strategy
from store.rate_limits import SendSlot, _microseconds, reserve_in
from store.records import (
    ORDER_STATUS_NEW,
    ORDER_STATUS_PLACED,
    BrokerCredentials,
    ExitReason,
    Fill,
    LogStatus,
    NewOrder,
    OrderEventRecord,
    OrderEventType,
    OrderRecord,
    OrderType,
    PositionSide,
    StrategyRecord,
    StrategyStatus,
)
from store.types import MONEY_QUANTUM, readable

TAG = re.compile(r"[A-Za-z0-9]{1,20}")
EVENT_TYPE = re.compile(r"[A-Z][A-Z0-9_]{0,39}")
BROKER_STATUS_LENGTH = 32
FINISHED_OUTCOMES = frozenset({LogStatus.SUCCESS, LogStatus.FAILED, LogStatus.ERROR})
ONE_PER_ORDER = frozenset(
    {
        OrderEventType.ATTEMPTED,
        OrderEventType.PLACED,
        OrderEventType.ADOPTED,
        OrderEventType.FILL_APPLIED,
        OrderEventType.ORDER_EXECUTED,
    }
)


TWIN_MARK = "#twin:"

# The order path's inserts, built once (see store.base.row_by).
_INSERT_ORDER = insert(ORDERS).returning(*ORDERS.c)
_INSERT_LOG = insert(ORDER_LOGS)
_INSERT_EVENT = insert(ORDER_EVENTS)
# The broker's order id, on an order that has none and has not finished: one statement, no lock first.
_RECORD_PLACEMENT = (
    update(ORDERS)
    .where(ORDERS.c.workflow_id == bindparam("key"), ORDERS.c.broker_order_id.is_(None), ORDERS.c.outcome.is_(None))
    .values(status=case((ORDERS.c.status == ORDER_STATUS_NEW, ORDER_STATUS_PLACED), else_=ORDERS.c.status))
    .returning(*ORDERS.c)
)
# The strategy, locked; whether its order exists already (a replay); its account's credentials.
_STRATEGY_FOR_BEGIN = (
    select(
        STRATEGIES,
        select(ORDERS.c.id).where(ORDERS.c.workflow_id == bindparam("workflow_id")).scalar_subquery()
        .label("existing_order_id"),
        BROKER_ACCOUNTS.c.broker.label("account_broker"),
        BROKER_ACCOUNTS.c.api_key_encrypted.label("account_api_key_encrypted"),
        BROKER_ACCOUNTS.c.access_token_encrypted.label("account_access_token_encrypted"),
        BROKER_ACCOUNTS.c.token_expires_at.label("account_token_expires_at"),
    )
    .select_from(STRATEGIES.join(BROKER_ACCOUNTS, BROKER_ACCOUNTS.c.id == STRATEGIES.c.broker_account_id))
    .where(STRATEGIES.c.id == bindparam("key"))
    .with_for_update(of=STRATEGIES)
)
_STRATEGY_OF_ORDER = select(ORDERS.c.strategy_id).where(ORDERS.c.workflow_id == bindparam("key"))
# An order and its audit row, locked together (an order's audit row is written only under its lock).
_ORDER_WITH_LOG = (
    select(ORDERS, ORDER_LOGS)
    .join(ORDER_LOGS, ORDER_LOGS.c.order_id == ORDERS.c.id)
    .where(ORDERS.c.workflow_id == bindparam("key"))
    .with_for_update()
    .set_label_style(LABEL_STYLE_TABLENAME_PLUS_COL)
)


def twin_workflow_id(workflow_id: str, broker_order_id: str) -> str:
    """The store's key of a twin: the order it doubled, marked, and the twin's broker order id."""
    return f"{workflow_id}{TWIN_MARK}{broker_order_id}"


def _workflow_id(value: Any) -> str:
    return check.text(value, "workflow_id", max_length=WORKFLOW_ID_LENGTH)


def _checked_new_order(new: NewOrder) -> NewOrder:
    order_type = OrderType(check.choice(new.order_type, "order_type", OrderType))
    transaction_type = check.choice(new.transaction_type, "transaction_type", {"BUY", "SELL"})
    if transaction_type != order_type.transaction_type:
        raise InvalidInput(
            f"a {order_type} order is a {order_type.transaction_type} at the broker, not {transaction_type}"
        )
    if order_type is OrderType.BUY:
        if new.exit_reason is not None:
            raise InvalidInput(f"a BUY has no exit reason, got {new.exit_reason!r}")
        exit_reason = None
    elif new.exit_reason is None:
        exit_reason = ExitReason.default_for(order_type)
    else:
        exit_reason = ExitReason(check.choice(new.exit_reason, "exit_reason", ExitReason))
    return NewOrder(
        exit_reason=exit_reason,
        workflow_id=_workflow_id(new.workflow_id),
        strategy_id=check.positive_int(new.strategy_id, "strategy_id"),
        user_id=check.positive_int(new.user_id, "user_id"),
        order_type=order_type,
        transaction_type=transaction_type,
        quantity=check.positive_int(new.quantity, "quantity"),
        symbol=check.text(new.symbol, "symbol", max_length=40),
        exchange=check.text(new.exchange, "exchange", max_length=10),
        tag=check.text(new.tag, "tag", max_length=20, pattern=TAG),
        requested_by=check.text(new.requested_by, "requested_by", max_length=64),
        reason=check.optional_text(new.reason, "reason", max_length=2000),
        trigger_price=None if new.trigger_price is None else check.price(new.trigger_price, "trigger_price"),
        order_data=check.json_object(new.order_data, "order_data"),
        attempted_at=check.optional_aware_datetime(new.attempted_at, "attempted_at"),
        trigger_tick_at=check.optional_aware_datetime(new.trigger_tick_at, "trigger_tick_at"),
    )


def _broker_status(value: Any) -> str:
    return check.text(value, "status", max_length=BROKER_STATUS_LENGTH).upper()


def _event(order: Order, event_type: str, data: dict[str, Any], at: datetime) -> OrderEvent:
    return OrderEvent(**_event_values(order, event_type, data, at))


def _event_values(order: Order | LockedRow, event_type: str, data: dict[str, Any], at: datetime) -> dict[str, Any]:
    """An order_events row's columns (the ORM's `_event`, or a Core insert's values)."""
    return {
        "order_id": order.id,
        "workflow_id": order.workflow_id,
        "event_type": event_type,
        "data": check.json_object(data, "data"),
        "created_at": at,
    }


def _checked_fill(fill: Fill) -> Fill:
    checked = Fill(
        workflow_id=_workflow_id(fill.workflow_id),
        filled_quantity=check.non_negative_int(fill.filled_quantity, "filled_quantity"),
        average_price=check.broker_price(fill.average_price, "average_price"),
        status=_broker_status(fill.status),
        filled_at=check.aware_datetime(fill.filled_at, "filled_at"),
    )
    if checked.filled_quantity > 0 and checked.average_price == 0:
        raise InvalidInput(f"average_price must be above zero for a fill of {checked.filled_quantity}")
    return checked




def _weighted_entry(held: int, held_price: Decimal | None, added: int, added_price: Decimal) -> Decimal:
    if held == 0 or held_price is None:
        return added_price
    average = (held_price * held + added_price * added) / (held + added)
    return readable(average.quantize(MONEY_QUANTUM, rounding=ROUND_HALF_EVEN))


def _fill_increment(order: Order | LockedRow, fill: Fill) -> Fill:
    """The part of `fill` the strategy does not hold yet, priced so that the order's applied total is
    the broker's filled quantity at the broker's average price."""
    held, held_price = order.applied_quantity, order.applied_average_price
    added = fill.filled_quantity - held
    if held == 0 or held_price is None or added == 0:
        return dataclasses.replace(fill, filled_quantity=added)
    price = (fill.average_price * fill.filled_quantity - held_price * held) / added
    return dataclasses.replace(
        fill, filled_quantity=added, average_price=readable(price.quantize(MONEY_QUANTUM, rounding=ROUND_HALF_EVEN))
    )


def _apply_fill_to_position(strategy: Strategy | LockedRow, order: Order | LockedRow, fill: Fill) -> None:
    """Position arithmetic in Decimal on the filled quantity and the broker's average price."""
    filled, price = fill.filled_quantity, fill.average_price
    if filled == 0:
        return
    if order.order_type == OrderType.BUY:
        if strategy.open_quantity == 0:
            # A new position: the previous one's exit no longer describes it.
            strategy.exit_price = strategy.exit_filled_at = strategy.exit_reason = None
            strategy.sl_triggered, strategy.sl_trigger_price = False, None
        strategy.entry_price = _weighted_entry(strategy.open_quantity, strategy.entry_price, filled, price)
        strategy.open_quantity += filled
        strategy.entry_filled_at = fill.filled_at
        strategy.position = PositionSide.LONG
        return
    if filled > strategy.open_quantity:
        raise FillMismatch(
            f"{order.order_type} order {order.workflow_id} filled {filled} but strategy "
            f"{strategy.id} holds {strategy.open_quantity}; reconcile the position at the broker"
        )
    entry_price = strategy.entry_price if strategy.entry_price is not None else Decimal(0)
    strategy.open_quantity -= filled
    strategy.exit_price, strategy.exit_filled_at = price, fill.filled_at
    strategy.realized_pnl += (price - entry_price) * filled
    if strategy.open_quantity == 0:
        strategy.position = PositionSide.FLAT
        strategy.position_cycle += 1
        if strategy.status == StrategyStatus.SL_TRIGGERED:
            strategy.status = StrategyStatus.RUNNING
        if strategy.exit_reason is None:  # a stop-loss that began this exit stays its reason
            strategy.exit_reason = order.exit_reason or ExitReason.default_for(order.order_type)


class OrdersMixin(StoreBase):
    async def begin_order(self, new: NewOrder, validate: Callable[[StrategyRecord], None]) -> OrderRecord:
        """Record the attempt of one order, in one transaction with the strategy locked.

        `validate(strategy)` raises to refuse (nothing is written then). OrderInFlight if another
        order of the strategy is unfinished. If the order already exists (a replay), it is returned
        unchanged and `validate` is not called.
        """
        new = _checked_new_order(new)
        return await self.begin_order_for(new.strategy_id, new.workflow_id, lambda _: new, validate)

    async def begin_order_for(
        self,
        strategy_id: int,
        workflow_id: str,
        build: Callable[[StrategyRecord], NewOrder],
        validate: Callable[[StrategyRecord], None],
    ) -> OrderRecord:
        """`begin_order` with the order built from the locked strategy: one read fewer on the order path.
        A replay finds its order and returns it; `build` and `validate` run only for a new one."""
        order, _, _ = await self._begin(strategy_id, workflow_id, build, validate, None)
        return order

    async def begin_order_and_reserve(
        self,
        strategy_id: int,
        workflow_id: str,
        build: Callable[[StrategyRecord], NewOrder],
        validate: Callable[[StrategyRecord], None],
        *,
        spacing: timedelta,
        max_wait: timedelta,
    ) -> tuple[OrderRecord, SendSlot | None, BrokerCredentials | None]:
        """`begin_order_for`, and in the same transaction the account's next send slot (as
        `reserve_send_slot`): the order path's first transaction. When the slot is now, the placement's
        send stamp is set too (as `start_placement`, under the same strategy lock, so an emergency stop
        commits either before the attempt or after the stamp): the caller sends at once, and the
        order's `placement_sent_at` says so. A replay reserves nothing (slot None).

        The account's credentials come with it, read in the statement that locks the strategy (as
        `broker_credentials`; None when the account has no usable token, which that read explains)."""
        order, slot, locked = await self._begin(
            strategy_id, workflow_id, build, validate, (_microseconds(spacing, "spacing"),
                                                       _microseconds(max_wait, "max_wait"))
        )
        return order, slot, self._credentials_in(locked)  # decrypted after the commit, not under the lock

    async def _begin(
        self,
        strategy_id: int,
        workflow_id: str,
        build: Callable[[StrategyRecord], NewOrder],
        validate: Callable[[StrategyRecord], None],
        pacing: tuple[int, int] | None,
    ) -> tuple[OrderRecord, SendSlot | None, RowMapping]:
        """The attempt (found or recorded), its send slot and the statement's row of the locked strategy
        with its account's credential columns."""
        workflow_id = _workflow_id(workflow_id)
        now = utc_now()
        try:
            async with self._write_core() as conn:
                locked = (
                    await conn.execute(
                        _STRATEGY_FOR_BEGIN,
                        {"key": check.positive_int(strategy_id, "strategy_id"), "workflow_id": workflow_id},
                    )
                ).mappings().first()
                if locked is None:
                    raise StrategyNotFound(strategy_id)
                strategy = LockedRow.of(STRATEGIES, locked)
                if locked["existing_order_id"] is not None:  # a replay
                    existing = (
                        await conn.execute(row_by(ORDERS, "workflow_id"), {"key": workflow_id})
                    ).mappings().one()
                    if existing["strategy_id"] != strategy.id:
                        raise InvalidInput(
                            f"workflow {workflow_id!r} already holds an order of strategy "
                            f"{existing['strategy_id']}, not {strategy.id}"
                        )
                    return to_record(OrderRecord, LockedRow(ORDERS, existing)), None, locked
                validate(strategy_record(strategy))
                new = _checked_new_order(build(strategy_record(strategy)))
                if (new.strategy_id, new.workflow_id) != (strategy.id, workflow_id):
                    raise InvalidInput(f"order {new.workflow_id!r} of strategy {new.strategy_id} built for "
                                       f"{workflow_id!r} of strategy {strategy.id}")
                attempted_at = new.attempted_at or now
                if strategy.user_id != new.user_id:
                    raise InvalidInput(f"strategy {strategy.id} belongs to user {strategy.user_id}, not {new.user_id}")
                if strategy.active_order_workflow_id not in (None, new.workflow_id):
                    raise OrderInFlight(strategy.id, strategy.active_order_workflow_id)
                slot, sent_at = None, None
                if pacing is not None:
                    spacing_us, max_wait_us = pacing
                    slot = await reserve_in(
                        conn, self.dialect, self.database_clock, strategy.broker_account_id, spacing_us, max_wait_us
                    )
                    if slot.granted and slot.wait_seconds == 0:
                        # The request leaves as soon as this commits: stamped now, not at the transaction's
                        # start, which a wait for the strategy's lock may have put well before it.
                        sent_at = utc_now()

                inserted = (
                    await conn.execute(
                        _INSERT_ORDER,
                        {
                            "workflow_id": new.workflow_id,
                            "strategy_id": strategy.id,
                            "user_id": new.user_id,
                            "order_type": new.order_type,
                            "transaction_type": new.transaction_type,
                            "quantity": new.quantity,
                            "symbol": new.symbol,
                            "exchange": new.exchange,
                            "tag": new.tag,
                            "trigger_price": new.trigger_price,
                            "trigger_tick_at": new.trigger_tick_at,
                            "requested_by": new.requested_by,
                            "reason": new.reason,
                            "exit_reason": new.exit_reason,
                            "adopted": False,
                            "status": ORDER_STATUS_NEW,
                            "filled_quantity": 0,
                            "placement_sent_at": sent_at,
                            "created_at": now,
                            "updated_at": now,
                        },
                    )
                ).mappings().one()
                order = LockedRow(ORDERS, inserted)
                await conn.execute(
                    _INSERT_LOG,
                    [{
                        "order_id": order.id,
                        "workflow_id": order.workflow_id,
                        "user_id": order.user_id,
                        "strategy_id": order.strategy_id,
                        "order_type": order.order_type,
                        "order_data": new.order_data,
                        "status": LogStatus.ATTEMPTING,
                        "attempted_at": attempted_at,
                    }],
                )
                await conn.execute(
                    _INSERT_EVENT,
                    [_event_values(
                        order,
                        OrderEventType.ATTEMPTED,
                        {
                            "order_type": order.order_type,
                            "quantity": order.quantity,
                            "symbol": order.symbol,
                            "exchange": order.exchange,
                            "tag": order.tag,
                            "trigger_price": order.trigger_price,
                            "requested_by": order.requested_by,
                            "reason": order.reason,
                            "exit_reason": order.exit_reason,
                            "position_cycle": strategy.position_cycle,
                            # Stamped with the attempt: no PLACEMENT_SENT row of its own.
                            **({"sent_at": sent_at} if sent_at is not None else {}),
                        },
                        now,
                    )],
                )
                strategy.active_order_workflow_id = strategy.last_order_workflow_id = order.workflow_id
                strategy.last_action = f"{order.order_type} order attempted: {order.workflow_id}"
                if order.order_type == OrderType.SL_SELL:
                    strategy.sl_triggered = True
                    strategy.sl_trigger_price = order.trigger_price
                    strategy.exit_reason = ExitReason.STOP_LOSS
                    # An emergency stop stays in force: a stop-loss exit does not restart the strategy.
                    if strategy.status == StrategyStatus.RUNNING:
                        strategy.status = StrategyStatus.SL_TRIGGERED
                strategy.updated_at = now
                await write_back(conn, strategy)
                return to_record(OrderRecord, order), slot, locked
        except IntegrityError as exc:
            raise InvalidInput(f"workflow {workflow_id!r} already holds an order of another strategy") from exc

    def _credentials_in(self, locked: RowMapping) -> BrokerCredentials | None:
        """The credentials of the strategy's account, from `_STRATEGY_FOR_BEGIN`'s row (None without a
        usable token)."""
        try:
            return self._credentials(
                locked["broker_account_id"], locked["account_broker"], locked["account_api_key_encrypted"],
                locked["account_access_token_encrypted"], locked["account_token_expires_at"],
            )
        except CredentialsMissing:
            return None

    async def set_placement_started(self, workflow_id: str, sent_at: datetime | None) -> None:
        """Note that a placement request left for the broker at `sent_at`, or (None) that the last one
        surely did not arrive. A retry reads it back to know how long a "not found" proves nothing."""
        workflow_id = _workflow_id(workflow_id)
        sent = check.optional_aware_datetime(sent_at, "sent_at")
        async with self._write() as session:
            if sent is None:
                order = await self._order_row(session, workflow_id, lock=True)
            else:
                order = await self._may_send(session, workflow_id)
            if order.placement_sent_at == sent:
                return
            now = utc_now()
            order.placement_sent_at, order.updated_at = sent, now
            if sent is None:
                session.add(_event(order, OrderEventType.PLACEMENT_NOT_SENT, {}, now))
            else:
                session.add(_event(order, OrderEventType.PLACEMENT_SENT, {"sent_at": sent}, now))

    async def start_placement(self, workflow_id: str, sent_at: datetime) -> datetime | None:
        """Stamp the first placement attempt's send time and answer None; if an earlier attempt was
        already stamped, change nothing and answer its time: that request may have reached the broker."""
        workflow_id = _workflow_id(workflow_id)
        sent = check.aware_datetime(sent_at, "sent_at")
        async with self._write() as session:
            order = await self._may_send(session, workflow_id)
            if order.placement_sent_at is not None:
                return order.placement_sent_at
            now = utc_now()
            order.placement_sent_at, order.updated_at = sent, now
            session.add(_event(order, OrderEventType.PLACEMENT_SENT, {"sent_at": sent}, now))
            return None

    async def _may_send(self, session: AsyncSession, workflow_id: str) -> Order:
        """The order, locked with its strategy, if its request may leave now: the last check before
        the broker. Under the strategy's lock, so an emergency stop commits either before it (and the
        entry is not sent) or after the send was stamped (and the stop cancels it at the broker)."""
        order, strategy = await self._lock_order_and_strategy(session, workflow_id)
        if order.order_type == OrderType.BUY and strategy.status != StrategyStatus.RUNNING:
            raise EntryStopped(strategy.id, workflow_id, strategy.status, strategy.stop_reason)
        return order

    async def placement_started_at(self, workflow_id: str) -> datetime | None:
        async with self._read() as session:
            return (await self._order_row(session, _workflow_id(workflow_id))).placement_sent_at

    async def record_placement(
        self, workflow_id: str, broker_order_id: str, placed_at: datetime, adopted: bool
    ) -> OrderRecord:
        """The broker's order id, placed by us or adopted from the order book by tag."""
        workflow_id = _workflow_id(workflow_id)
        broker_id = check.text(broker_order_id, "broker_order_id", max_length=64)
        placed = check.aware_datetime(placed_at, "placed_at")
        if not isinstance(adopted, bool):
            raise InvalidInput(f"adopted must be True or False, got {adopted!r}")
        async with self._write_core() as conn:
            now = utc_now()
            placed_row = (
                await conn.execute(
                    _RECORD_PLACEMENT,
                    {"key": workflow_id, "broker_order_id": broker_id, "placed_at": placed, "adopted": adopted,
                     "updated_at": now},
                )
            ).mappings().first()
            if placed_row is None:  # not an order waiting for its broker id: say which case it is
                order = await lock_row(conn, ORDERS, "workflow_id", workflow_id)
                if order is None:
                    raise OrderNotFound(workflow_id)
                if order.broker_order_id == broker_id:
                    return to_record(OrderRecord, order)
                if order.broker_order_id is not None:
                    raise PlacementConflict(
                        f"order {workflow_id} is already broker order {order.broker_order_id}, yet {broker_id} "
                        "was placed for it too; check the broker's order book for a duplicate"
                    )
                raise InvalidInput(f"order {workflow_id} finished {order.outcome}; a placement cannot follow")
            order = LockedRow(ORDERS, placed_row)
            event_type = OrderEventType.ADOPTED if adopted else OrderEventType.PLACED
            await conn.execute(
                _INSERT_EVENT,
                [_event_values(order, event_type, {"broker_order_id": broker_id, "placed_at": placed}, now)],
            )
            return to_record(OrderRecord, order)

    async def record_order_update(
        self,
        workflow_id: str,
        status: str,
        filled_quantity: int,
        average_price: Decimal,
        broker_timestamp: datetime | None,
    ) -> bool:
        """Apply one broker update unless it is older than what is stored. Returns whether it changed
        anything. Ignored: a lower filled quantity; anything after a terminal status; at the same filled
        quantity, a non-terminal update with an older broker timestamp."""
        workflow_id = _workflow_id(workflow_id)
        new_status = _broker_status(status)
        filled = check.non_negative_int(filled_quantity, "filled_quantity")
        price = check.broker_price(average_price, "average_price")
        stamp = check.optional_aware_datetime(broker_timestamp, "broker_timestamp")
        async with self._write() as session:
            order = await self._order_row(session, workflow_id, lock=True)
            if filled > order.quantity:
                raise FillMismatch(
                    f"update of order {workflow_id} reports {filled} filled of {order.quantity} requested; "
                    "check the broker order id"
                )
            if is_terminal(order.status) or filled < order.filled_quantity:
                return False
            older = stamp is not None and order.broker_updated_at is not None and stamp < order.broker_updated_at
            if filled == order.filled_quantity and not is_terminal(new_status) and older:
                return False
            if (new_status, filled, price) == (order.status, order.filled_quantity, order.average_price):
                return False
            now = utc_now()
            order.status, order.filled_quantity, order.average_price = new_status, filled, price
            if stamp is not None and not older:
                order.broker_updated_at = stamp
            order.updated_at = now
            session.add(
                _event(
                    order,
                    OrderEventType.STATUS,
                    {
                        "status": new_status,
                        "filled_quantity": filled,
                        "average_price": price,
                        "broker_timestamp": stamp,
                    },
                    now,
                )
            )
            return True

    async def apply_fill(self, fill: Fill) -> StrategyRecord:
        """Apply an order's fill to its strategy, once: a second call with the same fill (a replay)
        changes nothing, and a larger one (the broker's later word on an unresolved order) applies only
        the difference, at the price that brings the order's applied average to the broker's.

        BUY adds to the position (weighted entry price); SELL and SL_SELL reduce it and realise P&L;
        at zero the position is FLAT and the next cycle begins.
        """
        fill = _checked_fill(fill)
        async with self._write() as session:
            order, strategy = await self._lock_order_and_strategy(session, fill.workflow_id)
            self._apply_fill_locked(lambda values: session.add(OrderEvent(**values)), order, strategy, fill)
            await session.flush()
            return strategy_record(strategy)

    def _apply_fill_locked(
        self,
        add_event: Callable[[dict[str, Any]], None],
        order: Order | LockedRow,
        strategy: Strategy | LockedRow,
        fill: Fill,
    ) -> None:
        """apply_fill's change, on the order and strategy rows its caller holds locked; its event's
        columns go to `add_event`."""
        if order.fill_applied_at is not None and fill.filled_quantity <= order.applied_quantity:
            return
        if fill.filled_quantity > order.quantity:
            raise FillMismatch(
                f"fill of {fill.filled_quantity} exceeds the {order.quantity} requested by order "
                f"{fill.workflow_id}; check the broker order"
            )
        increment = _fill_increment(order, fill)
        _apply_fill_to_position(strategy, order, increment)
        now = utc_now()
        order.filled_quantity = max(order.filled_quantity, fill.filled_quantity)
        order.applied_quantity = fill.filled_quantity
        order.status = fill.status
        if fill.filled_quantity > 0:
            order.average_price, order.filled_at = fill.average_price, fill.filled_at
            order.applied_average_price = fill.average_price
        order.fill_applied_at = order.updated_at = now
        strategy.last_action = (
            f"{order.order_type} filled {fill.filled_quantity} of {order.quantity} at {fill.average_price}"
        )
        strategy.updated_at = now
        add_event(
            _event_values(
                order,
                OrderEventType.FILL_APPLIED if increment.filled_quantity == fill.filled_quantity
                else OrderEventType.FILL_ADDED,
                {
                    "status": fill.status,
                    "filled_quantity": fill.filled_quantity,
                    "added_quantity": increment.filled_quantity,
                    "average_price": fill.average_price,
                    "filled_at": fill.filled_at,
                    "open_quantity": strategy.open_quantity,
                    "realized_pnl": strategy.realized_pnl,
                },
                now,
            )
        )

    async def finish_order(
        self,
        workflow_id: str,
        outcome: str,
        status: str,
        result: dict[str, Any],
        error: str | None,
        completed_at: datetime,
    ) -> OrderRecord:
        """Close the audit row, free the strategy for its next order, and queue the ORDER_EXECUTED
        event (the outbox) in the same transaction. A second call changes nothing."""
        return await self.complete_order(workflow_id, None, outcome, status, result, error, completed_at)

    async def complete_order(
        self,
        workflow_id: str,
        fill: Fill | None,
        outcome: str,
        status: str,
        result: dict[str, Any],
        error: str | None,
        completed_at: datetime,
        *,
        intervention: str | None = None,
        strategy_id: int | None = None,
    ) -> OrderRecord:
        """The end of an order in one transaction: `apply_fill(fill)` (if any), the strategy flagged for
        a person (`intervention`, as `mark_intervention`), and `finish_order`: the position, the audit
        row's result and the ORDER_EXECUTED outbox row commit together or not at all. With the order's
        `strategy_id` known, the order row is read once. A second call changes nothing."""
        workflow_id = _workflow_id(workflow_id)
        checked_fill = _checked_fill(fill) if fill is not None else None
        if checked_fill is not None and checked_fill.workflow_id != workflow_id:
            raise InvalidInput(f"fill of order {checked_fill.workflow_id} given to complete order {workflow_id}")
        final = LogStatus(check.choice(outcome, "outcome", FINISHED_OUTCOMES))
        final_status = _broker_status(status)
        result_data = check.json_object(result, "result")
        error_message = check.optional_text(error, "error", max_length=10_000)
        completed = check.aware_datetime(completed_at, "completed_at")
        why = check.text(intervention, "intervention", max_length=2000) if intervention is not None else None
        # Core, not the ORM: the order path's last transaction, on every order (see LockedRow).
        async with self._write_core() as conn:
            order, log, strategy = await self._lock_finishing_rows(conn, workflow_id, strategy_id)
            if order.outcome is not None:
                return to_record(OrderRecord, order)
            events: list[dict[str, Any]] = []
            if checked_fill is not None and checked_fill.filled_quantity > 0:
                self._apply_fill_locked(events.append, order, strategy, checked_fill)
            if why is not None:
                flag_for_intervention(strategy, why, utc_now())
            log.status = final
            log.result, log.error_message, log.completed_at = result_data, error_message, completed
            log.execution_time_ms = max(0, round((completed - log.attempted_at).total_seconds() * 1000))

            now = utc_now()
            order.outcome, order.status, order.completed_at = final, final_status, completed
            order.updated_at = now
            # An order that reached the broker and never ended there may still fill: it keeps the strategy
            # (no second order beside it) until its settlement from the broker's record releases it.
            placed = order.broker_order_id is not None
            may_be_live = final == LogStatus.ERROR and placed and not is_terminal(final_status)
            if strategy.active_order_workflow_id == workflow_id and not may_be_live:
                strategy.active_order_workflow_id = None
            if final != LogStatus.SUCCESS:
                strategy.last_error = error_message or f"{order.order_type} order {workflow_id} ended {final}"
            strategy.last_action = f"{order.order_type} order {final}: {workflow_id}"
            strategy.updated_at = now
            events.append(
                _event_values(
                    order,
                    OrderEventType.ORDER_EXECUTED,
                    {
                        "workflow_id": workflow_id,
                        "strategy_id": order.strategy_id,
                        "user_id": order.user_id,
                        "order_type": order.order_type,
                        "symbol": order.symbol,
                        "exchange": order.exchange,
                        "outcome": final,
                        "status": final_status,
                        "broker_order_id": order.broker_order_id,
                        "quantity": order.quantity,
                        "filled_quantity": order.filled_quantity,
                        "average_price": order.average_price,
                        "error": error_message,
                        "completed_at": completed,
                        "result": result_data,
                    },
                    now,
                )
            )
            # In the ORM's flush order: the parent rows, then the events that refer to them.
            await write_back(conn, strategy)
            await write_back(conn, order)
            await write_back(conn, log)
            await conn.execute(_INSERT_EVENT, events)
            return to_record(OrderRecord, order)

    async def _lock_finishing_rows(
        self, conn: AsyncConnection, workflow_id: str, strategy_id: int | None
    ) -> tuple[LockedRow, LockedRow, LockedRow]:
        """The order, its audit row and its strategy, locked as every writer locks them (the strategy,
        then the order): the order and its audit row in one statement."""
        if strategy_id is None:
            strategy_id = await conn.scalar(_STRATEGY_OF_ORDER, {"key": workflow_id})
            if strategy_id is None:
                raise OrderNotFound(workflow_id)
        strategy = await self._lock_strategy_row(conn, strategy_id)
        found = (await conn.execute(_ORDER_WITH_LOG, {"key": workflow_id})).first()
        if found is None:
            if (await conn.execute(row_by(ORDERS, "workflow_id"), {"key": workflow_id})).first() is None:
                raise OrderNotFound(workflow_id)
            raise InvalidInput(f"order {workflow_id} has no audit row; it was not begun with begin_order")
        order, log = LockedRow.of(ORDERS, found._mapping), LockedRow.of(ORDER_LOGS, found._mapping)
        if order.strategy_id != strategy.id:
            raise InvalidInput(f"order {workflow_id} belongs to strategy {order.strategy_id}, not {strategy.id}")
        return order, log, strategy

    async def record_twin(
        self, workflow_id: str, broker_order_id: str, quantity: int, seen_at: datetime
    ) -> OrderRecord:
        """A second broker order under the tag of order `workflow_id` (a request the broker acted on after
        the retry window): recorded as an order of its own, `{workflow_id}{TWIN_MARK}{broker_order_id}`,
        so its fill reaches the strategy and no broker order is unknown to the store. Idempotent."""
        workflow_id = _workflow_id(workflow_id)
        broker_id = check.text(broker_order_id, "broker_order_id", max_length=64)
        size = check.positive_int(quantity, "quantity")
        seen = check.aware_datetime(seen_at, "seen_at")
        twin_id = _workflow_id(twin_workflow_id(workflow_id, broker_id))
        async with self._write() as session:
            primary, strategy = await self._lock_order_and_strategy(session, workflow_id)
            existing = await session.scalar(select(Order).where(Order.workflow_id == twin_id))
            if existing is not None:
                return to_record(OrderRecord, existing)
            if primary.broker_order_id == broker_id:
                raise InvalidInput(f"broker order {broker_id} is order {workflow_id} itself, not its twin")
            now = utc_now()
            twin = Order(
                workflow_id=twin_id, strategy_id=primary.strategy_id, user_id=primary.user_id,
                order_type=primary.order_type, transaction_type=primary.transaction_type, quantity=size,
                symbol=primary.symbol, exchange=primary.exchange, tag=primary.tag,
                trigger_price=primary.trigger_price, requested_by=primary.requested_by,
                reason=f"twin of {workflow_id} (broker order {primary.broker_order_id})",
                exit_reason=primary.exit_reason, broker_order_id=broker_id, adopted=True,
                status=ORDER_STATUS_PLACED, filled_quantity=0, created_at=now, placed_at=seen, updated_at=now,
            )
            session.add(twin)
            await session.flush()
            session.add(
                OrderLog(
                    order_id=twin.id, workflow_id=twin_id, user_id=twin.user_id, strategy_id=twin.strategy_id,
                    order_type=twin.order_type,
                    order_data={"twin_of": workflow_id, "broker_order_id": broker_id, "quantity": size},
                    status=LogStatus.ATTEMPTING, attempted_at=seen,
                )
            )
            data = {"broker_order_id": broker_id, "twin_of": workflow_id, "primary": primary.broker_order_id}
            session.add(_event(twin, OrderEventType.TWIN_FOUND, data, now))
            session.add(_event(primary, OrderEventType.TWIN_FOUND, data, now))
            strategy.last_action = f"twin broker order {broker_id} found under the tag of {workflow_id}"
            strategy.updated_at = now
            await session.flush()
            return to_record(OrderRecord, twin)

    async def settle_order(
        self, workflow_id: str, status: str, filled_quantity: int, average_price: Decimal, settled_at: datetime
    ) -> OrderRecord:
        """The broker's final word on an order whose run ended without one (UNRESOLVED): apply what the
        run did not, and record the order's true outcome. Nothing an order run ends with is final while
        the broker knows more. Repeating it changes nothing."""
        workflow_id = _workflow_id(workflow_id)
        final_status = _broker_status(status)
        if not is_terminal(final_status):
            raise InvalidInput(f"order {workflow_id} is still {final_status} at the broker; settle it once it ends")
        filled = check.non_negative_int(filled_quantity, "filled_quantity")
        settled = check.aware_datetime(settled_at, "settled_at")
        if filled > 0:
            await self.apply_fill(Fill(workflow_id, filled, average_price, final_status, settled))
        outcome = LogStatus.SUCCESS if filled > 0 else LogStatus.FAILED
        async with self._write() as session:
            order, strategy = await self._lock_order_and_strategy(session, workflow_id)
            if order.outcome == outcome and order.status == final_status:
                return to_record(OrderRecord, order)
            now = utc_now()
            previous = order.outcome
            order.outcome, order.status, order.updated_at = outcome, final_status, now
            order.completed_at = order.completed_at or settled
            if strategy.active_order_workflow_id == workflow_id:
                strategy.active_order_workflow_id = None
            session.add(
                _event(
                    order,
                    OrderEventType.SETTLED,
                    {"status": final_status, "filled_quantity": filled, "outcome": outcome, "was": previous},
                    now,
                )
            )
            await session.flush()
            return to_record(OrderRecord, order)

    async def append_order_event(self, workflow_id: str, event_type: str, data: dict[str, Any]) -> bool:
        """Add to the order's trail (e.g. CANCEL_SENT, TIMED_OUT); returns whether it was added.

        The store writes the lifecycle events itself, in the transaction of the change. Appending one
        of those again is a no-op: at most one of each ONE_PER_ORDER type (so the outbox never holds
        an order twice), and no STATUS that repeats the order's last status and filled quantity.
        """
        workflow_id = _workflow_id(workflow_id)
        kind = check.text(event_type, "event_type", max_length=40, pattern=EVENT_TYPE)
        payload = check.json_object(data, "data")
        async with self._write() as session:
            order = await self._order_row(session, workflow_id, lock=True)
            if await self._repeats_lifecycle_event(session, order, kind, payload):
                return False
            session.add(_event(order, kind, payload, utc_now()))
            return True

    async def _repeats_lifecycle_event(
        self, session: AsyncSession, order: Order, kind: str, payload: dict[str, Any]
    ) -> bool:
        if kind in ONE_PER_ORDER:
            found = await session.scalar(
                select(OrderEvent.id).where(OrderEvent.order_id == order.id, OrderEvent.event_type == kind).limit(1)
            )
            return found is not None
        if kind == OrderEventType.STATUS:
            last = await session.scalar(
                select(OrderEvent.data)
                .where(OrderEvent.order_id == order.id, OrderEvent.event_type == kind)
                .order_by(OrderEvent.id.desc())
                .limit(1)
            )
            same_keys = ("status", "filled_quantity")
            return last is not None and all(last.get(key) == payload.get(key) for key in same_keys)
        return False

    async def get_order(self, workflow_id: str) -> OrderRecord:
        async with self._read() as session:
            return to_record(OrderRecord, await self._order_row(session, _workflow_id(workflow_id)))

    async def order_events(self, workflow_id: str) -> list[OrderEventRecord]:
        """The order's trail, oldest first."""
        async with self._read() as session:
            order = await self._order_row(session, _workflow_id(workflow_id))
            rows = await session.scalars(
                select(OrderEvent).where(OrderEvent.order_id == order.id).order_by(OrderEvent.id)
            )
            return [to_record(OrderEventRecord, row) for row in rows]

    async def unpublished_events(
        self, event_type: str = OrderEventType.ORDER_EXECUTED, limit: int = 100
    ) -> list[OrderEventRecord]:
        """The outbox: events not yet marked published, oldest first."""
        kind = check.text(event_type, "event_type", max_length=40, pattern=EVENT_TYPE)
        count = check.positive_int(limit, "limit")
        query = (
            select(OrderEvent)
            .where(OrderEvent.event_type == kind, OrderEvent.published_at.is_(None))
            .order_by(OrderEvent.id)
            .limit(count)
        )
        async with self._read() as session:
            return [to_record(OrderEventRecord, row) for row in await session.scalars(query)]

    async def mark_events_published(self, ids: Sequence[int]) -> int:
        """Mark outbox events delivered; returns how many were newly marked (repeats are harmless)."""
        event_ids = [check.positive_int(event_id, "event id") for event_id in ids]
        if not event_ids:
            return 0
        async with self._write() as session:
            result = await session.execute(
                update(OrderEvent)
                .where(OrderEvent.id.in_(event_ids), OrderEvent.published_at.is_(None))
                .values(published_at=utc_now())
            )
            return int(result.rowcount)  # type: ignore[attr-defined]
