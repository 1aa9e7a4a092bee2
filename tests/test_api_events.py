"""`GET /execution/events` over real HTTP: the API on uvicorn, orders filled by the real worker at the
paper broker. Only the caller's events arrive; a reconnect with Last-Event-ID resumes right after the
last one seen; an idle stream beats; a client that goes away ends its stream on the server."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from dev.devserver import DevServer
from engine.settings import Settings
from store import StrategySpec
from tests.fixtures.temporal import Engine
from tests.test_api import ApiUser, api_user
from tests.test_api_fuzz import ServedApi

WAIT_SECONDS = 20.0


@dataclass
class Message:
    id: int | None
    event: str | None
    data: dict[str, Any] | None
    comment: str | None


class EventReader:
    """Reads one SSE response message by message (a blank line ends each)."""

    def __init__(self, response: httpx.Response):
        self.lines = response.aiter_lines()

    async def next(self) -> Message:
        fields: dict[str, str] = {}
        comment = None
        async with asyncio.timeout(WAIT_SECONDS):
            async for line in self.lines:
                if line == "":
                    if fields or comment is not None:
                        break
                    continue
                if line.startswith(":"):
                    comment = line[1:].strip()
                    continue
                name, _, value = line.partition(":")
                fields[name] = value.lstrip()
        data = json.loads(fields["data"]) if "data" in fields else None
        return Message(int(fields["id"]) if "id" in fields else None, fields.get("event"), data, comment)

    async def events_until(self, done: Any) -> list[Message]:
        seen: list[Message] = []
        while True:
            message = await self.next()
            if message.id is not None:
                seen.append(message)
                if done(message):
                    return seen


@pytest.fixture
def served(
    engine: Engine, engine_db_url: str, engine_secret_key: str, temporal_server: DevServer
) -> Iterator[ServedApi]:
    settings = Settings.model_validate({
        "database_url": engine_db_url, "engine_secret_key": engine_secret_key,
        "task_queue": engine.settings.task_queue, "kite_root": engine.paper.url, "enforce_market_hours": False,
        "events_poll_interval_seconds": 0.05, "events_heartbeat_seconds": 0.3,
    })
    with ServedApi(settings, temporal_server.address) as api:
        yield api


@pytest.fixture
async def http(served: ServedApi) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=served.url, timeout=WAIT_SECONDS) as client:
        yield client


async def running_strategy(engine: Engine, owner: ApiUser) -> int:
    strategy = await engine.store.create_strategy(StrategySpec(
        user_id=owner.user.id, broker_account_id=owner.account_id, name=f"sse-{uuid.uuid4().hex[:6]}",
        symbol="RELIANCE", quantity=2,
    ))
    await engine.store.set_strategy_status(strategy.id, "RUNNING")
    return strategy.id


async def buy(engine: Engine, strategy_id: int) -> str:
    handle = await engine.starter.place_buy_order(strategy_id, requested_by="test", reason="stream test")
    await handle.result()
    return handle.id


async def test_the_stream_carries_only_the_callers_events_and_resumes_after_last_event_id(
    engine: Engine, served: ServedApi, http: httpx.AsyncClient
) -> None:
    alice, bob = await api_user(engine, "sse-a"), await api_user(engine, "sse-b")
    alices, bobs = await running_strategy(engine, alice), await running_strategy(engine, bob)

    async with http.stream("GET", "/execution/events", headers=alice.headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        reader = EventReader(response)
        first = await reader.next()
        assert first.comment is not None and first.id is None  # the opening comment: the stream is up
        await buy(engine, bobs)
        workflow_id = await buy(engine, alices)
        seen = await reader.events_until(lambda m: m.event == "ORDER_EXECUTED")
        beat = await reader.next()
    assert beat.comment == "heartbeat"
    assert {m.data["strategy_id"] for m in seen if m.data} == {alices}
    assert {m.data["workflow_id"] for m in seen if m.data} == {workflow_id}
    executed = seen[-1].data
    assert [m.event for m in seen][:1] == ["ATTEMPTED"]
    assert executed is not None and executed["data"]["outcome"] == "SUCCESS"
    assert [m.id for m in seen] == sorted(m.id for m in seen if m.id is not None)

    # The client went away: the server ends that stream.
    deadline = time.monotonic() + WAIT_SECONDS
    app_state = served.server.config.app.state  # type: ignore[union-attr]
    while getattr(app_state, "open_event_streams", 0) != 0:
        assert time.monotonic() < deadline, "the stream outlived its client"
        await asyncio.sleep(0.05)

    # A reconnect that names the second event it saw gets the rest, in order, and nothing twice.
    resume_after = seen[1].id
    assert resume_after is not None
    async with http.stream(
        "GET", "/execution/events", headers={**alice.headers, "Last-Event-ID": str(resume_after)}
    ) as again:
        resumed = await EventReader(again).events_until(lambda m: m.event == "ORDER_EXECUTED")
    assert [(m.id, m.event) for m in resumed] == [(m.id, m.event) for m in seen[2:]]

    # Bob's stream from the start holds his order and none of Alice's.
    async with http.stream("GET", "/execution/events?after=0", headers=bob.headers) as his:
        bobs_events = await EventReader(his).events_until(lambda m: m.event == "ORDER_EXECUTED")
    assert {m.data["strategy_id"] for m in bobs_events if m.data} == {bobs}

    refused = await http.get("/execution/events", headers={**alice.headers, "Last-Event-ID": "1e400"})
    assert refused.status_code == 400 and "Last-Event-ID" in refused.json()["detail"]
    assert (await http.get("/execution/events")).status_code == 401
