"""Market hours and the end of the day on the paper broker, through the real kiteconnect client: a
simulated clock set through /_sim/, orders refused outside 09:15-15:30 IST, open DAY orders lapsing and
MIS positions squared off at the close."""

from __future__ import annotations

from typing import Any

import pytest
from kiteconnect import KiteConnect
from kiteconnect import exceptions as kite_errors

from brokers.paper.control import SimControlError
from brokers.paper.testing import PaperBrokerServer
from tests.fixtures.paper import wait_for_order, wait_for_status

# 2026-12-02 is a Wednesday; 2026-12-05 a Saturday.
TRADING_MORNING = "2026-12-02 10:00:00"
AFTER_CLOSE = "2026-12-02 15:30:00"
SATURDAY = "2026-12-05 11:00:00"


def place(kite: KiteConnect, **overrides: Any) -> str:
    params: dict[str, Any] = {
        "variety": "regular", "exchange": "NSE", "tradingsymbol": "INFY", "transaction_type": "BUY",
        "quantity": 10, "product": "MIS", "order_type": "MARKET", "market_protection": -1,
    }
    params.update(overrides)
    return kite.place_order(**params)


def test_the_clock_is_set_and_advanced_and_orders_carry_its_time(
    paper: PaperBrokerServer, kite: KiteConnect
) -> None:
    clock = paper.control.set_clock(now=TRADING_MORNING)
    assert (clock["now"], clock["market_hours"], clock["market_open"]) == (TRADING_MORNING, False, True)
    assert paper.control.set_clock(advance_seconds=3600)["now"].startswith("2026-12-02 11:00")
    order_id = wait_for_status(kite, place(kite), "COMPLETE")["order_id"]
    assert order_id.startswith("261202")
    assert kite.order_history(order_id)[-1]["order_timestamp"].strftime("%Y-%m-%d %H") == "2026-12-02 11"
    paper.control.reset()
    assert paper.control.clock()["offset_seconds"] == pytest.approx(0, abs=1)


@pytest.mark.parametrize("moment", [AFTER_CLOSE, "2026-12-02 09:14:59", SATURDAY])
def test_with_market_hours_on_orders_outside_the_session_are_refused_but_amo_is_taken(
    paper: PaperBrokerServer, kite: KiteConnect, moment: str
) -> None:
    paper.control.set_clock(now=moment, market_hours=True)
    kite = paper.kite(kite.api_key)  # a token of the simulated day: the one before may have died at 06:00
    with pytest.raises(kite_errors.InputException, match="Markets are closed") as refused:
        place(kite)
    assert refused.value.code == 400 and kite.orders() == []
    amo = place(kite, variety="amo")
    assert kite.order_history(amo)[-1]["status"] == "AMO REQ RECEIVED"


def test_with_market_hours_on_the_session_trades(paper: PaperBrokerServer, kite: KiteConnect) -> None:
    paper.control.set_clock(now="2026-12-02 09:15:00", market_hours=True)
    wait_for_status(kite, place(kite), "COMPLETE")


def test_the_end_of_day_lapses_open_orders_and_squares_off_mis(paper: PaperBrokerServer, kite: KiteConnect) -> None:
    paper.control.set_rate_limits(reads_per_second=0)  # it reads the book many times over
    paper.control.set_account(kite.api_key, holdings={"NSE:TCS": {"quantity": 5, "average_price": "3000"}})
    paper.control.set_clock(now=TRADING_MORNING)
    long_mis = place(kite, quantity=10)
    short_mis = place(kite, tradingsymbol="SBIN", transaction_type="SELL", quantity=4)
    delivery = place(kite, tradingsymbol="TCS", product="CNC", quantity=2)
    for order_id in (long_mis, short_mis, delivery):
        wait_for_status(kite, order_id, "COMPLETE")
    paper.control.set_fill(fill_ratio="0.5")
    partly = place(kite, tradingsymbol="ITC", quantity=10)
    resting = place(kite, order_type="LIMIT", price=1300, market_protection=None)
    amo = place(kite, variety="amo")
    wait_for_order(kite, partly, lambda state: state["filled_quantity"] == 5)
    paper.control.set_price("INFY", "1510")
    paper.control.set_clock(now="2026-12-02 15:25:00")

    result = paper.control.end_of_day()

    assert sorted(result["expired"]) == sorted([partly, resting])
    assert kite.order_history(amo)[-1]["status"] == "AMO REQ RECEIVED"
    lapsed = kite.order_history(resting)[-1]
    assert (lapsed["status"], lapsed["cancelled_quantity"], lapsed["status_message"]) == (
        "CANCELLED", 10, "Order lapsed at the end of the day.")
    half = kite.order_history(partly)[-1]
    assert (half["status"], half["filled_quantity"], half["cancelled_quantity"]) == ("CANCELLED", 5, 5)
    squares = {order["tradingsymbol"]: order for order in kite.orders() if order["order_id"] in result["squared_off"]}
    assert {(s, o["transaction_type"], o["quantity"], o["status"], o["tag"]) for s, o in squares.items()} == {
        ("INFY", "SELL", 10, "COMPLETE", "SQUAREOFF"), ("SBIN", "BUY", 4, "COMPLETE", "SQUAREOFF"),
        ("ITC", "SELL", 5, "COMPLETE", "SQUAREOFF")}
    assert squares["INFY"]["average_price"] == 1510
    positions = {(p["tradingsymbol"], p["product"]): p["quantity"] for p in kite.positions()["net"]}
    assert positions == {("INFY", "MIS"): 0, ("SBIN", "MIS"): 0, ("ITC", "MIS"): 0, ("TCS", "CNC"): 2}
    assert paper.control.end_of_day() == {"expired": [], "squared_off": []}  # twice is once


def test_a_bad_clock_request_says_what_to_send(paper: PaperBrokerServer) -> None:
    with pytest.raises(SimControlError, match="YYYY-MM-DD HH:MM:SS"):
        paper.control.set_clock(now="tomorrow")
    with pytest.raises(SimControlError, match="advance_seconds"):
        paper.control.set_clock(advance_seconds=-5)
