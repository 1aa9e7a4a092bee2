"""Reconcile one broker account: the broker's books are the truth, the store is brought to them.

One activity reads Kite's order book and positions, compares them with the store and repairs what
it can explain: orders carrying the engine's tags are adopted, orders no workflow follows any more
are settled from the broker's state (their strategy's claim released), Kite's own MIS square-off is
applied. Everything else is flagged for a person or listed. It never places an order; the only
request it sends besides reads is the cancel of an engine order (or its twin) that nothing follows.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from temporalio import activity
from temporalio.client import (
    Client,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowQueryFailedError,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.order import BrokerFactory, OrderPacer, cancel_in_slot
from brokers.base import Broker, BrokerOrder, BrokerTrade, Position, is_terminal
from brokers.errors import BrokerError, DefinitiveBrokerError, SessionExpiredError
from engine import errors
from engine.market_hours import IST
from engine.models import OrderStatusView
from engine.reconcile import Finding, ReconcileReport, ReconcileRequest, ReportLine, Verdict
from engine.settings import Settings
from store import Store
from store.errors import CredentialsMissing, FillMismatch, InvalidInput, PlacementConflict
from store.reconcile import NOT_PLACED, BrokerResolution, BrokerSquareOff
from store.records import OrderRecord, StrategyRecord
from store.types import MONEY_QUANTUM, readable

log = logging.getLogger(__name__)

# The engine's tags (engine.ids.broker_tag): 'E' and 19 characters of base32.
ENGINE_TAG = re.compile(r"E[A-Z2-7]{19}")
# Kite allows 10 requests a second on these endpoints; the reconcile keeps well under it.
READ_SPACING_SECONDS = 0.2
# After cancelling an order nothing follows, how long to wait for the broker to confirm it.
CANCEL_CONFIRM_SECONDS = 10.0
ORDER_STATUS_QUERY = "status"  # OrderWorkflow.status
QUERY_TIMEOUT = timedelta(seconds=5)
MAX_REASON_LENGTH = 2000  # the store's limit for an intervention reason
Instrument = tuple[str, str, str]  # exchange, symbol, product


def is_engine_tag(tag: str | None) -> bool:
    return tag is not None and ENGINE_TAG.fullmatch(tag) is not None


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(moment: datetime | None) -> datetime:
    """A broker time (Kite's naive IST wall clock) as an aware datetime."""
    if moment is None:
        return _now()
    return moment.replace(tzinfo=IST) if moment.tzinfo is None else moment


def _placed_at(order: BrokerOrder) -> datetime:
    return _aware(order.order_timestamp or order.exchange_update_timestamp)


def _broker_order_view(order: BrokerOrder) -> dict[str, Any]:
    return {
        "broker_order_id": order.order_id, "status": order.status, "side": order.transaction_type,
        "quantity": order.quantity, "filled_quantity": order.filled_quantity,
        "average_price": str(order.average_price), "tag": order.tag, "product": order.product,
        "symbol": f"{order.exchange}:{order.tradingsymbol}", "engine": is_engine_tag(order.tag),
        "order_timestamp": order.order_timestamp.isoformat() if order.order_timestamp else None,
    }


class _ReadPacer:
    """Spaces one run's broker reads."""

    def __init__(self) -> None:
        self._last = 0.0

    async def turn(self) -> None:
        wait = self._last + READ_SPACING_SECONDS - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        self._last = time.monotonic()


class _Run:
    """One reconcile run: its request, the lines found so far, and its broker reads."""

    def __init__(self, request: ReconcileRequest, broker: Broker):
        self.request = request
        self.broker = broker
        self.lines: list[ReportLine] = []
        self.reads = _ReadPacer()
        self.who = f"reconcile ({request.requested_by})"
        self.flags: dict[int, list[str]] = {}
        # Instruments whose figures may move under this run: an order in flight, a write during the reads.
        self.moving: set[Instrument] = set()
        self.fills: dict[str, list[BrokerTrade]] = defaultdict(list)
        self.held: dict[Instrument, int] = defaultdict(int)

    def filled_at(self, order: BrokerOrder) -> datetime:
        """When the order's last fill happened, from the trade book; else the order's own time."""
        stamps = [trade.fill_timestamp for trade in self.fills.get(order.order_id, []) if trade.fill_timestamp]
        return _aware(max(stamps) if stamps else order.exchange_update_timestamp or order.order_timestamp)

    def view(self, order: BrokerOrder) -> dict[str, Any]:
        """The broker order as a report shows it, with its fills."""
        trades = self.fills.get(order.order_id, [])
        return _broker_order_view(order) | {
            "trades": [{"trade_id": t.trade_id, "quantity": t.quantity, "price": str(t.price)} for t in trades]
        }

    def add(self, finding: Finding, verdict: Verdict, message: str, **fields: Any) -> ReportLine:
        line = ReportLine(finding=finding, verdict=verdict, message=message, **fields)
        self.lines.append(line)
        return line

    def would(self, action: str) -> str:
        return f"would {action} (dry run)" if self.request.dry_run else action


class ReconcileActivities:
    def __init__(self, store: Store, brokers: BrokerFactory, client: Client, settings: Settings, pacer: OrderPacer):
        self.store = store
        self.brokers = brokers
        self.client = client
        self.settings = settings
        self.pacer = pacer

    @activity.defn(name="reconcile_account")
    async def reconcile_account(self, request: ReconcileRequest) -> ReconcileReport:
        started = _now()
        run = _Run(request, await self._broker(request.account_id))
        before = {s.id: s.version for s in await self.store.account_strategies(request.account_id)}
        book = await self._read(run, run.broker.orders)
        positions = await self._read(run, run.broker.positions)
        for trade in await self._read(run, run.broker.trades):
            run.fills[trade.order_id].append(trade)
        # A strategy written to while the broker was read may not match what was read: compared next run.
        read = await self.store.account_strategies(request.account_id)
        for strategy in read:
            if before.get(strategy.id) != strategy.version:
                run.moving.add(_instrument(strategy))
        # CNC bought on earlier days is in the demat holdings, no longer in the day's positions.
        if any(strategy.product == "CNC" for strategy in read):
            for holding in await self._read(run, run.broker.holdings):
                run.held[(holding.exchange, holding.tradingsymbol, "CNC")] += holding.quantity
        await self._reconcile_orders(run, book)
        strategies = await self.store.account_strategies(request.account_id)
        if await self._apply_square_offs(run, strategies, book, positions):
            strategies = await self.store.account_strategies(request.account_id)
        for order in book:
            if not is_engine_tag(order.tag):
                run.add(Finding.UNTAGGED_ORDER, Verdict.LISTED,
                        f"{order.transaction_type} {order.quantity} {order.exchange}:{order.tradingsymbol} "
                        f"{order.product} placed without the engine's tags ({order.status}); left alone",
                        broker_order_id=order.order_id, details=run.view(order))
        await self._compare_positions(run, strategies, book, positions)
        await self._mark_flagged(run)
        report = ReconcileReport(
            account_id=request.account_id, dry_run=request.dry_run, requested_by=request.requested_by,
            started_at=started, finished_at=_now(), lines=run.lines,
            new_needs_person=await self._not_reported_before(request.account_id, run.lines),
        )
        counts = {"matched": report.matched, "repaired": report.repaired, "needs_person": report.needs_person}
        report.report_id = await self.store.save_reconcile_report(
            request.account_id, report.model_dump(mode="json", exclude={"report_id"}), counts
        )
        log.info("reconciled %s", report.summary())
        return report

    async def _not_reported_before(self, account_id: int, lines: list[ReportLine]) -> list[ReportLine]:
        """This run's NEEDS_PERSON lines missing from the account's last real (not dry) report."""
        previous = next((r for r in await self.store.reconcile_reports(account_id, limit=10) if not r["dry_run"]), None)
        seen = set()
        if previous is not None:
            seen = {ReportLine.model_validate(line).identity for line in previous["lines"]}
        return [line for line in lines if line.verdict is Verdict.NEEDS_PERSON and line.identity not in seen]

    @activity.defn(name="reconcile_accounts")
    async def reconcile_accounts(self) -> list[int]:
        """Every broker account's id: what `engine reconcile` without --account goes through."""
        return await self.store.broker_account_ids()

    # Orders

    async def _reconcile_orders(self, run: _Run, book: list[BrokerOrder]) -> None:
        at_broker: dict[str, list[BrokerOrder]] = defaultdict(list)
        for order in book:
            if is_engine_tag(order.tag):
                assert order.tag is not None
                at_broker[order.tag].append(order)
        known = await self.store.orders_to_reconcile(run.request.account_id, sorted(at_broker))
        known_tags = {order.tag for order in known}
        for tag in sorted(set(at_broker) - known_tags):
            for order in at_broker[tag]:
                run.add(Finding.UNKNOWN_ENGINE_TAG, Verdict.NEEDS_PERSON,
                        f"broker order {order.order_id} carries the engine's tag {tag}, which no order of the "
                        "store holds; check where it came from",
                        broker_order_id=order.order_id, details=run.view(order))
        for record in known:
            orders = sorted(at_broker.get(record.tag, []), key=lambda o: (_placed_at(o), o.order_id))
            primary = next((o for o in orders if o.order_id == record.broker_order_id), orders[0] if orders else None)
            for twin in (o for o in orders if o is not primary):
                await self._flag_twin(run, record, twin)
            await self._reconcile_order(run, record, primary)

    async def _reconcile_order(self, run: _Run, record: OrderRecord, at_broker: BrokerOrder | None) -> None:
        line = {"strategy_id": record.strategy_id, "workflow_id": record.workflow_id}
        settled = record.outcome is not None and (is_terminal(record.status) or record.broker_order_id is None)
        if settled and at_broker is not None and record.broker_order_id == at_broker.order_id:
            if (at_broker.status, at_broker.filled_quantity) == (record.status, record.filled_quantity):
                run.add(Finding.ORDER_MATCHED, Verdict.MATCHED,
                        f"{record.order_type} order {at_broker.status}, {record.filled_quantity} filled, "
                        "as at the broker",
                        broker_order_id=at_broker.order_id, **line)
                return
            reason = (f"order {record.workflow_id} finished {record.status} with {record.filled_quantity} filled; "
                      f"the broker shows {at_broker.status} with {at_broker.filled_quantity}")
            run.add(Finding.ORDER_DIFFERS, Verdict.NEEDS_PERSON, reason, broker_order_id=at_broker.order_id,
                    details=run.view(at_broker), **line)
            await self._flag(run, record.strategy_id, reason)
            return
        if settled and at_broker is None:
            return
        if record.outcome is None and await self._followed(record):
            run.moving.add((record.exchange, record.symbol, await self._product_of(record)))
            run.add(Finding.ORDER_IN_FLIGHT, Verdict.LISTED,
                    f"{record.order_type} order in flight; its workflow follows it", **line,
                    broker_order_id=record.broker_order_id)
            return
        if at_broker is None:
            await self._close_unplaced(run, record, line)
            return
        if not at_broker.is_terminal:
            at_broker = await self._cancel_unfollowed(run, record, at_broker, line)
            if at_broker is None:
                return
        await self._resolve(run, record, at_broker, line)

    async def _close_unplaced(self, run: _Run, record: OrderRecord, line: dict[str, Any]) -> None:
        if record.broker_order_id is not None:
            reason = (f"order {record.workflow_id} is broker order {record.broker_order_id}, which is not in "
                      "today's order book; check it at the broker")
            run.add(Finding.ORDER_DIFFERS, Verdict.NEEDS_PERSON, reason, broker_order_id=record.broker_order_id,
                    **line)
            await self._flag(run, record.strategy_id, reason)
            return
        sent = record.placement_sent_at
        if sent is not None and _now() - sent < timedelta(seconds=self.settings.retry_window_seconds):
            run.add(Finding.ORDER_IN_FLIGHT, Verdict.LISTED,
                    "its placement request may still reach the broker; looked at again next run", **line)
            return
        action = run.would("closed FAILED and the strategy's claim released")
        if not run.request.dry_run:
            why = "no workflow follows it and the broker never received it"
            if not await self.store.close_unplaced_order(record.workflow_id, run.who, why):
                return
        run.add(Finding.ORDER_NOT_PLACED, Verdict.REPAIRED,
                f"{record.order_type} order {record.workflow_id}: no workflow follows it and no broker order "
                f"carries its tag {record.tag}: {action}", **line)
        await self._flag_short_fill(run, record, NOT_PLACED, 0)

    async def _flag_short_fill(self, run: _Run, record: OrderRecord, status: str, filled: int) -> None:
        """As the order's workflow would have: a partial fill, or an exit that left the position open,
        is for a person."""
        is_exit = record.order_type != "BUY"
        if filled >= record.quantity or (filled == 0 and not is_exit):
            return
        reason = (f"{record.order_type} order {record.workflow_id} ended {status} "
                  f"with {filled} of {record.quantity} filled")
        await self._flag(run, record.strategy_id, reason + ("; the position is still open" if is_exit else ""))

    async def _cancel_unfollowed(
        self, run: _Run, record: OrderRecord, at_broker: BrokerOrder, line: dict[str, Any]
    ) -> BrokerOrder | None:
        """An engine order open at the broker that nothing follows: cancel the rest, as its workflow would
        have at its timeout, and wait for the broker's final state. None if it did not come."""
        if run.request.dry_run:
            run.add(Finding.ORDER_RESOLVED, Verdict.REPAIRED,
                    f"{record.order_type} order is {at_broker.status} at the broker and no workflow follows it: "
                    f"{run.would('cancel the rest and settle it from the broker')}",
                    broker_order_id=at_broker.order_id, details=run.view(at_broker), **line)
            return None
        final = await self._cancel_and_wait(run, at_broker)
        if final is None:
            reason = (f"order {record.workflow_id} is still {at_broker.status} at the broker (order "
                      f"{at_broker.order_id}) after a cancel; no workflow follows it")
            run.add(Finding.ORDER_STILL_OPEN, Verdict.NEEDS_PERSON, reason, broker_order_id=at_broker.order_id,
                    details=run.view(at_broker), **line)
            await self._flag(run, record.strategy_id, reason)
        return final

    async def _resolve(self, run: _Run, record: OrderRecord, at_broker: BrokerOrder, line: dict[str, Any]) -> None:
        adopted = record.broker_order_id is None
        finding = Finding.ORDER_ADOPTED if adopted else Finding.ORDER_RESOLVED
        was = "unplaced" if adopted else ("UNRESOLVED" if record.outcome is not None else "unfollowed")
        what = (f"{record.order_type} order ({was}) settled from broker order {at_broker.order_id}: "
                f"{at_broker.status}, {at_broker.filled_quantity} of {record.quantity} filled"
                + (f" at {at_broker.average_price}" if at_broker.filled_quantity else ""))
        if run.request.dry_run:
            run.add(finding, Verdict.REPAIRED, f"{what}: {run.would('apply')}", broker_order_id=at_broker.order_id,
                    details=run.view(at_broker), **line)
            return
        resolution = BrokerResolution(
            broker_order_id=at_broker.order_id, status=at_broker.status, filled_quantity=at_broker.filled_quantity,
            average_price=at_broker.average_price, filled_at=run.filled_at(at_broker), by=run.who,
            why=f"the order was {was} while the broker shows {at_broker.status}",
        )
        try:
            changed = await self.store.resolve_order_from_broker(record.workflow_id, resolution)
        except (FillMismatch, PlacementConflict, InvalidInput) as mismatch:
            run.add(Finding.ORDER_DIFFERS, Verdict.NEEDS_PERSON, str(mismatch), broker_order_id=at_broker.order_id,
                    details=run.view(at_broker), **line)
            await self._flag(run, record.strategy_id, str(mismatch))
            return
        if changed:
            run.add(finding, Verdict.REPAIRED, what, broker_order_id=at_broker.order_id,
                    details=run.view(at_broker), **line)
            await self._flag_short_fill(run, record, at_broker.status, at_broker.filled_quantity)
        else:
            run.add(Finding.ORDER_MATCHED, Verdict.MATCHED, f"{record.order_type} order agrees with the broker",
                    broker_order_id=at_broker.order_id, **line)

    async def _flag_twin(self, run: _Run, record: OrderRecord, twin: BrokerOrder) -> None:
        reason = (f"broker order {twin.order_id} is a twin of order {record.workflow_id} (same tag {record.tag}); "
                  "check the position at the broker")
        action = ""
        if not twin.is_terminal:
            action = "; " + run.would("cancelled it")
            if not run.request.dry_run:
                await self._cancel_and_wait(run, twin)
        run.add(Finding.TWIN_ORDER, Verdict.NEEDS_PERSON,
                f"{reason}: {twin.status}, {twin.filled_quantity} filled{action}",
                strategy_id=record.strategy_id, workflow_id=record.workflow_id, broker_order_id=twin.order_id,
                details=run.view(twin))
        await self._flag(run, record.strategy_id, reason)

    # Kite's own end of day

    async def _apply_square_offs(
        self, run: _Run, strategies: list[StrategyRecord], book: list[BrokerOrder], positions: list[Position]
    ) -> bool:
        """Open MIS positions the broker closed itself: flat at the broker, closed by SELLs that carry
        none of the engine's tags, placed at or after the square-off time."""
        net = _net_positions(positions)
        applied = False
        for instrument, group in _by_instrument(strategies).items():
            exchange, symbol, product = instrument
            holding = [s for s in group if s.open_quantity > 0]
            if product != "MIS" or not holding or net.get(instrument, 0) != 0:
                continue
            if instrument in run.moving or any(s.active_order_workflow_id for s in group):
                continue
            closing = [o for o in book if o.status == "COMPLETE" and o.transaction_type == "SELL"
                       and (o.exchange, o.tradingsymbol, o.product) == instrument and not is_engine_tag(o.tag)
                       and _placed_at(o).astimezone(IST).time() >= self.settings.broker_square_off_time]
            sold = sum(o.filled_quantity for o in closing)
            if sold < sum(s.open_quantity for s in holding):
                continue
            price = readable((sum((o.average_price * o.filled_quantity for o in closing), Decimal(0)) / sold)
                             .quantize(MONEY_QUANTUM, rounding=ROUND_HALF_EVEN))
            first = closing[0]
            for strategy in holding:
                message = (f"{exchange}:{symbol} MIS squared off by the broker: {strategy.open_quantity} at {price} "
                           f"(broker order {first.order_id}), exit reason BROKER_SQUARE_OFF")
                details = {"orders": [run.view(o) for o in closing], "entry_price": str(strategy.entry_price)}
                if run.request.dry_run:
                    run.add(Finding.BROKER_SQUARE_OFF, Verdict.REPAIRED, f"{message}: {run.would('apply')}",
                            strategy_id=strategy.id, broker_order_id=first.order_id, details=details)
                    continue
                order = await self.store.apply_broker_square_off(BrokerSquareOff(
                    strategy_id=strategy.id, broker_order_id=first.order_id, average_price=price,
                    filled_at=run.filled_at(first), by=run.who,
                    why="the broker squared off the open MIS position before the close"))
                if order is not None:
                    applied = True
                    run.add(Finding.BROKER_SQUARE_OFF, Verdict.REPAIRED, message, strategy_id=strategy.id,
                            workflow_id=order.workflow_id, broker_order_id=first.order_id, details=details)
        return applied

    # Positions

    async def _compare_positions(
        self, run: _Run, strategies: list[StrategyRecord], book: list[BrokerOrder], positions: list[Position]
    ) -> None:
        net = _net_positions(positions)
        groups = _by_instrument(strategies)
        for instrument in sorted(set(groups) | set(net)):
            exchange, symbol, product = instrument
            name = f"{exchange}:{symbol} {product}"
            group = groups.get(instrument, [])
            at_broker = net.get(instrument, 0)
            held = {str(s.id): s.open_quantity for s in group}
            in_store = sum(held.values())
            if not group:
                if at_broker:
                    run.add(Finding.POSITION_UNOWNED, Verdict.LISTED,
                            f"{name}: {at_broker} net at the broker, traded by no strategy of this account",
                            details={"broker": at_broker})
                continue
            held_in_demat = run.held.get(instrument, 0)
            at_broker += held_in_demat
            if in_store == 0 and at_broker == 0:
                continue
            if held_in_demat and in_store == 0:
                continue  # the owner's own delivery shares: no strategy claims them
            if instrument in run.moving or any(s.active_order_workflow_id for s in group):
                run.add(Finding.POSITION_IN_FLIGHT, Verdict.LISTED,
                        f"{name}: an order is in flight; compared on the next run",
                        details={"store": held, "broker": at_broker})
                continue
            if product == "CNC" and held_in_demat and in_store < at_broker:
                run.add(Finding.HOLDINGS_BEYOND_STRATEGIES, Verdict.LISTED,
                        f"{name}: the strategies hold {in_store}, the account {at_broker} "
                        f"({held_in_demat} in the demat holdings); the rest is the owner's own",
                        details={"store": held, "broker": at_broker, "holdings": held_in_demat})
                continue
            if in_store == at_broker:
                run.add(Finding.POSITION_MATCHED, Verdict.MATCHED, f"{name}: {in_store} held, as at the broker",
                        details={"store": held, "broker": at_broker, "holdings": held_in_demat})
                continue
            reason = f"{name}: the strategies hold {in_store} ({_held_text(held)}), the broker's net is {at_broker}"
            explaining = [run.view(o) for o in book if (o.exchange, o.tradingsymbol, o.product) == instrument]
            for strategy in group:
                run.add(Finding.POSITION_DIFFERS, Verdict.NEEDS_PERSON, reason, strategy_id=strategy.id,
                        details={"store": held, "broker": at_broker, "orders": explaining})
                await self._flag(run, strategy.id, reason)

    # Helpers

    async def _flag(self, run: _Run, strategy_id: int, reason: str) -> None:
        """Note a reason to mark the strategy for a person; `_mark_flagged` marks it once per run."""
        reasons = run.flags.setdefault(strategy_id, [])
        if reason not in reasons:
            reasons.append(reason)

    async def _mark_flagged(self, run: _Run) -> None:
        """One reason per strategy, all of this run's findings in it: a repeated run with the same
        findings finds it already marked and changes nothing."""
        if run.request.dry_run:
            return
        for strategy_id, reasons in run.flags.items():
            reason = ("reconcile: " + "; ".join(reasons))[:MAX_REASON_LENGTH]
            strategy = await self.store.get_strategy(strategy_id)
            if strategy.needs_intervention and reason in (strategy.intervention_reason, strategy.last_error):
                continue
            await self.store.mark_intervention(strategy_id, reason)

    async def _product_of(self, record: OrderRecord) -> str:
        return (await self.store.get_strategy(record.strategy_id)).product

    async def _followed(self, record: OrderRecord) -> bool:
        """Whether a workflow still follows the order: its own run, or a run that replaced it by a reset
        to after the placement (that run replays the order's steps and follows the same broker order)."""
        workflow_id, _, run_id = record.workflow_id.rpartition("/")
        if not workflow_id:
            return False
        own = await self._describe(workflow_id, run_id)
        if own is None or own.status == WorkflowExecutionStatus.RUNNING:
            return own is not None
        latest = await self._describe(workflow_id, None)
        if latest is None or latest.run_id == run_id or latest.status != WorkflowExecutionStatus.RUNNING:
            return False
        try:
            view = await self.client.get_workflow_handle(workflow_id, run_id=latest.run_id).query(
                ORDER_STATUS_QUERY, result_type=OrderStatusView, rpc_timeout=QUERY_TIMEOUT
            )
        except (RPCError, WorkflowQueryFailedError) as failed:
            log.info("order %s: the run that replaced it does not answer (%s); left for the next run",
                     record.workflow_id, failed)
            return True
        # Before its placement the new run may still adopt this order by its tag: leave it to that run.
        return view.broker_order_id is None or view.broker_order_id == record.broker_order_id

    async def _describe(self, workflow_id: str, run_id: str | None) -> WorkflowExecutionDescription | None:
        try:
            return await self.client.get_workflow_handle(workflow_id, run_id=run_id).describe()
        except RPCError as failed:
            if failed.status == RPCStatusCode.NOT_FOUND:
                return None
            raise

    async def _cancel_and_wait(self, run: _Run, order: BrokerOrder) -> BrokerOrder | None:
        try:
            await cancel_in_slot(self.pacer, run.request.account_id, run.broker, order.order_id, order.variety)
        except DefinitiveBrokerError as refused:
            log.info("cancel of %s refused: %s", order.order_id, refused.broker_message or refused.message)
        deadline = time.monotonic() + CANCEL_CONFIRM_SECONDS
        while time.monotonic() < deadline:
            latest = await self._read(run, lambda: run.broker.order_status(order.order_id))
            if latest.is_terminal:
                return latest
            activity.heartbeat()
        return None

    async def _read(self, run: _Run, call: Any) -> Any:
        await run.reads.turn()
        activity.heartbeat()
        try:
            return await call()
        except SessionExpiredError as expired:
            raise ApplicationError(
                f"broker session expired, re-login needed: {expired.broker_message or expired.message}",
                type=errors.SESSION_EXPIRED, non_retryable=True,
            ) from None
        except BrokerError as failed:
            raise ApplicationError(f"broker read failed: {failed.broker_message or failed.message}",
                                   type=errors.BROKER_AMBIGUOUS) from None

    async def _broker(self, account_id: int) -> Broker:
        try:
            credentials = await self.store.broker_credentials(account_id)
        except CredentialsMissing as missing:
            raise ApplicationError(str(missing), type=errors.SESSION_EXPIRED, non_retryable=True) from None
        return self.brokers.for_credentials(credentials.api_key, credentials.access_token)


def _instrument(strategy: StrategyRecord) -> Instrument:
    return (strategy.exchange, strategy.symbol, strategy.product)


def _by_instrument(strategies: Iterable[StrategyRecord]) -> dict[Instrument, list[StrategyRecord]]:
    groups: dict[Instrument, list[StrategyRecord]] = defaultdict(list)
    for strategy in strategies:
        groups[_instrument(strategy)].append(strategy)
    return groups


def _net_positions(positions: Iterable[Position]) -> dict[Instrument, int]:
    net: dict[Instrument, int] = defaultdict(int)
    for position in positions:
        net[(position.exchange, position.tradingsymbol, position.product)] += position.quantity
    return dict(net)


def _held_text(held: dict[str, int]) -> str:
    return ", ".join(f"strategy {strategy_id}: {quantity}" for strategy_id, quantity in held.items())
