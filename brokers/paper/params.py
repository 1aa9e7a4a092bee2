"""Order parameters as Kite receives them (form fields), checked and typed.

A bad field is an `InputError` (HTTP 400) that names the field and what it accepts; nothing is
placed. Checks that need the instrument or the account (tick size, freeze limit, margin) live in
the exchange, which rejects the order instead.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from brokers.paper.errors import InputError

VARIETIES = ("regular", "amo", "co", "iceberg", "auction")
EXCHANGES = ("NSE", "BSE", "NFO", "CDS", "BFO", "MCX", "BCD")
TRANSACTION_TYPES = ("BUY", "SELL")
PRODUCTS = ("CNC", "MIS", "NRML", "MTF", "CO")
ORDER_TYPES = ("MARKET", "LIMIT", "SL", "SL-M")
VALIDITIES = ("DAY", "IOC", "TTL")
PRICED_ORDER_TYPES = frozenset({"LIMIT", "SL"})
TRIGGERED_ORDER_TYPES = frozenset({"SL", "SL-M"})
TAG_PATTERN = re.compile(r"[A-Za-z0-9]{1,20}")
MARKET_PROTECTION_AUTO = -1


@dataclass(frozen=True)
class PlaceParams:
    variety: str
    exchange: str
    tradingsymbol: str
    transaction_type: str
    quantity: int
    product: str
    order_type: str
    price: Decimal
    trigger_price: Decimal
    validity: str
    disclosed_quantity: int
    tag: str | None
    market_protection: int | None


@dataclass(frozen=True)
class ModifyParams:
    quantity: int | None = None
    price: Decimal | None = None
    trigger_price: Decimal | None = None
    order_type: str | None = None
    validity: str | None = None
    disclosed_quantity: int | None = None
    market_protection: int | None = None


def parse_variety(variety: str) -> str:
    if variety not in VARIETIES:
        raise InputError(f"Invalid `variety` {variety!r}: use one of {', '.join(VARIETIES)}.")
    return variety


def parse_place(variety: str, form: Mapping[str, str]) -> PlaceParams:
    order_type = _choice(form, "order_type", ORDER_TYPES)
    quantity = _positive_int(form, "quantity")
    price = _price(form, "price") or Decimal(0)
    trigger_price = _price(form, "trigger_price") or Decimal(0)
    transaction_type = _choice(form, "transaction_type", TRANSACTION_TYPES)
    check_prices(order_type, transaction_type, price, trigger_price)
    disclosed_quantity = _int(form, "disclosed_quantity", minimum=0) or 0
    if disclosed_quantity > quantity:
        raise InputError("Invalid `disclosed_quantity`: it cannot exceed `quantity`.")
    return PlaceParams(
        variety=parse_variety(variety),
        exchange=_choice(form, "exchange", EXCHANGES),
        tradingsymbol=_required(form, "tradingsymbol"),
        transaction_type=transaction_type,
        quantity=quantity,
        product=_choice(form, "product", PRODUCTS),
        order_type=order_type,
        price=price,
        trigger_price=trigger_price,
        validity=_optional_choice(form, "validity", VALIDITIES) or "DAY",
        disclosed_quantity=disclosed_quantity,
        tag=_tag(form),
        market_protection=_market_protection(form),
    )


def parse_modify(form: Mapping[str, str]) -> ModifyParams:
    params = ModifyParams(
        quantity=_int(form, "quantity", minimum=1),
        price=_price(form, "price"),
        trigger_price=_price(form, "trigger_price"),
        order_type=_optional_choice(form, "order_type", ORDER_TYPES),
        validity=_optional_choice(form, "validity", VALIDITIES),
        disclosed_quantity=_int(form, "disclosed_quantity", minimum=0),
        market_protection=_market_protection(form),
    )
    if params == ModifyParams():
        raise InputError(
            "Nothing to modify: pass quantity, price, trigger_price, order_type, validity or disclosed_quantity."
        )
    return params


def check_prices(order_type: str, transaction_type: str, price: Decimal, trigger_price: Decimal) -> None:
    """The price fields an order type needs, and a stop-loss limit on the right side of its trigger."""
    if order_type in PRICED_ORDER_TYPES and price <= 0:
        raise InputError(f"Invalid `price`: a {order_type} order needs a price above 0.")
    if order_type in TRIGGERED_ORDER_TYPES and trigger_price <= 0:
        raise InputError(f"Invalid `trigger_price`: a {order_type} order needs a trigger price above 0.")
    if order_type == "SL" and transaction_type == "BUY" and trigger_price > price:
        raise InputError("Trigger price for stoploss buy orders should be less than or equal to the price.")
    if order_type == "SL" and transaction_type == "SELL" and trigger_price < price:
        raise InputError("Trigger price for stoploss sell orders should be greater than or equal to the price.")


def _required(form: Mapping[str, str], name: str) -> str:
    value = form.get(name, "").strip()
    if not value:
        raise InputError(f"Missing `{name}`.")
    return value


def _choice(form: Mapping[str, str], name: str, allowed: tuple[str, ...]) -> str:
    value = _required(form, name)
    if value not in allowed:
        raise InputError(f"Invalid `{name}` {value!r}: use one of {', '.join(allowed)}.")
    return value


def _optional_choice(form: Mapping[str, str], name: str, allowed: tuple[str, ...]) -> str | None:
    return _choice(form, name, allowed) if form.get(name, "").strip() else None


def _int(form: Mapping[str, str], name: str, *, minimum: int) -> int | None:
    raw = form.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise InputError(f"Invalid `{name}` {raw!r}: send a whole number.") from None
    if value < minimum:
        raise InputError(f"Invalid `{name}` {value}: it must be at least {minimum}.")
    return value


def _positive_int(form: Mapping[str, str], name: str) -> int:
    value = _int(form, name, minimum=1)
    if value is None:
        raise InputError(f"Missing `{name}`.")
    return value


def _price(form: Mapping[str, str], name: str) -> Decimal | None:
    raw = form.get(name, "").strip()
    if not raw:
        return None
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise InputError(f"Invalid `{name}` {raw!r}: send a number such as 2500.5.") from None
    if not value.is_finite() or value < 0:
        raise InputError(f"Invalid `{name}` {raw!r}: it cannot be negative.")
    return value


def _tag(form: Mapping[str, str]) -> str | None:
    raw = form.get("tag")
    if raw is None or raw == "":
        return None
    if not TAG_PATTERN.fullmatch(raw):
        raise InputError(f"Invalid `tag` {raw!r}: use 1 to 20 letters and digits only.")
    return raw


def _market_protection(form: Mapping[str, str]) -> int | None:
    raw = form.get("market_protection", "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise InputError(
            f"Invalid `market_protection` {raw!r}: send -1 (automatic) or a percentage from 0 to 100."
        ) from None
    if value != MARKET_PROTECTION_AUTO and not 0 <= value <= 100:
        raise InputError(
            f"Invalid `market_protection` {value}: send -1 (automatic) or a percentage from 0 to 100."
        )
    return value
