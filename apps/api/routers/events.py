"""`GET /execution/events`: the caller's order events as Server-Sent Events, for dashboards.

Each event is one row of the store's order-event trail (the outbox of ORDER_EXECUTED and every step
before it) of the caller's own strategies: `id:` is the row's id, `event:` its type, `data:` one JSON
object. A reconnecting client sends `Last-Event-ID` and gets everything after it; without it the
stream starts at the newest event (`?after=0` replays from the beginning). A comment line (`: heartbeat`)
goes out when nothing else has for ENGINE_EVENTS_HEARTBEAT_SECONDS, so proxies keep the connection open.

Ids come from one sequence but commit out of order under concurrent writers: an id below the newest may
still be in flight. The stream never passes a gap in the sequence younger than GAP_WAIT_SECONDS, so a
late commit is delivered rather than skipped.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, status
from fastapi.responses import StreamingResponse

from apps.api.deps import ServicesDep, UserDep
from apps.api.errors import ERROR_RESPONSES, ApiError
from starter.deps import Services
from store.views import StreamEvent

router = APIRouter(tags=["events"])

GAP_WAIT_SECONDS = 2.0
MAX_EVENT_ID = 2**63 - 1


def _event_id(text: str | None, where: str) -> int | None:
    if text is None:
        return None
    value = text.strip()
    if not value.isascii() or not value.isdigit() or len(value) > 19 or int(value) > MAX_EVENT_ID:
        raise ApiError(status.HTTP_400_BAD_REQUEST, f"{where} must be an event id (a whole number), got {text!r}")
    return int(value)


def sse_message(event: StreamEvent) -> str:
    workflow_id, _, run_id = event.workflow_id.partition("/")
    body = {
        "id": event.id, "type": event.event_type, "workflow_id": workflow_id, "run_id": run_id or None,
        "strategy_id": event.strategy_id, "symbol": event.symbol, "created_at": event.created_at.isoformat(),
        "data": event.data,
    }
    return f"id: {event.id}\nevent: {event.event_type}\ndata: {json.dumps(body, default=str)}\n\n"


class EventStream:
    """One client's stream: polls the store, holds back at fresh gaps, beats when idle."""

    def __init__(self, services: Services, user_id: int, after: int, request: Request):
        self.store = services.store
        self.user_id = user_id
        self.cursor = after
        self.request = request
        self.poll = services.settings.events_poll_interval_seconds
        self.heartbeat = services.settings.events_heartbeat_seconds
        self._gaps: dict[int, float] = {}

    async def _deliverable(self) -> list[StreamEvent]:
        events = await self.store.user_events_after(self.user_id, self.cursor)
        if not events:
            return []
        present = set(await self.store.events_at_or_below(self.cursor, events[-1].id))
        now = time.monotonic()
        horizon = events[-1].id
        for missing in range(self.cursor + 1, events[-1].id + 1):
            if missing in present:
                continue
            first_seen = self._gaps.setdefault(missing, now)
            if now - first_seen < GAP_WAIT_SECONDS:
                horizon = missing - 1
                break
        return [event for event in events if event.id <= horizon]

    async def messages(self) -> AsyncIterator[str]:
        state = self.request.app.state
        state.open_event_streams = getattr(state, "open_event_streams", 0) + 1
        try:
            yield f"retry: {int(self.poll * 4000)}\n: stream of user {self.user_id} after event {self.cursor}\n\n"
            last_sent = time.monotonic()
            while not await self.request.is_disconnected():
                for event in await self._deliverable():
                    yield sse_message(event)
                    self.cursor = event.id
                    last_sent = time.monotonic()
                self._gaps = {gap: seen for gap, seen in self._gaps.items() if gap > self.cursor}
                if time.monotonic() - last_sent >= self.heartbeat:
                    yield ": heartbeat\n\n"
                    last_sent = time.monotonic()
                await asyncio.sleep(self.poll)
        finally:
            state.open_event_streams -= 1


@router.get(
    "/execution/events",
    response_class=StreamingResponse,
    responses={
        **ERROR_RESPONSES,
        200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
              "description": "a stream of `id:`, `event:` and `data:` (JSON) lines, one blank line after each"},
    },
    summary="Your order events, live (Server-Sent Events; resumable with Last-Event-ID)",
)
async def order_events(
    request: Request,
    services: ServicesDep,
    user: UserDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=40)] = None,
    after: Annotated[int | None, Query(ge=0, le=MAX_EVENT_ID, description="start after this event id")] = None,
) -> StreamingResponse:
    resume = _event_id(last_event_id, "Last-Event-ID")
    start = resume if resume is not None else after
    if start is None:
        start = await services.store.newest_event_id()
    stream = EventStream(services, user.id, start, request)
    return StreamingResponse(
        stream.messages(), media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
