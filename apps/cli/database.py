"""`engine db …`: the database's schema: which revision it is at, and bringing it to the newest."""

from __future__ import annotations

import argparse

from apps.cli.common import OK, Cli


def add_commands(groups: argparse._SubParsersAction) -> None:
    database = groups.add_parser("db", help="the database's schema (migrations)")
    database_commands = database.add_subparsers(dest="action", required=True, metavar="ACTION")
    status = database_commands.add_parser("status", help="the schema revision of DATABASE_URL, and the newest")
    status.set_defaults(run=db_status)
    upgrade = database_commands.add_parser("upgrade", help="migrate DATABASE_URL to the newest revision")
    upgrade.set_defaults(run=db_upgrade)


async def db_status(cli: Cli, args: argparse.Namespace) -> int:
    current, head = await cli.store.schema_revision()
    state = "up to date" if current == head else "behind: run `engine db upgrade`"
    cli.say(f"schema revision {current or 'none (never migrated)'}; newest {head}; {state}")
    cli.data({"revision": current, "head": head, "up_to_date": current == head})
    return OK


async def db_upgrade(cli: Cli, args: argparse.Namespace) -> int:
    before, head = await cli.store.schema_revision()
    await cli.store.migrate()
    cli.say(f"schema revision {before or 'none'} → {head}" if before != head else f"already at {head}")
    cli.data({"revision": head, "previous": before})
    return OK
