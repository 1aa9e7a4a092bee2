"""`engine order …` and `engine history`: place, follow and cancel orders; the audit log."""

from __future__ import annotations

import argparse
from datetime import timedelta

from rich.table import Table
from temporalio.client import WorkflowFailureError

from apps.api.schemas import CancelOut, HistoryItemOut, HistoryPageOut, OrderStatusOut
from apps.cli.common import (
    CONFLICT,
    FAILED,
    FAILED_OUTCOMES,
    OK,
    OPERATOR,
    Cli,
    add_wait,
    aware_datetime,
    pairs_table,
    positive_decimal,
    positive_int,
    text,
)
from engine.ids import OrderType
from starter.deps import OrderStatus, TemporalUnavailable, split_order_key, temporal_call
from store.records import HistoryQuery


def _trigger_tick(report: OrderStatus) -> str | None:
    """A stop-loss's trigger: the tick's price, and when it arrived (ticker-triggered ones only)."""
    order = report.order
    if order is None or order.trigger_price is None:
        return None
    return f"{order.trigger_price}" + (f" at {order.trigger_tick_at}" if order.trigger_tick_at else "")


def order_status_table(report: OrderStatus) -> Table:
    return pairs_table(
        f"Order {report.workflow_id}",
        [
            ("workflow", f"{report.workflow_status} (run {report.run_id})"),
            ("strategy", report.strategy_id),
            ("type", report.order_type),
            ("exit reason", report.order.exit_reason if report.order is not None else None),
            ("trigger tick", _trigger_tick(report)),
            ("stage", report.stage),
            ("outcome", report.outcome),
            ("broker order", report.broker_order_id),
            ("broker status", report.broker_status),
            ("filled", f"{report.filled_quantity} of {text(report.quantity)}"),
            ("average price", report.average_price),
            # A finished order's status comes from its result, which does not say whether a cancel was asked.
            ("cancel requested", "-" if report.finished else ("yes" if report.cancel_requested else "no")),
            ("message", report.message),
            ("needs intervention", "yes" if report.needs_intervention else "no"),
            ("answered by", report.answered_by + (f" ({report.note})" if report.note else "")),
            ("started", report.started_at),
            ("closed", report.closed_at),
        ],
    )


def add_commands(groups: argparse._SubParsersAction) -> None:
    order = groups.add_parser("order", help="place, follow and cancel orders")
    order_commands = order.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, order_type in (("buy", OrderType.BUY), ("sell", OrderType.SELL)):
        placing = order_commands.add_parser(name, help=f"a manual {order_type} for a strategy")
        placing.add_argument("strategy_id", type=positive_int)
        placing.add_argument("--reason", default=f"manual {order_type} by an operator")
        add_wait(placing)
        placing.set_defaults(run=order_place, order_type=order_type)
    trigger = order_commands.add_parser("stop-loss", help="trigger a strategy's stop-loss (SL_SELL)")
    trigger.add_argument("strategy_id", type=positive_int)
    trigger.add_argument("--trigger-price", type=positive_decimal, required=True)
    trigger.add_argument("--reason")
    add_wait(trigger)
    trigger.set_defaults(run=order_place, order_type=OrderType.SL_SELL)
    status = order_commands.add_parser("status", help="an order's state now")
    status.add_argument("workflow_id")
    status.set_defaults(run=order_status)
    cancel = order_commands.add_parser("cancel", help="cancel an order in flight")
    cancel.add_argument("workflow_id")
    cancel.add_argument("--reason", default="cancelled by an operator")
    cancel.set_defaults(run=order_cancel)

    history_parser = groups.add_parser("history", help="the audit log, newest first")
    history_parser.add_argument("--user", type=positive_int)
    history_parser.add_argument("--strategy", type=positive_int)
    history_parser.add_argument("--status", choices=["ATTEMPTING", "SUCCESS", "FAILED", "ERROR"])
    history_parser.add_argument("--type", dest="order_type", choices=[kind.value for kind in OrderType])
    history_parser.add_argument("--since", type=aware_datetime)
    history_parser.add_argument("--until", type=aware_datetime)
    history_parser.add_argument("--limit", type=positive_int, default=20)
    history_parser.add_argument("--cursor", help="next_cursor of the previous page")
    history_parser.set_defaults(run=history)


async def order_place(cli: Cli, args: argparse.Namespace) -> int:
    order_type: OrderType = args.order_type
    strategy = await cli.store.get_strategy(args.strategy_id)
    handle = await cli.services.place_order(
        strategy, order_type, trigger_price=getattr(args, "trigger_price", None), requested_by=OPERATOR,
        reason=args.reason, how_to_start=f"engine strategies start {strategy.id}",
    )
    cli.say(f"{order_type} started: [bold]{handle.id}[/bold]")
    return await follow_started_order(cli, handle.id, args)


async def follow_started_order(cli: Cli, workflow_id: str, args: argparse.Namespace) -> int:
    """After a start: say how to follow it, or (`--wait`) wait for its end and print its status."""
    if not args.wait:
        cli.say(f"follow it with: engine order status {workflow_id}")
        cli.data({"workflow_id": workflow_id, "status": None})
        return OK
    with cli.console.status(f"waiting for {workflow_id} (up to {args.timeout:g}s)..."):
        try:
            result = cli.services.order_handle(workflow_id).result()
            await temporal_call("wait for the order", result, timeout=timedelta(seconds=args.timeout))
        except WorkflowFailureError:
            pass  # its outcome is in the status read next
        except TemporalUnavailable:
            cli.say(f"[yellow]not finished after {args.timeout:g}s; it goes on[/yellow]")
    report = await cli.services.order_status(workflow_id)
    cli.show(order_status_table(report))
    cli.data({"workflow_id": workflow_id, "status": OrderStatusOut.of(report)})
    return FAILED if report.outcome in FAILED_OUTCOMES else OK


async def order_status(cli: Cli, args: argparse.Namespace) -> int:
    report = await cli.services.order_status(args.workflow_id)
    cli.show(order_status_table(report))
    cli.data(OrderStatusOut.of(report))
    return OK


async def order_cancel(cli: Cli, args: argparse.Namespace) -> int:
    with cli.console.status(f"cancelling {args.workflow_id}..."):
        outcome = await cli.services.cancel_order(args.workflow_id, f"{args.reason} ({OPERATOR})")
    cli.data(CancelOut(workflow_id=outcome.workflow_id, accepted=outcome.accepted, message=outcome.message))
    if outcome.accepted is None:
        cli.say(f"[yellow]{outcome.message}[/yellow]")
    elif not outcome.accepted:
        cli.say(f"[red]the broker refused the cancel:[/red] {outcome.message}; a fill that raced it is kept")
        return CONFLICT
    else:
        cli.say(f"cancelled: {outcome.message}")
    return OK


async def history(cli: Cli, args: argparse.Namespace) -> int:
    page = await cli.store.order_history(
        HistoryQuery(
            user_id=args.user, strategy_id=args.strategy, status=args.status, order_type=args.order_type,
            since=args.since, until=args.until, limit=args.limit, cursor=args.cursor,
        )
    )
    table = Table(title="Order history (newest first)")
    for column in ("attempted", "workflow", "strategy", "type", "symbol", "side", "qty", "filled", "price",
                   "exit reason", "status", "ms", "error"):
        table.add_column(column)
    for item in page.items:
        order = page.orders.get(item.order_id)
        table.add_row(
            text(item.attempted_at), split_order_key(item.workflow_id)[0] or "-", str(item.strategy_id),
            item.order_type, text(order and order.symbol), text(order and order.side), text(order and order.quantity),
            text(order and order.filled_quantity), text(order and order.average_price),
            text(order and order.exit_reason), item.status, text(item.execution_time_ms), item.error_message or "",
        )
    cli.show(table)
    cli.data(HistoryPageOut(
        items=[HistoryItemOut.of(item, page.orders.get(item.order_id)) for item in page.items],
        next_cursor=page.next_cursor,
    ))
    if page.next_cursor:
        cli.say(f"more: engine history --cursor {page.next_cursor} (same filters)")
    return OK
