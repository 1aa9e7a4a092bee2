"""Kite Connect v3's REST routes, served at the root so `KiteConnect(root=...)` works unchanged.

Every request goes through one pipeline: authenticate, log and rate-limit order requests, apply
injected faults, run the handler, wait for the state file, answer in Kite's envelope.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from brokers.paper import render
from brokers.paper.accounts import Account
from brokers.paper.clock import kite_time
from brokers.paper.connections import DroppedConnection
from brokers.paper.errors import GeneralError, InputError, KiteError, OrderError, RateLimitError, TokenError
from brokers.paper.faults import ERROR_KINDS, ORDER_ROUTES, Fault
from brokers.paper.params import parse_modify, parse_place, parse_variety
from brokers.paper.request_log import OrderRequestRecord, request_key
from brokers.paper.simulator import Simulator

log = logging.getLogger(__name__)

JSON_CONTENT_TYPE = "application/json"
# Routes whose answer must wait until the state file holds their change.
MUTATING_ROUTES = ORDER_ROUTES | {"session"}
# Kite limits these to 1 request a second, every other GET to 10.
QUOTE_ROUTES = frozenset({"quote", "ltp", "ohlc"})


class RawJson(bytes):
    """`data` already encoded as JSON."""


def kite_success(data: Any) -> Response:
    encoded = data if isinstance(data, RawJson) else render.json_bytes(data)
    return Response(b'{"status":"success","data":' + encoded + b"}", media_type=JSON_CONTENT_TYPE)


def kite_failure(error: KiteError) -> Response:
    body = {"status": "error", "message": error.message, "data": None, "error_type": error.error_type}
    return Response(render.json_bytes(body), status_code=error.http_status, media_type=JSON_CONTENT_TYPE)


@dataclass
class Call:
    """One request as a handler sees it."""

    request: Request
    account: Account | None
    form: Mapping[str, str]
    reject_message: str | None
    record: OrderRequestRecord | None

    @property
    def user(self) -> Account:
        assert self.account is not None, "route needs authentication"
        return self.account

    def path(self, name: str) -> str:
        return str(self.request.path_params[name])


Handler = Callable[[Call], Any]


class KiteApi:
    def __init__(self, sim: Simulator):
        self.sim = sim
        self.exchange = sim.exchange

    def routes(self) -> list[Route]:
        def route(path: str, method: str, name: str, handler: Handler, *, auth: bool = True) -> Route:
            return Route(path, self._endpoint(name, handler, auth=auth), methods=[method], name=f"{name}:{method}")

        return [
            route("/session/token", "POST", "session", self.create_session, auth=False),
            route("/session/token", "DELETE", "session", self.delete_session),
            route("/user/profile", "GET", "profile", self.profile),
            route("/user/margins", "GET", "margins", self.margins),
            route("/user/margins/{segment}", "GET", "margins", self.margin_segment),
            route("/orders", "GET", "orders", self.orders),
            route("/orders/{variety}", "POST", "place_order", self.place_order),
            route("/orders/{order_id}", "GET", "order_history", self.order_history),
            route("/orders/{variety}/{order_id}", "PUT", "modify_order", self.modify_order),
            route("/orders/{variety}/{order_id}", "DELETE", "cancel_order", self.cancel_order),
            route("/orders/{order_id}/trades", "GET", "order_trades", self.order_trades),
            route("/trades", "GET", "trades", self.trades),
            route("/portfolio/positions", "GET", "positions", self.positions),
            route("/portfolio/holdings", "GET", "holdings", self.holdings),
            route("/quote", "GET", "quote", self.quote),
            route("/quote/ltp", "GET", "ltp", self.ltp),
            route("/quote/ohlc", "GET", "ohlc", self.ohlc),
            # The instruments dump needs no session on Kite either; it is CSV, not the JSON envelope.
            Route("/instruments", self.instruments, methods=["GET"], name="instruments"),
            Route("/instruments/{exchange}", self.instruments, methods=["GET"], name="instruments_of"),
        ]

    # ---- the pipeline ---------------------------------------------------------------------------

    def _endpoint(self, name: str, handler: Handler, *, auth: bool) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            record: OrderRequestRecord | None = None
            try:
                account = self._authenticate(request) if auth else None
                form = await _form(request)
                if name in ORDER_ROUTES:
                    assert account is not None
                    record = self._record(name, account, request, form)
                    self.sim.changed(request_key(record.seq))
                    refusal = self.sim.limiter.admit_order(account.api_key)
                    if refusal is not None:
                        record.rate_limited = True
                        raise RateLimitError(refusal)
                elif account is not None and request.method == "GET":
                    refusal = (self.sim.limiter.admit_quote(account.api_key) if name in QUOTE_ROUTES
                               else self.sim.limiter.admit_read(account.api_key))
                    if refusal is not None:
                        raise RateLimitError(refusal)
                response = await self._run(name, handler, Call(request, account, form, None, record))
            except KiteError as error:
                response = kite_failure(error)
            except Exception:
                log.exception("paper broker failed on %s %s", request.method, request.url.path)
                response = kite_failure(GeneralError("Internal error in the paper broker; see its log."))
            if record is not None:
                record.http_status = None if isinstance(response, DroppedConnection) else response.status_code
                self.sim.changed(request_key(record.seq))
            return response

        return endpoint

    async def _run(self, name: str, handler: Handler, call: Call) -> Response:
        plan = self.sim.faults.take(name)
        if plan.latency_seconds:
            await asyncio.sleep(plan.latency_seconds)
        fault = plan.fault
        if call.record is not None and fault is not None:
            call.record.fault = fault.kind
        if fault is not None:
            early = _answer_before_handling(name, fault)
            if early is not None:
                return early
            if fault.kind == "reject":
                call.reject_message = fault.message
        response = kite_success(handler(call))
        if name in MUTATING_ROUTES:
            await self.sim.durable()
        if fault is None:
            return response
        if fault.kind == "accept_then_timeout":
            # Done and recorded; the answer comes after the client has given up, or never.
            await asyncio.sleep(fault.seconds)
            return DroppedConnection() if fault.then == "drop" else response
        if fault.kind == "drop_connection":
            return DroppedConnection()
        return response

    def _authenticate(self, request: Request) -> Account:
        header = request.headers.get("authorization", "")
        scheme, _, credentials = header.partition(" ")
        api_key, _, access_token = credentials.partition(":")
        if scheme.lower() != "token" or not api_key or not access_token:
            raise TokenError("Missing or invalid Authorization header: send `token api_key:access_token`.")
        return self.exchange.authenticate(api_key, access_token)

    def _record(self, name: str, account: Account, request: Request, form: Mapping[str, str]) -> OrderRequestRecord:
        params = request.path_params
        return self.sim.requests.record(
            name, account.api_key, account.user_id, str(params.get("variety", "")), form,
            order_id=params.get("order_id"),
        )

    # ---- session and user -----------------------------------------------------------------------

    def create_session(self, call: Call) -> dict[str, Any]:
        form = call.form
        account, token = self.exchange.login(
            form.get("api_key", ""), form.get("request_token", ""), form.get("checksum", "")
        )
        return render.session_json(account, token, kite_time(self.exchange.clock.now()) or "")

    def delete_session(self, call: Call) -> bool:
        self.exchange.invalidate_token(call.user.api_key, call.form.get("access_token", ""))
        return True

    def profile(self, call: Call) -> dict[str, Any]:
        return render.profile_json(call.user)

    def margins(self, call: Call) -> dict[str, Any]:
        return render.margins_json(self.exchange.margins(call.user))

    def margin_segment(self, call: Call) -> dict[str, Any]:
        segment = call.path("segment")
        if segment == "equity":
            return render.segment_json(self.exchange.margins(call.user))
        if segment == "commodity":
            return render.segment_json(None)
        raise InputError(f"Invalid segment {segment!r}: use equity or commodity.")

    # ---- orders ---------------------------------------------------------------------------------

    def place_order(self, call: Call) -> dict[str, str]:
        params = parse_place(call.path("variety"), call.form)
        order = self.exchange.place_order(call.user, params, reject_message=call.reject_message)
        if call.record is not None:
            call.record.order_id = order.order_id
        return {"order_id": order.order_id}

    def modify_order(self, call: Call) -> dict[str, str]:
        variety = parse_variety(call.path("variety"))
        if call.reject_message is not None:
            raise OrderError(call.reject_message)
        order = self.exchange.modify_order(call.user, variety, call.path("order_id"), parse_modify(call.form))
        return {"order_id": order.order_id}

    def cancel_order(self, call: Call) -> dict[str, str]:
        variety = parse_variety(call.path("variety"))
        if call.reject_message is not None:
            raise OrderError(call.reject_message)
        order = self.exchange.cancel_order(call.user, variety, call.path("order_id"))
        return {"order_id": order.order_id}

    def orders(self, call: Call) -> RawJson:
        rows = [render.order_json_bytes(order) for order in self.exchange.orders_of(call.user)]
        return RawJson(b"[" + b",".join(rows) + b"]")

    def order_history(self, call: Call) -> list[dict[str, Any]]:
        order = self.exchange.order(call.user, call.path("order_id"))
        return [render.order_json(order, state) for state in order.history]

    def trades(self, call: Call) -> list[dict[str, Any]]:
        return [render.trade_json(trade) for trade in self.exchange.trades_of(call.user)]

    def order_trades(self, call: Call) -> list[dict[str, Any]]:
        trades = self.exchange.trades_of(call.user, call.path("order_id"))
        return [render.trade_json(trade) for trade in trades]

    # ---- portfolio ------------------------------------------------------------------------------

    def positions(self, call: Call) -> dict[str, list[dict[str, Any]]]:
        market = self.exchange.market
        rows = []
        for position in self.exchange.positions_of(call.user):
            quote = market.quote(f"{position.exchange}:{position.tradingsymbol}")
            if quote is not None:
                rows.append(render.position_json(position, quote.last_price, quote.close))
        # Nothing is carried overnight here, so the day's positions are the net ones.
        return {"net": rows, "day": [dict(row) for row in rows]}

    def holdings(self, call: Call) -> list[dict[str, Any]]:
        market = self.exchange.market
        return [render.holding_json(holding, market.quote(key)) for key, holding in call.user.holdings.items()]

    # ---- market data ----------------------------------------------------------------------------

    async def instruments(self, request: Request) -> Response:
        exchange = request.path_params.get("exchange")
        market = self.exchange.market
        quotes = [quote for key in market.keys if (quote := market.quote(key)) is not None
                  and (exchange is None or quote.instrument.exchange == exchange)]
        return Response(render.instruments_csv(quotes), media_type="text/csv")

    def quote(self, call: Call) -> dict[str, Any]:
        return self._quotes(call, render.quote_json)

    def ltp(self, call: Call) -> dict[str, Any]:
        return self._quotes(call, render.ltp_json)

    def ohlc(self, call: Call) -> dict[str, Any]:
        return self._quotes(call, render.ohlc_json)

    def _quotes(self, call: Call, shape: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
        keys = call.request.query_params.getlist("i")
        if not keys:
            raise InputError("No instruments: pass one or more `i=EXCHANGE:TRADINGSYMBOL`.")
        market = self.exchange.market
        # Like Kite, instruments it does not know are left out of the answer.
        return {key: shape(quote) for key in keys if (quote := market.quote(key)) is not None}


def _answer_before_handling(name: str, fault: Fault) -> Response | None:
    if fault.kind in ERROR_KINDS:
        return kite_failure(fault.error())
    if fault.kind == "drop_connection" and not fault.after_accept:
        return DroppedConnection()
    return None


async def _form(request: Request) -> dict[str, str]:
    """Form fields (POST, PUT) or query parameters (GET, DELETE), the last value of each name."""
    if request.method in ("POST", "PUT"):
        body = await request.body()
        return dict(parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True))
    return dict(request.query_params)
