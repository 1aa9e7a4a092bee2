"""The store-backed order pacer on its own: reservations from several stores (workers) on PostgreSQL and
SQLite, the bounded wait, and the pacer's answers inside and outside an activity."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from activities.rate_limit import PacingBacklog, StorePacer
from engine import errors
from store import InvalidInput, Store
from store.clock import DatabaseClock
from store.rate_limits import SendSlot, reserve_in
from tests.fixtures.db import seed_strategy

SPACING = timedelta(milliseconds=110)


@pytest.fixture
async def second_store(store: Store, engine_secret_key: str) -> AsyncIterator[Store]:
    """Another connection pool on the same database: what a second worker process holds."""
    other = await Store.connect(store.engine.url.render_as_string(hide_password=False), engine_secret_key)
    try:
        yield other
    finally:
        await other.close()


async def test_reservations_from_two_workers_are_spaced_on_one_timeline(store: Store, second_store: Store) -> None:
    account_id = (await seed_strategy(store)).broker_account_id

    slots = await asyncio.gather(
        *(
            (store if n % 2 else second_store).reserve_send_slot(account_id, SPACING)
            for n in range(30)
        )
    )

    assert all(slot.granted for slot in slots)
    send_times = sorted(slot.send_at for slot in slots if slot.send_at is not None)
    assert len(send_times) == 30
    gaps = [later - earlier for earlier, later in itertools.pairwise(send_times)]
    assert min(gaps) >= SPACING  # never two requests of the account closer than the spacing
    assert send_times[-1] - send_times[0] >= 29 * SPACING  # all queued, one after another


async def test_accounts_are_paced_apart(store: Store) -> None:
    busy = (await seed_strategy(store)).broker_account_id
    quiet = (await seed_strategy(store)).broker_account_id
    for _ in range(20):
        await store.reserve_send_slot(busy, SPACING)

    slot = await store.reserve_send_slot(quiet, SPACING)

    assert slot.granted and slot.wait_seconds == 0  # the busy account's queue is not the quiet one's


async def test_a_bounded_reservation_beyond_the_queue_reserves_nothing(store: Store) -> None:
    account_id = (await seed_strategy(store)).broker_account_id
    for _ in range(10):
        await store.reserve_send_slot(account_id, SPACING)

    refused = await store.reserve_send_slot(account_id, SPACING, max_wait=timedelta(milliseconds=500))
    queued = await store.reserve_send_slot(account_id, SPACING)

    assert not refused.granted and refused.send_at is None
    assert 0.4 < refused.wait_seconds < 1.2  # the queue (1.1 s) less the wait allowed (0.5 s)
    assert queued.granted and queued.wait_seconds > 1.0
    assert queued.send_at is not None  # the refused call took no slot: the next one follows the tenth


@pytest.mark.parametrize(
    ("spacing", "max_wait", "message"),
    [
        (timedelta(0), None, "spacing must be positive"),
        (timedelta(seconds=-1), None, "spacing must not be negative"),
        (SPACING, timedelta(seconds=-1), "max_wait must not be negative"),
    ],
)
async def test_bad_pacing_arguments_say_what_to_fix(
    store: Store, spacing: timedelta, max_wait: timedelta | None, message: str
) -> None:
    account_id = (await seed_strategy(store)).broker_account_id
    with pytest.raises(InvalidInput, match=message):
        await store.reserve_send_slot(account_id, spacing, max_wait=max_wait)


async def test_pacer_spacing_has_a_margin_under_the_limit(store: Store) -> None:
    pacer = StorePacer(store, 10)

    assert pacer.spacing > timedelta(milliseconds=100)  # 11 requests never fit in one second
    assert pacer.spacing <= timedelta(milliseconds=120)
    with pytest.raises(ValueError, match="at least 1"):
        StorePacer(store, 0)


async def test_pacer_queues_what_it_can_wait_for_and_refuses_the_rest(store: Store) -> None:
    account_id = (await seed_strategy(store)).broker_account_id
    pacer = StorePacer(store, 5, max_wait=timedelta(milliseconds=300))  # slots 210 ms apart

    # At once: slots at 0 and 210 ms are within the 300 ms allowed, the one at 420 ms is not.
    turns = await asyncio.gather(*(pacer.wait_turn(account_id) for _ in range(3)), return_exceptions=True)

    refusals = [turn for turn in turns if isinstance(turn, BaseException)]
    assert len([turn for turn in turns if isinstance(turn, float)]) == 2 and len(refusals) == 1
    refused = refusals[0]
    assert isinstance(refused, PacingBacklog)
    assert refused.type == errors.RATE_LIMITED and not refused.non_retryable
    assert refused.next_retry_delay is not None and refused.next_retry_delay > timedelta(0)
    assert "more order requests queued" in refused.message


def test_the_database_clock_is_bounded_by_the_tightest_round_trips() -> None:
    clock = DatabaseClock()
    clock.observe(sent=100.0, database_now=105.0, answered=100.5)  # offset within [4.5, 5.0]
    clock.observe(sent=200.0, database_now=204.9, answered=200.1)  # [4.8, 4.9]
    clock.observe(sent=300.0, database_now=305.0, answered=303.0)  # a slow answer: [2.0, 5.0], loosens nothing

    earliest, latest = clock.local_window(1000.0)

    assert (earliest, latest) == pytest.approx((995.1, 995.2))


def test_the_database_clock_follows_a_step() -> None:
    clock = DatabaseClock()
    clock.observe(sent=100.0, database_now=105.0, answered=100.1)  # offset [4.9, 5.0]
    clock.observe(sent=200.0, database_now=203.0, answered=200.1)  # the local clock stepped: [2.9, 3.0]

    assert clock.local_window(1000.0) == pytest.approx((997.0, 997.1))  # the newest round trip alone


async def test_a_reservation_that_waited_for_the_row_lock_takes_its_slot_from_then(
    store: Store, second_store: Store
) -> None:
    account_id = (await seed_strategy(store)).broker_account_id
    await store.reserve_send_slot(account_id, SPACING)  # the account's row exists
    await asyncio.sleep(2 * SPACING.total_seconds())  # and its queue is empty again

    async def hold_the_queue() -> float:
        async with store._write() as session:  # what the order path's first transaction does
            await reserve_in(session, store.dialect, store.database_clock, account_id, 110_000, None)
            await asyncio.sleep(0.4)
        return time.time()

    holding = asyncio.create_task(hold_the_queue())
    await asyncio.sleep(0.05)
    waited = await second_store.reserve_send_slot(account_id, SPACING)
    released_at = await holding

    assert waited.granted and waited.send_at is not None
    assert waited.send_at.timestamp() >= released_at - 0.05  # not 110 ms after it asked, in the past


async def test_a_slot_behind_others_is_kept_on_this_clock_and_one_of_an_empty_queue_leaves_now(store: Store) -> None:
    account_id = (await seed_strategy(store)).broker_account_id
    pacer = StorePacer(store, 10)  # 115 ms apart, 100 ms of tolerance

    first, second = await pacer.reserve(account_id), await pacer.reserve(account_id)
    first_by = await pacer.take(first)
    second_by = await pacer.take(second)
    left_at = time.monotonic()

    assert first.wait_seconds == 0 and first_by - time.monotonic() <= pacer.late_tolerance
    assert second.not_before is not None and second.not_after is not None
    assert time.time() >= second.not_before  # never before its slot
    assert second_by - left_at == pytest.approx(pacer.late_tolerance, abs=0.05)  # ends a tolerance after it


async def test_a_slot_whose_clock_is_not_known_closely_yet_is_counted_from_when_it_surely_began(
    store: Store,
) -> None:
    pacer = StorePacer(store, 10)
    now = time.time()
    # Only a slow round trip so far: the slot lies somewhere in the half second after 50 ms from now.
    slot = SendSlot(1, True, 0.05, None, not_before=now + 0.55, not_after=now + 0.05)

    send_by = await pacer.take(slot)

    assert time.time() >= now + 0.55  # never before the slot
    assert send_by - time.monotonic() == pytest.approx(pacer.late_tolerance, abs=0.05)  # still its full tolerance
