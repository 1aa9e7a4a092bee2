"""Zerodha's charges on NSE equity, intraday (MIS) and delivery (CNC): pure Decimal arithmetic.

Rates: https://zerodha.com/charges (equity tab), as published on 2026-12-02; the NSE transaction charge
is NSE's cash-market rate in force since 2024-10-01 (NSE circular of 2024-09-24). Rounding follows
Zerodha's brokerage calculator (https://zerodha.com/brokerage-calculator), which mirrors the contract
note: each component on the day's totals to the paisa, STT and stamp duty to the rupee. Every rate is
here and nowhere else; docs/pnl.md shows the formulas with a worked example.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

RATES_AS_OF = "2026-12-02"
RATES_SOURCE = "https://zerodha.com/charges (equity); NSE cash-market transaction charge from 2024-10-01"

PAISA = Decimal("0.01")
RUPEE = Decimal("1")

# Brokerage: intraday 0.03% or Rs 20 per executed order, whichever is lower; delivery free.
INTRADAY_BROKERAGE_RATE = Decimal("0.0003")
INTRADAY_BROKERAGE_CAP = Decimal("20")
# STT: intraday 0.025% on the sell side; delivery 0.1% on buy and sell.
INTRADAY_STT_SELL_RATE = Decimal("0.00025")
DELIVERY_STT_RATE = Decimal("0.001")
# Exchange transaction charges, NSE equity: 0.00297% of turnover.
NSE_TRANSACTION_RATE = Decimal("0.0000297")
# SEBI turnover fee: Rs 10 per crore (1e7) of turnover.
SEBI_RATE = Decimal("10") / Decimal("10000000")
# GST: 18% on brokerage + exchange transaction charges + SEBI fee.
GST_RATE = Decimal("0.18")
# Stamp duty on the buy side: intraday 0.003% (Rs 300/crore), delivery 0.015% (Rs 1500/crore).
INTRADAY_STAMP_RATE = Decimal("0.00003")
DELIVERY_STAMP_RATE = Decimal("0.00015")

PRODUCTS = ("MIS", "CNC")
EXCHANGES = ("NSE",)


class ChargesError(ValueError):
    """A trade the charge tables do not cover, or a value that cannot be a trade."""


@dataclass(frozen=True)
class Execution:
    """One executed order: its side, filled quantity and average price."""

    side: str  # BUY | SELL
    quantity: int
    price: Decimal


@dataclass(frozen=True)
class Charges:
    brokerage: Decimal
    stt: Decimal
    exchange: Decimal
    sebi: Decimal
    gst: Decimal
    stamp: Decimal

    @property
    def total(self) -> Decimal:
        return self.brokerage + self.stt + self.exchange + self.sebi + self.gst + self.stamp

    def __add__(self, other: Charges) -> Charges:
        return Charges(
            self.brokerage + other.brokerage, self.stt + other.stt, self.exchange + other.exchange,
            self.sebi + other.sebi, self.gst + other.gst, self.stamp + other.stamp,
        )


NO_CHARGES = Charges(*(Decimal("0.00"),) * 6)


def _paisa(value: Decimal) -> Decimal:
    return value.quantize(PAISA, rounding=ROUND_HALF_UP)


def _rupee(value: Decimal) -> Decimal:
    return value.quantize(RUPEE, rounding=ROUND_HALF_UP).quantize(PAISA)


def _checked(execution: Execution) -> Execution:
    if execution.side not in ("BUY", "SELL"):
        raise ChargesError(f"side must be BUY or SELL, got {execution.side!r}")
    if not isinstance(execution.quantity, int) or isinstance(execution.quantity, bool) or execution.quantity <= 0:
        raise ChargesError(f"quantity must be a whole number above zero, got {execution.quantity!r}")
    if not isinstance(execution.price, Decimal) or not execution.price.is_finite() or execution.price <= 0:
        raise ChargesError(f"price must be a Decimal above zero, got {execution.price!r}")
    return execution


def brokerage(product: str, value: Decimal) -> Decimal:
    """Brokerage of one executed order of `value` rupees."""
    if product == "CNC":
        return Decimal("0.00")
    return min(INTRADAY_BROKERAGE_CAP, _paisa(value * INTRADAY_BROKERAGE_RATE)).quantize(PAISA)


def day_charges(product: str, exchange: str, executions: Iterable[Execution]) -> Charges:
    """The charges of one day's executed orders in one product on one exchange, as the contract note
    computes them: brokerage per order; STT, exchange, SEBI, GST and stamp on the day's totals."""
    if product not in PRODUCTS:
        raise ChargesError(f"charges are known for products {', '.join(PRODUCTS)}, not {product!r}")
    if exchange not in EXCHANGES:
        raise ChargesError(f"charges are known for exchange {', '.join(EXCHANGES)}, not {exchange!r}")
    checked = [_checked(execution) for execution in executions]
    if not checked:
        return NO_CHARGES
    buy_value = sum((e.price * e.quantity for e in checked if e.side == "BUY"), Decimal(0))
    sell_value = sum((e.price * e.quantity for e in checked if e.side == "SELL"), Decimal(0))
    turnover = _paisa(buy_value + sell_value)
    brokerage_total = sum((brokerage(product, e.price * e.quantity) for e in checked), Decimal("0.00"))
    if product == "MIS":
        stt = _rupee(sell_value * INTRADAY_STT_SELL_RATE)
        stamp = _rupee(buy_value * INTRADAY_STAMP_RATE)
    else:
        stt = _rupee(turnover * DELIVERY_STT_RATE)
        stamp = _rupee(buy_value * DELIVERY_STAMP_RATE)
    exchange_charge = _paisa(turnover * NSE_TRANSACTION_RATE)
    sebi = _paisa(turnover * SEBI_RATE)
    gst = _paisa(GST_RATE * (brokerage_total + exchange_charge + sebi))
    return Charges(brokerage_total, stt, exchange_charge, sebi, gst, stamp)
