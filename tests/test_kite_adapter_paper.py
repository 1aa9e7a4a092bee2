"""KiteBroker with the real kiteconnect client against the paper broker: each fault, seen through the
adapter's classification, and the order book proving what was and was not placed."""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import pytest
from kiteconnect import KiteConnect

from brokers.base import BrokerOrder, OrderRequest
from brokers.errors import (
    AmbiguousBrokerError,
    BrokerError,
    InvalidOrderError,
    OrderNotFoundError,
    OrderRefusedError,
    RateLimitedError,
    SessionExpiredError,
)
from brokers.factory import KiteBrokerFactory
from brokers.kite import KiteBroker
from brokers.paper.testing import PaperBrokerServer
from engine.settings import Settings

API_KEY = "adapterkey"
# Generous, so a loaded machine does not turn an ordinary answer into a timeout.
HTTP_TIMEOUT_SECONDS = 2.0
# For the lost-answer faults: a held answer must outlast the client's timeout.
SHORT_TIMEOUT_SECONDS = 0.5
HOLD_SECONDS = 1.5
POLLS = 200
POLL_SECONDS = 0.02


@pytest.fixture
def token(paper: PaperBrokerServer) -> str:
    """Today's access token of the adapter's paper account, with RELIANCE at 2500.50."""
    paper.control.set_price("RELIANCE", "2500.5")
    return paper.login(API_KEY)


@pytest.fixture
async def broker(paper: PaperBrokerServer, token: str) -> AsyncIterator[KiteBroker]:
    broker = KiteBroker(API_KEY, token, root=paper.url, timeout=HTTP_TIMEOUT_SECONDS)
    yield broker
    broker.close()


@pytest.fixture
async def impatient_broker(paper: PaperBrokerServer, token: str) -> AsyncIterator[KiteBroker]:
    broker = KiteBroker(API_KEY, token, root=paper.url, timeout=SHORT_TIMEOUT_SECONDS)
    yield broker
    broker.close()


def market_buy(tag: str, **overrides: Any) -> OrderRequest:
    fields: dict[str, Any] = {"exchange": "NSE", "tradingsymbol": "RELIANCE", "transaction_type": "BUY",
                              "quantity": 10, "tag": tag, "market_protection": -1}
    fields.update(overrides)
    return OrderRequest(**fields)


async def follow(broker: KiteBroker, order_id: str) -> BrokerOrder:
    for _ in range(POLLS):
        order = await broker.order_status(order_id)
        if order.is_terminal:
            return order
        await asyncio.sleep(POLL_SECONDS)
    raise AssertionError(f"order {order_id} is still {order.status} after {POLLS} polls")


def placed_with_tag(paper: PaperBrokerServer, tag: str) -> list[dict[str, Any]]:
    """Orders the paper broker created (not requests it refused) carrying `tag`."""
    return [row for row in paper.control.orders() if row["tag"] == tag and row["order_id"]]


def assert_no_secret(error: BaseException, token: str) -> None:
    text = "".join(traceback.format_exception(error)) + repr(error) + repr(vars(error))
    assert token not in text


# ---- the happy path ---------------------------------------------------------------------------------


async def test_market_order_is_placed_once_and_followed_to_complete(
    paper: PaperBrokerServer, broker: KiteBroker
) -> None:
    order_id = await broker.place_order(market_buy("HAPPY1"))
    done = await follow(broker, order_id)
    assert (done.status, done.filled_quantity, done.average_price) == ("COMPLETE", 10, Decimal("2500.50"))
    history = await broker.order_history(order_id)
    assert history[0].status == "PUT ORDER REQ RECEIVED" and history[-1].status == "COMPLETE"
    found = await broker.find_order_by_tag("HAPPY1")
    assert found is not None and found.order_id == order_id and found.tag == "HAPPY1"
    [position] = await broker.positions()
    assert (position.tradingsymbol, position.quantity, position.average_price) == ("RELIANCE", 10,
                                                                                   Decimal("2500.50"))
    assert await broker.last_price("NSE", "RELIANCE") == Decimal("2500.50")
    assert len(placed_with_tag(paper, "HAPPY1")) == 1


async def test_the_trade_book_holds_each_fill_with_its_price_and_time(broker: KiteBroker) -> None:
    order_id = await broker.place_order(market_buy("TRADES1", quantity=4))
    await follow(broker, order_id)

    [trade] = await broker.trades()

    assert (trade.order_id, trade.tradingsymbol, trade.product, trade.transaction_type) == (
        order_id, "RELIANCE", "MIS", "BUY")
    assert (trade.quantity, trade.price) == (4, Decimal("2500.50"))
    assert trade.fill_timestamp is not None and trade.trade_id


async def test_the_holdings_hold_the_demat_shares(paper: PaperBrokerServer, broker: KiteBroker) -> None:
    paper.control.set_account(API_KEY, holdings={"NSE:ITC": {"quantity": 12, "average_price": "440.25"}})

    [holding] = await broker.holdings()

    assert (holding.exchange, holding.tradingsymbol, holding.quantity) == ("NSE", "ITC", 12)
    assert holding.average_price == Decimal("440.25")


async def test_resting_limit_order_is_modified_then_cancelled(broker: KiteBroker) -> None:
    order_id = await broker.place_order(market_buy("LIMIT1", order_type="LIMIT", price=Decimal("2400.05"),
                                                   market_protection=None))
    await broker.modify_order(order_id, price=Decimal("2410.10"))
    resting = await broker.order_status(order_id)
    assert (resting.status, resting.price) == ("OPEN", Decimal("2410.10"))
    await broker.cancel_order(order_id)
    cancelled = await follow(broker, order_id)
    assert (cancelled.status, cancelled.cancelled_quantity) == ("CANCELLED", 10)
    with pytest.raises(OrderRefusedError, match="cannot be cancelled"):
        await broker.cancel_order(order_id)


async def test_unknown_order_id_is_not_found(broker: KiteBroker) -> None:
    with pytest.raises(OrderNotFoundError):
        await broker.order_status("999999999999999")
    assert await broker.find_order_by_tag("NEVERPLACED") is None


# ---- each fault, classified ------------------------------------------------------------------------


async def test_answer_lost_after_accept_is_ambiguous_and_found_by_tag(
    paper: PaperBrokerServer, impatient_broker: KiteBroker, token: str
) -> None:
    broker = impatient_broker
    paper.control.add_fault("accept_then_timeout", route="place_order", seconds=HOLD_SECONDS)
    with pytest.raises(AmbiguousBrokerError) as caught:
        await broker.place_order(market_buy("LATE1"))
    assert caught.value.error_type == "ReadTimeout" and caught.value.may_have_reached_broker
    assert_no_secret(caught.value, token)
    found = await broker.find_order_by_tag("LATE1")
    assert found is not None
    assert [row["order_id"] for row in placed_with_tag(paper, "LATE1")] == [found.order_id]


async def test_too_many_requests_is_rate_limited_and_places_nothing(
    paper: PaperBrokerServer, broker: KiteBroker
) -> None:
    paper.control.add_fault("http_429", route="place_order")
    with pytest.raises(RateLimitedError) as caught:
        await broker.place_order(market_buy("BUSY1"))
    assert (caught.value.http_status, caught.value.error_type) == (429, "NetworkException")
    assert await broker.find_order_by_tag("BUSY1") is None
    assert placed_with_tag(paper, "BUSY1") == []


@pytest.mark.parametrize(("kind", "status", "error_type"), [
    ("http_500", 500, "GeneralException"),
    ("http_502", 502, "NetworkException"),
    ("http_503", 503, "NetworkException"),
])
async def test_server_errors_are_ambiguous(
    paper: PaperBrokerServer, broker: KiteBroker, kind: str, status: int, error_type: str
) -> None:
    paper.control.add_fault(kind, route="place_order")
    with pytest.raises(AmbiguousBrokerError) as caught:
        await broker.place_order(market_buy("ERR1"))
    assert (caught.value.http_status, caught.value.error_type) == (status, error_type)
    assert caught.value.retryable


@pytest.mark.parametrize(("after_accept", "placed"), [(False, 0), (True, 1)], ids=["before", "after"])
async def test_dropped_connection_is_ambiguous(
    paper: PaperBrokerServer, broker: KiteBroker, after_accept: bool, placed: int
) -> None:
    paper.control.add_fault("drop_connection", route="place_order", after_accept=after_accept)
    with pytest.raises(AmbiguousBrokerError) as caught:
        await broker.place_order(market_buy("DROP1"))
    # The connection opened, so the client cannot know whether the order went through.
    assert caught.value.may_have_reached_broker
    found = await broker.find_order_by_tag("DROP1")
    assert (found is not None) == bool(placed)
    assert len(placed_with_tag(paper, "DROP1")) == placed


async def test_rejected_order_ends_rejected_with_the_message(
    paper: PaperBrokerServer, broker: KiteBroker
) -> None:
    paper.control.add_fault("reject", route="place_order", message="RMS:Margin Exceeds")
    order_id = await broker.place_order(market_buy("REJ1"))
    rejected = await follow(broker, order_id)
    assert (rejected.status, rejected.status_message) == ("REJECTED", "RMS:Margin Exceeds")
    assert rejected.filled_quantity == 0


async def test_input_error_is_definitive(paper: PaperBrokerServer, broker: KiteBroker) -> None:
    with pytest.raises(InvalidOrderError) as caught:
        await broker.place_order(market_buy("BADIN1", product="XYZ"))
    assert (caught.value.http_status, caught.value.error_type) == (400, "InputException")
    assert "product" in (caught.value.broker_message or "")
    assert not caught.value.retryable
    assert placed_with_tag(paper, "BADIN1") == []


async def test_expired_token_needs_relogin(paper: PaperBrokerServer, broker: KiteBroker, token: str) -> None:
    paper.control.expire_tokens(API_KEY)
    failures: list[BrokerError] = []
    for call in (broker.place_order(market_buy("EXP1")), broker.find_order_by_tag("EXP1"), broker.positions()):
        with pytest.raises(SessionExpiredError) as caught:
            await call
        assert (caught.value.http_status, caught.value.error_type) == (403, "TokenException")
        assert "re-login needed" in str(caught.value)
        failures.append(caught.value)
    for failure in failures:
        assert_no_secret(failure, token)


async def test_no_error_or_repr_carries_the_access_token(
    paper: PaperBrokerServer, impatient_broker: KiteBroker, token: str
) -> None:
    broker = impatient_broker
    faults: list[tuple[str, dict[str, Any]]] = [
        ("accept_then_timeout", {"seconds": HOLD_SECONDS}), ("http_429", {}), ("http_500", {}), ("http_503", {}),
        ("drop_connection", {"after_accept": True}),
    ]
    errors: list[BrokerError] = []
    for kind, params in faults:
        paper.control.add_fault(kind, route="place_order", **params)
        with pytest.raises(BrokerError) as caught:
            await broker.place_order(market_buy("SECRET1"))
        errors.append(caught.value)
    with pytest.raises(BrokerError) as caught:
        await broker.place_order(market_buy("SECRET1", product="XYZ"))
    errors.append(caught.value)
    assert len(errors) == len(faults) + 1
    for error in errors:
        assert_no_secret(error, token)
    assert token not in repr(broker)


# ---- pacing ------------------------------------------------------------------------------------------------


async def test_paced_burst_stays_under_the_brokers_limit(paper: PaperBrokerServer, token: str) -> None:
    # Unpaced, the same burst from 8 threads had 5 of 15 refused with 429.
    broker = KiteBroker(API_KEY, token, root=paper.url, timeout=2.0, orders_per_second=10)
    try:
        order_ids = await asyncio.gather(
            *(broker.place_order(market_buy(f"PACE{n}", quantity=1)) for n in range(15))
        )
    finally:
        broker.close()
    assert len(set(order_ids)) == 15
    requests = paper.control.requests()
    assert len(requests) == 15
    assert not any(row["rate_limited"] for row in requests)


# ---- the factory's shared connections ------------------------------------------------------------------


async def test_accounts_of_one_factory_share_kept_alive_connections_each_with_its_own_token(
    paper: PaperBrokerServer, token: str
) -> None:
    other_token = paper.login("adapterkey2")
    factory = KiteBrokerFactory(Settings(kite_root=paper.url, broker_http_timeout_seconds=HTTP_TIMEOUT_SECONDS))
    try:
        first = factory.for_credentials(API_KEY, token)
        second = factory.for_credentials("adapterkey2", other_token)
        order_id = await first.place_order(market_buy("SHARED1"))
        for _ in range(3):  # one after another: each call finds the connection the last one left
            assert [order.order_id for order in await first.orders()] == [order_id]
            assert await second.orders() == []  # the second account's own token, not the first's
        assert connections_made(first, second, url=paper.url) == 1
    finally:
        factory.close()


def connections_made(*brokers: KiteBroker, url: str) -> int:
    """HTTP connections the brokers' clients opened to `url`'s host, over their lifetime."""
    pools = {
        id(pool): pool
        for broker in brokers
        for manager in [cast(KiteConnect, broker._client).reqsession.get_adapter(url).poolmanager]
        for pool in (manager.pools[key] for key in manager.pools.keys())
    }
    return sum(pool.num_connections for pool in pools.values())


async def test_a_netrc_entry_for_the_brokers_host_does_not_replace_the_token(
    paper: PaperBrokerServer, broker: KiteBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password something\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    order_id = await broker.place_order(market_buy("NETRC1"))
    assert (await follow(broker, order_id)).status == "COMPLETE"


async def test_the_environments_proxy_and_ca_settings_are_read_once_per_host_not_per_request(
    paper: PaperBrokerServer, broker: KiteBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    import requests.sessions

    reads: list[str] = []
    read = requests.sessions.get_environ_proxies

    def counted(url: str, no_proxy: str | None = None) -> dict[str, str]:
        reads.append(url)
        return read(url, no_proxy=no_proxy)

    monkeypatch.setattr(requests.sessions, "get_environ_proxies", counted)
    for index in range(3):
        order_id = await broker.place_order(market_buy(f"ENV{index}"))
        assert (await broker.order_status(order_id)).order_id == order_id
    assert len(reads) == 1  # six requests to one host


@pytest.mark.parametrize(
    "environment",
    [
        {},
        {"HTTP_PROXY": "http://proxy.example:3128", "HTTPS_PROXY": "http://proxy.example:3129"},
        {"HTTP_PROXY": "http://proxy.example:3128", "NO_PROXY": "127.0.0.1,localhost"},
        {"REQUESTS_CA_BUNDLE": "/etc/corporate/ca.pem"},
        {"CURL_CA_BUNDLE": "/etc/curl/ca.pem", "https_proxy": "http://proxy.example:3129"},
    ],
)
def test_the_kite_session_merges_the_environment_as_requests_itself_does(
    environment: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import requests

    from brokers.kite import kite_session

    for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    for url in ("http://127.0.0.1:8700/orders", "https://api.kite.trade/orders/regular"):
        # kiteconnect's arguments: its own (empty) proxies, verify=True, no stream, no client cert.
        expected = requests.Session().merge_environment_settings(url, {}, None, True, None)
        session = kite_session(2)
        assert session.merge_environment_settings(url, {}, None, True, None) == expected
        assert session.merge_environment_settings(url, {}, None, True, None) == expected  # from the cache


def kite_answer() -> list[dict[str, Any]]:
    """Rows as Kite sends them: every timestamp field kiteconnect converts, in its format and not."""
    from brokers.kite import _KITE_TIMESTAMP_FIELDS

    row: dict[str, Any] = {name: "2021-05-31 09:18:57" for name in _KITE_TIMESTAMP_FIELDS}
    return [
        row,
        {**row, "order_timestamp": "31-05-2021 09:18:57", "exchange_timestamp": "2021-05-31T09:15:38"},
        {**row, "order_timestamp": None, "exchange_timestamp": "", "fill_timestamp": "2021-05-31",
         "timestamp": "2021-05-31 09:18:57.123456", "exchange_update_timestamp": "2021-05-31 09:18:58"},
    ]


def test_the_clients_timestamps_read_as_kiteconnect_itself_reads_them() -> None:
    from brokers.kite import _KiteConnect

    ours, theirs = _KiteConnect("key"), KiteConnect("key")
    assert ours._format_response(kite_answer()) == theirs._format_response(kite_answer())
    assert ours._format_response(kite_answer()[1]) == theirs._format_response(kite_answer()[1])  # one order
    assert ours._format_response(kite_answer())[1]["order_timestamp"].day == 31  # dateutil's reading, day first


async def test_the_order_book_through_the_adapter_is_kiteconnects_own_reading_of_it_without_dateutil(
    broker: KiteBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dateutil.parser

    for index in range(3):
        await follow(broker, await broker.place_order(market_buy(f"TIME{index}")))
    client = cast(KiteConnect, broker._client)
    raw = client._get("orders")
    assert all(isinstance(row["order_timestamp"], str) for row in raw)
    expected = KiteConnect._format_response(client, client._get("orders"))
    parsed: list[str] = []
    parse = dateutil.parser.parse

    def counted(text: str, *args: Any, **kwargs: Any) -> Any:
        parsed.append(text)
        return parse(text, *args, **kwargs)

    monkeypatch.setattr(dateutil.parser, "parse", counted)
    assert client.orders() == expected
    book = await broker.orders()
    assert len(book) == 3 and all(order.order_timestamp is not None for order in book)
    assert parsed == []  # every timestamp was Kite's own format


async def test_an_order_book_read_converts_only_the_rows_that_changed_since_the_last(
    broker: KiteBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    import brokers.kite

    resting = [
        await broker.place_order(market_buy(f"BOOK{index}", order_type="LIMIT", price=Decimal("2400.05"),
                                            market_protection=None))
        for index in range(3)
    ]
    converted: list[str] = []
    convert = brokers.kite.order_from_kite

    def counted(row: Any) -> BrokerOrder:
        converted.append(str(row["order_id"]))
        return convert(row)

    monkeypatch.setattr(brokers.kite, "order_from_kite", counted)
    first = await broker.orders()
    assert sorted(converted) == sorted(resting)
    converted.clear()
    await broker.cancel_order(resting[1])
    second = await broker.orders()
    assert converted == [resting[1]]  # the two untouched rows kept their reading
    assert {o.order_id: o.status for o in second} == {resting[0]: "OPEN", resting[1]: "CANCELLED", resting[2]: "OPEN"}
    assert [o.order_id for o in second] == [o.order_id for o in first]
    assert second[0] == first[0] and second[0].raw == first[0].raw
