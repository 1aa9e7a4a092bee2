"""The simulated exchange and broker back office: accounts, tokens, the order book, fills.

Everything here runs on one event loop thread, so no locks: HTTP handlers call the synchronous
methods, and fills happen in `loop.call_later` callbacks. `on_change(key)` names each piece of
state that changed (the keys below), so the state file can write just that.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from brokers.base import OrderStatus
from brokers.paper.accounts import AMOUNT_QUANTUM, DEFAULT_CASH, AccessToken, Account, Position, margin_rate
from brokers.paper.clock import SimClock, kite_time, next_token_expiry
from brokers.paper.errors import HoldingError, InputError, MarginError, OrderError, TokenError
from brokers.paper.instruments import Instrument, instrument_key
from brokers.paper.market import Market
from brokers.paper.orders import MODIFIABLE, FillSettings, Order, OrderState, Trade
from brokers.paper.params import (
    PRICED_ORDER_TYPES,
    TRIGGERED_ORDER_TYPES,
    ModifyParams,
    PlaceParams,
    check_prices,
)

S = OrderStatus
MAX_MODIFICATIONS = 25
MARKET_PROTECTED_ORDER_TYPES = frozenset({"MARKET", "SL-M"})
CHECKSUM_PATTERN = re.compile(r"[0-9a-f]{64}")
# Kite's request tokens are good for one exchange, within a few minutes of the login.
REQUEST_TOKEN_LIFETIME_SECONDS = 300.0

# State keys for `on_change`.
ALL_STATE = "*"
COUNTERS_KEY = "counters"
TOKENS_KEY = "tokens"
QUOTES_KEY = "quotes"


def account_key(api_key: str) -> str:
    return f"account:{api_key}"


def order_key(order_id: str) -> str:
    return f"order:{order_id}"


def trade_key(trade_id: str) -> str:
    return f"trade:{trade_id}"


@dataclass(frozen=True)
class ExchangeSettings:
    fill: FillSettings = field(default_factory=FillSettings)
    cash: Decimal = DEFAULT_CASH
    # None: tokens live until 06:00 IST the next day, like Kite's.
    token_lifetime_seconds: float | None = None
    # When set, login checksums are verified against it; otherwise any well-formed checksum passes.
    api_secret: str | None = field(default=None, repr=False)
    market_hours: bool = False


@dataclass(frozen=True)
class MarginSummary:
    opening_balance: Decimal
    realised: Decimal
    unrealised: Decimal
    used: Decimal

    @property
    def available(self) -> Decimal:
        return self.opening_balance + self.realised - self.used


@dataclass
class Counters:
    """Sequence numbers; they survive a reset so ids never repeat within one state file."""

    order: int = 0
    trade: int = 0
    user: int = 0


class PaperExchange:
    def __init__(
        self,
        settings: ExchangeSettings,
        market: Market | None = None,
        on_change: Callable[[str], None] = lambda key: None,
    ):
        self.settings = settings
        self.market = market or Market()
        self.fill_settings = settings.fill
        self.on_change = on_change
        self.counters = Counters()
        self.accounts: dict[str, Account] = {}
        self.tokens: dict[str, AccessToken] = {}
        # Request tokens the login page handed out: value → (api_key, issued at); and each app's redirect.
        self.request_tokens: dict[str, tuple[str, float]] = {}
        self.redirect_urls: dict[str, str] = {}
        self.orders: dict[str, Order] = {}
        self.trades: dict[str, Trade] = {}
        # Non-terminal orders, by instrument (for price moves) and by account (for margin).
        self._live_by_instrument: dict[str, set[str]] = {}
        self._live_by_account: dict[str, set[str]] = {}
        self._fill_timers: dict[str, asyncio.TimerHandle] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        # Told the instruments whose quote changed (the ticker streams them).
        self.on_quotes: Callable[[list[str]], None] = lambda keys: None
        self.clock = SimClock()
        # Off: orders are taken at any hour. On: outside 09:15-15:30 IST on weekdays only AMOs are taken.
        self.market_hours = settings.market_hours

    # ---- lifecycle ------------------------------------------------------------------------------

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start matching on `loop`: orders restored from a state file resume where they were."""
        self._loop = loop
        for order in list(self.orders.values()):
            self._evaluate(order)

    def detach(self) -> None:
        for timer in self._fill_timers.values():
            timer.cancel()
        self._fill_timers.clear()
        self._loop = None

    def reset(self) -> None:
        """Forget accounts, tokens and orders; prices and fill settings back to their defaults."""
        for timer in self._fill_timers.values():
            timer.cancel()
        self._fill_timers.clear()
        self.accounts.clear()
        self.tokens.clear()
        self.request_tokens.clear()
        self.orders.clear()
        self.trades.clear()
        self._live_by_instrument.clear()
        self._live_by_account.clear()
        self.market.reset()
        self.fill_settings = self.settings.fill
        self.clock.reset()
        self.market_hours = self.settings.market_hours
        self.on_change(ALL_STATE)

    def adopt(self, order: Order) -> None:
        """Put a restored order back in the book and in its account's."""
        self.orders[order.order_id] = order
        self.accounts[order.api_key].order_ids.append(order.order_id)
        if not order.state.is_terminal:
            self._track_live(order)

    def adopt_trade(self, trade: Trade) -> None:
        self.trades[trade.trade_id] = trade
        self.accounts[trade.api_key].apply_trade(trade)

    # ---- sessions -------------------------------------------------------------------------------

    def issue_request_token(self, api_key: str) -> str:
        """What a successful login on Kite's page hands the redirect: good once, for a few minutes."""
        value = secrets.token_urlsafe(24)
        self.request_tokens[value] = (api_key, self.clock.now().timestamp())
        return value

    def register_redirect(self, api_key: str, redirect_url: str) -> None:
        """The redirect URL of the api_key's app, as registered in Kite's developer console."""
        self.redirect_urls[api_key] = redirect_url

    def _take_request_token(self, api_key: str, request_token: str) -> None:
        issued = self.request_tokens.pop(request_token, None)  # a request token works once
        if issued is None or issued[0] != api_key:
            raise TokenError("Token is invalid or has expired.")
        if self.clock.now().timestamp() - issued[1] > REQUEST_TOKEN_LIFETIME_SECONDS:
            raise TokenError("Token is invalid or has expired.")

    def login(self, api_key: str, request_token: str, checksum: str) -> tuple[Account, AccessToken]:
        """Kite's token exchange of a request token from the login page. An account is opened on an
        api_key's first login."""
        for name, value in (("api_key", api_key), ("request_token", request_token), ("checksum", checksum)):
            if not value:
                raise InputError(f"Missing `{name}`.")
        if not CHECKSUM_PATTERN.fullmatch(checksum):
            raise TokenError("Invalid `checksum`: send sha256(api_key + request_token + api_secret) in hex.")
        secret = self.settings.api_secret
        if secret is not None:
            expected = hashlib.sha256((api_key + request_token + secret).encode()).hexdigest()
            if not hmac.compare_digest(expected, checksum):
                raise TokenError("Invalid `checksum`: it does not match this api_key's api_secret.")
        self._take_request_token(api_key, request_token)
        account = self.accounts.get(api_key) or self._open_account(api_key)
        issued_at = self.clock.now().timestamp()
        lifetime = self.settings.token_lifetime_seconds
        expires_at = next_token_expiry(issued_at) if lifetime is None else issued_at + lifetime
        token = AccessToken(api_key=api_key, issued_at=issued_at, expires_at=expires_at,
                            value=secrets.token_hex(16))
        self.tokens[token.value] = token
        self.on_change(TOKENS_KEY)
        return account, token

    def open_account(self, api_key: str) -> Account:
        return self.accounts.get(api_key) or self._open_account(api_key)

    def _open_account(self, api_key: str) -> Account:
        self.counters.user += 1
        account = Account(api_key=api_key, user_id=f"PA{self.counters.user:04d}", cash=self.settings.cash)
        self.accounts[api_key] = account
        self.on_change(COUNTERS_KEY)
        self.on_change(account_key(api_key))
        return account

    def authenticate(self, api_key: str, access_token: str) -> Account:
        token = self.tokens.get(access_token)
        if token is None or token.api_key != api_key or api_key not in self.accounts:
            raise TokenError("Incorrect `api_key` or `access_token`.")
        if not token.is_valid_at(self.clock.now().timestamp()):
            raise TokenError("Token is invalid or has expired.")
        return self.accounts[api_key]

    def invalidate_token(self, api_key: str, access_token: str) -> None:
        token = self.tokens.get(access_token)
        if token is not None and token.api_key == api_key:
            del self.tokens[access_token]
            self.on_change(TOKENS_KEY)

    def expire_tokens(self, api_key: str | None = None) -> int:
        """End the sessions of one api_key (or all); the next call with them gets TokenException."""
        now = self.clock.now().timestamp()
        expired = 0
        for token in self.tokens.values():
            if (api_key is None or token.api_key == api_key) and token.is_valid_at(now):
                token.expires_at = now
                expired += 1
        self.on_change(TOKENS_KEY)
        return expired

    # ---- orders ---------------------------------------------------------------------------------

    def place_order(self, account: Account, params: PlaceParams, *, reject_message: str | None = None) -> Order:
        """Create the order and take it as far as it goes now: REJECTED, OPEN or TRIGGER PENDING.

        `reject_message` rejects it regardless (a fault injected through the control API).
        """
        now = self.clock.now()
        if self.market_hours and params.variety != "amo" and not self.clock.market_is_open():
            raise InputError(f"Markets are closed right now ({kite_time(now)} IST; NSE trades 09:15-15:30 on "
                             "weekdays). Place an after-market order (variety amo) to queue it for the next session.")
        instrument = self.market.instrument(params.exchange, params.tradingsymbol)
        if instrument is not None:
            _check_ticks(instrument, params.order_type, params.price, params.trigger_price)
            _check_freeze_quantity(instrument, params.quantity)
            _check_trigger_side(params.order_type, params.transaction_type, params.trigger_price,
                                self.market.last_price(instrument))
            if params.product == "CNC" and params.transaction_type == "SELL":
                self._check_holdings(account, instrument, params.quantity)
            self._check_circuit(instrument, params.order_type, params.price, params.trigger_price)
        order_type, price = params.order_type, params.price
        if instrument is not None and order_type == "MARKET" and params.market_protection:
            # As Kite does: a protected market order goes to the exchange as a limit at the protection price.
            order_type = "LIMIT"
            price = self.market.protection_price(instrument, params.transaction_type == "BUY",
                                                 params.market_protection)
        self.counters.order += 1
        self.on_change(COUNTERS_KEY)
        order = Order(
            order_id=f"{now:%y%m%d}{self.counters.order:09d}",
            api_key=account.api_key,
            placed_by=account.user_id,
            variety=params.variety,
            exchange=params.exchange,
            tradingsymbol=params.tradingsymbol,
            instrument_token=instrument.instrument_token if instrument else 0,
            transaction_type=params.transaction_type,
            product=params.product,
            market_protection=params.market_protection or 0,
            tag=params.tag,
            guid=secrets.token_hex(8),
            fill_settings=self.fill_settings,
        )
        order.start(OrderState(
            status=S.PUT_ORDER_REQ_RECEIVED,
            order_type=order_type,
            validity=params.validity,
            quantity=params.quantity,
            disclosed_quantity=params.disclosed_quantity,
            price=price,
            trigger_price=params.trigger_price,
            order_timestamp=now,
        ))
        self.orders[order.order_id] = order
        account.order_ids.append(order.order_id)
        order.advance(S.VALIDATION_PENDING)

        rejection = reject_message or self._rejection(account, order, instrument, params)
        if rejection is not None:
            order.advance(S.REJECTED, status_message=rejection, status_message_raw=rejection,
                          exchange_update_timestamp=now)
            self.on_change(order_key(order.order_id))
            return order

        assert instrument is not None  # a missing instrument is a rejection
        order.blocked_margin = self._required_margin(account, order, instrument, order.state)
        self._track_live(order)
        if params.variety == "amo":
            order.advance(S.AMO_REQ_RECEIVED)
        else:
            order.advance(S.OPEN_PENDING)
            opened = {"exchange_order_id": f"13{self.counters.order:014d}", "exchange_timestamp": now,
                      "exchange_update_timestamp": now}
            if params.order_type in TRIGGERED_ORDER_TYPES:
                order.advance(S.TRIGGER_PENDING, **opened)
            else:
                order.advance(S.OPEN, **opened)
            self._evaluate(order)
        self.on_change(order_key(order.order_id))
        return order

    def _rejection(
        self, account: Account, order: Order, instrument: Instrument | None, params: PlaceParams
    ) -> str | None:
        """Why the order cannot go to the exchange, in Kite's words, or None."""
        if instrument is None:
            return (f"Instrument {instrument_key(params.exchange, params.tradingsymbol)} is not traded "
                    "on this exchange. Check the exchange and trading symbol.")
        if params.order_type in MARKET_PROTECTED_ORDER_TYPES and not params.market_protection:
            return ("Market orders without market protection are not allowed via API. Set "
                    "market_protection to -1 (automatic) or a percentage, or place a LIMIT order.")
        required = self._required_margin(account, order, instrument, order.state)
        available = self.margins(account).available
        if required > available:
            return (f"Insufficient funds. Required margin is {required:.2f} but available margin is "
                    f"{available:.2f}. Check the orderbook for open orders.")
        return None

    def sellable_quantity(self, account: Account, instrument: Instrument, *, besides: str | None = None) -> int:
        """Delivery quantity a CNC sell may use: holdings, plus today's CNC buys (Kite's T1), less open CNC sells."""
        sellable = account.net_quantity(instrument.exchange, instrument.tradingsymbol, "CNC")
        for order_id in self._live_by_account.get(account.api_key, ()):
            order = self.orders[order_id]
            if order_id != besides and order.product == "CNC" and not order.is_buy and \
                    (order.exchange, order.tradingsymbol) == (instrument.exchange, instrument.tradingsymbol):
                sellable -= order.state.pending_quantity
        return max(0, sellable)

    def _check_holdings(self, account: Account, instrument: Instrument, quantity: int,
                        *, besides: str | None = None) -> None:
        sellable = self.sellable_quantity(account, instrument, besides=besides)
        if quantity > sellable:
            raise HoldingError(
                f"Insufficient holdings: you can sell {sellable} of {instrument.tradingsymbol} as delivery (CNC) "
                f"but the order is for {quantity}. Check your holdings and open sell orders, or sell as MIS.")

    def _check_circuit(self, instrument: Instrument, order_type: str, price: Decimal, trigger_price: Decimal) -> None:
        """A price or trigger outside the day's circuit limits could never trade: Kite refuses it."""
        quote = self.market.quote(instrument.key)
        assert quote is not None
        for name, value, needed in (("price", price, order_type in PRICED_ORDER_TYPES),
                                    ("trigger_price", trigger_price, order_type in TRIGGERED_ORDER_TYPES)):
            if not needed:
                continue
            if value < quote.lower_circuit_limit:
                raise InputError(f"Your order {name} ({value}) is lower than the current lower circuit limit of "
                                 f"{quote.lower_circuit_limit}. Place an order within the daily range.")
            if value > quote.upper_circuit_limit:
                raise InputError(f"Your order {name} ({value}) is higher than the current upper circuit limit of "
                                 f"{quote.upper_circuit_limit}. Place an order within the daily range.")

    def _required_margin(
        self, account: Account, order: Order, instrument: Instrument, state: OrderState
    ) -> Decimal:
        """Margin for the part of the order that adds to the position; closing a position is free."""
        if state.order_type in PRICED_ORDER_TYPES:
            reference = state.price
        elif state.order_type == "SL-M":
            reference = state.trigger_price
        else:
            reference = self.market.last_price(instrument)
        held = account.net_quantity(order.exchange, order.tradingsymbol, order.product)
        offsetting = max(0, -held) if order.is_buy else max(0, held)
        adding = max(0, state.quantity - offsetting)
        return (adding * reference * margin_rate(order.product)).quantize(AMOUNT_QUANTUM)

    def modify_order(self, account: Account, variety: str, order_id: str, params: ModifyParams) -> Order:
        order = self.order(account, order_id)
        _check_variety(order, variety)
        state = order.state
        if state.status not in MODIFIABLE:
            raise OrderError(f"Order {order_id} cannot be modified: it is {state.status}.")
        if order.modifications >= MAX_MODIFICATIONS:
            raise OrderError(f"Maximum allowed order modifications ({MAX_MODIFICATIONS}) exceeded.")

        quantity = params.quantity if params.quantity is not None else state.quantity
        order_type = params.order_type or state.order_type
        price = params.price if params.price is not None else state.price
        trigger_price = params.trigger_price if params.trigger_price is not None else state.trigger_price
        if quantity <= state.filled_quantity:
            raise InputError(f"Invalid `quantity` {quantity}: {state.filled_quantity} are already filled; "
                             "send a larger quantity or cancel the order.")
        check_prices(order_type, order.transaction_type, price, trigger_price)
        instrument = self.market.instrument(order.exchange, order.tradingsymbol)
        assert instrument is not None  # only placed orders of known instruments are live
        _check_ticks(instrument, order_type, price, trigger_price)
        _check_freeze_quantity(instrument, quantity)
        if order.product == "CNC" and not order.is_buy and quantity > state.quantity:
            self._check_holdings(account, instrument, quantity - state.filled_quantity, besides=order.order_id)
        if not (order.triggered and state.order_type in TRIGGERED_ORDER_TYPES):
            # A stop still to fire (or becoming one) must be on the far side of the price.
            _check_trigger_side(order_type, order.transaction_type, trigger_price, self.market.last_price(instrument))
        market_protection = params.market_protection if params.market_protection is not None \
            else order.market_protection
        if order_type in MARKET_PROTECTED_ORDER_TYPES and not market_protection:
            raise InputError("Market orders without market protection are not allowed via API. Send "
                             "market_protection -1 (automatic) or a percentage with the modification.")
        self._check_circuit(instrument, order_type, price, trigger_price)
        if order_type == "MARKET":
            order_type = "LIMIT"
            price = self.market.protection_price(instrument, order.is_buy, market_protection)

        now = self.clock.now()
        changes: dict[str, Any] = {
            "quantity": quantity, "order_type": order_type, "price": price, "trigger_price": trigger_price,
            "validity": params.validity or state.validity,
            "disclosed_quantity": params.disclosed_quantity if params.disclosed_quantity is not None
            else state.disclosed_quantity,
        }
        blocked = self._required_margin(account, order, instrument, replace(state, **changes))
        # The unfilled part needs margin; what this order holds already counts as available.
        required = blocked * (quantity - state.filled_quantity) / quantity
        available = self.margins(account).available + order.outstanding_margin()
        if required > available:
            raise MarginError(f"Insufficient funds. Required margin is {required:.2f} but available margin is "
                              f"{available:.2f}. Check the orderbook for open orders.")

        self._cancel_fill_timer(order)
        order.modifications += 1
        order.market_protection = market_protection
        order.blocked_margin = blocked
        order.advance(S.MODIFY_VALIDATION_PENDING, order_timestamp=now)
        order.advance(S.MODIFY_PENDING)
        if state.status == S.AMO_REQ_RECEIVED:
            back = S.AMO_REQ_RECEIVED
        elif order_type in TRIGGERED_ORDER_TYPES and not (order.triggered and state.order_type in
                                                          TRIGGERED_ORDER_TYPES):
            order.triggered = False
            back = S.TRIGGER_PENDING
        else:
            back = S.OPEN
        exchange_times = {} if back == S.AMO_REQ_RECEIVED else {"exchange_timestamp": now,
                                                                "exchange_update_timestamp": now}
        order.advance(S.MODIFIED, modified=True, **changes, **exchange_times)
        order.advance(back)
        self._evaluate(order)
        self.on_change(order_key(order.order_id))
        return order

    def cancel_order(self, account: Account, variety: str, order_id: str) -> Order:
        """Cancel what is not filled yet; a partial fill stays (CANCELLED with filled_quantity > 0)."""
        order = self.order(account, order_id)
        _check_variety(order, variety)
        state = order.state
        if state.status not in MODIFIABLE:
            raise OrderError(f"Order {order_id} cannot be cancelled: it is {state.status}.")
        self._cancel_fill_timer(order)
        now = self.clock.now()
        order.advance(S.CANCEL_PENDING, exchange_update_timestamp=now)
        order.advance(S.CANCELLED, cancelled_quantity=state.quantity - state.filled_quantity,
                      exchange_update_timestamp=now)
        self._retire(order)
        self.on_change(order_key(order.order_id))
        return order

    def end_of_day(self) -> dict[str, list[str]]:
        """The close: open DAY orders lapse (CANCELLED), then every open MIS position is squared off at the
        last price by a MARKET order of the broker's own (tag `SQUAREOFF`), as Zerodha's RMS does."""
        now = self.clock.now()
        expired = []
        for order_id in sorted({order_id for ids in self._live_by_account.values() for order_id in ids}):
            order = self.orders[order_id]
            state = order.state
            if state.status == S.AMO_REQ_RECEIVED:
                continue  # an after-market order waits for the next session
            self._cancel_fill_timer(order)
            order.advance(S.CANCEL_PENDING, exchange_update_timestamp=now)
            order.advance(S.CANCELLED, cancelled_quantity=state.quantity - state.filled_quantity,
                          status_message="Order lapsed at the end of the day.", exchange_update_timestamp=now)
            self._retire(order)
            self.on_change(order_key(order_id))
            expired.append(order_id)
        squared_off = []
        for account in self.accounts.values():
            for position in list(account.positions.values()):
                instrument = self.market.instrument(position.exchange, position.tradingsymbol)
                if position.product != "MIS" or position.quantity == 0 or instrument is None:
                    continue
                squared_off.append(self._square_off(account, position.quantity, instrument).order_id)
        return {"expired": expired, "squared_off": squared_off}

    def _square_off(self, account: Account, quantity: int, instrument: Instrument) -> Order:
        now = self.clock.now()
        self.counters.order += 1
        order = Order(
            order_id=f"{now:%y%m%d}{self.counters.order:09d}", api_key=account.api_key, placed_by=account.user_id,
            variety="regular", exchange=instrument.exchange, tradingsymbol=instrument.tradingsymbol,
            instrument_token=instrument.instrument_token, transaction_type="SELL" if quantity > 0 else "BUY",
            product="MIS", market_protection=-1, tag="SQUAREOFF", guid=secrets.token_hex(8),
            fill_settings=self.fill_settings,
        )
        order.start(OrderState(status=S.PUT_ORDER_REQ_RECEIVED, order_type="MARKET", validity="DAY",
                               quantity=abs(quantity), disclosed_quantity=0, price=Decimal(0),
                               trigger_price=Decimal(0), order_timestamp=now))
        self.orders[order.order_id] = order
        account.order_ids.append(order.order_id)
        order.advance(S.VALIDATION_PENDING)
        order.advance(S.OPEN_PENDING)
        order.advance(S.OPEN, exchange_order_id=f"13{self.counters.order:014d}", exchange_timestamp=now,
                      exchange_update_timestamp=now, status_message="Squared off by the broker at the close (MIS).")
        self._track_live(order)
        self._fill(order, instrument, abs(quantity), self.market.last_price(instrument))
        self.on_change(COUNTERS_KEY)
        self.on_change(order_key(order.order_id))
        return order

    def order(self, account: Account, order_id: str) -> Order:
        """One of the account's orders; another account's order is as unknown as a missing one."""
        order = self.orders.get(order_id)
        if order is None or order.api_key != account.api_key:
            raise InputError(f"Couldn't find that `order_id` ({order_id}) in this account's order book.")
        return order

    def orders_of(self, account: Account) -> list[Order]:
        return [self.orders[order_id] for order_id in account.order_ids]

    def trades_of(self, account: Account, order_id: str | None = None) -> list[Trade]:
        if order_id is None:
            return list(account.trades)
        self.order(account, order_id)
        return [trade for trade in account.trades if trade.order_id == order_id]

    def positions_of(self, account: Account) -> list[Position]:
        return list(account.positions.values())

    def margins(self, account: Account) -> MarginSummary:
        orders_margin = sum(
            (self.orders[order_id].outstanding_margin() for order_id in self._live_by_account.get(
                account.api_key, ())),
            Decimal(0),
        )
        unrealised = Decimal(0)
        for position in account.positions.values():
            instrument = self.market.instrument(position.exchange, position.tradingsymbol)
            if instrument is not None:
                unrealised += position.pnl(self.market.last_price(instrument)) - position.realised
        return MarginSummary(
            opening_balance=account.cash,
            realised=account.realised_pnl.quantize(AMOUNT_QUANTUM),
            unrealised=unrealised.quantize(AMOUNT_QUANTUM),
            used=(account.position_margin + orders_margin).quantize(AMOUNT_QUANTUM),
        )

    # ---- prices and fills -----------------------------------------------------------------------

    def set_prices(self, prices: Mapping[str, object]) -> list[str]:
        """Set last prices; resting LIMIT and stop-loss orders of those instruments are re-checked."""
        moved = self.market.set_prices(prices)
        self.reprice(moved)
        return moved

    def reprice(self, keys: Iterable[str]) -> None:
        moved = list(keys)
        for key in moved:
            for order_id in sorted(self._live_by_instrument.get(key, ())):
                self._evaluate(self.orders[order_id])
        if moved:
            self.on_change(QUOTES_KEY)
            self.on_quotes(moved)

    def _evaluate(self, order: Order) -> None:
        """Trigger, schedule fills for, or expire (IOC) a live order, as the last price allows."""
        before = len(order.history)
        self._trigger_or_fill(order)
        if len(order.history) != before:
            self.on_change(order_key(order.order_id))

    def _trigger_or_fill(self, order: Order) -> None:
        state = order.state
        if state.is_terminal or self._loop is None:
            return
        instrument = self.market.instrument(order.exchange, order.tradingsymbol)
        if instrument is None:
            return
        last_price = self.market.last_price(instrument)
        if state.status == S.TRIGGER_PENDING:
            if not _trigger_hit(order, last_price):
                return
            order.triggered = True
            state = order.advance(S.OPEN, exchange_update_timestamp=self.clock.now())
        if state.status != S.OPEN or order.order_id in self._fill_timers:
            return
        if state.filled_quantity < order.fill_target and _marketable(order, last_price):
            self._schedule_fill(order, order.fill_settings.delay_seconds)
        elif state.validity == "IOC":
            self._expire_remainder(order)

    def _schedule_fill(self, order: Order, delay: float) -> None:
        assert self._loop is not None
        self._fill_timers[order.order_id] = self._loop.call_later(delay, self._fill_step, order.order_id)

    def _cancel_fill_timer(self, order: Order) -> None:
        timer = self._fill_timers.pop(order.order_id, None)
        if timer is not None:
            timer.cancel()

    def _fill_step(self, order_id: str) -> None:
        """One trade of a fill schedule; the next one follows after the partial-fill interval."""
        self._fill_timers.pop(order_id, None)
        order = self.orders.get(order_id)
        if order is None or order.state.status != S.OPEN:
            return
        instrument = self.market.instrument(order.exchange, order.tradingsymbol)
        assert instrument is not None
        last_price = self.market.last_price(instrument)
        state = order.state
        quantity = min(order.fill_settings.chunk_quantity(order.fill_target),
                       order.fill_target - state.filled_quantity)
        if quantity > 0 and _marketable(order, last_price):
            self._fill(order, instrument, quantity, last_price)
            state = order.state
            if state.status == S.OPEN and state.filled_quantity < order.fill_target \
                    and _marketable(order, last_price):
                self._schedule_fill(order, order.fill_settings.partial_interval_seconds)
        if order.state.status == S.OPEN and order.order_id not in self._fill_timers \
                and order.state.validity == "IOC":
            self._expire_remainder(order)
        self.on_change(order_key(order_id))

    def _fill(self, order: Order, instrument: Instrument, quantity: int, price: Decimal) -> None:
        now = self.clock.now()
        state = order.state
        self.counters.trade += 1
        trade = Trade(
            trade_id=str(10_000_000 + self.counters.trade),
            order_id=order.order_id,
            api_key=order.api_key,
            exchange=order.exchange,
            tradingsymbol=order.tradingsymbol,
            instrument_token=order.instrument_token,
            product=order.product,
            transaction_type=order.transaction_type,
            quantity=quantity,
            price=price,
            exchange_order_id=state.exchange_order_id or "",
            fill_timestamp=now,
        )
        self.trades[trade.trade_id] = trade
        self.accounts[order.api_key].apply_trade(trade)
        self.market.record_trade(instrument, quantity, now)
        self.on_quotes([instrument.key])
        for key in (COUNTERS_KEY, QUOTES_KEY, trade_key(trade.trade_id)):
            self.on_change(key)
        order.filled_value += price * quantity
        filled = state.filled_quantity + quantity
        status = S.COMPLETE if filled == state.quantity else S.OPEN
        order.advance(status, filled_quantity=filled, average_price=order.average_price_after(filled),
                      exchange_update_timestamp=now)
        if status == S.COMPLETE:
            self._retire(order)

    def _expire_remainder(self, order: Order) -> None:
        state = order.state
        order.advance(S.CANCELLED, cancelled_quantity=state.quantity - state.filled_quantity,
                      status_message="IOC order: the unfilled quantity was cancelled.",
                      exchange_update_timestamp=self.clock.now())
        self._retire(order)

    def _track_live(self, order: Order) -> None:
        key = instrument_key(order.exchange, order.tradingsymbol)
        self._live_by_instrument.setdefault(key, set()).add(order.order_id)
        self._live_by_account.setdefault(order.api_key, set()).add(order.order_id)

    def _retire(self, order: Order) -> None:
        self._cancel_fill_timer(order)
        key = instrument_key(order.exchange, order.tradingsymbol)
        self._live_by_instrument.get(key, set()).discard(order.order_id)
        self._live_by_account.get(order.api_key, set()).discard(order.order_id)


def _marketable(order: Order, last_price: Decimal) -> bool:
    state = order.state
    if state.order_type == "MARKET" or state.order_type == "SL-M":
        return True
    return last_price <= state.price if order.is_buy else last_price >= state.price


def _trigger_hit(order: Order, last_price: Decimal) -> bool:
    trigger = order.state.trigger_price
    return last_price >= trigger if order.is_buy else last_price <= trigger


def _check_ticks(instrument: Instrument, order_type: str, price: Decimal, trigger_price: Decimal) -> None:
    for name, value, needed in (("price", price, order_type in PRICED_ORDER_TYPES),
                                ("trigger_price", trigger_price, order_type in TRIGGERED_ORDER_TYPES)):
        if needed and not instrument.on_tick(value):
            raise InputError(f"Tick size for this script is {instrument.tick_size}. Kindly enter the "
                             f"`{name}` ({value}) in multiples of the tick size.")


def _check_freeze_quantity(instrument: Instrument, quantity: int) -> None:
    if quantity > instrument.freeze_quantity:
        raise InputError(f"Quantity {quantity} exceeds the freeze quantity of {instrument.freeze_quantity} for "
                         f"{instrument.tradingsymbol}. Place it in orders of at most {instrument.freeze_quantity}.")


def _check_trigger_side(order_type: str, transaction_type: str, trigger_price: Decimal, last_price: Decimal) -> None:
    """A stop fires when the price crosses it: one already crossed would fire at once, so Kite refuses it."""
    if order_type not in TRIGGERED_ORDER_TYPES:
        return
    if transaction_type == "SELL" and trigger_price >= last_price:
        raise InputError(f"Trigger price for stoploss sell orders should be lower than the last traded price "
                         f"({last_price}). Check the trigger_price ({trigger_price}).")
    if transaction_type == "BUY" and trigger_price <= last_price:
        raise InputError(f"Trigger price for stoploss buy orders should be higher than the last traded price "
                         f"({last_price}). Check the trigger_price ({trigger_price}).")


def _check_variety(order: Order, variety: str) -> None:
    if order.variety != variety:
        raise InputError(f"Order {order.order_id} is a {order.variety} order, not {variety}: "
                         f"use /orders/{order.variety}/{order.order_id}.")

