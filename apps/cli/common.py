"""What every command group shares: exit codes, argument types, the output helpers, the context."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, time
from decimal import Decimal, InvalidOperation
from typing import Any

from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from engine.models import Outcome
from starter.deps import Services

OK, FAILED, USAGE, NOT_FOUND, CONFLICT, UNAVAILABLE, SCHEMA_BEHIND = 0, 1, 2, 3, 4, 5, 6
FAILED_OUTCOMES = frozenset({Outcome.INVALID, Outcome.REJECTED, Outcome.FAILED, Outcome.UNRESOLVED})
DEFAULT_WAIT_SECONDS = 120.0
OPERATOR = f"cli:{os.environ.get('USER', 'operator')}"[:64]

Command = Callable[["Cli", argparse.Namespace], Awaitable[int]]


class UsageError(Exception):
    """The command line is wrong; the message says how to write it."""


# Parsing ---------------------------------------------------------------------------------------------


def time_of_day(text: str) -> time:
    try:
        return time.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a time of day like 09:20 or 15:10:30") from None


def positive_decimal(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"{text!r} is not a decimal number like 2450.50") from None
    if not value.is_finite() or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a number greater than zero")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be greater than zero")
    return value


def aware_datetime(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date-time like 2026-11-24T09:15+05:30") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} needs a time zone, e.g. 2026-11-24T09:15+05:30")
    return moment


def add_wait(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--wait", action="store_true", help="wait for the order's result, with a spinner")
    parser.add_argument("--timeout", type=float, default=DEFAULT_WAIT_SECONDS, help="seconds to wait at most")


def text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, time):
        return value.isoformat()
    return str(value)


def pairs_table(title: str, rows: Sequence[tuple[str, Any]]) -> Table:
    table = Table(title=title, show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for name, value in rows:
        table.add_row(name, text(value))
    return table


def as_json(value: Any) -> Any:
    """Plain JSON of the API's own response models (the same field names and money as strings)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [as_json(item) for item in value]
    if isinstance(value, dict):
        return {key: as_json(item) for key, item in value.items()}
    return value


def print_json(console: Console, value: Any) -> None:
    console.print(json.dumps(as_json(value)), markup=False, highlight=False, soft_wrap=True)


class Cli:
    """What a command runs with. With `--json` it prints one JSON document and no prose or tables."""

    def __init__(self, services: Services, console: Console, *, json_output: bool = False):
        self.services = services
        self.console = console
        self.store = services.store
        self.json_output = json_output

    def say(self, message: str) -> None:
        if not self.json_output:
            self.console.print(message)

    def show(self, renderable: Any) -> None:
        if not self.json_output:
            self.console.print(renderable)

    def data(self, value: Any) -> None:
        if self.json_output:
            print_json(self.console, value)
