"""The daily Kite login, through the real kiteconnect client against the paper broker: the redirect
flow end to end, refusals (replayed or unknown request token, a stranger's redirect), the token that
Kite stops honouring mid-day (the account logged out, entries refused with one alert, exits waiting
for the next login), and logout."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest
from kiteconnect import KiteConnect
from kiteconnect import exceptions as kite_errors
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError

from apps.api.main import create_app
from engine.market_hours import IST
from engine.models import Outcome
from engine.temporal import ended_order_result
from starter.logins import AccountLogins, LoginFailed
from tests.fixtures.temporal import Engine


async def logged_out_until(engine: Engine, account_id: int) -> None:
    deadline = time.monotonic() + 20
    while (await engine.store.get_broker_account(account_id)).logged_in_at(datetime.now(UTC)):
        assert time.monotonic() < deadline, "the account was never logged out"
        await asyncio.sleep(0.05)


def login_alerts(caplog: pytest.LogCaptureFixture, account_id: int) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "engine.alerts" and f"log in to Kite for account {account_id}" in r.getMessage()]


async def test_the_redirect_flow_logs_the_account_in_once(engine: Engine) -> None:
    _, account_id = await engine.account("daily1")
    app = create_app(engine.settings, engine.client, engine.store)
    redirect = f"http://engine.example/kite/login/{account_id}/redirect"
    engine.paper.control.register_redirect("daily1", redirect)
    logins = AccountLogins(engine.store, engine.settings)

    url = await logins.login_url(account_id)
    assert url.startswith(f"{engine.paper.url}/connect/login?api_key=daily1&v=3&redirect_params=nonce%3D")
    location = engine.paper.control.log_in(url)  # what the browser is sent to
    assert location.startswith(redirect + "?") and "request_token=" in location and "status=success" in location
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://engine.example") as api:
        page = await api.get(location)
        replayed = await api.get(location)
        stranger = await api.get(
            f"/kite/login/{account_id}/redirect?request_token={engine.paper.control.request_token('daily1')}"
            "&action=login&status=success&nonce=made-up"
        )

    assert page.status_code == 200, page.text
    account = await engine.store.get_broker_account(account_id)
    assert f"Broker account {account_id} is logged in to Kite as {account.broker_user_id}" in page.text
    assert account.logged_in_at(datetime.now(UTC)) and (account.broker_user_id or "").startswith("PA")
    assert account.token_expires_at is not None
    expiry = account.token_expires_at.astimezone(IST)
    assert (expiry.hour, expiry.minute) == (6, 0) and timedelta(0) < expiry - datetime.now(IST) <= timedelta(days=1)
    # The nonce works once; a redirect without this login's nonce is refused, and says what to do.
    assert replayed.status_code == 400 and "engine accounts login" in replayed.text
    assert stranger.status_code == 400 and "was not started here" in stranger.text
    assert (await engine.store.get_broker_account(account_id)).token_issued_at == account.token_issued_at
    assert "paper-secret" not in page.text and "access_token" not in page.text


async def test_a_request_token_works_once_and_an_unknown_one_not_at_all(engine: Engine) -> None:
    _, account_id = await engine.account("daily2")
    logins = AccountLogins(engine.store, engine.settings)
    request_token = engine.paper.control.request_token("daily2")

    account = await logins.complete(account_id, request_token, nonce=None)
    assert account.logged_in_at(datetime.now(UTC))
    with pytest.raises(LoginFailed, match=r"Kite refused the login.*works once"):
        await logins.complete(account_id, request_token, nonce=None)
    with pytest.raises(LoginFailed, match="Kite refused the login"):
        await logins.complete(account_id, "never-issued", nonce=None)


async def test_a_token_kite_stops_honouring_logs_the_account_out_and_a_login_resumes(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    holding = await engine.strategy("INFY", quantity=3, api_key="daily3")
    entering = await engine.strategy("TCS", quantity=2, api_key="daily3")
    other = await engine.strategy("SBIN", quantity=2, api_key="daily3")
    assert (await (await engine.starter.place_buy_order(holding)).result()).outcome is Outcome.FILLED
    _, account_id = await engine.account("daily3")

    engine.paper.control.expire_tokens("daily3")  # 06:00 IST has come, or the session was revoked at Kite
    refused = await engine.starter.place_buy_order(entering)
    with pytest.raises(WorkflowFailureError) as failed:
        await refused.result()
    ended = await ended_order_result(refused, failed.value)
    assert ended is not None and ended.outcome is Outcome.INVALID
    assert f"log in to Kite for account {account_id}" in (ended.message or "")
    await logged_out_until(engine, account_id)
    # The stop-loss of the open position waits for the next login instead of failing.
    stop_loss = await engine.starter.place_sl_sell_order(holding.id, Decimal("1400"))
    second = await engine.starter.place_buy_order(other)
    with pytest.raises(WorkflowFailureError):
        await second.result()
    await asyncio.sleep(1)
    assert (await stop_loss.describe()).status == WorkflowExecutionStatus.RUNNING
    assert not (await engine.store.get_strategy(entering.id)).needs_intervention  # a login is all it needs
    assert len(login_alerts(caplog, account_id)) == 1, login_alerts(caplog, account_id)  # one, not one per order
    sells = [o for o in engine.paper.control.orders() if o["api_key"] == "daily3" and o["side"] == "SELL"]
    assert sells == []

    await AccountLogins(engine.store, engine.settings).complete(
        account_id, engine.paper.control.request_token("daily3"), nonce=None
    )
    sold = await stop_loss.result()
    resumed = await (await engine.starter.place_buy_order(entering)).result()

    assert (sold.outcome, sold.filled_quantity) == (Outcome.FILLED, 3)
    assert resumed.outcome is Outcome.FILLED
    assert (await engine.store.get_strategy(holding.id)).position == "FLAT"


async def test_logout_ends_the_session_at_kite_and_in_the_store(engine: Engine) -> None:
    _, account_id = await engine.account("daily4")
    token = (await engine.store.broker_credentials(account_id)).access_token

    account = await AccountLogins(engine.store, engine.settings).logout(account_id)

    assert not account.logged_in_at(datetime.now(UTC)) and account.logged_out_reason == "logged out by an operator"
    with pytest.raises(kite_errors.TokenException):  # the session ended at Kite too
        KiteConnect("daily4", access_token=token, root=engine.paper.url, timeout=5).profile()
    strategy = await engine.strategy("ITC", quantity=1, api_key="daily4")
    with pytest.raises(WorkflowFailureError):
        await (await engine.starter.place_buy_order(strategy)).result()
    assert all(order["api_key"] != "daily4" for order in engine.paper.control.orders())


async def test_an_entry_right_after_a_logout_in_the_store_is_refused_though_its_token_was_kept(
    engine: Engine,
) -> None:
    # The token stays valid at Kite (only the store forgot it): the worker, which kept it a moment ago
    # for the first entry, must not send the second with it.
    _, account_id = await engine.account("daily5")
    first = await engine.strategy("ITC", quantity=1, api_key="daily5")
    second = await engine.strategy("TCS", quantity=1, api_key="daily5")
    assert (await (await engine.starter.place_buy_order(first)).result()).outcome is Outcome.FILLED

    await engine.store.log_out(account_id, "logged out by an operator")
    refused = await engine.starter.place_buy_order(second)
    with pytest.raises(WorkflowFailureError) as failed:
        await refused.result()

    ended = await ended_order_result(refused, failed.value)
    assert ended is not None and ended.outcome is Outcome.INVALID
    assert f"log in to Kite for account {account_id}" in (ended.message or "")
    assert [o["tradingsymbol"] for o in engine.paper.control.orders() if o["api_key"] == "daily5"] == ["ITC"]
