"""NSE trading hours: 09:15–15:30 Asia/Kolkata on trading days (weekdays that are not holidays)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime, time
from zoneinfo import ZoneInfo

IST = ZoneInfo("Asia/Kolkata")


def in_ist(moment: datetime | None) -> datetime | None:
    """A time Kite gives as its IST wall clock, without a zone, as the moment it is; aware ones as they are."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=IST)
MARKET_OPEN = time(9, 15)
MARKET_CLOSE = time(15, 30)


class MarketCalendar:
    def __init__(self, holidays: Iterable[date] = ()):
        self.holidays = frozenset(holidays)

    def is_trading_day(self, day: date) -> bool:
        return day.weekday() < 5 and day not in self.holidays

    def is_open(self, moment: datetime) -> bool:
        local = moment.astimezone(IST)
        return self.is_trading_day(local.date()) and MARKET_OPEN <= local.time() < MARKET_CLOSE


def parse_holidays(text: str | None) -> list[date]:
    """'2026-01-26,2026-03-14' → dates; a clear error names the entry that does not parse."""
    if not text:
        return []
    days = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            days.append(date.fromisoformat(item))
        except ValueError:
            raise ValueError(f"ENGINE_NSE_HOLIDAYS: {item!r} is not a date like 2026-01-26") from None
    return days
