"""Temporal Schedules per strategy: a BUY at its entry time and a SELL at its exit time.

Each strategy has up to two schedules, `strategy:{id}:entry` and `strategy:{id}:exit`, firing at the
strategy's times in Asia/Kolkata, Monday to Friday, with NSE holidays (`ENGINE_NSE_HOLIDAYS`) skipped. A short
catch-up window (`ENGINE_SCHEDULE_CATCHUP_WINDOW_SECONDS`, default 60 s) means a market order that missed its
time is dropped, not sent late; overlap policy SKIP. What a schedule starts is a `ScheduledOrderWorkflow`,
whose activity (`ScheduledOrderActivities.start_scheduled_order`) starts the order through
`OrderStarter.start_order`: a schedule that fires twice makes one order.

`StrategySchedules.sync(strategy)` makes Temporal match the strategy — created, updated when its times
change, paused while it is stopped, resumed when it runs, deleted when a time is cleared — and is
safe to call any number of times.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from enum import StrEnum

from temporalio import activity
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleCalendarSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleRange,
    ScheduleSpec,
    ScheduleState,
    ScheduleUpdate,
    ScheduleUpdateInput,
)
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from engine.errors import DuplicateOrderError
from engine.ids import OrderType
from engine.market_hours import IST, parse_holidays
from engine.reconcile import ReconcileRequest
from engine.settings import Settings
from engine.temporal import ORDER_TYPE, STRATEGY_ID, USER_ID
from starter.orders import OrderStarter
from store.errors import StoreError, StrategyNotFound
from store.records import ExitReason, StrategyRecord, StrategyStatus
from workflows.reconcile import ReconcileWorkflow, reconcile_workflow_id
from workflows.scheduled import (
    START_SCHEDULED_ORDER,
    ScheduledOrder,
    ScheduledOrderResult,
    ScheduledOrderWorkflow,
    ScheduledOutcome,
)

log = logging.getLogger(__name__)

TIME_ZONE = str(IST)
DEFAULT_CATCHUP_WINDOW_SECONDS = 60.0
MIN_CATCHUP_WINDOW_SECONDS = 10.0  # the Temporal server's own floor
MONDAY_TO_FRIDAY = ScheduleRange(1, 5)  # Temporal counts days of the week from Sunday = 0
WHOLE_DAY = {"hour": [ScheduleRange(0, 23)], "minute": [ScheduleRange(0, 59)], "second": [ScheduleRange(0, 59)]}


class Leg(StrEnum):
    ENTRY = "entry"
    EXIT = "exit"

    @property
    def order_type(self) -> OrderType:
        return OrderType.BUY if self is Leg.ENTRY else OrderType.SELL


def schedule_id(strategy_id: int, leg: Leg) -> str:
    return f"strategy:{strategy_id}:{leg.value}"


def catchup_window(settings: Settings) -> timedelta:
    """`ENGINE_SCHEDULE_CATCHUP_WINDOW_SECONDS`: how late a missed schedule may still fire."""
    seconds = float(getattr(settings, "schedule_catchup_window_seconds", DEFAULT_CATCHUP_WINDOW_SECONDS))
    if seconds < MIN_CATCHUP_WINDOW_SECONDS:
        raise ValueError(
            f"ENGINE_SCHEDULE_CATCHUP_WINDOW_SECONDS must be at least {MIN_CATCHUP_WINDOW_SECONDS:g} "
            "(Temporal's minimum), "
            f"got {seconds:g}"
        )
    return timedelta(seconds=seconds)


def trading_day_spec(at: time, holidays: Iterable[date]) -> ScheduleSpec:
    """At `at` (Asia/Kolkata) Monday to Friday, each holiday skipped for the whole day."""
    if at.tzinfo is not None:
        raise ValueError(f"a strategy's time is a time of day in Asia/Kolkata; got {at} with a time zone")
    return ScheduleSpec(
        calendars=[
            ScheduleCalendarSpec(
                second=[ScheduleRange(at.second)],
                minute=[ScheduleRange(at.minute)],
                hour=[ScheduleRange(at.hour)],
                day_of_week=[MONDAY_TO_FRIDAY],
                comment=f"{at.isoformat()} IST on weekdays",
            )
        ],
        skip=[
            ScheduleCalendarSpec(
                year=[ScheduleRange(day.year)],
                month=[ScheduleRange(day.month)],
                day_of_month=[ScheduleRange(day.day)],
                comment=f"NSE holiday {day.isoformat()}",
                **WHOLE_DAY,
            )
            for day in sorted(set(holidays))
        ],
        time_zone_name=TIME_ZONE,
    )


def should_fire(strategy: StrategyRecord) -> bool:
    """A stopped strategy's schedules are paused; a stop-loss in progress keeps them (the exit is shared)."""
    return strategy.status != StrategyStatus.STOPPED


@dataclass(frozen=True)
class ScheduleView:
    """What an operator needs to know about one schedule."""

    schedule_id: str
    leg: Leg
    at: time | None
    paused: bool
    note: str | None
    next_runs: list[datetime]  # in Asia/Kolkata; none while paused
    actions_taken: int
    missed_catchup_window: int


class StrategySchedules:
    """Creates, updates, pauses, resumes and deletes the schedules of strategies."""

    def __init__(self, client: Client, settings: Settings):
        self.client = client
        self.settings = settings
        self.holidays = parse_holidays(settings.nse_holidays)
        self.catchup_window = catchup_window(settings)

    def schedule_for(self, strategy: StrategyRecord, leg: Leg, at: time, *, note: str | None = None) -> Schedule:
        order_type = leg.order_type
        request = ScheduledOrder(
            strategy_id=strategy.id,
            order_type=order_type,
            schedule_id=schedule_id(strategy.id, leg),
            max_delay_seconds=self.catchup_window.total_seconds(),
            at=at,
        )
        paused = not should_fire(strategy)
        if paused and note is None:
            note = f"strategy {strategy.status}: {strategy.stop_reason or 'not running'}"
        return Schedule(
            action=ScheduleActionStartWorkflow(
                ScheduledOrderWorkflow.run,
                request,
                id=request.schedule_id,
                task_queue=self.settings.task_queue,
                execution_timeout=self.catchup_window + timedelta(minutes=1),
                typed_search_attributes=TypedSearchAttributes(
                    [
                        SearchAttributePair(STRATEGY_ID, str(strategy.id)),
                        SearchAttributePair(USER_ID, str(strategy.user_id)),
                        SearchAttributePair(ORDER_TYPE, order_type.value),
                    ]
                ),
                static_summary=f"scheduled {order_type} for strategy {strategy.id} ({strategy.name})",
            ),
            spec=trading_day_spec(at, self.holidays),
            policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP, catchup_window=self.catchup_window),
            state=ScheduleState(
                paused=paused,
                note=note,
            ),
        )

    async def sync(self, strategy: StrategyRecord, *, note: str | None = None) -> None:
        """Make both schedules match the strategy's times and status. Idempotent."""
        for leg, at in ((Leg.ENTRY, strategy.entry_time), (Leg.EXIT, strategy.exit_time)):
            if at is None:
                await self._delete(schedule_id(strategy.id, leg))
            else:
                await self._put(strategy, leg, self.schedule_for(strategy, leg, at, note=note))

    async def sync_all(self, strategies: Iterable[StrategyRecord]) -> int:
        """Re-apply every strategy's schedules (after a change of holidays or catch-up window)."""
        count = 0
        for strategy in strategies:
            await self.sync(strategy)
            count += 1
        return count

    async def pause(self, strategy_id: int, note: str) -> None:
        """Pause both schedules (strategy stopped, emergency stop). Missing schedules are fine."""
        for leg in Leg:
            try:
                await self.client.get_schedule_handle(schedule_id(strategy_id, leg)).pause(note=note)
            except RPCError as error:
                if error.status != RPCStatusCode.NOT_FOUND:
                    raise

    async def resume(self, strategy_id: int, note: str) -> None:
        for leg in Leg:
            try:
                await self.client.get_schedule_handle(schedule_id(strategy_id, leg)).unpause(note=note)
            except RPCError as error:
                if error.status != RPCStatusCode.NOT_FOUND:
                    raise

    async def delete(self, strategy_id: int) -> None:
        """Remove both schedules, with the strategy."""
        for leg in Leg:
            await self._delete(schedule_id(strategy_id, leg))

    async def describe(self, strategy_id: int) -> list[ScheduleView]:
        """The strategy's schedules that exist, entry first."""
        views = []
        for leg in Leg:
            try:
                description = await self.client.get_schedule_handle(schedule_id(strategy_id, leg)).describe()
            except RPCError as error:
                if error.status == RPCStatusCode.NOT_FOUND:
                    continue
                raise
            calendars = description.schedule.spec.calendars
            paused = description.schedule.state.paused
            at = None
            if calendars:
                first = calendars[0]
                at = time(first.hour[0].start, first.minute[0].start, first.second[0].start)
            views.append(
                ScheduleView(
                    schedule_id=description.id,
                    leg=leg,
                    at=at,
                    paused=paused,
                    note=description.schedule.state.note,
                    # A paused schedule runs nothing: its next times apply only once it is resumed.
                    next_runs=[] if paused else [t.astimezone(IST) for t in description.info.next_action_times[:3]],
                    actions_taken=description.info.num_actions,
                    missed_catchup_window=description.info.num_actions_missed_catchup_window,
                )
            )
        return views

    async def _put(self, strategy: StrategyRecord, leg: Leg, schedule: Schedule) -> None:
        attributes = TypedSearchAttributes(
            [SearchAttributePair(STRATEGY_ID, str(strategy.id)), SearchAttributePair(USER_ID, str(strategy.user_id))]
        )
        await put_schedule(self.client, schedule_id(strategy.id, leg), schedule, attributes)

    async def _delete(self, identifier: str) -> None:
        await delete_schedule(self.client, identifier)


async def put_schedule(
    client: Client, identifier: str, schedule: Schedule, attributes: TypedSearchAttributes | None = None
) -> None:
    """Create the schedule, or replace the one of that id: the store's settings are the truth."""
    try:
        await client.create_schedule(identifier, schedule, search_attributes=attributes)
        log.info("schedule %s created", identifier)
    except ScheduleAlreadyRunningError:

        def replace(_: ScheduleUpdateInput) -> ScheduleUpdate:
            return ScheduleUpdate(schedule=schedule)

        await client.get_schedule_handle(identifier).update(replace)
        log.info("schedule %s updated", identifier)


async def delete_schedule(client: Client, identifier: str) -> None:
    """Delete the schedule; one that is already gone is fine."""
    try:
        await client.get_schedule_handle(identifier).delete()
        log.info("schedule %s deleted", identifier)
    except RPCError as error:
        if error.status != RPCStatusCode.NOT_FOUND:
            raise


class ScheduledOrderActivities:
    """The scheduled workflow's one side effect: start the order through the ordinary entry point."""

    def __init__(self, starter: OrderStarter):
        self.starter = starter

    @activity.defn(name=START_SCHEDULED_ORDER)
    async def start_scheduled_order(self, request: ScheduledOrder) -> ScheduledOrderResult:
        try:
            strategy = await self.starter.store.get_strategy(request.strategy_id)
        except StrategyNotFound:
            return ScheduledOrderResult(
                outcome=ScheduledOutcome.SKIPPED,
                message=f"strategy {request.strategy_id} no longer exists; delete schedule {request.schedule_id}",
            )
        except StoreError as error:
            raise _activity_failure(error) from None
        if not should_fire(strategy):
            return ScheduledOrderResult(
                outcome=ScheduledOutcome.SKIPPED,
                message=f"strategy {strategy.id} is {strategy.status}: no {request.order_type} sent",
            )
        stale = stale_fire(strategy, request)
        if stale is not None:
            log.warning("schedule %s skipped: %s", request.schedule_id, stale)
            return ScheduledOrderResult(outcome=ScheduledOutcome.SKIPPED, message=stale)
        if request.order_type is not OrderType.BUY and strategy.open_quantity <= 0:
            return ScheduledOrderResult(
                outcome=ScheduledOutcome.SKIPPED,
                message=f"strategy {strategy.id} holds no position: nothing to exit, no {request.order_type} sent",
            )
        try:
            handle = await self.starter.start_order(
                strategy,
                request.order_type,
                requested_by="scheduler",
                reason=f"scheduled by {request.schedule_id}",
                exit_reason=ExitReason.SCHEDULED_EXIT if request.order_type is not OrderType.BUY else None,
            )
        except DuplicateOrderError as duplicate:
            return ScheduledOrderResult(
                outcome=ScheduledOutcome.ALREADY_HANDLED,
                order_workflow_id=duplicate.workflow_id,
                message=f"already handled by {duplicate.workflow_id} ({duplicate.status}); no second order",
            )
        except StoreError as error:
            raise _activity_failure(error) from None
        return ScheduledOrderResult(
            outcome=ScheduledOutcome.STARTED,
            order_workflow_id=handle.id,
            message=f"{request.order_type} started as {handle.id}",
        )


def stale_fire(strategy: StrategyRecord, request: ScheduledOrder) -> str | None:
    """Why this fire is not the strategy's any more (its time was changed or cleared), or None.

    The time a fire stands for is the one its schedule was made for; for a schedule made without it,
    the time of day it was due."""
    leg = Leg.ENTRY if request.order_type is OrderType.BUY else Leg.EXIT
    current = strategy.entry_time if leg is Leg.ENTRY else strategy.exit_time
    fired_for = request.at
    if fired_for is None and request.due_at is not None:
        fired_for = request.due_at.astimezone(IST).time().replace(microsecond=0)
    due = f" (due {request.due_at.astimezone(IST).isoformat(timespec='seconds')})" if request.due_at else ""
    if current is None:
        return (
            f"strategy {strategy.id} has no {leg.value} time any more: schedule {request.schedule_id}{due} "
            f"is stale, no {request.order_type} sent"
        )
    if fired_for is not None and fired_for != current:
        return (
            f"schedule {request.schedule_id} fired for {fired_for.isoformat()} IST{due}, but strategy {strategy.id}'s "
            f"{leg.value} time is {current.isoformat()}: stale, no {request.order_type} sent"
        )
    return None


def _activity_failure(error: StoreError) -> ApplicationError:
    return ApplicationError(str(error), type=type(error).__name__, non_retryable=not error.retryable)


# Reconciliation: one Schedule per broker account (docs/control.md, "Reconciliation").

RECONCILE_PRE_OPEN = time(9, 0)
RECONCILE_AFTER_CLOSE = time(15, 45)  # after Kite's MIS square-off (~15:20) and the close (15:30)
RECONCILE_CATCHUP_WINDOW = timedelta(minutes=10)  # a reconcile only reads and repairs: late is still useful


def reconcile_schedule_id(account_id: int) -> str:
    return f"reconcile:{account_id}"


def reconcile_spec(every_minutes: int, holidays: Iterable[date]) -> ScheduleSpec:
    """Before the open, every `every_minutes` from 09:15 to 15:30, and after the close; IST weekdays,
    NSE holidays skipped."""
    weekdays = [MONDAY_TO_FRIDAY]

    def at(hour: int, minutes: ScheduleRange, comment: str) -> ScheduleCalendarSpec:
        return ScheduleCalendarSpec(
            second=[ScheduleRange(0)], minute=[minutes], hour=[ScheduleRange(hour)], day_of_week=weekdays,
            comment=comment,
        )

    market_hours = [at(9, ScheduleRange(15, 59, every_minutes), "market hours")]
    market_hours += [at(hour, ScheduleRange(0, 59, every_minutes), "market hours") for hour in range(10, 15)]
    market_hours.append(at(15, ScheduleRange(0, 30, every_minutes), "market hours"))
    pre_open, after_close = RECONCILE_PRE_OPEN, RECONCILE_AFTER_CLOSE
    calendars = [
        at(pre_open.hour, ScheduleRange(pre_open.minute), "before the open"),
        *market_hours,
        at(after_close.hour, ScheduleRange(after_close.minute), "after the close: the broker's end of day"),
    ]
    base = trading_day_spec(pre_open, holidays)
    return ScheduleSpec(calendars=calendars, skip=base.skip, time_zone_name=TIME_ZONE)


class AccountReconcileSchedules:
    """Creates (or updates) and deletes the reconcile Schedule of broker accounts."""

    def __init__(self, client: Client, settings: Settings):
        self.client = client
        self.settings = settings
        self.holidays = parse_holidays(settings.nse_holidays)

    def schedule_for(self, account_id: int) -> Schedule:
        return Schedule(
            action=ScheduleActionStartWorkflow(
                ReconcileWorkflow.run,
                ReconcileRequest(account_id=account_id, requested_by="schedule"),
                id=reconcile_workflow_id(account_id, "scheduled"),
                task_queue=self.settings.task_queue,
                execution_timeout=timedelta(minutes=30),
                static_summary=f"reconcile broker account {account_id}",
            ),
            spec=reconcile_spec(self.settings.reconcile_interval_minutes, self.holidays),
            policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP, catchup_window=RECONCILE_CATCHUP_WINDOW),
        )

    async def sync(self, account_id: int) -> None:
        await put_schedule(self.client, reconcile_schedule_id(account_id), self.schedule_for(account_id))

    async def delete(self, account_id: int) -> None:
        await delete_schedule(self.client, reconcile_schedule_id(account_id))
