"""Time as Kite shows it: India Standard Time, `YYYY-MM-DD HH:MM:SS`."""

from __future__ import annotations

import time as _time
from datetime import datetime, time, timedelta, timezone

# India has no daylight saving time, so a fixed offset is exact and needs no tz database.
IST = timezone(timedelta(hours=5, minutes=30), "IST")
KITE_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
# Kite access tokens die at 06:00 IST the day after login.
TOKEN_EXPIRY_HOUR = 6


def now_ist() -> datetime:
    return datetime.now(IST)


def kite_time(moment: datetime | None) -> str | None:
    """`YYYY-MM-DD HH:MM:SS` in IST: the only form the kiteconnect client turns into a datetime."""
    if moment is None:
        return None
    return moment.astimezone(IST).strftime(KITE_TIME_FORMAT)


def kite_clock_time(moment: datetime) -> str:
    """`HH:MM:SS` in IST: what Kite puts in a trade's `order_timestamp`."""
    return moment.astimezone(IST).strftime("%H:%M:%S")


def millisecond_time(epoch_seconds: float) -> str:
    """`YYYY-MM-DD HH:MM:SS.mmm` in IST, for the simulator's request log."""
    moment = datetime.fromtimestamp(epoch_seconds, IST)
    return moment.strftime(KITE_TIME_FORMAT) + f".{moment.microsecond // 1000:03d}"


def next_token_expiry(login_epoch: float) -> float:
    """The first 06:00 IST after `login_epoch`, as epoch seconds."""
    login = datetime.fromtimestamp(login_epoch, IST)
    expiry = login.replace(hour=TOKEN_EXPIRY_HOUR, minute=0, second=0, microsecond=0)
    if expiry <= login:
        expiry += timedelta(days=1)
    return expiry.timestamp()


def epoch_now() -> float:
    return _time.time()


# NSE's cash session, IST.
MARKET_OPEN = time(9, 15)
MARKET_CLOSE = time(15, 30)


class SimClock:
    """The exchange's clock: real time, moved by an offset the control API sets (`/_sim/clock`)."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def now(self) -> datetime:
        return now_ist() + self.offset

    def set_now(self, moment: datetime) -> None:
        self.offset = moment.astimezone(IST) - now_ist()

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)

    def reset(self) -> None:
        self.offset = timedelta(0)

    def market_is_open(self) -> bool:
        now = self.now()
        return now.weekday() < 5 and MARKET_OPEN <= now.time() < MARKET_CLOSE
