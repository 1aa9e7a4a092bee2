"""The HTTP API under hostile input: every malformed value is a 422 or 400 that says what is wrong, never a
500; credentials are checked before a body is read; bodies are capped; failed authentication is braked;
every answer carries the security headers."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import AsyncIterator

import httpx
import pytest

from apps.api.guards import FAILED_AUTH_LIMIT, MAX_BODY_BYTES
from apps.api.main import create_app
from tests.fixtures.temporal import Engine
from tests.test_api import api_user, create_strategy, schedules_removed_afterwards


@pytest.fixture
async def api(engine: Engine) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(engine.settings, engine.client, engine.store)
    async with (
        schedules_removed_afterwards(engine),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client,
    ):
        yield client


def cursor_of(position: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(position).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "params",
    [
        {"since": "0001-01-01T00:00:00+14:00"},
        {"until": "9999-12-31T23:59:59-14:00"},
        {"cursor": cursor_of(["2026-11-24T09:15:00+00:00", 1e400])},
        {"cursor": cursor_of(["2026-11-24T09:15:00+00:00", 10**30])},
        {"cursor": cursor_of(["2026-11-24T09:15:00+00:00", True])},
        {"cursor": cursor_of(["0001-01-01T00:00:00+14:00", 5])},
        {"cursor": cursor_of(["9999-12-31T23:59:59-14:00", 5])},
    ],
)
async def test_history_at_the_edges_of_the_calendar_is_a_422(
    engine: Engine, api: httpx.AsyncClient, params: dict[str, str]
) -> None:
    alice = await api_user(engine, "alice")

    answer = await api.get("/execution/history", params=params, headers=alice.headers)

    assert answer.status_code == 422, answer.text
    detail = answer.json()["detail"]
    assert "UTC" in detail or "pass next_cursor back unchanged" in detail


async def test_a_cursor_the_store_issued_still_pages(engine: Engine, api: httpx.AsyncClient) -> None:
    alice = await api_user(engine, "alice")
    answer = await api.get(
        "/execution/history", params={"cursor": cursor_of(["2026-11-24T09:15:00+05:30", 7])}, headers=alice.headers
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["items"] == []


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("stop_loss_price", "२४५०", "plain decimal"),
        ("stop_loss_price", "0", "above zero"),
        ("stop_loss_price", "0.00", "above zero"),
        ("stop_loss_pct", "٥", "plain decimal"),
        ("quantity", True, "valid integer"),
        ("quantity", "10", "valid integer"),
        ("entry_time", "09:20:00+05:30", "without an offset"),
        ("entry_time", "9:20", "without an offset"),
    ],
)
async def test_a_value_in_the_wrong_form_is_refused(
    engine: Engine, api: httpx.AsyncClient, field: str, value: object, says: str
) -> None:
    alice = await api_user(engine, "alice")
    body = {"name": "hostile", "broker_account_id": alice.account_id, "symbol": "INFY", "quantity": 1, field: value}

    answer = await api.post("/strategies", json=body, headers=alice.headers)

    assert answer.status_code == 422, answer.text
    assert field in answer.json()["detail"] and says in answer.json()["detail"]


async def test_true_is_not_a_number_of_seconds_nor_a_trigger_of_zero_a_price(
    engine: Engine, api: httpx.AsyncClient
) -> None:
    alice = await api_user(engine, "alice")
    strategy = await create_strategy(api, alice)

    waits = await api.post(
        "/execution/order",
        json={"strategy_id": strategy["id"], "order_type": "BUY", "reason": "t", "wait_seconds": True},
        headers=alice.headers,
    )
    zero = await api.post(
        "/execution/stop-loss", json={"strategy_id": strategy["id"], "trigger_price": "0"}, headers=alice.headers
    )
    flag = await api.post("/execution/emergency-stop", json={"reason": "t", "square_off": 1}, headers=alice.headers)

    assert [waits.status_code, zero.status_code, flag.status_code] == [422, 422, 422]
    assert "valid number" in waits.json()["detail"] and "above zero" in zero.json()["detail"]
    assert [order for order in engine.paper.control.orders() if order["api_key"] == alice.paper_key] == []


async def test_times_of_day_are_declared_as_they_are_sent(engine: Engine, api: httpx.AsyncClient) -> None:
    alice = await api_user(engine, "alice")
    schema = (await api.get("/openapi.json")).json()["components"]["schemas"]

    created = await create_strategy(api, alice, start=False, entry_time="09:20", exit_time="15:10:30")

    for model, field in (("StrategyIn", "entry_time"), ("StrategyOut", "exit_time"), ("ScheduleOut", "at")):
        declared = json.dumps(schema[model]["properties"][field])
        assert '"format": "time"' not in declared, (model, declared)
    assert (created["entry_time"], created["exit_time"]) == ("09:20:00", "15:10:30")


async def test_credentials_are_checked_before_the_body_is_read(engine: Engine, api: httpx.AsyncClient) -> None:
    anonymous = await api.post("/strategies", content=b"{not json", headers={"content-type": "application/json"})
    wrong_key = await api.post(
        "/strategies", content=b"{not json", headers={"content-type": "application/json", "Authorization": "Bearer x"}
    )

    assert [anonymous.status_code, wrong_key.status_code] == [401, 401]


async def test_a_body_over_the_cap_is_refused_unread(engine: Engine, api: httpx.AsyncClient) -> None:
    alice = await api_user(engine, "alice")
    too_big = b'{"name": "' + b"x" * MAX_BODY_BYTES + b'"}'

    headers = {**alice.headers, "content-type": "application/json"}
    declared = await api.post("/strategies", content=too_big, headers=headers)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(too_big), 4096):
            yield too_big[start:start + 4096]

    chunked = await api.post("/strategies", content=chunks(), headers=headers)

    assert [declared.status_code, chunked.status_code] == [413, 413]
    assert str(MAX_BODY_BYTES) in declared.json()["detail"]


async def test_failed_authentication_is_braked_per_client(engine: Engine) -> None:
    app = create_app(engine.settings, engine.client, engine.store)
    alice = await api_user(engine, "alice")
    transport = httpx.ASGITransport(app=app, client=("203.0.113.9", 5000))
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as api:
        failures = [
            (await api.get("/strategies", headers={"Authorization": f"Bearer wrong{n}"})).status_code
            for n in range(FAILED_AUTH_LIMIT)
        ]
        braked = await api.get("/strategies", headers={"Authorization": "Bearer wrong"})
        even_a_good_key = await api.get("/strategies", headers=alice.headers)
    other_transport = httpx.ASGITransport(app=app, client=("203.0.113.10", 5000))
    async with httpx.AsyncClient(transport=other_transport, base_url="http://api") as other:
        elsewhere = await other.get("/strategies", headers=alice.headers)

    assert failures == [401] * FAILED_AUTH_LIMIT
    assert braked.status_code == 429 and int(braked.headers["Retry-After"]) >= 1
    assert even_a_good_key.status_code == 429
    assert elsewhere.status_code == 200


async def test_every_answer_carries_the_security_headers(engine: Engine, api: httpx.AsyncClient) -> None:
    alice = await api_user(engine, "alice")
    answers = [
        await api.get("/strategies", headers=alice.headers),
        await api.get("/strategies"),
        await api.get("/strategies/999999", headers=alice.headers),
        await api.get("/health"),
    ]

    assert [answer.status_code for answer in answers] == [200, 401, 404, 200]
    for answer in answers:
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["cache-control"] == "no-store"


async def test_the_docs_need_no_network(api: httpx.AsyncClient) -> None:
    page = await api.get("/docs")
    redoc = await api.get("/redoc")
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text + redoc.text)

    assert page.status_code == redoc.status_code == 200
    assert assets and not [url for url in assets if "://" in url]
    for url in {url for url in assets if url.startswith("/")}:
        fetched = await api.get(url)
        assert fetched.status_code == 200 and len(fetched.content) > 1000, url


async def test_a_duplicate_strategy_name_is_a_409(engine: Engine, api: httpx.AsyncClient) -> None:
    alice = await api_user(engine, "alice")
    created = await create_strategy(api, alice, start=False)
    body = {"name": created["name"], "broker_account_id": alice.account_id, "symbol": "INFY", "quantity": 1}

    again = await api.post("/strategies", json=body, headers=alice.headers)

    assert again.status_code == 409 and "already has a strategy named" in again.json()["detail"]
