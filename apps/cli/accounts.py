"""`engine users …` and `engine accounts …`: API users and their broker accounts."""

from __future__ import annotations

import argparse
import getpass
from datetime import UTC, datetime
from typing import Any

from rich.table import Table

from apps.cli.common import OK, Cli, pairs_table, positive_int
from engine.market_hours import IST
from starter.deps import TemporalUnavailable, temporal_call
from starter.logins import AccountLogins
from starter.schedules import AccountReconcileSchedules, reconcile_schedule_id
from store.records import BrokerAccountRecord


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
    listing = account_commands.add_parser("list", help="broker accounts: logged in or not, since, until")
    listing.add_argument("--user", type=positive_int, help="only this user's accounts")
    listing.set_defaults(run=accounts_list)
    login = account_commands.add_parser(
        "login", help="the day's Kite login: prints the URL to open, or exchanges --request-token"
    )
    login.add_argument("account", type=positive_int)
    login.add_argument("--request-token", help="the request_token of Kite's redirect, exchanged without a browser")
    login.set_defaults(run=accounts_login)
    logout = account_commands.add_parser("logout", help="end the day's session at Kite and forget the token")
    logout.add_argument("account", type=positive_int)
    logout.set_defaults(run=accounts_logout)


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


def account_view(account: BrokerAccountRecord, now: datetime) -> dict[str, Any]:
    return {
        "id": account.id, "user_id": account.user_id, "broker": account.broker,
        "logged_in": account.logged_in_at(now), "broker_user_id": account.broker_user_id,
        "since": account.token_issued_at.isoformat() if account.token_issued_at else None,
        "until": account.token_expires_at.isoformat() if account.token_expires_at else None,
        "logged_out_reason": None if account.logged_in_at(now) else account.logged_out_reason,
    }


async def accounts_list(cli: Cli, args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    views = [account_view(account, now) for account in await cli.store.list_broker_accounts(args.user)]
    table = Table(title="Broker accounts")
    for column in ("id", "user", "broker", "logged in", "Kite user", "since (IST)", "until (IST)", "why not"):
        table.add_column(column)
    for view in views:
        table.add_row(
            str(view["id"]), str(view["user_id"]), view["broker"], "yes" if view["logged_in"] else "no",
            view["broker_user_id"] or "-", _ist(view["since"]), _ist(view["until"]),
            view["logged_out_reason"] or ("" if view["logged_in"] else "never logged in"),
        )
    cli.show(table)
    cli.data(views)
    return OK


async def accounts_login(cli: Cli, args: argparse.Namespace) -> int:
    logins = AccountLogins(cli.store, cli.services.settings)
    if args.request_token:
        account = await logins.complete(args.account, args.request_token, nonce=None)
        cli.say(f"broker account {account.id} is logged in to Kite as {account.broker_user_id} "
                f"until {_ist(account.token_expires_at.isoformat() if account.token_expires_at else None)} IST")
        cli.data(account_view(account, datetime.now(UTC)))
        return OK
    url = await logins.login_url(args.account)
    cli.say(f"open this in a browser and log in to Kite (good for 10 minutes); Kite then sends you to the "
            f"redirect URL registered for the app, which logs broker account {args.account} in:")
    if not cli.json_output:
        cli.console.print(url, markup=False, highlight=False, soft_wrap=True)
    cli.data({"account_id": args.account, "login_url": url})
    return OK


async def accounts_logout(cli: Cli, args: argparse.Namespace) -> int:
    account = await AccountLogins(cli.store, cli.services.settings).logout(args.account)
    cli.say(f"broker account {account.id} is logged out: its session ended at Kite and its token is forgotten")
    cli.data(account_view(account, datetime.now(UTC)))
    return OK


def _ist(moment: str | None) -> str:
    if moment is None:
        return "-"
    return datetime.fromisoformat(moment).astimezone(IST).strftime("%Y-%m-%d %H:%M")
