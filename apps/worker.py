"""The worker: runs order workflows and their activities, configured from the environment.

    python worker.py        (or: python -m apps.worker)

Workers are stateless: run as many as you like against one Temporal cluster and one database.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from temporalio.client import Client
from temporalio.worker import Interceptor, Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.alerts import AlertActivities
from activities.control import AlertDeliveryActivities, ControlActivities, alert_sinks_from_settings
from activities.order import BrokerFactory, OrderActivities
from activities.rate_limit import StorePacer
from activities.reconcile import ReconcileActivities
from apps.metrics import worker_telemetry
from brokers.factory import KiteBrokerFactory
from engine.events import EventBus
from engine.logs import configure_logging
from engine.market_hours import MarketCalendar, parse_holidays
from engine.settings import Settings
from engine.temporal import connect
from starter.orders import OrderStarter
from starter.schedules import ScheduledOrderActivities
from store import Store
from workflows.emergency_stop import AlertDeliveryWorkflow, EmergencyStopWorkflow
from workflows.order import OrderWorkflow
from workflows.reconcile import ReconcileWorkflow
from workflows.scheduled import ScheduledOrderWorkflow
from workflows.twin_watch import TwinWatchWorkflow

log = logging.getLogger("engine.worker")

WORKFLOWS = [
    OrderWorkflow, EmergencyStopWorkflow, AlertDeliveryWorkflow, ScheduledOrderWorkflow, ReconcileWorkflow,
    TwinWatchWorkflow,
]


@dataclass
class WorkerParts:
    order_activities: OrderActivities
    alert_activities: AlertActivities
    control_activities: ControlActivities
    alert_delivery: AlertDeliveryActivities
    scheduled: ScheduledOrderActivities
    reconcile: ReconcileActivities | None = None

    def activities(self) -> list:
        orders, alerts, control = self.order_activities, self.alert_activities, self.control_activities
        return [
            orders.begin_and_place_order,
            orders.begin_order,
            orders.place_order_once,
            orders.find_placed_order,
            orders.follow_order,
            orders.cancel_at_broker,
            orders.finish_order,
            orders.sweep_twins,
            orders.finish_twin,
            orders.wait_for_login,
            alerts.log_alert,
            control.stop_strategies,
            control.pause_schedules,
            control.cancel_orders,
            control.wait_for_orders,
            control.square_off,
            self.alert_delivery.configured_sinks,
            self.alert_delivery.deliver_alert,
            self.scheduled.start_scheduled_order,
            *self.reconcile_activities(),
        ]

    def reconcile_activities(self) -> list:
        if self.reconcile is None:
            return []
        return [self.reconcile.reconcile_account, self.reconcile.reconcile_accounts]


def build_worker(
    client: Client,
    store: Store,
    settings: Settings,
    *,
    brokers: BrokerFactory | None = None,
    events: EventBus | None = None,
    task_queue: str | None = None,
    interceptors: Sequence[Interceptor] = (),
) -> tuple[Worker, WorkerParts]:
    parts = WorkerParts(
        order_activities=OrderActivities(
            store,
            brokers or KiteBrokerFactory(settings),
            settings,
            MarketCalendar(parse_holidays(settings.nse_holidays)),
            events,
            # Kite's per-account order limit, kept across every worker sharing this database.
            StorePacer(store, settings.broker_orders_per_second, request_seconds=settings.broker_http_timeout_seconds),
        ),
        alert_activities=AlertActivities(has_other_sinks=bool(alert_sinks_from_settings(settings))),
        control_activities=ControlActivities(store, client, settings),
        alert_delivery=AlertDeliveryActivities(alert_sinks_from_settings(settings)),
        scheduled=ScheduledOrderActivities(OrderStarter(client, store, settings)),
    )
    # Reconciliation reads the broker like the order path and cancels through the same per-account pacer.
    parts.reconcile = ReconcileActivities(
        store, parts.order_activities.brokers, client, settings, parts.order_activities.pacer
    )
    worker = Worker(
        client,
        task_queue=task_queue or settings.task_queue,
        workflows=WORKFLOWS,
        activities=parts.activities(),
        interceptors=interceptors,
        **worker_tuning(settings),
    )
    return worker, parts


def worker_tuning(settings: Settings) -> dict[str, Any]:
    """The worker's slots and runner (the benchmark's floor worker uses the same)."""
    return {
        # A burst beyond these waits in Temporal's queue, where a first workflow task has no timeout,
        # instead of on this event loop, where it would (ENGINE_WORKER_WORKFLOW_TASK_SLOTS).
        "max_concurrent_workflow_tasks": settings.worker_workflow_task_slots,
        "max_concurrent_local_activities": 2 * settings.worker_workflow_task_slots,
        # Following an order is an async activity that mostly waits: thousands fit in one worker.
        "max_concurrent_activities": 2000,
        "max_cached_workflows": settings.worker_cached_workflows,
        # The sandbox still forbids non-deterministic calls; importing every module once instead of per
        # workflow instance saves milliseconds of CPU on every order.
        "workflow_runner": SandboxedWorkflowRunner(
            restrictions=SandboxRestrictions.default.with_passthrough_all_modules()
        ),
    }


async def main() -> None:
    settings = Settings.from_environment()
    configure_logging(settings.log_format, settings.log_level)
    telemetry = worker_telemetry(settings)  # the runtime comes before the client that uses it
    store = await Store.connect(
        settings.database_url, settings.engine_secret_key, pool_size=settings.database_pool_size
    )
    client = await connect(runtime=telemetry.runtime)
    worker, _ = build_worker(client, store, settings, interceptors=telemetry.interceptors)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("worker polling task queue %r", settings.task_queue)
    async with worker:
        await stop.wait()
    await store.close()
    telemetry.close()


if __name__ == "__main__":
    asyncio.run(main())
