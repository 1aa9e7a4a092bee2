"""What Kite refuses, the paper broker refuses: delivery sells without holdings, prices outside the
circuit limits, and market orders converted to a limit at the protection price. Through the real
kiteconnect client and the engine's adapter."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from kiteconnect import KiteConnect
from kiteconnect import exceptions as kite_errors

from brokers.base import OrderRequest
from brokers.errors import InsufficientHoldingsError
from brokers.kite import KiteBroker
from brokers.paper.testing import PaperBrokerServer
from tests.fixtures.paper import PAPER_API_KEY, wait_for_order, wait_for_status


def place(kite: KiteConnect, **overrides: Any) -> str:
    """By default SELL 10 INFY as delivery (CNC) at market with automatic protection."""
    params: dict[str, Any] = {
        "variety": "regular", "exchange": "NSE", "tradingsymbol": "INFY", "transaction_type": "SELL",
        "quantity": 10, "product": "CNC", "order_type": "MARKET", "market_protection": -1,
    }
    params.update(overrides)
    return kite.place_order(**params)


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
