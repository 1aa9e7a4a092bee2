"""What a trader sees, end to end: orders filled by the real worker at the paper broker, then positions,
the order book, the trade book and the day's P&L read through the CLI and through the API (the same
documents), and with the broker asked, Kite's books beside the engine's with the differences marked."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest

from apps.api.main import create_app
from apps.cli.common import NOT_FOUND, OK
from starter.views import today_ist
from tests.fixtures.cli import Operator
from tests.fixtures.temporal import Engine
from tests.test_api import ApiUser, api_user, create_strategy, schedules_removed_afterwards


@pytest.fixture
async def views_api(engine: Engine) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(engine.settings, engine.client, engine.store)
    async with (
        schedules_removed_afterwards(engine),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client,
    ):
        yield client


async def filled(api: httpx.AsyncClient, owner: ApiUser, strategy_id: int, order_type: str) -> dict[str, Any]:
    placed = await api.post(
        "/execution/order",
        json={"strategy_id": strategy_id, "order_type": order_type, "reason": "a view test", "wait_seconds": 20},
        headers=owner.headers,
    )
    assert placed.status_code == 200, placed.text
    status: dict[str, Any] = placed.json()["status"]
    assert status["outcome"] == "FILLED", status
    return status


async def both(cli: Operator, api: httpx.AsyncClient, owner: ApiUser, path: str, *argv: str) -> dict[str, Any]:
    """The API's answer, after checking that the CLI's --json prints the very same document."""
    answer = await api.get(path, headers=owner.headers)
    assert answer.status_code == 200, answer.text
    run = await cli(*argv, "--json")
    assert run.code == OK, run.output
    assert json.loads(run.output) == answer.json()
    document: dict[str, Any] = answer.json()
    return document


async def test_a_traders_day_reads_the_same_in_the_cli_and_the_api_and_beside_kite(
    engine: Engine, views_api: httpx.AsyncClient, engine_cli: Operator, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = views_api
    monkeypatch.setenv("ENGINE_KITE_ROOT", engine.paper.url)  # the CLI asks the paper broker, as the API does
    alice = await api_user(engine, "viewer")
    bob = await api_user(engine, "other")
    strategy = await create_strategy(api, alice, quantity=4)
    sid, user = strategy["id"], str(alice.user.id)
    engine.paper.control.set_price("RELIANCE", "2500.05")
    await filled(api, alice, sid, "BUY")
    engine.paper.control.set_price("RELIANCE", "2510.55")
    exit_status = await filled(api, alice, sid, "SELL")
    engine.paper.control.set_price("RELIANCE", "2500.05")
    await filled(api, alice, sid, "BUY")
    # An order of the owner's own at Kite, which no strategy knows.
    engine.paper.kite("viewer").place_order(
        variety="regular", exchange="NSE", tradingsymbol="INFY", transaction_type="BUY", quantity=1,
        product="MIS", order_type="MARKET", market_protection=-1,
    )
    today = today_ist().isoformat()

    pnl = await both(engine_cli, api, alice, f"/pnl?date={today}", "pnl", "--date", today, "--user", user)
    # Buy 4 at 2500.05, sell at 2510.55, buy 4 at 2500.05 again (MIS, NSE): docs/pnl.md works it through.
    [row] = pnl["rows"]
    assert (row["strategy_id"], row["date"], row["orders"], row["gross"]) == (sid, today, 3, "42.00")
    assert row["charges"] == {
        "brokerage": "9.01", "stt": "3.00", "exchange": "0.89", "sebi": "0.03", "gst": "1.79", "stamp": "1.00",
        "total": "15.72",
    }
    assert row["net"] == "26.28" and pnl["totals"] == {"gross": "42.00", "charges": "15.72", "net": "26.28"}
    [sold] = row["exits"]
    assert (sold["symbol"], sold["side"], sold["quantity"], sold["price"], sold["entry_price"], sold["realized"]) == (
        "RELIANCE", "SELL", 4, "2510.55", "2500.05", "42.00",
    )
    assert sold["exit_reason"] == "MANUAL" and sold["workflow_id"] == exit_status["workflow_id"]
    same_strategy = await both(engine_cli, api, alice, f"/pnl?strategy_id={sid}", "pnl", "--strategy", str(sid))
    assert same_strategy["rows"] == pnl["rows"]

    positions = await both(
        engine_cli, api, alice, f"/positions?account_id={alice.account_id}&broker=true",
        "positions", "--account", str(alice.account_id), "--broker",
    )
    by_symbol = {row["symbol"]: row for row in positions["instruments"]}
    assert (by_symbol["RELIANCE"]["engine_quantity"], by_symbol["RELIANCE"]["broker_quantity"]) == (4, 4)
    assert by_symbol["RELIANCE"]["difference"] is None
    assert (by_symbol["INFY"]["engine_quantity"], by_symbol["INFY"]["broker_quantity"]) == (0, 1)
    assert by_symbol["INFY"]["difference"] == "Kite holds 1 more than the engine's strategies"
    assert positions["differences"] == 1
    assert [(s["strategy_id"], s["open_quantity"], s["entry_price"]) for s in positions["strategies"]] == [
        (sid, 4, "2500.05")
    ]

    book = await both(engine_cli, api, alice, "/orders?broker=true", "orders", "--user", user, "--broker")
    assert [(o["side"], o["quantity"], o["filled_quantity"], o["status"]) for o in book["orders"]] == [
        ("BUY", 4, 4, "COMPLETE"), ("SELL", 4, 4, "COMPLETE"), ("BUY", 4, 4, "COMPLETE"),
    ]
    assert all(o["broker"]["status"] == "COMPLETE" and o["difference"] is None for o in book["orders"])
    assert [(o["symbol"], o["side"], o["quantity"]) for o in book["broker_only"]] == [("INFY", "BUY", 1)]
    assert book["differences"] == 1

    trades = await both(engine_cli, api, alice, "/trades?broker=true", "trades", "--user", user, "--broker")
    assert [(t["side"], t["quantity"], t["price"], t["broker_quantity"], t["broker_price"], t["difference"])
            for t in trades["trades"]] == [
        ("BUY", 4, "2500.05", 4, "2500.05", None), ("SELL", 4, "2510.55", 4, "2510.55", None),
        ("BUY", 4, "2500.05", 4, "2500.05", None),
    ]
    assert [t["symbol"] for t in trades["broker_only"]] == ["INFY"]
    # Kite's times are IST wall clocks without a zone: the API says which moment they are.
    for moment in [t["filled_at"] for t in trades["broker_only"]] + [o["broker"]["timestamp"] for o in book["orders"]]:
        assert datetime.fromisoformat(moment).utcoffset() == timedelta(hours=5, minutes=30), moment

    # The audit history's rows say what each order was.
    history = await both(engine_cli, api, alice, f"/execution/history?strategy_id={sid}&limit=5",
                         "history", "--strategy", str(sid), "--limit", "5")
    assert [(h["order_type"], h["symbol"], h["side"], h["quantity"], h["filled_quantity"], h["average_price"],
             h["exit_reason"]) for h in history["items"]] == [
        ("BUY", "RELIANCE", "BUY", 4, 4, "2500.05", None), ("SELL", "RELIANCE", "SELL", 4, 4, "2510.55", "MANUAL"),
        ("BUY", "RELIANCE", "BUY", 4, 4, "2500.05", None),
    ]

    # Without the broker: the engine's side alone, nothing compared.
    quiet = (await api.get(f"/positions?strategy_id={sid}", headers=alice.headers)).json()
    assert quiet["broker_checked"] is False and quiet["instruments"][0]["broker_quantity"] is None

    # Ownership and bad input, as everywhere else in the API and the CLI.
    assert (await api.get(f"/pnl?strategy_id={sid}", headers=bob.headers)).status_code == 404
    assert (await api.get(f"/positions?account_id={alice.account_id}", headers=bob.headers)).status_code == 404
    assert (await api.get("/pnl", headers=bob.headers)).json()["rows"] == []
    yesterday = await api.get("/orders?broker=true&date=2020-01-01", headers=alice.headers)
    assert yesterday.status_code == 400 and "today" in yesterday.json()["detail"]
    assert (await engine_cli("pnl", "--strategy", "999999")).code == NOT_FOUND
    assert Decimal(pnl["totals"]["net"]) == Decimal(pnl["totals"]["gross"]) - Decimal(pnl["totals"]["charges"])
