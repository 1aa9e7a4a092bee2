"""Reconciliation against the real Temporal dev server, PostgreSQL and the paper broker in its own process.

Broker states a workflow never sees are made the way they happen at Kite: a workflow terminated by an
operator, orders placed by hand (the real kiteconnect client, no engine tag), a late twin under an
order's tag, the broker's own square-off SELL and a DAY order's expiry. Every test also checks that the
reconcile placed nothing (the paper broker's /_sim/orders count) and that a second run changes nothing.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import time as time_of_day
from decimal import Decimal
from typing import Any

import pytest
from kiteconnect import KiteConnect
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType
from temporalio.api.workflowservice.v1 import ResetWorkflowExecutionRequest
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle

from brokers.paper.clock import IST
from engine.ids import broker_tag
from engine.models import OrderResult, Outcome
from engine.reconcile import Finding, ReconcileReport, Verdict
from starter.reconcile import reconcile_account
from store import Store
from store.records import StrategyRecord, StrategySpec
from tests.fixtures.db import trade
from tests.fixtures.paper import PaperBrokerProcess
from tests.fixtures.temporal import Engine, make_engine, replay_task_queue
from workflows.order import OrderWorkflow

WAIT_SECONDS = 20.0
API_KEY = "acct1"


def square_off_time_just_passed() -> time_of_day:
    """A square-off time a minute or two ago (IST), so the broker's SELL placed now counts as after it."""
    now = datetime.now(IST)
    earlier = now - timedelta(minutes=2)
    return earlier.time().replace(microsecond=0) if earlier.date() == now.date() else time_of_day(0, 0)


@pytest.fixture
async def engine(temporal_client: Client, engine_store: Store, paper_proc: PaperBrokerProcess) -> AsyncIterator[Engine]:
    async for built in make_engine(
        temporal_client, engine_store, paper_proc, broker_square_off_time=square_off_time_just_passed()
    ):
        yield built
    await replay_task_queue(temporal_client, built.settings.task_queue)


@dataclass(frozen=True)
class StoreSnapshot:
    """Everything a reconcile may change: strategies, orders, their audit rows and event trails."""

    strategies: list[StrategyRecord]
    orders: list[Any]
    events: list[Any]


async def snapshot(engine: Engine, account_id: int) -> StoreSnapshot:
    strategies = await engine.store.account_strategies(account_id)
    orders = await engine.store.orders_to_reconcile(account_id, [])
    keyed = []
    events = []
    for strategy in strategies:
        if strategy.last_order_workflow_id:
            keyed.append(await engine.store.get_order(strategy.last_order_workflow_id))
            events.append(await engine.store.order_events(strategy.last_order_workflow_id))
    return StoreSnapshot(strategies, orders + keyed, events)


async def reconcile(engine: Engine, account_id: int, *, dry_run: bool = False) -> ReconcileReport:
    return await reconcile_account(engine.client, engine.settings, account_id, dry_run=dry_run, requested_by="test")


async def placed_at_broker(handle: WorkflowHandle[OrderWorkflow, OrderResult]) -> str:
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        view = await handle.query(OrderWorkflow.status)
        if view.broker_order_id:
            return view.broker_order_id
        assert time.monotonic() < deadline, f"the order never reached the broker: {view}"
        await asyncio.sleep(0.05)


async def wait_for_broker(engine: Engine, broker_order_id: str, until: Any) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        [order] = [o for o in engine.paper.control.orders() if o["order_id"] == broker_order_id]
        if until(order):
            return order
        assert time.monotonic() < deadline, f"broker order {broker_order_id} never got there: {order}"
        await asyncio.sleep(0.05)


async def filled_buy(engine: Engine, symbol: str, quantity: int) -> StrategyRecord:
    strategy = await engine.strategy(symbol, quantity=quantity, api_key=API_KEY)
    result = await (await engine.starter.place_buy_order(strategy)).result()
    assert result.outcome is Outcome.FILLED
    return await engine.store.get_strategy(strategy.id)


def by_hand(engine: Engine) -> KiteConnect:
    """The account's owner in Kite's own app: the same account, no engine tag."""
    return engine.paper.kite(API_KEY, timeout=5)


def lines(report: ReconcileReport, finding: Finding) -> list[Any]:
    return [line for line in report.lines if line.finding is finding]


def placed_orders(engine: Engine) -> int:
    return len(engine.paper.control.orders())


async def test_a_terminated_workflow_is_settled_from_the_broker_and_its_strategy_released(engine: Engine) -> None:
    engine.paper.control.set_price("TCS", "3500.25")
    engine.paper.control.set_fill(fill_ratio="0.5")  # half fills, the rest rests OPEN at the broker
    strategy = await engine.strategy("TCS", quantity=10, api_key=API_KEY)
    handle = await engine.starter.place_buy_order(strategy)
    broker_order_id = await placed_at_broker(handle)
    await wait_for_broker(engine, broker_order_id, lambda o: o["filled_quantity"] == 5)
    await handle.terminate("operator terminated it")  # what `temporal workflow terminate` does
    blocked = await engine.store.get_strategy(strategy.id)
    assert blocked.active_order_workflow_id is not None and blocked.open_quantity == 0
    before = placed_orders(engine)

    report = await reconcile(engine, strategy.broker_account_id)

    [resolved] = lines(report, Finding.ORDER_RESOLVED)
    assert resolved.verdict is Verdict.REPAIRED and resolved.broker_order_id == broker_order_id
    broker = await wait_for_broker(engine, broker_order_id, lambda o: o["status"] == "CANCELLED")
    assert broker["filled_quantity"] == 5
    after = await engine.store.get_strategy(strategy.id)
    assert after.active_order_workflow_id is None  # the strategy may trade again
    assert (after.position, after.open_quantity, after.entry_price) == ("LONG", 5, Decimal("3500.25"))
    assert after.needs_intervention and "with 5 of 10 filled" in str(after.intervention_reason)  # as the workflow
    order = await engine.store.get_order(blocked.active_order_workflow_id)
    assert (order.status, order.filled_quantity, order.outcome) == ("CANCELLED", 5, "SUCCESS")
    events = await engine.store.order_events(order.workflow_id)
    [audit] = [event for event in events if event.event_type == "RECONCILED"]
    assert audit.data["by"] == "reconcile (test)" and "claim released" in audit.data["what"]
    assert [e.event_type for e in events].count("ORDER_EXECUTED") == 1
    assert placed_orders(engine) == before  # a cancel was sent; nothing was placed
    assert report.report_id is not None
    [stored] = (await engine.store.reconcile_reports(strategy.broker_account_id, limit=1))
    assert stored["report_id"] == report.report_id and stored["lines"][0]["finding"] == "ORDER_RESOLVED"

    state = await snapshot(engine, strategy.broker_account_id)
    again = await reconcile(engine, strategy.broker_account_id)
    assert again.repaired == 0 and again.needs_person == 0
    assert await snapshot(engine, strategy.broker_account_id) == state
    assert placed_orders(engine) == before


async def test_an_unresolved_orders_real_fill_is_applied(engine: Engine) -> None:
    engine.paper.control.set_price("SBIN", "812.40")
    engine.paper.control.set_fill(delay_seconds=3)  # fills after the engine lost track of it
    strategy = await engine.strategy("SBIN", quantity=3, api_key=API_KEY)
    handle = await engine.starter.place_buy_order(strategy)
    broker_order_id = await placed_at_broker(handle)
    engine.paper.control.expire_tokens()  # following can no longer read the order book
    result = await handle.result()
    assert result.outcome is Outcome.UNRESOLVED
    unresolved = await engine.store.get_order(result.order_key)
    assert unresolved.outcome == "ERROR" and unresolved.filled_quantity == 0
    await wait_for_broker(engine, broker_order_id, lambda o: o["status"] == "COMPLETE")
    # The owner logs in again the next morning: the store gets the new token.
    await engine.store.set_access_token(strategy.broker_account_id, engine.paper.login(API_KEY), None)
    before = placed_orders(engine)

    report = await reconcile(engine, strategy.broker_account_id)

    [resolved] = lines(report, Finding.ORDER_RESOLVED)
    assert resolved.verdict is Verdict.REPAIRED and "UNRESOLVED" in resolved.message
    order = await engine.store.get_order(result.order_key)
    assert (order.status, order.filled_quantity, order.average_price, order.outcome) == (
        "COMPLETE", 3, Decimal("812.40"), "SUCCESS")
    after = await engine.store.get_strategy(strategy.id)
    assert (after.position, after.open_quantity, after.entry_price) == ("LONG", 3, Decimal("812.40"))
    assert [line.finding for line in lines(report, Finding.POSITION_MATCHED)] == [Finding.POSITION_MATCHED]
    assert placed_orders(engine) == before

    state = await snapshot(engine, strategy.broker_account_id)
    again = await reconcile(engine, strategy.broker_account_id)
    assert again.repaired == 0
    assert await snapshot(engine, strategy.broker_account_id) == state
    assert (await engine.store.get_strategy(strategy.id)).open_quantity == 3  # applied exactly once


async def test_an_order_placed_by_hand_is_listed_and_left_alone(engine: Engine) -> None:
    strategy = await filled_buy(engine, "RELIANCE", 4)
    hand = by_hand(engine).place_order("regular", "NSE", "INFY", "BUY", 7, "MIS", "MARKET", market_protection=-1)
    await wait_for_broker(engine, hand, lambda o: o["status"] == "COMPLETE")
    before = placed_orders(engine)
    state = await snapshot(engine, strategy.broker_account_id)

    report = await reconcile(engine, strategy.broker_account_id)

    [listed] = lines(report, Finding.UNTAGGED_ORDER)
    assert listed.verdict is Verdict.LISTED and listed.broker_order_id == hand
    assert "without the engine's tags" in listed.message and "left alone" in listed.message
    [unowned] = lines(report, Finding.POSITION_UNOWNED)
    assert unowned.verdict is Verdict.LISTED and "NSE:INFY MIS: 7 net at the broker" in unowned.message
    assert [line.verdict for line in lines(report, Finding.POSITION_MATCHED)] == [Verdict.MATCHED]
    assert report.repaired == 0 and report.needs_person == 0
    assert await snapshot(engine, strategy.broker_account_id) == state
    assert placed_orders(engine) == before
    requests = [r["route"] for r in engine.paper.control.requests() if r["order_id"] == hand]
    assert requests == ["place_order"]  # never cancelled or modified


async def test_a_position_changed_behind_the_engines_back_is_flagged_with_both_figures(engine: Engine) -> None:
    strategy = await filled_buy(engine, "RELIANCE", 10)
    other = await filled_buy(engine, "RELIANCE", 5)  # shares the account and the symbol
    hand = by_hand(engine).place_order("regular", "NSE", "RELIANCE", "SELL", 4, "MIS", "MARKET", market_protection=-1)
    await wait_for_broker(engine, hand, lambda o: o["status"] == "COMPLETE")
    before = placed_orders(engine)

    report = await reconcile(engine, strategy.broker_account_id)

    differs = lines(report, Finding.POSITION_DIFFERS)
    assert {line.strategy_id for line in differs} == {strategy.id, other.id}
    line = differs[0]
    assert line.verdict is Verdict.NEEDS_PERSON
    assert "the strategies hold 15" in line.message and "the broker's net is 11" in line.message
    assert line.details["store"] == {str(strategy.id): 10, str(other.id): 5} and line.details["broker"] == 11
    assert hand in [order["broker_order_id"] for order in line.details["orders"]]  # the order that explains it
    flagged = await engine.store.get_strategy(strategy.id)
    assert flagged.needs_intervention and "broker's net is 11" in str(flagged.intervention_reason)
    assert flagged.open_quantity == 10  # flagged, not changed
    assert placed_orders(engine) == before

    state = await snapshot(engine, strategy.broker_account_id)
    again = await reconcile(engine, strategy.broker_account_id)
    assert again.repaired == 0 and again.needs_person == report.needs_person
    assert await snapshot(engine, strategy.broker_account_id) == state
    # Alerted once: the second report holds nothing the first did not.
    assert len(report.new_needs_person) == 2 and report.worth_an_alert
    assert again.new_needs_person == [] and not again.worth_an_alert


async def test_a_twin_order_under_an_orders_tag_is_found_flagged_and_cancelled_if_open(engine: Engine) -> None:
    engine.paper.control.set_price("SBIN", "800.00")
    strategy = await filled_buy(engine, "SBIN", 2)
    order = await engine.store.get_order(str(strategy.last_order_workflow_id))
    kite = by_hand(engine)
    # A late duplicate the broker acted on, and one still resting: both under the order's own tag.
    filled_twin = kite.place_order("regular", "NSE", "SBIN", "BUY", 2, "MIS", "MARKET", market_protection=-1,
                                   tag=order.tag)
    resting_twin = kite.place_order("regular", "NSE", "SBIN", "BUY", 2, "MIS", "LIMIT", price=700, tag=order.tag)
    await wait_for_broker(engine, filled_twin, lambda o: o["status"] == "COMPLETE")
    before = placed_orders(engine)

    report = await reconcile(engine, strategy.broker_account_id)

    twins = {line.broker_order_id: line for line in lines(report, Finding.TWIN_ORDER)}
    assert set(twins) == {filled_twin, resting_twin}
    assert all(line.verdict is Verdict.NEEDS_PERSON and line.workflow_id == order.workflow_id
               for line in twins.values())
    assert "cancelled it" in twins[resting_twin].message
    await wait_for_broker(engine, resting_twin, lambda o: o["status"] == "CANCELLED")
    [matched] = lines(report, Finding.ORDER_MATCHED)
    assert matched.broker_order_id == order.broker_order_id  # the order itself still agrees
    [differs] = lines(report, Finding.POSITION_DIFFERS)
    assert "the strategies hold 2" in differs.message and "net is 4" in differs.message
    flagged = await engine.store.get_strategy(strategy.id)
    assert flagged.needs_intervention and "twin" in str(flagged.intervention_reason)
    assert placed_orders(engine) == before

    state = await snapshot(engine, strategy.broker_account_id)
    again = await reconcile(engine, strategy.broker_account_id)
    assert again.repaired == 0 and {line.broker_order_id for line in lines(again, Finding.TWIN_ORDER)} == set(twins)
    assert await snapshot(engine, strategy.broker_account_id) == state


async def test_the_brokers_mis_square_off_and_day_expiry_are_applied_after_the_close(engine: Engine) -> None:
    engine.paper.control.set_price("RELIANCE", "2500.00")
    first = await filled_buy(engine, "RELIANCE", 10)
    second = await filled_buy(engine, "RELIANCE", 5)
    # A third strategy's entry rests at the broker; its workflow is gone when the day ends.
    engine.paper.control.set_fill(delay_seconds=600)
    waiting = await engine.strategy("INFY", quantity=3, api_key=API_KEY)
    handle = await engine.starter.place_buy_order(waiting)
    resting = await placed_at_broker(handle)
    await handle.terminate("worker fleet replaced")
    # Kite's end of day, as its books show it: the RMS sells the open MIS position without any tag,
    # and the DAY order lapses.
    engine.paper.control.set_fill(delay_seconds=0.02)
    engine.paper.control.set_price("RELIANCE", "2512.50")
    kite = by_hand(engine)
    square_off = kite.place_order("regular", "NSE", "RELIANCE", "SELL", 15, "MIS", "MARKET", market_protection=-1)
    await wait_for_broker(engine, square_off, lambda o: o["status"] == "COMPLETE")
    kite.cancel_order("regular", resting)
    await wait_for_broker(engine, resting, lambda o: o["status"] == "CANCELLED")
    before = placed_orders(engine)

    report = await reconcile(engine, first.broker_account_id)

    applied = {line.strategy_id: line for line in lines(report, Finding.BROKER_SQUARE_OFF)}
    assert set(applied) == {first.id, second.id}
    assert all(line.verdict is Verdict.REPAIRED and line.broker_order_id == square_off for line in applied.values())
    [fill] = [trade for trade in kite.trades() if trade["order_id"] == square_off]
    for strategy, quantity in ((first, 10), (second, 5)):
        after = await engine.store.get_strategy(strategy.id)
        assert after.exit_filled_at == fill["fill_timestamp"].replace(tzinfo=IST)  # from the trade book
        assert (after.position, after.open_quantity, after.exit_reason) == ("FLAT", 0, "BROKER_SQUARE_OFF")
        assert after.exit_price == Decimal("2512.50")
        assert after.realized_pnl == Decimal("12.50") * quantity
        assert after.position_cycle == strategy.position_cycle + 1
        exit_order = await engine.store.get_order(str(applied[strategy.id].workflow_id))
        assert (exit_order.order_type, exit_order.status, exit_order.filled_quantity) == ("SELL", "COMPLETE", quantity)
    [expired] = [line for line in lines(report, Finding.ORDER_RESOLVED) if line.strategy_id == waiting.id]
    assert expired.verdict is Verdict.REPAIRED and expired.broker_order_id == resting
    freed = await engine.store.get_strategy(waiting.id)
    assert freed.active_order_workflow_id is None and freed.open_quantity == 0
    order = await engine.store.get_order(str(freed.last_order_workflow_id))
    assert (order.status, order.outcome) == ("CANCELLED", "FAILED")
    assert [line.broker_order_id for line in lines(report, Finding.UNTAGGED_ORDER)] == [square_off]
    assert report.needs_person == 0
    assert placed_orders(engine) == before

    state = await snapshot(engine, first.broker_account_id)
    again = await reconcile(engine, first.broker_account_id)
    assert again.repaired == 0 and again.needs_person == 0
    assert await snapshot(engine, first.broker_account_id) == state


async def test_a_dry_run_reports_the_repairs_and_makes_none(engine: Engine) -> None:
    engine.paper.control.set_fill(delay_seconds=600)
    strategy = await engine.strategy("TCS", quantity=2, api_key=API_KEY)
    handle = await engine.starter.place_buy_order(strategy)
    broker_order_id = await placed_at_broker(handle)
    await handle.terminate("operator terminated it")
    state = await snapshot(engine, strategy.broker_account_id)
    requests = len(engine.paper.control.requests())

    report = await reconcile(engine, strategy.broker_account_id, dry_run=True)

    [line] = lines(report, Finding.ORDER_RESOLVED)
    assert line.verdict is Verdict.REPAIRED and "(dry run)" in line.message and report.dry_run
    assert await snapshot(engine, strategy.broker_account_id) == state
    [order] = [o for o in engine.paper.control.orders() if o["order_id"] == broker_order_id]
    assert order["status"] == "OPEN"
    sent = [r["route"] for r in engine.paper.control.requests()[requests:]]
    assert "cancel_order" not in sent and "place_order" not in sent


async def test_an_order_its_workflow_still_follows_is_left_to_the_workflow(engine: Engine) -> None:
    engine.paper.control.set_fill(delay_seconds=600)  # rests at the broker while its workflow follows it
    strategy = await engine.strategy("TCS", quantity=2, api_key=API_KEY)
    handle = await engine.starter.place_buy_order(strategy)
    broker_order_id = await placed_at_broker(handle)
    requests = len(engine.paper.control.requests())
    try:
        report = await reconcile(engine, strategy.broker_account_id)

        [line] = lines(report, Finding.ORDER_IN_FLIGHT)
        assert line.verdict is Verdict.LISTED and line.broker_order_id == broker_order_id
        assert report.repaired == 0 and report.needs_person == 0
        after = await engine.store.get_strategy(strategy.id)
        assert after.active_order_workflow_id is not None and after.open_quantity == 0  # still claimed
        assert not after.needs_intervention
        sent = [r["route"] for r in engine.paper.control.requests()[requests:]]
        assert "cancel_order" not in sent and "place_order" not in sent
    finally:
        await handle.terminate("test over")


async def test_a_broker_order_with_an_engine_tag_no_order_holds_is_flagged(engine: Engine) -> None:
    strategy = await filled_buy(engine, "SBIN", 1)
    stray_tag = broker_tag("order:999999:1:entry/not-a-run-of-this-store")
    stray = by_hand(engine).place_order("regular", "NSE", "WIPRO", "BUY", 1, "MIS", "MARKET", market_protection=-1,
                                        tag=stray_tag)
    await wait_for_broker(engine, stray, lambda o: o["status"] == "COMPLETE")

    report = await reconcile(engine, strategy.broker_account_id)

    [line] = lines(report, Finding.UNKNOWN_ENGINE_TAG)
    assert line.verdict is Verdict.NEEDS_PERSON and line.broker_order_id == stray and stray_tag in line.message
    assert lines(report, Finding.UNTAGGED_ORDER) == []  # it carries the engine's tag shape: not a hand order
    assert not (await engine.store.get_strategy(strategy.id)).needs_intervention  # no strategy of ours moved


async def test_a_cnc_position_carried_over_is_compared_with_the_demat_holdings(engine: Engine) -> None:
    user_id, account_id = await engine.account(API_KEY)
    strategy = await engine.store.create_strategy(StrategySpec(
        user_id=user_id, broker_account_id=account_id, name=f"itc-{uuid.uuid4().hex[:6]}", symbol="ITC",
        quantity=10, product="CNC"))
    strategy = await engine.store.set_strategy_status(strategy.id, "RUNNING")
    # Bought on an earlier day: today Kite shows it in the holdings, not in the day's positions.
    _, held = await trade(engine.store, strategy, "BUY", 10, "440.25")
    engine.paper.control.set_account(API_KEY, holdings={"NSE:ITC": {"quantity": 10, "average_price": "440.25"}})

    carried = await reconcile(engine, account_id)

    [matched] = [line for line in lines(carried, Finding.POSITION_MATCHED) if "NSE:ITC CNC" in line.message]
    assert matched.details["holdings"] == 10 and carried.needs_person == 0
    assert lines(carried, Finding.BROKER_SQUARE_OFF) == []  # CNC carries over with its entry price
    after = await engine.store.get_strategy(strategy.id)
    assert (after.open_quantity, after.entry_price, after.version) == (10, Decimal("440.25"), held.version)

    engine.paper.control.set_account(API_KEY, holdings={"NSE:ITC": {"quantity": 25, "average_price": "400"}})
    own_shares = await reconcile(engine, account_id)
    [beyond] = lines(own_shares, Finding.HOLDINGS_BEYOND_STRATEGIES)
    assert beyond.verdict is Verdict.LISTED and "the strategies hold 10, the account 25" in beyond.message

    engine.paper.control.set_account(API_KEY, holdings={"NSE:ITC": {"quantity": 6, "average_price": "440.25"}})
    sold_elsewhere = await reconcile(engine, account_id)
    [differs] = lines(sold_elsewhere, Finding.POSITION_DIFFERS)
    assert differs.verdict is Verdict.NEEDS_PERSON and "the broker's net is 6" in differs.message


async def reset_to_the_first_workflow_task(engine: Engine, handle: WorkflowHandle[OrderWorkflow, OrderResult]) -> str:
    """`temporal workflow reset` to the first workflow task: back past the placement (the placement's
    record comes with that task's completion, which a reset drops). The new run's id."""
    history = await handle.fetch_history()
    first_task = next(event.event_id for event in history.events
                      if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED)
    answer = await engine.client.workflow_service.reset_workflow_execution(ResetWorkflowExecutionRequest(
        namespace=engine.client.namespace,
        workflow_execution=WorkflowExecution(workflow_id=handle.id, run_id=history.run_id),
        reason="operator reset", workflow_task_finish_event_id=first_task, request_id=str(uuid.uuid4()),
    ))
    return answer.run_id


async def test_a_reset_past_the_placement_releases_the_old_orders_claim(engine: Engine) -> None:
    engine.paper.control.set_fill(delay_seconds=600)
    strategy = await engine.strategy("TCS", quantity=2, api_key=API_KEY)
    handle = await engine.starter.place_buy_order(strategy)
    broker_order_id = await placed_at_broker(handle)
    claimed = (await engine.store.get_strategy(strategy.id)).active_order_workflow_id

    # The new run starts the intent afresh (a new order key), finds the strategy claimed by the old
    # order and ends; nothing follows the old order any more.
    fresh_run = await reset_to_the_first_workflow_task(engine, handle)
    with pytest.raises(WorkflowFailureError):
        await engine.client.get_workflow_handle(handle.id, run_id=fresh_run).result()
    assert (await engine.store.get_strategy(strategy.id)).active_order_workflow_id == claimed
    before = placed_orders(engine)

    report = await reconcile(engine, strategy.broker_account_id)

    [resolved] = lines(report, Finding.ORDER_RESOLVED)
    assert resolved.verdict is Verdict.REPAIRED and resolved.workflow_id == claimed
    assert resolved.broker_order_id == broker_order_id
    assert (await engine.store.get_strategy(strategy.id)).active_order_workflow_id is None
    await wait_for_broker(engine, broker_order_id, lambda o: o["status"] == "CANCELLED")
    assert placed_orders(engine) == before


async def test_an_order_the_store_knows_as_unplaced_is_adopted_by_its_tag_and_applied_once(engine: Engine) -> None:
    engine.paper.control.set_price("INFY", "1500.50")
    # The broker takes the order and its answer never comes: the store has no broker order id.
    engine.paper.control.add_fault("accept_then_timeout", route="place_order", seconds=5)
    strategy = await engine.strategy("INFY", quantity=4, api_key=API_KEY)
    handle = await engine.starter.place_buy_order(strategy)
    deadline = time.monotonic() + WAIT_SECONDS
    while not engine.paper.control.orders() or engine.paper.control.orders()[0]["order_id"] is None:
        assert time.monotonic() < deadline, "the broker never took the order"
        await asyncio.sleep(0.02)
    await handle.terminate("operator terminated it")  # before any retry looked the tag up
    key = str((await engine.store.get_strategy(strategy.id)).active_order_workflow_id)
    assert (await engine.store.get_order(key)).broker_order_id is None
    [taken] = engine.paper.control.orders()
    await wait_for_broker(engine, taken["order_id"], lambda o: o["status"] == "COMPLETE")

    report = await reconcile(engine, strategy.broker_account_id)

    [adopted] = lines(report, Finding.ORDER_ADOPTED)
    assert adopted.verdict is Verdict.REPAIRED and adopted.broker_order_id == taken["order_id"]
    order = await engine.store.get_order(key)
    assert (order.broker_order_id, order.adopted, order.status, order.filled_quantity) == (
        taken["order_id"], True, "COMPLETE", 4)
    after = await engine.store.get_strategy(strategy.id)
    assert (after.open_quantity, after.entry_price, after.active_order_workflow_id) == (4, Decimal("1500.50"), None)
    assert len(engine.paper.control.orders()) == 1

    again = await reconcile(engine, strategy.broker_account_id)
    assert again.repaired == 0 and (await engine.store.get_strategy(strategy.id)).open_quantity == 4
