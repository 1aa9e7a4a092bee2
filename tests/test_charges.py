"""Zerodha's charges on NSE equity against worked examples (docs/pnl.md), component by component."""

from __future__ import annotations

from decimal import Decimal

import pytest

from engine.charges import ChargesError, Execution, brokerage, day_charges


def round_trip(buy: str, sell: str, quantity: int) -> list[Execution]:
    return [Execution("BUY", quantity, Decimal(buy)), Execution("SELL", quantity, Decimal(sell))]


def components(product: str, executions: list[Execution]) -> tuple[str, ...]:
    c = day_charges(product, "NSE", executions)
    return tuple(str(v) for v in (c.brokerage, c.stt, c.exchange, c.sebi, c.gst, c.stamp, c.total))


def test_intraday_round_trip_at_the_brokerage_cap() -> None:
    # Buy 400 at 1000, sell at 1100: turnover 8,40,000; brokerage capped at Rs 20 per order.
    assert components("MIS", round_trip("1000", "1100", 400)) == (
        "40.00", "110.00", "24.95", "0.84", "11.84", "12.00", "199.63",
    )


def test_delivery_round_trip_pays_stt_both_ways_and_no_brokerage() -> None:
    assert components("CNC", round_trip("1000", "1100", 400)) == (
        "0.00", "840.00", "24.95", "0.84", "4.64", "60.00", "930.43",
    )


def test_small_intraday_trade_pays_the_percentage_and_rounds_stt_and_stamp_to_the_rupee() -> None:
    # 0.03% of 2505 = 0.7515 -> 0.75; of 2520 = 0.756 -> 0.76. STT 0.63 -> 1; stamp 0.075 -> 0.
    assert components("MIS", round_trip("250.50", "252.00", 10)) == (
        "1.51", "1.00", "0.15", "0.01", "0.30", "0.00", "2.97",
    )


def test_brokerage_is_per_executed_order() -> None:
    one_order = day_charges("MIS", "NSE", [Execution("SELL", 400, Decimal("1100"))])
    two_orders = day_charges("MIS", "NSE", [Execution("SELL", 200, Decimal("1100"))] * 2)
    assert (one_order.brokerage, two_orders.brokerage) == (Decimal("20.00"), Decimal("40.00"))
    assert one_order.stt == two_orders.stt == Decimal("110.00")
    assert brokerage("CNC", Decimal("1000000")) == Decimal("0.00")


def test_a_buy_alone_pays_stamp_and_no_intraday_stt() -> None:
    c = day_charges("MIS", "NSE", [Execution("BUY", 400, Decimal("1000"))])
    assert (c.stt, c.stamp, c.brokerage) == (Decimal("0.00"), Decimal("12.00"), Decimal("20.00"))
    assert day_charges("MIS", "NSE", []).total == Decimal("0.00")


@pytest.mark.parametrize(
    ("product", "exchange", "execution", "message"),
    [
        ("NRML", "NSE", Execution("BUY", 1, Decimal("1")), "products MIS, CNC"),
        ("MIS", "BSE", Execution("BUY", 1, Decimal("1")), "exchange NSE"),
        ("MIS", "NSE", Execution("HOLD", 1, Decimal("1")), "side must be BUY or SELL"),
        ("MIS", "NSE", Execution("BUY", 0, Decimal("1")), "quantity must be a whole number above zero"),
        ("MIS", "NSE", Execution("BUY", 1, Decimal("0")), "price must be a Decimal above zero"),
    ],
)
def test_what_the_tables_do_not_cover_is_refused_by_name(
    product: str, exchange: str, execution: Execution, message: str
) -> None:
    with pytest.raises(ChargesError, match=message):
        day_charges(product, exchange, [execution])
