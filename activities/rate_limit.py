"""Kite's 10 order requests per second per account, kept however many workers run.

`StorePacer` is the `OrderPacer` the order activities wait on before every place and cancel. Each
request reserves its account's next send slot in the store (one atomic statement, see
`store.rate_limits`) and sleeps until it. Slots are `1/orders_per_second` apart plus a margin, so that
a request that leaves a little late still cannot put an eleventh into any one-second window at the
broker. The limiter is per account: a busy account's queue never delays another account's orders.

Inside an activity the pacer never reserves a slot the attempt could not use before its own timeout:
when the account's queue is longer than that, it reserves nothing and asks Temporal to retry the
attempt once the queue has moved (`RateLimited`, with the delay), so no request is abandoned mid-flight.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta

from temporalio import activity
from temporalio.exceptions import ApplicationError

from engine import errors
from store import Store
from store.rate_limits import SendSlot

log = logging.getLogger(__name__)

# Added to every slot: 10 slots of margin absorb 150 ms of lateness in the earliest of 11 requests.
DEFAULT_MARGIN = timedelta(milliseconds=15)
# A request not on its way this long after its slot gives the slot up and queues again (the broker's
# `send_by`): 100 of the margin's 150 ms, the rest left for the way to the broker. A process too busy
# to keep its slots (a burst on two cores) then sends a little later, never an eleventh request into
# one second.
DEFAULT_LATE_TOLERANCE = timedelta(milliseconds=100)
# Outside an activity (no deadline to respect), the longest a caller is kept waiting for its slot.
DEFAULT_MAX_WAIT = timedelta(seconds=30)
# Kept free at the end of an activity attempt beyond the broker request itself.
DEADLINE_SAFETY = timedelta(seconds=1)


class PacingBacklog(ApplicationError):
    """The account's order queue is longer than this attempt can wait: retried once it has moved."""

    def __init__(self, account_id: int, retry_in: timedelta):
        super().__init__(
            f"broker account {account_id} has more order requests queued than this attempt can wait for; "
            f"retrying in {retry_in.total_seconds():.1f}s",
            type=errors.RATE_LIMITED,
            next_retry_delay=retry_in,
        )
        self.account_id = account_id


class StorePacer:
    """Spaces the order requests of each broker account across every worker sharing the store."""

    def __init__(
        self,
        store: Store,
        orders_per_second: int,
        *,
        margin: timedelta = DEFAULT_MARGIN,
        late_tolerance: timedelta = DEFAULT_LATE_TOLERANCE,
        request_seconds: float = 0.0,
        max_wait: timedelta = DEFAULT_MAX_WAIT,
    ):
        """`request_seconds`: how long a broker request may take (the HTTP timeout); an activity
        attempt keeps that much of its time for the request after its turn comes."""
        if orders_per_second < 1:
            raise ValueError(f"orders_per_second must be at least 1, got {orders_per_second}")
        if margin < timedelta(0):
            raise ValueError(f"margin must not be negative, got {margin}")
        self.store = store
        self.orders_per_second = orders_per_second
        self.spacing = timedelta(seconds=1) / orders_per_second + margin
        self.late_tolerance = late_tolerance.total_seconds()
        self.request_time = timedelta(seconds=request_seconds)
        self.max_wait = max_wait

    def __repr__(self) -> str:
        return f"StorePacer({self.orders_per_second}/s per account, spacing {self.spacing.total_seconds() * 1000:g} ms)"

    async def wait_turn(self, account_id: int) -> float:
        """Return when this request of the account may be sent, with the `time.monotonic()` moment by
        which it must have left (the broker's `send_by`); raises PacingBacklog (retryable)."""
        return await self.take(await self.reserve(account_id))

    async def reserve(self, account_id: int) -> SendSlot:
        """The account's next send slot (not granted when the queue is longer than this caller may wait)."""
        return await self.store.reserve_send_slot(account_id, self.spacing, max_wait=self._wait_budget())

    def reservation(self) -> tuple[timedelta, timedelta]:
        """(spacing, longest wait) of a reservation this caller makes itself, in a transaction of its own
        (the order path's first one); `take` then waits for the slot it got."""
        return self.spacing, self._wait_budget()

    async def take(self, slot: SendSlot) -> float:
        """Wait for a reserved slot and answer its `send_by`; PacingBacklog (retryable) when none could
        be reserved."""
        if not slot.granted:
            raise PacingBacklog(slot.broker_account_id, timedelta(seconds=slot.wait_seconds) + self.spacing)
        assert slot.not_before is not None and slot.not_after is not None
        if slot.wait_seconds == 0:
            # The queue was empty: no request is due before this one, which leaves now, from here.
            return time.monotonic() + self.late_tolerance
        # Behind others: on this process's clock, never before the slot however late the reservation's
        # answer came, and not after the slot's end, or the request would crowd the next ones' second.
        now = time.time()
        ends = slot.not_after
        if slot.not_before - slot.not_after > self.late_tolerance:
            # The database clock is not known that closely yet (only slow round trips so far): the slot
            # is counted from when it surely began here, or no request of a busy queue could keep one.
            ends = slot.not_before
        send_by = time.monotonic() + (ends - now) + self.late_tolerance
        if (wait := slot.not_before - now) > 0:
            await asyncio.sleep(wait)
        return send_by

    def _wait_budget(self) -> timedelta:
        """How long this caller may wait for its turn and still finish its request in time."""
        if not activity.in_activity():
            return self.max_wait
        info = activity.info()
        if info.start_to_close_timeout is None:
            return self.max_wait
        started = info.started_time if info.started_time.tzinfo else info.started_time.replace(tzinfo=UTC)
        elapsed = datetime.now(UTC) - started
        budget = info.start_to_close_timeout - elapsed - self.request_time - DEADLINE_SAFETY
        return max(timedelta(0), min(budget, self.max_wait))
