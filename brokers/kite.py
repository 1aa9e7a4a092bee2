"""The Kite Connect adapter: `brokers.base.Broker` on the official, synchronous `kiteconnect` client.

Each client call runs in this broker's own small thread pool, so the event loop never blocks and a
slow broker cannot starve other users of the loop's default executor. Every failure leaves as a
`brokers.errors.BrokerError` whose class says what a retry can do; the access token never appears in
a message, a repr or a chained exception (raw `requests` exceptions carry the request's headers, so
they are classified and dropped, not chained).
"""

from __future__ import annotations

import asyncio
import contextvars
import http.cookiejar
import inspect
import logging
import re
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import dateutil.parser
import requests
import urllib3.exceptions
from kiteconnect import KiteConnect
from kiteconnect import exceptions as kite_exceptions
from requests.adapters import HTTPAdapter

from brokers.base import BrokerOrder, BrokerTrade, Holding, OrderRequest, Position
from brokers.errors import (
    AccountError,
    AmbiguousBrokerError,
    BrokerConfigurationError,
    BrokerError,
    DefinitiveBrokerError,
    InstrumentNotFoundError,
    InsufficientFundsError,
    InsufficientHoldingsError,
    InvalidOrderError,
    MalformedBrokerResponseError,
    OrderNotFoundError,
    OrderRefusedError,
    PermissionDeniedError,
    RateLimitedError,
    SendSlotMissedError,
    SessionExpiredError,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

# Threads per broker, and HTTP connections kept per host: equal, so a call never waits for a socket.
MAX_CONCURRENT_CALLS = 8
# Added to the one-second window: our send time and the broker's arrival time differ by a little jitter.
PACING_MARGIN_SECONDS = 0.05

TAG_PATTERN = re.compile(r"[A-Za-z0-9]{1,20}")
TRANSACTION_TYPES = frozenset({"BUY", "SELL"})
ORDER_TYPES = frozenset({"MARKET", "LIMIT", "SL", "SL-M"})
PRICED_ORDER_TYPES = frozenset({"LIMIT", "SL"})
TRIGGERED_ORDER_TYPES = frozenset({"SL", "SL-M"})
MARKET_PROTECTED_ORDER_TYPES = frozenset({"MARKET", "SL-M"})

RUPEE_QUANTUM = Decimal("0.01")
# Currency derivatives quote to four places (tick 0.0025); everything else in rupees and paise.
PRICE_QUANTUM_BY_EXCHANGE = {"CDS": Decimal("0.0001"), "BCD": Decimal("0.0001")}

# Kite error types that mean "no". The client has classes for the first three; the rest arrive as
# GeneralException, and the answer's error_type (kept by a response hook) names them.
DEFINITIVE_ERROR_BY_TYPE: dict[str, type[DefinitiveBrokerError]] = {
    "InputException": InvalidOrderError,
    "PermissionException": PermissionDeniedError,
    "OrderException": OrderRefusedError,
    "UserException": AccountError,
    "MarginException": InsufficientFundsError,
    "HoldingException": InsufficientHoldingsError,
}

# Kite has no error type for an unknown order id ("Couldn't find that `order_id`."): its words are the sign.
ORDER_NOT_FOUND_MESSAGE = re.compile(r"couldn'?t find|not found|does not exist|no such order", re.IGNORECASE)

CLIENT_SENDS_MARKET_PROTECTION = "market_protection" in inspect.signature(KiteConnect.place_order).parameters


class KiteClient(Protocol):
    """The part of `kiteconnect.KiteConnect` this adapter uses."""

    def place_order(self, variety: str, exchange: str, tradingsymbol: str, transaction_type: str,
                    quantity: int, product: str, order_type: str, **params: Any) -> Any: ...
    def modify_order(self, variety: str, order_id: str, **params: Any) -> Any: ...
    def cancel_order(self, variety: str, order_id: str) -> Any: ...
    def orders(self) -> Any: ...
    def order_history(self, order_id: str) -> Any: ...
    def positions(self) -> Any: ...
    def trades(self) -> Any: ...
    def holdings(self) -> Any: ...
    def ltp(self, *instruments: str) -> Any: ...


class PacedTurn:
    """One order request's place in the window: the time it was let through, then the time it was sent."""

    __slots__ = ("_clock", "at")

    def __init__(self, at: float, clock: Callable[[], float]):
        self.at = at
        self._clock = clock

    def mark_sent(self) -> None:
        # A request that waited for a free thread counts from when it really left.
        self.at = self._clock()


class OrderPacer:
    """At most `per_second` order requests in any one-second window, from this process.

    A sliding window rather than a token bucket: a bucket that allows a burst of N, then refills at
    N per second, lets N+1 requests into one second, and Kite's 10/s per account is strict.
    """

    def __init__(
        self,
        per_second: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        window_seconds: float = 1.0 + PACING_MARGIN_SECONDS,
    ):
        if per_second < 1:
            raise ValueError(f"orders_per_second must be at least 1, got {per_second}")
        self.per_second = per_second
        self._clock = clock
        self._sleep = sleep
        self._window = window_seconds
        self._turns: list[PacedTurn] = []
        self._lock = asyncio.Lock()

    async def wait_turn(self) -> PacedTurn:
        # The lock makes waiters take turns in arrival order.
        async with self._lock:
            while True:
                now = self._clock()
                # Sent times move turns later, out of grant order: prune every expired one.
                self._turns = [turn for turn in self._turns if now - turn.at < self._window]
                if len(self._turns) < self.per_second:
                    turn = PacedTurn(now, self._clock)
                    self._turns.append(turn)
                    return turn
                earliest = min(turn.at for turn in self._turns)
                await self._sleep(self._window - (now - earliest))


# The error_type of the last error answer on each thread (a thread runs one call at a time); the 5.2.2
# client drops unknown ones.
_last_answer = threading.local()


def _remember_error_type(response: requests.Response, *args: Any, **kwargs: Any) -> None:
    _last_answer.error_type = None
    if response.status_code < 400 or "json" not in response.headers.get("content-type", ""):
        return
    try:
        body = response.json()
    except ValueError:
        return
    if isinstance(body, dict) and isinstance(body.get("error_type"), str):
        _last_answer.error_type = body["error_type"]


def _header_auth(request: requests.PreparedRequest) -> requests.PreparedRequest:
    """kiteconnect's own Authorization header, as it is: an auth set on the session keeps requests
    from reading ~/.netrc on every call, and a netrc entry for Kite's host from replacing the token."""
    return request


# The fields kiteconnect 5.2's `_format_response` turns from Kite's `YYYY-MM-DD HH:MM:SS` into datetimes.
_KITE_TIMESTAMP_FIELDS = (
    "order_timestamp", "exchange_timestamp", "created", "last_instalment", "fill_timestamp", "timestamp",
    "last_trade_time",
)


class _KiteConnect(KiteConnect):
    """kiteconnect's client, its answers' timestamps read by `datetime.fromisoformat`.

    The client hands each one to dateutil's general parser: about 90 µs here, two per order on every
    read of the order book, so an afternoon's book of a few hundred orders cost tens of milliseconds of
    a worker's CPU per poll. `fromisoformat` gives the same naive datetime in well under a microsecond;
    a value it cannot read still goes to the client's own parser.
    """

    def _format_response(self, data: Any) -> Any:
        if type(data) is not list and type(data) is not dict:
            return super()._format_response(data)
        rows: list[Any] = data if type(data) is list else [data]
        for item in rows:
            for name in _KITE_TIMESTAMP_FIELDS:
                value = item.get(name)
                if value and len(value) == 19:
                    item[name] = _kite_time(value)
        return data


def _kite_time(value: str) -> Any:
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return dateutil.parser.parse(value)


class _KiteSession(requests.Session):
    """A session that reads the environment's proxy and CA-bundle settings once per host.

    requests reads them on every request, scanning every environment variable twice for *_proxy: a
    quarter of a Kite call's CPU here, more on a host with a long environment (a Kubernetes pod's
    service variables). They are read at the first request to a host; a change takes a restart.
    """

    def __init__(self) -> None:
        super().__init__()
        self._environment: dict[tuple[Any, ...], dict[str, Any]] = {}

    def merge_environment_settings(
        self, url: str, proxies: dict[str, str] | None, stream: bool | None, verify: Any, cert: Any
    ) -> dict[str, Any]:
        scheme, host, *_ = urlsplit(url)
        key = (scheme, host, tuple(sorted((proxies or {}).items())), stream, verify, cert)
        settings = self._environment.get(key)
        if settings is None:
            settings = self._environment[key] = super().merge_environment_settings(
                url, dict(proxies or {}), stream, verify, cert
            )
        return {**settings, "proxies": dict(settings["proxies"])}


def kite_session(connections: int) -> requests.Session:
    """The HTTP session of kiteconnect clients: `connections` kept-alive connections per host.

    One session serves every account of a broker factory: kiteconnect sends each request's
    Authorization header itself, so the accounts share the connections to Kite (no new TCP and TLS
    handshake for an account's first order of the day) and nothing else. Cookies are refused: no
    answer to one account rides on another's requests. No retries: a silent retry of a POST could
    place an order twice. (kiteconnect's `pool=` mounts on https only; the paper broker is plain http.)
    """
    session = _KiteSession()
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=connections, max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.cookies.set_policy(_NoCookies())
    session.auth = _header_auth
    session.hooks["response"].append(_remember_error_type)
    return session


class _NoCookies(http.cookiejar.DefaultCookiePolicy):
    def set_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False


class KiteBroker:
    """One Kite account, through one `KiteConnect` client.

    `root` points the client at another host (the paper broker); `timeout` is the HTTP timeout in
    seconds; `orders_per_second` paces place, modify and cancel in this process. `client` replaces
    the real client (tests).
    """

    def __init__(
        self,
        api_key: str,
        access_token: str,
        *,
        root: str | None = None,
        timeout: float = 7.0,
        orders_per_second: int | None = None,
        client: KiteClient | None = None,
        executor: ThreadPoolExecutor | None = None,
        session: requests.Session | None = None,
    ):
        if not api_key:
            raise BrokerConfigurationError("api_key is empty: pass the Kite app's api_key")
        if not access_token:
            raise BrokerConfigurationError("access_token is empty: log in to Kite and pass today's token")
        if timeout <= 0:
            raise BrokerConfigurationError(f"timeout must be positive seconds, got {timeout}")
        self.api_key = api_key
        self.root = root
        self.timeout = timeout
        self._access_token = access_token
        self._pacer = OrderPacer(orders_per_second) if orders_per_second else None
        self._closed = False
        self._book_rows: dict[Any, tuple[Mapping[str, Any], BrokerOrder]] = {}
        # A factory shares one pool among its brokers: hundreds of accounts must not mean thousands of threads.
        self._owns_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(max_workers=MAX_CONCURRENT_CALLS, thread_name_prefix="kite")
        # A factory's brokers share its session (see `kite_session`); one of its own is closed with it.
        self._owns_session = session is None
        self._client: KiteClient = client if client is not None else self._build_client(session)

    def __repr__(self) -> str:
        return f"KiteBroker(api_key={self.api_key!r}, root={self.root!r})"

    def close(self) -> None:
        """Let running calls finish, refuse new ones, and release the HTTP connections."""
        self._closed = True
        if self._owns_executor:
            self._executor.shutdown(wait=False)
        session = getattr(self._client, "reqsession", None)
        if self._owns_session and isinstance(session, requests.Session):
            session.close()

    def _build_client(self, session: requests.Session | None) -> KiteClient:
        client = _KiteConnect(self.api_key, access_token=self._access_token, root=self.root,
                             timeout=self.timeout)
        client.reqsession.close()
        client.reqsession = session if session is not None else kite_session(MAX_CONCURRENT_CALLS)
        return client

    # ---- the Broker protocol -------------------------------------------------------------------

    async def place_order(self, request: OrderRequest, *, send_by: float | None = None) -> str:
        params = order_params(request)
        turn = await self._wait_turn()

        def place() -> str:
            _check_on_time("place_order", send_by)
            _mark_sent(turn)
            return _order_id(self._client.place_order(**params))

        return await self._call("place_order", place)

    async def find_order_by_tag(self, tag: str) -> BrokerOrder | None:
        """The latest state of today's order carrying `tag`, or None.

        Several orders can share a tag (a new run after a failed one reuses it). The choice: the
        newest order that is not REJECTED, else the newest REJECTED one. Newest is by
        `order_timestamp`, then by place in the order book, which Kite lists oldest first.
        """
        matches = await self.find_orders_by_tag(tag)
        if not matches:
            return None
        live = [order for order in matches if order.status != "REJECTED"]
        if len(live) > 1:
            log.warning("%d live orders carry tag %s: %s", len(live), tag,
                        ", ".join(order.order_id for order in live))
        return (live or matches)[-1]

    async def orders(self) -> list[BrokerOrder]:
        """Today's order book: the latest state of every order, in the broker's order."""

        def book() -> list[BrokerOrder]:
            return self._book_of(_rows(self._client.orders()))

        return await self._call("orders", book)

    def _book_of(self, rows: Sequence[Mapping[str, Any]]) -> list[BrokerOrder]:
        """The book's orders; a row that has not changed since the last read keeps its conversion (an
        account's book grows all day, and most of its rows are finished orders that never change)."""
        kept, fresh, book = self._book_rows, {}, []
        for row in rows:
            key = row.get("order_id")
            seen = kept.get(key)
            order = seen[1] if seen is not None and seen[0] == row else order_from_kite(row)
            fresh[key] = (row, order)
            book.append(order)
        self._book_rows = fresh  # a book read at the same time on another thread may replace it: only a cache
        return book

    async def find_orders_by_tag(self, tag: str) -> list[BrokerOrder]:
        """Every order of today's book that carries `tag`, oldest first."""

        def find() -> list[BrokerOrder]:
            rows = _rows(self._client.orders())
            tagged = [(position, row) for position, row in enumerate(rows) if _carries_tag(row, tag)]
            tagged.sort(key=lambda item: (_sortable_time(item[1].get("order_timestamp")), item[0]))
            return [order_from_kite(row) for _, row in tagged]

        return await self._call("orders", find)

    async def order_status(self, order_id: str) -> BrokerOrder:
        history = await self.order_history(order_id)
        return history[-1]

    async def order_history(self, order_id: str) -> list[BrokerOrder]:
        def history() -> list[BrokerOrder]:
            rows = _rows(self._client.order_history(order_id))
            if not rows:
                raise OrderNotFoundError(f"Kite has no history for order {order_id}",
                                         error_type="OrderNotFound")
            return [order_from_kite(row) for row in rows]

        return await self._call("order_history", history, order_id=order_id)

    async def cancel_order(self, order_id: str, variety: str = "regular", *, send_by: float | None = None) -> str:
        turn = await self._wait_turn()

        def cancel() -> str:
            _check_on_time("cancel_order", send_by)
            _mark_sent(turn)
            return _order_id(self._client.cancel_order(variety=variety, order_id=order_id))

        return await self._call("cancel_order", cancel, order_id=order_id)

    async def modify_order(
        self,
        order_id: str,
        *,
        variety: str = "regular",
        quantity: int | None = None,
        price: Decimal | None = None,
        trigger_price: Decimal | None = None,
        order_type: str | None = None,
    ) -> str:
        changes: dict[str, Any] = {}
        if quantity is not None:
            changes["quantity"] = _positive_quantity(quantity)
        if price is not None:
            changes["price"] = _wire_price("price", price)
        if trigger_price is not None:
            changes["trigger_price"] = _wire_price("trigger_price", trigger_price)
        if order_type is not None:
            changes["order_type"] = _known_order_type(order_type)
        if not changes:
            raise InvalidOrderError(
                f"modify_order({order_id}) changes nothing: pass quantity, price, trigger_price or order_type"
            )
        turn = await self._wait_turn()

        def modify() -> str:
            _mark_sent(turn)
            return _order_id(self._client.modify_order(variety=variety, order_id=order_id, **changes))

        return await self._call("modify_order", modify, order_id=order_id)

    async def positions(self) -> list[Position]:
        def net_positions() -> list[Position]:
            answer = self._client.positions()
            return [position_from_kite(row) for row in _rows(answer["net"])]

        return await self._call("positions", net_positions)

    async def trades(self) -> list[BrokerTrade]:
        def trade_book() -> list[BrokerTrade]:
            return [trade_from_kite(row) for row in _rows(self._client.trades())]

        return await self._call("trades", trade_book)

    async def holdings(self) -> list[Holding]:
        def demat() -> list[Holding]:
            return [holding_from_kite(row) for row in _rows(self._client.holdings())]

        return await self._call("holdings", demat)

    async def last_price(self, exchange: str, tradingsymbol: str) -> Decimal:
        instrument = f"{exchange}:{tradingsymbol}"

        def ltp() -> Decimal:
            quotes = self._client.ltp(instrument)
            if not isinstance(quotes, Mapping):
                raise TypeError(f"ltp answered {type(quotes).__name__}, not an object")
            quote = quotes.get(instrument)
            if quote is None:
                raise InstrumentNotFoundError(
                    f"Kite has no last price for {instrument}: check the exchange and trading symbol",
                    error_type="InstrumentNotFound",
                )
            return _price(quote["last_price"], exchange)

        return await self._call("ltp", ltp)

    # ---- calling the client ---------------------------------------------------------------------

    async def _wait_turn(self) -> PacedTurn | None:
        return await self._pacer.wait_turn() if self._pacer is not None else None

    async def _call(self, operation: str, call: Callable[[], T], *, order_id: str | None = None) -> T:
        if self._closed:
            raise BrokerConfigurationError(f"Kite {operation} after close(): ask for a new broker")
        loop = asyncio.get_running_loop()
        # The thread runs in a copy of this context: its log lines carry the order they belong to.
        in_context = contextvars.copy_context().run
        return await loop.run_in_executor(self._executor, in_context, self._call_in_thread, operation, call, order_id)

    def _call_in_thread(self, operation: str, call: Callable[[], T], order_id: str | None) -> T:
        _last_answer.error_type = None
        try:
            return call()
        except BrokerError as exc:
            error: BrokerError = self._redacted(exc)
        except Exception as exc:
            error = classify_failure(
                exc, operation=operation, order_id=order_id,
                error_type=getattr(_last_answer, "error_type", None), redact=self._redact,
            )
        # Raised outside the except block: the original (which may hold the request headers) is not chained.
        raise error

    def _redact(self, text: str) -> str:
        return text.replace(self._access_token, "***")

    def _redacted(self, error: BrokerError) -> BrokerError:
        if self._access_token in error.message:
            error.message = self._redact(error.message)
            error.args = (error.message,)
        if error.broker_message and self._access_token in error.broker_message:
            error.broker_message = self._redact(error.broker_message)
        return error


# ---- classification -------------------------------------------------------------------------------


def classify_failure(
    exc: Exception,
    *,
    operation: str,
    order_id: str | None = None,
    error_type: str | None = None,
    redact: Callable[[str], str] = lambda text: text,
) -> BrokerError:
    """The `BrokerError` that says what `exc`, raised by the client during `operation`, means.

    `error_type` is the one the broker's answer named, when the client dropped it (it raises
    GeneralException for types it has no class for, such as MarginException).
    """
    if isinstance(exc, kite_exceptions.KiteException):
        return _classify_kite_error(exc, operation, order_id, error_type, redact)
    if isinstance(exc, requests.RequestException):
        return _classify_transport_error(exc, operation, redact)
    if isinstance(exc, (TypeError, KeyError, ValueError, IndexError, AttributeError, ArithmeticError)):
        return MalformedBrokerResponseError(
            redact(f"Kite {operation} answered in an unreadable shape ({type(exc).__name__}: {exc}); "
                   "it may have taken effect: reconcile before retrying"),
            error_type=type(exc).__name__,
        )
    return AmbiguousBrokerError(
        redact(f"Kite {operation} failed unexpectedly ({type(exc).__name__}: {exc}); "
               "it may have taken effect: reconcile before retrying"),
        error_type=type(exc).__name__,
    )


def _classify_kite_error(
    exc: kite_exceptions.KiteException,
    operation: str,
    order_id: str | None,
    error_type: str | None,
    redact: Callable[[str], str],
) -> BrokerError:
    status = exc.code if isinstance(exc.code, int) else None
    broker_message = redact(str(exc))
    # The client's class is authoritative when it has one; the answer's error_type fills in the rest.
    if type(exc) is not kite_exceptions.GeneralException or error_type is None:
        error_type = type(exc).__name__
    context = f"({error_type}, HTTP {status})"

    if isinstance(exc, kite_exceptions.TokenException):
        return SessionExpiredError(
            f"Kite session expired or access token invalid; re-login needed: {broker_message} {context}",
            http_status=status, error_type=error_type, broker_message=broker_message,
        )
    if status == 429:
        return RateLimitedError(
            f"Kite {operation} rate-limited, nothing was done; retry after a pause: "
            f"{broker_message} {context}",
            http_status=status, error_type=error_type, broker_message=broker_message,
        )
    definitive = DEFINITIVE_ERROR_BY_TYPE.get(error_type)
    answer_unreadable = isinstance(exc, (kite_exceptions.NetworkException, kite_exceptions.DataException))
    if definitive is None and not answer_unreadable and status is not None and 400 <= status < 500:
        definitive = DefinitiveBrokerError
    if definitive is not None:
        if order_id is not None and (status == 404 or ORDER_NOT_FOUND_MESSAGE.search(broker_message)):
            definitive = OrderNotFoundError
        return definitive(
            f"Kite refused {operation}: {broker_message} {context}",
            http_status=status, error_type=error_type, broker_message=broker_message,
        )
    # NetworkException, DataException, GeneralException 5xx and anything stranger: the outcome is unknown.
    return AmbiguousBrokerError(
        f"Kite {operation} failed on the broker's side; it may have taken effect: {broker_message} {context}",
        http_status=status, error_type=error_type, broker_message=broker_message,
    )


def _classify_transport_error(
    exc: requests.RequestException, operation: str, redact: Callable[[str], str]
) -> BrokerError:
    name = type(exc).__name__
    detail = redact(str(exc))
    if isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                        requests.exceptions.InvalidSchema, requests.exceptions.InvalidHeader)):
        return BrokerConfigurationError(
            f"Kite {operation} could not be sent: check ENGINE_KITE_ROOT ({name}: {detail})", error_type=name
        )
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return AmbiguousBrokerError(
            f"Kite {operation} timed out waiting for the answer; it may have taken effect: "
            f"reconcile before retrying ({name})",
            error_type=name,
        )
    if not _may_have_been_sent(exc):
        return AmbiguousBrokerError(
            f"Kite {operation} could not connect to the broker; the request never left ({name}: {detail})",
            error_type=name, may_have_reached_broker=False,
        )
    return AmbiguousBrokerError(
        f"Kite {operation} lost the connection mid-request; it may have taken effect: "
        f"reconcile before retrying ({name}: {detail})",
        error_type=name,
    )


def _may_have_been_sent(exc: requests.RequestException) -> bool:
    """False only when no connection was ever made, so no byte of the request went out."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return False
    if not isinstance(exc, requests.exceptions.ConnectionError) or not exc.args:
        return True
    cause = exc.args[0]
    reason = cause.reason if isinstance(cause, urllib3.exceptions.MaxRetryError) else cause
    # ConnectTimeoutError covers refused connections (NewConnectionError) and DNS failures too.
    return not isinstance(reason, urllib3.exceptions.ConnectTimeoutError)


# ---- requests out ---------------------------------------------------------------------------------


def order_params(request: OrderRequest) -> dict[str, Any]:
    """The keyword arguments of `KiteConnect.place_order` for `request`; a clear error if it is wrong."""
    if request.transaction_type not in TRANSACTION_TYPES:
        raise InvalidOrderError(
            f"transaction_type {request.transaction_type!r} is not one of {sorted(TRANSACTION_TYPES)}"
        )
    order_type = _known_order_type(request.order_type)
    params: dict[str, Any] = {
        "variety": request.variety,
        "exchange": request.exchange,
        "tradingsymbol": request.tradingsymbol,
        "transaction_type": request.transaction_type,
        "quantity": _positive_quantity(request.quantity),
        "product": request.product,
        "order_type": order_type,
        "validity": request.validity,
    }
    if not request.exchange or not request.tradingsymbol:
        raise InvalidOrderError("exchange and tradingsymbol must both be set, e.g. NSE and RELIANCE")
    if order_type in PRICED_ORDER_TYPES:
        if request.price is None:
            raise InvalidOrderError(f"a {order_type} order needs a price")
        params["price"] = _wire_price("price", request.price)
    elif request.price is not None:
        raise InvalidOrderError(f"a {order_type} order takes no price; drop it or use LIMIT/SL")
    if order_type in TRIGGERED_ORDER_TYPES:
        if request.trigger_price is None:
            raise InvalidOrderError(f"a {order_type} order needs a trigger_price")
        params["trigger_price"] = _wire_price("trigger_price", request.trigger_price)
    elif request.trigger_price is not None:
        raise InvalidOrderError(f"a {order_type} order takes no trigger_price; drop it or use SL/SL-M")
    if request.tag is not None:
        if not TAG_PATTERN.fullmatch(request.tag):
            raise InvalidOrderError(f"tag {request.tag!r} must be 1 to 20 letters or digits (Kite's rule)")
        params["tag"] = request.tag
    if request.market_protection is not None and order_type in MARKET_PROTECTED_ORDER_TYPES:
        if not CLIENT_SENDS_MARKET_PROTECTION:
            raise BrokerConfigurationError(
                "the installed kiteconnect cannot send market_protection, which Kite requires on "
                f"{order_type} orders: install the version pyproject.toml pins"
            )
        params["market_protection"] = request.market_protection
    return params


def _known_order_type(order_type: str) -> str:
    if order_type not in ORDER_TYPES:
        raise InvalidOrderError(f"order_type {order_type!r} is not one of {sorted(ORDER_TYPES)}")
    return order_type


def _positive_quantity(quantity: int) -> int:
    if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity <= 0:
        raise InvalidOrderError(f"quantity must be a positive whole number of shares, got {quantity!r}")
    return quantity


def _wire_price(name: str, price: Decimal) -> str:
    # A string on the wire: form encoding of a float could send 2500.4999999.
    if not isinstance(price, Decimal) or not price.is_finite() or price <= 0:
        raise InvalidOrderError(f"{name} must be a positive Decimal, got {price!r}")
    return str(price)


# ---- answers in ---------------------------------------------------------------------------------------


def order_from_kite(row: Mapping[str, Any]) -> BrokerOrder:
    """One order state from Kite's order book or order history."""
    exchange = str(row["exchange"])
    return BrokerOrder(
        order_id=str(row["order_id"]),
        status=str(row["status"]),
        tradingsymbol=str(row["tradingsymbol"]),
        exchange=exchange,
        transaction_type=str(row["transaction_type"]),
        order_type=str(row["order_type"]),
        product=str(row["product"]),
        variety=str(row.get("variety") or "regular"),
        quantity=_quantity(row["quantity"]),
        filled_quantity=_quantity(row.get("filled_quantity")),
        pending_quantity=_quantity(row.get("pending_quantity")),
        cancelled_quantity=_quantity(row.get("cancelled_quantity")),
        average_price=_price(row.get("average_price"), exchange),
        price=_price(row.get("price"), exchange),
        trigger_price=_price(row.get("trigger_price"), exchange),
        tag=row.get("tag") or None,
        status_message=row.get("status_message") or None,
        order_timestamp=_timestamp(row.get("order_timestamp")),
        exchange_update_timestamp=_timestamp(row.get("exchange_update_timestamp")),
        raw=dict(row),
    )


def position_from_kite(row: Mapping[str, Any]) -> Position:
    exchange = str(row["exchange"])
    return Position(
        exchange=exchange,
        tradingsymbol=str(row["tradingsymbol"]),
        product=str(row["product"]),
        quantity=_signed_quantity(row["quantity"]),
        average_price=_price(row.get("average_price"), exchange),
        last_price=_price(row.get("last_price"), exchange),
        pnl=_price(row.get("pnl"), exchange),
    )


def trade_from_kite(row: Mapping[str, Any]) -> BrokerTrade:
    exchange = str(row["exchange"])
    return BrokerTrade(
        trade_id=str(row["trade_id"]),
        order_id=str(row["order_id"]),
        exchange=exchange,
        tradingsymbol=str(row["tradingsymbol"]),
        product=str(row["product"]),
        transaction_type=str(row["transaction_type"]),
        quantity=_quantity(row.get("quantity")),
        price=_price(row.get("average_price"), exchange),
        fill_timestamp=_timestamp(row.get("fill_timestamp")),
    )


def holding_from_kite(row: Mapping[str, Any]) -> Holding:
    exchange = str(row["exchange"])
    return Holding(
        exchange=exchange,
        tradingsymbol=str(row["tradingsymbol"]),
        quantity=_quantity(row.get("quantity")) + _quantity(row.get("t1_quantity")),
        average_price=_price(row.get("average_price"), exchange),
    )


def _price(value: Any, exchange: str) -> Decimal:
    """Money from the client's JSON number: through its shortest string, so 109.4 stays 109.40."""
    if value is None or value == "":
        return Decimal(0).quantize(RUPEE_QUANTUM)
    if isinstance(value, bool):
        raise TypeError(f"a price cannot be {value!r}")
    amount = Decimal(str(value))
    if not amount.is_finite():
        raise ValueError(f"a price cannot be {value!r}")
    return amount.quantize(PRICE_QUANTUM_BY_EXCHANGE.get(exchange, RUPEE_QUANTUM), rounding=ROUND_HALF_UP)


def _signed_quantity(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, bool):
        raise TypeError(f"a quantity cannot be {value!r}")
    amount = Decimal(str(value))
    if amount != amount.to_integral_value():
        raise ValueError(f"a quantity must be whole, got {value!r}")
    return int(amount)


def _quantity(value: Any) -> int:
    quantity = _signed_quantity(value)
    if quantity < 0:
        raise ValueError(f"an order quantity cannot be negative, got {value!r}")
    return quantity


def _timestamp(value: Any) -> datetime | None:
    """As the client gives it (a datetime for `YYYY-MM-DD HH:MM:SS`); other strings parsed if ISO."""
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None
    return None


def _sortable_time(value: Any) -> datetime:
    moment = _timestamp(value)
    # Naive (Kite's IST wall clock) only: an aware one cannot be compared with the rest.
    return moment if moment is not None and moment.tzinfo is None else datetime.min


def _rows(answer: Any) -> Sequence[Mapping[str, Any]]:
    if not isinstance(answer, list) or not all(isinstance(row, Mapping) for row in answer):
        raise TypeError(f"expected a list of objects, got {type(answer).__name__}")
    return answer


def _carries_tag(row: Mapping[str, Any], tag: str) -> bool:
    tags = row.get("tags")
    return row.get("tag") == tag or (isinstance(tags, list) and tag in tags)


def _check_on_time(operation: str, send_by: float | None) -> None:
    """The last moment before the request leaves: past its slot, it is not sent."""
    if send_by is not None and (late := time.monotonic() - send_by) > 0:
        raise SendSlotMissedError(
            f"Kite {operation} not sent: {late * 1000:.0f} ms past its send slot; it waits for a new one"
        )


def _mark_sent(turn: PacedTurn | None) -> None:
    if turn is not None:
        turn.mark_sent()


def _order_id(answer: Any) -> str:
    if not isinstance(answer, (str, int)) or isinstance(answer, bool) or str(answer) == "":
        raise TypeError(f"expected an order id, got {answer!r}")
    return str(answer)
