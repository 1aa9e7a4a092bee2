"""Column types that behave the same on PostgreSQL and SQLite: exact decimals, UTC timestamps, JSON."""

from __future__ import annotations

import decimal
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import JSON, DateTime, Dialect, Numeric, String
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator, TypeEngine

# Six places hold any broker average price and any product of two of them with a quantity.
MONEY_SCALE = 6
MONEY_PRECISION = 20
MONEY_QUANTUM = Decimal(1).scaleb(-MONEY_SCALE)
CENTS = Decimal("0.01")


class ExactDecimal(TypeDecorator[Decimal]):
    """NUMERIC(precision, scale) on PostgreSQL; on SQLite the decimal's text, since its NUMERIC is float.

    Binding refuses a value with more places than the column holds instead of rounding it silently.
    """

    impl = Numeric
    cache_ok = True

    def __init__(self, precision: int = MONEY_PRECISION, scale: int = MONEY_SCALE):
        super().__init__()
        self.precision = precision
        self.scale = scale
        self.quantum = Decimal(1).scaleb(-scale)

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(self.precision + 2))
        return dialect.type_descriptor(Numeric(self.precision, self.scale, asdecimal=True))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if not isinstance(value, Decimal):
            raise TypeError(f"money columns take Decimal, got {type(value).__name__}")
        try:
            exact = value.quantize(self.quantum, context=decimal.Context(traps=[decimal.Inexact]))
        except (decimal.Inexact, decimal.InvalidOperation) as exc:
            raise ValueError(f"{value} does not fit NUMERIC({self.precision}, {self.scale})") from exc
        return str(exact) if dialect.name == "sqlite" else exact

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        return readable(value if isinstance(value, Decimal) else Decimal(str(value)))


def readable(value: Decimal) -> Decimal:
    """The same number without the column's padding: 2500.050000 reads as 2500.05, 2500 as 2500.00."""
    trimmed = value.normalize()
    if trimmed.as_tuple().exponent > -2:  # type: ignore[operator]
        return value.quantize(CENTS)
    return trimmed


class UTCDateTime(TypeDecorator[datetime]):
    """TIMESTAMPTZ on PostgreSQL, ISO text on SQLite; takes only aware datetimes, returns them in UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"timestamps must be timezone-aware datetimes, got {value!r}")
        in_utc = value.astimezone(UTC)
        # SQLite keeps naive text; all values in UTC keep text order equal to time order.
        return in_utc.replace(tzinfo=None) if dialect.name == "sqlite" else in_utc

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def json_document() -> TypeEngine[Any]:
    """JSON on SQLite, JSONB on PostgreSQL."""
    return JSON().with_variant(JSONB(), "postgresql")
