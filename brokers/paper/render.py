"""Kite Connect's response shapes: field names, types and timestamp formats (see kite-mocks)."""

from __future__ import annotations

import csv
import io
import json
import secrets
from decimal import Decimal
from typing import Any

from brokers.paper.accounts import AccessToken, Account, Holding, Position
from brokers.paper.clock import kite_clock_time, kite_time
from brokers.paper.exchange import MarginSummary
from brokers.paper.market import Quote
from brokers.paper.orders import Order, OrderState, Trade

EXCHANGES = ["NSE", "NFO", "BFO", "CDS", "BSE", "MCX", "BCD", "MF"]
PRODUCTS = ["CNC", "NRML", "MIS", "BO", "CO"]
ORDER_TYPES = ["MARKET", "LIMIT", "SL", "SL-M"]
DEPTH_LEVELS = 5


def json_bytes(payload: Any) -> bytes:
    """JSON with money as numbers, like Kite.

    Prices are in paise (average prices to 4 places), well inside a float's 15 significant digits,
    so the number the client parses prints back as the same decimal.
    """
    return json.dumps(payload, default=_encode_decimal, separators=(",", ":")).encode()


def _encode_decimal(value: object) -> float:
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def order_json(order: Order, state: OrderState | None = None) -> dict[str, Any]:
    """One order as `GET /orders` shows it; `state` picks a line of its history."""
    state = state or order.state
    return {
        "account_id": order.placed_by,
        "placed_by": order.placed_by,
        "order_id": order.order_id,
        "exchange_order_id": state.exchange_order_id,
        "parent_order_id": None,
        "status": str(state.status),
        "status_message": state.status_message,
        "status_message_raw": state.status_message_raw,
        "order_timestamp": kite_time(state.order_timestamp),
        "exchange_update_timestamp": kite_time(state.exchange_update_timestamp),
        "exchange_timestamp": kite_time(state.exchange_timestamp),
        "variety": order.variety,
        "modified": state.modified,
        "exchange": order.exchange,
        "tradingsymbol": order.tradingsymbol,
        "instrument_token": order.instrument_token,
        "order_type": state.order_type,
        "transaction_type": order.transaction_type,
        "validity": state.validity,
        "validity_ttl": 0,
        "product": order.product,
        "quantity": state.quantity,
        "disclosed_quantity": state.disclosed_quantity,
        "price": state.price,
        "trigger_price": state.trigger_price,
        "average_price": state.average_price,
        "filled_quantity": state.filled_quantity,
        "pending_quantity": state.pending_quantity,
        "cancelled_quantity": state.cancelled_quantity,
        "market_protection": order.market_protection,
        "meta": {},
        "tag": order.tag,
        "tags": [order.tag] if order.tag else [],
        "guid": order.guid,
    }


def order_json_bytes(order: Order) -> bytes:
    """The order's latest state as JSON, made once per state."""
    cached = order.wire_cache
    if cached is None or cached[0] != len(order.history):
        cached = (len(order.history), json_bytes(order_json(order)))
        order.wire_cache = cached
    return cached[1]


def trade_json(trade: Trade) -> dict[str, Any]:
    return {
        "trade_id": trade.trade_id,
        "order_id": trade.order_id,
        "exchange": trade.exchange,
        "tradingsymbol": trade.tradingsymbol,
        "instrument_token": trade.instrument_token,
        "product": trade.product,
        "average_price": trade.price,
        "quantity": trade.quantity,
        "exchange_order_id": trade.exchange_order_id,
        "transaction_type": trade.transaction_type,
        "fill_timestamp": kite_time(trade.fill_timestamp),
        # Kite sends only the time of day here.
        "order_timestamp": kite_clock_time(trade.fill_timestamp),
        "exchange_timestamp": kite_time(trade.fill_timestamp),
    }


def position_json(position: Position, last_price: Decimal, close_price: Decimal) -> dict[str, Any]:
    pnl = position.pnl(last_price)
    realised = position.realised
    return {
        "tradingsymbol": position.tradingsymbol,
        "exchange": position.exchange,
        "instrument_token": position.instrument_token,
        "product": position.product,
        "quantity": position.quantity,
        "overnight_quantity": 0,
        "multiplier": 1,
        "average_price": _money4(position.average_price),
        "close_price": close_price,
        "last_price": last_price,
        "value": position.sell_value - position.buy_value,
        "pnl": _money(pnl),
        "m2m": _money(pnl),
        "unrealised": _money(pnl - realised),
        "realised": _money(realised),
        "buy_quantity": position.buy_quantity,
        "buy_price": _money4(position.buy_price),
        "buy_value": position.buy_value,
        "buy_m2m": position.buy_value,
        "sell_quantity": position.sell_quantity,
        "sell_price": _money4(position.sell_price),
        "sell_value": position.sell_value,
        "sell_m2m": position.sell_value,
        "day_buy_quantity": position.buy_quantity,
        "day_buy_price": _money4(position.buy_price),
        "day_buy_value": position.buy_value,
        "day_sell_quantity": position.sell_quantity,
        "day_sell_price": _money4(position.sell_price),
        "day_sell_value": position.sell_value,
    }


def holding_json(holding: Holding, quote: Quote | None) -> dict[str, Any]:
    last_price = quote.last_price if quote else holding.average_price
    close_price = quote.close if quote else holding.average_price
    day_change = last_price - close_price
    return {
        "tradingsymbol": holding.tradingsymbol,
        "exchange": holding.exchange,
        "instrument_token": holding.instrument_token,
        "isin": holding.isin,
        "product": "CNC",
        "price": 0,
        "quantity": holding.quantity,
        "used_quantity": 0,
        "t1_quantity": 0,
        "realised_quantity": holding.quantity,
        "authorised_quantity": 0,
        "authorised_date": None,
        "authorisation": {},
        "opening_quantity": holding.quantity,
        "short_quantity": 0,
        "collateral_quantity": 0,
        "collateral_type": "",
        "discrepancy": False,
        "average_price": holding.average_price,
        "last_price": last_price,
        "close_price": close_price,
        "pnl": _money((last_price - holding.average_price) * holding.quantity),
        "day_change": day_change,
        "day_change_percentage": _money4(day_change / close_price * 100) if close_price else 0,
        "mtf": {"quantity": 0, "used_quantity": 0, "average_price": 0, "value": 0, "initial_margin": 0},
    }


def profile_json(account: Account) -> dict[str, Any]:
    return {
        "user_id": account.user_id,
        "user_type": "individual",
        "email": account.email,
        "user_name": account.user_name,
        "user_shortname": account.user_name.split()[-1],
        "broker": "ZERODHA",
        "exchanges": EXCHANGES,
        "products": PRODUCTS,
        "order_types": ORDER_TYPES,
        "avatar_url": None,
        "meta": {"demat_consent": "physical"},
    }


def session_json(account: Account, token: AccessToken, login_time: str) -> dict[str, Any]:
    return {
        **profile_json(account),
        "api_key": account.api_key,
        "access_token": token.value,
        "public_token": secrets.token_hex(16),
        "enctoken": "",
        "refresh_token": "",
        "silo": "",
        "login_time": login_time,
    }


def margins_json(summary: MarginSummary) -> dict[str, Any]:
    return {"equity": segment_json(summary), "commodity": segment_json(None)}


def segment_json(summary: MarginSummary | None) -> dict[str, Any]:
    """One margin segment; None is a segment the account does not trade (commodity)."""
    zero = Decimal(0)
    opening = summary.opening_balance if summary else zero
    available = summary.available if summary else zero
    return {
        "enabled": summary is not None,
        "net": available,
        "available": {
            "adhoc_margin": 0,
            "cash": opening,
            "opening_balance": opening,
            "live_balance": available,
            "collateral": 0,
            "intraday_payin": 0,
        },
        "utilised": {
            "debits": summary.used if summary else zero,
            "exposure": 0,
            "m2m_realised": summary.realised if summary else zero,
            "m2m_unrealised": summary.unrealised if summary else zero,
            "option_premium": 0,
            "payout": 0,
            "span": 0,
            "holding_sales": 0,
            "turnover": 0,
            "liquid_collateral": 0,
            "stock_collateral": 0,
            "delivery": 0,
        },
    }


def ltp_json(quote: Quote) -> dict[str, Any]:
    return {"instrument_token": quote.instrument.instrument_token, "last_price": quote.last_price}


def ohlc_json(quote: Quote) -> dict[str, Any]:
    return {**ltp_json(quote), "ohlc": _ohlc(quote)}


def quote_json(quote: Quote) -> dict[str, Any]:
    tick = quote.instrument.tick_size
    last_trade_time = quote.last_trade_time or quote.updated_at
    return {
        "instrument_token": quote.instrument.instrument_token,
        "timestamp": kite_time(quote.updated_at),
        "last_trade_time": kite_time(last_trade_time),
        "last_price": quote.last_price,
        "last_quantity": quote.last_quantity,
        "buy_quantity": 0,
        "sell_quantity": 0,
        "volume": quote.volume,
        "average_price": quote.last_price,
        "oi": 0,
        "oi_day_high": 0,
        "oi_day_low": 0,
        "net_change": quote.last_price - quote.close,
        "lower_circuit_limit": quote.lower_circuit_limit,
        "upper_circuit_limit": quote.upper_circuit_limit,
        "ohlc": _ohlc(quote),
        # An empty book a tick either side of the last price: the simulator fills at the last price.
        "depth": {
            "buy": [_depth_level(quote.last_price - tick * (level + 1)) for level in range(DEPTH_LEVELS)],
            "sell": [_depth_level(quote.last_price + tick * (level + 1)) for level in range(DEPTH_LEVELS)],
        },
    }


def _depth_level(price: Decimal) -> dict[str, Any]:
    return {"price": price, "quantity": 0, "orders": 0}


def _ohlc(quote: Quote) -> dict[str, Any]:
    return {"open": quote.open, "high": quote.high, "low": quote.low, "close": quote.close}


def _money(value: Decimal) -> Decimal:
    return value.quantize(Decimal("0.01"))


def _money4(value: Decimal) -> Decimal:
    return value.quantize(Decimal("0.0001"))


INSTRUMENT_COLUMNS = ("instrument_token", "exchange_token", "tradingsymbol", "name", "last_price", "expiry",
                      "strike", "tick_size", "lot_size", "instrument_type", "segment", "exchange")


def instruments_csv(quotes: list[Quote]) -> bytes:
    """Kite's daily instruments dump: one CSV row per instrument, its token the ticker's key."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(INSTRUMENT_COLUMNS)
    for quote in quotes:
        instrument = quote.instrument
        writer.writerow([
            instrument.instrument_token, instrument.instrument_token >> 8, instrument.tradingsymbol,
            instrument.tradingsymbol, quote.close, "", 0, instrument.tick_size, 1, "EQ", instrument.exchange,
            instrument.exchange,
        ])
    return out.getvalue().encode()
