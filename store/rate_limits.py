"""Order pacing shared by every worker: one row per broker account holding its next free send time.

A reservation is one statement — `next = GREATEST(next, now) + spacing RETURNING next` — atomic on
PostgreSQL (the row lock orders concurrent reservations) and on SQLite (writers are serialized). The
caller sleeps until its slot. On PostgreSQL "now" is the database's clock, so workers on hosts whose
clocks disagree still space their requests correctly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import BigInteger, ColumnElement, ForeignKey, Integer, cast, func, literal, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from store.base import StoreBase
from store.errors import InvalidInput
from store.models import Base
from store.validation import positive_int

MICROSECONDS = 1_000_000


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
            return await reserve_in(session, self.dialect, account_id, spacing_us, max_wait_us)


async def reserve_in(
    session: AsyncSession, dialect: str, account_id: int, spacing_us: int, max_wait_us: int | None
) -> SendSlot:
    """`reserve_send_slot` inside the caller's transaction (the order path's first one holds it too)."""
    row = OrderRateLimit
    now = clock_us(dialect)
    dialect_insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    latest = func.greatest if dialect == "postgresql" else func.max
    statement = (
        dialect_insert(row)
        .values(broker_account_id=account_id, next_free_us=now + spacing_us)
        .on_conflict_do_update(
            index_elements=[row.broker_account_id],
            set_={"next_free_us": latest(row.next_free_us, now) + spacing_us},
            where=None if max_wait_us is None else row.next_free_us <= now + max_wait_us,
        )
        .returning(row.next_free_us, now.label("now_us"))
    )
    reserved = (await session.execute(statement)).one_or_none()
    if reserved is not None:
        send_at_us = reserved.next_free_us - spacing_us
        wait_seconds = max(0, send_at_us - reserved.now_us) / MICROSECONDS
        send_at = datetime.fromtimestamp(0, UTC) + timedelta(microseconds=send_at_us)
        return SendSlot(account_id, True, wait_seconds, send_at)
    assert max_wait_us is not None  # only a bounded reservation can be refused
    queue = (
        await session.execute(
            select(row.next_free_us, now.label("now_us")).where(row.broker_account_id == account_id)
        )
    ).one()
    opens_in_us = queue.next_free_us - max_wait_us - queue.now_us
    return SendSlot(account_id, False, max(0, opens_in_us) / MICROSECONDS)


def clock_us(dialect: str) -> ColumnElement[int]:
    """Now, in microseconds since the epoch: the database's clock where it has one to share."""
    if dialect == "postgresql":
        # statement_timestamp(): one value for the whole statement, wherever it is used in it.
        return cast(func.extract("epoch", func.statement_timestamp()) * MICROSECONDS, BigInteger)
    return literal(time.time_ns() // 1000, BigInteger)  # SQLite: one machine, one clock
