"""`engine positions`, `engine orders`, `engine trades`, `engine pnl`: what a trader sees (docs/pnl.md).

The numbers and the `--json` fields are the API's (`GET /positions`, `/orders`, `/trades`, `/pnl`): both
read `starter.views`.
"""

from __future__ import annotations

import argparse
from datetime import date

from rich.table import Table

from apps.cli.common import OK, Cli, positive_int, text
from starter.views import Scope, TradingViews


def iso_date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date like 2026-11-24") from None


def _scope_arguments(parser: argparse.ArgumentParser, *, account: bool = True) -> None:
    chosen = parser.add_mutually_exclusive_group()
    chosen.add_argument("--strategy", type=positive_int, help="one strategy")
    if account:
        chosen.add_argument("--account", type=positive_int, help="one broker account")
    parser.add_argument("--user", type=positive_int, help="one user's strategies")


def add_commands(groups: argparse._SubParsersAction) -> None:
    positions = groups.add_parser("positions", help="positions per strategy and account (--broker: beside Kite's)")
    _scope_arguments(positions)
    positions.add_argument("--broker", action="store_true", help="ask Kite too and mark differences")
    positions.set_defaults(run=show_positions)

    orders = groups.add_parser("orders", help="the day's order book (--broker: beside Kite's)")
    _scope_arguments(orders)
    orders.add_argument("--date", type=iso_date, help="the day (IST), today when left out")
    orders.add_argument("--broker", action="store_true", help="ask Kite too and mark differences")
    orders.set_defaults(run=show_orders)

    trades = groups.add_parser("trades", help="the day's trade book (--broker: beside Kite's)")
    _scope_arguments(trades)
    trades.add_argument("--date", type=iso_date, help="the day (IST), today when left out")
    trades.add_argument("--broker", action="store_true", help="ask Kite too and mark differences")
    trades.set_defaults(run=show_trades)

    pnl = groups.add_parser("pnl", help="realized P&L per strategy and day, gross and after Zerodha's charges")
    _scope_arguments(pnl, account=False)
    pnl.add_argument("--date", type=iso_date, help="one day (IST); every day when left out")
    pnl.set_defaults(run=show_pnl)


def _scope(args: argparse.Namespace) -> Scope:
    return Scope(user_id=args.user, strategy_id=args.strategy, account_id=getattr(args, "account", None))


def _views(cli: Cli) -> TradingViews:
    return TradingViews(cli.store, cli.services.settings)


def _mark(difference: str | None) -> str:
    return f"[red]{difference}[/red]" if difference else ""


async def show_positions(cli: Cli, args: argparse.Namespace) -> int:
    views = _views(cli)
    try:
        answer = await views.positions(_scope(args), broker=args.broker)
    finally:
        views.close()
    table = Table(title="Positions per strategy (the engine's)")
    for column in ("strategy", "name", "account", "symbol", "product", "position", "open", "entry", "realized",
                   "exit reason"):
        table.add_column(column)
    for s in answer.strategies:
        table.add_row(str(s.strategy_id), s.name, str(s.account_id), f"{s.exchange}:{s.symbol}", s.product,
                      s.position, str(s.open_quantity), text(s.entry_price), text(s.realized_pnl), text(s.exit_reason))
    cli.show(table)
    instruments = Table(title="Per account and instrument" + (": the engine beside Kite" if args.broker else ""))
    for column in ("account", "symbol", "product", "engine", "kite", "kite avg", "kite P&L", "difference"):
        instruments.add_column(column)
    for row in answer.instruments:
        instruments.add_row(str(row.account_id), f"{row.exchange}:{row.symbol}", row.product, str(row.engine_quantity),
                            text(row.broker_quantity), text(row.broker_average_price), text(row.broker_pnl),
                            _mark(row.difference))
    cli.show(instruments)
    if args.broker:
        cli.say(f"{answer.differences} difference(s) with Kite")
    cli.data(answer)
    return OK


async def show_orders(cli: Cli, args: argparse.Namespace) -> int:
    views = _views(cli)
    try:
        answer = await views.order_book(_scope(args), day=args.date, broker=args.broker)
    finally:
        views.close()
    table = Table(title=f"Order book of {answer.date}" + (" beside Kite's" if args.broker else ""))
    for column in ("created", "workflow", "strategy", "symbol", "side", "type", "qty", "filled", "avg", "status",
                   "exit reason", "broker order", "kite status", "difference"):
        table.add_column(column)
    for o in answer.orders:
        table.add_row(text(o.created_at), o.workflow_id, str(o.strategy_id), f"{o.exchange}:{o.symbol}", o.side,
                      o.order_type, str(o.quantity), str(o.filled_quantity), text(o.average_price), o.status,
                      text(o.exit_reason), text(o.broker_order_id), text(o.broker.status if o.broker else None),
                      _mark(o.difference))
    cli.show(table)
    for extra in answer.broker_only:
        cli.say(f"[red]only at Kite:[/red] order {extra.order_id} {extra.side} {extra.quantity} "
                f"{extra.exchange}:{extra.symbol} {extra.status} (tag {text(extra.tag)})")
    if args.broker:
        cli.say(f"{answer.differences} difference(s) with Kite")
    cli.data(answer)
    return OK


async def show_trades(cli: Cli, args: argparse.Namespace) -> int:
    views = _views(cli)
    try:
        answer = await views.trade_book(_scope(args), day=args.date, broker=args.broker)
    finally:
        views.close()
    table = Table(title=f"Trade book of {answer.date}" + (" beside Kite's" if args.broker else ""))
    for column in ("filled", "workflow", "strategy", "symbol", "side", "qty", "price", "exit reason", "kite qty",
                   "kite price", "difference"):
        table.add_column(column)
    for t in answer.trades:
        table.add_row(text(t.filled_at), t.workflow_id, str(t.strategy_id), f"{t.exchange}:{t.symbol}", t.side,
                      str(t.quantity), text(t.price), text(t.exit_reason), text(t.broker_quantity),
                      text(t.broker_price), _mark(t.difference))
    cli.show(table)
    for extra in answer.broker_only:
        cli.say(f"[red]only at Kite:[/red] trade {extra.trade_id} of order {extra.order_id}: {extra.side} "
                f"{extra.quantity} {extra.exchange}:{extra.symbol} at {text(extra.price)}")
    if args.broker:
        cli.say(f"{answer.differences} difference(s) with Kite")
    cli.data(answer)
    return OK


async def show_pnl(cli: Cli, args: argparse.Namespace) -> int:
    views = _views(cli)
    try:
        answer = await views.pnl(_scope(args), day=args.date)
    finally:
        views.close()
    table = Table(title="Realized P&L per strategy and day (IST)")
    for column in ("date", "strategy", "name", "symbol", "product", "orders", "gross", "brokerage", "STT",
                   "exchange", "SEBI", "GST", "stamp", "charges", "net"):
        table.add_column(column)
    for row in answer.rows:
        c = row.charges
        table.add_row(str(row.date), str(row.strategy_id), row.name, f"{row.exchange}:{row.symbol}", row.product,
                      str(row.orders), text(row.gross), text(c.brokerage), text(c.stt), text(c.exchange), text(c.sebi),
                      text(c.gst), text(c.stamp), text(c.total), text(row.net))
    cli.show(table)
    exits = Table(title="Exits")
    for column in ("filled", "workflow", "symbol", "side", "qty", "price", "entry", "realized", "exit reason"):
        exits.add_column(column)
    for row in answer.rows:
        for e in row.exits:
            exits.add_row(text(e.filled_at), e.workflow_id, e.symbol, e.side, str(e.quantity), text(e.price),
                          text(e.entry_price), text(e.realized), text(e.exit_reason))
    cli.show(exits)
    t = answer.totals
    cli.say(f"total: gross {text(t.gross)}, charges {text(t.charges)}, net {text(t.net)} "
            f"(Zerodha's rates as of {answer.rates_as_of})")
    cli.data(answer)
    return OK
