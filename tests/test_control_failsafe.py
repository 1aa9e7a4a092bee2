"""Failsafe: alerts to a webhook (retried on their own, never holding an order back), an expired broker
session (one alert, no retry storm), and the manual-intervention list."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError

from brokers.paper.testing import PaperBrokerServer
from engine.models import Outcome
from starter.control import clear_intervention, list_interventions
from store import Store
from tests.fixtures.temporal import Engine, make_engine

WAIT_SECONDS = 15.0


@dataclass
class WebhookRecorder:
    """A tiny HTTP server that records every POST; the first `failures` answer 500."""

    failures: int = 0
    posts: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # (status answered, body)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/alerts"

    def delivered(self) -> list[dict[str, Any]]:
        with self._lock:
            return [body for status, body in self.posts if status == 200]

    def attempts(self) -> int:
        with self._lock:
            return len(self.posts)

    def serve(self) -> None:
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with recorder._lock:
                    status = 500 if len(recorder.posts) < recorder.failures else 200
                    recorder.posts.append((status, body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def webhook() -> Iterator[WebhookRecorder]:
    recorder = WebhookRecorder()
    recorder.serve()
    yield recorder
    assert recorder.server is not None
    recorder.server.shutdown()


@pytest.fixture
async def alerting_engine(
    temporal_client: Client, engine_store: Store, paper: PaperBrokerServer, webhook: WebhookRecorder
) -> AsyncIterator[Engine]:
    async for built in make_engine(temporal_client, engine_store, paper, alert_webhook_url=webhook.url):
        yield built


async def wait_until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def failure_of(handle: Any) -> ApplicationError:
    with pytest.raises(WorkflowFailureError) as failed:
        await handle.result()
    cause = failed.value.cause
    assert isinstance(cause, ApplicationError)
    return cause


def alert_logs(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == "engine.alerts"]


async def test_an_alert_reaches_the_webhook(alerting_engine: Engine, webhook: WebhookRecorder) -> None:
    engine = alerting_engine
    engine.paper.control.add_fault("reject", route="place_order", count=1, message="RMS: margin exceeded")
    strategy = await engine.strategy("RELIANCE", quantity=3)

    handle = await engine.starter.place_buy_order(strategy)
    await failure_of(handle)
    await wait_until(lambda: webhook.delivered(), "the webhook to receive the alert")

    [alert] = webhook.delivered()
    assert alert["level"] == "WARNING" and alert["title"] == "BUY order rejected"
    assert "RMS: margin exceeded" in alert["message"]
    assert (alert["strategy_id"], alert["workflow_id"]) == (strategy.id, handle.id)


async def test_a_failing_webhook_is_retried_without_holding_the_order_back(
    alerting_engine: Engine, webhook: WebhookRecorder
) -> None:
    engine = alerting_engine
    webhook.failures = 2  # retried after about 0.5 s, then 1 s
    engine.paper.control.add_fault("reject", route="place_order", count=1, message="RMS: blocked")
    strategy = await engine.strategy("INFY", quantity=2)

    failure = await failure_of(await engine.starter.place_buy_order(strategy))
    delivered_when_the_order_ended = len(webhook.delivered())
    await wait_until(lambda: webhook.delivered(), "the webhook's retries to get the alert through")

    assert failure.type == Outcome.REJECTED.value
    assert delivered_when_the_order_ended == 0  # the order ended while the webhook still failed
    assert webhook.attempts() == 3 and len(webhook.delivered()) == 1


async def test_an_expired_session_refuses_the_entry_with_one_alert_and_no_retry_storm(
    alerting_engine: Engine, webhook: WebhookRecorder, caplog: pytest.LogCaptureFixture
) -> None:
    engine = alerting_engine
    caplog.set_level(logging.INFO, logger="engine.alerts")
    strategy = await engine.strategy("SBIN", quantity=4, api_key="expiring")
    assert engine.paper.control.expire_tokens("expiring") == 1

    failure = await failure_of(await engine.starter.place_buy_order(strategy))
    await wait_until(lambda: webhook.delivered(), "the alert at the webhook")
    again = await failure_of(await engine.starter.place_buy_order(strategy))  # the next trigger of the entry

    account_id = strategy.broker_account_id
    assert failure.type == Outcome.INVALID.value and f"log in to Kite for account {account_id}" in failure.message
    assert again.type == Outcome.INVALID.value
    requests = [r for r in engine.paper.control.requests() if r["api_key"] == "expiring"]
    assert len(requests) <= 2, requests  # one refused placement, no retries; the second sent nothing
    [logged] = alert_logs(caplog)  # one alert, not one per order
    assert f"log in to Kite for account {account_id}" in logged.getMessage()
    [alert] = webhook.delivered()
    assert "Kite refused the day's access token" in alert["message"]
    assert await list_interventions(engine.store, strategy.user_id) == []  # a login is all it needs


async def test_manual_intervention_is_listed_until_a_person_clears_it(engine: Engine) -> None:
    first = await engine.strategy("TCS", quantity=1, api_key="people")
    second = await engine.strategy("INFY", quantity=1, api_key="people")
    await engine.store.mark_intervention(second.id, "exit order timed out")
    await engine.store.mark_intervention(first.id, "partial fill: 3 of 5")

    listed = await list_interventions(engine.store, first.user_id)
    cleared = await clear_intervention(engine.store, second.id, "alice")

    assert [s.id for s in listed] == [second.id, first.id]  # oldest first
    assert not cleared.needs_intervention and cleared.intervention_cleared_by == "alice"
    assert cleared.intervention_reason == "exit order timed out"  # what was cleared stays on record
    assert [s.id for s in await list_interventions(engine.store, first.user_id)] == [first.id]
