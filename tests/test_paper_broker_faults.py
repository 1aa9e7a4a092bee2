"""Injected faults as the kiteconnect client sees them, the rate limit, and the request log."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import pytest
import requests
from kiteconnect import KiteConnect
from kiteconnect import exceptions as kite_errors

from brokers.paper.control import AsyncSimControl, SimControlError
from brokers.paper.testing import PaperBrokerServer
from tests.fixtures.paper import PAPER_API_KEY, wait_for_status

# Short enough to keep the tests fast; the faults below hold answers longer than this.
SHORT_TIMEOUT = 0.3


def place(kite: KiteConnect, **overrides: Any) -> str:
    params: dict[str, Any] = {
        "variety": "regular", "exchange": "NSE", "tradingsymbol": "INFY", "transaction_type": "BUY",
        "quantity": 10, "product": "MIS", "order_type": "MARKET", "market_protection": -1,
    }
    params.update(overrides)
    return kite.place_order(**params)


def orders_tagged(paper: PaperBrokerServer, tag: str) -> list[dict[str, Any]]:
    return [order for order in paper.control.orders() if order["tag"] == tag]


# ---- error answers --------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "exception", "code"), [
    ("http_500", kite_errors.GeneralException, 500),
    ("http_502", kite_errors.NetworkException, 502),
    ("http_503", kite_errors.NetworkException, 503),
    ("http_429", kite_errors.NetworkException, 429),
])
def test_an_error_fault_answers_with_kites_error_and_places_nothing(
    paper: PaperBrokerServer, kite: KiteConnect, kind: str, exception: type[Exception], code: int
) -> None:
    paper.control.add_fault(kind, route="place_order")
    with pytest.raises(exception) as failed:
        place(kite, tag="failed1")
    assert failed.value.code == code  # type: ignore[attr-defined]
    [request] = orders_tagged(paper, "failed1")
    assert (request["order_id"], request["http_status"], request["fault"]) == (None, code, kind)
    assert kite.orders() == []


def test_a_fault_hits_only_its_route_and_count(paper: PaperBrokerServer, kite: KiteConnect) -> None:
    paper.control.add_fault("http_503", route="orders", count=2)
    assert kite.trades() == []
    for _ in range(2):
        with pytest.raises(kite_errors.NetworkException):
            kite.orders()
    assert kite.orders() == []
    assert paper.control.faults() == []


def test_a_fault_without_count_lasts_until_cleared(paper: PaperBrokerServer, kite: KiteConnect) -> None:
    paper.control.add_fault("http_500", route="*", count=None, message="backend down")
    for call in (kite.profile, kite.orders, lambda: kite.ltp("NSE:INFY")):
        with pytest.raises(kite_errors.GeneralException, match="backend down"):
            call()
    [fault] = paper.control.faults()
    assert (fault["kind"], fault["count"], fault["hits"]) == ("http_500", None, 3)
    paper.control.clear_faults()
    assert kite.profile()


def test_a_fault_can_be_removed_by_id(paper: PaperBrokerServer, kite: KiteConnect) -> None:
    fault = paper.control.add_fault("http_502", route="positions", count=None)
    paper.control.remove_fault(fault["id"])
    assert kite.positions() == {"net": [], "day": []}
    with pytest.raises(SimControlError, match="no fault"):
        paper.control.remove_fault(fault["id"])


def test_latency_delays_the_answer(paper: PaperBrokerServer, kite: KiteConnect) -> None:
    paper.control.set_rate_limits(quotes_per_second=0)  # two quotes in one second
    paper.control.add_fault("latency", route="ltp", count=2, seconds=SHORT_TIMEOUT + 0.1)
    impatient = paper.kite(PAPER_API_KEY, timeout=SHORT_TIMEOUT)
    with pytest.raises(requests.exceptions.ReadTimeout):
        impatient.ltp("NSE:INFY")
    assert kite.ltp("NSE:INFY")["NSE:INFY"]["last_price"] == 1500.0


def test_latency_adds_to_another_fault(paper: PaperBrokerServer, kite: KiteConnect) -> None:
    paper.control.add_fault("latency", route="orders", seconds=SHORT_TIMEOUT * 2)
    paper.control.add_fault("http_503", route="orders")
    impatient = paper.kite(PAPER_API_KEY, timeout=SHORT_TIMEOUT)
    with pytest.raises(requests.exceptions.ReadTimeout):
        impatient.orders()
    assert paper.control.faults() == []


# ---- rejections and lost answers ------------------------------------------------------------------


def test_a_reject_fault_creates_the_order_and_rejects_it(paper: PaperBrokerServer, kite: KiteConnect) -> None:
    paper.control.add_fault("reject", route="place_order", message="RMS:Blocked for testing")
    order_id = place(kite, tag="rejected1")
    done = kite.order_history(order_id)[-1]
    assert (done["status"], done["status_message"]) == ("REJECTED", "RMS:Blocked for testing")
    assert orders_tagged(paper, "rejected1")[0]["status"] == "REJECTED"


def test_a_reject_fault_refuses_a_modification(paper: PaperBrokerServer, kite: KiteConnect) -> None:
    order_id = place(kite, order_type="LIMIT", price=1400, market_protection=None)
    paper.control.add_fault("reject", route="*")
    assert kite.orders()  # a reject fault leaves other routes alone
    with pytest.raises(kite_errors.OrderException):
        kite.modify_order("regular", order_id, price=1410)
    assert kite.order_history(order_id)[-1]["price"] == 1400


def test_accept_then_timeout_places_the_order_and_answers_too_late(paper: PaperBrokerServer) -> None:
    impatient = paper.kite(PAPER_API_KEY, timeout=SHORT_TIMEOUT)
    paper.control.add_fault("accept_then_timeout", route="place_order", seconds=SHORT_TIMEOUT * 2)
    with pytest.raises(requests.exceptions.ReadTimeout):
        place(impatient, tag="late1")

    [order] = [order for order in impatient.orders() if order["tag"] == "late1"]
    wait_for_status(impatient, order["order_id"], "COMPLETE")
    [request] = orders_tagged(paper, "late1")
    assert (request["order_id"], request["fault"]) == (order["order_id"], "accept_then_timeout")


def test_accept_then_timeout_can_drop_the_late_answer(paper: PaperBrokerServer, kite: KiteConnect) -> None:
    paper.control.add_fault("accept_then_timeout", route="place_order", seconds=0.05, then="drop")
    with pytest.raises(requests.exceptions.ConnectionError):
        place(kite, tag="lost1")
    assert [order["tag"] for order in kite.orders()] == ["lost1"]
    assert orders_tagged(paper, "lost1")[0]["http_status"] is None


def test_a_dropped_connection_before_accepting_places_nothing(paper: PaperBrokerServer, kite: KiteConnect) -> None:
    paper.control.add_fault("drop_connection", route="place_order")
    with pytest.raises(requests.exceptions.ConnectionError):
        place(kite, tag="dropped1")
    assert kite.orders() == []
    [request] = orders_tagged(paper, "dropped1")
    assert (request["order_id"], request["http_status"], request["fault"]) == (None, None, "drop_connection")
    assert place(kite)  # the client recovers on a new connection


def test_a_dropped_connection_after_accepting_leaves_the_order(paper: PaperBrokerServer, kite: KiteConnect) -> None:
    paper.control.add_fault("drop_connection", route="cancel_order", after_accept=True)
    order_id = place(kite, order_type="LIMIT", price=1400, market_protection=None)
    with pytest.raises(requests.exceptions.ConnectionError):
        kite.cancel_order("regular", order_id)
    assert kite.order_history(order_id)[-1]["status"] == "CANCELLED"


@pytest.mark.parametrize(("spec", "complaint"), [
    ({"kind": "explode"}, "kind must be one of"),
    ({"kind": "http_500", "route": "nowhere"}, "route must be"),
    ({"kind": "reject", "route": "orders"}, "reject fault applies to"),
    ({"kind": "latency", "count": 0}, "count must be"),
    ({"kind": "latency", "seconds": -1}, "seconds must be"),
    ({"kind": "http_500", "seconds": 1}, "unknown: seconds"),
    ({"kind": "accept_then_timeout", "then": "shrug"}, "then must be"),
    ({"kind": "drop_connection", "after_accept": "yes"}, "after_accept must be"),
])
def test_a_bad_fault_is_refused_with_what_to_fix(
    paper: PaperBrokerServer, spec: dict[str, Any], complaint: str
) -> None:
    kind = spec.pop("kind")
    with pytest.raises(SimControlError, match=complaint) as refused:
        paper.control.add_fault(kind, **spec)
    assert refused.value.status_code == 400


# ---- rate limit and the request log ---------------------------------------------------------------


def test_more_than_ten_order_requests_a_second_get_429(paper: PaperBrokerServer, kite: KiteConnect) -> None:
    placed, limited = 0, 0
    for _ in range(12):
        try:
            place(kite, order_type="LIMIT", price=1400, market_protection=None)
            placed += 1
        except kite_errors.NetworkException as error:
            assert (error.code, str(error)) == (429, "Too many requests")
            limited += 1
    assert placed <= 10 and limited >= 2
    assert kite.orders()  # other routes are not limited

    rate = paper.control.rate()["accounts"][PAPER_API_KEY]
    assert rate["max_admitted_in_window"] <= 10
    assert rate["requests"] == 12 and rate["rate_limited"] == limited
    assert len([o for o in paper.control.orders() if o["rate_limited"]]) == limited


def test_accounts_have_separate_rate_limits(paper: PaperBrokerServer, kite: KiteConnect) -> None:
    other = paper.kite("other_account")
    for _ in range(10):
        place(kite, order_type="LIMIT", price=1400, market_protection=None)
    place(other, order_type="LIMIT", price=1400, market_protection=None)


def test_the_request_log_lists_every_order_request_across_accounts(paper: PaperBrokerServer, kite: KiteConnect) -> None:
    order_id = place(kite, tag="logged1", order_type="LIMIT", price=1400, market_protection=None)
    kite.modify_order("regular", order_id, price=1410)
    kite.cancel_order("regular", order_id)
    place(paper.kite("second_account"), tag="logged2")

    requests_log = paper.control.requests()
    assert [(r["route"], r["api_key"]) for r in requests_log] == [
        ("place_order", PAPER_API_KEY), ("modify_order", PAPER_API_KEY), ("cancel_order", PAPER_API_KEY),
        ("place_order", "second_account"),
    ]
    first = paper.control.orders()[0]
    assert (first["order_id"], first["tag"], first["symbol"], first["side"], first["quantity"], first["status"]) == \
        (order_id, "logged1", "NSE:INFY", "BUY", 10, "CANCELLED")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}", first["received_at"])
    assert [order["tag"] for order in paper.control.orders()] == ["logged1", "logged2"]

    paper.control.reset()
    assert paper.control.orders() == []


def test_fill_settings_are_validated_and_reset(paper: PaperBrokerServer) -> None:
    assert paper.control.set_fill(fill_ratio="0.25")["fill_ratio"] == "0.25"
    for bad, complaint in (({"fill_ratio": "1.5"}, "from 0 to 1"), ({"partial_fills": 0}, ">= 1"),
                           ({"delay_seconds": -1}, ">= 0"), ({"speed": 1}, "unknown: speed")):
        with pytest.raises(SimControlError, match=complaint):
            paper.control.set_fill(**bad)
    paper.control.reset()
    assert paper.control.fill() == {"delay_seconds": 0.02, "partial_fills": 1, "partial_interval_seconds": 0.02,
                                    "fill_ratio": "1"}


async def test_the_async_control_client_drives_the_same_server(paper: PaperBrokerServer) -> None:
    async with AsyncSimControl(paper.url) as control:
        await control.set_price("TCS", Decimal("3210.55"))
        assert (await control.prices())["NSE:TCS"] == Decimal("3210.55")
        fault = await control.add_fault("http_503", route="orders", count=None)
        assert [f["id"] for f in await control.faults()] == [fault["id"]]
        await control.clear_faults()
        assert await control.faults() == []
        await control.reset()
        assert (await control.prices())["NSE:TCS"] == Decimal("3100.00")
