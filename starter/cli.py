"""`engine`: the operator's command line. It talks to Temporal and the database directly (not through
the HTTP API), configured from the environment like the worker (DATABASE_URL, ENGINE_SECRET_KEY,
TEMPORAL_ADDRESS, TASK_QUEUE, ...).

    engine users create alice                  # prints alice's API key, once
    engine accounts add --user 1 --api-key K --api-secret S --access-token T
    engine strategies create --user 1 --account 1 --name nifty-open --symbol RELIANCE --quantity 10 \\
        --entry 09:20 --exit 15:10
    engine strategies start 1
    engine order buy 1 --wait
    engine order status order:1:1:entry
    engine history --strategy 1

Exit codes: 0 done; 1 the order or the request was refused or failed; 2 wrong usage; 3 not found;
4 duplicate or conflict; 5 Temporal or the database unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from rich.console import Console
from rich.table import Table
from temporalio.client import WorkflowFailureError

from engine.errors import DuplicateOrderError
from engine.ids import OrderType
from engine.models import Outcome
from engine.settings import Settings
from starter.control import (
    EmergencyStopRefused,
    EmergencyStopUnconfirmed,
    InvalidControlRequest,
    OrderAlreadyFinished,
    UnknownOrder,
    start_emergency_stop,
)
from starter.deps import (
    OrderStatus,
    Services,
    StrategyNotRunning,
    TemporalUnavailable,
    split_order_key,
    temporal_call,
)
from store.errors import InvalidInput, NotFound, OrderInFlight, StoreError, StoreUnavailable
from store.records import HistoryQuery, StrategyRecord, StrategySpec, StrategyStatus

OK, FAILED, USAGE, NOT_FOUND, CONFLICT, UNAVAILABLE = 0, 1, 2, 3, 4, 5
FAILED_OUTCOMES = frozenset({Outcome.INVALID, Outcome.REJECTED, Outcome.FAILED, Outcome.UNRESOLVED})
DEFAULT_WAIT_SECONDS = 120.0
OPERATOR = f"cli:{os.environ.get('USER', 'operator')}"[:64]

Command = Callable[["Cli", argparse.Namespace], Awaitable[int]]


class UsageError(Exception):
    """The command line is wrong; the message says how to write it."""


# Parsing ---------------------------------------------------------------------------------------------


def _time_of_day(text: str) -> time:
    try:
        return time.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a time of day like 09:20 or 15:10:30") from None


def _decimal(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"{text!r} is not a decimal number like 2450.50") from None
    if not value.is_finite() or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a number greater than zero")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be greater than zero")
    return value


def _aware_datetime(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date-time like 2026-11-24T09:15+05:30") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} needs a time zone, e.g. 2026-11-24T09:15+05:30")
    return moment


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="engine", description="Operate the order execution engine (Temporal + Kite)."
    )
    groups = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")

    strategies = groups.add_parser("strategies", help="list, create, show, start and stop strategies")
    strategy_commands = strategies.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = strategy_commands.add_parser("list", help="strategies with their state")
    listing.add_argument("--user", type=_positive_int, help="only this user's")
    listing.add_argument("--status", choices=[status.value for status in StrategyStatus])
    listing.set_defaults(run=Cli.strategies_list)
    create = strategy_commands.add_parser("create", help="a new strategy (STOPPED until started)")
    create.add_argument("--user", type=_positive_int, required=True)
    create.add_argument("--account", type=_positive_int, required=True, help="the user's broker account id")
    create.add_argument("--name", required=True)
    create.add_argument("--symbol", required=True)
    create.add_argument("--quantity", type=_positive_int, required=True)
    create.add_argument("--exchange", default="NSE")
    create.add_argument("--product", default="MIS")
    create.add_argument("--entry", type=_time_of_day, help="daily BUY time, Asia/Kolkata (HH:MM)")
    create.add_argument("--exit", type=_time_of_day, help="daily SELL time, Asia/Kolkata (HH:MM)")
    stop_loss = create.add_mutually_exclusive_group()
    stop_loss.add_argument("--stop-loss-price", type=_decimal)
    stop_loss.add_argument("--stop-loss-pct", type=_decimal)
    create.set_defaults(run=Cli.strategies_create)
    show = strategy_commands.add_parser("show", help="one strategy with its schedules")
    show.add_argument("strategy_id", type=_positive_int)
    show.set_defaults(run=Cli.strategies_show)
    start = strategy_commands.add_parser("start", help="RUNNING, schedules resumed")
    start.add_argument("strategy_id", type=_positive_int)
    start.set_defaults(run=Cli.strategies_start)
    stop = strategy_commands.add_parser("stop", help="STOPPED, schedules paused")
    stop.add_argument("strategy_id", type=_positive_int)
    stop.add_argument("--reason", default="stopped by an operator")
    stop.set_defaults(run=Cli.strategies_stop)
    sync = strategy_commands.add_parser("sync-schedules", help="re-apply every strategy's schedules")
    sync.set_defaults(run=Cli.strategies_sync_schedules)
    _add_strategy_exit_command(strategy_commands)

    order = groups.add_parser("order", help="place, follow and cancel orders")
    order_commands = order.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, order_type in (("buy", OrderType.BUY), ("sell", OrderType.SELL)):
        placing = order_commands.add_parser(name, help=f"a manual {order_type} for a strategy")
        placing.add_argument("strategy_id", type=_positive_int)
        placing.add_argument("--reason", default=f"manual {order_type} by an operator")
        _add_wait(placing)
        placing.set_defaults(run=Cli.order_place, order_type=order_type)
    trigger = order_commands.add_parser("stop-loss", help="trigger a strategy's stop-loss (SL_SELL)")
    trigger.add_argument("strategy_id", type=_positive_int)
    trigger.add_argument("--trigger-price", type=_decimal, required=True)
    trigger.add_argument("--reason")
    _add_wait(trigger)
    trigger.set_defaults(run=Cli.order_place, order_type=OrderType.SL_SELL)
    status = order_commands.add_parser("status", help="an order's state now")
    status.add_argument("workflow_id")
    status.set_defaults(run=Cli.order_status)
    cancel = order_commands.add_parser("cancel", help="cancel an order in flight")
    cancel.add_argument("workflow_id")
    cancel.add_argument("--reason", default="cancelled by an operator")
    cancel.set_defaults(run=Cli.order_cancel)

    history = groups.add_parser("history", help="the audit log, newest first")
    history.add_argument("--user", type=_positive_int)
    history.add_argument("--strategy", type=_positive_int)
    history.add_argument("--status", choices=["ATTEMPTING", "SUCCESS", "FAILED", "ERROR"])
    history.add_argument("--type", dest="order_type", choices=[kind.value for kind in OrderType])
    history.add_argument("--since", type=_aware_datetime)
    history.add_argument("--until", type=_aware_datetime)
    history.add_argument("--limit", type=_positive_int, default=20)
    history.add_argument("--cursor", help="next_cursor of the previous page")
    history.set_defaults(run=Cli.history)

    interventions = groups.add_parser("interventions", help="strategies waiting for a person")
    intervention_commands = interventions.add_subparsers(dest="action", required=True, metavar="ACTION")
    pending = intervention_commands.add_parser("list")
    pending.add_argument("--user", type=_positive_int)
    pending.set_defaults(run=Cli.interventions_list)
    clear = intervention_commands.add_parser("clear")
    clear.add_argument("strategy_id", type=_positive_int)
    clear.set_defaults(run=Cli.interventions_clear)

    emergency = groups.add_parser("emergency-stop", help="stop a user's (or everyone's) strategies now")
    scope = emergency.add_mutually_exclusive_group(required=True)
    scope.add_argument("--user", type=_positive_int)
    scope.add_argument("--all", action="store_true", help="every user")
    emergency.add_argument("--square-off", action="store_true", help="also sell open positions at market")
    emergency.add_argument("--reason", default="emergency stop by an operator")
    emergency.set_defaults(run=Cli.emergency_stop)

    users = groups.add_parser("users", help="API users")
    user_commands = users.add_subparsers(dest="action", required=True, metavar="ACTION")
    new_user = user_commands.add_parser("create", help="a user and his API key (shown once)")
    new_user.add_argument("name")
    new_user.add_argument("--admin", action="store_true")
    new_user.set_defaults(run=Cli.users_create)

    accounts = groups.add_parser("accounts", help="broker accounts")
    account_commands = accounts.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = account_commands.add_parser("add", help="a user's broker account; secrets are encrypted at rest")
    add.add_argument("--user", type=_positive_int, required=True)
    add.add_argument("--broker", default="kite")
    add.add_argument("--api-key", required=True)
    add.add_argument("--api-secret", help="asked for when left out (keeps it out of the shell history)")
    add.add_argument("--access-token", help="today's token, if you have one")
    add.set_defaults(run=Cli.accounts_add)
    return parser


def _add_strategy_exit_command(strategy_commands: Any) -> None:
    exit_ = strategy_commands.add_parser(
        "exit", help="sell what the strategy still holds, at market, whatever its state (exit reason MANUAL)"
    )
    exit_.add_argument("strategy_id", type=_positive_int)
    exit_.add_argument("--reason")
    _add_wait(exit_)
    exit_.set_defaults(run=Cli.strategies_exit)


def _add_wait(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--wait", action="store_true", help="wait for the order's result, with a spinner")
    parser.add_argument("--timeout", type=float, default=DEFAULT_WAIT_SECONDS, help="seconds to wait at most")


# Output ----------------------------------------------------------------------------------------------


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, time):
        return value.isoformat()
    return str(value)


def strategies_table(strategies: Sequence[StrategyRecord]) -> Table:
    table = Table(title="Strategies")
    for column in ("id", "user", "name", "symbol", "qty", "entry", "exit", "status", "position", "open",
                   "entry price", "P&L", "attention"):
        table.add_column(column, justify="right" if column in ("id", "user", "qty", "open", "P&L") else "left")
    for item in strategies:
        table.add_row(
            str(item.id), str(item.user_id), item.name, f"{item.exchange}:{item.symbol}", str(item.quantity),
            _text(item.entry_time), _text(item.exit_time), item.status, item.position, str(item.open_quantity),
            _text(item.entry_price), _text(item.realized_pnl),
            f"[red]{item.intervention_reason}[/red]" if item.needs_intervention else "",
        )
    return table


def pairs_table(title: str, rows: Sequence[tuple[str, Any]]) -> Table:
    table = Table(title=title, show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for name, value in rows:
        table.add_row(name, _text(value))
    return table


def order_status_table(report: OrderStatus) -> Table:
    return pairs_table(
        f"Order {report.workflow_id}",
        [
            ("workflow", f"{report.workflow_status} (run {report.run_id})"),
            ("strategy", report.strategy_id),
            ("type", report.order_type),
            ("exit reason", report.order.exit_reason if report.order is not None else None),
            ("stage", report.stage),
            ("outcome", report.outcome),
            ("broker order", report.broker_order_id),
            ("broker status", report.broker_status),
            ("filled", f"{report.filled_quantity} of {_text(report.quantity)}"),
            ("average price", report.average_price),
            ("cancel requested", "yes" if report.cancel_requested else "no"),
            ("message", report.message),
            ("needs intervention", "yes" if report.needs_intervention else "no"),
            ("answered by", report.answered_by + (f" ({report.note})" if report.note else "")),
            ("started", report.started_at),
            ("closed", report.closed_at),
        ],
    )


# Commands --------------------------------------------------------------------------------------------


class Cli:
    def __init__(self, services: Services, console: Console):
        self.services = services
        self.console = console
        self.store = services.store

    def say(self, message: str) -> None:
        self.console.print(message)

    async def strategies_list(self, args: argparse.Namespace) -> int:
        strategies = await self.store.list_strategies(args.user, args.status)
        self.console.print(strategies_table(strategies))
        return OK

    async def strategies_create(self, args: argparse.Namespace) -> int:
        account = await self.store.get_broker_account(args.account)
        if account.user_id != args.user:
            raise InvalidInput(f"broker account {args.account} belongs to user {account.user_id}, not {args.user}")
        strategy = await self.store.create_strategy(
            StrategySpec(
                user_id=args.user, broker_account_id=args.account, name=args.name, symbol=args.symbol,
                quantity=args.quantity, exchange=args.exchange, product=args.product, entry_time=args.entry,
                exit_time=args.exit, stop_loss_price=args.stop_loss_price, stop_loss_pct=args.stop_loss_pct,
            )
        )
        self.console.print(strategies_table([strategy]))
        self.say(f"created strategy {strategy.id}, STOPPED; start it with: engine strategies start {strategy.id}")
        return OK

    async def strategies_show(self, args: argparse.Namespace) -> int:
        strategy = await self.store.get_strategy(args.strategy_id)
        self.console.print(strategies_table([strategy]))
        await self._print_schedules(strategy.id)
        return OK

    async def strategies_start(self, args: argparse.Namespace) -> int:
        strategy = await self.services.start_strategy(args.strategy_id, f"started by {OPERATOR}")
        self.console.print(strategies_table([strategy]))
        await self._print_schedules(strategy.id)
        return OK

    async def strategies_stop(self, args: argparse.Namespace) -> int:
        strategy = await self.services.stop_strategy(args.strategy_id, f"{args.reason} ({OPERATOR})")
        self.console.print(strategies_table([strategy]))
        await self._print_schedules(strategy.id)
        return OK

    async def strategies_exit(self, args: argparse.Namespace) -> int:
        """The way out after a partial exit, a failed stop-loss or an emergency stop without square-off."""
        handle = await temporal_call(
            "start the exit",
            self.services.starter.exit_position(args.strategy_id, requested_by=OPERATOR, reason=args.reason),
            timeout=None,
        )
        self.say(f"exit started: [bold]{handle.id}[/bold]")
        if not args.wait:
            self.say(f"follow it with: engine order status {handle.id}")
            return OK
        try:
            await temporal_call("wait for the exit", handle.result(), timeout=timedelta(seconds=args.timeout))
        except WorkflowFailureError:
            pass  # its outcome is in the status read next
        except TemporalUnavailable:
            self.say(f"[yellow]not finished after {args.timeout:g}s; it goes on[/yellow]")
        report = await self.services.order_status(handle.id)
        self.console.print(order_status_table(report))
        return FAILED if report.outcome in FAILED_OUTCOMES else OK

    async def strategies_sync_schedules(self, args: argparse.Namespace) -> int:
        strategies = await self.store.list_strategies()
        count = await temporal_call(
            "update the schedules", self.services.schedules.sync_all(strategies), timeout=None
        )
        self.say(f"schedules of {count} strategies brought up to date")
        return OK

    async def _print_schedules(self, strategy_id: int) -> None:
        views = await temporal_call("read the schedules", self.services.schedules.describe(strategy_id))
        if not views:
            self.say("no schedules (no entry or exit time set)")
            return
        table = Table(title="Schedules")
        for column in ("schedule", "at (IST)", "state", "next runs"):
            table.add_column(column)
        for view in views:
            state = f"paused: {view.note}" if view.paused else "active"
            runs = ", ".join(_text(moment) for moment in view.next_runs) or "-"
            table.add_row(view.schedule_id, _text(view.at), state, runs)
        self.console.print(table)

    async def order_place(self, args: argparse.Namespace) -> int:
        order_type: OrderType = args.order_type
        strategy = await self.store.get_strategy(args.strategy_id)
        handle = await self.services.place_order(
            strategy, order_type, trigger_price=getattr(args, "trigger_price", None), requested_by=OPERATOR,
            reason=args.reason, how_to_start=f"engine strategies start {strategy.id}",
        )
        self.say(f"{order_type} started: [bold]{handle.id}[/bold]")
        if not args.wait:
            self.say(f"follow it with: engine order status {handle.id}")
            return OK
        with self.console.status(f"waiting for {handle.id} (up to {args.timeout:g}s)..."):
            try:
                await temporal_call("wait for the order", handle.result(), timeout=timedelta(seconds=args.timeout))
            except WorkflowFailureError:
                pass  # its outcome is in the status read next
            except TemporalUnavailable:
                self.say(f"[yellow]not finished after {args.timeout:g}s; it goes on[/yellow]")
        report = await self.services.order_status(handle.id)
        self.console.print(order_status_table(report))
        return FAILED if report.outcome in FAILED_OUTCOMES else OK

    async def order_status(self, args: argparse.Namespace) -> int:
        self.console.print(order_status_table(await self.services.order_status(args.workflow_id)))
        return OK

    async def order_cancel(self, args: argparse.Namespace) -> int:
        with self.console.status(f"cancelling {args.workflow_id}..."):
            outcome = await self.services.cancel_order(args.workflow_id, f"{args.reason} ({OPERATOR})")
        if outcome.accepted is None:
            self.say(f"[yellow]{outcome.message}[/yellow]")
        elif not outcome.accepted:
            self.say(f"[red]the broker refused the cancel:[/red] {outcome.message}; a fill that raced it is kept")
            return CONFLICT
        else:
            self.say(f"cancelled: {outcome.message}")
        return OK

    async def history(self, args: argparse.Namespace) -> int:
        page = await self.store.order_history(
            HistoryQuery(
                user_id=args.user, strategy_id=args.strategy, status=args.status, order_type=args.order_type,
                since=args.since, until=args.until, limit=args.limit, cursor=args.cursor,
            )
        )
        table = Table(title="Order history (newest first)")
        for column in ("attempted", "workflow", "strategy", "type", "status", "ms", "error"):
            table.add_column(column)
        for item in page.items:
            table.add_row(
                _text(item.attempted_at), split_order_key(item.workflow_id)[0] or "-", str(item.strategy_id),
                item.order_type, item.status, _text(item.execution_time_ms), item.error_message or "",
            )
        self.console.print(table)
        if page.next_cursor:
            self.say(f"more: engine history --cursor {page.next_cursor} (same filters)")
        return OK

    async def interventions_list(self, args: argparse.Namespace) -> int:
        pending = await self.store.list_interventions(args.user)
        table = Table(title="Strategies needing a person")
        for column in ("strategy", "user", "name", "symbol", "open", "since", "reason", "last error"):
            table.add_column(column)
        for item in pending:
            table.add_row(
                str(item.id), str(item.user_id), item.name, item.symbol, str(item.open_quantity),
                _text(item.intervention_at), item.intervention_reason or "", item.last_error or "",
            )
        self.console.print(table)
        return OK

    async def interventions_clear(self, args: argparse.Namespace) -> int:
        strategy = await self.store.clear_intervention(args.strategy_id, OPERATOR)
        self.say(f"intervention on strategy {strategy.id} cleared; start it again when ready")
        return OK

    async def emergency_stop(self, args: argparse.Namespace) -> int:
        if args.user is not None:
            await self.store.get_user(args.user)
        workflow_id = await temporal_call(
            "start the emergency stop",
            start_emergency_stop(
                self.services.client, self.services.settings, user_id=None if args.all else args.user,
                square_off=args.square_off, reason=args.reason, requested_by=OPERATOR,
            ),
            timeout=None,
        )
        scope = "every user's" if args.all else f"user {args.user}'s"
        self.say(f"emergency stop of {scope} strategies started: [bold]{workflow_id}[/bold]")
        return OK

    async def users_create(self, args: argparse.Namespace) -> int:
        user, api_key = await self.store.create_user(args.name, is_admin=args.admin)
        self.console.print(pairs_table("User created", [("id", user.id), ("name", user.username),
                                                        ("admin", "yes" if user.is_admin else "no")]))
        self.say("API key (shown only now; keep it secret):")
        self.console.print(api_key, markup=False, highlight=False, soft_wrap=True)
        return OK

    async def accounts_add(self, args: argparse.Namespace) -> int:
        api_secret = args.api_secret or getpass.getpass("API secret: ")
        account = await self.store.add_broker_account(
            args.user, broker=args.broker, api_key=args.api_key, api_secret=api_secret,
            access_token=args.access_token,
        )
        token = "with today's access token" if account.has_access_token else "without an access token yet"
        self.say(f"broker account {account.id} ({account.broker}) added for user {account.user_id}, {token}")
        return OK


# Entry points ----------------------------------------------------------------------------------------


async def run(argv: Sequence[str], console: Console, services: Services | None = None) -> int:
    """Parse, run one command, map failures to an exit code and a message that says what to do."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    opened = None
    try:
        if services is None:
            opened = services = await Services.open(Settings())
        command: Command = args.run
        return await command(Cli(services, console), args)
    except DuplicateOrderError as duplicate:
        return _fail(console, CONFLICT, str(duplicate))
    except (OrderAlreadyFinished, OrderInFlight, StrategyNotRunning, EmergencyStopRefused) as conflict:
        return _fail(console, CONFLICT, str(conflict))
    except (UnknownOrder, NotFound) as missing:
        return _fail(console, NOT_FOUND, str(missing))
    except (TemporalUnavailable, StoreUnavailable, EmergencyStopUnconfirmed) as unavailable:
        return _fail(console, UNAVAILABLE, str(unavailable))
    except (InvalidInput, InvalidControlRequest, StoreError, ValueError) as refused:
        return _fail(console, FAILED, str(refused))
    finally:
        if opened is not None:
            await opened.close()


def _fail(console: Console, code: int, message: str) -> int:
    console.print(f"[red]error:[/red] {message}", highlight=False)
    return code


def main(argv: Sequence[str] | None = None, console: Console | None = None) -> int:
    return asyncio.run(run(sys.argv[1:] if argv is None else argv, console or Console()))


if __name__ == "__main__":
    sys.exit(main())
