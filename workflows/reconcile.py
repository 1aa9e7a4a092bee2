"""ReconcileWorkflow: one broker account's store brought to the broker's books, and a report.

Started by the account's Schedule (before the open, every few minutes in market hours, after the
close) and on demand (`engine reconcile`, the API). The work is one activity; the workflow retries
it, and alerts when the report holds a repair or something that needs a person.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.alerts import AlertActivities
    from activities.reconcile import ReconcileActivities
    from engine import errors
    from engine.models import Alert, AlertLevel
    from engine.reconcile import ReconcileReport, ReconcileRequest, Verdict

from workflows.emergency_stop import deliver_alert_later

RECONCILE_TIMEOUT = timedelta(minutes=5)
RECONCILE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=2),
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=5,
    non_retryable_error_types=[errors.SESSION_EXPIRED],
)


def reconcile_workflow_id(account_id: int, suffix: str) -> str:
    return f"reconcile:{account_id}:{suffix}"


@workflow.defn(name="ReconcileWorkflow")
class ReconcileWorkflow:
    @workflow.run
    async def run(self, request: ReconcileRequest) -> ReconcileReport:
        report = await workflow.execute_activity_method(
            ReconcileActivities.reconcile_account,
            request,
            start_to_close_timeout=RECONCILE_TIMEOUT,
            heartbeat_timeout=timedelta(seconds=60),
            retry_policy=RECONCILE_RETRY,
        )
        workflow.set_current_details(report.summary())
        if report.worth_an_alert and not report.dry_run:
            await self._alert(report)
        return report

    async def _alert(self, report: ReconcileReport) -> None:
        needs_person = [line.message for line in report.new_needs_person]
        repaired = [line.message for line in report.lines if line.verdict is Verdict.REPAIRED]
        alert = Alert(
            level=AlertLevel.CRITICAL if needs_person else AlertLevel.WARNING,
            title=f"reconcile of account {report.account_id}: {report.repaired} repaired, "
            f"{len(report.new_needs_person)} new for a person ({report.needs_person} in all)",
            message="; ".join(needs_person + repaired)[:4000],
            workflow_id=workflow.info().workflow_id,
            created_at=workflow.now(),
        )
        has_sinks = await workflow.execute_local_activity_method(
            AlertActivities.log_alert, alert, start_to_close_timeout=timedelta(seconds=5)
        )
        if has_sinks:
            await deliver_alert_later(alert)
