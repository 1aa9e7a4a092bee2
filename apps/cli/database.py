"""`engine db …`: the database's schema: which revision it is at, and bringing it to the newest.

These commands need only DATABASE_URL: no secret key and no Temporal, so a one-shot migration job gets
nothing more than the database's address (docker-compose.yml's `migrate`)."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable

from rich.console import Console
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from apps.cli.common import OK, print_json
from engine.settings import Settings
from store import migrate
from store.db import create_engine
from store.errors import StoreUnavailable

SchemaCommand = Callable[[AsyncEngine, Console, bool], Awaitable[int]]


def add_commands(groups: argparse._SubParsersAction) -> None:
    database = groups.add_parser("db", help="the database's schema (migrations); needs only DATABASE_URL")
    database_commands = database.add_subparsers(dest="action", required=True, metavar="ACTION")
    status = database_commands.add_parser("status", help="the schema revision of DATABASE_URL, and the newest")
    status.set_defaults(schema_command=db_status)
    upgrade = database_commands.add_parser("upgrade", help="migrate DATABASE_URL to the newest revision")
    upgrade.set_defaults(schema_command=db_upgrade)


async def run_schema_command(args: argparse.Namespace, console: Console, json_output: bool) -> int:
    engine = create_engine(Settings.from_environment().database_url)
    try:
        command: SchemaCommand = args.schema_command
        return await command(engine, console, json_output)
    except (DBAPIError, OSError) as failed:
        raise StoreUnavailable(f"database unavailable: {type(failed).__name__}") from failed
    finally:
        await engine.dispose()


async def db_status(engine: AsyncEngine, console: Console, json_output: bool) -> int:
    current, head = await migrate.current_revision(engine), migrate.head_revision()
    if json_output:
        print_json(console, {"revision": current, "head": head, "up_to_date": current == head})
    else:
        state = "up to date" if current == head else "behind: run `engine db upgrade`"
        console.print(f"schema revision {current or 'none (never migrated)'}; newest {head}; {state}")
    return OK


async def db_upgrade(engine: AsyncEngine, console: Console, json_output: bool) -> int:
    before, head = await migrate.current_revision(engine), migrate.head_revision()
    await migrate.upgrade(engine, "head")
    if json_output:
        print_json(console, {"revision": head, "previous": before})
    else:
        console.print(f"schema revision {before or 'none'} → {head}" if before != head else f"already at {head}")
    return OK
