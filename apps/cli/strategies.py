"""`engine strategies …`: list, create, show, start, stop; their schedules."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from rich.table import Table

from apps.api.schemas import StrategyOut
from apps.cli.common import (
    OK,
    OPERATOR,
    Cli,
    add_wait,
    positive_decimal,
    positive_int,
    text,
    time_of_day,
)
from apps.cli.orders import follow_started_order
from starter.deps import temporal_call
from store.errors import InvalidInput
from store.records import StrategyRecord, StrategySpec, StrategyStatus


def strategies_table(strategies: Sequence[StrategyRecord]) -> Table:
    table = Table(title="Strategies")
    for column in ("id", "user", "name", "symbol", "qty", "entry", "exit", "status", "position", "open",
                   "entry price", "P&L", "attention"):
        table.add_column(column, justify="right" if column in ("id", "user", "qty", "open", "P&L") else "left")
    for item in strategies:
        table.add_row(
            str(item.id), str(item.user_id), item.name, f"{item.exchange}:{item.symbol}", str(item.quantity),
            text(item.entry_time), text(item.exit_time), item.status, item.position, str(item.open_quantity),
            text(item.entry_price), text(item.realized_pnl),
            f"[red]{item.intervention_reason}[/red]" if item.needs_intervention else "",
        )
    return table


def add_commands(groups: argparse._SubParsersAction) -> None:
    strategies = groups.add_parser("strategies", help="list, create, show, start and stop strategies")
    strategy_commands = strategies.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = strategy_commands.add_parser("list", help="strategies with their state")
    listing.add_argument("--user", type=positive_int, help="only this user's")
    listing.add_argument("--status", choices=[status.value for status in StrategyStatus])
    listing.set_defaults(run=strategies_list)
    create = strategy_commands.add_parser("create", help="a new strategy (STOPPED until started)")
    create.add_argument("--user", type=positive_int, required=True)
    create.add_argument("--account", type=positive_int, required=True, help="the user's broker account id")
    create.add_argument("--name", required=True)
    create.add_argument("--symbol", required=True)
    create.add_argument("--quantity", type=positive_int, required=True)
    create.add_argument("--exchange", default="NSE")
    create.add_argument("--product", default="MIS")
    create.add_argument("--entry", type=time_of_day, help="daily BUY time, Asia/Kolkata (HH:MM)")
    create.add_argument("--exit", type=time_of_day, help="daily SELL time, Asia/Kolkata (HH:MM)")
    stop_loss = create.add_mutually_exclusive_group()
    stop_loss.add_argument("--stop-loss-price", type=positive_decimal)
    stop_loss.add_argument("--stop-loss-pct", type=positive_decimal)
    create.set_defaults(run=strategies_create)
    show = strategy_commands.add_parser("show", help="one strategy with its schedules")
    show.add_argument("strategy_id", type=positive_int)
    show.set_defaults(run=strategies_show)
    start = strategy_commands.add_parser("start", help="RUNNING, schedules resumed")
    start.add_argument("strategy_id", type=positive_int)
    start.set_defaults(run=strategies_start)
    stop = strategy_commands.add_parser("stop", help="STOPPED, schedules paused")
    stop.add_argument("strategy_id", type=positive_int)
    stop.add_argument("--reason", default="stopped by an operator")
    stop.set_defaults(run=strategies_stop)
    sync = strategy_commands.add_parser("sync-schedules", help="re-apply every strategy's schedules")
    sync.set_defaults(run=strategies_sync_schedules)
    exit_ = strategy_commands.add_parser(
        "exit", help="sell what the strategy still holds, at market, whatever its state (exit reason MANUAL)"
    )
    exit_.add_argument("strategy_id", type=positive_int)
    exit_.add_argument("--reason")
    add_wait(exit_)
    exit_.set_defaults(run=strategies_exit)


async def strategies_list(cli: Cli, args: argparse.Namespace) -> int:
    strategies = await cli.store.list_strategies(args.user, args.status)
    cli.show(strategies_table(strategies))
    cli.data([StrategyOut.of(strategy) for strategy in strategies])
    return OK


async def strategies_create(cli: Cli, args: argparse.Namespace) -> int:
    account = await cli.store.get_broker_account(args.account)
    if account.user_id != args.user:
        raise InvalidInput(f"broker account {args.account} belongs to user {account.user_id}, not {args.user}")
    strategy = await cli.store.create_strategy(
        StrategySpec(
            user_id=args.user, broker_account_id=args.account, name=args.name, symbol=args.symbol,
            quantity=args.quantity, exchange=args.exchange, product=args.product, entry_time=args.entry,
            exit_time=args.exit, stop_loss_price=args.stop_loss_price, stop_loss_pct=args.stop_loss_pct,
        )
    )
    cli.show(strategies_table([strategy]))
    cli.say(f"created strategy {strategy.id}, STOPPED; start it with: engine strategies start {strategy.id}")
    cli.data(StrategyOut.of(strategy))
    return OK


async def strategies_show(cli: Cli, args: argparse.Namespace) -> int:
    strategy = await cli.store.get_strategy(args.strategy_id)
    cli.show(strategies_table([strategy]))
    await _print_schedules(cli, strategy)
    return OK


async def strategies_start(cli: Cli, args: argparse.Namespace) -> int:
    strategy = await cli.services.start_strategy(args.strategy_id, f"started by {OPERATOR}")
    cli.show(strategies_table([strategy]))
    await _print_schedules(cli, strategy)
    return OK


async def strategies_stop(cli: Cli, args: argparse.Namespace) -> int:
    strategy = await cli.services.stop_strategy(args.strategy_id, f"{args.reason} ({OPERATOR})")
    cli.show(strategies_table([strategy]))
    await _print_schedules(cli, strategy)
    return OK


async def strategies_sync_schedules(cli: Cli, args: argparse.Namespace) -> int:
    strategies = await cli.store.list_strategies()
    count = await temporal_call(
        "update the schedules", cli.services.schedules.sync_all(strategies), timeout=None
    )
    cli.say(f"schedules of {count} strategies brought up to date")
    cli.data({"strategies": count})
    return OK


async def _print_schedules(cli: Cli, strategy: StrategyRecord) -> None:
    views = await temporal_call("read the schedules", cli.services.schedules.describe(strategy.id))
    cli.data(StrategyOut.of(strategy, views))
    if not views:
        if strategy.entry_time is None and strategy.exit_time is None:
            cli.say("no schedules: the strategy has no entry or exit time")
        else:
            cli.say(
                "no schedules in Temporal for its entry/exit times yet: they are made when the strategy "
                f"starts (engine strategies start {strategy.id}) or by engine strategies sync-schedules"
            )
        return
    table = Table(title="Schedules")
    for column in ("schedule", "at (IST)", "state", "next runs (IST)"):
        table.add_column(column)
    for view in views:
        state = f"paused: {view.note}" if view.paused else "active"
        runs = ", ".join(text(moment) for moment in view.next_runs) or ("none: paused" if view.paused else "-")
        table.add_row(view.schedule_id, text(view.at), state, runs)
    cli.show(table)


async def strategies_exit(cli: Cli, args: argparse.Namespace) -> int:
    """The way out after a partial exit, a failed stop-loss or an emergency stop without square-off."""
    handle = await temporal_call(
        "start the exit",
        cli.services.starter.exit_position(args.strategy_id, requested_by=OPERATOR, reason=args.reason),
        timeout=None,
    )
    cli.say(f"exit started: [bold]{handle.id}[/bold]")
    return await follow_started_order(cli, handle.id, args)
