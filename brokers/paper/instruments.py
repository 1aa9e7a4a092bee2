"""The instruments the paper broker trades: a dozen liquid NSE equities with Kite's tokens."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

# Kite caps one order's quantity; above it the order must be split (an "autoslice").
DEFAULT_FREEZE_QUANTITY = 100_000


@dataclass(frozen=True)
class Instrument:
    exchange: str
    tradingsymbol: str
    instrument_token: int
    isin: str
    default_price: Decimal
    tick_size: Decimal
    freeze_quantity: int = DEFAULT_FREEZE_QUANTITY

    @property
    def key(self) -> str:
        """`EXCHANGE:TRADINGSYMBOL`, as Kite's quote routes name instruments."""
        return instrument_key(self.exchange, self.tradingsymbol)

    def on_tick(self, price: Decimal) -> bool:
        return price % self.tick_size == 0


def instrument_key(exchange: str, tradingsymbol: str) -> str:
    return f"{exchange}:{tradingsymbol}"


def _nse(symbol: str, token: int, isin: str, price: str, tick: str = "0.05") -> Instrument:
    return Instrument("NSE", symbol, token, isin, Decimal(price), Decimal(tick))


BUILTIN_INSTRUMENTS: tuple[Instrument, ...] = (
    _nse("RELIANCE", 738561, "INE002A01018", "1400.00"),
    _nse("INFY", 408065, "INE009A01021", "1500.00"),
    _nse("TCS", 2953217, "INE467B01029", "3100.00"),
    _nse("HDFCBANK", 341249, "INE040A01034", "950.00"),
    _nse("SBIN", 779521, "INE062A01020", "800.00"),
    _nse("ICICIBANK", 1270529, "INE090A01021", "1400.00"),
    _nse("ITC", 424961, "INE154A01025", "410.00"),
    _nse("LT", 2939649, "INE018A01030", "3600.00"),
    _nse("KOTAKBANK", 492033, "INE237A01028", "2100.00"),
    _nse("AXISBANK", 1510401, "INE238A01034", "1150.00"),
    _nse("BHARTIARTL", 2714625, "INE397D01024", "1950.00"),
    _nse("HINDUNILVR", 356865, "INE030A01027", "2400.00"),
    # NSE quotes stocks under Rs 250 in paise.
    _nse("TATASTEEL", 895745, "INE081A01020", "160.00", tick="0.01"),
    _nse("WIPRO", 969473, "INE075A01022", "250.00", tick="0.01"),
)
