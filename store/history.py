"""The audit log as pages: newest first, filtered, with an opaque keyset cursor on (attempted_at, id)."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime

from sqlalchemy import and_, or_, select

from store import validation as check
from store.base import StoreBase, to_record
from store.errors import InvalidInput
from store.models import Order, OrderLog
from store.records import HistoryOrder, HistoryQuery, LogStatus, OrderLogRecord, OrderType, Page

MAX_PAGE_SIZE = 500
MAX_ROW_ID = 2**63 - 1  # the id column is a BIGINT
NOT_OURS = "cursor is not one this store issued; pass next_cursor back unchanged"


def encode_cursor(row: OrderLogRecord) -> str:
    raw = json.dumps([row.attempted_at.isoformat(), row.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        attempted_at, row_id = json.loads(raw)
        if not isinstance(row_id, int) or isinstance(row_id, bool) or not 0 < row_id <= MAX_ROW_ID:
            raise InvalidInput(NOT_OURS)
        moment = datetime.fromisoformat(attempted_at)
        if moment.tzinfo is None:
            raise InvalidInput(NOT_OURS)
        return moment.astimezone(UTC), row_id
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError, OverflowError):
        raise InvalidInput(NOT_OURS) from None


class HistoryMixin(StoreBase):
    async def order_history(self, query: HistoryQuery) -> Page:
        """One page of order_logs, newest first. Pass next_cursor back for the next page."""
        limit = check.positive_int(query.limit, "limit")
        if limit > MAX_PAGE_SIZE:
            raise InvalidInput(f"limit must be at most {MAX_PAGE_SIZE}, got {limit}")
        since = check.optional_aware_datetime(query.since, "since")
        until = check.optional_aware_datetime(query.until, "until")
        if since is not None and until is not None and since >= until:
            raise InvalidInput(f"since ({since}) must be before until ({until})")

        statement = select(OrderLog)
        if query.user_id is not None:
            statement = statement.where(OrderLog.user_id == check.positive_int(query.user_id, "user_id"))
        if query.strategy_id is not None:
            statement = statement.where(OrderLog.strategy_id == check.positive_int(query.strategy_id, "strategy_id"))
        if query.status is not None:
            statement = statement.where(OrderLog.status == check.choice(query.status, "status", LogStatus))
        if query.order_type is not None:
            statement = statement.where(OrderLog.order_type == check.choice(query.order_type, "order_type", OrderType))
        if since is not None:
            statement = statement.where(OrderLog.attempted_at >= since)
        if until is not None:
            statement = statement.where(OrderLog.attempted_at < until)
        if query.cursor is not None:
            after_time, after_id = decode_cursor(check.text(query.cursor, "cursor", max_length=200))
            statement = statement.where(
                or_(
                    OrderLog.attempted_at < after_time,
                    and_(OrderLog.attempted_at == after_time, OrderLog.id < after_id),
                )
            )
        statement = statement.order_by(OrderLog.attempted_at.desc(), OrderLog.id.desc()).limit(limit + 1)

        async with self._read() as session:
            rows = [to_record(OrderLogRecord, row) for row in await session.scalars(statement)]
            items = rows[:limit]
            order_ids = {item.order_id for item in items}
            orders = list(await session.scalars(select(Order).where(Order.id.in_(order_ids)))) if order_ids else []
            summaries = {
                order.id: HistoryOrder(
                    symbol=order.symbol, exchange=order.exchange, side=order.transaction_type, quantity=order.quantity,
                    filled_quantity=order.filled_quantity, average_price=order.average_price,
                    exit_reason=order.exit_reason,
                )
                for order in orders
            }
        next_cursor = encode_cursor(items[-1]) if len(rows) > limit else None
        return Page(items=items, next_cursor=next_cursor, orders=summaries)
