"""Reconcile on demand: start an account's ReconcileWorkflow and wait for its report.

Used by `engine reconcile [--account N] [--dry-run]` and by the API; the schedules that run it
through the day are in `starter.schedules` (AccountReconcileSchedules).
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from rich.table import Table
from temporalio.client import Client, WorkflowFailureError

from engine.reconcile import ReconcileReport, ReconcileRequest, Verdict
from engine.settings import Settings
from store import Store
from workflows.reconcile import ReconcileWorkflow, reconcile_workflow_id

ON_DEMAND_TIMEOUT = timedelta(minutes=10)


class ReconcileFailed(RuntimeError):
    """The reconcile run failed (the broker unreachable, the session expired); the cause says why."""


async def reconcile_account(
    client: Client, settings: Settings, account_id: int, *, dry_run: bool = False, requested_by: str = "operator"
) -> ReconcileReport:
    """Run one reconcile of the account now and return its report."""
    request = ReconcileRequest(account_id=account_id, dry_run=dry_run, requested_by=requested_by[:64])
    try:
        return await client.execute_workflow(
            ReconcileWorkflow.run,
            request,
            id=reconcile_workflow_id(account_id, uuid.uuid4().hex[:12]),
            task_queue=settings.task_queue,
            execution_timeout=ON_DEMAND_TIMEOUT,
            static_summary=f"reconcile broker account {account_id}" + (" (dry run)" if dry_run else ""),
        )
    except WorkflowFailureError as failed:
        cause: BaseException | None = failed.cause
        while getattr(cause, "cause", None) is not None:
            cause = getattr(cause, "cause")  # noqa: B009 (ActivityError wraps the ApplicationError)
        raise ReconcileFailed(f"reconcile of account {account_id} failed: {cause or failed}") from None


async def reconcile_accounts(
    client: Client, settings: Settings, store: Store, account_id: int | None = None, *,
    dry_run: bool = False, requested_by: str = "operator",
) -> list[ReconcileReport]:
    """One account, or every account one after the other."""
    accounts = [account_id] if account_id is not None else await store.broker_account_ids()
    return [
        await reconcile_account(client, settings, account, dry_run=dry_run, requested_by=requested_by)
        for account in accounts
    ]


VERDICT_STYLE = {Verdict.MATCHED: "green", Verdict.REPAIRED: "yellow", Verdict.NEEDS_PERSON: "bold red",
                 Verdict.LISTED: "dim"}


def report_table(report: ReconcileReport) -> Table:
    """The report as the CLI shows it: people's lines first, then repairs, listings and matches."""
    order = [Verdict.NEEDS_PERSON, Verdict.REPAIRED, Verdict.LISTED, Verdict.MATCHED]
    table = Table(title=report.summary(), title_justify="left")
    for column in ("verdict", "finding", "strategy", "broker order", "what"):
        table.add_column(column, overflow="fold")
    for line in sorted(report.lines, key=lambda line: order.index(line.verdict)):
        style = VERDICT_STYLE[line.verdict]
        table.add_row(f"[{style}]{line.verdict.value}[/{style}]", line.finding.value,
                      str(line.strategy_id or ""), line.broker_order_id or "", line.message)
    return table
