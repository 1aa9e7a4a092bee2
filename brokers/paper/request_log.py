"""Every order request the broker received, and Kite's 10 order requests per second per account.

The log is what lets a test prove that no order was placed twice and that a client never went over
the rate limit: one record per place, modify or cancel request, whatever its outcome.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from brokers.paper.clock import millisecond_time

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


class OrderRateLimiter:
    """At most `per_second` admitted order requests per account in any sliding one-second window."""

    def __init__(self, per_second: int, clock: Callable[[], float] = time.monotonic):
        self.per_second = per_second
        self._clock = clock
        self._admitted: dict[str, deque[float]] = {}

    def admit(self, api_key: str) -> bool:
        if self.per_second <= 0:
            return True
        now = self._clock()
        window = self._admitted.setdefault(api_key, deque())
        while window and now - window[0] >= RATE_WINDOW_SECONDS:
            window.popleft()
        if len(window) >= self.per_second:
            return False
        window.append(now)
        return True

    def clear(self) -> None:
        self._admitted.clear()
