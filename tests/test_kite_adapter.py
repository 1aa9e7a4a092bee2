"""KiteBroker on its own: classification of every client failure, conversions, validation, pacing.

A fake client stands in for `KiteConnect` where a failure is hard to provoke; the real client talks
to a scripted local HTTP server for the failures that only a real socket shows.
"""

from __future__ import annotations

import inspect
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from datetime import datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import pytest
import requests
import urllib3.exceptions
from kiteconnect import KiteConnect
from kiteconnect import exceptions as kite_exceptions

from brokers import kite
from brokers.base import OrderRequest
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
from brokers.factory import KiteBrokerFactory
from brokers.kite import KiteBroker, OrderPacer, PacedTurn, classify_failure, order_from_kite
from engine.settings import Settings
from tests.fixtures.ports import free_port

API_KEY = "unitkey"
ACCESS_TOKEN = "tokSECRET7f3a9c"


def kite_order(**overrides: Any) -> dict[str, Any]:
    """One row of Kite's order book, as the client hands it over (floats, parsed timestamps)."""
    row: dict[str, Any] = {
        "order_id": "250101000000001",
        "exchange_order_id": "1100000000000001",
        "status": "COMPLETE",
        "status_message": None,
        "order_timestamp": datetime(2025, 1, 1, 9, 15, 1),
        "exchange_update_timestamp": "2025-01-01 09:15:02",
        "variety": "regular",
        "exchange": "NSE",
        "tradingsymbol": "RELIANCE",
        "order_type": "MARKET",
        "transaction_type": "BUY",
        "validity": "DAY",
        "product": "MIS",
        "quantity": 10,
        "price": 0,
        "trigger_price": 0,
        "average_price": 2500.1,
        "filled_quantity": 10,
        "pending_quantity": 0,
        "cancelled_quantity": 0,
        "market_protection": -1,
        "tag": "t1",
        "tags": ["t1"],
    }
    row.update(overrides)
    return row


class FakeKiteClient:
    """Answers like `KiteConnect`, or raises what `failure` makes; records every call and its thread."""

    def __init__(self) -> None:
        self.failure: Callable[[], Exception] | None = None
        self.book: list[dict[str, Any]] = []
        self.history: list[dict[str, Any]] = [kite_order()]
        self.net_positions: list[dict[str, Any]] = []
        self.trade_book: list[dict[str, Any]] = []
        self.quotes: Any = {}
        self.order_id: Any = "250101000000001"
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.threads: list[int] = []

    def _answer(self, name: str, answer: Any, **params: Any) -> Any:
        self.calls.append((name, params))
        self.threads.append(threading.get_ident())
        if self.failure is not None:
            raise self.failure()
        return answer

    def place_order(self, variety: str, exchange: str, tradingsymbol: str, transaction_type: str,
                    quantity: int, product: str, order_type: str, **params: Any) -> Any:
        return self._answer("place_order", self.order_id, variety=variety, exchange=exchange,
                            tradingsymbol=tradingsymbol, transaction_type=transaction_type, quantity=quantity,
                            product=product, order_type=order_type, **params)

    def modify_order(self, variety: str, order_id: str, **params: Any) -> Any:
        return self._answer("modify_order", self.order_id, variety=variety, order_id=order_id, **params)

    def cancel_order(self, variety: str, order_id: str) -> Any:
        return self._answer("cancel_order", self.order_id, variety=variety, order_id=order_id)

    def orders(self) -> Any:
        return self._answer("orders", self.book)

    def order_history(self, order_id: str) -> Any:
        return self._answer("order_history", self.history, order_id=order_id)

    def positions(self) -> Any:
        return self._answer("positions", {"net": self.net_positions, "day": []})

    def trades(self) -> Any:
        return self._answer("trades", self.trade_book)

    def holdings(self) -> Any:
        return self._answer("holdings", [])

    def ltp(self, *instruments: str) -> Any:
        return self._answer("ltp", self.quotes, instruments=instruments)


@pytest.fixture
def fake() -> FakeKiteClient:
    return FakeKiteClient()


@pytest.fixture
def broker(fake: FakeKiteClient) -> Iterator[KiteBroker]:
    broker = KiteBroker(API_KEY, ACCESS_TOKEN, client=fake)
    yield broker
    broker.close()


def market_buy(**overrides: Any) -> OrderRequest:
    fields: dict[str, Any] = {
        "exchange": "NSE", "tradingsymbol": "RELIANCE", "transaction_type": "BUY", "quantity": 10,
        "tag": "t1", "market_protection": -1,
    }
    fields.update(overrides)
    return OrderRequest(**fields)


def assert_no_secret(error: BaseException) -> None:
    text = "".join(traceback.format_exception(error)) + repr(error) + repr(vars(error))
    assert ACCESS_TOKEN not in text
    assert error.__cause__ is None and error.__context__ is None


def connection_error(reason: Exception) -> requests.exceptions.ConnectionError:
    return requests.exceptions.ConnectionError(
        urllib3.exceptions.MaxRetryError(None, "/orders/regular", reason)  # type: ignore[arg-type]
    )


# ---- classification of every failure the client raises -------------------------------------------

CLASSIFICATION = [
    # (what the client raises, the error we raise, HTTP status kept, error_type kept)
    (lambda: kite_exceptions.TokenException("Incorrect `api_key` or `access_token`.", 403),
     SessionExpiredError, 403, "TokenException"),
    (lambda: kite_exceptions.InputException("Invalid `quantity`.", 400), InvalidOrderError, 400,
     "InputException"),
    (lambda: kite_exceptions.PermissionException("Insufficient permission.", 403), PermissionDeniedError,
     403, "PermissionException"),
    (lambda: kite_exceptions.OrderException("Order cannot be modified now.", 400), OrderRefusedError, 400,
     "OrderException"),
    (lambda: kite_exceptions.NetworkException("Too many requests", 429), RateLimitedError, 429,
     "NetworkException"),
    (lambda: kite_exceptions.NetworkException("Bad gateway", 502), AmbiguousBrokerError, 502,
     "NetworkException"),
    (lambda: kite_exceptions.NetworkException("Service unavailable", 503), AmbiguousBrokerError, 503,
     "NetworkException"),
    (lambda: kite_exceptions.NetworkException("Gateway timeout", 504), AmbiguousBrokerError, 504,
     "NetworkException"),
    (lambda: kite_exceptions.DataException("Bad response from the OMS", 502), AmbiguousBrokerError, 502,
     "DataException"),
    (lambda: kite_exceptions.GeneralException("Something went wrong", 500), AmbiguousBrokerError, 500,
     "GeneralException"),
    (lambda: kite_exceptions.GeneralException("Bad request", 400), DefinitiveBrokerError, 400,
     "GeneralException"),
    (lambda: kite_exceptions.GeneralException("Slow down", 429), RateLimitedError, 429, "GeneralException"),
    (lambda: requests.exceptions.ReadTimeout("read timed out"), AmbiguousBrokerError, None, "ReadTimeout"),
    (lambda: requests.exceptions.ConnectTimeout("connect timed out"), AmbiguousBrokerError, None,
     "ConnectTimeout"),
    (lambda: connection_error(urllib3.exceptions.ProtocolError("Connection aborted.")),
     AmbiguousBrokerError, None, "ConnectionError"),
    (lambda: requests.exceptions.ChunkedEncodingError("Connection broken: IncompleteRead"),
     AmbiguousBrokerError, None, "ChunkedEncodingError"),
    (lambda: requests.exceptions.ContentDecodingError("bad gzip"), AmbiguousBrokerError, None,
     "ContentDecodingError"),
    (lambda: requests.exceptions.InvalidURL("Invalid URL 'http://'"), BrokerConfigurationError, None,
     "InvalidURL"),
    (lambda: requests.exceptions.MissingSchema("No scheme supplied"), BrokerConfigurationError, None,
     "MissingSchema"),
    (lambda: TypeError("attribute name must be string"), MalformedBrokerResponseError, None, "TypeError"),
    (lambda: KeyError("content-type"), MalformedBrokerResponseError, None, "KeyError"),
    (lambda: ValueError("Expecting value"), MalformedBrokerResponseError, None, "ValueError"),
    (lambda: RuntimeError("something new"), AmbiguousBrokerError, None, "RuntimeError"),
]


@pytest.mark.parametrize(("raised", "expected", "http_status", "error_type"), CLASSIFICATION,
                         ids=[f"{case[3]}-{case[2]}-{case[1].__name__}" for case in CLASSIFICATION])
async def test_each_client_failure_is_classified(
    broker: KiteBroker, fake: FakeKiteClient, raised: Callable[[], Exception],
    expected: type[BrokerError], http_status: int | None, error_type: str,
) -> None:
    fake.failure = raised
    with pytest.raises(BrokerError) as caught:
        await broker.place_order(market_buy())
    error = caught.value
    assert type(error) is expected
    assert error.http_status == http_status
    assert error.error_type == error_type
    assert error.retryable is (expected in (AmbiguousBrokerError, MalformedBrokerResponseError,
                                            RateLimitedError))
    assert_no_secret(error)


async def test_broker_message_is_kept_for_people(broker: KiteBroker, fake: FakeKiteClient) -> None:
    fake.failure = lambda: kite_exceptions.InputException("Invalid `quantity`.", 400)
    with pytest.raises(InvalidOrderError) as caught:
        await broker.place_order(market_buy())
    assert caught.value.broker_message == "Invalid `quantity`."
    assert "Invalid `quantity`." in str(caught.value)


async def test_session_expiry_says_relogin_is_needed(broker: KiteBroker, fake: FakeKiteClient) -> None:
    fake.failure = lambda: kite_exceptions.TokenException("Token expired", 403)
    with pytest.raises(SessionExpiredError, match="re-login needed"):
        await broker.positions()


@pytest.mark.parametrize(("error_type", "expected"), [
    ("MarginException", InsufficientFundsError),
    ("HoldingException", InsufficientHoldingsError),
    ("UserException", AccountError),
    ("SomethingNew", DefinitiveBrokerError),
])
def test_error_types_without_a_client_class_are_named_by_the_answer(
    error_type: str, expected: type[BrokerError]
) -> None:
    error = classify_failure(kite_exceptions.GeneralException("Insufficient funds.", 400),
                             operation="place_order", error_type=error_type)
    assert type(error) is expected
    assert (error.error_type, error.http_status) == (error_type, 400)


def test_connection_that_never_opened_did_not_reach_the_broker() -> None:
    refused = connection_error(urllib3.exceptions.NewConnectionError(None, "Connection refused"))  # type: ignore[arg-type]
    unresolved = connection_error(urllib3.exceptions.NameResolutionError("kite.invalid", None, OSError()))  # type: ignore[arg-type]
    for raised in (refused, unresolved, requests.exceptions.ConnectTimeout("connect timed out")):
        error = classify_failure(raised, operation="place_order")
        assert isinstance(error, AmbiguousBrokerError)
        assert error.may_have_reached_broker is False


def test_dropped_or_timed_out_request_may_have_reached_the_broker() -> None:
    for raised in (requests.exceptions.ReadTimeout("read timed out"),
                   connection_error(urllib3.exceptions.ProtocolError("Connection aborted.")),
                   requests.exceptions.ChunkedEncodingError("IncompleteRead")):
        error = classify_failure(raised, operation="place_order")
        assert isinstance(error, AmbiguousBrokerError)
        assert error.may_have_reached_broker is True


async def test_unknown_order_id_is_order_not_found(broker: KiteBroker, fake: FakeKiteClient) -> None:
    fake.failure = lambda: kite_exceptions.GeneralException("Couldn't find that `order_id`.", 404)
    with pytest.raises(OrderNotFoundError):
        await broker.order_status("999")
    fake.failure = lambda: kite_exceptions.InputException("Couldn't find that `order_id`.", 400)
    with pytest.raises(OrderNotFoundError):
        await broker.cancel_order("999")
    fake.failure = None
    fake.history = []
    with pytest.raises(OrderNotFoundError):
        await broker.order_history("999")


async def test_secrets_echoed_by_the_broker_are_redacted(broker: KiteBroker, fake: FakeKiteClient) -> None:
    echoes: list[Callable[[], Exception]] = [
        lambda: kite_exceptions.TokenException(f"Invalid token {API_KEY}:{ACCESS_TOKEN}", 403),
        lambda: kite_exceptions.InputException(f"bad header token {ACCESS_TOKEN}", 400),
        lambda: requests.exceptions.ConnectionError(f"proxy said Authorization: token {ACCESS_TOKEN}"),
        lambda: KeyError(ACCESS_TOKEN),
    ]
    for echo in echoes:
        fake.failure = echo
        with pytest.raises(BrokerError) as caught:
            await broker.find_order_by_tag("t1")
        assert_no_secret(caught.value)
        assert "***" in str(caught.value)
    assert ACCESS_TOKEN not in repr(broker)


async def test_client_runs_off_the_event_loop_thread(broker: KiteBroker, fake: FakeKiteClient) -> None:
    await broker.find_order_by_tag("t1")
    await broker.order_status("1")
    assert fake.threads and threading.get_ident() not in fake.threads


async def test_closed_broker_refuses_calls(fake: FakeKiteClient) -> None:
    broker = KiteBroker(API_KEY, ACCESS_TOKEN, client=fake)
    broker.close()
    with pytest.raises(BrokerConfigurationError, match="after close"):
        await broker.positions()


def test_missing_credentials_are_refused_with_what_to_fix() -> None:
    with pytest.raises(BrokerConfigurationError, match="api_key"):
        KiteBroker("", ACCESS_TOKEN)
    with pytest.raises(BrokerConfigurationError, match="access_token"):
        KiteBroker(API_KEY, "")


# ---- orders out ----------------------------------------------------------------------------------


async def test_market_order_carries_market_protection_and_tag(
    broker: KiteBroker, fake: FakeKiteClient
) -> None:
    assert await broker.place_order(market_buy()) == "250101000000001"
    name, params = fake.calls[-1]
    assert name == "place_order"
    assert params == {
        "variety": "regular", "exchange": "NSE", "tradingsymbol": "RELIANCE", "transaction_type": "BUY",
        "quantity": 10, "product": "MIS", "order_type": "MARKET", "validity": "DAY", "tag": "t1",
        "market_protection": -1,
    }


async def test_limit_order_sends_prices_as_exact_strings(broker: KiteBroker, fake: FakeKiteClient) -> None:
    await broker.place_order(market_buy(order_type="SL", price=Decimal("2500.50"),
                                        trigger_price=Decimal("2499.95")))
    params = fake.calls[-1][1]
    assert (params["price"], params["trigger_price"]) == ("2500.50", "2499.95")
    # market_protection belongs to MARKET and SL-M orders only.
    assert "market_protection" not in params


def test_installed_client_accepts_market_protection() -> None:
    assert "market_protection" in inspect.signature(KiteConnect.place_order).parameters
    assert kite.CLIENT_SENDS_MARKET_PROTECTION


async def test_client_without_market_protection_refuses_market_orders(
    broker: KiteBroker, fake: FakeKiteClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kite, "CLIENT_SENDS_MARKET_PROTECTION", False)
    with pytest.raises(BrokerConfigurationError, match="market_protection"):
        await broker.place_order(market_buy())
    assert fake.calls == []


BAD_REQUESTS = [
    (dict(quantity=0), "quantity"),
    (dict(quantity=-5), "quantity"),
    (dict(transaction_type="HOLD"), "transaction_type"),
    (dict(order_type="STOP"), "order_type"),
    (dict(order_type="LIMIT"), "needs a price"),
    (dict(order_type="LIMIT", price=2500.5), "Decimal"),
    (dict(order_type="LIMIT", price=Decimal("-1")), "positive"),
    (dict(order_type="SL-M"), "needs a trigger_price"),
    (dict(price=Decimal("2500")), "takes no price"),
    (dict(trigger_price=Decimal("2500")), "takes no trigger_price"),
    (dict(tag="order:s1:1:entry"), "letters or digits"),
    (dict(tag="a" * 21), "1 to 20"),
    (dict(tradingsymbol=""), "tradingsymbol"),
]


@pytest.mark.parametrize(("overrides", "says"), BAD_REQUESTS, ids=[says for _, says in BAD_REQUESTS])
async def test_bad_order_request_is_refused_before_sending(
    broker: KiteBroker, fake: FakeKiteClient, overrides: dict[str, Any], says: str
) -> None:
    with pytest.raises(InvalidOrderError, match=says):
        await broker.place_order(market_buy(**overrides))
    assert fake.calls == []


async def test_modify_and_cancel(broker: KiteBroker, fake: FakeKiteClient) -> None:
    assert await broker.modify_order("42", price=Decimal("2501.05"), quantity=5) == "250101000000001"
    assert fake.calls[-1] == ("modify_order", {"variety": "regular", "order_id": "42", "quantity": 5,
                                               "price": "2501.05"})
    assert await broker.cancel_order("42") == "250101000000001"
    assert fake.calls[-1] == ("cancel_order", {"variety": "regular", "order_id": "42"})
    with pytest.raises(InvalidOrderError, match="changes nothing"):
        await broker.modify_order("42")


async def test_missing_order_id_in_answer_is_ambiguous(broker: KiteBroker, fake: FakeKiteClient) -> None:
    fake.order_id = None
    with pytest.raises(MalformedBrokerResponseError):
        await broker.place_order(market_buy())


# ---- answers in ----------------------------------------------------------------------------------


def test_order_converts_money_to_decimal_without_float_artefacts() -> None:
    order = order_from_kite(kite_order(average_price=0.1 + 0.2, price=109.4, trigger_price=None,
                                       quantity=10.0, filled_quantity="10"))
    assert order.average_price == Decimal("0.30") and str(order.average_price) == "0.30"
    assert str(order.price) == "109.40"
    assert order.trigger_price == Decimal("0")
    assert (order.quantity, order.filled_quantity) == (10, 10)
    assert order.is_terminal


def test_currency_derivative_prices_keep_four_places() -> None:
    order = order_from_kite(kite_order(exchange="CDS", tradingsymbol="USDINR25JANFUT", average_price=83.1225))
    assert order.average_price == Decimal("83.1225")


def test_timestamps_as_given_strings_parsed_garbage_dropped() -> None:
    order = order_from_kite(kite_order())
    assert order.order_timestamp == datetime(2025, 1, 1, 9, 15, 1)
    assert order.exchange_update_timestamp == datetime(2025, 1, 1, 9, 15, 2)
    odd = order_from_kite(kite_order(order_timestamp=None, exchange_update_timestamp="soon"))
    assert (odd.order_timestamp, odd.exchange_update_timestamp) == (None, None)


async def test_malformed_order_row_is_ambiguous(broker: KiteBroker, fake: FakeKiteClient) -> None:
    for broken in (kite_order(quantity=10.5), kite_order(average_price="n/a"), {"order_id": "1"}):
        fake.history = [broken]
        with pytest.raises(MalformedBrokerResponseError):
            await broker.order_status("1")


async def test_order_status_is_the_last_history_entry(broker: KiteBroker, fake: FakeKiteClient) -> None:
    fake.history = [kite_order(status="PUT ORDER REQ RECEIVED", filled_quantity=0, pending_quantity=10),
                    kite_order(status="OPEN", filled_quantity=4, pending_quantity=6),
                    kite_order(status="COMPLETE")]
    history = await broker.order_history("1")
    assert [order.status for order in history] == ["PUT ORDER REQ RECEIVED", "OPEN", "COMPLETE"]
    assert (await broker.order_status("1")).status == "COMPLETE"


async def test_find_by_tag_prefers_the_newest_live_order(broker: KiteBroker, fake: FakeKiteClient) -> None:
    fake.book = [
        kite_order(order_id="1", tag="other", tags=["other"]),
        kite_order(order_id="2", status="CANCELLED", order_timestamp=datetime(2025, 1, 1, 9, 16)),
        kite_order(order_id="3", status="OPEN", order_timestamp=datetime(2025, 1, 1, 9, 17)),
        kite_order(order_id="4", status="REJECTED", order_timestamp=datetime(2025, 1, 1, 9, 18)),
    ]
    found = await broker.find_order_by_tag("t1")
    assert found is not None and found.order_id == "3"
    assert [order.order_id for order in await broker.find_orders_by_tag("t1")] == ["2", "3", "4"]


async def test_find_by_tag_falls_back_to_newest_rejected(broker: KiteBroker, fake: FakeKiteClient) -> None:
    fake.book = [kite_order(order_id="5", status="REJECTED", order_timestamp=datetime(2025, 1, 1, 9, 18)),
                 kite_order(order_id="4", status="REJECTED", order_timestamp=datetime(2025, 1, 1, 9, 16))]
    found = await broker.find_order_by_tag("t1")
    assert found is not None and found.order_id == "5"


async def test_find_by_tag_reads_the_tags_list_and_misses_cleanly(
    broker: KiteBroker, fake: FakeKiteClient
) -> None:
    fake.book = [kite_order(order_id="7", tag="first", tags=["first", "t9"])]
    found = await broker.find_order_by_tag("t9")
    assert found is not None and found.order_id == "7"
    assert await broker.find_order_by_tag("nothere") is None


async def test_positions_are_the_net_ones_in_decimal(broker: KiteBroker, fake: FakeKiteClient) -> None:
    fake.net_positions = [{"exchange": "NSE", "tradingsymbol": "RELIANCE", "product": "MIS", "quantity": -10,
                           "average_price": 2500.1, "last_price": 2490.35, "pnl": 97.5}]
    [position] = await broker.positions()
    assert (position.quantity, position.average_price, position.last_price, position.pnl) == (
        -10, Decimal("2500.10"), Decimal("2490.35"), Decimal("97.50"))


async def test_last_price(broker: KiteBroker, fake: FakeKiteClient) -> None:
    fake.quotes = {"NSE:RELIANCE": {"instrument_token": 738561, "last_price": 2500.5}}
    assert await broker.last_price("NSE", "RELIANCE") == Decimal("2500.50")
    assert fake.calls[-1] == ("ltp", {"instruments": ("NSE:RELIANCE",)})
    with pytest.raises(InstrumentNotFoundError, match="NSE:NOSUCH"):
        await broker.last_price("NSE", "NOSUCH")


# ---- pacing --------------------------------------------------------------------------------------


async def test_pacer_lets_n_through_then_waits_for_the_window() -> None:
    now = [100.0]
    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    pacer = OrderPacer(3, clock=lambda: now[0], sleep=fake_sleep, window_seconds=1.0)
    for _ in range(3):  # at 100.0, 100.1, 100.2
        await pacer.wait_turn()
        now[0] += 0.1
    assert sleeps == []
    await pacer.wait_turn()  # the 4th waits until the 1st leaves the window, at 101.0
    assert sleeps == [pytest.approx(0.7)]
    await pacer.wait_turn()  # the 5th until the 2nd leaves, at 101.1
    assert sleeps == [pytest.approx(0.7), pytest.approx(0.1)]


async def test_pacer_counts_a_late_send_from_when_it_left() -> None:
    now = [100.0]
    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    pacer = OrderPacer(2, clock=lambda: now[0], sleep=fake_sleep, window_seconds=1.0)
    first = await pacer.wait_turn()
    await pacer.wait_turn()
    now[0] = 100.5
    first.mark_sent()  # it waited for a thread and left at 100.5, not 100.0
    now[0] = 101.0
    await pacer.wait_turn()  # the 2nd (100.0) has left the window, the 1st (100.5) has not
    assert sleeps == []
    await pacer.wait_turn()  # waits for the late 1st to leave, at 101.5
    assert sleeps == [pytest.approx(0.5)]


async def test_paced_broker_waits_its_turn_for_orders_only(fake: FakeKiteClient) -> None:
    broker = KiteBroker(API_KEY, ACCESS_TOKEN, client=fake, orders_per_second=2)
    turns: list[str] = []
    assert broker._pacer is not None

    take_turn = broker._pacer.wait_turn

    async def record_turn() -> PacedTurn:
        turns.append("turn")
        return await take_turn()

    broker._pacer.wait_turn = record_turn  # type: ignore[method-assign]
    try:
        await broker.place_order(market_buy())
        await broker.modify_order("1", quantity=1)
        await broker.cancel_order("1")
        await broker.order_status("1")
        await broker.positions()
    finally:
        broker.close()
    assert turns == ["turn"] * 3


def test_pacer_refuses_a_rate_below_one() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        OrderPacer(0)


# ---- factory -------------------------------------------------------------------------------------


def test_factory_caches_per_api_key_and_token() -> None:
    factory = KiteBrokerFactory(Settings(kite_root="http://127.0.0.1:9", broker_http_timeout_seconds=3.0))
    try:
        first = factory.for_credentials("k1", "tokA")
        assert factory.for_credentials("k1", "tokA") is first
        assert factory.for_credentials("k2", "tokA") is not first
        renewed = factory.for_credentials("k1", "tokB")
        assert renewed is not first
        assert factory.for_credentials("k1", "tokB") is renewed
        assert (renewed.root, renewed.timeout) == ("http://127.0.0.1:9", 3.0)
        assert "tokB" not in repr(factory) + repr(renewed)
    finally:
        factory.close()


# ---- the real client over real sockets -----------------------------------------------------------


class ScriptedKite:
    """A local HTTP server that answers each request with the next scripted action."""

    def __init__(self) -> None:
        self.actions: list[Callable[[BaseHTTPRequestHandler], None]] = []
        self.requests: list[tuple[str, str, dict[str, list[str]], str | None]] = []
        self.cookies: list[str | None] = []  # each request's Cookie header
        self.release = threading.Event()
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length).decode() if length else ""
                scripted.requests.append((self.command, self.path, parse_qs(body),
                                          self.headers.get("authorization")))
                scripted.cookies.append(self.headers.get("cookie"))
                scripted.actions.pop(0)(self)

            do_GET = do_POST = do_PUT = do_DELETE = _serve

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def answer(
    status: int, body: bytes, content_type: str | None = "application/json", *, cookie: str | None = None
) -> Callable[..., None]:
    def respond(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        if content_type:
            handler.send_header("Content-Type", content_type)
        if cookie:
            handler.send_header("Set-Cookie", cookie)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return respond


def hang_until_released(scripted: ScriptedKite) -> Callable[..., None]:
    def hang(handler: BaseHTTPRequestHandler) -> None:
        scripted.release.wait(10)
        handler.close_connection = True

    return hang


def drop_connection(handler: BaseHTTPRequestHandler) -> None:
    handler.close_connection = True


def truncated_chunked_body(handler: BaseHTTPRequestHandler) -> None:
    handler.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        b"Transfer-Encoding: chunked\r\n\r\n40\r\n{\"status\": \"succ")
    handler.close_connection = True


@pytest.fixture
def scripted() -> Iterator[ScriptedKite]:
    server = ScriptedKite()
    yield server
    server.close()


@pytest.fixture
def real_broker(scripted: ScriptedKite) -> Iterator[KiteBroker]:
    broker = KiteBroker(API_KEY, ACCESS_TOKEN, root=scripted.url, timeout=0.3)
    yield broker
    broker.close()


async def test_real_client_sends_kite_form_with_string_prices(
    scripted: ScriptedKite, real_broker: KiteBroker
) -> None:
    scripted.actions.append(answer(200, b'{"status": "success", "data": {"order_id": "151220000000000"}}'))
    order_id = await real_broker.place_order(market_buy(order_type="SL-M", trigger_price=Decimal("2499.90")))
    assert order_id == "151220000000000"
    method, path, form, authorization = scripted.requests[-1]
    assert (method, path) == ("POST", "/orders/regular")
    assert form["trigger_price"] == ["2499.90"] and form["market_protection"] == ["-1"]
    assert form["tag"] == ["t1"] and form["quantity"] == ["10"]
    assert authorization == f"token {API_KEY}:{ACCESS_TOKEN}"


async def test_accounts_sharing_a_factorys_session_never_send_each_other_a_cookie(scripted: ScriptedKite) -> None:
    factory = KiteBrokerFactory(Settings(kite_root=scripted.url, broker_http_timeout_seconds=1.0))
    empty_book = b'{"status": "success", "data": []}'
    scripted.actions += [answer(200, empty_book, cookie="session=first-account; Path=/"), answer(200, empty_book)]
    try:
        assert await factory.for_credentials(API_KEY, ACCESS_TOKEN).orders() == []
        assert await factory.for_credentials("other_key", "other_token").orders() == []
    finally:
        factory.close()
    assert [authorization for *_, authorization in scripted.requests] == [
        f"token {API_KEY}:{ACCESS_TOKEN}", "token other_key:other_token"
    ]
    assert scripted.cookies == [None, None]


async def test_real_read_timeout_is_ambiguous(scripted: ScriptedKite, real_broker: KiteBroker) -> None:
    scripted.actions.append(hang_until_released(scripted))
    with pytest.raises(AmbiguousBrokerError) as caught:
        await real_broker.place_order(market_buy())
    assert caught.value.error_type == "ReadTimeout" and caught.value.may_have_reached_broker
    assert_no_secret(caught.value)


async def test_real_dropped_connection_is_ambiguous(scripted: ScriptedKite, real_broker: KiteBroker) -> None:
    scripted.actions.append(drop_connection)
    with pytest.raises(AmbiguousBrokerError) as caught:
        await real_broker.place_order(market_buy())
    assert caught.value.error_type == "ConnectionError" and caught.value.may_have_reached_broker
    assert_no_secret(caught.value)


async def test_real_truncated_answer_is_ambiguous(scripted: ScriptedKite, real_broker: KiteBroker) -> None:
    scripted.actions.append(truncated_chunked_body)
    with pytest.raises(AmbiguousBrokerError) as caught:
        await real_broker.place_order(market_buy())
    assert caught.value.error_type == "ChunkedEncodingError" and caught.value.may_have_reached_broker


async def test_real_refused_connection_never_reached_the_broker() -> None:
    broker = KiteBroker(API_KEY, ACCESS_TOKEN, root=f"http://127.0.0.1:{free_port()}", timeout=0.3)
    try:
        with pytest.raises(AmbiguousBrokerError) as caught:
            await broker.place_order(market_buy())
    finally:
        broker.close()
    assert caught.value.may_have_reached_broker is False
    assert_no_secret(caught.value)


async def test_real_margin_error_keeps_its_error_type(
    scripted: ScriptedKite, real_broker: KiteBroker
) -> None:
    scripted.actions.append(answer(400, b'{"status": "error", "message": "Insufficient funds. Required margin'
                                        b' is 25000.50", "error_type": "MarginException", "data": null}'))
    with pytest.raises(InsufficientFundsError) as caught:
        await real_broker.place_order(market_buy())
    assert (caught.value.http_status, caught.value.error_type) == (400, "MarginException")
    assert caught.value.broker_message == "Insufficient funds. Required margin is 25000.50"


@pytest.mark.parametrize(("respond", "expected"), [
    # 5.2.2 raises TypeError on an error envelope without error_type, KeyError without a content type.
    (answer(500, b'{"status": "error", "message": "oops"}'), MalformedBrokerResponseError),
    (answer(200, b'{"status": "success", "data": {"order_id": "1"}}', content_type=None),
     MalformedBrokerResponseError),
    (answer(502, b"<html>Bad Gateway</html>", content_type="text/html"), AmbiguousBrokerError),
    (answer(200, b"{not json", content_type="application/json"), AmbiguousBrokerError),
    (answer(200, b'{"status": "success", "data": {}}'), MalformedBrokerResponseError),
], ids=["no-error-type", "no-content-type", "html-502", "bad-json", "no-order-id"])
async def test_real_malformed_answers_are_ambiguous(
    scripted: ScriptedKite, real_broker: KiteBroker, respond: Callable[..., None], expected: type[BrokerError]
) -> None:
    scripted.actions.append(respond)
    with pytest.raises(AmbiguousBrokerError) as caught:
        await real_broker.place_order(market_buy())
    assert type(caught.value) is expected


async def test_real_client_keeps_no_retry_for_posts(scripted: ScriptedKite, real_broker: KiteBroker) -> None:
    scripted.actions.append(drop_connection)
    with pytest.raises(AmbiguousBrokerError):
        await real_broker.place_order(market_buy())
    # One request reached the server: nothing below us retried the POST on its own.
    assert len(scripted.requests) == 1



async def test_a_request_past_its_send_slot_is_not_sent(broker: KiteBroker, fake: FakeKiteClient) -> None:
    sent_before = len(fake.calls)

    with pytest.raises(SendSlotMissedError, match="past its send slot"):
        await broker.place_order(market_buy(), send_by=time.monotonic() - 0.2)
    with pytest.raises(SendSlotMissedError, match="past its send slot"):
        await broker.cancel_order("42", send_by=time.monotonic() - 0.2)

    assert len(fake.calls) == sent_before  # nothing left for the broker
    assert await broker.place_order(market_buy(), send_by=time.monotonic() + 5) == "250101000000001"
    assert fake.calls[-1][0] == "place_order"
