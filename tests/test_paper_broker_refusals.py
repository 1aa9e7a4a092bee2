"""What Kite refuses, the paper broker refuses: delivery sells without holdings, prices outside the
circuit limits, and market orders converted to a limit at the protection price. Through the real
kiteconnect client and the engine's adapter."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from kiteconnect import KiteConnect
from kiteconnect import exceptions as kite_errors

from brokers.base import OrderRequest
from brokers.errors import InsufficientHoldingsError, InvalidOrderError
from brokers.kite import KiteBroker
from brokers.paper.testing import PaperBrokerServer
from tests.fixtures.paper import PAPER_API_KEY, wait_for_order, wait_for_status

# Past the second trade of a fill split in two, one second apart.
SECOND_TRADE_DUE_SECONDS = 1.5


def place(kite: KiteConnect, **overrides: Any) -> str:
    """By default SELL 10 INFY as delivery (CNC) at market with automatic protection."""
    params: dict[str, Any] = {
        "variety": "regular", "exchange": "NSE", "tradingsymbol": "INFY", "transaction_type": "SELL",
        "quantity": 10, "product": "CNC", "order_type": "MARKET", "market_protection": -1,
    }
    params.update(overrides)
    return kite.place_order(**params)


def money(value: float) -> Decimal:
    return Decimal(str(value))


def raw_place(paper: PaperBrokerServer, kite: KiteConnect, **fields: Any) -> httpx.Response:
    """The same request over plain HTTP, to read the error_type the client drops."""
    form = {"exchange": "NSE", "tradingsymbol": "INFY", "transaction_type": "SELL", "quantity": 10,
            "product": "CNC", "order_type": "MARKET", "market_protection": -1, **fields}
    return httpx.post(f"{paper.url}/orders/regular", data=form,
                      headers={"Authorization": f"token {kite.api_key}:{kite.access_token}"})


@pytest.fixture
async def broker(paper: PaperBrokerServer, kite: KiteConnect) -> AsyncIterator[KiteBroker]:
    broker = KiteBroker(PAPER_API_KEY, kite.access_token, root=paper.url, timeout=2.0)
    yield broker
    broker.close()


# ---- delivery sells need holdings -------------------------------------------------------------------


def test_a_cnc_sell_without_holdings_is_a_holding_exception_and_places_nothing(
    paper: PaperBrokerServer, kite: KiteConnect
) -> None:
    answer = raw_place(paper, kite)
    assert (answer.status_code, answer.json()["error_type"]) == (400, "HoldingException")
    assert "Insufficient holdings" in answer.json()["message"]
    # The 5.2.2 client has no HoldingException class: it raises GeneralException with the code.
    with pytest.raises(kite_errors.GeneralException, match="Insufficient holdings") as refused:
        place(kite)
    assert refused.value.code == 400
    assert kite.orders() == [] and kite.positions()["net"] == []


def test_holdings_set_through_sim_can_be_sold_once(paper: PaperBrokerServer, kite: KiteConnect) -> None:
    paper.control.set_account(PAPER_API_KEY, holdings={"NSE:INFY": {"quantity": 10, "average_price": "1400"}})
    resting = place(kite, quantity=6, order_type="LIMIT", price=1600, market_protection=None)
    # An open delivery sell holds its quantity: only 4 are left to sell.
    with pytest.raises(kite_errors.GeneralException, match="can sell 4 of INFY"):
        place(kite, quantity=5)
    wait_for_status(kite, place(kite, quantity=4), "COMPLETE")
    kite.cancel_order("regular", resting)
    wait_for_status(kite, place(kite, quantity=6), "COMPLETE")
    with pytest.raises(kite_errors.GeneralException, match="can sell 0 of INFY"):
        place(kite, quantity=1)


def test_a_cnc_buy_filled_today_is_sellable_the_same_day(paper: PaperBrokerServer, kite: KiteConnect) -> None:
    bought = place(kite, transaction_type="BUY", quantity=5)
    wait_for_status(kite, bought, "COMPLETE")
    wait_for_status(kite, place(kite, quantity=5), "COMPLETE")
    with pytest.raises(kite_errors.GeneralException, match="Insufficient holdings"):
        place(kite, quantity=1)
    # An intraday (MIS) sell needs no holdings: it is a short position squared off the same day.
    wait_for_status(kite, place(kite, quantity=1, product="MIS"), "COMPLETE")


def test_modifying_a_cnc_sell_above_the_holdings_is_refused(paper: PaperBrokerServer, kite: KiteConnect) -> None:
    paper.control.set_account(PAPER_API_KEY, holdings={"NSE:INFY": {"quantity": 10, "average_price": "1400"}})
    order_id = place(kite, quantity=10, order_type="LIMIT", price=1600, market_protection=None)
    with pytest.raises(kite_errors.GeneralException, match="can sell 10 of INFY"):
        kite.modify_order("regular", order_id, quantity=11)
    kite.modify_order("regular", order_id, quantity=8)
    assert kite.order_history(order_id)[-1]["quantity"] == 8


async def test_the_adapter_sees_insufficient_holdings_as_definitive(broker: KiteBroker) -> None:
    request = OrderRequest(exchange="NSE", tradingsymbol="INFY", transaction_type="SELL", quantity=3,
                           product="CNC", tag="nohold1", market_protection=-1)
    with pytest.raises(InsufficientHoldingsError, match="Insufficient holdings") as refused:
        await broker.place_order(request)
    assert (refused.value.retryable, refused.value.error_type, refused.value.http_status) == (
        False, "HoldingException", 400)
    assert await broker.find_orders_by_tag("nohold1") == []


# ---- circuit limits and market protection ----------------------------------------------------------


def test_quote_shows_the_circuit_limits_and_prices_outside_them_are_refused(
    paper: PaperBrokerServer, kite: KiteConnect
) -> None:
    quote = kite.quote("NSE:INFY")["NSE:INFY"]
    assert (money(quote["lower_circuit_limit"]), money(quote["upper_circuit_limit"])) == (
        Decimal("1200"), Decimal("1800"))
    for overrides, words in (
        ({"order_type": "LIMIT", "price": 1199.95}, "lower than the current lower circuit limit of 1200.00"),
        ({"order_type": "LIMIT", "price": 1800.05}, "higher than the current upper circuit limit of 1800.00"),
        ({"order_type": "SL", "trigger_price": 1810, "price": 1815}, "upper circuit limit"),
        ({"order_type": "SL-M", "trigger_price": 1805, "market_protection": -1}, "upper circuit limit"),
    ):
        with pytest.raises(kite_errors.InputException, match=words) as refused:
            place(kite, **{"transaction_type": "BUY", "product": "MIS", "market_protection": None, **overrides})
        assert refused.value.code == 400
    assert kite.orders() == []
    # At the limits themselves an order rests as usual.
    at_lower = place(kite, transaction_type="BUY", product="MIS", order_type="LIMIT", price=1200,
                     market_protection=None)
    assert kite.order_history(at_lower)[-1]["status"] == "OPEN"


async def test_the_adapter_sees_a_price_outside_the_band_as_invalid_input(broker: KiteBroker) -> None:
    request = OrderRequest(exchange="NSE", tradingsymbol="INFY", transaction_type="BUY", quantity=1,
                           order_type="LIMIT", price=Decimal("1100"), tag="band1")
    with pytest.raises(InvalidOrderError, match="lower circuit limit") as refused:
        await broker.place_order(request)
    assert not refused.value.retryable
    assert await broker.find_orders_by_tag("band1") == []


@pytest.mark.parametrize(("side", "protection", "limit"), [
    ("BUY", -1, "1507.5"),   # automatic: 0.5 % above a price over Rs 500
    ("BUY", 2, "1530"),
    ("SELL", -1, "1492.5"),
    ("BUY", 50, "1800"),     # never beyond the circuit limit
    ("SELL", 50, "1200"),
])
def test_a_protected_market_order_is_booked_as_a_limit_at_the_protection_price(
    paper: PaperBrokerServer, kite: KiteConnect, side: str, protection: int, limit: str
) -> None:
    order_id = place(kite, transaction_type=side, product="MIS", market_protection=protection)
    done = wait_for_status(kite, order_id, "COMPLETE")
    assert (done["order_type"], money(done["price"]), done["market_protection"]) == ("LIMIT", Decimal(limit),
                                                                                    protection)
    assert money(done["average_price"]) == Decimal("1500")


def test_automatic_protection_depends_on_the_price(paper: PaperBrokerServer, kite: KiteConnect) -> None:
    paper.control.set_price("TATASTEEL", "160")   # Rs 100-500: 1 %
    cheap = place(kite, tradingsymbol="TATASTEEL", transaction_type="BUY", product="MIS")
    paper.control.set_price("WIPRO", "80")        # below Rs 100: 2 %
    cheapest = place(kite, tradingsymbol="WIPRO", transaction_type="BUY", product="MIS")
    assert money(kite.order_history(cheap)[-1]["price"]) == Decimal("161.6")
    assert money(kite.order_history(cheapest)[-1]["price"]) == Decimal("81.6")


def test_what_cannot_trade_inside_the_protection_stays_open_and_can_be_cancelled(
    paper: PaperBrokerServer, kite: KiteConnect
) -> None:
    paper.control.set_fill(partial_fills=2, partial_interval_seconds=1.0)
    order_id = place(kite, transaction_type="BUY", product="MIS")   # a limit at 1507.50
    wait_for_order(kite, order_id, lambda state: state["filled_quantity"] == 5)
    paper.control.set_price("INFY", "1510")   # the price runs away before the second half
    time.sleep(SECOND_TRADE_DUE_SECONDS)
    state = kite.order_history(order_id)[-1]
    assert (state["status"], state["filled_quantity"], state["pending_quantity"]) == ("OPEN", 5, 5)
    kite.cancel_order("regular", order_id)
    done = kite.order_history(order_id)[-1]
    assert (done["status"], done["filled_quantity"], done["cancelled_quantity"]) == ("CANCELLED", 5, 5)


def test_a_price_set_outside_the_band_starts_a_new_band_around_it(
    paper: PaperBrokerServer, kite: KiteConnect
) -> None:
    paper.control.set_rate_limits(quotes_per_second=0)  # two quotes in one second
    paper.control.set_price("INFY", "1700")   # inside: the band stays where it was
    assert money(kite.quote("NSE:INFY")["NSE:INFY"]["upper_circuit_limit"]) == Decimal("1800")
    paper.control.set_price("INFY", "2500")
    quote = kite.quote("NSE:INFY")["NSE:INFY"]
    assert (money(quote["lower_circuit_limit"]), money(quote["upper_circuit_limit"])) == (
        Decimal("2000"), Decimal("3000"))
    assert money(quote["ohlc"]["close"]) == Decimal("2500")
