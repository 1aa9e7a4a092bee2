"""The paper broker speaks Kite Connect v3: login, tokens, envelope, shapes, market data, isolation.

Expected keys are those of Kite's published sample responses (../shared/kite-mocks/).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal

import httpx
import pytest
from kiteconnect import KiteConnect
from kiteconnect import exceptions as kite_errors

from brokers.paper.clock import IST, next_token_expiry
from brokers.paper.control import SimControlError
from brokers.paper.testing import PaperBrokerServer
from tests.fixtures.paper import PAPER_API_KEY

SESSION_KEYS = {
    "access_token", "api_key", "avatar_url", "broker", "email", "enctoken", "exchanges", "login_time", "meta",
    "order_types", "products", "public_token", "refresh_token", "silo", "user_id", "user_name", "user_shortname",
    "user_type",
}
PROFILE_KEYS = {
    "avatar_url", "broker", "email", "exchanges", "meta", "order_types", "products", "user_id", "user_name",
    "user_shortname", "user_type",
}
MARGIN_SEGMENT_KEYS = {"available", "enabled", "net", "utilised"}
MARGIN_AVAILABLE_KEYS = {"adhoc_margin", "cash", "collateral", "intraday_payin", "live_balance", "opening_balance"}
MARGIN_UTILISED_KEYS = {
    "debits", "delivery", "exposure", "holding_sales", "liquid_collateral", "m2m_realised", "m2m_unrealised",
    "option_premium", "payout", "span", "stock_collateral", "turnover",
}
QUOTE_KEYS = {
    "average_price", "buy_quantity", "depth", "instrument_token", "last_price", "last_quantity", "last_trade_time",
    "lower_circuit_limit", "net_change", "ohlc", "oi", "oi_day_high", "oi_day_low", "sell_quantity", "timestamp",
    "upper_circuit_limit", "volume",
}
HOLDING_KEYS = {
    "authorisation", "authorised_date", "authorised_quantity", "average_price", "close_price",
    "collateral_quantity", "collateral_type", "day_change", "day_change_percentage", "discrepancy", "exchange",
    "instrument_token", "isin", "last_price", "mtf", "opening_quantity", "pnl", "price", "product", "quantity",
    "realised_quantity", "short_quantity", "t1_quantity", "tradingsymbol", "used_quantity",
}
KITE_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


def checksum(api_key: str, request_token: str, api_secret: str) -> str:
    return hashlib.sha256((api_key + request_token + api_secret).encode()).hexdigest()


def auth_header(kite: KiteConnect) -> dict[str, str]:
    return {"Authorization": f"token {kite.api_key}:{kite.access_token}", "X-Kite-Version": "3"}


# ---- login and tokens ---------------------------------------------------------------------------


def test_login_returns_a_kite_session_and_opens_the_account(paper: PaperBrokerServer) -> None:
    client = KiteConnect("fresh_key", root=paper.url, timeout=2)
    session = client.generate_session(paper.control.request_token("fresh_key"), api_secret="any-secret")

    assert SESSION_KEYS <= set(session)
    assert isinstance(session["login_time"], datetime)  # the client parses only YYYY-MM-DD HH:MM:SS
    assert re.fullmatch(r"[0-9a-f]{32}", session["access_token"])
    assert client.access_token == session["access_token"]
    assert session["api_key"] == "fresh_key"
    assert client.profile()["user_id"] == session["user_id"]
    assert [account["api_key"] for account in paper.control.accounts()] == ["fresh_key"]


def test_each_api_key_is_its_own_account_and_a_second_login_keeps_it(paper: PaperBrokerServer) -> None:
    first = paper.kite("key_a").profile()["user_id"]
    second = paper.kite("key_b").profile()["user_id"]
    again = paper.kite("key_a").profile()["user_id"]
    assert first != second
    assert again == first


def test_login_with_a_malformed_checksum_is_a_token_exception(paper: PaperBrokerServer) -> None:
    answer = httpx.post(f"{paper.url}/session/token",
                        data={"api_key": "k", "request_token": "r", "checksum": "not-a-sha256"})
    assert answer.status_code == 403
    assert answer.json()["error_type"] == "TokenException"


def test_login_without_a_request_token_is_an_input_exception(paper: PaperBrokerServer) -> None:
    answer = httpx.post(f"{paper.url}/session/token", data={"api_key": "k", "checksum": "0" * 64})
    assert answer.status_code == 400
    body = answer.json()
    assert body["error_type"] == "InputException"
    assert "request_token" in body["message"]


def test_a_configured_api_secret_must_match_the_checksum() -> None:
    with PaperBrokerServer(port=0, api_secret="s3cret") as server:
        with pytest.raises(kite_errors.TokenException) as refused:
            KiteConnect("key", root=server.url).generate_session("rt", api_secret="wrong")
        assert refused.value.code == 403
        assert server.login("key", api_secret="s3cret")
        rt = server.control.request_token("key")
        answer = httpx.post(f"{server.url}/session/token",
                            data={"api_key": "key", "request_token": rt, "checksum": checksum("key", rt, "s3cret")})
        assert answer.json()["status"] == "success"


@pytest.mark.parametrize("call", [
    lambda k: k.profile(), lambda k: k.margins(), lambda k: k.orders(), lambda k: k.trades(),
    lambda k: k.positions(), lambda k: k.holdings(), lambda k: k.ltp("NSE:INFY"), lambda k: k.quote("NSE:INFY"),
    lambda k: k.ohlc("NSE:INFY"), lambda k: k.order_history("1"), lambda k: k.order_trades("1"),
    lambda k: k.place_order("regular", "NSE", "INFY", "BUY", 1, "MIS", "MARKET", market_protection=-1),
    lambda k: k.modify_order("regular", "1", price=10), lambda k: k.cancel_order("regular", "1"),
], ids=["profile", "margins", "orders", "trades", "positions", "holdings", "ltp", "quote", "ohlc",
        "order_history", "order_trades", "place_order", "modify_order", "cancel_order"])
def test_every_route_but_login_needs_a_token(paper: PaperBrokerServer, call: Callable[[KiteConnect], object]) -> None:
    anonymous = KiteConnect("nobody", root=paper.url, timeout=2)
    with pytest.raises(kite_errors.TokenException) as refused:
        call(anonymous)
    assert refused.value.code == 403


def test_a_token_of_another_api_key_or_a_made_up_one_is_refused(paper: PaperBrokerServer) -> None:
    token = paper.login("owner")
    for api_key, access_token in (("intruder", token), ("owner", "f" * 32)):
        with pytest.raises(kite_errors.TokenException):
            KiteConnect(api_key, access_token=access_token, root=paper.url).profile()


def test_expiring_tokens_ends_sessions_until_the_next_login(paper: PaperBrokerServer) -> None:
    expired = paper.kite("expires")
    bystander = paper.kite("stays")

    assert paper.control.expire_tokens("expires") == 1
    with pytest.raises(kite_errors.TokenException) as refused:
        expired.orders()
    assert "expired" in str(refused.value)
    assert bystander.orders() == []
    assert paper.kite("expires").orders() == []

    assert paper.control.expire_tokens() == 2
    with pytest.raises(kite_errors.TokenException):
        bystander.orders()


def test_tokens_die_after_the_configured_lifetime() -> None:
    with PaperBrokerServer(port=0, token_lifetime_seconds=0.2) as server:
        kite = server.kite("short")
        assert kite.profile()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                kite.profile()
            except kite_errors.TokenException:
                break
            time.sleep(0.15)  # under Kite's 10 reads a second
        else:
            pytest.fail("the token outlived its 0.2 s lifetime by 5 s")


@pytest.mark.parametrize(("login", "expiry"), [
    ("2026-03-10 14:30:00", "2026-03-11 06:00:00"),
    ("2026-03-10 05:59:59", "2026-03-10 06:00:00"),
    ("2026-03-10 06:00:00", "2026-03-11 06:00:00"),
    ("2026-03-10 23:59:00", "2026-03-11 06:00:00"),
])
def test_tokens_expire_at_six_in_the_morning_ist_like_kite(login: str, expiry: str) -> None:
    login_at = datetime.strptime(login, "%Y-%m-%d %H:%M:%S").replace(tzinfo=IST)
    expires = datetime.fromtimestamp(next_token_expiry(login_at.timestamp()), IST)
    assert expires.strftime("%Y-%m-%d %H:%M:%S") == expiry


def test_invalidating_the_access_token_logs_out(kite: KiteConnect) -> None:
    assert kite.invalidate_access_token() is True
    with pytest.raises(kite_errors.TokenException):
        kite.profile()


# ---- envelope and shapes ------------------------------------------------------------------------


def test_answers_use_kites_envelope_and_a_json_content_type(paper: PaperBrokerServer, kite: KiteConnect) -> None:
    ok = httpx.get(f"{paper.url}/user/profile", headers=auth_header(kite))
    assert ok.headers["content-type"] == "application/json"
    assert set(ok.json()) == {"status", "data"}
    assert ok.json()["status"] == "success"

    refused = httpx.get(f"{paper.url}/user/profile")
    assert refused.status_code == 403
    assert refused.headers["content-type"] == "application/json"
    assert set(refused.json()) == {"status", "message", "data", "error_type"}
    assert refused.json()["status"] == "error"


def test_an_unknown_route_is_a_kite_error_not_an_html_page(paper: PaperBrokerServer, kite: KiteConnect) -> None:
    answer = httpx.get(f"{paper.url}/no/such/route", headers=auth_header(kite))
    assert answer.status_code == 404
    assert answer.json()["error_type"] == "GeneralException"


def test_profile_matches_kites_shape(kite: KiteConnect) -> None:
    profile = kite.profile()
    assert PROFILE_KEYS <= set(profile)
    assert profile["broker"] == "ZERODHA"
    assert "NSE" in profile["exchanges"]


def test_margins_match_kites_shape_and_start_at_the_account_cash(paper: PaperBrokerServer, kite: KiteConnect) -> None:
    paper.control.set_account(PAPER_API_KEY, cash="250000.50")
    margins = kite.margins()
    assert set(margins) == {"equity", "commodity"}
    equity = margins["equity"]
    assert MARGIN_SEGMENT_KEYS <= set(equity)
    assert MARGIN_AVAILABLE_KEYS <= set(equity["available"])
    assert MARGIN_UTILISED_KEYS <= set(equity["utilised"])
    assert Decimal(str(equity["available"]["cash"])) == Decimal("250000.50")
    assert Decimal(str(equity["net"])) == Decimal("250000.50")
    assert kite.margins("equity")["net"] == equity["net"]
    with pytest.raises(kite_errors.InputException):
        kite.margins("crypto")


def test_holdings_match_kites_shape(paper: PaperBrokerServer, kite: KiteConnect) -> None:
    assert kite.holdings() == []
    paper.control.set_account(PAPER_API_KEY, holdings={"NSE:SBIN": {"quantity": 16, "average_price": "780.50"}})
    paper.control.set_price("SBIN", "800")
    [holding] = kite.holdings()
    assert HOLDING_KEYS <= set(holding)
    assert (holding["tradingsymbol"], holding["quantity"], holding["isin"]) == ("SBIN", 16, "INE062A01020")
    assert Decimal(str(holding["pnl"])) == Decimal("312.00")


# ---- market data --------------------------------------------------------------------------------


def test_quotes_ltp_and_ohlc_follow_the_set_price(paper: PaperBrokerServer, kite: KiteConnect) -> None:
    paper.control.set_rate_limits(quotes_per_second=0)  # several quotes in one second
    paper.control.set_prices({"NSE:INFY": "1523.45", "NSE:TCS": 3100})

    ltp = kite.ltp("NSE:INFY", "NSE:TCS")
    assert ltp == {"NSE:INFY": {"instrument_token": 408065, "last_price": 1523.45},
                   "NSE:TCS": {"instrument_token": 2953217, "last_price": 3100.0}}
    ohlc = kite.ohlc("NSE:INFY")["NSE:INFY"]
    assert ohlc["ohlc"] == {"open": 1500.0, "high": 1523.45, "low": 1500.0, "close": 1500.0}
    quote = kite.quote("NSE:INFY")["NSE:INFY"]
    assert QUOTE_KEYS <= set(quote)
    assert isinstance(quote["timestamp"], datetime)
    assert quote["net_change"] == pytest.approx(23.45)
    assert len(quote["depth"]["buy"]) == len(quote["depth"]["sell"]) == 5


def test_quotes_leave_out_unknown_instruments_and_need_at_least_one(
    paper: PaperBrokerServer, kite: KiteConnect
) -> None:
    paper.control.set_rate_limits(quotes_per_second=0)  # several quotes in one second
    assert kite.ltp("NSE:NOSUCH") == {}
    assert set(kite.ltp("NSE:NOSUCH", "NSE:SBIN")) == {"NSE:SBIN"}
    with pytest.raises(kite_errors.InputException):
        kite.ltp()


def test_prices_go_back_to_their_defaults_on_reset(paper: PaperBrokerServer, kite: KiteConnect) -> None:
    paper.control.set_price("RELIANCE", "2999.95")
    paper.control.reset()
    assert paper.control.prices()["NSE:RELIANCE"] == Decimal("1400.00")


def test_a_price_for_an_unknown_instrument_or_in_fractions_of_paise_is_refused(paper: PaperBrokerServer) -> None:
    with pytest.raises(SimControlError, match="unknown instrument"):
        paper.control.set_price("NOSUCH", "10")
    with pytest.raises(SimControlError, match="two decimals"):
        paper.control.set_price("INFY", "1500.001")
    with pytest.raises(SimControlError, match="positive"):
        paper.control.set_price("INFY", "-1")


def test_the_random_walk_moves_prices_on_their_tick(paper: PaperBrokerServer, kite: KiteConnect) -> None:
    paper.control.set_rate_limits(quotes_per_second=0)  # several quotes in one second
    before = kite.ltp("NSE:INFY")["NSE:INFY"]["last_price"]
    settings = paper.control.random_walk(True, interval_seconds=0.005, volatility=0.01, symbols=["NSE:INFY"], seed=7)
    assert settings["enabled"] is True
    try:
        deadline = time.monotonic() + 5
        while kite.ltp("NSE:INFY")["NSE:INFY"]["last_price"] == before:
            assert time.monotonic() < deadline, "the random walk never moved INFY"
    finally:
        paper.control.random_walk(False)
    moved = paper.control.prices()
    assert moved["NSE:INFY"] % Decimal("0.05") == 0
    assert moved["NSE:TCS"] == Decimal("3100.00")


# ---- accounts -----------------------------------------------------------------------------------


def test_an_account_sees_only_its_own_orders(paper: PaperBrokerServer, kite: KiteConnect) -> None:
    order_id = kite.place_order("regular", "NSE", "INFY", "BUY", 1, "MIS", "LIMIT", price=1400, tag="mine")
    other = paper.kite("someone_else")

    assert other.orders() == []
    assert other.trades() == []
    for call in (lambda: other.order_history(order_id), lambda: other.order_trades(order_id),
                 lambda: other.cancel_order("regular", order_id),
                 lambda: other.modify_order("regular", order_id, price=1450)):
        with pytest.raises(kite_errors.InputException) as refused:
            call()
        assert refused.value.code == 400
    assert [order["order_id"] for order in kite.orders()] == [order_id]
    assert kite.order_history(order_id)[-1]["status"] == "OPEN"
