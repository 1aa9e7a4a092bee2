"""TwinWatchWorkflow: an order that was sent more than once keeps its tag watched after it ended.

A broker may act on a request after every window the placement waited out: then a second order carries
the same tag. The order workflow cancels an open twin as soon as it sees it; after the order ends this
workflow looks at the order book every few seconds until `until`, and for each twin: cancels it while it
is open, follows it to its end, applies its fill to the strategy (the store tells the truth), and, if it
filled anything, flags the strategy with both order ids and raises a CRITICAL alert.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.alerts import AlertActivities
    from activities.order import OrderActivities
    from brokers.base import is_terminal
    from engine.models import Alert, AlertLevel, BrokerOrderState, FinishTwin, SweepTwins, WatchTwins

from workflows.emergency_stop import deliver_alert_later
from workflows.order import BROKER_CALL_RETRY, ORDER_QUEUE_ALLOWANCE, STORE_RETRY

SWEEP_INTERVAL = timedelta(seconds=2)
# A twin still open this long after the watch should have ended: a person is asked, the watch stops.
OPEN_TWIN_GRACE = timedelta(minutes=10)


@workflow.defn(name="TwinWatchWorkflow")
class TwinWatchWorkflow:
    @workflow.run
    async def run(self, request: WatchTwins) -> list[str]:
        """The broker order ids of the twins found, each settled."""
        settled: set[str] = set()
        sweep = SweepTwins(ticket=request.ticket, order_key=request.order_key, broker_order_id=request.broker_order_id)
        timeout = timedelta(seconds=request.ticket.policy.broker_timeout_seconds + 5)
        while True:
            twins: list[BrokerOrderState] = await workflow.execute_activity_method(
                OrderActivities.sweep_twins, sweep, start_to_close_timeout=timeout * 2 + ORDER_QUEUE_ALLOWANCE,
                retry_policy=BROKER_CALL_RETRY,
            )
            for twin in twins:
                if twin.order_id in settled or not is_terminal(twin.status):
                    continue
                message = await workflow.execute_local_activity_method(
                    OrderActivities.finish_twin,
                    FinishTwin(
                        ticket=request.ticket, order_key=request.order_key,
                        broker_order_id=request.broker_order_id, twin=twin,
                    ),
                    start_to_close_timeout=timedelta(seconds=10),
                    retry_policy=STORE_RETRY,
                )
                settled.add(twin.order_id)
                if message is not None:
                    await self._alert(request, AlertLevel.CRITICAL, f"{request.order_type} order doubled", message)
                else:
                    await self._alert(
                        request, AlertLevel.WARNING, f"{request.order_type} twin cancelled",
                        f"twin broker order {twin.order_id} of {request.broker_order_id} ended {twin.status} "
                        "with nothing filled",
                    )
            open_twins = [twin.order_id for twin in twins if twin.order_id not in settled]
            now = workflow.now()
            if now >= request.until and not open_twins:
                return sorted(settled)
            if now >= request.until + OPEN_TWIN_GRACE:
                await self._alert(
                    request, AlertLevel.CRITICAL, "twin order still open",
                    f"twin broker orders {', '.join(open_twins)} of {request.broker_order_id} are still open "
                    "after every cancel: cancel them at the broker by hand",
                )
                return sorted(settled)
            await workflow.sleep(SWEEP_INTERVAL)

    async def _alert(self, request: WatchTwins, level: AlertLevel, title: str, message: str) -> None:
        alert = Alert(
            level=level, title=title, message=message, strategy_id=request.strategy_id, user_id=request.user_id,
            workflow_id=workflow.info().workflow_id, created_at=workflow.now(),
        )
        has_sinks = await workflow.execute_local_activity_method(
            AlertActivities.log_alert, alert, start_to_close_timeout=timedelta(seconds=5)
        )
        if has_sinks:
            await deliver_alert_later(alert)
