"""`engine reconcile`: bring the store to the broker's books now, or put the account's Schedule in place."""

from __future__ import annotations

import argparse

from apps.cli.common import FAILED, OK, OPERATOR, Cli, positive_int
from starter.deps import temporal_call
from starter.reconcile import ReconcileFailed, reconcile_accounts, report_table
from starter.schedules import AccountReconcileSchedules, reconcile_schedule_id


def add_commands(groups: argparse._SubParsersAction) -> None:
    command = groups.add_parser("reconcile", help="bring the store to the broker's books now (docs/control.md)")
    command.add_argument("--account", type=positive_int, help="one broker account (default: every account)")
    command.add_argument("--dry-run", action="store_true", help="report what would be repaired; change nothing")
    command.add_argument("--schedule", action="store_true",
                         help="create or update the account's reconcile Schedule instead of running it now")
    command.set_defaults(run=reconcile)


async def reconcile(cli: Cli, args: argparse.Namespace) -> int:
    services = cli.services
    if args.account is not None:
        await cli.store.get_broker_account(args.account)
    if args.schedule:
        accounts = [args.account] if args.account is not None else await cli.store.broker_account_ids()
        schedules = AccountReconcileSchedules(services.client, services.settings)
        for account in accounts:
            await temporal_call("create the reconcile schedule", schedules.sync(account))
            cli.say(f"schedule [bold]{reconcile_schedule_id(account)}[/bold] in place for account {account}")
        cli.data({"schedules": [reconcile_schedule_id(account) for account in accounts]})
        return OK
    try:
        reports = await temporal_call(
            "run the reconcile",
            reconcile_accounts(services.client, services.settings, cli.store, args.account,
                               dry_run=args.dry_run, requested_by=OPERATOR),
            timeout=None,
        )
    except ReconcileFailed as failed:
        cli.say(f"[red]error:[/red] {failed}")
        cli.data({"error": str(failed), "exit_code": FAILED})
        return FAILED
    for report in reports:
        cli.show(report_table(report))
    if not reports:
        cli.say("no broker accounts to reconcile")
    cli.data(list(reports))
    return OK
