"""Last prices and the day's quote per instrument; settable, and optionally a random walk."""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, Decimal, InvalidOperation

from brokers.paper.clock import now_ist
from brokers.paper.errors import ControlInputError
from brokers.paper.instruments import BUILTIN_INSTRUMENTS, Instrument, instrument_key

PAISA = Decimal("0.01")
# Circuit limits: the day's price band, this share either side of the previous close.
CIRCUIT_BAND = Decimal("0.2")


@dataclass
class Quote:
    instrument: Instrument
    last_price: Decimal
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: int = 0
    last_quantity: int = 0
    last_trade_time: datetime | None = None
    updated_at: datetime = field(default_factory=now_ist)

    @classmethod
    def opening(cls, instrument: Instrument) -> Quote:
        price = instrument.default_price
        return cls(instrument, last_price=price, open=price, high=price, low=price, close=price)

    @property
    def lower_circuit_limit(self) -> Decimal:
        return self.close - self._band

    @property
    def upper_circuit_limit(self) -> Decimal:
        return self.close + self._band

    @property
    def _band(self) -> Decimal:
        return (self.close * CIRCUIT_BAND).quantize(self.instrument.tick_size, rounding=ROUND_FLOOR)

    def within_circuit(self, price: Decimal) -> Decimal:
        return min(max(price, self.lower_circuit_limit), self.upper_circuit_limit)

    def move_to(self, price: Decimal) -> None:
        self.last_price = price
        self.high = max(self.high, price)
        self.low = min(self.low, price)
        self.updated_at = now_ist()


def parse_price(value: object, what: str) -> Decimal:
    """A positive rupee amount with at most two decimals, from a JSON string or number."""
    try:
        price = Decimal(str(value))
    except InvalidOperation:
        raise ControlInputError(f"{what}: {value!r} is not a number; send a price like \"2500.50\"") from None
    if not price.is_finite() or price <= 0:
        raise ControlInputError(f"{what}: the price must be positive, got {value!r}")
    if price != price.quantize(PAISA):
        raise ControlInputError(f"{what}: at most two decimals (paise), got {value!r}")
    return price.quantize(PAISA)


class Market:
    def __init__(self, instruments: Iterable[Instrument] = BUILTIN_INSTRUMENTS):
        self._instruments = {instrument.key: instrument for instrument in instruments}
        self._quotes: dict[str, Quote] = {}
        self.reset()

    def reset(self) -> None:
        """Every price back to its default; the day's volume forgotten."""
        self._quotes = {key: Quote.opening(instrument) for key, instrument in self._instruments.items()}

    @property
    def keys(self) -> list[str]:
        return list(self._quotes)

    def instrument(self, exchange: str, tradingsymbol: str) -> Instrument | None:
        return self._instruments.get(instrument_key(exchange, tradingsymbol))

    def quote(self, key: str) -> Quote | None:
        return self._quotes.get(key)

    def last_price(self, instrument: Instrument) -> Decimal:
        return self._quotes[instrument.key].last_price

    def set_prices(self, prices: Mapping[str, object]) -> list[str]:
        """Set last prices by `EXCHANGE:SYMBOL`; all or none. Returns the keys that moved."""
        parsed: dict[str, Decimal] = {}
        for key, value in prices.items():
            if key not in self._quotes:
                raise ControlInputError(
                    f"unknown instrument {key!r}: use EXCHANGE:TRADINGSYMBOL, one of {', '.join(self.keys)}"
                )
            parsed[key] = parse_price(value, key)
        for key, price in parsed.items():
            quote = self._quotes[key]
            if price != quote.within_circuit(price):
                # No trade can print outside the band: a price set there starts a new day's band around it.
                quote.open = quote.high = quote.low = quote.close = price
            quote.move_to(price)
        return list(parsed)

    def record_trade(self, instrument: Instrument, quantity: int, at: datetime) -> None:
        quote = self._quotes[instrument.key]
        quote.volume += quantity
        quote.last_quantity = quantity
        quote.last_trade_time = at

    def random_step(self, rng: random.Random, volatility: float, keys: Iterable[str]) -> list[str]:
        """Move each price by a normal step of `volatility` (relative), rounded to its tick."""
        moved = []
        for key in keys:
            quote = self._quotes[key]
            tick = quote.instrument.tick_size
            change = Decimal(repr(rng.gauss(0.0, volatility))) * quote.last_price
            # Onto the instrument's tick grid (0.05 is a grid, not just two decimals).
            ticks = ((quote.last_price + change) / tick).to_integral_value(rounding=ROUND_HALF_EVEN)
            # Trading stops at the circuit limits: a walk cannot leave the day's band.
            price = quote.within_circuit(max(ticks * tick, tick))
            if price != quote.last_price:
                quote.move_to(price)
                moved.append(key)
        return moved

    def protection_price(self, instrument: Instrument, is_buy: bool, market_protection: int) -> Decimal:
        """The limit Kite turns a protected market order into: this far from the last price, inside the band."""
        quote = self._quotes[instrument.key]
        percent = Decimal(market_protection) if market_protection > 0 else automatic_protection(quote.last_price)
        tick = instrument.tick_size
        if is_buy:
            ticks = (quote.last_price * (1 + percent / 100) / tick).to_integral_value(rounding=ROUND_FLOOR)
        else:
            ticks = (quote.last_price * (1 - percent / 100) / tick).to_integral_value(rounding=ROUND_CEILING)
        return quote.within_circuit(ticks * tick)

    def restore(self, key: str, quote: Quote) -> None:
        if key in self._quotes:
            self._quotes[key] = quote


def automatic_protection(last_price: Decimal) -> Decimal:
    """Percent away from the last price for `market_protection=-1`, by price slab (equity)."""
    if last_price < 100:
        return Decimal(2)
    if last_price <= 500:
        return Decimal(1)
    return Decimal("0.5")
