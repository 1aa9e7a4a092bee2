"""The control API under `/_sim/`: prices, fills, faults, accounts and the request log.

JSON in and out, no authentication. Money goes out as strings and comes in as strings or numbers
(numbers are read as decimals, never floats). A bad request gets 400 with `{"error": "..."}`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from brokers.paper.accounts import Holding
from brokers.paper.clock import IST, KITE_TIME_FORMAT, kite_time
from brokers.paper.errors import ControlInputError
from brokers.paper.exchange import account_key
from brokers.paper.faults import positive_number
from brokers.paper.market import parse_price
from brokers.paper.orders import FillSettings
from brokers.paper.request_log import RATE_LIMIT_FIELDS, OrderRequestRecord, RateLimits, received_at_text
from brokers.paper.simulator import RandomWalkSettings, Simulator

FILL_FIELDS = ("delay_seconds", "partial_fills", "partial_interval_seconds", "fill_ratio")
RANDOM_WALK_FIELDS = ("enabled", "interval_seconds", "volatility", "symbols", "seed")


def control_json(payload: Any, status_code: int = 200) -> Response:
    return Response(json.dumps(payload, default=_encode), status_code=status_code, media_type="application/json")


def _encode(value: object) -> str:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


Endpoint = Callable[[Request], Awaitable[Any]]


class ControlApi:
    def __init__(self, sim: Simulator):
        self.sim = sim
        self.exchange = sim.exchange

    def routes(self) -> list[Route]:
        def route(path: str, method: str, endpoint: Endpoint) -> Route:
            return Route(f"/_sim{path}", self._wrap(endpoint), methods=[method])

        return [
            route("/health", "GET", self.health),
            route("/reset", "POST", self.reset),
            route("/prices", "GET", self.prices),
            route("/prices", "PUT", self.set_prices),
            route("/fill", "GET", self.fill),
            route("/fill", "PUT", self.set_fill),
            route("/random-walk", "GET", self.random_walk),
            route("/random-walk", "POST", self.set_random_walk),
            route("/faults", "GET", self.faults),
            route("/faults", "POST", self.add_fault),
            route("/faults", "DELETE", self.clear_faults),
            route("/faults/{fault_id:int}", "DELETE", self.remove_fault),
            route("/orders", "GET", self.orders),
            route("/requests", "GET", self.requests),
            route("/rate", "GET", self.rate),
            route("/rate", "PUT", self.set_rate_limit),
            route("/tokens/expire", "POST", self.expire_tokens),
            route("/accounts", "GET", self.accounts),
            route("/accounts/{api_key}", "PUT", self.set_account),
            route("/clock", "GET", self.clock),
            route("/clock", "PUT", self.set_clock),
            route("/end-of-day", "POST", self.end_of_day),
            route("/ticker", "GET", self.ticker),
            route("/ticker/drop", "POST", self.drop_ticker),
        ]

    def _wrap(self, endpoint: Endpoint) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            try:
                result = await endpoint(request)
            except ControlInputError as error:
                return control_json({"error": str(error)}, status_code=400)
            if request.method != "GET":
                await self.sim.durable()
            return control_json(result)

        return run

    async def health(self, request: Request) -> dict[str, Any]:
        return {"status": "ok"}

    async def reset(self, request: Request) -> dict[str, Any]:
        self.sim.reset()
        return {"reset": True}

    async def prices(self, request: Request) -> dict[str, Any]:
        market = self.exchange.market
        return {key: quote.last_price for key in market.keys if (quote := market.quote(key))}

    async def set_prices(self, request: Request) -> dict[str, Any]:
        body = await _json_object(request)
        moved = self.exchange.set_prices(body)
        return {"updated": moved}

    async def fill(self, request: Request) -> dict[str, Any]:
        return self.exchange.fill_settings.as_json()

    async def set_fill(self, request: Request) -> dict[str, Any]:
        self.exchange.fill_settings = parse_fill_settings(await _json_object(request), self.exchange.fill_settings)
        return self.exchange.fill_settings.as_json()

    async def random_walk(self, request: Request) -> dict[str, Any]:
        return _random_walk_json(self.sim.random_walk)

    async def set_random_walk(self, request: Request) -> dict[str, Any]:
        self.sim.set_random_walk(parse_random_walk(await _json_object(request), self.sim.random_walk))
        return _random_walk_json(self.sim.random_walk)

    async def faults(self, request: Request) -> list[dict[str, Any]]:
        return self.sim.faults.listing()

    async def add_fault(self, request: Request) -> dict[str, Any]:
        return self.sim.faults.add(await _json_object(request)).as_json()

    async def clear_faults(self, request: Request) -> dict[str, Any]:
        self.sim.faults.clear()
        return {"cleared": True}

    async def remove_fault(self, request: Request) -> dict[str, Any]:
        fault_id = request.path_params["fault_id"]
        if not self.sim.faults.remove(fault_id):
            raise ControlInputError(f"no fault with id {fault_id}; GET /_sim/faults lists them")
        return {"removed": fault_id}

    async def orders(self, request: Request) -> list[dict[str, Any]]:
        """Every place-order request received since the last reset, across accounts, oldest first."""
        return [self._request_json(record) for record in self.sim.requests.records if record.route == "place_order"]

    async def requests(self, request: Request) -> list[dict[str, Any]]:
        """Every order request (place, modify, cancel) received since the last reset."""
        return [self._request_json(record) for record in self.sim.requests.records]

    async def rate(self, request: Request) -> dict[str, Any]:
        return {**self.sim.requests.rate(self.sim.limiter.per_second), "limits": self.sim.limiter.limits.as_json()}

    async def set_rate_limit(self, request: Request) -> dict[str, Any]:
        body = await _json_object(request)
        self.sim.limiter.limits = parse_rate_limits(body, self.sim.limiter.limits)
        return self.sim.limiter.limits.as_json()

    async def expire_tokens(self, request: Request) -> dict[str, Any]:
        body = await _json_object(request, allow_empty=True)
        api_key = body.get("api_key")
        if api_key is not None and not isinstance(api_key, str):
            raise ControlInputError(f"api_key must be a string or null (every account); got {api_key!r}")
        return {"expired": self.exchange.expire_tokens(api_key)}

    async def clock(self, request: Request) -> dict[str, Any]:
        clock = self.exchange.clock
        return {"now": kite_time(clock.now()), "offset_seconds": clock.offset.total_seconds(),
                "market_hours": self.exchange.market_hours, "market_open": clock.market_is_open()}

    async def set_clock(self, request: Request) -> dict[str, Any]:
        """`{"now": "YYYY-MM-DD HH:MM:SS"}` (IST) or `{"advance_seconds": N}`, and/or `{"market_hours": bool}`."""
        body = await _json_object(request)
        unknown = set(body) - {"now", "advance_seconds", "market_hours"}
        if unknown or not body or {"now", "advance_seconds"} <= set(body):
            raise ControlInputError('send {"now": "YYYY-MM-DD HH:MM:SS"} (IST) or {"advance_seconds": N}, '
                                    'and/or {"market_hours": true|false}')
        clock = self.exchange.clock
        if "now" in body:
            try:
                moment = datetime.strptime(str(body["now"]), KITE_TIME_FORMAT).replace(tzinfo=IST)
            except ValueError:
                raise ControlInputError(f"now must be \"YYYY-MM-DD HH:MM:SS\" in IST; got {body['now']!r}") from None
            clock.set_now(moment)
        if "advance_seconds" in body:
            clock.advance(positive_number("advance_seconds", body["advance_seconds"]))
        if "market_hours" in body:
            if not isinstance(body["market_hours"], bool):
                raise ControlInputError(f"market_hours must be true or false; got {body['market_hours']!r}")
            self.exchange.market_hours = body["market_hours"]
        return await self.clock(request)

    async def end_of_day(self, request: Request) -> dict[str, Any]:
        """Open DAY orders lapse and MIS positions are squared off, as at the close."""
        return self.exchange.end_of_day()

    async def ticker(self, request: Request) -> dict[str, Any]:
        return {"connections": [connection.as_json() for connection in self.sim.ticker.connections]}

    async def drop_ticker(self, request: Request) -> dict[str, Any]:
        """Cut WebSocket connections (one api_key's, or all) without a close frame: a network fault."""
        body = await _json_object(request, allow_empty=True)
        api_key = body.get("api_key")
        if api_key is not None and not isinstance(api_key, str):
            raise ControlInputError(f"api_key must be a string or null (every connection); got {api_key!r}")
        return {"dropped": self.sim.ticker.drop(api_key)}

    async def accounts(self, request: Request) -> list[dict[str, Any]]:
        return [self._account_json(api_key) for api_key in self.exchange.accounts]

    async def set_account(self, request: Request) -> dict[str, Any]:
        """Open an account ahead of its first login, or change its cash and holdings."""
        api_key = request.path_params["api_key"]
        body = await _json_object(request, allow_empty=True)
        unknown = set(body) - {"cash", "holdings", "redirect_url"}
        if unknown:
            raise ControlInputError(
                f"an account takes cash, holdings and redirect_url; unknown: {', '.join(sorted(unknown))}"
            )
        redirect_url = body.get("redirect_url")
        if redirect_url is not None and not (isinstance(redirect_url, str) and redirect_url.startswith(("http://", "https://"))):
            raise ControlInputError(f"redirect_url must be an http(s) URL, got {redirect_url!r}")
        cash = parse_price(body["cash"], "cash") if "cash" in body else None
        holdings = self._parse_holdings(body["holdings"]) if "holdings" in body else None
        account = self.exchange.open_account(api_key)
        if cash is not None:
            account.cash = cash
        if holdings is not None:
            account.holdings = holdings
        if redirect_url is not None:
            self.exchange.register_redirect(api_key, redirect_url)
        self.sim.changed(account_key(api_key))
        return self._account_json(api_key)

    def _parse_holdings(self, value: Any) -> dict[str, Holding]:
        if not isinstance(value, Mapping):
            raise ControlInputError(
                'holdings must be an object: {"NSE:INFY": {"quantity": 10, "average_price": "1400"}}'
            )
        holdings = {}
        for key, spec in value.items():
            exchange, _, symbol = str(key).partition(":")
            instrument = self.exchange.market.instrument(exchange, symbol)
            if instrument is None:
                raise ControlInputError(f"unknown instrument {key!r}: use EXCHANGE:TRADINGSYMBOL")
            if not isinstance(spec, Mapping) or not isinstance(spec.get("quantity"), int) or spec["quantity"] < 1:
                raise ControlInputError(f"{key}: give a whole positive quantity and an average_price")
            holdings[key] = Holding(exchange, symbol, instrument.instrument_token, instrument.isin,
                                    spec["quantity"], parse_price(spec.get("average_price"), f"{key} average_price"))
        return holdings

    def _account_json(self, api_key: str) -> dict[str, Any]:
        account = self.exchange.accounts[api_key]
        margins = self.exchange.margins(account)
        return {
            "api_key": account.api_key,
            "user_id": account.user_id,
            "redirect_url": self.exchange.redirect_urls.get(api_key),
            "cash": account.cash,
            "available_margin": margins.available,
            "used_margin": margins.used,
            "orders": len(account.order_ids),
            "trades": len(account.trades),
            "holdings": {
                key: {"quantity": holding.quantity, "average_price": holding.average_price}
                for key, holding in account.holdings.items()
            },
        }

    def _request_json(self, record: OrderRequestRecord) -> dict[str, Any]:
        order = self.exchange.orders.get(record.order_id) if record.order_id else None
        return {
            "seq": record.seq,
            "route": record.route,
            "api_key": record.api_key,
            "user_id": record.user_id,
            "order_id": record.order_id,
            "tag": record.tag if order is None else order.tag,
            "symbol": f"{record.exchange}:{record.tradingsymbol}" if record.exchange else None,
            "exchange": record.exchange,
            "tradingsymbol": record.tradingsymbol,
            "side": record.transaction_type,
            "quantity": record.quantity,
            "order_type": record.order_type,
            "product": record.product,
            "variety": record.variety,
            "status": str(order.state.status) if order is not None else None,
            "filled_quantity": order.state.filled_quantity if order is not None else None,
            "received_at": received_at_text(record),
            "received_at_epoch": record.received_at,
            "http_status": record.http_status,
            "fault": record.fault,
            "rate_limited": record.rate_limited,
        }


def parse_rate_limits(body: Mapping[str, Any], current: RateLimits) -> RateLimits:
    unknown = set(body) - set(RATE_LIMIT_FIELDS)
    if unknown or not body:
        raise ControlInputError(f"send one or more of {', '.join(RATE_LIMIT_FIELDS)} (0: no limit); "
                                f"unknown: {', '.join(sorted(unknown)) or 'none'}")
    for name, value in body.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ControlInputError(f"{name} must be a whole number of requests, 0 for no limit; got {value!r}")
    return replace(current, **body)


def parse_fill_settings(body: Mapping[str, Any], current: FillSettings) -> FillSettings:
    unknown = set(body) - set(FILL_FIELDS)
    if unknown:
        raise ControlInputError(f"fill settings are {', '.join(FILL_FIELDS)}; unknown: {', '.join(sorted(unknown))}")
    partial_fills = body.get("partial_fills", current.partial_fills)
    if isinstance(partial_fills, bool) or not isinstance(partial_fills, int) or partial_fills < 1:
        raise ControlInputError(f"partial_fills must be a whole number >= 1; got {partial_fills!r}")
    ratio = current.fill_ratio
    if "fill_ratio" in body:
        try:
            ratio = Decimal(str(body["fill_ratio"]))
        except InvalidOperation:
            raise ControlInputError(f"fill_ratio must be a number from 0 to 1; got {body['fill_ratio']!r}") from None
        if not 0 <= ratio <= 1:
            raise ControlInputError(f"fill_ratio must be from 0 to 1; got {ratio}")
    return FillSettings(
        delay_seconds=positive_number("delay_seconds", body.get("delay_seconds", current.delay_seconds),
                                       allow_zero=True),
        partial_fills=partial_fills,
        partial_interval_seconds=positive_number(
            "partial_interval_seconds", body.get("partial_interval_seconds", current.partial_interval_seconds),
            allow_zero=True),
        fill_ratio=ratio,
    )


def parse_random_walk(body: Mapping[str, Any], current: RandomWalkSettings) -> RandomWalkSettings:
    unknown = set(body) - set(RANDOM_WALK_FIELDS)
    if unknown:
        raise ControlInputError(
            f"random walk settings are {', '.join(RANDOM_WALK_FIELDS)}; unknown: {', '.join(sorted(unknown))}"
        )
    enabled = body.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ControlInputError(f"enabled must be true or false; got {enabled!r}")
    symbols = body.get("symbols", current.symbols)
    if symbols is not None and (not isinstance(symbols, (list, tuple))
                                or not all(isinstance(key, str) for key in symbols)):
        raise ControlInputError('symbols must be a list like ["NSE:INFY"] or null for every instrument')
    seed = body.get("seed", current.seed)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ControlInputError(f"seed must be a whole number or null; got {seed!r}")
    volatility = positive_number("volatility", body.get("volatility", current.volatility))
    return RandomWalkSettings(
        enabled=enabled,
        interval_seconds=positive_number("interval_seconds", body.get("interval_seconds", current.interval_seconds)),
        volatility=volatility,
        symbols=tuple(symbols) if symbols is not None else None,
        seed=seed,
    )


def _random_walk_json(settings: RandomWalkSettings) -> dict[str, Any]:
    return {
        "enabled": settings.enabled,
        "interval_seconds": settings.interval_seconds,
        "volatility": settings.volatility,
        "symbols": list(settings.symbols) if settings.symbols is not None else None,
        "seed": settings.seed,
    }


async def _json_object(request: Request, *, allow_empty: bool = False) -> dict[str, Any]:
    body = await request.body()
    if not body.strip():
        if allow_empty:
            return {}
        raise ControlInputError("send a JSON object in the request body")
    try:
        value = json.loads(body, parse_float=Decimal)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ControlInputError(f"the body is not JSON: {error}") from None
    if not isinstance(value, dict):
        raise ControlInputError("send a JSON object in the request body")
    return value
