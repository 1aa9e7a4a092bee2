"""A fast unit test beside tests/test_api_events.py: the stream never passes an id still being committed
(a gap in the sequence) until it has waited GAP_WAIT_SECONDS for it."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from apps.api.routers import events as events_router
from apps.api.routers.events import GAP_WAIT_SECONDS, EventStream
from store.views import StreamEvent


class CommittedSoFar:
    """The store as the stream sees it: the user's events, and every committed id of anyone."""

    def __init__(self, mine: list[int], everyone: list[int]):
        self.mine, self.everyone = mine, everyone

    async def user_events_after(self, user_id: int, after_id: int) -> list[StreamEvent]:
        at = datetime(2026, 12, 2, tzinfo=UTC)
        return [StreamEvent(i, "STATUS", f"order:1:1:entry/r{i}", 1, "INFY", {}, at) for i in self.mine if i > after_id]

    async def events_at_or_below(self, after_id: int, up_to_id: int) -> list[int]:
        return [i for i in self.everyone if after_id < i <= up_to_id]


async def test_a_fresh_gap_holds_the_stream_back_and_an_old_one_does_not(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(events_router.time, "monotonic", lambda: clock[0])
    # Ids 5 and 7 are the user's; 6 is not committed yet (another transaction, maybe the user's own).
    store = CommittedSoFar(mine=[5, 7], everyone=[5, 7])
    services: Any = SimpleNamespace(
        store=store, settings=SimpleNamespace(events_poll_interval_seconds=0.1, events_heartbeat_seconds=1.0)
    )
    request: Any = SimpleNamespace()
    stream = EventStream(services, user_id=1, after=4, request=request)

    assert [e.id for e in await stream._deliverable()] == [5]
    stream.cursor = 5
    clock[0] += GAP_WAIT_SECONDS / 2
    assert await stream._deliverable() == []  # 6 may still commit: wait

    store.mine, store.everyone = [5, 6, 7], [5, 6, 7]  # it did, and it was the user's
    assert [e.id for e in await stream._deliverable()] == [6, 7]

    # A gap that never fills (a rolled-back transaction) is passed once it is old enough.
    store.mine, store.everyone = [5, 6, 7, 9], [5, 6, 7, 9]
    stream.cursor = 7
    assert await stream._deliverable() == []
    clock[0] += GAP_WAIT_SECONDS
    assert [e.id for e in await stream._deliverable()] == [9]
