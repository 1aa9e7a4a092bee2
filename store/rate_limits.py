"""Order pacing shared by every worker: one row per broker account holding its next free send time.

A reservation is one statement — `next = GREATEST(next, now) + spacing RETURNING next` — atomic on
PostgreSQL (the row lock orders concurrent reservations) and on SQLite (writers are serialized). The
caller sleeps until its slot. On PostgreSQL "now" is the database's clock, read once the row lock is
held, so workers on hosts whose clocks disagree still space their requests correctly: each process
learns the database clock's offset from its own reservations' round trips (`DatabaseClock`) and
places its slots on its own clock with that, never early.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, ForeignKey, Insert, Integer, Select, bindparam, cast, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from store.base import StoreBase
from store.clock import DatabaseClock
from store.errors import InvalidInput
from store.models import Base
from store.validation import positive_int

MICROSECONDS = 1_000_000
JULIAN_DAY_OF_THE_EPOCH = 2440587.5


class OrderRateLimit(Base):
    """The next moment an order request of the account may leave for the broker."""

    __tablename__ = "order_rate_limits"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    broker_account_id: Mapped[int] = mapped_column(
        ForeignKey("broker_accounts.id", ondelete="CASCADE"), unique=True
    )
    # Microseconds since the epoch: plain integer arithmetic, the same on PostgreSQL and SQLite.
    next_free_us: Mapped[int] = mapped_column(BigInteger)


@dataclass(frozen=True)
class SendSlot:
    """The answer to a reservation.

    granted: the caller owns a send slot and sleeps `wait_seconds` before sending.
    not granted: the account's queue is longer than the caller may wait; nothing was reserved, and a
    slot within reach opens in `wait_seconds`.
    """

    broker_account_id: int
    granted: bool
    wait_seconds: float
    # The slot itself, by the clock the reservation used (the database's on PostgreSQL); None if refused.
    send_at: datetime | None = None
    # The slot on this process's clock (`time.time()`): the request leaves no earlier than `not_before`
    # and no later than `not_after` plus the pacer's tolerance. `not_before` is the later of the two, by
    # the uncertainty of the database clock's offset (a fast round trip: about a millisecond).
    not_before: float | None = None
    not_after: float | None = None


def _microseconds(value: timedelta, name: str) -> int:
    micros = int(value / timedelta(microseconds=1))
    if micros < 0:
        raise InvalidInput(f"{name} must not be negative, got {value}")
    return micros


class RateLimitsMixin(StoreBase):
    async def reserve_send_slot(
        self, broker_account_id: int, spacing: timedelta, *, max_wait: timedelta | None = None
    ) -> SendSlot:
        """Reserve the account's next send slot, `spacing` after the previous one, however many
        workers ask at once. With `max_wait`, reserve only a slot that starts within it."""
        account_id = positive_int(broker_account_id, "broker_account_id")
        spacing_us = _microseconds(spacing, "spacing")
        if spacing_us == 0:
            raise InvalidInput("spacing must be positive: it is the time between two order requests")
        max_wait_us = None if max_wait is None else _microseconds(max_wait, "max_wait")
        async with self._write() as session:
            return await reserve_in(session, self.dialect, self.database_clock, account_id, spacing_us, max_wait_us)


async def reserve_in(
    conn: AsyncConnection | AsyncSession, dialect: str, clock: DatabaseClock, account_id: int, spacing_us: int,
    max_wait_us: int | None,
) -> SendSlot:
    """`reserve_send_slot` inside the caller's transaction (the order path's first one holds it too)."""
    values = {"account_id": account_id, "spacing_us": spacing_us}
    if max_wait_us is not None:
        values["max_wait_us"] = max_wait_us
    sent = time.time()
    reserved = (await conn.execute(_reservation(dialect, bounded=max_wait_us is not None), values)).one_or_none()
    answered = time.time()
    if reserved is not None:
        clock.observe(sent, reserved.now_us / MICROSECONDS, answered)
        send_at_us = reserved.next_free_us - spacing_us
        wait_seconds = max(0, send_at_us - reserved.now_us) / MICROSECONDS
        send_at = datetime.fromtimestamp(0, UTC) + timedelta(microseconds=send_at_us)
        # Never early: not before the latest moment the slot may be here; and late past the earliest.
        earliest_here, latest_here = clock.local_window(send_at_us / MICROSECONDS)
        return SendSlot(account_id, True, wait_seconds, send_at, not_before=latest_here, not_after=earliest_here)
    assert max_wait_us is not None  # only a bounded reservation can be refused
    queue = (await conn.execute(_queue(dialect), {"account_id": account_id})).one()
    opens_in_us = queue.next_free_us - max_wait_us - queue.now_us
    return SendSlot(account_id, False, max(0, opens_in_us) / MICROSECONDS)


@functools.cache
def _reservation(dialect: str, *, bounded: bool) -> Insert:
    """The one statement of a reservation, built once per dialect; bound: account_id, spacing_us and
    (when `bounded`) max_wait_us. It answers no row when the queue is longer than max_wait_us."""
    row = OrderRateLimit.__table__.c
    now = clock_us(dialect)
    spacing = bindparam("spacing_us", type_=BigInteger)
    dialect_insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    latest = func.greatest if dialect == "postgresql" else func.max
    return (
        dialect_insert(OrderRateLimit)
        .values(broker_account_id=bindparam("account_id"), next_free_us=now + spacing)
        .on_conflict_do_update(
            index_elements=[row.broker_account_id],
            set_={"next_free_us": latest(row.next_free_us, now) + spacing},
            where=row.next_free_us <= now + bindparam("max_wait_us", type_=BigInteger) if bounded else None,
        )
        .returning(row.next_free_us, now.label("now_us"))
    )


@functools.cache
def _queue(dialect: str) -> Select[Any]:
    row = OrderRateLimit.__table__.c
    return select(row.next_free_us, clock_us(dialect).label("now_us")).where(
        row.broker_account_id == bindparam("account_id")
    )


def clock_us(dialect: str) -> ColumnElement[int]:
    """Now, in microseconds since the epoch: the database's clock where it has one to share."""
    if dialect == "postgresql":
        # clock_timestamp(), not the statement's start: a reservation that waited for the row lock takes
        # its slot from when it got the lock, never from the past.
        return cast(func.extract("epoch", func.clock_timestamp()) * MICROSECONDS, BigInteger)
    # SQLite: read when the statement runs, so after its write lock (another process's writer may have
    # held it); 'now' has millisecond resolution and is one value within the statement.
    return cast((func.julianday("now") - JULIAN_DAY_OF_THE_EPOCH) * (86_400 * MICROSECONDS), BigInteger)
