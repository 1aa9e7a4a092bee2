"""Every order request the broker received, and Kite's rate limits per account.

The log is what lets a test prove that no order was placed twice and that a client never went over
the rate limit: one record per place, modify or cancel request, whatever its outcome.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import date
from typing import Any

from brokers.paper.clock import millisecond_time, now_ist

RATE_WINDOW_SECONDS = 1.0


def request_key(seq: int) -> str:
    """The state key of one request record."""
    return f"request:{seq}"


@dataclass
class OrderRequestRecord:
    seq: int
    route: str  # place_order | modify_order | cancel_order
    api_key: str
    user_id: str
    received_at: float  # epoch seconds
    variety: str
    order_id: str | None = None
    exchange: str | None = None
    tradingsymbol: str | None = None
    transaction_type: str | None = None
    quantity: int | None = None
    order_type: str | None = None
    product: str | None = None
    tag: str | None = None
    http_status: int | None = None  # None: no answer was sent (connection dropped)
    fault: str | None = None
    rate_limited: bool = False

    def as_state(self) -> dict[str, Any]:
        return asdict(self)


class RequestLog:
    def __init__(self) -> None:
        self.records: list[OrderRequestRecord] = []

    def clear(self) -> None:
        self.records.clear()

    def record(
        self, route: str, api_key: str, user_id: str, variety: str, form: Mapping[str, str],
        order_id: str | None = None,
    ) -> OrderRequestRecord:
        quantity = form.get("quantity", "")
        record = OrderRequestRecord(
            seq=len(self.records) + 1,
            route=route,
            api_key=api_key,
            user_id=user_id,
            received_at=time.time(),
            variety=variety,
            order_id=order_id,
            exchange=form.get("exchange"),
            tradingsymbol=form.get("tradingsymbol"),
            transaction_type=form.get("transaction_type"),
            quantity=int(quantity) if quantity.isdigit() else None,
            order_type=form.get("order_type"),
            product=form.get("product"),
            tag=form.get("tag"),
        )
        self.records.append(record)
        return record

    def restore(self, records: Iterable[Mapping[str, Any]]) -> None:
        self.records = [OrderRequestRecord(**record) for record in records]

    def rate(self, limit_per_second: int) -> dict[str, Any]:
        """Per account: requests received, and the most in any one-second window (all, and admitted)."""
        received: dict[str, list[float]] = {}
        admitted: dict[str, list[float]] = {}
        for record in self.records:
            received.setdefault(record.api_key, []).append(record.received_at)
            if not record.rate_limited:
                admitted.setdefault(record.api_key, []).append(record.received_at)
        return {
            "window_seconds": RATE_WINDOW_SECONDS,
            "limit_per_second": limit_per_second,
            "accounts": {
                api_key: {
                    "requests": len(times),
                    "rate_limited": len(times) - len(admitted.get(api_key, [])),
                    "max_received_in_window": _max_in_window(times),
                    "max_admitted_in_window": _max_in_window(admitted.get(api_key, [])),
                }
                for api_key, times in received.items()
            },
        }


def received_at_text(record: OrderRequestRecord) -> str:
    return millisecond_time(record.received_at)


def _max_in_window(times: list[float]) -> int:
    ordered = sorted(times)
    best = 0
    start = 0
    for end, moment in enumerate(ordered):
        while moment - ordered[start] >= RATE_WINDOW_SECONDS:
            start += 1
        best = max(best, end - start + 1)
    return best


@dataclass(frozen=True)
class RateLimits:
    """Requests allowed per api_key, Kite's published figures by default; 0 turns a limit off."""

    orders_per_second: int = 10
    orders_per_minute: int = 400
    orders_per_day: int = 5000
    quotes_per_second: int = 1  # quote, ltp, ohlc
    reads_per_second: int = 10  # every other GET

    @classmethod
    def off(cls) -> RateLimits:
        return cls(**{name: 0 for name in RATE_LIMIT_FIELDS})

    def as_json(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in RATE_LIMIT_FIELDS}


RATE_LIMIT_FIELDS = ("orders_per_second", "orders_per_minute", "orders_per_day", "quotes_per_second",
                     "reads_per_second")
TOO_MANY_REQUESTS = "Too many requests"


class _SlidingWindow:
    """At most `limit` admitted requests per key in any sliding window of `seconds`."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._admitted: dict[str, deque[float]] = {}

    def has_room(self, key: str, limit: int, now: float) -> bool:
        if limit <= 0:
            return True
        window = self._admitted.setdefault(key, deque())
        while window and now - window[0] >= self.seconds:
            window.popleft()
        return len(window) < limit

    def note(self, key: str, now: float) -> None:
        self._admitted.setdefault(key, deque()).append(now)

    def clear(self) -> None:
        self._admitted.clear()


class RateLimiter:
    """Kite's limits per api_key: order requests per second, minute and trading day; quotes and other reads
    per second. `admit_*` returns None, or the 429 message for a request over a limit (which then counts
    against nothing)."""

    def __init__(self, limits: RateLimits, clock: Callable[[], float] = time.monotonic,
                 today: Callable[[], date] = lambda: now_ist().date()):
        self.limits = limits
        self._clock = clock
        self._today = today
        self._order_second = _SlidingWindow(RATE_WINDOW_SECONDS)
        self._order_minute = _SlidingWindow(60.0)
        self._orders_today: dict[tuple[str, date], int] = {}
        self._quotes = _SlidingWindow(RATE_WINDOW_SECONDS)
        self._reads = _SlidingWindow(RATE_WINDOW_SECONDS)

    @property
    def per_second(self) -> int:
        return self.limits.orders_per_second

    def admit_order(self, api_key: str) -> str | None:
        now, day, limits = self._clock(), self._today(), self.limits
        if not self._order_second.has_room(api_key, limits.orders_per_second, now):
            return TOO_MANY_REQUESTS
        if not self._order_minute.has_room(api_key, limits.orders_per_minute, now):
            return f"{TOO_MANY_REQUESTS}: more than {limits.orders_per_minute} order requests in a minute."
        if 0 < limits.orders_per_day <= self._orders_today.get((api_key, day), 0):
            return (f"{TOO_MANY_REQUESTS}: the day's limit of {limits.orders_per_day} order requests is "
                    "reached; orders can be placed again tomorrow.")
        self._order_second.note(api_key, now)
        self._order_minute.note(api_key, now)
        self._orders_today[(api_key, day)] = self._orders_today.get((api_key, day), 0) + 1
        return None

    def admit_quote(self, api_key: str) -> str | None:
        return self._admit(self._quotes, self.limits.quotes_per_second, api_key)

    def admit_read(self, api_key: str) -> str | None:
        return self._admit(self._reads, self.limits.reads_per_second, api_key)

    def _admit(self, window: _SlidingWindow, limit: int, api_key: str) -> str | None:
        now = self._clock()
        if not window.has_room(api_key, limit, now):
            return TOO_MANY_REQUESTS
        window.note(api_key, now)
        return None

    def clear(self) -> None:
        for window in (self._order_second, self._order_minute, self._quotes, self._reads):
            window.clear()
        self._orders_today.clear()
