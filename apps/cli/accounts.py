"""`engine users …` and `engine accounts …`: API users and their broker accounts."""

from __future__ import annotations

import argparse
import getpass

from apps.cli.common import OK, Cli, pairs_table, positive_int
from starter.deps import TemporalUnavailable, temporal_call
from starter.schedules import AccountReconcileSchedules, reconcile_schedule_id


def add_commands(groups: argparse._SubParsersAction) -> None:
    users = groups.add_parser("users", help="API users")
    user_commands = users.add_subparsers(dest="action", required=True, metavar="ACTION")
    new_user = user_commands.add_parser("create", help="a user and his API key (shown once)")
    new_user.add_argument("name")
    new_user.add_argument("--admin", action="store_true")
    new_user.set_defaults(run=users_create)

    accounts = groups.add_parser("accounts", help="broker accounts")
    account_commands = accounts.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = account_commands.add_parser("add", help="a user's broker account; secrets are encrypted at rest")
    add.add_argument("--user", type=positive_int, required=True)
    add.add_argument("--broker", default="kite")
    add.add_argument("--api-key", required=True)
    add.add_argument("--api-secret", help="asked for when left out (keeps it out of the shell history)")
    add.add_argument("--access-token", help="today's token, if you have one")
    add.set_defaults(run=accounts_add)


async def users_create(cli: Cli, args: argparse.Namespace) -> int:
    user, api_key = await cli.store.create_user(args.name, is_admin=args.admin)
    cli.show(pairs_table("User created", [("id", user.id), ("name", user.username),
                                                    ("admin", "yes" if user.is_admin else "no")]))
    cli.say("API key (shown only now; keep it secret):")
    if not cli.json_output:
        cli.console.print(api_key, markup=False, highlight=False, soft_wrap=True)
    cli.data({"id": user.id, "name": user.username, "admin": user.is_admin, "api_key": api_key})
    return OK


async def accounts_add(cli: Cli, args: argparse.Namespace) -> int:
    api_secret = args.api_secret or getpass.getpass("API secret: ")
    account = await cli.store.add_broker_account(
        args.user, broker=args.broker, api_key=args.api_key, api_secret=api_secret,
        access_token=args.access_token,
    )
    token = "with today's access token" if account.has_access_token else "without an access token yet"
    cli.say(f"broker account {account.id} ({account.broker}) added for user {account.user_id}, {token}")
    schedules = AccountReconcileSchedules(cli.services.client, cli.services.settings)
    try:
        await temporal_call("create the reconcile schedule", schedules.sync(account.id))
        reconciled = True
        cli.say(f"its reconcile schedule {reconcile_schedule_id(account.id)} is in place")
    except TemporalUnavailable as unavailable:
        reconciled = False
        cli.say(f"[yellow]{unavailable}; create its reconcile schedule later: "
                f"engine reconcile --account {account.id} --schedule[/yellow]")
    cli.data({"id": account.id, "user_id": account.user_id, "broker": account.broker,
              "has_access_token": account.has_access_token, "reconcile_scheduled": reconciled})
    return OK
