"""`engine`: the operator's command line. It talks to Temporal and the database directly (not through
the HTTP API), configured from the environment like the worker (DATABASE_URL, ENGINE_SECRET_KEY,
TEMPORAL_ADDRESS, ENGINE_TASK_QUEUE, ...).

    engine users create alice                  # prints alice's API key, once
    engine accounts add --user 1 --api-key K --api-secret S --access-token T
    engine strategies create --user 1 --account 1 --name nifty-open --symbol RELIANCE --quantity 10 \\
        --entry 09:20 --exit 15:10
    engine strategies start 1
    engine order buy 1 --wait
    engine order status order:1:1:entry
    engine history --strategy 1
    engine positions --account 1 --broker     # the engine's positions beside Kite's
    engine pnl --date 2026-11-24

Exit codes: 0 done; 1 the order or the request was refused or failed; 2 wrong usage; 3 not found;
4 duplicate or conflict; 5 Temporal or the database unreachable; 6 the database's schema is missing or
behind (run `engine db upgrade`).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from rich.console import Console

from apps.cli import accounts, control, database, market_data, orders, reconcile, strategies, views
from apps.cli.common import CONFLICT, FAILED, NOT_FOUND, SCHEMA_BEHIND, UNAVAILABLE, Cli, Command, print_json
from engine.errors import DuplicateOrderError
from engine.settings import Settings
from starter.control import (
    EmergencyStopRefused,
    EmergencyStopUnconfirmed,
    InvalidControlRequest,
    OrderAlreadyFinished,
    UnknownOrder,
)
from starter.deps import Services, StrategyNotRunning, TemporalUnavailable
from starter.views import BrokerUnavailable
from store.errors import (
    AlreadyExists,
    InvalidInput,
    NotFound,
    OrderInFlight,
    SchemaOutOfDate,
    StoreError,
    StoreUnavailable,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="engine", description="Operate the order execution engine (Temporal + Kite)."
    )
    groups = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")
    for group in (strategies, orders, control, accounts, reconcile, database, market_data, views):
        group.add_commands(groups)
    for command in _leaves(parser):
        command.add_argument("--json", action="store_true", help="print one JSON document (docs/cli.md)")
    return parser


def _leaves(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parsers of whole commands (`strategies list`, `history`, ...), not of command groups."""
    children = [
        child
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
        for child in action.choices.values()
    ]
    if not children:
        return [parser]
    return [leaf for child in children for leaf in _leaves(child)]


async def run(argv: Sequence[str], console: Console, services: Services | None = None) -> int:
    """Parse, run one command, map failures to an exit code and a message that says what to do."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    json_output = bool(getattr(args, "json", False))
    opened = None
    try:
        if args.group == "db":
            return await database.run_schema_command(args, console, json_output)
        if services is None:
            opened = services = await Services.open(Settings.from_environment())
        await services.store.require_current_schema()
        command: Command = args.run
        return await command(Cli(services, console, json_output=json_output), args)
    except DuplicateOrderError as duplicate:
        return _fail(console, CONFLICT, json_output, str(duplicate))
    except (AlreadyExists, OrderAlreadyFinished, OrderInFlight, StrategyNotRunning, EmergencyStopRefused) as conflict:
        return _fail(console, CONFLICT, json_output, str(conflict))
    except (UnknownOrder, NotFound) as missing:
        return _fail(console, NOT_FOUND, json_output, str(missing))
    except SchemaOutOfDate as behind:
        return _fail(console, SCHEMA_BEHIND, json_output, str(behind))
    except (TemporalUnavailable, StoreUnavailable, EmergencyStopUnconfirmed, BrokerUnavailable) as unavailable:
        return _fail(console, UNAVAILABLE, json_output, str(unavailable))
    except (InvalidInput, InvalidControlRequest, StoreError, ValueError) as refused:
        return _fail(console, FAILED, json_output, str(refused))
    finally:
        if opened is not None:
            await opened.close()


def _fail(console: Console, code: int, json_output: bool, message: str) -> int:
    if json_output:
        print_json(console, {"error": message, "exit_code": code})
    else:
        console.print(f"[red]error:[/red] {message}", highlight=False)
    return code


def main(argv: Sequence[str] | None = None, console: Console | None = None) -> int:
    return asyncio.run(run(sys.argv[1:] if argv is None else argv, console or Console()))


if __name__ == "__main__":
    sys.exit(main())
