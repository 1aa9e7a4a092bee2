"""The state file: the order book, accounts, tokens, prices and request log, kept across restarts.

Writes are grouped: changes made while a write is running go out together in the next one. An
order request is answered only after the write that holds it, so an order id a client saw is never
lost to a restart.
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
from brokers.paper.exchange import (
    ALL_STATE,
    COUNTERS_KEY,
    QUOTES_KEY,
    TOKENS_KEY,
    Counters,
    PaperExchange,
    account_key,
    order_key,
    trade_key,
)
from brokers.paper.market import Quote
from brokers.paper.orders import FillSettings, Order, OrderState, Trade
from brokers.paper.request_log import RequestLog, request_key

log = logging.getLogger(__name__)

HEADER = {"paper_broker_state": 1}
# A journal shorter than this is never compacted.
COMPACT_MIN_LINES = 10_000


class StateFileError(RuntimeError):
    """The state file cannot be read: it names the file and what is wrong with it."""


# ---- records: one JSON value per state key ---------------------------------------------------------


def record_for(key: str, exchange: PaperExchange, requests: RequestLog) -> Any | None:
    """The saved form of one state key, or None when it no longer exists."""
    kind, _, name = key.partition(":")
    if key == COUNTERS_KEY:
        return vars(exchange.counters).copy()
    if key == TOKENS_KEY:
        return [
            {"api_key": token.api_key, "issued_at": token.issued_at, "expires_at": token.expires_at,
             "value": token.value}
            for token in exchange.tokens.values()
        ]
    if key == QUOTES_KEY:
        market = exchange.market
        return {key: _quote_state(quote) for key in market.keys if (quote := market.quote(key))}
    if kind == "account":
        account = exchange.accounts.get(name)
        return _account_state(account) if account else None
    if kind == "order":
        order = exchange.orders.get(name)
        return _order_state(order) if order else None
    if kind == "trade":
        trade = exchange.trades.get(name)
        return _trade_state(trade) if trade else None
    if kind == "request":
        seq = int(name)
        return requests.records[seq - 1].as_state() if seq <= len(requests.records) else None
    raise ValueError(f"unknown state key {key!r}")


def all_keys(exchange: PaperExchange, requests: RequestLog) -> list[str]:
    """Every state key, each kind in the order its items were made."""
    return [
        COUNTERS_KEY, TOKENS_KEY, QUOTES_KEY,
        *(account_key(api_key) for api_key in exchange.accounts),
        *(order_key(order_id) for order_id in exchange.orders),
        *(trade_key(trade_id) for trade_id in exchange.trades),
        *(request_key(record.seq) for record in requests.records),
    ]


def restore(records: dict[str, Any], exchange: PaperExchange, requests: RequestLog) -> None:
    """Rebuild the state from its records (in the order they were first written)."""
    by_kind: dict[str, list[Any]] = {}
    for key, value in records.items():
        by_kind.setdefault(key.partition(":")[0], []).append(value)
    if COUNTERS_KEY in records:
        exchange.counters = Counters(**records[COUNTERS_KEY])
    for key, quote_state in records.get(QUOTES_KEY, {}).items():
        current = exchange.market.quote(key)
        if current is not None:
            exchange.market.restore(key, _quote_from(current, quote_state))
    for token_state in records.get(TOKENS_KEY, []):
        token = AccessToken(**token_state)
        exchange.tokens[token.value] = token
    for account_state in by_kind.get("account", []):
        account = _account_from(account_state)
        exchange.accounts[account.api_key] = account
    for order_state in by_kind.get("order", []):
        exchange.adopt(_order_from(order_state))
    for trade_state in by_kind.get("trade", []):
        exchange.adopt_trade(_trade_from(trade_state))
    requests.restore(by_kind.get("request", []))


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
    """The account itself; its orders and trades are records of their own."""
    return {
        "api_key": account.api_key,
        "user_id": account.user_id,
        "cash": str(account.cash),
        "holdings": [
            {**vars(holding), "average_price": str(holding.average_price)} for holding in account.holdings.values()
        ],
    }


def _account_from(state: dict[str, Any]) -> Account:
    account = Account(api_key=state["api_key"], user_id=state["user_id"], cash=Decimal(state["cash"]))
    for holding_state in state["holdings"]:
        holding = Holding(**{**holding_state, "average_price": Decimal(holding_state["average_price"])})
        account.holdings[f"{holding.exchange}:{holding.tradingsymbol}"] = holding
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


# ---- the file -------------------------------------------------------------------------------------


class StateFile:
    """A journal of JSON lines: a header, then `[key, record]` lines; the last line of a key wins.

    Each write appends the records that changed since the last one, so a write costs what changed,
    not the size of the book. The file is rewritten whole (atomically) at start, after a reset, and
    when the journal has grown to several times the live state.
    """

    def __init__(self, path: Path, record_for: Callable[[str], Any], all_keys: Callable[[], list[str]]):
        self.path = path
        self._record_for = record_for
        self._all_keys = all_keys
        self._pending: dict[str, None] = {}  # changed keys, in order (a dict as an ordered set)
        self._rewrite = False
        self._changes = 0
        self._written = 0
        self._lines_in_file = 0
        self._lines_after_rewrite = 0
        self._writer: asyncio.Task[None] | None = None
        self._progress = asyncio.Event()

    def read(self) -> dict[str, Any] | None:
        """Every key's last record, or None when there is no file yet."""
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return None
        if not lines or _parse_line(lines[0]) != HEADER:
            raise StateFileError(f"{self.path} does not hold a paper broker state; move it away to start afresh")
        records: dict[str, Any] = {}
        for number, line in enumerate(lines[1:], start=2):
            entry = _parse_line(line)
            if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)):
                if number == len(lines):
                    log.warning("%s: ignoring a cut-off last line (a write was interrupted)", self.path)
                    break
                raise StateFileError(f"{self.path} line {number} is damaged; move the file away to start afresh")
            key, value = entry
            if value is None:
                records.pop(key, None)
            else:
                records[key] = value
        return records

    def rewrite_now(self) -> None:
        """Write the whole state synchronously (at start, to compact what was read)."""
        self._pending.clear()
        self._rewrite = False
        self._write_whole(self._whole_text())
        self._written = self._changes

    def mark_changed(self, key: str) -> None:
        """Note a change; it is written soon, without waiting for it."""
        if key == ALL_STATE:
            self._rewrite = True
        else:
            self._pending[key] = None
        self._changes += 1
        self._ensure_writer()

    async def flush(self) -> None:
        """Return once everything changed before this call is on disk."""
        target = self._changes
        while self._written < target:
            self._ensure_writer()
            await self._progress.wait()

    def _ensure_writer(self) -> None:
        if self._writer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # not serving yet: the next change on the loop writes this one too
        self._writer = loop.create_task(self._write_pending())

    async def _write_pending(self) -> None:
        try:
            while self._written < self._changes:
                target = self._changes
                # Records are taken on the loop, so they are consistent; the disk work happens off it.
                if self._rewrite or self._lines_in_file > max(COMPACT_MIN_LINES, 4 * self._lines_after_rewrite):
                    self._pending.clear()
                    self._rewrite = False
                    write, text = self._write_whole, self._whole_text()
                else:
                    keys, self._pending = list(self._pending), {}
                    write, text = self._append, "".join(self._line(key) for key in keys)
                try:
                    await asyncio.to_thread(write, text)
                except OSError:
                    log.exception("could not write the state file %s", self.path)
                self._written = target
                self._progress.set()
                self._progress = asyncio.Event()
        finally:
            self._writer = None

    def _line(self, key: str) -> str:
        return json.dumps([key, self._record_for(key)], separators=(",", ":")) + "\n"

    def _whole_text(self) -> str:
        return json.dumps(HEADER) + "\n" + "".join(self._line(key) for key in self._all_keys())

    def _write_whole(self, text: str) -> None:
        temporary = self.path.with_name(self.path.name + ".tmp")
        # The file holds access tokens: readable by its owner only.
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
        os.replace(temporary, self.path)
        self._lines_in_file = self._lines_after_rewrite = text.count("\n")

    def _append(self, text: str) -> None:
        with self.path.open("a") as handle:
            handle.write(text)
        self._lines_in_file += text.count("\n")


def _parse_line(line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None
