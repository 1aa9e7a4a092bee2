"""The worker's Prometheus endpoints: orders run through a real worker with the metrics interceptor, and
both endpoints (the engine's and the Temporal SDK's) are scraped over HTTP."""

from __future__ import annotations

import logging
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal

import httpx
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families
from temporalio.client import Client, WorkflowFailureError
from temporalio.common import MetricMeter

from apps.metrics import (
    EngineMetrics,
    MetricsEndpoint,
    MetricsEndpointError,
    MetricsInterceptor,
    serve_metrics,
    temporal_runtime,
    worker_telemetry,
)
from apps.worker import build_worker
from brokers.factory import KiteBrokerFactory
from brokers.paper.testing import PaperBrokerServer
from dev.devserver import DevServer
from engine.ids import OrderType
from engine.logs import LogContextInterceptor
from engine.models import OrderIntent, Outcome
from engine.settings import Settings
from engine.temporal import connect
from store import Store
from tests.fixtures.ports import free_port
from tests.fixtures.temporal import Engine, make_engine, replay_task_queue
from workflows.order import OrderWorkflow

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class ObservedClient:
    """A client on a runtime of its own that serves the SDK's metrics."""

    client: Client
    sdk_metrics_url: str


@dataclass
class Observed:
    engine: Engine
    interceptor: MetricsInterceptor
    endpoint: MetricsEndpoint
    sdk_metrics_url: str

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.endpoint.port}/metrics"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def observed_client(temporal_server: DevServer) -> ObservedClient:
    await temporal_server.wait_for_frontend()
    address = f"127.0.0.1:{free_port()}"
    runtime = temporal_runtime(address)  # before the client, which must be connected with it
    client = await connect(temporal_server.address, environ={}, runtime=runtime)
    return ObservedClient(client, f"http://{address}/metrics")


@pytest.fixture
async def observed(
    observed_client: ObservedClient, engine_store: Store, paper: PaperBrokerServer
) -> AsyncIterator[Observed]:
    client = observed_client.client
    async for engine in make_engine(client, engine_store, paper, start_worker=False):
        metrics = EngineMetrics()
        endpoint = serve_metrics(metrics.registry, "127.0.0.1", 0)
        interceptor = MetricsInterceptor(metrics)
        worker, parts = build_worker(
            client, engine_store, engine.settings, brokers=KiteBrokerFactory(engine.settings), events=engine.events,
            interceptors=[LogContextInterceptor(), interceptor],
        )
        engine.worker, engine.parts = worker, parts
        try:
            async with worker:
                yield Observed(engine, interceptor, endpoint, observed_client.sdk_metrics_url)
        finally:
            endpoint.close()
    await replay_task_queue(client, engine.settings.task_queue)


async def scrape(url: str) -> Samples:
    async with httpx.AsyncClient() as http:
        response = await http.get(url)
    response.raise_for_status()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name` over every sample whose labels include `labels` (0 when none)."""
    wanted = set(labels.items())
    return sum(v for (sample, sample_labels), v in samples.items() if sample == name and wanted <= sample_labels)


async def test_orders_move_the_engine_and_sdk_metrics(observed: Observed) -> None:
    engine = observed.engine
    engine.paper.control.set_price("RELIANCE", "2500")
    held = await engine.strategy("RELIANCE", quantity=5)
    rejected = await engine.strategy("INFY", quantity=3)
    flat = await engine.strategy("TCS", quantity=2)

    bought = await (await engine.starter.place_buy_order(held)).result()
    # A stop-loss whose first two placements are rate-limited (429): the fast path's one attempt, then
    # the step-by-step placement's first; its retry comes a second later.
    engine.paper.control.add_fault("http_429", route="place_order", count=2)
    stopped = await (await engine.starter.place_sl_sell_order(held.id, Decimal("2490"))).result()
    engine.paper.control.add_fault("reject", route="place_order", count=1, message="RMS: margin exceeds")
    with pytest.raises(WorkflowFailureError):
        await (await engine.starter.place_buy_order(rejected)).result()
    invalid = await engine.client.start_workflow(
        OrderWorkflow.run,
        OrderIntent(strategy_id=flat.id, user_id=flat.user_id, order_type=OrderType.SELL),
        id=f"metrics-invalid-{uuid.uuid4()}",
        task_queue=engine.settings.task_queue,
    )
    with pytest.raises(WorkflowFailureError):
        await invalid.result()
    assert (bought.outcome, stopped.outcome) == (Outcome.FILLED, Outcome.FILLED)

    ours = await scrape(observed.metrics_url)
    assert value(ours, "engine_orders_total", order_type="BUY", outcome="FILLED") == 1
    assert value(ours, "engine_orders_total", order_type="SL_SELL", outcome="FILLED") == 1
    assert value(ours, "engine_orders_total", order_type="BUY", outcome="REJECTED") == 1
    assert value(ours, "engine_orders_total", order_type="SELL", outcome="INVALID") == 1
    assert value(ours, "engine_orders_total") == 4
    # Accepted by the broker (it answered with an order id): all but the invalid one, which never left.
    assert value(ours, "engine_order_placement_seconds_count", order_type="BUY") == 2
    assert value(ours, "engine_order_placement_seconds_count", order_type="SL_SELL") == 1
    # Measured from the trigger, not from the last attempt: the 429's retry waited a second.
    assert value(ours, "engine_order_placement_seconds_bucket", order_type="SL_SELL", le="0.5") == 0
    assert value(ours, "engine_order_fill_seconds_count", order_type="BUY") == 1
    assert value(ours, "engine_order_fill_seconds_count", order_type="SL_SELL") == 1
    assert value(ours, "engine_activity_retries_total", activity_type="place_order_once") == 1
    failures = {"activity_type": "place_order_once", "error_type": "RateLimited"}
    assert value(ours, "engine_activity_failures_total", **failures) == 1
    fast_path = {"activity_type": "begin_and_place_order", "error_type": "RateLimited"}
    assert value(ours, "engine_activity_failures_total", **fast_path) == 1
    assert value(ours, "engine_alerts_total", level="WARNING") == 2  # the rejected BUY, the invalid SELL
    assert value(ours, "engine_alerts_total", level="CRITICAL") == 0
    assert observed.interceptor.tracked_orders() == 0  # nothing kept once the orders ended

    # The SDK's own, by task queue (the runtime serves every test of this module).
    sdk = await scrape(observed.sdk_metrics_url)
    queue = engine.settings.task_queue
    assert value(sdk, "temporal_workflow_completed_total", task_queue=queue, workflow_type="OrderWorkflow") == 2
    assert value(sdk, "temporal_workflow_failed_total", task_queue=queue, workflow_type="OrderWorkflow") == 2
    followed = value(sdk, "temporal_activity_execution_latency_count", task_queue=queue, activity_type="follow_order")
    # Only the stop-loss that began again step by step was followed by the heartbeating activity: the
    # BUYs ended (filled, rejected) within the fast path's watch of the order book.
    assert followed == 1
    # Four orders took the fast path; the rate-limited stop-loss then began again step by step.
    assert value(sdk, "temporal_local_activity_total", task_queue=queue, activity_type="begin_and_place_order") == 4
    assert value(sdk, "temporal_local_activity_total", task_queue=queue, activity_type="begin_order") == 1


async def test_worker_telemetry_serves_what_the_settings_ask_for() -> None:
    engine_port, sdk_port = free_port(), free_port()
    telemetry = worker_telemetry(
        Settings(metrics_host="127.0.0.1", metrics_port=engine_port, temporal_metrics_port=sdk_port)
    )
    try:
        async with httpx.AsyncClient() as http:
            engine_page = await http.get(f"http://127.0.0.1:{engine_port}/metrics")
            sdk_page = await http.get(f"http://127.0.0.1:{sdk_port}/metrics")
    finally:
        telemetry.close()
    off = worker_telemetry(Settings(metrics_port=0, temporal_metrics_port=0))

    assert engine_page.status_code == 200 and "# TYPE engine_orders_total counter" in engine_page.text
    assert sdk_page.status_code == 200
    assert [type(i) for i in telemetry.interceptors] == [LogContextInterceptor, MetricsInterceptor]
    assert off.endpoint is None and off.runtime.metric_meter is MetricMeter.noop


def test_a_busy_port_is_a_clear_error_and_the_worker_runs_without_that_endpoint(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(MetricsEndpointError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            serve_metrics(EngineMetrics().registry, "127.0.0.1", port)
        with pytest.raises(MetricsEndpointError, match=f"Temporal SDK metrics on 127.0.0.1:{port}"):
            temporal_runtime(f"127.0.0.1:{port}")
        with caplog.at_level(logging.ERROR, logger="apps.metrics"):
            settings = Settings(metrics_host="127.0.0.1", metrics_port=port, temporal_metrics_port=port)
            telemetry = worker_telemetry(settings)

    assert telemetry.endpoint is None and telemetry.runtime.metric_meter is MetricMeter.noop
    messages = [record.getMessage() for record in caplog.records]
    assert any("set ENGINE_METRICS_PORT to a free port" in message for message in messages)
    assert any("set ENGINE_TEMPORAL_METRICS_PORT to a free port" in message for message in messages)
