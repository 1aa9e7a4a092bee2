"""Order lifecycles on the paper broker, through the real kiteconnect client.

Expected keys are those of Kite's published sample responses (../shared/kite-mocks/).
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest
from kiteconnect import KiteConnect
from kiteconnect import exceptions as kite_errors

from brokers.paper.testing import PaperBrokerServer
from tests.fixtures.paper import PAPER_API_KEY, wait_for_order, wait_for_status

ORDER_KEYS = {
    "average_price", "cancelled_quantity", "disclosed_quantity", "exchange", "exchange_order_id",
    "exchange_timestamp", "exchange_update_timestamp", "filled_quantity", "guid", "instrument_token",
    "market_protection", "meta", "modified", "order_id", "order_timestamp", "order_type", "parent_order_id",
    "pending_quantity", "placed_by", "price", "product", "quantity", "status", "status_message",
    "status_message_raw", "tag", "tradingsymbol", "transaction_type", "trigger_price", "validity", "variety",
}
TRADE_KEYS = {
    "average_price", "exchange", "exchange_order_id", "exchange_timestamp", "fill_timestamp", "instrument_token",
    "order_id", "order_timestamp", "product", "quantity", "trade_id", "tradingsymbol", "transaction_type",
}
POSITION_KEYS = {
    "average_price", "buy_m2m", "buy_price", "buy_quantity", "buy_value", "close_price", "day_buy_price",
    "day_buy_quantity", "day_buy_value", "day_sell_price", "day_sell_quantity", "day_sell_value", "exchange",
    "instrument_token", "last_price", "m2m", "multiplier", "overnight_quantity", "pnl", "product", "quantity",
    "realised", "sell_m2m", "sell_price", "sell_quantity", "sell_value", "tradingsymbol", "unrealised", "value",
}
OPENING = ["PUT ORDER REQ RECEIVED", "VALIDATION PENDING", "OPEN PENDING"]


def place(kite: KiteConnect, **overrides: Any) -> str:
    """Place an order: by default BUY 10 INFY MIS at market with automatic market protection."""
    params: dict[str, Any] = {
        "variety": "regular", "exchange": "NSE", "tradingsymbol": "INFY", "transaction_type": "BUY",
        "quantity": 10, "product": "MIS", "order_type": "MARKET", "market_protection": -1,
    }
    params.update(overrides)
    return kite.place_order(**params)


def statuses(kite: KiteConnect, order_id: str) -> list[str]:
    return [state["status"] for state in kite.order_history(order_id)]


def money(value: float) -> Decimal:
    return Decimal(str(value))


# ---- MARKET ---------------------------------------------------------------------------------------


def test_a_market_order_fills_at_the_last_price_through_kites_statuses(
    paper: PaperBrokerServer, kite: KiteConnect
) -> None:
    paper.control.set_price("INFY", "1512.35")
    order_id = place(kite, tag="entry1")

    done = wait_for_status(kite, order_id, "COMPLETE")
    assert statuses(kite, order_id) == [*OPENING, "OPEN", "COMPLETE"]
    assert (done["filled_quantity"], done["pending_quantity"], done["cancelled_quantity"]) == (10, 0, 0)
    assert money(done["average_price"]) == Decimal("1512.35")
    assert isinstance(done["order_timestamp"], datetime)
    assert done["exchange_order_id"]

    [trade] = kite.order_trades(order_id)
    assert (trade["quantity"], money(trade["average_price"])) == (10, Decimal("1512.35"))
    assert kite.trades() == [trade]
    [position] = kite.positions()["net"]
    assert (position["tradingsymbol"], position["product"], position["quantity"]) == ("INFY", "MIS", 10)
    assert kite.positions()["day"] == kite.positions()["net"]


def test_orders_history_and_trades_carry_kites_fields(paper: PaperBrokerServer, kite: KiteConnect) -> None:
    order_id = place(kite, tag="shape1")
    wait_for_status(kite, order_id, "COMPLETE")

    [order] = kite.orders()
    assert ORDER_KEYS <= set(order)
    assert (order["tag"], order["tags"]) == ("shape1", ["shape1"])
    assert all(ORDER_KEYS <= set(state) for state in kite.order_history(order_id))
    assert TRADE_KEYS <= set(kite.trades()[0])
    assert POSITION_KEYS <= set(kite.positions()["net"][0])


def test_timestamps_are_ist_in_kites_format_on_the_wire(paper: PaperBrokerServer, kite: KiteConnect) -> None:
    order_id = place(kite)
    wait_for_status(kite, order_id, "COMPLETE")
    headers = {"Authorization": f"token {kite.api_key}:{kite.access_token}"}
    [order] = httpx.get(f"{paper.url}/orders", headers=headers).json()["data"]
    [trade] = httpx.get(f"{paper.url}/trades", headers=headers).json()["data"]

    kite_time = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
    for value in (order["order_timestamp"], order["exchange_timestamp"], order["exchange_update_timestamp"],
                  trade["fill_timestamp"], trade["exchange_timestamp"]):
        assert kite_time.fullmatch(value)
    assert re.fullmatch(r"\d\d:\d\d:\d\d", trade["order_timestamp"])
    assert isinstance(order["price"], (int, float)) and isinstance(order["average_price"], (int, float))


def test_partial_fills_are_separate_trades(paper: PaperBrokerServer, kite: KiteConnect) -> None:
    paper.control.set_fill(partial_fills=3, partial_interval_seconds=0.01)
    order_id = place(kite)

    wait_for_status(kite, order_id, "COMPLETE")
    trades = kite.order_trades(order_id)
    assert [trade["quantity"] for trade in trades] == [4, 4, 2]
    assert len({trade["trade_id"] for trade in trades}) == 3
    fills = [state["filled_quantity"] for state in kite.order_history(order_id) if state["status"] == "OPEN"]
    assert fills == [0, 4, 8]


def test_a_partial_fill_that_stops_leaves_the_order_open_and_cancel_keeps_it(
    paper: PaperBrokerServer, kite: KiteConnect
) -> None:
    paper.control.set_fill(fill_ratio="0.6")
    order_id = place(kite)

    open_state = wait_for_order(kite, order_id, lambda state: state["filled_quantity"] == 6)
    assert (open_state["status"], open_state["pending_quantity"]) == ("OPEN", 4)

    assert kite.cancel_order("regular", order_id) == order_id
    cancelled = kite.order_history(order_id)[-1]
    assert (cancelled["status"], cancelled["filled_quantity"], cancelled["cancelled_quantity"],
            cancelled["pending_quantity"]) == ("CANCELLED", 6, 4, 4)
    assert statuses(kite, order_id)[-2:] == ["CANCEL PENDING", "CANCELLED"]
    assert kite.positions()["net"][0]["quantity"] == 6


def test_with_fill_ratio_zero_a_market_order_never_fills(paper: PaperBrokerServer, kite: KiteConnect) -> None:
    paper.control.set_fill(fill_ratio=0, delay_seconds=0)
    stuck = place(kite)
    # A later order of the same instrument fills: the stuck one's chance has come and gone.
    paper.control.set_fill(fill_ratio=1)
    wait_for_status(kite, place(kite), "COMPLETE")

    assert kite.order_history(stuck)[-1]["status"] == "OPEN"
    assert kite.order_trades(stuck) == []


# ---- LIMIT, SL, SL-M ------------------------------------------------------------------------------


def test_a_limit_buy_rests_until_the_price_comes_down_to_it(paper: PaperBrokerServer, kite: KiteConnect) -> None:
    resting = place(kite, order_type="LIMIT", price=1490, market_protection=None)
    wait_for_status(kite, place(kite), "COMPLETE")  # fills scheduled after the LIMIT's have run
    assert kite.order_history(resting)[-1]["status"] == "OPEN"

    paper.control.set_price("INFY", "1495")
    paper.control.set_price("INFY", "1489.50")
    done = wait_for_status(kite, resting, "COMPLETE")
    # It fills at the last price, which may be better than the limit.
    assert money(done["average_price"]) == Decimal("1489.50")


def test_a_limit_sell_rests_until_the_price_rises_to_it(paper: PaperBrokerServer, kite: KiteConnect) -> None:
    resting = place(kite, transaction_type="SELL", order_type="LIMIT", price=1520, market_protection=None)
    paper.control.set_price("INFY", "1519.95")
    wait_for_status(kite, place(kite), "COMPLETE")
    assert kite.order_history(resting)[-1]["status"] == "OPEN"

    paper.control.set_price("INFY", "1520")
    assert money(wait_for_status(kite, resting, "COMPLETE")["average_price"]) == Decimal("1520")


def test_a_marketable_limit_order_fills_at_once_at_the_last_price(paper: PaperBrokerServer, kite: KiteConnect) -> None:
    order_id = place(kite, order_type="LIMIT", price=1600)
    assert money(wait_for_status(kite, order_id, "COMPLETE")["average_price"]) == Decimal("1500")


def test_an_sl_buy_waits_in_trigger_pending_then_fills_within_its_limit(
    paper: PaperBrokerServer, kite: KiteConnect
) -> None:
    order_id = place(kite, order_type="SL", trigger_price=1510, price=1515, market_protection=None)
    assert kite.order_history(order_id)[-1]["status"] == "TRIGGER PENDING"

    paper.control.set_price("INFY", "1512")
    done = wait_for_status(kite, order_id, "COMPLETE")
    assert money(done["average_price"]) == Decimal("1512")
    assert statuses(kite, order_id) == [*OPENING, "TRIGGER PENDING", "OPEN", "COMPLETE"]


def test_a_triggered_sl_sell_waits_for_its_limit(paper: PaperBrokerServer, kite: KiteConnect) -> None:
    order_id = place(kite, transaction_type="SELL", order_type="SL", trigger_price=1490, price=1488,
                     market_protection=None)
    paper.control.set_price("INFY", "1480")
    wait_for_status(kite, place(kite), "COMPLETE")
    assert kite.order_history(order_id)[-1]["status"] == "OPEN"

    paper.control.set_price("INFY", "1488.50")
    assert money(wait_for_status(kite, order_id, "COMPLETE")["average_price"]) == Decimal("1488.50")


def test_an_sl_m_sell_fills_at_market_once_triggered(paper: PaperBrokerServer, kite: KiteConnect) -> None:
    order_id = place(kite, transaction_type="SELL", order_type="SL-M", trigger_price=1490)
    paper.control.set_price("INFY", "1495")
    wait_for_status(kite, place(kite), "COMPLETE")
    assert kite.order_history(order_id)[-1]["status"] == "TRIGGER PENDING"

    paper.control.set_price("INFY", "1470")
    assert money(wait_for_status(kite, order_id, "COMPLETE")["average_price"]) == Decimal("1470")


def test_an_ioc_limit_that_cannot_fill_is_cancelled(paper: PaperBrokerServer, kite: KiteConnect) -> None:
    order_id = place(kite, order_type="LIMIT", price=1400, validity="IOC", market_protection=None)
    done = wait_for_status(kite, order_id, "CANCELLED")
    assert (done["filled_quantity"], done["cancelled_quantity"]) == (0, 10)


def test_an_amo_order_waits_for_the_market_and_can_be_cancelled(paper: PaperBrokerServer, kite: KiteConnect) -> None:
    order_id = place(kite, variety="amo")
    assert kite.order_history(order_id)[-1]["status"] == "AMO REQ RECEIVED"
    with pytest.raises(kite_errors.InputException, match="amo"):
        kite.cancel_order("regular", order_id)
    kite.cancel_order("amo", order_id)
    assert kite.order_history(order_id)[-1]["status"] == "CANCELLED"


# ---- modify and cancel ----------------------------------------------------------------------------


def test_modifying_a_resting_limit_to_a_marketable_price_fills_it(paper: PaperBrokerServer, kite: KiteConnect) -> None:
    order_id = place(kite, order_type="LIMIT", price=1400, market_protection=None)
    assert kite.modify_order("regular", order_id, price=1500, quantity=12) == order_id

    done = wait_for_status(kite, order_id, "COMPLETE")
    assert (done["quantity"], done["filled_quantity"], done["modified"]) == (12, 12, True)
    assert statuses(kite, order_id) == [*OPENING, "OPEN", "MODIFY VALIDATION PENDING", "MODIFY PENDING", "MODIFIED",
                                        "OPEN", "COMPLETE"]


def test_an_order_takes_25_modifications_and_no_more(paper: PaperBrokerServer, kite: KiteConnect) -> None:
    paper.control.set_rate_limit(0)  # 27 order requests at once
    order_id = place(kite, order_type="LIMIT", price=1300, market_protection=None)
    for step in range(25):
        kite.modify_order("regular", order_id, price=1300 + step)
    with pytest.raises(kite_errors.OrderException, match="25"):
        kite.modify_order("regular", order_id, price=1400)
    assert money(kite.order_history(order_id)[-1]["price"]) == Decimal("1324")


def test_modify_refuses_a_quantity_at_or_below_the_filled_one(paper: PaperBrokerServer, kite: KiteConnect) -> None:
    paper.control.set_fill(fill_ratio="0.5")
    order_id = place(kite)
    wait_for_order(kite, order_id, lambda state: state["filled_quantity"] == 5)
    with pytest.raises(kite_errors.InputException, match="already filled"):
        kite.modify_order("regular", order_id, quantity=5)


def test_a_finished_order_can_be_neither_modified_nor_cancelled(paper: PaperBrokerServer, kite: KiteConnect) -> None:
    order_id = place(kite)
    wait_for_status(kite, order_id, "COMPLETE")
    for call in (lambda: kite.modify_order("regular", order_id, quantity=20),
                 lambda: kite.cancel_order("regular", order_id)):
        with pytest.raises(kite_errors.OrderException, match="COMPLETE") as refused:
            call()
        assert refused.value.code == 400


def test_modify_to_market_needs_market_protection(paper: PaperBrokerServer, kite: KiteConnect) -> None:
    order_id = place(kite, order_type="LIMIT", price=1400, market_protection=None)
    with pytest.raises(kite_errors.InputException, match="market protection"):
        kite.modify_order("regular", order_id, order_type="MARKET")
    kite.modify_order("regular", order_id, order_type="MARKET", market_protection=-1)
    # As on Kite, it goes on as a limit at the protection price (automatic: 0.5 % above 1500).
    done = wait_for_status(kite, order_id, "COMPLETE")
    assert (done["order_type"], money(done["price"]), money(done["average_price"])) == (
        "LIMIT", Decimal("1507.5"), Decimal("1500"))


def test_modifying_a_trigger_moves_where_the_stop_loss_fires(paper: PaperBrokerServer, kite: KiteConnect) -> None:
    order_id = place(kite, transaction_type="SELL", order_type="SL-M", trigger_price=1400)
    kite.modify_order("regular", order_id, trigger_price=1490)
    assert kite.order_history(order_id)[-1]["status"] == "TRIGGER PENDING"
    paper.control.set_price("INFY", "1489.95")
    assert money(wait_for_status(kite, order_id, "COMPLETE")["average_price"]) == Decimal("1489.95")


def test_a_modification_the_account_cannot_fund_is_a_margin_exception(
    paper: PaperBrokerServer, kite: KiteConnect
) -> None:
    paper.control.set_account(PAPER_API_KEY, cash="26000")
    order_id = place(kite, order_type="LIMIT", price=1300, product="CNC", market_protection=None)
    answer = httpx.put(f"{paper.url}/orders/regular/{order_id}", data={"quantity": "30"},
                       headers={"Authorization": f"token {kite.api_key}:{kite.access_token}"})
    assert (answer.status_code, answer.json()["error_type"]) == (400, "MarginException")
    assert "Required margin is 39000.00 but available margin is 26000.00" in answer.json()["message"]
    # The 5.2.2 client has no MarginException class: it raises GeneralException.
    with pytest.raises(kite_errors.GeneralException):
        kite.modify_order("regular", order_id, quantity=30)
    kite.modify_order("regular", order_id, quantity=20)
    assert kite.order_history(order_id)[-1]["quantity"] == 20


def test_modify_with_nothing_to_change_is_an_input_error(paper: PaperBrokerServer, kite: KiteConnect) -> None:
    order_id = place(kite, order_type="LIMIT", price=1400, market_protection=None)
    with pytest.raises(kite_errors.InputException, match="Nothing to modify"):
        kite.modify_order("regular", order_id)


def test_cancelling_a_resting_order_cancels_all_of_it(paper: PaperBrokerServer, kite: KiteConnect) -> None:
    order_id = place(kite, order_type="LIMIT", price=1400, market_protection=None)
    kite.cancel_order("regular", order_id)
    done = kite.order_history(order_id)[-1]
    # As in Kite's sample order book, a cancelled order keeps its pending quantity.
    assert (done["status"], done["filled_quantity"], done["cancelled_quantity"], done["pending_quantity"]) == \
        ("CANCELLED", 0, 10, 10)
    with pytest.raises(kite_errors.InputException):
        kite.cancel_order("regular", "999999999999999")


# ---- rejections and input errors ------------------------------------------------------------------


@pytest.mark.parametrize(("overrides", "message"), [
    ({"tradingsymbol": "NOSUCH"}, "NSE:NOSUCH is not traded"),
    ({"market_protection": 0}, "market protection"),
    ({"market_protection": None}, "market protection"),
    ({"order_type": "SL-M", "trigger_price": 1600, "market_protection": 0}, "market protection"),
], ids=["unknown symbol", "market protection 0", "market protection missing", "SL-M protection 0"])
def test_orders_kite_would_reject_end_rejected_with_a_reason(
    paper: PaperBrokerServer, kite: KiteConnect, overrides: dict[str, Any], message: str
) -> None:
    order_id = place(kite, **overrides)
    done = kite.order_history(order_id)[-1]
    assert done["status"] == "REJECTED"
    assert message in done["status_message"]
    assert statuses(kite, order_id) == ["PUT ORDER REQ RECEIVED", "VALIDATION PENDING", "REJECTED"]
    assert kite.trades() == []


def test_an_order_above_the_freeze_quantity_is_refused_with_no_order_id(
    paper: PaperBrokerServer, kite: KiteConnect
) -> None:
    with pytest.raises(kite_errors.InputException, match="exceeds the freeze quantity of 100000") as refused:
        place(kite, tradingsymbol="TATASTEEL", quantity=100_001, tag="big1")
    assert refused.value.code == 400
    assert kite.orders() == []
    [request] = paper.control.orders()
    assert (request["tag"], request["order_id"], request["http_status"]) == ("big1", None, 400)
    # At the limit it is an ordinary order.
    wait_for_status(kite, place(kite, tradingsymbol="TATASTEEL", quantity=100_000, tag="big2"), "COMPLETE")


def test_a_stop_modified_onto_the_wrong_side_is_refused_and_keeps_its_trigger(
    paper: PaperBrokerServer, kite: KiteConnect
) -> None:
    order_id = place(kite, transaction_type="SELL", order_type="SL-M", trigger_price=1400)
    with pytest.raises(kite_errors.InputException, match="stoploss sell"):
        kite.modify_order("regular", order_id, trigger_price=1500)
    assert money(kite.order_history(order_id)[-1]["trigger_price"]) == Decimal("1400")
    # A stop that has fired already is a resting limit: its trigger no longer matters.
    fired = place(kite, transaction_type="SELL", order_type="SL", trigger_price=1490, price=1485,
                  market_protection=None)
    paper.control.set_price("INFY", "1480")
    wait_for_status(kite, fired, "OPEN")
    kite.modify_order("regular", fired, trigger_price=1481, price=1481)
    assert wait_for_status(kite, fired, "OPEN")["trigger_price"] == 1481


def test_an_order_beyond_the_cash_is_rejected_for_margin(paper: PaperBrokerServer, kite: KiteConnect) -> None:
    paper.control.set_account(PAPER_API_KEY, cash="3014")
    rejected = place(kite)  # MIS: 20% of 10 x 1507.50 (the market order's protection price) = 3015
    assert "Insufficient funds. Required margin is 3015.00 but available margin is 3014.00" in \
        kite.order_history(rejected)[-1]["status_message"]

    paper.control.set_account(PAPER_API_KEY, cash="3015")
    bought = place(kite)
    wait_for_status(kite, bought, "COMPLETE")
    # Closing the position needs no margin even with none left.
    sold = place(kite, transaction_type="SELL")
    wait_for_status(kite, sold, "COMPLETE")
    assert kite.positions()["net"][0]["quantity"] == 0


def test_an_open_order_blocks_margin_until_cancelled(paper: PaperBrokerServer, kite: KiteConnect) -> None:
    order_id = place(kite, order_type="LIMIT", price=1300, product="CNC", market_protection=None)
    assert money(kite.margins()["equity"]["utilised"]["debits"]) == Decimal("13000")
    kite.cancel_order("regular", order_id)
    assert money(kite.margins()["equity"]["utilised"]["debits"]) == Decimal("0")


@pytest.mark.parametrize(("overrides", "field"), [
    ({"tag": "x" * 21}, "tag"),
    ({"tag": "has space"}, "tag"),
    ({"quantity": 0}, "quantity"),
    ({"order_type": "LIMIT", "market_protection": None}, "price"),
    ({"order_type": "SL", "price": 1500, "market_protection": None}, "trigger_price"),
    ({"order_type": "SL", "price": 1500, "trigger_price": 1510, "market_protection": None}, "stoploss buy"),
    ({"order_type": "LIMIT", "price": 1500.03, "market_protection": None}, "Tick size"),
    ({"exchange": "NYSE"}, "exchange"),
    ({"product": "BO"}, "product"),
    ({"variety": "bracket"}, "variety"),
    ({"transaction_type": "HOLD"}, "transaction_type"),
    ({"market_protection": 101}, "market_protection"),
    ({"quantity": 100_001}, "freeze quantity of 100000"),
    ({"transaction_type": "SELL", "order_type": "SL-M", "trigger_price": 1500}, "stoploss sell"),
    ({"transaction_type": "SELL", "order_type": "SL", "trigger_price": 1505, "price": 1500, "market_protection": None},
     "stoploss sell"),
    ({"order_type": "SL-M", "trigger_price": 1495}, "stoploss buy"),
    ({"order_type": "SL", "trigger_price": 1500, "price": 1500, "market_protection": None}, "stoploss buy"),
])
def test_bad_order_input_is_an_input_exception_naming_the_field(
    kite: KiteConnect, overrides: dict[str, Any], field: str
) -> None:
    with pytest.raises(kite_errors.InputException, match=field) as refused:
        place(kite, **overrides)
    assert refused.value.code == 400
    assert kite.orders() == []


# ---- positions and tags ---------------------------------------------------------------------------


def test_positions_follow_buys_and_sells(paper: PaperBrokerServer, kite: KiteConnect) -> None:
    paper.control.set_price("SBIN", "800")
    wait_for_status(kite, place(kite, tradingsymbol="SBIN", quantity=10), "COMPLETE")
    paper.control.set_price("SBIN", "810.50")
    wait_for_status(kite, place(kite, tradingsymbol="SBIN", quantity=4, transaction_type="SELL"), "COMPLETE")
    paper.control.set_price("SBIN", "805")

    [position] = kite.positions()["net"]
    assert (position["quantity"], position["buy_quantity"], position["sell_quantity"]) == (6, 10, 4)
    assert money(position["average_price"]) == Decimal("800")
    assert money(position["realised"]) == Decimal("42")  # 4 x 10.50
    assert money(position["pnl"]) == Decimal("72")  # 42 + 6 x 5
    assert money(position["value"]) == Decimal("-4758")


def test_the_engine_can_find_its_order_by_tag(paper: PaperBrokerServer, kite: KiteConnect) -> None:
    place(kite, tag="other1", order_type="LIMIT", price=1300, market_protection=None)
    mine = place(kite, tag="order77abc", order_type="LIMIT", price=1300, market_protection=None)
    assert [order["order_id"] for order in kite.orders() if order["tag"] == "order77abc"] == [mine]
