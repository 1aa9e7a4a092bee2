"""`engine interventions …` and `engine emergency-stop`: what needs a person, and stopping everything."""

from __future__ import annotations

import argparse

from rich.table import Table

from apps.api.schemas import EmergencyStopOut, InterventionOut, StrategyOut
from apps.cli.common import OK, OPERATOR, Cli, positive_int, text
from starter.control import start_emergency_stop
from starter.deps import temporal_call


def add_commands(groups: argparse._SubParsersAction) -> None:
    interventions = groups.add_parser("interventions", help="strategies waiting for a person")
    intervention_commands = interventions.add_subparsers(dest="action", required=True, metavar="ACTION")
    pending = intervention_commands.add_parser("list")
    pending.add_argument("--user", type=positive_int)
    pending.set_defaults(run=interventions_list)
    clear = intervention_commands.add_parser("clear")
    clear.add_argument("strategy_id", type=positive_int)
    clear.set_defaults(run=interventions_clear)

    emergency = groups.add_parser("emergency-stop", help="stop a user's (or everyone's) strategies now")
    scope = emergency.add_mutually_exclusive_group(required=True)
    scope.add_argument("--user", type=positive_int)
    scope.add_argument("--all", action="store_true", help="every user")
    emergency.add_argument("--square-off", action="store_true", help="also sell open positions at market")
    emergency.add_argument("--reason", default="emergency stop by an operator")
    emergency.set_defaults(run=emergency_stop)


async def interventions_list(cli: Cli, args: argparse.Namespace) -> int:
    pending = await cli.store.list_interventions(args.user)
    table = Table(title="Strategies needing a person")
    for column in ("strategy", "user", "name", "symbol", "open", "since", "reason", "last error"):
        table.add_column(column)
    for item in pending:
        table.add_row(
            str(item.id), str(item.user_id), item.name, item.symbol, str(item.open_quantity),
            text(item.intervention_at), item.intervention_reason or "", item.last_error or "",
        )
    cli.show(table)
    cli.data([InterventionOut.of(item) for item in pending])
    return OK


async def interventions_clear(cli: Cli, args: argparse.Namespace) -> int:
    strategy = await cli.store.clear_intervention(args.strategy_id, OPERATOR)
    cli.say(f"intervention on strategy {strategy.id} cleared; start it again when ready")
    cli.data(StrategyOut.of(strategy))
    return OK


async def emergency_stop(cli: Cli, args: argparse.Namespace) -> int:
    if args.user is not None:
        await cli.store.get_user(args.user)
    workflow_id = await temporal_call(
        "start the emergency stop",
        start_emergency_stop(
            cli.services.client, cli.services.settings, user_id=None if args.all else args.user,
            square_off=args.square_off, reason=args.reason, requested_by=OPERATOR,
        ),
        timeout=None,
    )
    scope = "every user's" if args.all else f"user {args.user}'s"
    cli.say(f"emergency stop of {scope} strategies started: [bold]{workflow_id}[/bold]")
    cli.data(EmergencyStopOut(workflow_id=workflow_id, message=f"emergency stop of {scope} strategies started"))
    return OK
