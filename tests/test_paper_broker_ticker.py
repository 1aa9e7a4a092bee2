"""The paper broker's ticker WebSocket through the official KiteTicker (Twisted, its own thread), against
a paper broker in its own process: ticks in ltp, quote and full modes decoded by the client's own
parser, order updates as text, heartbeats, reconnects with subscriptions kept, the instruments dump."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kiteconnect import KiteConnect

from tests.fixtures.ticker import PaperProcess, TickerClient, open_ticker, paper_process

INFY, TCS, SBIN = 408065, 2953217, 779521
__all__ = ["paper_process"]  # the fixture, imported for this module


@pytest.fixture
def paper(paper_process: PaperProcess) -> PaperProcess:
    paper_process.control.reset()
    return paper_process


@pytest.fixture
def kite(paper: PaperProcess) -> KiteConnect:
    return paper.kite("ticker_key")


@pytest.fixture
def ticker(paper: PaperProcess, kite: KiteConnect) -> Iterator[TickerClient]:
    def subscribe(ws: object) -> None:
        ws.subscribe([INFY, TCS, SBIN])  # type: ignore[attr-defined]
        ws.set_mode(ws.MODE_LTP, [TCS])  # type: ignore[attr-defined]
        ws.set_mode(ws.MODE_FULL, [SBIN])  # type: ignore[attr-defined]

    client = open_ticker(paper, kite.api_key, kite.access_token, on_connect=subscribe)
    client.wait_for("its subscriptions", lambda c: {t["instrument_token"] for t in c.ticks} == {INFY, TCS, SBIN})
    yield client
    client.close()


def test_the_instruments_dump_maps_symbols_to_ticker_tokens(kite: KiteConnect) -> None:
    instruments = {row["tradingsymbol"]: row for row in kite.instruments()}
    assert (instruments["INFY"]["instrument_token"], instruments["TCS"]["instrument_token"]) == (INFY, TCS)
    assert (instruments["INFY"]["exchange"], instruments["INFY"]["tick_size"], instruments["INFY"]["lot_size"]) == (
        "NSE", 0.05, 1)
    assert len(kite.instruments("NSE")) == len(instruments) == 14
    assert kite.instruments("BSE") == []


def test_ticks_in_each_mode_are_decoded_by_the_clients_own_parser(
    paper: PaperProcess, ticker: TickerClient
) -> None:
    paper.control.set_prices({"NSE:INFY": "1512.35", "NSE:TCS": "3105.5", "NSE:SBIN": "801.05"})
    ticker.wait_for("the new prices", lambda c: {(t["instrument_token"], t["last_price"]) for t in c.ticks} >= {
        (INFY, 1512.35), (TCS, 3105.5), (SBIN, 801.05)})

    infy, tcs, sbin = (ticker.ticks_of(token)[-1] for token in (INFY, TCS, SBIN))
    assert tcs == {"tradable": True, "mode": "ltp", "instrument_token": TCS, "last_price": 3105.5}
    assert (infy["mode"], infy["ohlc"]) == ("quote", {"open": 1500.0, "high": 1512.35, "low": 1500.0,
                                                      "close": 1500.0})
    assert infy["change"] == pytest.approx(0.8233, abs=1e-4)
    assert "depth" not in infy
    assert sbin["mode"] == "full"
    assert [level["price"] for level in sbin["depth"]["buy"]] == [801.0, 800.95, 800.9, 800.85, 800.8]
    assert [level["price"] for level in sbin["depth"]["sell"]] == [801.1, 801.15, 801.2, 801.25, 801.3]
    assert sbin["exchange_timestamp"] is not None and "oi" in sbin


def test_a_trade_streams_volume_and_the_accounts_order_updates_arrive_as_text(
    paper: PaperProcess, kite: KiteConnect, ticker: TickerClient
) -> None:
    other = paper.kite("someone_else")
    other.place_order("regular", "NSE", "INFY", "BUY", 3, "MIS", "MARKET", market_protection=-1)
    order_id = kite.place_order("regular", "NSE", "INFY", "BUY", 2, "MIS", "MARKET", market_protection=-1,
                                tag="wsorder1")

    ticker.wait_for("its order complete", lambda c: any(o["status"] == "COMPLETE" for o in c.orders))
    with ticker.lock:
        updates = list(ticker.orders)
    assert {update["order_id"] for update in updates} == {order_id}  # another account's orders stay private
    done = updates[-1]
    assert (done["status"], done["filled_quantity"], done["tag"], done["unfilled_quantity"]) == (
        "COMPLETE", 2, "wsorder1", 0)
    ticker.wait_for("the day's volume", lambda c: any(t.get("volume_traded") == 5 for t in c.ticks_of(INFY)))


def test_heartbeats_come_while_nothing_moves(ticker: TickerClient) -> None:
    ticker.wait_for("two heartbeats", lambda c: c.heartbeats >= 2, timeout=5)


def test_a_dropped_connection_reconnects_with_its_subscriptions_and_modes(
    paper: PaperProcess, ticker: TickerClient
) -> None:
    assert paper.control.drop_ticker_connections() == 1
    ticker.wait_for("a reconnect", lambda c: c.connects == 2)
    # KiteTicker resubscribes on reconnect; the server sees the same modes as before.
    deadline_modes = {str(INFY): "quote", str(TCS): "ltp", str(SBIN): "full"}
    ticker.wait_for("the modes restored", lambda c: [
        conn["modes"] for conn in paper.control.ticker_connections()] == [deadline_modes])
    paper.control.set_price("TCS", "3111")
    ticker.wait_for("ticks after the reconnect", lambda c: any(
        t["last_price"] == 3111.0 and t["mode"] == "ltp" for t in c.ticks_of(TCS)))
    assert ticker.errors  # the drop was seen as an unclean close


def test_unsubscribed_instruments_stop_streaming(paper: PaperProcess, ticker: TickerClient) -> None:
    from twisted.internet import reactor

    reactor.callFromThread(ticker.ticker.unsubscribe, [INFY])
    ticker.wait_for("the unsubscribe", lambda c: [
        conn["modes"] for conn in paper.control.ticker_connections()] == [{str(TCS): "ltp", str(SBIN): "full"}])
    paper.control.set_prices({"NSE:INFY": "1520", "NSE:TCS": "3120"})
    ticker.wait_for("TCS's tick", lambda c: any(t["last_price"] == 3120.0 for t in c.ticks_of(TCS)))
    assert not any(t["last_price"] == 1520.0 for t in ticker.ticks_of(INFY))


def test_the_random_walk_streams_out_as_ticks(paper: PaperProcess, ticker: TickerClient) -> None:
    before = len(ticker.ticks_of(INFY))
    paper.control.random_walk(True, interval_seconds=0.05, volatility=0.002, symbols=["NSE:INFY"], seed=3)
    try:
        ticker.wait_for("random-walk ticks", lambda c: len(c.ticks_of(INFY)) >= before + 5)
    finally:
        paper.control.random_walk(False)
    prices = {tick["last_price"] for tick in ticker.ticks_of(INFY)[before:]}
    assert len(prices) > 1


def test_a_wrong_access_token_is_refused_at_the_handshake(paper: PaperProcess, kite: KiteConnect) -> None:
    client = open_ticker(paper, kite.api_key, "not-a-token")
    try:
        client.wait_for("a refusal", lambda c: bool(c.errors))
        assert client.connects == 0
        assert paper.control.ticker_connections() == []
    finally:
        client.close()


def test_a_fourth_connection_of_one_api_key_is_refused(paper: PaperProcess, kite: KiteConnect) -> None:
    clients = [open_ticker(paper, kite.api_key, kite.access_token) for _ in range(3)]
    try:
        for client in clients:
            client.wait_for("its connection", lambda c: c.connects == 1)
        fourth = open_ticker(paper, kite.api_key, kite.access_token)
        clients.append(fourth)
        fourth.wait_for("the refusal", lambda c: any("Maximum of 3" in str(e) for e in c.errors))
        assert len(paper.control.ticker_connections()) == 3
    finally:
        for client in clients:
            client.close()
