"""Temporal Schedules per strategy on a real dev server: their spec, their lifecycle with the strategy, and
firing (by trigger) through ScheduledOrderWorkflow to one order at the paper broker."""

from __future__ import annotations

import asyncio
import time as clock
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, time, timedelta
from typing import Any

import httpx
import pytest
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionExecutionStartWorkflow,
    ScheduleActionStartWorkflow,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    ScheduleRange,
    ScheduleSpec,
)
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Replayer, Worker

from apps.api.main import create_app
from apps.worker import WORKFLOWS, build_worker
from brokers.paper.testing import PaperBrokerServer
from engine.ids import OrderType
from engine.models import OrderResult, Outcome
from engine.settings import Settings
from engine.temporal import data_converter
from starter.deps import Services
from starter.schedules import (
    Leg,
    StrategySchedules,
    catchup_window,
    schedule_id,
    trading_day_spec,
)
from store import HistoryQuery, Store
from store.records import StrategyRecord, StrategySpec
from tests.fixtures.ports import free_port
from tests.fixtures.temporal import Engine, make_engine
from tests.test_api import api_user, schedules_removed_afterwards
from workflows.scheduled import ScheduledOrder, ScheduledOrderResult, ScheduledOrderWorkflow, ScheduledOutcome

HOLIDAYS = "2026-01-26,2026-03-03"
WAIT_SECONDS = 20.0


def scheduling_worker(engine: Engine) -> Worker:
    """The engine's worker, which runs scheduled orders too."""
    worker, _ = build_worker(engine.client, engine.store, engine.settings, events=engine.events)
    return worker


@pytest.fixture
async def scheduling(temporal_client: Client, engine_store: Store, paper: PaperBrokerServer) -> AsyncIterator[Engine]:
    """An engine whose worker also runs scheduled orders; afterwards its schedules are removed and every
    workflow it ran is replayed against today's code."""
    async for engine in make_engine(temporal_client, engine_store, paper, start_worker=False, nse_holidays=HOLIDAYS):
        async with schedules_removed_afterwards(engine), scheduling_worker(engine):
            yield engine
        await replay_task_queue(engine)


async def replay_task_queue(engine: Engine) -> None:
    replayer = Replayer(workflows=WORKFLOWS, data_converter=engine.client.data_converter)
    async for execution in engine.client.list_workflows(f'TaskQueue="{engine.settings.task_queue}"'):
        handle = engine.client.get_workflow_handle(execution.id, run_id=execution.run_id)
        await replayer.replay_workflow(await handle.fetch_history())


async def schedule_exists(client: Client, identifier: str) -> bool:
    try:
        await client.get_schedule_handle(identifier).describe()
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return True


async def scheduled_results(client: Client, identifier: str, count: int) -> list[ScheduledOrderResult]:
    """The results of the first `count` workflows the schedule started."""
    handle = client.get_schedule_handle(identifier)
    deadline = clock.monotonic() + WAIT_SECONDS
    while True:
        description = await handle.describe()
        started = [
            action.action for action in description.info.recent_actions
            if isinstance(action.action, ScheduleActionExecutionStartWorkflow)
        ]
        if len(started) >= count or clock.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert len(started) >= count, f"{identifier} started {started}, expected {count}"
    return [
        await client.get_workflow_handle(
            run.workflow_id, run_id=run.first_execution_run_id, result_type=ScheduledOrderResult
        ).result()
        for run in started
    ]


def broker_orders(engine: Engine) -> list[dict[str, Any]]:
    return engine.paper.control.orders()


async def test_the_spec_fires_on_weekdays_in_kolkata_and_skips_holidays(scheduling: Engine) -> None:
    strategy = await scheduling.strategy("INFY")  # entry 09:20, exit 15:10
    schedules = StrategySchedules(scheduling.client, scheduling.settings)

    await schedules.sync(strategy)

    entry = await scheduling.client.get_schedule_handle(f"strategy:{strategy.id}:entry").describe()
    spec = entry.schedule.spec
    assert spec.time_zone_name == "Asia/Kolkata"
    [calendar] = spec.calendars
    assert (calendar.hour, calendar.minute, calendar.second) == (
        (ScheduleRange(9, 9, 1),), (ScheduleRange(20, 20, 1),), (ScheduleRange(0, 0, 1),)
    )
    assert calendar.day_of_week == (ScheduleRange(1, 5, 1),)  # Monday to Friday
    assert [(s.year, s.month, s.day_of_month) for s in spec.skip] == [
        ((ScheduleRange(2026, 2026, 1),), (ScheduleRange(1, 1, 1),), (ScheduleRange(26, 26, 1),)),
        ((ScheduleRange(2026, 2026, 1),), (ScheduleRange(3, 3, 1),), (ScheduleRange(3, 3, 1),)),
    ]
    assert all(s.hour == (ScheduleRange(0, 23, 1),) and s.minute == (ScheduleRange(0, 59, 1),) for s in spec.skip)
    policy = entry.schedule.policy
    assert (policy.overlap, policy.catchup_window) == (ScheduleOverlapPolicy.SKIP, timedelta(seconds=60))
    action = entry.schedule.action
    assert isinstance(action, ScheduleActionStartWorkflow)
    assert (action.workflow, action.task_queue) == ("ScheduledOrderWorkflow", scheduling.settings.task_queue)
    exit_ = await scheduling.client.get_schedule_handle(f"strategy:{strategy.id}:exit").describe()
    assert exit_.schedule.spec.calendars[0].hour == (ScheduleRange(15, 15, 1),)
    for moment in entry.info.next_action_times:  # 09:20 IST = 03:50 UTC, never on a weekend
        assert (moment.hour, moment.minute) == (3, 50) and moment.weekday() < 5


def test_a_spec_keeps_seconds_refuses_time_zones_and_the_catchup_window_has_a_floor() -> None:
    spec = trading_day_spec(time(9, 20, 30), [])
    assert spec.skip == [] and spec.calendars[0].second == [ScheduleRange(30)]
    with pytest.raises(ValueError, match="time of day in Asia/Kolkata"):
        trading_day_spec(time(9, 20, tzinfo=UTC), [])
    settings = Settings()
    assert catchup_window(settings) == timedelta(seconds=60)
    object.__setattr__(settings, "schedule_catchup_window_seconds", 5)
    with pytest.raises(ValueError, match="at least 10"):
        catchup_window(settings)


async def test_schedules_are_paused_resumed_updated_and_deleted_with_the_strategy(scheduling: Engine) -> None:
    store, client = scheduling.store, scheduling.client
    services = Services.assemble(scheduling.settings, client, store)
    strategy = await scheduling.strategy("TCS", running=False)
    await services.sync_schedules(strategy)

    async def states() -> list[tuple[str, time | None, bool]]:
        return [(view.leg.value, view.at, view.paused) for view in await services.schedules.describe(strategy.id)]

    created = await states()
    await services.start_strategy(strategy.id, "test start")
    resumed = await states()
    moved = await store.update_strategy(strategy.id, entry_time=time(9, 30))
    await services.sync_schedules(moved)
    updated = await states()
    await services.stop_strategy(strategy.id, "going home")
    [entry_view, _] = await services.schedules.describe(strategy.id)
    await services.sync_schedules(await store.update_strategy(strategy.id, exit_time=None))
    without_exit = await states()
    await services.schedules.pause(strategy.id, "by hand")
    paused_by_hand = await states()
    await services.schedules.resume(strategy.id, "by hand again")
    resumed_by_hand = await states()
    await services.schedules.delete(strategy.id)
    other = await scheduling.strategy("WIPRO")
    synced = await services.schedules.sync_all([other, await store.get_strategy(strategy.id)])
    after_sync_all = await states()

    assert created == [("entry", time(9, 20), True), ("exit", time(15, 10), True)]
    assert resumed == [("entry", time(9, 20), False), ("exit", time(15, 10), False)]
    assert updated == [("entry", time(9, 30), False), ("exit", time(15, 10), False)]
    assert entry_view.paused and entry_view.note is not None and "going home" in entry_view.note
    assert without_exit == [("entry", time(9, 30), True)]
    assert paused_by_hand == [("entry", time(9, 30), True)] and resumed_by_hand == [("entry", time(9, 30), False)]
    assert synced == 2 and after_sync_all == [("entry", time(9, 30), True)]  # back as the stopped strategy has it
    assert await schedule_exists(client, schedule_id(other.id, Leg.EXIT))
    await services.schedules.delete(strategy.id)
    assert not await schedule_exists(client, schedule_id(strategy.id, Leg.ENTRY))
    assert not await schedule_exists(client, schedule_id(strategy.id, Leg.EXIT))


async def test_a_schedule_that_fires_twice_makes_one_order(scheduling: Engine) -> None:
    scheduling.paper.control.set_price("INFY", "1500")
    strategy = await scheduling.strategy("INFY", quantity=3)
    schedules = StrategySchedules(scheduling.client, scheduling.settings)
    await schedules.sync(strategy)
    entry = scheduling.client.get_schedule_handle(schedule_id(strategy.id, Leg.ENTRY))
    request = ScheduledOrder(strategy_id=strategy.id, order_type=OrderType.BUY, schedule_id=entry.id)

    # Two firings at the same moment, as two schedule actions start them (each its own workflow id).
    racing = await asyncio.gather(
        *(
            scheduling.client.execute_workflow(
                ScheduledOrderWorkflow.run,
                request,
                id=f"{entry.id}-race-{n}",
                task_queue=scheduling.settings.task_queue,
            )
            for n in (1, 2)
        )
    )
    order_workflow_id = f"order:{strategy.id}:1:entry"
    await scheduling.client.get_workflow_handle(order_workflow_id).result()
    # Then the schedule itself fires, twice, after the order has filled.
    await entry.trigger()
    await entry.trigger()
    fired = await scheduled_results(scheduling.client, entry.id, 1)

    assert sorted(result.outcome for result in racing) == [ScheduledOutcome.ALREADY_HANDLED, ScheduledOutcome.STARTED]
    assert {result.outcome for result in fired} == {ScheduledOutcome.ALREADY_HANDLED}
    assert {result.order_workflow_id for result in [*racing, *fired]} == {order_workflow_id}
    assert "no second order" in fired[0].message
    assert len(broker_orders(scheduling)) == 1
    after = await scheduling.store.get_strategy(strategy.id)
    assert (after.position, after.open_quantity) == ("LONG", 3)


async def test_the_exit_schedule_sells_the_open_position(scheduling: Engine) -> None:
    strategy = await scheduling.strategy("SBIN", quantity=2)
    await (await scheduling.starter.place_buy_order(strategy)).result()
    schedules = StrategySchedules(scheduling.client, scheduling.settings)
    await schedules.sync(await scheduling.store.get_strategy(strategy.id))
    exit_ = scheduling.client.get_schedule_handle(schedule_id(strategy.id, Leg.EXIT))

    await exit_.trigger()
    [result] = await scheduled_results(scheduling.client, exit_.id, 1)
    assert result.outcome is ScheduledOutcome.STARTED and result.order_workflow_id is not None
    sold = await scheduling.client.get_workflow_handle(result.order_workflow_id, result_type=OrderResult).result()

    assert (sold.order_type, sold.outcome, sold.filled_quantity) == (OrderType.SELL, Outcome.FILLED, 2)
    after = await scheduling.store.get_strategy(strategy.id)
    assert (after.position, after.exit_reason, after.position_cycle) == ("FLAT", "SCHEDULED_EXIT", 2)


async def test_a_stopped_strategy_or_a_missed_time_sends_nothing(scheduling: Engine) -> None:
    stopped = await scheduling.strategy("ITC", running=False)
    running = await scheduling.strategy("LT")

    async def run_scheduled(strategy: StrategyRecord, max_delay_seconds: float) -> ScheduledOrderResult:
        return await scheduling.client.execute_workflow(
            ScheduledOrderWorkflow.run,
            ScheduledOrder(
                strategy_id=strategy.id, order_type=OrderType.BUY, schedule_id=schedule_id(strategy.id, Leg.ENTRY),
                max_delay_seconds=max_delay_seconds,
            ),
            id=f"scheduled-test-{strategy.id}-{max_delay_seconds}",
            task_queue=scheduling.settings.task_queue,
        )

    on_stopped = await run_scheduled(stopped, 60)
    too_late = await run_scheduled(running, 0.000001)

    assert on_stopped.outcome is ScheduledOutcome.SKIPPED and "STOPPED" in on_stopped.message
    assert too_late.outcome is ScheduledOutcome.SKIPPED and "not sent late" in too_late.message
    assert broker_orders(scheduling) == []  # the paper broker was reset for this test
    for strategy in (stopped, running):
        assert (await scheduling.store.order_history(HistoryQuery(strategy_id=strategy.id))).items == []


async def test_a_time_change_the_schedules_cannot_follow_is_undone(engine: Engine) -> None:
    alice = await api_user(engine, "alice")
    strategy = await engine.store.create_strategy(
        StrategySpec(user_id=alice.user.id, broker_account_id=alice.account_id, name=f"moved-{uuid.uuid4().hex[:6]}",
                     symbol="INFY", quantity=2, entry_time=time(9, 20), exit_time=time(15, 10))
    )
    async with schedules_removed_afterwards(engine):
        schedules = StrategySchedules(engine.client, engine.settings)
        await schedules.sync(strategy)
        nowhere = await Client.connect(f"127.0.0.1:{free_port()}", lazy=True, data_converter=data_converter({}))
        app = create_app(engine.settings, nowhere, engine.store)
        path = f"/strategies/{strategy.id}"
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as api:
            moved = await api.patch(path, json={"entry_time": "09:45", "quantity": 4}, headers=alice.headers)
            cleared = await api.patch(path, json={"exit_time": None}, headers=alice.headers)
        after = await engine.store.get_strategy(strategy.id)
        fired_at = [view.at for view in await schedules.describe(strategy.id)]

    assert [moved.status_code, cleared.status_code] == [503, 503]
    assert "Temporal is unreachable" in moved.json()["detail"]
    # The store keeps what the schedules fire at: the change was undone, all of it.
    assert (after.entry_time, after.exit_time, after.quantity) == (time(9, 20), time(15, 10), strategy.quantity)
    assert fired_at == [time(9, 20), time(15, 10)]


async def test_a_fire_for_a_time_the_strategy_no_longer_has_sends_nothing(scheduling: Engine) -> None:
    strategy = await scheduling.strategy("INFY", quantity=2)  # entry 09:20, exit 15:10
    await (await scheduling.starter.place_buy_order(strategy)).result()
    schedules = StrategySchedules(scheduling.client, scheduling.settings)
    await schedules.sync(await scheduling.store.get_strategy(strategy.id))
    # The store moved on without the schedules (their update failed): entry 09:30, no exit time.
    await scheduling.store.update_strategy(strategy.id, entry_time=time(9, 30), exit_time=None)
    entry = scheduling.client.get_schedule_handle(schedule_id(strategy.id, Leg.ENTRY))
    exit_ = scheduling.client.get_schedule_handle(schedule_id(strategy.id, Leg.EXIT))
    sent_before = len(broker_orders(scheduling))

    await entry.trigger()
    await exit_.trigger()
    [on_entry] = await scheduled_results(scheduling.client, entry.id, 1)
    [on_exit] = await scheduled_results(scheduling.client, exit_.id, 1)

    assert on_entry.outcome is ScheduledOutcome.SKIPPED and on_entry.order_workflow_id is None
    assert "fired for 09:20:00 IST" in on_entry.message and "entry time is 09:30:00" in on_entry.message
    assert on_exit.outcome is ScheduledOutcome.SKIPPED and "no exit time any more" in on_exit.message
    assert "due 2" in on_exit.message  # the fire's due time came down to the activity
    assert len(broker_orders(scheduling)) == sent_before
    after = await scheduling.store.get_strategy(strategy.id)
    assert (after.position, after.open_quantity) == ("LONG", 2)  # the stale exit sold nothing


async def test_a_schedule_made_without_its_time_is_judged_by_its_due_time(scheduling: Engine) -> None:
    strategy = await scheduling.strategy("TCS")  # entry 09:20
    identifier = schedule_id(strategy.id, Leg.ENTRY)
    # As schedules were made before they carried their time: only the due time tells what a fire is for.
    handle = await scheduling.client.create_schedule(
        identifier,
        Schedule(
            action=ScheduleActionStartWorkflow(
                ScheduledOrderWorkflow.run,
                ScheduledOrder(strategy_id=strategy.id, order_type=OrderType.BUY, schedule_id=identifier),
                id=identifier, task_queue=scheduling.settings.task_queue,
            ),
            spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=timedelta(days=3650))]),
        ),
    )
    await handle.trigger()  # due now, not at 09:20 IST
    [result] = await scheduled_results(scheduling.client, identifier, 1)

    assert result.outcome is ScheduledOutcome.SKIPPED and "entry time is 09:20:00" in result.message
    assert broker_orders(scheduling) == []


async def test_the_exit_schedule_with_nothing_to_exit_starts_no_order(scheduling: Engine) -> None:
    strategy = await scheduling.strategy("WIPRO")  # never entered: the entry was rejected, say
    await StrategySchedules(scheduling.client, scheduling.settings).sync(strategy)
    exit_ = scheduling.client.get_schedule_handle(schedule_id(strategy.id, Leg.EXIT))

    await exit_.trigger()
    [result] = await scheduled_results(scheduling.client, exit_.id, 1)

    assert result.outcome is ScheduledOutcome.SKIPPED and result.order_workflow_id is None
    assert "nothing to exit" in result.message
    orders = f'WorkflowType="OrderWorkflow" and StrategyId="{strategy.id}"'
    assert [w async for w in scheduling.client.list_workflows(orders)] == []
    assert (await scheduling.store.order_history(HistoryQuery(strategy_id=strategy.id))).items == []


async def test_a_paused_schedule_lists_no_next_runs_and_next_runs_are_in_ist(scheduling: Engine) -> None:
    services = Services.assemble(scheduling.settings, scheduling.client, scheduling.store)
    strategy = await scheduling.strategy("HCLTECH", running=False)  # entry 09:20, exit 15:10
    await services.sync_schedules(strategy)
    paused = await services.schedules.describe(strategy.id)
    await services.start_strategy(strategy.id, "test")
    running = await services.schedules.describe(strategy.id)

    assert [(view.paused, view.next_runs) for view in paused] == [(True, []), (True, [])]
    entry_runs, exit_runs = (view.next_runs for view in running)
    assert entry_runs and exit_runs
    assert all(run.utcoffset() == timedelta(hours=5, minutes=30) for run in [*entry_runs, *exit_runs])
    assert {(run.hour, run.minute) for run in entry_runs} == {(9, 20)}
    assert {(run.hour, run.minute) for run in exit_runs} == {(15, 10)}
