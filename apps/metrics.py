"""The worker's Prometheus metrics: the Temporal SDK's runtime metrics and the engine's own.

Two endpoints on every worker, `/metrics` on each:

- `ENGINE_METRICS_PORT` (9464): the engine's own (`engine_*`, from `prometheus_client`): orders by type and
  outcome, placement and fill latency, activity retries and failures, alerts by level;
- `ENGINE_TEMPORAL_METRICS_PORT` (9465): the Temporal SDK's (`temporal_*`): task slots, poll and
  schedule-to-start latencies, workflow and activity completions and failures, sticky cache.

The engine's metrics come from `MetricsInterceptor`, an activity interceptor that reads the inputs and
results of `begin_order`, `place_order_once`, `find_placed_order`, `follow_order`, `finish_order` and
`log_alert`: the order code stays as it is. Activities never replay, so nothing is counted twice when a
workflow is replayed from its history (a local activity re-run after a worker crash is counted again).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.runtime import (
    LogForwardingConfig,
    LoggingConfig,
    PrometheusConfig,
    Runtime,
    TelemetryConfig,
    TelemetryFilter,
)
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

from engine.errors import ORDER_IN_FLIGHT, VALIDATION_FAILED
from engine.logs import LogContextInterceptor
from engine.models import Alert, BeginOrder, BegunOrder, FinishOrder, FollowOrder, FollowResult, Outcome, Placement
from engine.settings import Settings

log = logging.getLogger(__name__)

# Trigger → accepted is tens of milliseconds on a quiet system, seconds when a retry waits out a timeout.
PLACEMENT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Accepted → filled: one order-book poll for a market order, minutes for a resting one.
FILL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# Orders whose begin and acceptance times are kept for the latency histograms; the oldest go first.
MAX_TRACKED_ORDERS = 10_000


class EngineMetrics:
    """The engine's own metrics, on a registry of their own (one per worker, or per test)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        self.orders = Counter(
            "engine_orders",
            "Orders that ended, by order type (BUY, SELL, SL_SELL) and outcome (FILLED, REJECTED, INVALID, …)",
            ["order_type", "outcome"],
            registry=self.registry,
        )
        self.placement_latency = Histogram(
            "engine_order_placement_seconds",
            "From the order's first step (validation, right after the trigger) to the broker accepting it",
            ["order_type"],
            buckets=PLACEMENT_BUCKETS,
            registry=self.registry,
        )
        self.fill_latency = Histogram(
            "engine_order_fill_seconds",
            "From the broker accepting an order to the engine seeing it COMPLETE",
            ["order_type"],
            buckets=FILL_BUCKETS,
            registry=self.registry,
        )
        self.activity_retries = Counter(
            "engine_activity_retries",
            "Activity attempts after the first, by activity type",
            ["activity_type"],
            registry=self.registry,
        )
        self.activity_failures = Counter(
            "engine_activity_failures",
            "Failed activity attempts, by activity type and error type (BrokerAmbiguous, RateLimited, …)",
            ["activity_type", "error_type"],
            registry=self.registry,
        )
        self.alerts = Counter("engine_alerts", "Alerts raised, by level", ["level"], registry=self.registry)


@dataclass
class _OrderTimes:
    order_type: str
    began: datetime
    accepted: datetime | None = None


def _now() -> datetime:
    return datetime.now(UTC)


def _seconds_since(start: datetime, until: datetime | None = None) -> float:
    return max(0.0, ((until or _now()) - start).total_seconds())


class MetricsInterceptor(Interceptor):
    """Feeds `EngineMetrics` from the order path's activities, by their inputs and results."""

    def __init__(self, metrics: EngineMetrics, max_tracked_orders: int = MAX_TRACKED_ORDERS):
        self.metrics = metrics
        self.max_tracked_orders = max_tracked_orders
        # Begin and place run as local activities of one workflow task, so on one worker: the times
        # needed between them stay here. A follower on another worker falls back to its own schedule time.
        self._orders: OrderedDict[str, _OrderTimes] = OrderedDict()

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _MetricsActivityInbound(next, self)

    def tracked_orders(self) -> int:
        return len(self._orders)

    def _track(self, key: str, times: _OrderTimes) -> None:
        self._orders[key] = times
        self._orders.move_to_end(key)
        while len(self._orders) > self.max_tracked_orders:
            self._orders.popitem(last=False)

    def record_success(self, activity_type: str, argument: Any, result: Any, info: activity.Info) -> None:
        metrics = self.metrics
        if activity_type == "begin_and_place_order" and isinstance(argument, BeginOrder):
            # The fast path: begun and placed in one step.
            order_type = argument.intent.order_type.value
            self._track(argument.order_key, _OrderTimes(order_type, info.scheduled_time))
            placed_at = result.placed_at if isinstance(result, BegunOrder) and result.placed_at else _now()
            metrics.placement_latency.labels(order_type).observe(_seconds_since(info.scheduled_time, placed_at))
            self._orders[argument.order_key].accepted = placed_at
            if isinstance(result, BegunOrder) and result.state is not None and result.state.status == "COMPLETE":
                metrics.fill_latency.labels(order_type).observe(_seconds_since(placed_at))  # filled at once
        elif activity_type == "begin_order" and isinstance(argument, BeginOrder):
            if argument.order_key not in self._orders:
                self._track(argument.order_key, _OrderTimes(argument.intent.order_type.value, info.scheduled_time))
        elif activity_type in ("place_order_once", "find_placed_order") and isinstance(result, Placement):
            ticket = getattr(argument, "ticket", argument)  # PlaceOrder holds the ticket; find_placed_order takes it
            times = self._orders.get(ticket.order_key)
            if times is None:  # begun on another worker: measured from this placement's first schedule
                times = _OrderTimes(ticket.transaction_type, info.scheduled_time)
                self._track(ticket.order_key, times)
            metrics.placement_latency.labels(times.order_type).observe(_seconds_since(times.began))
            times.accepted = _now()
        elif activity_type == "follow_order" and isinstance(argument, FollowOrder) and isinstance(result, FollowResult):
            if result.state.status != "COMPLETE":
                return
            times = self._orders.get(argument.ticket.order_key)
            accepted = times.accepted if times is not None and times.accepted is not None else info.scheduled_time
            order_type = times.order_type if times is not None else argument.ticket.transaction_type
            metrics.fill_latency.labels(order_type).observe(_seconds_since(accepted))
        elif activity_type == "finish_order" and isinstance(argument, FinishOrder):
            metrics.orders.labels(argument.order_type.value, argument.outcome.value).inc()
            self._orders.pop(argument.order_key, None)
        elif activity_type == "log_alert" and isinstance(argument, Alert):
            metrics.alerts.labels(argument.level.value).inc()

    def record_failure(self, activity_type: str, argument: Any, error: Exception) -> None:
        error_type = (error.type if isinstance(error, ApplicationError) else None) or type(error).__name__
        self.metrics.activity_failures.labels(activity_type, error_type).inc()
        refused = isinstance(error, ApplicationError) and error.type in (VALIDATION_FAILED, ORDER_IN_FLIGHT)
        if activity_type == "begin_and_place_order" and not refused and isinstance(argument, BeginOrder):
            # Retried step by step from here; the order's time started with this attempt all the same.
            if argument.order_key not in self._orders:
                self._track(argument.order_key, _OrderTimes(argument.intent.order_type.value, _now()))
        if activity_type in ("begin_order", "begin_and_place_order") and refused and isinstance(argument, BeginOrder):
            # Validation refused it: the workflow ends INVALID without a finish_order to count it.
            self.metrics.orders.labels(argument.intent.order_type.value, Outcome.INVALID.value).inc()


class _MetricsActivityInbound(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, owner: MetricsInterceptor):
        super().__init__(next)
        self.owner = owner

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        argument = input.args[0] if input.args else None
        if info.attempt > 1:
            self.owner.metrics.activity_retries.labels(info.activity_type).inc()
        try:
            result = await self.next.execute_activity(input)
        except Exception as error:  # a cancel (BaseException) is no failure
            self._safely(self.owner.record_failure, info.activity_type, argument, error)
            raise
        self._safely(self.owner.record_success, info.activity_type, argument, result, info)
        return result

    @staticmethod
    def _safely(record: Any, *args: Any) -> None:
        # A metric must never fail an order.
        try:
            record(*args)
        except Exception:
            log.exception("recording metrics failed")


class MetricsEndpointError(RuntimeError):
    """A metrics endpoint could not listen. Not retryable as is: free the port or pick another."""


def temporal_runtime(prometheus_address: str | None) -> Runtime:
    """A Temporal runtime serving the SDK's metrics for Prometheus at `host:port` (None: no metrics),
    its core's log lines forwarded to Python logging (logger `temporalio.core`), so one format holds.

    Create it before the client, and connect the client with it (`engine.temporal.connect(runtime=…)`)."""
    telemetry = TelemetryConfig(
        metrics=PrometheusConfig(bind_address=prometheus_address) if prometheus_address else None,
        logging=LoggingConfig(
            filter=TelemetryFilter(core_level="WARN", other_level="ERROR"),
            forwarding=LogForwardingConfig(logger=logging.getLogger("temporalio.core")),
        ),
    )
    try:
        return Runtime(telemetry=telemetry)
    except ValueError as error:  # the core's exporter could not bind
        raise MetricsEndpointError(f"cannot serve Temporal SDK metrics on {prometheus_address}: {error}") from None


@dataclass
class MetricsEndpoint:
    """`/metrics` for a `prometheus_client` registry, served on a thread of its own."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> MetricsEndpoint:
    """Serve `registry` at http://host:port/metrics (port 0: a free port, see `.port`)."""
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as error:
        raise MetricsEndpointError(f"cannot serve metrics on {host}:{port}: {error}") from error
    return MetricsEndpoint(server, thread)


@dataclass
class WorkerTelemetry:
    """What `python worker.py` runs with: the runtime for its client, its interceptors, its endpoint."""

    runtime: Runtime
    metrics: EngineMetrics
    interceptors: Sequence[Interceptor]
    endpoint: MetricsEndpoint | None = None

    def close(self) -> None:
        if self.endpoint is not None:
            self.endpoint.close()
            self.endpoint = None


def worker_telemetry(settings: Settings) -> WorkerTelemetry:
    """Start the worker's metrics endpoints as the settings say (a port of 0 turns one off).

    A busy port is logged as an error and that endpoint left out: the worker still runs orders (a
    second worker on the same host needs ports of its own to be scraped)."""
    host = settings.metrics_host
    runtime: Runtime | None = None
    if settings.temporal_metrics_port:
        address = f"{host}:{settings.temporal_metrics_port}"
        try:
            runtime = temporal_runtime(address)
            log.info("Temporal SDK metrics on http://%s/metrics", address)
        except MetricsEndpointError as busy:
            log.error("%s; running without them: set ENGINE_TEMPORAL_METRICS_PORT to a free port, or 0", busy)
    metrics = EngineMetrics()
    endpoint: MetricsEndpoint | None = None
    if settings.metrics_port:
        try:
            endpoint = serve_metrics(metrics.registry, host, settings.metrics_port)
            log.info("engine metrics on http://%s:%d/metrics", host, endpoint.port)
        except MetricsEndpointError as busy:
            log.error("%s; running without them: set ENGINE_METRICS_PORT to a free port, or 0", busy)
    interceptors = [LogContextInterceptor(), MetricsInterceptor(metrics)]
    return WorkerTelemetry(runtime or temporal_runtime(None), metrics, interceptors, endpoint)
