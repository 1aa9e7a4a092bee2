"""Follows orders through one order-book poll per broker account, however many orders are in flight.

Kite allows about 10 requests per second per account on its read endpoints too: polling each order on
its own would exhaust that with a handful of orders. Every follower of an account waits on the same
snapshot of `GET /orders`, fetched while at least one follower is waiting.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from brokers.base import Broker, BrokerOrder
from brokers.errors import BrokerError

log = logging.getLogger(__name__)


# A book that stopped changing is polled ever less often, up to this; a new order resets the pace.
MAX_INTERVAL_SECONDS = 2.0
BACKOFF = 1.5
# Kite answers 10 reads a second an account: polling at most ~7 leaves room for tag lookups and positions.
MIN_INTERVAL_SECONDS = 0.15


@dataclass
class _AccountBook:
    broker: Broker
    orders: dict[str, BrokerOrder] = field(default_factory=dict)
    version: int = 0
    followers: int = 0
    last_error: BrokerError | None = None
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    poller: asyncio.Task[None] | None = None
    newcomer: asyncio.Event = field(default_factory=asyncio.Event)


def _progress(orders: dict[str, BrokerOrder]) -> dict[str, tuple[str, int]]:
    return {order_id: (order.status, order.filled_quantity) for order_id, order in orders.items()}


class OrderBookWatcher:
    def __init__(self, interval_seconds: float, max_interval_seconds: float = MAX_INTERVAL_SECONDS):
        self.interval = max(interval_seconds, MIN_INTERVAL_SECONDS)
        self.max_interval = max(max_interval_seconds, self.interval)
        self._books: dict[str, _AccountBook] = {}

    async def next_snapshot(
        self, account: str, broker: Broker, order_id: str, seen_version: int, timeout: float
    ) -> tuple[int, BrokerOrder | None]:
        """Wait for a snapshot newer than `seen_version` (or `timeout`); return it with this order's state.

        Raises the poller's last `BrokerError` when the newest fetch failed, so the caller decides.
        """
        book = self._books.get(account)
        if book is None:
            book = self._books[account] = _AccountBook(broker=broker)
        book.broker = broker  # a fresher session replaces an expired one
        book.followers += 1
        if seen_version == 0:
            book.newcomer.set()  # a new order: poll at the quick pace again
        try:
            if book.poller is None or book.poller.done():
                book.poller = asyncio.create_task(self._poll(account, book))
            async with book.changed:
                try:
                    await asyncio.wait_for(
                        book.changed.wait_for(lambda: book.version > seen_version), timeout
                    )
                except TimeoutError:
                    pass
            if book.last_error is not None:
                raise book.last_error
            return book.version, book.orders.get(order_id)
        finally:
            book.followers -= 1

    def version(self, account: str) -> int:
        """The newest snapshot's version (a failed poll counts as one): where a caller waits on from."""
        book = self._books.get(account)
        return book.version if book is not None else 0

    def tagged(self, account: str, tag: str, except_order_id: str) -> list[BrokerOrder]:
        """Other orders of the newest snapshot carrying `tag`: twins of the order `except_order_id`."""
        book = self._books.get(account)
        if book is None:
            return []
        return [o for o in book.orders.values() if o.tag == tag and o.order_id != except_order_id]

    async def _poll(self, account: str, book: _AccountBook) -> None:
        loop = asyncio.get_running_loop()
        delay = self.interval
        while book.followers > 0:
            polled_at = loop.time()
            book.newcomer.clear()
            before = _progress(book.orders)
            try:
                orders = await book.broker.orders()
                book.orders = {order.order_id: order for order in orders}
                book.last_error = None
            except BrokerError as error:
                log.warning("order book poll for account %s failed: %s", account, error)
                book.last_error = error
            async with book.changed:
                book.version += 1
                book.changed.notify_all()
            moved = _progress(book.orders) != before
            delay = self.interval if moved or book.newcomer.is_set() else min(delay * BACKOFF, self.max_interval)
            try:
                await asyncio.wait_for(book.newcomer.wait(), delay)
                delay = self.interval
                # Never faster than the base pace: Kite's read endpoints allow ~10 requests/s an account.
                await asyncio.sleep(max(0.0, polled_at + self.interval - loop.time()))
            except TimeoutError:
                pass
        book.poller = None
