"""The HTTP API through httpx against the ASGI app, on a real Temporal dev server, PostgreSQL and the
paper broker reached by the real kiteconnect client."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from temporalio.client import Client

from apps.api.main import create_app
from engine.temporal import data_converter
from starter.schedules import StrategySchedules
from store import Store
from store.migrate import head_revision
from store.records import StrategySpec, UserRecord
from tests.fixtures.db import trade
from tests.fixtures.ports import free_port
from tests.fixtures.temporal import Engine

WAIT_SECONDS = 20.0


@dataclass
class ApiUser:
    user: UserRecord
    key: str
    account_id: int
    paper_key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


async def api_user(engine: Engine, paper_key: str, *, admin: bool = False) -> ApiUser:
    """A user with an API key and a broker account logged in to the paper broker."""
    user, key = await engine.store.create_user(f"{paper_key}-{uuid.uuid4().hex[:6]}", is_admin=admin)
    token = engine.paper.login(paper_key)
    account = await engine.store.add_broker_account(
        user.id, broker="kite", api_key=paper_key, api_secret="paper-secret", access_token=token
    )
    return ApiUser(user, key, account.id, paper_key)


async def newest_strategy_id(store: Store) -> int:
    return max((strategy.id for strategy in await store.list_strategies()), default=0)


@asynccontextmanager
async def schedules_removed_afterwards(engine: Engine) -> AsyncIterator[None]:
    """Schedules outlive a test on the shared dev server: remove those of the strategies it made."""
    before = await newest_strategy_id(engine.store)
    try:
        yield
    finally:
        schedules = StrategySchedules(engine.client, engine.settings)
        for strategy_id in range(before + 1, await newest_strategy_id(engine.store) + 1):
            await schedules.delete(strategy_id)


@pytest.fixture
async def api(engine: Engine) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(engine.settings, engine.client, engine.store)
    async with (
        schedules_removed_afterwards(engine),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client,
    ):
        yield client


async def create_strategy(
    api: httpx.AsyncClient, owner: ApiUser, *, symbol: str = "RELIANCE", quantity: int = 10, start: bool = True,
    **settings: Any,
) -> dict[str, Any]:
    body = {
        "name": f"{symbol.lower()}-{uuid.uuid4().hex[:6]}",
        "broker_account_id": owner.account_id,
        "symbol": symbol,
        "quantity": quantity,
        **settings,
    }
    created = await api.post("/strategies", json=body, headers=owner.headers)
    assert created.status_code == 201, created.text
    strategy: dict[str, Any] = created.json()
    if start:
        started = await api.post(f"/strategies/{strategy['id']}/start", headers=owner.headers)
        assert started.status_code == 200, started.text
        strategy = started.json()
    return strategy


async def wait_until_finished(api: httpx.AsyncClient, owner: ApiUser, workflow_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        answer = await api.get(f"/execution/order/{workflow_id}/status", headers=owner.headers)
        assert answer.status_code == 200, answer.text
        status: dict[str, Any] = answer.json()
        if status["workflow_status"] != "RUNNING":
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"{workflow_id} still running after {WAIT_SECONDS}s: {status}")
        await asyncio.sleep(0.05)


def broker_orders(engine: Engine, owner: ApiUser) -> list[dict[str, Any]]:
    return [order for order in engine.paper.control.orders() if order["api_key"] == owner.paper_key]


async def test_a_manual_buy_goes_through_to_a_fill(engine: Engine, api: httpx.AsyncClient) -> None:
    engine.paper.control.set_price("RELIANCE", "2500.05")
    alice = await api_user(engine, "alice")
    strategy = await create_strategy(api, alice, quantity=4)

    placed = await api.post(
        "/execution/order",
        json={"strategy_id": strategy["id"], "order_type": "BUY", "reason": "manual entry"},
        headers=alice.headers,
    )

    assert placed.status_code == 202, placed.text
    workflow_id = placed.json()["workflow_id"]
    assert workflow_id == f"order:{strategy['id']}:1:entry"
    assert placed.json()["status_url"] == f"/execution/order/{workflow_id}/status"
    final = await wait_until_finished(api, alice, workflow_id)
    assert (final["outcome"], final["filled_quantity"], final["average_price"]) == ("FILLED", 4, "2500.05")
    assert final["recorded"]["requested_by"] == f"api:{alice.user.username}"
    after = (await api.get(f"/strategies/{strategy['id']}", headers=alice.headers)).json()
    assert (after["position"], after["open_quantity"], after["entry_price"]) == ("LONG", 4, "2500.05")
    assert after["last_order_workflow_id"] == workflow_id
    assert len(broker_orders(engine, alice)) == 1


async def test_waiting_for_a_sell_answers_200_with_decimal_pnl(engine: Engine, api: httpx.AsyncClient) -> None:
    engine.paper.control.set_price("INFY", "1500.05")
    alice = await api_user(engine, "alice")
    strategy = await create_strategy(api, alice, symbol="INFY", quantity=7)
    bought = await api.post(
        "/execution/order",
        json={"strategy_id": strategy["id"], "order_type": "BUY", "reason": "in", "wait_seconds": WAIT_SECONDS},
        headers=alice.headers,
    )
    assert bought.status_code == 200, bought.text
    engine.paper.control.set_price("INFY", "1512.40")

    sold = await api.post(
        "/execution/order",
        json={"strategy_id": strategy["id"], "order_type": "SELL", "reason": "out", "wait_seconds": WAIT_SECONDS},
        headers=alice.headers,
    )

    assert sold.status_code == 200, sold.text
    assert sold.json()["status"]["outcome"] == "FILLED"
    after = (await api.get(f"/strategies/{strategy['id']}", headers=alice.headers)).json()
    assert (after["position"], after["realized_pnl"]) == ("FLAT", "86.45")  # (1512.40 - 1500.05) * 7


async def test_a_stop_loss_trigger_takes_its_price_as_a_string(engine: Engine, api: httpx.AsyncClient) -> None:
    engine.paper.control.set_price("SBIN", "800")
    alice = await api_user(engine, "alice")
    strategy = await create_strategy(api, alice, symbol="SBIN", quantity=5, stop_loss_price="781.50")
    assert strategy["stop_loss_price"] == "781.50"
    await api.post(
        "/execution/order",
        json={"strategy_id": strategy["id"], "order_type": "BUY", "reason": "in", "wait_seconds": WAIT_SECONDS},
        headers=alice.headers,
    )
    engine.paper.control.set_price("SBIN", "780.25")

    triggered = await api.post(
        "/execution/stop-loss",
        json={"strategy_id": strategy["id"], "trigger_price": "781.05", "wait_seconds": WAIT_SECONDS},
        headers=alice.headers,
    )

    assert triggered.status_code == 200, triggered.text
    assert triggered.json()["workflow_id"] == f"order:{strategy['id']}:1:exit"
    assert triggered.json()["status"]["order_type"] == "SL_SELL"
    after = (await api.get(f"/strategies/{strategy['id']}", headers=alice.headers)).json()
    assert (after["exit_reason"], after["sl_trigger_price"], after["realized_pnl"]) == ("STOP_LOSS", "781.05", "-98.75")


async def test_status_answers_while_the_order_is_in_flight_and_cancel_ends_it(
    engine: Engine, api: httpx.AsyncClient
) -> None:
    engine.paper.control.set_fill(delay_seconds=60)  # the order rests at the broker
    alice = await api_user(engine, "alice")
    strategy = await create_strategy(api, alice)
    placed = await api.post(
        "/execution/order",
        json={"strategy_id": strategy["id"], "order_type": "BUY", "reason": "resting"},
        headers=alice.headers,
    )
    workflow_id = placed.json()["workflow_id"]

    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        status = (await api.get(f"/execution/order/{workflow_id}/status", headers=alice.headers)).json()
        if status["broker_status"] == "OPEN" or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)

    assert status["workflow_status"] == "RUNNING" and status["outcome"] is None
    assert (status["stage"], status["answered_by"], status["quantity"]) == ("following", "workflow", 10)
    assert status["broker_order_id"] is not None
    cancelled = await api.post(
        f"/execution/order/{workflow_id}/cancel", json={"reason": "changed my mind"}, headers=alice.headers
    )
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["accepted"] is True
    final = await wait_until_finished(api, alice, workflow_id)
    assert (final["outcome"], final["filled_quantity"], final["answered_by"]) == ("CANCELLED", 0, "history")
    assert "changed my mind" in final["message"]


async def test_cancelling_a_finished_order_is_409_with_what_it_ended_as(
    engine: Engine, api: httpx.AsyncClient
) -> None:
    alice = await api_user(engine, "alice")
    strategy = await create_strategy(api, alice)
    placed = await api.post(
        "/execution/order",
        json={"strategy_id": strategy["id"], "order_type": "BUY", "reason": "in", "wait_seconds": WAIT_SECONDS},
        headers=alice.headers,
    )
    workflow_id = placed.json()["workflow_id"]

    refused = await api.post(f"/execution/order/{workflow_id}/cancel", headers=alice.headers)

    assert refused.status_code == 409
    assert refused.json()["status"] == "FILLED"
    assert refused.json()["detail"].startswith(f"order {workflow_id} already ended as FILLED")


async def test_a_repeated_buy_is_409_naming_the_existing_workflow(engine: Engine, api: httpx.AsyncClient) -> None:
    alice = await api_user(engine, "alice")
    strategy = await create_strategy(api, alice)
    body = {"strategy_id": strategy["id"], "order_type": "BUY", "reason": "in", "wait_seconds": WAIT_SECONDS}
    first = await api.post("/execution/order", json=body, headers=alice.headers)
    assert first.status_code == 200

    again = await api.post("/execution/order", json=body, headers=alice.headers)

    assert again.status_code == 409
    assert again.json()["workflow_id"] == first.json()["workflow_id"]
    assert again.json()["status"] == "COMPLETED"
    assert first.json()["workflow_id"] in again.json()["detail"]
    assert len(broker_orders(engine, alice)) == 1


async def test_a_broker_rejection_is_502_with_the_brokers_words(engine: Engine, api: httpx.AsyncClient) -> None:
    engine.paper.control.add_fault("reject", route="place_order", message="RMS: margin exceeds limit")
    alice = await api_user(engine, "alice")
    strategy = await create_strategy(api, alice)

    rejected = await api.post(
        "/execution/order",
        json={"strategy_id": strategy["id"], "order_type": "BUY", "reason": "in", "wait_seconds": WAIT_SECONDS},
        headers=alice.headers,
    )

    assert rejected.status_code == 502, rejected.text
    assert rejected.json()["status"] == "REJECTED"
    assert "RMS: margin exceeds limit" in rejected.json()["detail"]


async def test_a_user_sees_and_acts_on_his_own_strategies_and_orders_only(
    engine: Engine, api: httpx.AsyncClient
) -> None:
    alice, bob = await api_user(engine, "alice"), await api_user(engine, "bob")
    bobs = await create_strategy(api, bob)
    bought = await api.post(
        "/execution/order",
        json={"strategy_id": bobs["id"], "order_type": "BUY", "reason": "bob's", "wait_seconds": WAIT_SECONDS},
        headers=bob.headers,
    )
    workflow_id = bought.json()["workflow_id"]
    as_alice = alice.headers

    attempts = [
        await api.get(f"/strategies/{bobs['id']}", headers=as_alice),
        await api.patch(f"/strategies/{bobs['id']}", json={"quantity": 1}, headers=as_alice),
        await api.post(f"/strategies/{bobs['id']}/stop", headers=as_alice),
        await api.post(f"/strategies/{bobs['id']}/start", headers=as_alice),
        await api.post(
            "/execution/order", json={"strategy_id": bobs["id"], "order_type": "SELL", "reason": "x"}, headers=as_alice
        ),
        await api.post(
            "/execution/stop-loss", json={"strategy_id": bobs["id"], "trigger_price": "1"}, headers=as_alice
        ),
        await api.get(f"/execution/order/{workflow_id}/status", headers=as_alice),
        await api.post(f"/execution/order/{workflow_id}/cancel", headers=as_alice),
        await api.post(f"/execution/interventions/{bobs['id']}/clear", headers=as_alice),
    ]

    assert [answer.status_code for answer in attempts] == [404] * len(attempts)
    assert all("does not exist" in a.json()["detail"] or "no order" in a.json()["detail"] for a in attempts)
    assert (await api.get("/strategies", headers=as_alice)).json() == []
    assert (await api.get("/execution/history", headers=as_alice)).json()["items"] == []
    bobs_after = (await api.get(f"/strategies/{bobs['id']}", headers=bob.headers)).json()
    assert (bobs_after["status"], bobs_after["quantity"], bobs_after["open_quantity"]) == ("RUNNING", 10, 10)
    assert len((await api.get("/execution/history", headers=bob.headers)).json()["items"]) == 1


async def test_an_unknown_order_is_404_like_anothers(engine: Engine, api: httpx.AsyncClient) -> None:
    alice = await api_user(engine, "alice")
    strategy = await create_strategy(api, alice)

    answers = [
        await api.get(f"/execution/order/order:{strategy['id']}:7:entry/status", headers=alice.headers),
        await api.get("/execution/order/not-an-order/status", headers=alice.headers),
        await api.get("/execution/order/order:999999:1:exit/status", headers=alice.headers),
        await api.get("/strategies/999999", headers=alice.headers),
    ]

    assert [answer.status_code for answer in answers] == [404, 404, 404, 404]


async def test_no_key_or_an_unknown_key_is_401(engine: Engine, api: httpx.AsyncClient) -> None:
    alice = await api_user(engine, "alice")
    strategy = await create_strategy(api, alice, start=False)

    missing = await api.get("/strategies")
    unknown = await api.get("/strategies", headers={"Authorization": "Bearer kee_000000000000_forged"})
    malformed = await api.get(f"/strategies/{strategy['id']}", headers={"Authorization": "Bearer not a key"})
    basic = await api.get("/strategies", headers={"Authorization": "Basic YWxpY2U6c2VjcmV0"})

    assert [r.status_code for r in (missing, unknown, malformed, basic)] == [401, 401, 401, 401]
    assert "Authorization: Bearer" in missing.json()["detail"]
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    assert "not valid" in unknown.json()["detail"]


async def test_a_bad_value_is_400_saying_what_to_fix(engine: Engine, api: httpx.AsyncClient) -> None:
    alice = await api_user(engine, "alice")
    body = {"name": "same-times", "broker_account_id": alice.account_id, "symbol": "INFY", "quantity": 1}

    same_times = await api.post("/strategies", json={**body, "entry_time": "09:20", "exit_time": "09:20"},
                                headers=alice.headers)
    both_stops = await api.post("/strategies", json={**body, "stop_loss_price": "10", "stop_loss_pct": "1"},
                                headers=alice.headers)

    assert [r.status_code for r in (same_times, both_stops)] == [400, 400]
    assert "must differ" in same_times.json()["detail"]
    assert "not both" in both_stops.json()["detail"]


async def test_a_malformed_request_is_422_saying_what_to_send(engine: Engine, api: httpx.AsyncClient) -> None:
    alice = await api_user(engine, "alice")
    strategy = await create_strategy(api, alice)

    float_price = await api.post(
        "/execution/stop-loss", json={"strategy_id": strategy["id"], "trigger_price": 781.05}, headers=alice.headers
    )
    wrong_type = await api.post(
        "/execution/order", json={"strategy_id": strategy["id"], "order_type": "SL_SELL", "reason": "x"},
        headers=alice.headers,
    )
    naive_since = await api.get("/execution/history", params={"since": "2026-11-24T09:15:00"}, headers=alice.headers)
    unknown_field = await api.patch(f"/strategies/{strategy['id']}", json={"status": "RUNNING"}, headers=alice.headers)

    assert [r.status_code for r in (float_price, wrong_type, naive_since, unknown_field)] == [422] * 4
    assert 'send a decimal string such as "2450.50"' in float_price.json()["detail"]
    assert float_price.json()["detail"].startswith("fix the request: trigger_price")
    assert "order_type" in wrong_type.json()["detail"]
    assert "since" in naive_since.json()["detail"]


async def test_an_order_on_a_stopped_strategy_is_409_saying_to_start_it(engine: Engine, api: httpx.AsyncClient) -> None:
    alice = await api_user(engine, "alice")
    strategy = await create_strategy(api, alice, start=False)

    refused = await api.post(
        "/execution/order", json={"strategy_id": strategy["id"], "order_type": "BUY", "reason": "x"},
        headers=alice.headers,
    )

    assert refused.status_code == 409
    assert f"POST /strategies/{strategy['id']}/start" in refused.json()["detail"]
    assert broker_orders(engine, alice) == []


async def test_history_pages_newest_first_with_a_cursor(engine: Engine, api: httpx.AsyncClient) -> None:
    alice, bob = await api_user(engine, "alice"), await api_user(engine, "bob")
    strategy = await create_strategy(api, alice, start=False)
    bobs = await create_strategy(api, bob, start=False)
    record = await engine.store.get_strategy(strategy["id"])
    for _ in range(3):  # three round trips: BUY and SELL each
        _, record = await trade(engine.store, record, "BUY", record.quantity, "100.25")
        _, record = await trade(engine.store, record, "SELL", record.quantity, "101.50")
    await trade(engine.store, await engine.store.get_strategy(bobs["id"]), "BUY", 10, "5")

    pages, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": 4} | ({"cursor": cursor} if cursor else {})
        page = (await api.get("/execution/history", params=params, headers=alice.headers)).json()
        pages.append(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    sells = (await api.get("/execution/history", params={"order_type": "SELL"}, headers=alice.headers)).json()
    recent = await api.get(
        "/execution/history",
        params={"since": (datetime.now(UTC) - timedelta(days=1)).isoformat(), "strategy_id": strategy["id"]},
        headers=alice.headers,
    )

    assert [len(items) for items in pages] == [4, 2]
    items = [item for items in pages for item in items]
    assert len({item["id"] for item in items}) == 6
    assert [item["attempted_at"] for item in items] == sorted((item["attempted_at"] for item in items), reverse=True)
    assert {item["strategy_id"] for item in items} == {strategy["id"]}
    assert {item["order_type"] for item in sells["items"]} == {"SELL"} and len(sells["items"]) == 3
    assert recent.status_code == 200
    assert items[0]["status"] == "SUCCESS" and items[0]["workflow_id"].startswith(f"order:{strategy['id']}:")


async def test_interventions_are_listed_and_cleared_by_their_owner(engine: Engine, api: httpx.AsyncClient) -> None:
    alice, bob = await api_user(engine, "alice"), await api_user(engine, "bob")
    strategy = await create_strategy(api, alice, start=False)
    await engine.store.mark_intervention(strategy["id"], "exit order rejected: the position is still open")

    listed = (await api.get("/execution/interventions", headers=alice.headers)).json()
    bobs_view = (await api.get("/execution/interventions", headers=bob.headers)).json()
    bob_clears = await api.post(f"/execution/interventions/{strategy['id']}/clear", headers=bob.headers)
    cleared = await api.post(f"/execution/interventions/{strategy['id']}/clear", headers=alice.headers)

    assert [item["strategy_id"] for item in listed] == [strategy["id"]]
    assert listed[0]["reason"] == "exit order rejected: the position is still open"
    assert bobs_view == [] and bob_clears.status_code == 404
    assert cleared.status_code == 200 and cleared.json()["needs_intervention"] is False
    assert (await api.get("/execution/interventions", headers=alice.headers)).json() == []


async def test_strategies_are_created_updated_started_and_stopped_with_their_schedules(
    engine: Engine, api: httpx.AsyncClient
) -> None:
    alice = await api_user(engine, "alice")
    strategy = await create_strategy(api, alice, start=False, entry_time="09:20", exit_time="15:10")
    path = f"/strategies/{strategy['id']}"
    assert (strategy["status"], strategy["entry_time"], strategy["realized_pnl"]) == ("STOPPED", "09:20:00", "0.00")

    started = (await api.post(f"{path}/start", headers=alice.headers)).json()
    moved = (await api.patch(path, json={"exit_time": "15:15:30", "quantity": 3}, headers=alice.headers)).json()
    shown = (await api.get(path, headers=alice.headers)).json()
    stopped = (await api.post(f"{path}/stop", json={"reason": "holiday mood"}, headers=alice.headers)).json()
    no_exit = await api.patch(path, json={"exit_time": None}, headers=alice.headers)
    after = (await api.get(path, headers=alice.headers)).json()

    assert started["status"] == "RUNNING"
    assert [(s["leg"], s["at"], s["paused"]) for s in started["schedules"]] == [
        ("entry", "09:20:00", False), ("exit", "15:10:00", False)
    ]
    assert (moved["exit_time"], moved["quantity"]) == ("15:15:30", 3)
    assert [s["at"] for s in shown["schedules"]] == ["09:20:00", "15:15:30"]
    assert stopped["status"] == "STOPPED" and "holiday mood" in stopped["stop_reason"]
    assert [s["paused"] for s in stopped["schedules"]] == [True, True]
    assert "holiday mood" in stopped["schedules"][0]["note"]
    assert no_exit.status_code == 200
    assert [s["leg"] for s in after["schedules"]] == ["entry"]
    assert [item["id"] for item in (await api.get("/strategies", headers=alice.headers)).json()] == [strategy["id"]]


async def test_another_users_broker_account_is_404(engine: Engine, api: httpx.AsyncClient) -> None:
    alice, bob = await api_user(engine, "alice"), await api_user(engine, "bob")

    refused = await api.post(
        "/strategies",
        json={"name": "x", "broker_account_id": bob.account_id, "symbol": "INFY", "quantity": 1},
        headers=alice.headers,
    )

    assert refused.status_code == 404
    assert f"broker account {bob.account_id} does not exist" in refused.json()["detail"]


async def test_emergency_stop_stops_the_users_strategies_and_pauses_their_schedules(
    engine: Engine, api: httpx.AsyncClient
) -> None:
    alice, bob = await api_user(engine, "alice"), await api_user(engine, "bob")
    first = await create_strategy(api, alice, entry_time="09:20", exit_time="15:10")
    second = await create_strategy(api, alice, symbol="TCS")
    bobs = await create_strategy(api, bob, symbol="ITC")

    stopped = await api.post("/execution/emergency-stop", json={"reason": "broker outage"}, headers=alice.headers)
    everyone = await api.post(
        "/execution/emergency-stop", json={"reason": "panic", "all_users": True}, headers=alice.headers
    )

    assert stopped.status_code == 202, stopped.text
    assert stopped.json()["workflow_id"]
    for strategy in (first, second):
        after = (await api.get(f"/strategies/{strategy['id']}", headers=alice.headers)).json()
        assert after["status"] == "STOPPED" and "broker outage" in after["stop_reason"]
    await engine.client.get_workflow_handle(stopped.json()["workflow_id"]).result()  # cancels, pauses, alerts
    schedules = (await api.get(f"/strategies/{first['id']}", headers=alice.headers)).json()["schedules"]
    assert [schedule["paused"] for schedule in schedules] == [True, True]
    assert (await api.get(f"/strategies/{bobs['id']}", headers=bob.headers)).json()["status"] == "RUNNING"
    assert everyone.status_code == 403 and "administrator" in everyone.json()["detail"]


async def test_health_and_openapi_docs(engine: Engine, api: httpx.AsyncClient) -> None:
    health = await api.get("/health")
    schema = await api.get("/openapi.json")
    docs = await api.get("/docs")

    assert health.status_code == 200 and health.json() == {
        "status": "ok", "database": "ok", "temporal": "ok", "schema_revision": head_revision(),
        "schema_head": head_revision(),
    }
    assert schema.status_code == 200 and "/execution/order/{workflow_id}/status" in schema.json()["paths"]
    assert docs.status_code == 200


async def test_temporal_unreachable_is_503_saying_to_retry(engine: Engine) -> None:
    alice = await api_user(engine, "alice")
    running = await engine.store.create_strategy(
        StrategySpec(user_id=alice.user.id, broker_account_id=alice.account_id, name="up", symbol="INFY", quantity=1)
    )
    await engine.store.set_strategy_status(running.id, "RUNNING")
    stopped = await engine.store.create_strategy(
        StrategySpec(user_id=alice.user.id, broker_account_id=alice.account_id, name="down", symbol="TCS", quantity=1)
    )
    nowhere = await Client.connect(f"127.0.0.1:{free_port()}", lazy=True, data_converter=data_converter({}))
    app = create_app(engine.settings, nowhere, engine.store)

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as api:
        order = await api.post(
            "/execution/order", json={"strategy_id": running.id, "order_type": "BUY", "reason": "x"},
            headers=alice.headers,
        )
        status = await api.get(f"/execution/order/order:{running.id}:1:entry/status", headers=alice.headers)
        start = await api.post(f"/strategies/{stopped.id}/start", headers=alice.headers)
        health = await api.get("/health")
        strategy = await api.get(f"/strategies/{running.id}", headers=alice.headers)

    assert [r.status_code for r in (order, status, start, health)] == [503, 503, 503, 503]
    assert "Temporal is unreachable" in order.json()["detail"] and "retry" in order.json()["detail"]
    assert order.headers["Retry-After"] == "5"
    assert (await engine.store.get_strategy(stopped.id)).status == "STOPPED"
    assert health.json()["database"] == "ok" and health.json()["temporal"].startswith("unreachable")
    assert strategy.status_code == 200 and strategy.json()["schedules"] is None
    assert broker_orders(engine, alice) == []


async def test_an_exit_through_the_api_sells_what_the_strategy_holds(engine: Engine, api: httpx.AsyncClient) -> None:
    alice = await api_user(engine, "exitapi")
    strategy = await create_strategy(api, alice, symbol="TCS", quantity=6)
    await api.post(
        "/execution/order",
        json={"strategy_id": strategy["id"], "order_type": "BUY", "reason": "in", "wait_seconds": WAIT_SECONDS},
        headers=alice.headers,
    )
    stopped = await api.post(f"/strategies/{strategy['id']}/stop", headers=alice.headers)
    assert stopped.status_code == 200, stopped.text

    exited = await api.post(
        f"/strategies/{strategy['id']}/exit", json={"reason": "closing by hand", "wait_seconds": WAIT_SECONDS},
        headers=alice.headers,
    )
    nothing = await api.post(f"/strategies/{strategy['id']}/exit", headers=alice.headers)

    assert exited.status_code == 200, exited.text
    answer = exited.json()
    assert answer["workflow_id"] == f"order:{strategy['id']}:1:exit"
    assert answer["status"]["outcome"] == "FILLED" and answer["status"]["filled_quantity"] == 6
    assert answer["status"]["recorded"]["exit_reason"] == "MANUAL"
    after = (await api.get(f"/strategies/{strategy['id']}", headers=alice.headers)).json()
    assert (after["status"], after["position"], after["exit_reason"]) == ("STOPPED", "FLAT", "MANUAL")
    assert nothing.status_code == 409 and "nothing to exit" in nothing.json()["detail"]
