"""What a trader sees, for the CLI and the API alike: positions, the order book, the trade book and
realized P&L per strategy and day, as the engine holds them and (asked for) beside what Kite reports.

One set of answer models serves both, so `engine positions --json` and `GET /positions` carry the same
fields and the same numbers. Money is Decimal, sent as decimal strings.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, Field, PlainSerializer, WithJsonSchema

from brokers.base import Broker, BrokerOrder, BrokerTrade
from brokers.errors import BrokerError, RateLimitedError
from brokers.factory import KiteBrokerFactory
from engine.charges import RATES_AS_OF, RATES_SOURCE, Charges, ChargesError, Execution, day_charges
from engine.market_hours import in_ist
from engine.settings import Settings
from store import Store
from store.errors import InvalidInput
from store.records import StrategyRecord
from store.types import readable
from store.views import IST, BookOrder, RealizedExit, ist_day

CENTS = Decimal("0.01")
RATE_LIMITED_ATTEMPTS = 4
RATE_LIMITED_PAUSE_SECONDS = 0.5


def _money_text(value: Decimal) -> str:
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent > -2:
        value = value.quantize(CENTS)
    return format(value, "f")


Money = Annotated[
    Decimal,
    PlainSerializer(_money_text, return_type=str, when_used="always"),
    WithJsonSchema({"type": "string", "examples": ["2450.50"]}),
]


class BrokerUnavailable(Exception):
    """Kite could not be asked (no token today, expired session, network): the engine's side still reads."""


# Answers -----------------------------------------------------------------------------------------------


class StrategyPositionOut(BaseModel):
    strategy_id: int
    name: str
    account_id: int
    exchange: str
    symbol: str
    product: str
    position: str
    open_quantity: int
    entry_price: Money | None
    realized_pnl: Money
    exit_reason: str | None


class InstrumentPositionOut(BaseModel):
    account_id: int
    exchange: str
    symbol: str
    product: str
    engine_quantity: int = Field(description="what all of the account's strategies hold of it")
    broker_quantity: int | None = Field(description="Kite's net position (and CNC holdings); null without --broker")
    broker_average_price: Money | None
    broker_pnl: Money | None
    difference: str | None = Field(description="null when both agree or Kite was not asked")


class PositionsOut(BaseModel):
    broker_checked: bool
    strategies: list[StrategyPositionOut]
    instruments: list[InstrumentPositionOut]
    differences: int


class BrokerOrderOut(BaseModel):
    order_id: str
    status: str
    symbol: str
    exchange: str
    side: str
    product: str
    quantity: int
    filled_quantity: int
    average_price: Money
    tag: str | None
    timestamp: datetime | None


class OrderRowOut(BaseModel):
    workflow_id: str
    run_id: str | None
    strategy_id: int
    account_id: int
    symbol: str
    exchange: str
    product: str
    side: str = Field(description="BUY or SELL at the broker")
    order_type: str = Field(description="BUY, SELL or SL_SELL")
    quantity: int
    filled_quantity: int
    average_price: Money | None
    status: str
    outcome: str | None
    exit_reason: str | None
    broker_order_id: str | None
    created_at: datetime
    completed_at: datetime | None
    broker: BrokerOrderOut | None = Field(description="the same order in Kite's book; null without --broker")
    difference: str | None


class OrderBookOut(BaseModel):
    date: date
    broker_checked: bool
    orders: list[OrderRowOut]
    broker_only: list[BrokerOrderOut] = Field(description="orders in Kite's book the engine does not hold")
    differences: int


class TradeRowOut(BaseModel):
    workflow_id: str
    strategy_id: int
    account_id: int
    symbol: str
    exchange: str
    product: str
    side: str
    order_type: str
    quantity: int
    price: Money
    exit_reason: str | None
    filled_at: datetime | None
    broker_order_id: str | None
    broker_quantity: int | None = Field(description="Kite's fills of the order, summed; null without --broker")
    broker_price: Money | None = Field(description="their quantity-weighted price")
    difference: str | None


class BrokerTradeOut(BaseModel):
    trade_id: str
    order_id: str
    symbol: str
    exchange: str
    side: str
    product: str
    quantity: int
    price: Money
    filled_at: datetime | None


class TradeBookOut(BaseModel):
    date: date
    broker_checked: bool
    trades: list[TradeRowOut]
    broker_only: list[BrokerTradeOut]
    differences: int


class ChargesOut(BaseModel):
    brokerage: Money
    stt: Money
    exchange: Money
    sebi: Money
    gst: Money
    stamp: Money
    total: Money

    @classmethod
    def of(cls, charges: Charges) -> ChargesOut:
        return cls(
            brokerage=charges.brokerage, stt=charges.stt, exchange=charges.exchange, sebi=charges.sebi,
            gst=charges.gst, stamp=charges.stamp, total=charges.total,
        )


class ExitOut(BaseModel):
    workflow_id: str
    symbol: str
    side: str
    quantity: int
    price: Money
    entry_price: Money
    realized: Money
    exit_reason: str | None
    filled_at: datetime | None


class PnlRowOut(BaseModel):
    date: date
    strategy_id: int
    name: str
    symbol: str
    exchange: str
    product: str
    orders: int = Field(description="executed orders that day (entries and exits)")
    buy_value: Money
    sell_value: Money
    gross: Money = Field(description="realized P&L of the day's exits")
    charges: ChargesOut
    net: Money
    exits: list[ExitOut]


class PnlTotalsOut(BaseModel):
    gross: Money
    charges: Money
    net: Money


class PnlOut(BaseModel):
    date: date | None
    rows: list[PnlRowOut]
    totals: PnlTotalsOut
    rates_as_of: str = RATES_AS_OF
    rates_source: str = RATES_SOURCE


# Scope -------------------------------------------------------------------------------------------------


class Scope:
    """Whose books: one strategy, one broker account, or all of a user's (None: every user, the CLI)."""

    def __init__(self, user_id: int | None = None, strategy_id: int | None = None, account_id: int | None = None):
        if strategy_id is not None and account_id is not None:
            raise InvalidInput("give a strategy or an account, not both")
        self.user_id, self.strategy_id, self.account_id = user_id, strategy_id, account_id


def today_ist() -> date:
    return datetime.now(UTC).astimezone(IST).date()


def _split_key(order_key: str) -> tuple[str, str | None]:
    workflow_id, _, run_id = order_key.partition("/")
    return workflow_id, run_id or None


class TradingViews:
    """Reads the store, and Kite through the account's stored token when asked to compare."""

    def __init__(self, store: Store, settings: Settings, brokers: KiteBrokerFactory | None = None):
        self.store = store
        self.settings = settings
        self._brokers = brokers

    def close(self) -> None:
        if self._brokers is not None:
            self._brokers.close()
            self._brokers = None

    async def _strategies(self, scope: Scope) -> list[StrategyRecord]:
        if scope.strategy_id is not None:
            return [await self.store.get_strategy(scope.strategy_id)]
        strategies = await self.store.list_strategies(user_id=scope.user_id)
        if scope.account_id is not None:
            await self.store.get_broker_account(scope.account_id)  # NotFound names it
            strategies = [s for s in strategies if s.broker_account_id == scope.account_id]
        return strategies

    async def _broker(self, account_id: int) -> Broker:
        try:
            credentials = await self.store.broker_credentials(account_id)
        except Exception as missing:  # CredentialsMissing, NotFound: said as they are
            raise BrokerUnavailable(f"broker account {account_id}: {missing}") from None
        if self._brokers is None:
            self._brokers = KiteBrokerFactory(self.settings)
        return self._brokers.for_credentials(credentials.api_key, credentials.access_token)

    async def _ask(self, account_id: int, what: str, read: str) -> list:
        broker = await self._broker(account_id)
        for attempt in range(RATE_LIMITED_ATTEMPTS):
            try:
                answer: list = await getattr(broker, read)()
                return answer
            except RateLimitedError:
                # Kite allows 10 reads a second per account; the next second has room again.
                if attempt + 1 < RATE_LIMITED_ATTEMPTS:
                    await asyncio.sleep(RATE_LIMITED_PAUSE_SECONDS)
            except BrokerError as failed:
                raise BrokerUnavailable(
                    f"Kite did not answer {what} for account {account_id}: {failed.broker_message or failed.message}"
                ) from None
        raise BrokerUnavailable(f"Kite refused {what} for account {account_id}: too many requests; retry shortly")

    def _accounts(self, scope: Scope, strategies: Iterable[StrategyRecord]) -> list[int]:
        if scope.account_id is not None:
            return [scope.account_id]
        return sorted({strategy.broker_account_id for strategy in strategies})

    # Positions -------------------------------------------------------------------------------------

    async def positions(self, scope: Scope, *, broker: bool = False) -> PositionsOut:
        strategies = await self._strategies(scope)
        rows = [
            StrategyPositionOut(
                strategy_id=s.id, name=s.name, account_id=s.broker_account_id, exchange=s.exchange, symbol=s.symbol,
                product=s.product, position=s.position, open_quantity=s.open_quantity, entry_price=s.entry_price,
                realized_pnl=s.realized_pnl, exit_reason=s.exit_reason,
            )
            for s in strategies
        ]
        # The account's whole holding of each instrument, whichever strategies are shown.
        accounts = self._accounts(scope, strategies)
        held: dict[tuple[int, str, str, str], int] = defaultdict(int)
        for s in await self.store.list_strategies():
            if s.broker_account_id in accounts and s.open_quantity > 0:
                held[(s.broker_account_id, s.exchange, s.symbol, s.product)] += s.open_quantity
        shown = {(s.broker_account_id, s.exchange, s.symbol, s.product) for s in strategies}
        keys = {key for key in held if scope.strategy_id is None or key in shown}
        if scope.strategy_id is not None:
            keys |= shown
        at_broker: dict[tuple[int, str, str, str], tuple[int, Decimal | None, Decimal | None]] = {}
        if broker:
            for account_id in accounts:
                for p in await self._ask(account_id, "positions", "positions"):
                    key = (account_id, p.exchange, p.tradingsymbol, p.product)
                    got, _, made = at_broker.get(key, (0, None, None))
                    at_broker[key] = (got + p.quantity, p.average_price, (made or Decimal(0)) + p.pnl)
                for h in await self._ask(account_id, "holdings", "holdings"):
                    key = (account_id, h.exchange, h.tradingsymbol, "CNC")
                    got, paid, made = at_broker.get(key, (0, None, None))
                    at_broker[key] = (got + h.quantity, paid or h.average_price, made)
            broker_keys = set(at_broker) if scope.strategy_id is None else set(at_broker) & shown
            keys |= {key for key in broker_keys if at_broker[key][0] != 0}
        instruments = []
        for key in sorted(keys):
            account_id, exchange, symbol, product = key
            engine_quantity = held.get(key, 0)
            shown_at_broker: tuple[int | None, Decimal | None, Decimal | None] = (None, None, None)
            if broker:
                shown_at_broker = at_broker.get(key, (0, None, None))
            quantity, price, pnl = shown_at_broker
            instruments.append(
                InstrumentPositionOut(
                    account_id=account_id, exchange=exchange, symbol=symbol, product=product,
                    engine_quantity=engine_quantity, broker_quantity=quantity, broker_average_price=price,
                    broker_pnl=pnl, difference=_quantity_difference(engine_quantity, quantity),
                )
            )
        return PositionsOut(
            broker_checked=broker, strategies=rows, instruments=instruments,
            differences=sum(1 for row in instruments if row.difference),
        )

    # Order book ------------------------------------------------------------------------------------

    def _day(self, day: date | None, broker: bool) -> date:
        today = today_ist()
        chosen = day or today
        if broker and chosen != today:
            raise InvalidInput(f"Kite's books hold today ({today}) only; leave out --broker or the date {chosen}")
        return chosen

    async def _scoped_orders(self, scope: Scope, day: date, filled_only: bool = False) -> list[BookOrder]:
        if scope.strategy_id is not None:
            await self.store.get_strategy(scope.strategy_id)
        if scope.account_id is not None:
            await self.store.get_broker_account(scope.account_id)
        orders = await self.store.book_orders(
            user_id=scope.user_id, strategy_id=scope.strategy_id, account_id=scope.account_id, day=day,
            filled_only=filled_only,
        )
        if scope.strategy_id is not None:
            return [o for o in orders if o.strategy_id == scope.strategy_id]
        return orders

    async def order_book(self, scope: Scope, *, day: date | None = None, broker: bool = False) -> OrderBookOut:
        chosen = self._day(day, broker)
        orders = await self._scoped_orders(scope, chosen)
        kite: dict[str, BrokerOrder] = {}
        broker_only: list[BrokerOrderOut] = []
        if broker:
            strategies = await self._strategies(scope)
            ours = {o.broker_order_id for o in orders if o.broker_order_id}
            for account_id in self._accounts(scope, strategies):
                for row in await self._ask(account_id, "the order book", "orders"):
                    kite[row.order_id] = row
                    # Per strategy, another strategy's or the owner's own orders are not a difference.
                    if row.order_id not in ours and scope.strategy_id is None:
                        broker_only.append(_broker_order_out(row))
        rows = []
        for o in orders:
            workflow_id, run_id = _split_key(o.workflow_id)
            at_kite = kite.get(o.broker_order_id or "") if broker else None
            rows.append(
                OrderRowOut(
                    workflow_id=workflow_id, run_id=run_id, strategy_id=o.strategy_id, account_id=o.account_id,
                    symbol=o.symbol, exchange=o.exchange, product=o.product, side=o.transaction_type,
                    order_type=o.order_type, quantity=o.quantity, filled_quantity=o.filled_quantity,
                    average_price=o.average_price, status=o.status, outcome=o.outcome, exit_reason=o.exit_reason,
                    broker_order_id=o.broker_order_id, created_at=o.created_at, completed_at=o.completed_at,
                    broker=_broker_order_out(at_kite) if at_kite is not None else None,
                    difference=_order_difference(o, at_kite) if broker else None,
                )
            )
        return OrderBookOut(
            date=chosen, broker_checked=broker, orders=rows, broker_only=broker_only,
            differences=sum(1 for row in rows if row.difference) + len(broker_only),
        )

    # Trade book ------------------------------------------------------------------------------------

    async def trade_book(self, scope: Scope, *, day: date | None = None, broker: bool = False) -> TradeBookOut:
        chosen = self._day(day, broker)
        orders = await self._scoped_orders(scope, chosen, filled_only=True)
        fills: dict[str, list[BrokerTrade]] = defaultdict(list)
        broker_only: list[BrokerTradeOut] = []
        if broker:
            strategies = await self._strategies(scope)
            ours = {o.broker_order_id for o in orders if o.broker_order_id}
            for account_id in self._accounts(scope, strategies):
                for trade in await self._ask(account_id, "the trade book", "trades"):
                    fills[trade.order_id].append(trade)
                    if trade.order_id not in ours and scope.strategy_id is None:
                        broker_only.append(_broker_trade_out(trade))
        rows = []
        for o in orders:
            workflow_id, _ = _split_key(o.workflow_id)
            price = o.applied_average_price or o.average_price or Decimal(0)
            broker_quantity: int | None = None
            broker_price: Decimal | None = None
            difference = None
            if broker:
                found = fills.get(o.broker_order_id or "", [])
                broker_quantity = sum(t.quantity for t in found)
                if broker_quantity:
                    broker_price = sum((t.price * t.quantity for t in found), Decimal(0)) / broker_quantity
                    broker_price = readable(broker_price.quantize(Decimal("0.000001")))
                difference = _trade_difference(o.applied_quantity, price, broker_quantity, broker_price)
            rows.append(
                TradeRowOut(
                    workflow_id=workflow_id, strategy_id=o.strategy_id, account_id=o.account_id, symbol=o.symbol,
                    exchange=o.exchange, product=o.product, side=o.transaction_type, order_type=o.order_type,
                    quantity=o.applied_quantity, price=price, exit_reason=o.exit_reason, filled_at=o.filled_at,
                    broker_order_id=o.broker_order_id, broker_quantity=broker_quantity, broker_price=broker_price,
                    difference=difference,
                )
            )
        return TradeBookOut(
            date=chosen, broker_checked=broker, trades=rows, broker_only=broker_only,
            differences=sum(1 for row in rows if row.difference) + len(broker_only),
        )

    # P&L -------------------------------------------------------------------------------------------

    async def pnl(self, scope: Scope, *, day: date | None = None) -> PnlOut:
        if scope.account_id is not None:
            raise InvalidInput("P&L is per strategy: give --strategy, or nothing for all")
        strategies = {s.id: s for s in await self._strategies(scope)}
        realized = await self.store.realized_by_strategy(user_id=scope.user_id, strategy_id=scope.strategy_id)
        rows: list[PnlRowOut] = []
        for strategy_id, (fills, exits) in realized.items():
            strategy = strategies.get(strategy_id) or await self.store.get_strategy(strategy_id)
            days = sorted({ist_day(o.filled_at or o.created_at) for o in fills})
            for each in days:
                if day is not None and each != day:
                    continue
                rows.append(_pnl_row(strategy, each, fills, exits))
        gross = sum((row.gross for row in rows), Decimal("0.00"))
        charges = sum((row.charges.total for row in rows), Decimal("0.00"))
        return PnlOut(date=day, rows=rows, totals=PnlTotalsOut(gross=gross, charges=charges, net=gross - charges))


def _pnl_row(strategy: StrategyRecord, day: date, fills: list[BookOrder], exits: list[RealizedExit]) -> PnlRowOut:
    todays = [o for o in fills if ist_day(o.filled_at or o.created_at) == day]
    executions = [
        Execution(o.transaction_type, o.applied_quantity, o.applied_average_price)
        for o in todays
        if o.applied_average_price is not None
    ]
    try:
        charges = day_charges(strategy.product, strategy.exchange, executions)
    except ChargesError as unknown:
        raise InvalidInput(f"strategy {strategy.id}: {unknown}") from None
    todays_exits = [e for e in exits if ist_day(e.order.filled_at or e.order.created_at) == day]
    gross = sum((e.realized for e in todays_exits), Decimal("0.00"))
    return PnlRowOut(
        date=day, strategy_id=strategy.id, name=strategy.name, symbol=strategy.symbol, exchange=strategy.exchange,
        product=strategy.product, orders=len(executions),
        buy_value=sum((e.price * e.quantity for e in executions if e.side == "BUY"), Decimal("0.00")),
        sell_value=sum((e.price * e.quantity for e in executions if e.side == "SELL"), Decimal("0.00")),
        gross=gross, charges=ChargesOut.of(charges), net=gross - charges.total,
        exits=[
            ExitOut(
                workflow_id=_split_key(e.order.workflow_id)[0], symbol=e.order.symbol, side=e.order.transaction_type,
                quantity=e.quantity, price=e.price, entry_price=e.entry_price, realized=e.realized,
                exit_reason=e.order.exit_reason, filled_at=e.order.filled_at,
            )
            for e in todays_exits
        ],
    )


def _quantity_difference(engine_quantity: int, broker_quantity: int | None) -> str | None:
    if broker_quantity is None or broker_quantity == engine_quantity:
        return None
    if broker_quantity > engine_quantity:
        return f"Kite holds {broker_quantity - engine_quantity} more than the engine's strategies"
    return f"the engine's strategies hold {engine_quantity - broker_quantity} more than Kite"


def _order_difference(order: BookOrder, at_kite: BrokerOrder | None) -> str | None:
    if order.broker_order_id is None:
        return None if order.outcome is not None else "not at Kite yet"
    if at_kite is None:
        return f"broker order {order.broker_order_id} is not in Kite's book"
    found = []
    if at_kite.status != order.status:
        found.append(f"status {order.status} here, {at_kite.status} at Kite")
    if at_kite.filled_quantity != order.filled_quantity:
        found.append(f"filled {order.filled_quantity} here, {at_kite.filled_quantity} at Kite")
    elif order.filled_quantity and order.average_price is not None and at_kite.average_price != order.average_price:
        found.append(f"average {order.average_price} here, {at_kite.average_price} at Kite")
    return "; ".join(found) or None


def _trade_difference(
    quantity: int, price: Decimal, broker_quantity: int | None, broker_price: Decimal | None
) -> str | None:
    if broker_quantity is None:
        return None
    if broker_quantity != quantity:
        return f"{quantity} filled here, {broker_quantity} in Kite's trades"
    if broker_price is not None and broker_price != price:
        return f"price {price} here, {broker_price} in Kite's trades"
    return None


def _broker_order_out(row: BrokerOrder) -> BrokerOrderOut:
    return BrokerOrderOut(
        order_id=row.order_id, status=row.status, symbol=row.tradingsymbol, exchange=row.exchange,
        side=row.transaction_type, product=row.product, quantity=row.quantity, filled_quantity=row.filled_quantity,
        average_price=row.average_price, tag=row.tag,
        timestamp=in_ist(row.exchange_update_timestamp or row.order_timestamp),
    )


def _broker_trade_out(trade: BrokerTrade) -> BrokerTradeOut:
    return BrokerTradeOut(
        trade_id=trade.trade_id, order_id=trade.order_id, symbol=trade.tradingsymbol, exchange=trade.exchange,
        side=trade.transaction_type, product=trade.product, quantity=trade.quantity, price=trade.price,
        filled_at=in_ist(trade.fill_timestamp),
    )
