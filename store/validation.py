"""Checks on what callers hand the store. Each raises InvalidInput naming the field and what to pass."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, time
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

from store.db import dumps_json
from store.errors import InvalidInput
from store.types import MONEY_QUANTUM, MONEY_SCALE, readable


def positive_int(value: Any, field: str) -> int:
    number = _int(value, field)
    if number <= 0:
        raise InvalidInput(f"{field} must be a positive integer, got {number}")
    return number


def non_negative_int(value: Any, field: str) -> int:
    number = _int(value, field)
    if number < 0:
        raise InvalidInput(f"{field} must be zero or more, got {number}")
    return number


def _int(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{field} must be an integer, got {value!r}")
    return value


def decimal_value(value: Any, field: str) -> Decimal:
    """A finite Decimal from a Decimal, an int or a numeric string. Floats are refused: they lose paise."""
    if isinstance(value, bool) or isinstance(value, float):
        raise InvalidInput(f"{field} must be a Decimal or a numeric string, not {type(value).__name__}")
    if isinstance(value, Decimal):
        number = value
    elif isinstance(value, int):
        number = Decimal(value)
    elif isinstance(value, str):
        try:
            number = Decimal(value.strip())
        except InvalidOperation:
            raise InvalidInput(f"{field} must be a decimal number such as 2500.05, got {value!r}") from None
    else:
        raise InvalidInput(f"{field} must be a Decimal or a numeric string, got {value!r}")
    if not number.is_finite():
        raise InvalidInput(f"{field} must be a finite number, got {value!r}")
    return number


def price(value: Any, field: str, *, allow_zero: bool = False) -> Decimal:
    """A price someone typed: positive, at most six decimal places (never rounded)."""
    number = decimal_value(value, field)
    if number < 0 or (number == 0 and not allow_zero):
        raise InvalidInput(f"{field} must be greater than zero, got {number}")
    if number != number.quantize(MONEY_QUANTUM, rounding=ROUND_HALF_EVEN):
        raise InvalidInput(f"{field} has more than {MONEY_SCALE} decimal places: {number}")
    return number


def broker_price(value: Any, field: str) -> Decimal:
    """A price the broker reported; averages can carry long fractions, kept to six places."""
    number = decimal_value(value, field)
    if number < 0:
        raise InvalidInput(f"{field} must not be negative, got {number}")
    return readable(number.quantize(MONEY_QUANTUM, rounding=ROUND_HALF_EVEN))


def percentage(value: Any, field: str) -> Decimal:
    number = decimal_value(value, field)
    if not Decimal(0) < number < Decimal(100):
        raise InvalidInput(f"{field} must be between 0 and 100 (exclusive), got {number}")
    if number != number.quantize(Decimal("0.0001")):
        raise InvalidInput(f"{field} has more than 4 decimal places: {number}")
    return number


def text(value: Any, field: str, *, max_length: int, pattern: re.Pattern[str] | None = None) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{field} must be a non-empty string, got {value!r}")
    cleaned = value.strip()
    if len(cleaned) > max_length:
        raise InvalidInput(f"{field} must be at most {max_length} characters, got {len(cleaned)}")
    if pattern is not None and not pattern.fullmatch(cleaned):
        raise InvalidInput(f"{field} {cleaned!r} must match {pattern.pattern}")
    return cleaned


def optional_text(value: Any, field: str, *, max_length: int) -> str | None:
    return None if value is None else text(value, field, max_length=max_length)


def secret_text(value: Any, field: str, *, max_length: int = 512) -> str:
    """Like text(), but the message never repeats the value."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{field} must be a non-empty string")
    if len(value.strip()) > max_length:
        raise InvalidInput(f"{field} must be at most {max_length} characters")
    return value.strip()


def choice(value: Any, field: str, allowed: Iterable[str]) -> str:
    options = sorted(allowed)
    if not isinstance(value, str) or value not in options:
        raise InvalidInput(f"{field} must be one of {', '.join(options)}; got {value!r}")
    return value


def aware_datetime(value: Any, field: str) -> datetime:
    if not isinstance(value, datetime):
        raise InvalidInput(f"{field} must be a datetime, got {value!r}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidInput(f"{field} must be timezone-aware (for example datetime.now(UTC)), got {value!r}")
    try:
        return value.astimezone(UTC)
    except OverflowError:
        moment = value.isoformat()
        raise InvalidInput(f"{field} is outside the years 1-9999 once converted to UTC, got {moment}") from None


def optional_aware_datetime(value: Any, field: str) -> datetime | None:
    return None if value is None else aware_datetime(value, field)


def time_of_day(value: Any, field: str) -> time | None:
    if value is None:
        return None
    if not isinstance(value, time):
        raise InvalidInput(f"{field} must be a datetime.time, got {value!r}")
    if value.tzinfo is not None:
        raise InvalidInput(f"{field} is a time of day in Asia/Kolkata; pass it without tzinfo")
    return value


def json_object(value: Any, field: str) -> dict[str, Any]:
    """A JSON-ready copy: Decimals and datetimes become strings, as they will read back."""
    if not isinstance(value, Mapping):
        raise InvalidInput(f"{field} must be a dict, got {type(value).__name__}")
    try:
        loaded: dict[str, Any] = json.loads(dumps_json(dict(value)))
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{field} must hold only JSON values, Decimals and datetimes: {exc}") from None
    return loaded
