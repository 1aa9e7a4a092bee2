"""Reconcile on demand: start an account's ReconcileWorkflow and wait for its report.

Used by `engine reconcile [--account N] [--dry-run]` and by the API; the schedules that run it
through the day are in `starter.schedules` (AccountReconcileSchedules).
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from temporalio.client import Client, WorkflowFailureError

from engine.reconcile import ReconcileReport, ReconcileRequest
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
