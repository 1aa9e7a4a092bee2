"""Kite's 10 orders per second per account, kept by two workers at once: a burst of 50 strategies of one
account is paced, not rejected, while another account's stop-loss goes straight through."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from typing import Any

from temporalio.client import Client

from apps.worker import build_worker
from brokers.factory import KiteBrokerFactory
from dev.devserver import DevServer
from engine.models import Outcome
from engine.temporal import data_converter
from store import Store
from tests.fixtures.temporal import Engine

BURST = 50
LIMIT_PER_SECOND = 10
WAIT_SECONDS = 30.0


def most_in_one_second(times: list[float]) -> int:
    """The most requests in any one-second window [t, t + 1 s), as the broker counts them."""
    ordered = sorted(times)
    most, start = 0, 0
    for end, moment in enumerate(ordered):
        while moment - ordered[start] >= 1.0:
            start += 1
        most = max(most, end - start + 1)
    return most


def requests_of(engine: Engine, api_key: str) -> list[dict[str, Any]]:
    """Every order request (place and cancel, refused ones included) the broker received for the account."""
    return [r for r in engine.paper.control.requests() if r["api_key"] == api_key]


async def wait_until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_a_burst_from_one_account_is_paced_across_two_workers_and_another_stop_loss_goes_first(
    engine: Engine, engine_secret_key: str, temporal_server: DevServer
) -> None:
    engine.paper.control.set_price("SBIN", "800")
    calm = await engine.strategy("SBIN", quantity=5, api_key="calm")
    await (await engine.starter.place_buy_order(calm)).result()
    busy = [await engine.strategy("INFY", quantity=1, api_key="busy") for _ in range(BURST)]
    # A second worker on the same task queue, with its own Temporal connection, database pool and broker
    # clients: only the store's pacing can keep the two of them under the account's limit together.
    second_client = await Client.connect(temporal_server.address, data_converter=data_converter({}))
    second_store = await Store.connect(engine.store.engine.url.render_as_string(hide_password=False), engine_secret_key)
    second_worker, _ = build_worker(
        second_client, second_store, engine.settings, brokers=KiteBrokerFactory(engine.settings)
    )
    try:
        async with second_worker:
            started = time.time()
            burst = await asyncio.gather(*(engine.starter.place_buy_order(strategy) for strategy in busy))
            await wait_until(lambda: len(requests_of(engine, "busy")) >= 15, "the burst to be under way")
            triggered_at = time.time()
            stop_loss = await engine.starter.place_sl_sell_order(calm.id, Decimal("790"))
            stop_loss_result = await stop_loss.result()
            results = await asyncio.gather(*(handle.result() for handle in burst))
    finally:
        await second_store.close()

    assert [r.outcome for r in results] == [Outcome.FILLED] * BURST  # paced, none rejected or failed
    busy_requests = requests_of(engine, "busy")
    busy_times = [r["received_at_epoch"] for r in busy_requests]
    assert [r["route"] for r in busy_requests] == ["place_order"] * BURST  # one request per order
    assert not any(r["rate_limited"] for r in busy_requests)
    assert most_in_one_second(busy_times) <= LIMIT_PER_SECOND
    [stop_loss_request] = [r for r in requests_of(engine, "calm") if r["side"] == "SELL"]
    assert stop_loss_result.outcome is Outcome.FILLED
    assert stop_loss_request["received_at_epoch"] < max(busy_times)  # not queued behind the busy account
    print(
        f"\nburst of {BURST} from one account over two workers: broker saw it from "
        f"{min(busy_times) - started:.3f}s to {max(busy_times) - started:.3f}s after the triggers, "
        f"at most {most_in_one_second(busy_times)} in any second; other account's stop-loss "
        f"trigger→broker {1000 * (stop_loss_request['received_at_epoch'] - triggered_at):.0f} ms"
    )


class LateForTheFirstSlot:
    """The pacer of a process too busy to keep its first slot: that slot has ended by the time the
    request could leave. Every other slot is the store pacer's own."""

    def __init__(self, pacer: Any):
        self.pacer = pacer
        self.missed = False

    async def wait_turn(self, account_id: int) -> float | None:
        return await self.pacer.wait_turn(account_id)

    def reservation(self) -> Any:
        return self.pacer.reservation()

    async def reserve(self, account_id: int) -> Any:
        return await self.pacer.reserve(account_id)

    async def take(self, slot: Any) -> float | None:
        send_by = await self.pacer.take(slot)
        if not self.missed:
            self.missed = True
            return time.monotonic() - 1.0
        return send_by


async def test_a_request_that_missed_its_send_slot_waits_for_another_and_is_sent_once(engine: Engine) -> None:
    engine.paper.control.set_price("INFY", "1500")
    strategy = await engine.strategy("INFY", quantity=3, api_key="late")
    assert engine.parts is not None
    late = LateForTheFirstSlot(engine.parts.order_activities.pacer)
    engine.parts.order_activities.pacer = late
    try:
        handle = await engine.starter.place_buy_order(strategy)
        result = await handle.result()
    finally:
        engine.parts.order_activities.pacer = late.pacer

    assert late.missed
    assert result.outcome is Outcome.FILLED
    assert [r["route"] for r in requests_of(engine, "late")] == ["place_order"]  # the missed slot sent nothing
    events = [event.event_type for event in await engine.store.order_events(result.order_key)]
    assert events.count("PLACEMENT_SENT") == 1  # stamped again for the slot it really left in
