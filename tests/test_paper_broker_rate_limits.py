"""Kite's rate limits on the paper broker, through the real kiteconnect client: quotes 1 a second, other
reads 10 a second, order requests 10 a second and per minute and per day; each switchable off."""

from __future__ import annotations

import time
from typing import Any

import pytest
from kiteconnect import KiteConnect
from kiteconnect import exceptions as kite_errors

from brokers.paper.control import SimControlError
from brokers.paper.testing import PaperBrokerServer
from dev.paper_broker import config_from, parse_args

# A second and a little: the sliding window has passed.
WINDOW_PASSED_SECONDS = 1.1


def place(kite: KiteConnect, **overrides: Any) -> str:
    params: dict[str, Any] = {
        "variety": "regular", "exchange": "NSE", "tradingsymbol": "INFY", "transaction_type": "BUY",
        "quantity": 1, "product": "MIS", "order_type": "LIMIT", "price": 1300,
    }
    params.update(overrides)
    return kite.place_order(**params)


def assert_rate_limited(call: Any, match: str = "Too many requests") -> None:
    with pytest.raises(kite_errors.NetworkException, match=match) as refused:
        call()
    assert refused.value.code == 429


def test_quote_routes_share_one_request_a_second(paper: PaperBrokerServer, kite: KiteConnect) -> None:
    assert kite.ltp("NSE:INFY")
    assert_rate_limited(lambda: kite.ltp("NSE:INFY"))
    assert_rate_limited(lambda: kite.quote("NSE:INFY"))
    assert_rate_limited(lambda: kite.ohlc("NSE:INFY"))
    # Quotes have their own budget: other reads go on.
    assert kite.orders() == []
    time.sleep(WINDOW_PASSED_SECONDS)
    assert kite.quote("NSE:INFY")


def test_other_reads_are_ten_a_second_per_account(paper: PaperBrokerServer, kite: KiteConnect) -> None:
    other = paper.kite("another_account")
    for _ in range(10):
        kite.orders()
    assert_rate_limited(kite.positions)
    assert_rate_limited(kite.orders)
    assert other.orders() == []  # one account's reads do not use another's
    assert kite.ltp("NSE:INFY")   # nor do they use the quote budget
    time.sleep(WINDOW_PASSED_SECONDS)
    assert kite.orders() == []


def test_order_requests_per_minute_are_limited_and_make_no_order(paper: PaperBrokerServer, kite: KiteConnect) -> None:
    paper.control.set_rate_limits(orders_per_second=0, orders_per_minute=3, reads_per_second=0)
    for _ in range(3):
        place(kite)
    assert_rate_limited(lambda: place(kite, tag="late1"), match="more than 3 order requests in a minute")
    assert len(kite.orders()) == 3
    refused = [request for request in paper.control.orders() if request["tag"] == "late1"]
    assert [(r["order_id"], r["http_status"], r["rate_limited"]) for r in refused] == [(None, 429, True)]


def test_order_requests_per_day_are_limited(paper: PaperBrokerServer, kite: KiteConnect) -> None:
    paper.control.set_rate_limits(orders_per_second=0, orders_per_day=2)
    order_id = place(kite)
    kite.cancel_order("regular", order_id)  # modify and cancel count too
    assert_rate_limited(lambda: place(kite), match="day's limit of 2 order requests")
    assert paper.control.rate()["limits"]["orders_per_day"] == 2


def test_every_limit_can_be_switched_off_until_the_next_reset(paper: PaperBrokerServer, kite: KiteConnect) -> None:
    limits = paper.control.rate_limits_off()
    assert set(limits.values()) == {0}
    for _ in range(20):
        kite.ltp("NSE:INFY")
        kite.orders()
    for _ in range(12):
        place(kite)

    paper.control.reset()
    assert paper.control.rate()["limits"] == {"orders_per_second": 10, "orders_per_minute": 400,
                                              "orders_per_day": 5000, "quotes_per_second": 1,
                                              "reads_per_second": 10}
    fresh = paper.kite("fresh_account")
    fresh.ltp("NSE:INFY")
    assert_rate_limited(lambda: fresh.ltp("NSE:INFY"))


def test_a_bad_limit_is_refused_with_what_to_send(paper: PaperBrokerServer) -> None:
    with pytest.raises(SimControlError, match="quotes_per_second must be a whole number"):
        paper.control.set_rate_limits(quotes_per_second=-1)
    with pytest.raises(SimControlError, match="unknown: quotes"):
        paper.control.set_rate_limits(quotes=1)


def test_the_command_line_sets_and_switches_off_the_limits() -> None:
    assert config_from(parse_args(["--quotes-per-second", "3"])).rate_limits.quotes_per_second == 3
    assert set(config_from(parse_args(["--no-rate-limits"])).rate_limits.as_json().values()) == {0}
