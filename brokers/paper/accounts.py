"""Accounts (one per api_key), their access tokens, positions, holdings and margin."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from brokers.paper.orders import Trade

DEFAULT_CASH = Decimal("10000000")  # one crore rupees
# Share of an order's value blocked as margin; intraday (MIS) gets 5x leverage.
MARGIN_RATE_BY_PRODUCT = {"MIS": Decimal("0.2")}
FULL_MARGIN = Decimal(1)
AMOUNT_QUANTUM = Decimal("0.01")


def margin_rate(product: str) -> Decimal:
    return MARGIN_RATE_BY_PRODUCT.get(product, FULL_MARGIN)


@dataclass
class AccessToken:
    api_key: str
    issued_at: float
    expires_at: float
    value: str = field(repr=False)

    def is_valid_at(self, epoch: float) -> bool:
        return epoch < self.expires_at


@dataclass
class Holding:
    exchange: str
    tradingsymbol: str
    instrument_token: int
    isin: str
    quantity: int
    average_price: Decimal


@dataclass
class Position:
    """One (exchange, symbol, product) line of the position book, built from trades."""

    exchange: str
    tradingsymbol: str
    instrument_token: int
    product: str
    buy_quantity: int = 0
    buy_value: Decimal = Decimal(0)
    sell_quantity: int = 0
    sell_value: Decimal = Decimal(0)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.exchange, self.tradingsymbol, self.product)

    @property
    def quantity(self) -> int:
        return self.buy_quantity - self.sell_quantity

    @property
    def buy_price(self) -> Decimal:
        return self.buy_value / self.buy_quantity if self.buy_quantity else Decimal(0)

    @property
    def sell_price(self) -> Decimal:
        return self.sell_value / self.sell_quantity if self.sell_quantity else Decimal(0)

    @property
    def average_price(self) -> Decimal:
        """The average price of the open side: buys for a long position, sells for a short one."""
        if self.quantity > 0:
            return self.buy_price
        if self.quantity < 0:
            return self.sell_price
        return Decimal(0)

    @property
    def realised(self) -> Decimal:
        matched = min(self.buy_quantity, self.sell_quantity)
        return matched * (self.sell_price - self.buy_price) if matched else Decimal(0)

    def pnl(self, last_price: Decimal) -> Decimal:
        return self.sell_value - self.buy_value + self.quantity * last_price

    def margin(self) -> Decimal:
        return abs(self.quantity) * self.average_price * margin_rate(self.product)

    def apply(self, trade: Trade) -> None:
        value = trade.price * trade.quantity
        if trade.transaction_type == "BUY":
            self.buy_quantity += trade.quantity
            self.buy_value += value
        else:
            self.sell_quantity += trade.quantity
            self.sell_value += value


@dataclass
class Account:
    api_key: str
    user_id: str
    cash: Decimal = DEFAULT_CASH
    holdings: dict[str, Holding] = field(default_factory=dict)  # by EXCHANGE:SYMBOL
    positions: dict[tuple[str, str, str], Position] = field(default_factory=dict)
    order_ids: list[str] = field(default_factory=list)
    trades: list[Trade] = field(default_factory=list)

    @property
    def user_name(self) -> str:
        return f"Paper Trader {self.user_id}"

    @property
    def email(self) -> str:
        return f"{self.user_id.lower()}@paper-broker.invalid"

    def position(self, exchange: str, tradingsymbol: str, instrument_token: int, product: str) -> Position:
        key = (exchange, tradingsymbol, product)
        if key not in self.positions:
            self.positions[key] = Position(exchange, tradingsymbol, instrument_token, product)
        return self.positions[key]

    def net_quantity(self, exchange: str, tradingsymbol: str, product: str) -> int:
        """Open position quantity; delivery (CNC) sells may also draw on holdings."""
        position = self.positions.get((exchange, tradingsymbol, product))
        quantity = position.quantity if position else 0
        if product == "CNC":
            holding = self.holdings.get(f"{exchange}:{tradingsymbol}")
            quantity += holding.quantity if holding else 0
        return quantity

    def apply_trade(self, trade: Trade) -> None:
        self.trades.append(trade)
        self.position(trade.exchange, trade.tradingsymbol, trade.instrument_token, trade.product).apply(trade)

    @property
    def realised_pnl(self) -> Decimal:
        return sum((position.realised for position in self.positions.values()), Decimal(0))

    @property
    def position_margin(self) -> Decimal:
        return sum((position.margin() for position in self.positions.values()), Decimal(0))
