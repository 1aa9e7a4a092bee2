"""Clients for the paper broker's control API (`/_sim/`): `SimControl` (sync) and `AsyncSimControl`.

    control = SimControl("http://127.0.0.1:8700")
    control.set_price("RELIANCE", "2500.50")
    control.add_fault("accept_then_timeout", route="place_order", seconds=3)
    assert len([o for o in control.orders() if o["tag"] == tag]) == 1
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx

Price = Decimal | int | str
DEFAULT_TIMEOUT_SECONDS = 10.0
RATE_LIMIT_NAMES = ("orders_per_second", "orders_per_minute", "orders_per_day", "quotes_per_second",
                    "reads_per_second")


class SimControlError(RuntimeError):
    """The control API refused a request; the message is its explanation."""

    def __init__(self, message: str, status_code: int):
        super().__init__(message)
        self.status_code = status_code


@dataclass(frozen=True)
class _Call:
    method: str
    path: str
    body: Any = None


def _instrument_key(symbol: str, exchange: str) -> str:
    return symbol if ":" in symbol else f"{exchange}:{symbol}"


def _money(price: Price) -> str:
    if isinstance(price, float):
        raise TypeError("pass prices as Decimal, int or str, not float")
    return str(price)


class _Calls:
    """The control API's requests, shared by the sync and async clients."""

    @staticmethod
    def reset() -> _Call:
        return _Call("POST", "/_sim/reset")

    @staticmethod
    def set_prices(prices: Mapping[str, Price]) -> _Call:
        return _Call("PUT", "/_sim/prices", {key: _money(price) for key, price in prices.items()})

    @staticmethod
    def set_fill(settings: Mapping[str, Any]) -> _Call:
        body = dict(settings)
        if "fill_ratio" in body:
            body["fill_ratio"] = _money(body["fill_ratio"])
        return _Call("PUT", "/_sim/fill", body)

    @staticmethod
    def add_fault(kind: str, route: str, count: int | None, params: Mapping[str, Any]) -> _Call:
        return _Call("POST", "/_sim/faults", {"kind": kind, "route": route, "count": count, **params})

    @staticmethod
    def random_walk(enabled: bool, params: Mapping[str, Any]) -> _Call:
        return _Call("POST", "/_sim/random-walk", {"enabled": enabled, **params})

    @staticmethod
    def set_account(api_key: str, cash: Price | None, holdings: Mapping[str, Any] | None) -> _Call:
        body: dict[str, Any] = {}
        if cash is not None:
            body["cash"] = _money(cash)
        if holdings is not None:
            body["holdings"] = {
                key: {"quantity": spec["quantity"], "average_price": _money(spec["average_price"])}
                for key, spec in holdings.items()
            }
        return _Call("PUT", f"/_sim/accounts/{api_key}", body)


def _result(response: httpx.Response) -> Any:
    if response.status_code == 400 or response.status_code == 404:
        raise SimControlError(response.json().get("error", response.text), response.status_code)
    response.raise_for_status()
    return response.json()


class SimControl:
    """Synchronous control client (tests, the demo)."""

    def __init__(self, url: str, *, timeout: float = DEFAULT_TIMEOUT_SECONDS):
        self.url = url
        self._http = httpx.Client(base_url=url, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SimControl:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _send(self, call: _Call) -> Any:
        return _result(self._http.request(call.method, call.path, json=call.body))

    def health(self) -> dict[str, Any]:
        return self._send(_Call("GET", "/_sim/health"))

    def reset(self) -> None:
        """Forget every order, account, token, request and fault; prices and fills to defaults."""
        self._send(_Calls.reset())

    def set_price(self, symbol: str, price: Price, exchange: str = "NSE") -> None:
        """Set one last price; `symbol` may also be a full `EXCHANGE:SYMBOL` key."""
        self._send(_Calls.set_prices({_instrument_key(symbol, exchange): price}))

    def set_prices(self, prices: Mapping[str, Price]) -> None:
        self._send(_Calls.set_prices(prices))

    def prices(self) -> dict[str, Decimal]:
        return {key: Decimal(value) for key, value in self._send(_Call("GET", "/_sim/prices")).items()}

    def set_fill(self, **settings: Any) -> dict[str, Any]:
        """delay_seconds, partial_fills, partial_interval_seconds, fill_ratio; others keep their value."""
        return self._send(_Calls.set_fill(settings))

    def fill(self) -> dict[str, Any]:
        return self._send(_Call("GET", "/_sim/fill"))

    def add_fault(self, kind: str, route: str = "*", count: int | None = 1, **params: Any) -> dict[str, Any]:
        """Inject a fault; returns it with its `id`. `count=None` keeps it until cleared."""
        return self._send(_Calls.add_fault(kind, route, count, params))

    def faults(self) -> list[dict[str, Any]]:
        return self._send(_Call("GET", "/_sim/faults"))

    def remove_fault(self, fault_id: int) -> None:
        self._send(_Call("DELETE", f"/_sim/faults/{fault_id}"))

    def clear_faults(self) -> None:
        self._send(_Call("DELETE", "/_sim/faults"))

    def orders(self) -> list[dict[str, Any]]:
        """Every place-order request received since the last reset, across accounts."""
        return self._send(_Call("GET", "/_sim/orders"))

    def requests(self) -> list[dict[str, Any]]:
        """Every order request (place, modify, cancel) received since the last reset."""
        return self._send(_Call("GET", "/_sim/requests"))

    def rate(self) -> dict[str, Any]:
        return self._send(_Call("GET", "/_sim/rate"))

    def set_rate_limit(self, orders_per_second: int) -> None:
        """Order requests per account per second before HTTP 429 (0: no limit) until the next reset."""
        self._send(_Call("PUT", "/_sim/rate", {"orders_per_second": orders_per_second}))

    def set_rate_limits(self, **limits: int) -> dict[str, int]:
        """orders_per_second, orders_per_minute, orders_per_day, quotes_per_second, reads_per_second (0: off)."""
        return self._send(_Call("PUT", "/_sim/rate", limits))

    def rate_limits_off(self) -> dict[str, int]:
        """No rate limit of any kind until the next reset."""
        return self.set_rate_limits(**{name: 0 for name in RATE_LIMIT_NAMES})

    def expire_tokens(self, api_key: str | None = None) -> int:
        return int(self._send(_Call("POST", "/_sim/tokens/expire", {"api_key": api_key}))["expired"])

    def random_walk(self, enabled: bool, **params: Any) -> dict[str, Any]:
        """interval_seconds, volatility (relative step), symbols (["NSE:INFY"]), seed."""
        return self._send(_Calls.random_walk(enabled, params))

    def set_account(
        self, api_key: str, *, cash: Price | None = None, holdings: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        return self._send(_Calls.set_account(api_key, cash, holdings))

    def register_redirect(self, api_key: str, redirect_url: str) -> None:
        """Register the app's redirect URL, as the Kite developer console does."""
        self._send(_Call("PUT", f"/_sim/accounts/{api_key}", {"redirect_url": redirect_url}))

    def log_in(self, login_url: str) -> str:
        """What a person does on the login page: open `login_url` (what `KiteConnect.login_url()`
        gives), press "Log in"; returns the redirect URL the browser is sent to, request token and all."""
        page = self._http.get(login_url)
        if page.status_code != 200:
            raise SimControlError(page.text, page.status_code)
        query = dict(httpx.URL(login_url).params)
        submitted = self._http.post("/connect/login", data={
            "api_key": query.get("api_key", ""), "redirect_params": query.get("redirect_params", ""),
        })
        if submitted.status_code != 302:
            raise SimControlError(submitted.text, submitted.status_code)
        return submitted.headers["location"]

    def request_token(self, api_key: str) -> str:
        """A fresh request token of `api_key`, through the login page (a redirect URL is registered
        first if the app has none)."""
        if not any(a["api_key"] == api_key and a.get("redirect_url") for a in self.accounts()):
            self.register_redirect(api_key, "http://127.0.0.1/kite/redirect")
        location = self.log_in(f"/connect/login?v=3&api_key={api_key}")
        return httpx.URL(location).params["request_token"]

    def accounts(self) -> list[dict[str, Any]]:
        return self._send(_Call("GET", "/_sim/accounts"))

    def clock(self) -> dict[str, Any]:
        """now (IST), offset_seconds, market_hours (enforced?), market_open."""
        return self._send(_Call("GET", "/_sim/clock"))

    def set_clock(self, *, now: str | None = None, advance_seconds: float | None = None,
                  market_hours: bool | None = None) -> dict[str, Any]:
        """Move the simulated clock to `now` ("YYYY-MM-DD HH:MM:SS", IST) or by `advance_seconds`;
        `market_hours` turns the 09:15-15:30 check on or off. Until the next reset."""
        body = {name: value for name, value in (("now", now), ("advance_seconds", advance_seconds),
                                                 ("market_hours", market_hours)) if value is not None}
        return self._send(_Call("PUT", "/_sim/clock", body))

    def end_of_day(self) -> dict[str, list[str]]:
        """Expire open DAY orders and square off MIS positions; returns both lists of order ids."""
        return self._send(_Call("POST", "/_sim/end-of-day"))

    def ticker_connections(self) -> list[dict[str, Any]]:
        """Open WebSocket connections: api_key, user_id, modes by instrument token, ticks and order updates sent."""
        return list(self._send(_Call("GET", "/_sim/ticker"))["connections"])

    def drop_ticker_connections(self, api_key: str | None = None) -> int:
        """Cut WebSocket connections (no close frame); KiteTicker reconnects and resubscribes."""
        return int(self._send(_Call("POST", "/_sim/ticker/drop", {"api_key": api_key}))["dropped"])


class AsyncSimControl:
    """`SimControl` for async code: the same methods, as coroutines."""

    def __init__(self, url: str, *, timeout: float = DEFAULT_TIMEOUT_SECONDS):
        self.url = url
        self._http = httpx.AsyncClient(base_url=url, timeout=timeout)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncSimControl:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _send(self, call: _Call) -> Any:
        return _result(await self._http.request(call.method, call.path, json=call.body))

    async def health(self) -> dict[str, Any]:
        return await self._send(_Call("GET", "/_sim/health"))

    async def reset(self) -> None:
        await self._send(_Calls.reset())

    async def set_price(self, symbol: str, price: Price, exchange: str = "NSE") -> None:
        await self._send(_Calls.set_prices({_instrument_key(symbol, exchange): price}))

    async def set_prices(self, prices: Mapping[str, Price]) -> None:
        await self._send(_Calls.set_prices(prices))

    async def prices(self) -> dict[str, Decimal]:
        return {key: Decimal(value) for key, value in (await self._send(_Call("GET", "/_sim/prices"))).items()}

    async def set_fill(self, **settings: Any) -> dict[str, Any]:
        return await self._send(_Calls.set_fill(settings))

    async def fill(self) -> dict[str, Any]:
        return await self._send(_Call("GET", "/_sim/fill"))

    async def add_fault(self, kind: str, route: str = "*", count: int | None = 1, **params: Any) -> dict[str, Any]:
        return await self._send(_Calls.add_fault(kind, route, count, params))

    async def faults(self) -> list[dict[str, Any]]:
        return await self._send(_Call("GET", "/_sim/faults"))

    async def remove_fault(self, fault_id: int) -> None:
        await self._send(_Call("DELETE", f"/_sim/faults/{fault_id}"))

    async def clear_faults(self) -> None:
        await self._send(_Call("DELETE", "/_sim/faults"))

    async def orders(self) -> list[dict[str, Any]]:
        return await self._send(_Call("GET", "/_sim/orders"))

    async def requests(self) -> list[dict[str, Any]]:
        return await self._send(_Call("GET", "/_sim/requests"))

    async def rate(self) -> dict[str, Any]:
        return await self._send(_Call("GET", "/_sim/rate"))

    async def set_rate_limit(self, orders_per_second: int) -> None:
        await self._send(_Call("PUT", "/_sim/rate", {"orders_per_second": orders_per_second}))

    async def set_rate_limits(self, **limits: int) -> dict[str, int]:
        return await self._send(_Call("PUT", "/_sim/rate", limits))

    async def rate_limits_off(self) -> dict[str, int]:
        return await self.set_rate_limits(**{name: 0 for name in RATE_LIMIT_NAMES})

    async def expire_tokens(self, api_key: str | None = None) -> int:
        return int((await self._send(_Call("POST", "/_sim/tokens/expire", {"api_key": api_key})))["expired"])

    async def random_walk(self, enabled: bool, **params: Any) -> dict[str, Any]:
        return await self._send(_Calls.random_walk(enabled, params))

    async def set_account(
        self, api_key: str, *, cash: Price | None = None, holdings: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        return await self._send(_Calls.set_account(api_key, cash, holdings))

    async def accounts(self) -> list[dict[str, Any]]:
        return await self._send(_Call("GET", "/_sim/accounts"))

    async def clock(self) -> dict[str, Any]:
        return await self._send(_Call("GET", "/_sim/clock"))

    async def set_clock(self, *, now: str | None = None, advance_seconds: float | None = None,
                        market_hours: bool | None = None) -> dict[str, Any]:
        body = {name: value for name, value in (("now", now), ("advance_seconds", advance_seconds),
                                                 ("market_hours", market_hours)) if value is not None}
        return await self._send(_Call("PUT", "/_sim/clock", body))

    async def end_of_day(self) -> dict[str, list[str]]:
        return await self._send(_Call("POST", "/_sim/end-of-day"))

    async def ticker_connections(self) -> list[dict[str, Any]]:
        return list((await self._send(_Call("GET", "/_sim/ticker")))["connections"])

    async def drop_ticker_connections(self, api_key: str | None = None) -> int:
        return int((await self._send(_Call("POST", "/_sim/ticker/drop", {"api_key": api_key})))["dropped"])
