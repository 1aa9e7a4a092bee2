"""The state file: the order book, accounts, tokens, prices and request log, kept across restarts.

Writes are atomic (a temporary file renamed over the old one) and grouped: changes made while a
write is running go out together in the next one. An order request is answered only after the
write that holds it, so an order id a client saw is never lost to a restart.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from brokers.base import OrderStatus
from brokers.paper.accounts import AccessToken, Account, Holding
from brokers.paper.exchange import Counters, PaperExchange
from brokers.paper.market import Quote
from brokers.paper.orders import FillSettings, Order, OrderState, Trade
from brokers.paper.request_log import RequestLog

log = logging.getLogger(__name__)

STATE_VERSION = 1


class StateFileError(RuntimeError):
    """The state file cannot be read: it names the file and what is wrong with it."""


# ---- snapshot ------------------------------------------------------------------------------------


def snapshot(exchange: PaperExchange, requests: RequestLog) -> dict[str, Any]:
    market = exchange.market
    return {
        "version": STATE_VERSION,
        "counters": vars(exchange.counters).copy(),
        "quotes": {key: _quote_state(quote) for key in market.keys if (quote := market.quote(key))},
        "accounts": [_account_state(account) for account in exchange.accounts.values()],
        "tokens": [
            {"api_key": token.api_key, "issued_at": token.issued_at, "expires_at": token.expires_at,
             "value": token.value}
            for token in exchange.tokens.values()
        ],
        "orders": [_order_state(order) for order in exchange.orders.values()],
        "requests": [record.as_state() for record in requests.records],
    }


def restore(state: dict[str, Any], exchange: PaperExchange, requests: RequestLog) -> None:
    if state.get("version") != STATE_VERSION:
        raise StateFileError(f"state version {state.get('version')!r} is not {STATE_VERSION}")
    exchange.counters = Counters(**state["counters"])
    for key, quote_state in state["quotes"].items():
        instrument_quote = exchange.market.quote(key)
        if instrument_quote is not None:
            exchange.market.restore(key, _quote_from(instrument_quote, quote_state))
    for account_state in state["accounts"]:
        account = _account_from(account_state)
        exchange.accounts[account.api_key] = account
    for token_state in state["tokens"]:
        token = AccessToken(**token_state)
        exchange.tokens[token.value] = token
    for order_state in state["orders"]:
        exchange.adopt(_order_from(order_state))
    requests.restore(state["requests"])


def _quote_state(quote: Quote) -> dict[str, Any]:
    return {
        "last_price": str(quote.last_price), "open": str(quote.open), "high": str(quote.high),
        "low": str(quote.low), "close": str(quote.close), "volume": quote.volume,
        "last_quantity": quote.last_quantity, "last_trade_time": _time(quote.last_trade_time),
        "updated_at": _time(quote.updated_at),
    }


def _quote_from(current: Quote, state: dict[str, Any]) -> Quote:
    return Quote(
        instrument=current.instrument,
        last_price=Decimal(state["last_price"]), open=Decimal(state["open"]), high=Decimal(state["high"]),
        low=Decimal(state["low"]), close=Decimal(state["close"]), volume=state["volume"],
        last_quantity=state["last_quantity"], last_trade_time=_parse_time(state["last_trade_time"]),
        updated_at=_parse_time(state["updated_at"]) or current.updated_at,
    )


def _account_state(account: Account) -> dict[str, Any]:
    return {
        "api_key": account.api_key,
        "user_id": account.user_id,
        "cash": str(account.cash),
        "holdings": [
            {**vars(holding), "average_price": str(holding.average_price)} for holding in account.holdings.values()
        ],
        "order_ids": list(account.order_ids),
        "trades": [_trade_state(trade) for trade in account.trades],
    }


def _account_from(state: dict[str, Any]) -> Account:
    account = Account(api_key=state["api_key"], user_id=state["user_id"], cash=Decimal(state["cash"]))
    for holding_state in state["holdings"]:
        holding = Holding(**{**holding_state, "average_price": Decimal(holding_state["average_price"])})
        account.holdings[f"{holding.exchange}:{holding.tradingsymbol}"] = holding
    account.order_ids = list(state["order_ids"])
    for trade_state in state["trades"]:
        account.apply_trade(_trade_from(trade_state))
    return account


def _trade_state(trade: Trade) -> dict[str, Any]:
    return {**{name: getattr(trade, name) for name in Trade.__dataclass_fields__},
            "price": str(trade.price), "fill_timestamp": _time(trade.fill_timestamp)}


def _trade_from(state: dict[str, Any]) -> Trade:
    return Trade(**{**state, "price": Decimal(state["price"]),
                    "fill_timestamp": _parse_time(state["fill_timestamp"])})


_ORDER_STATIC_FIELDS = (
    "order_id", "api_key", "placed_by", "variety", "exchange", "tradingsymbol", "instrument_token",
    "transaction_type", "product", "market_protection", "tag", "guid", "triggered", "modifications",
)
_STATE_MONEY_FIELDS = ("price", "trigger_price", "average_price")
_STATE_TIME_FIELDS = ("order_timestamp", "exchange_timestamp", "exchange_update_timestamp")


def _order_state(order: Order) -> dict[str, Any]:
    return {
        **{name: getattr(order, name) for name in _ORDER_STATIC_FIELDS},
        "fill_settings": order.fill_settings.as_json(),
        "filled_value": str(order.filled_value),
        "blocked_margin": str(order.blocked_margin),
        "history": [_history_state(state) for state in order.history],
    }


def _order_from(state: dict[str, Any]) -> Order:
    fill = state["fill_settings"]
    order = Order(
        **{name: state[name] for name in _ORDER_STATIC_FIELDS},
        fill_settings=FillSettings(
            delay_seconds=fill["delay_seconds"], partial_fills=fill["partial_fills"],
            partial_interval_seconds=fill["partial_interval_seconds"], fill_ratio=Decimal(fill["fill_ratio"]),
        ),
        filled_value=Decimal(state["filled_value"]),
        blocked_margin=Decimal(state["blocked_margin"]),
    )
    order.history = [_history_from(line) for line in state["history"]]
    return order


def _history_state(state: OrderState) -> dict[str, Any]:
    line: dict[str, Any] = {name: getattr(state, name) for name in OrderState.__dataclass_fields__}
    line["status"] = str(state.status)
    for name in _STATE_MONEY_FIELDS:
        line[name] = str(line[name])
    for name in _STATE_TIME_FIELDS:
        line[name] = _time(line[name])
    return line


def _history_from(line: dict[str, Any]) -> OrderState:
    values = dict(line)
    values["status"] = OrderStatus(values["status"])
    for name in _STATE_MONEY_FIELDS:
        values[name] = Decimal(values[name])
    for name in _STATE_TIME_FIELDS:
        values[name] = _parse_time(values[name])
    return OrderState(**values)


def _time(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def _parse_time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


# ---- the file ------------------------------------------------------------------------------------


class StateFile:
    def __init__(self, path: Path, take_snapshot: Callable[[], dict[str, Any]]):
        self.path = path
        self._take_snapshot = take_snapshot
        self._changes = 0
        self._written = 0
        self._writer: asyncio.Task[None] | None = None
        self._progress = asyncio.Event()

    def read(self) -> dict[str, Any] | None:
        """The saved state, or None when there is no file yet."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        try:
            state = json.loads(text)
        except json.JSONDecodeError as error:
            raise StateFileError(f"{self.path} is not valid JSON ({error}); move it away to start afresh") \
                from None
        if not isinstance(state, dict):
            raise StateFileError(f"{self.path} does not hold a paper broker state; move it away to start afresh")
        return state

    def mark_changed(self) -> None:
        """Note a change; it is written soon, without waiting for it."""
        self._changes += 1
        self._ensure_writer()

    async def flush(self) -> None:
        """Return once everything changed before this call is on disk."""
        target = self._changes
        while self._written < target:
            self._ensure_writer()
            progress = self._progress
            await progress.wait()

    def write_now(self) -> None:
        """Write synchronously (at shutdown, when no loop is left to write on)."""
        self._write(self._serialise())
        self._written = self._changes

    def _ensure_writer(self) -> None:
        if self._writer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop yet: write_now() or the next change on the loop takes care of it
        self._writer = loop.create_task(self._write_pending())

    async def _write_pending(self) -> None:
        try:
            while self._written < self._changes:
                target = self._changes
                # Serialised on the loop, so the snapshot is consistent; written off it.
                text = self._serialise()
                try:
                    await asyncio.to_thread(self._write, text)
                except OSError:
                    log.exception("could not write the state file %s", self.path)
                self._written = target
                self._progress.set()
                self._progress = asyncio.Event()
        finally:
            self._writer = None

    def _serialise(self) -> str:
        return json.dumps(self._take_snapshot(), separators=(",", ":"))

    def _write(self, text: str) -> None:
        temporary = self.path.with_name(self.path.name + ".tmp")
        # The file holds access tokens: readable by its owner only.
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
        os.replace(temporary, self.path)
