"""The order workflow's side effects: validation and audit in the store, the broker calls.

`OrderActivities` receives its dependencies at worker start (store, broker factory, settings,
calendar); nothing here is a module-level singleton, so tests build it with a real paper broker.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.order_book import OrderBookWatcher
from brokers.base import Broker, BrokerOrder, OrderRequest, is_terminal
from brokers.errors import (
    AmbiguousBrokerError,
    BrokerError,
    DefinitiveBrokerError,
    RateLimitedError,
    SendSlotMissedError,
    SessionExpiredError,
)
from engine import errors
from engine.events import EventBus
from engine.ids import OrderType
from engine.market_hours import MarketCalendar
from engine.models import (
    BeginOrder,
    BegunOrder,
    BrokerOrderState,
    CancelAnswer,
    CancelAtBroker,
    FinishOrder,
    FinishTwin,
    FollowOrder,
    FollowResult,
    OrderPolicy,
    OrderTicket,
    Outcome,
    Placement,
    PlaceOrder,
    SweepTwins,
)
from engine.order_state import supersedes
from engine.settings import Settings
from store import Store
from store.errors import CredentialsMissing, EntryStopped, FillMismatch, OrderInFlight, StoreError, StrategyNotFound
from store.orders import twin_workflow_id
from store.rate_limits import SendSlot
from store.records import BrokerCredentials, Fill, NewOrder, StrategyRecord

log = logging.getLogger(__name__)

RATE_LIMIT_BACKOFF = timedelta(seconds=1)
STALE_STATE_GRACE = timedelta(seconds=30)
# The longest wait between order-book polls of a follower while the polls fail.
FAILED_POLL_BACKOFF_MAX = 5.0
CREDENTIALS_TTL_SECONDS = 30.0
# An exit whose account is logged out waits for the next login, asking the store this often.
LOGIN_POLL_SECONDS = 2.0
LOGIN_WAIT_ROUND_SECONDS = 60.0
# How long the first local activity watches a new order for its fill before the follower takes over.
# A market order at NSE fills in milliseconds and Kite's order book shows it within a few hundred; an
# order still open after a second is resting (protection price, an illiquid scrip, a halted market) and
# is better followed by the heartbeating activity. Well inside the workflow task's timeout (10 s), so
# the local activity needs no task heartbeat, and a cancel or a query waits at most this long.
FAST_FILL_WAIT_SECONDS = 1.0


class BrokerFactory(Protocol):
    def for_credentials(self, api_key: str, access_token: str) -> Broker: ...


class OrderPacer(Protocol):
    """Spaces order requests (place, modify, cancel) of one broker account across every worker."""

    async def wait_turn(self, account_id: int) -> float | None:
        """Wait for the account's next send slot; answers the request's `send_by` (None: any time)."""
        ...

    def reservation(self) -> tuple[timedelta, timedelta] | None:
        """(spacing, longest wait) for a slot reserved in the caller's own transaction; None: no pacing."""
        ...

    async def reserve(self, account_id: int) -> SendSlot:
        """The account's next send slot, to `take` after the caller's own step (granted or not)."""
        ...

    async def take(self, slot: SendSlot) -> float | None:
        """Wait for a slot reserved that way and answer its `send_by` (raises when none was granted)."""
        ...


class NoPacing:
    async def wait_turn(self, account_id: int) -> float | None:
        return None

    async def reserve(self, account_id: int) -> SendSlot:
        return SendSlot(account_id, True, 0.0)

    def reservation(self) -> tuple[timedelta, timedelta] | None:
        return None

    async def take(self, slot: SendSlot) -> float | None:
        return None


async def cancel_in_slot(pacer: OrderPacer, account_id: int, broker: Broker, order_id: str,
                         variety: str = "regular") -> None:
    """A cancel request within the account's send slot, queued again whenever it could not leave on
    time (every cancel the engine sends goes this way: a person's, a timeout's, a twin's, reconcile's)."""
    while True:
        send_by = await pacer.wait_turn(account_id)
        try:
            await broker.cancel_order(order_id, variety, send_by=send_by)
            return
        except SendSlotMissedError as missed:
            log.info("cancel of broker order %s: %s", order_id, missed)


def _now() -> datetime:
    return datetime.now(UTC)


def to_state(order: BrokerOrder) -> BrokerOrderState:
    return BrokerOrderState(
        order_id=order.order_id,
        status=order.status,
        quantity=order.quantity,
        filled_quantity=order.filled_quantity,
        pending_quantity=order.pending_quantity,
        average_price=order.average_price,
        status_message=order.status_message,
    )


def to_state_dict(state: BrokerOrderState) -> dict[str, Any]:
    return state.model_dump(mode="json")


def _may_have_placed(error: BrokerError) -> bool:
    if isinstance(error, AmbiguousBrokerError):
        return error.may_have_reached_broker
    return False  # a definitive answer or a 429: the broker placed nothing


def broker_failure(error: BrokerError, *, sent_at: datetime | None, window: float) -> ApplicationError:
    """The Temporal form of a broker failure: its retry class decides whether and when to retry."""
    message = error.broker_message or error.message
    if isinstance(error, SessionExpiredError):
        return ApplicationError(
            f"broker session expired, re-login needed: {message}",
            type=errors.SESSION_EXPIRED,
            non_retryable=True,
        )
    if isinstance(error, DefinitiveBrokerError):
        return ApplicationError(message, type=errors.BROKER_REFUSED, non_retryable=True)
    if isinstance(error, RateLimitedError):
        return ApplicationError(message, type=errors.RATE_LIMITED, next_retry_delay=RATE_LIMIT_BACKOFF)
    # Ambiguous: the order may exist. The retry looks it up by tag, and only after the first request's
    # window has passed, so a late arrival at the broker cannot hide from the lookup.
    delay = timedelta(0)
    if sent_at is not None and getattr(error, "may_have_reached_broker", True):
        delay = max(timedelta(0), sent_at + timedelta(seconds=window) - _now())
    return ApplicationError(
        f"broker outcome unknown: {message}", type=errors.BROKER_AMBIGUOUS, next_retry_delay=delay or None
    )


class OrderActivities:
    def __init__(
        self,
        store: Store,
        brokers: BrokerFactory,
        settings: Settings,
        calendar: MarketCalendar | None = None,
        events: EventBus | None = None,
        pacer: OrderPacer | None = None,
    ):
        self.store = store
        self.pacer = pacer or NoPacing()
        self.brokers = brokers
        self.settings = settings
        self.calendar = calendar or MarketCalendar()
        self.events = events or EventBus()
        self.watcher = OrderBookWatcher(settings.order_poll_interval_seconds)
        self._credentials: dict[int, tuple[float, BrokerCredentials]] = {}

    async def _broker(self, account_id: int, *, renew: bool = False) -> Broker:
        """The account's broker client. Credentials are kept for a few seconds: the order path does not
        read and decrypt them again for every call; `renew` reads them afresh."""
        cached = self._credentials.get(account_id)
        if renew or cached is None or time.monotonic() - cached[0] > CREDENTIALS_TTL_SECONDS:
            try:
                credentials = await self.store.broker_credentials(account_id)
            except CredentialsMissing as missing:
                raise await self._login_needed(account_id, str(missing), log_out=False) from None
            cached = self._credentials[account_id] = (time.monotonic(), credentials)
        credentials = cached[1]
        return self.brokers.for_credentials(credentials.api_key, credentials.access_token)

    async def _renewed_broker(self, account_id: int, expired: Broker) -> Broker:
        """After a TokenException: a client on a newer token, if the store has one (the kept one was
        stale); None if the store's token is the one that expired: the account is then logged out, and a
        person must log in again."""
        renewed = await self._broker(account_id, renew=True)
        if renewed is not expired:
            return renewed
        raise await self._login_needed(account_id, "Kite refused the day's access token", log_out=True)

    async def _login_needed(self, account_id: int, reason: str, *, log_out: bool) -> ApplicationError:
        """The account has no usable token: logged out (after Kite's TokenException), and told once.
        The failure's details say whether this is the first notice since the last login, so that the
        order workflow sends the one alert "log in to Kite for account N", not one per order."""
        self._credentials.pop(account_id, None)
        if log_out:
            await self.store.log_out(account_id, reason)
        first = await self.store.note_login_needed(account_id)
        return ApplicationError(
            f"log in to Kite for account {account_id}: {reason}", {"account_id": account_id, "first_notice": first},
            type=errors.SESSION_EXPIRED, non_retryable=True,
        )

    @activity.defn(name="wait_for_login")
    async def wait_for_login(self, account_id: int) -> bool:
        """Whether the account is logged in again, checked every few seconds for up to a minute (the
        workflow asks again, so that a cancel is heard between rounds)."""
        deadline = time.monotonic() + LOGIN_WAIT_ROUND_SECONDS
        while True:
            try:
                await self.store.broker_credentials(account_id)
                return True
            except CredentialsMissing:
                pass
            if time.monotonic() >= deadline:
                return False
            activity.heartbeat()
            await asyncio.sleep(LOGIN_POLL_SECONDS)

    # 1 + 2. Validate and record the attempt, under the strategy's row lock.

    @activity.defn(name="begin_order")
    async def begin_order(self, request: BeginOrder) -> OrderTicket:
        ticket, _, _ = await self._begin(request, reserve=False)
        return ticket

    async def _begin(self, request: BeginOrder, *, reserve: bool) -> tuple[OrderTicket, SendSlot | None, bool]:
        """The attempt recorded (or found, on a replay); with `reserve`, the account's send slot taken in
        the same transaction. Answers the ticket, the slot (None if none was reserved) and whether the
        send was stamped too (the slot was now: the request may leave at once)."""
        intent = request.intent
        seen: list[StrategyRecord] = []

        def quantity_of(strategy: StrategyRecord) -> int:
            return strategy.quantity if intent.order_type is OrderType.BUY else strategy.open_quantity

        def validate(locked: StrategyRecord) -> None:
            self.validate(
                intent.order_type, intent.user_id, locked, quantity_of(locked), _now(), square_off=intent.square_off
            )

        def build(locked: StrategyRecord) -> NewOrder:
            seen.append(locked)
            quantity = quantity_of(locked)
            return NewOrder(
                workflow_id=request.order_key,
                strategy_id=locked.id,
                user_id=intent.user_id,
                order_type=intent.order_type.value,
                transaction_type=intent.order_type.transaction_type,
                quantity=quantity,
                symbol=locked.symbol,
                exchange=locked.exchange,
                tag=request.tag,
                trigger_price=intent.trigger_price,
                trigger_tick_at=intent.trigger_tick_at,
                requested_by=intent.requested_by,
                reason=intent.reason,
                exit_reason=intent.exit_reason,
                order_data={
                    "workflow_id": request.workflow_id,
                    "run_id": request.run_id,
                    "product": locked.product,
                    "order_type": "MARKET",
                    "quantity": quantity,
                    "trigger_price": str(intent.trigger_price) if intent.trigger_price is not None else None,
                    "trigger_tick_at": intent.trigger_tick_at.isoformat() if intent.trigger_tick_at else None,
                    "square_off": intent.square_off,
                    "exit_reason": intent.exit_reason,
                },
            )

        pacing = self.pacer.reservation() if reserve else None
        slot: SendSlot | None = None
        credentials: BrokerCredentials | None = None
        try:
            if pacing is None:
                order = await self.store.begin_order_for(intent.strategy_id, request.order_key, build, validate)
            else:
                order, slot, credentials = await self.store.begin_order_and_reserve(
                    intent.strategy_id, request.order_key, build, validate, spacing=pacing[0], max_wait=pacing[1]
                )
            strategy = seen[0] if seen else await self.store.get_strategy(intent.strategy_id)  # a replay
        except (errors.ValidationFailed, StrategyNotFound) as refused:
            raise ApplicationError(str(refused), type=errors.VALIDATION_FAILED, non_retryable=True) from None
        except OrderInFlight as busy:
            raise ApplicationError(str(busy), type=errors.ORDER_IN_FLIGHT, non_retryable=True) from None
        except StoreError as failed:
            if failed.retryable:
                raise
            raise ApplicationError(str(failed), type=errors.VALIDATION_FAILED, non_retryable=True) from None
        if pacing is not None:  # the account's credentials came with the strategy's lock: fresher than any kept
            if credentials is None:  # no usable token: `_broker` reads the account and says what to do
                self._credentials.pop(strategy.broker_account_id, None)
            else:
                self._credentials[strategy.broker_account_id] = (time.monotonic(), credentials)
        ticket = OrderTicket(
            order_key=request.order_key,
            strategy_id=order.strategy_id,
            broker_account_id=strategy.broker_account_id,
            symbol=order.symbol,
            exchange=order.exchange,
            transaction_type=order.transaction_type,
            quantity=order.quantity,
            product=strategy.product,
            tag=order.tag,
            order_type=order.order_type,
            policy=OrderPolicy(
                timeout_seconds=self.settings.order_timeout_seconds,
                retry_attempts=self.settings.order_retry_attempts,
                poll_interval_seconds=self.settings.order_poll_interval_seconds,
                broker_timeout_seconds=self.settings.broker_http_timeout_seconds,
                market_protection=self.settings.market_protection,
                twin_watch_seconds=self.settings.twin_watch_seconds,
                follow_heartbeat_timeout_seconds=self.settings.follow_heartbeat_timeout_seconds,
            ),
        )
        stamped = slot is not None and seen != [] and order.placement_sent_at is not None
        return ticket, slot, stamped

    def validate(
        self,
        order_type: OrderType,
        user_id: int,
        strategy: StrategyRecord,
        quantity: int,
        now: datetime,
        *,
        square_off: bool = False,
    ) -> None:
        """Each rule with its own message; raises ValidationFailed.

        A square-off (the emergency stop's SELL of an open position) is the one order a STOPPED
        strategy accepts, and the only one a square-off may be."""
        name = f"strategy {strategy.id} ({strategy.name})"
        if strategy.user_id != user_id:
            raise errors.ValidationFailed(f"{name} does not belong to user {user_id}")
        if square_off:
            if order_type is not OrderType.SELL:
                raise errors.ValidationFailed(f"a square-off is a SELL, not a {order_type}: send it as a SELL")
            if strategy.status != "STOPPED":
                raise errors.ValidationFailed(
                    f"{name} is {strategy.status}: only a stopped strategy is squared off; send a plain SELL"
                )
        elif order_type is OrderType.BUY or strategy.status != "SL_TRIGGERED":
            # A stop-loss that failed or filled in part leaves SL_TRIGGERED: its position can still be sold.
            if strategy.status != "RUNNING":
                raise errors.ValidationFailed(f"{name} is {strategy.status}, not RUNNING: start it to trade")
        if not strategy.symbol:
            raise errors.ValidationFailed(f"{name} has no symbol: set the instrument to trade")
        if order_type is OrderType.BUY:
            if strategy.open_quantity > 0:
                raise errors.ValidationFailed(
                    f"{name} already holds {strategy.open_quantity} {strategy.symbol}: "
                    "a BUY needs no open position"
                )
            if strategy.needs_intervention:
                raise errors.ValidationFailed(
                    f"{name} needs manual intervention ({strategy.intervention_reason}): "
                    "clear it before a new entry"
                )
        elif strategy.open_quantity <= 0:
            raise errors.ValidationFailed(f"{name} holds no open position: there is nothing to sell")
        if quantity <= 0:
            raise errors.ValidationFailed(f"{name} has quantity {quantity}: set a quantity above 0")
        if self.settings.enforce_market_hours and not self.calendar.is_open(now):
            raise errors.ValidationFailed(
                f"the market is closed at {now.astimezone().isoformat(timespec='seconds')}: "
                "NSE trades 09:15–15:30 IST on trading days"
            )

    # 1 + 2 + 3 (+ 4) in one step: the fast path, one local activity between a trigger and the broker.

    @activity.defn(name="begin_and_place_order")
    async def begin_and_place_order(self, request: BeginOrder) -> BegunOrder:
        """Validate, record, place; then watch the order book for up to FAST_FILL_WAIT_SECONDS.

        A market order that fills at once comes back with its final state, and the workflow finishes it
        without a regular activity (no follower, no heartbeats, no server round trip). Anything else
        (still open, a twin in the book, a failed read) comes back without a state, for the follower.

        Crash safety: a worker killed in here leaves no marker, so the replay runs this activity again.
        `begin_order` finds the recorded attempt; `place_order_once` finds the send stamp and, with the
        broker order id already recorded, takes it without a second request (or, without one, looks the
        tag up once the first request's window has passed: the workflow's step-by-step path). Nothing
        here writes the fill: `finish_order` applies it from the state returned, or the follower does.
        """
        # One transaction: the attempt, the account's send slot and, when the slot is now, the send stamp.
        ticket, slot, stamped = await self._begin(request, reserve=True)
        # A slot later than now is waited for here, and the send stamped after it, as ever.
        send_by = await self.pacer.take(slot) if slot is not None else None
        if stamped:
            broker = await self._broker(ticket.broker_account_id)
            placement = await self._send(
                ticket, self._order_request(ticket), broker, _now(), previous_send=None, send_by=send_by
            )
        else:
            placement = await self._place(ticket, paced=slot is not None, send_by=send_by)
        placed_at = _now()
        state = await self._filled_at_once(ticket, placement.broker_order_id)
        return BegunOrder(ticket=ticket, placement=placement, state=state, placed_at=placed_at)

    async def _filled_at_once(self, ticket: OrderTicket, broker_order_id: str) -> BrokerOrderState | None:
        """The order's terminal state if the order book shows one within the bound; None otherwise."""
        account = str(ticket.broker_account_id)
        deadline = time.monotonic() + FAST_FILL_WAIT_SECONDS
        version = 0
        while (left := deadline - time.monotonic()) > 0:
            try:
                broker = await self._broker(ticket.broker_account_id)
                version, order = await self.watcher.next_snapshot(account, broker, broker_order_id, version, left)
            except Exception:  # the order is placed: no failure of this watch may fail this step
                return None  # the follower reads on, with its backoff and its error handling
            if self.watcher.tagged(account, ticket.tag, broker_order_id):
                return None  # a twin: the follower records and cancels it
            if order is not None and is_terminal(order.status):
                return to_state(order)
        return None

    # 3. Place exactly once.

    @activity.defn(name="place_order_once")
    async def place_order_once(self, request: PlaceOrder) -> Placement:
        return await self._place(request.ticket, paced=False)

    def _order_request(self, ticket: OrderTicket) -> OrderRequest:
        return OrderRequest(
            exchange=ticket.exchange,
            tradingsymbol=ticket.symbol,
            transaction_type=ticket.transaction_type,
            quantity=ticket.quantity,
            product=ticket.product,
            order_type="MARKET",
            tag=ticket.tag,
            market_protection=ticket.policy.market_protection,
        )

    async def _place(self, ticket: OrderTicket, *, paced: bool, send_by: float | None = None) -> Placement:
        """Stamp the send, send once, record the broker's order id; `paced`: the caller already waited
        for the account's slot, which ends at `send_by`."""
        broker = await self._broker(ticket.broker_account_id)
        order_request = self._order_request(ticket)
        if not paced:
            send_by = await self.pacer.wait_turn(ticket.broker_account_id)
        sent_at = _now()
        try:
            # The last check before the broker: a strategy stopped while this entry queued sends nothing.
            previous_send = await self.store.start_placement(ticket.order_key, sent_at)
            if previous_send is not None:
                # An earlier attempt (a retry, or a replay after a crash) may have reached the broker.
                recorded = await self.store.get_order(ticket.order_key)
                if recorded.broker_order_id is not None:  # it did, and the broker's answer was recorded
                    return Placement(broker_order_id=recorded.broker_order_id, adopted=recorded.adopted,
                                     resent=recorded.adopted)
                existing = await self._adopt_placed(ticket, broker, previous_send)
                if existing is not None:
                    return existing
                send_by = await self.pacer.wait_turn(ticket.broker_account_id)
                sent_at = _now()
                await self.store.set_placement_started(ticket.order_key, sent_at)
        except EntryStopped as stopped:
            raise ApplicationError(str(stopped), type=errors.ENTRY_STOPPED, non_retryable=True) from None
        return await self._send(ticket, order_request, broker, sent_at, previous_send=previous_send, send_by=send_by)

    async def _send(
        self, ticket: OrderTicket, order_request: OrderRequest, broker: Broker, sent_at: datetime,
        *, previous_send: datetime | None, send_by: float | None,
    ) -> Placement:
        """The one request, its send already stamped at `sent_at`; the broker's order id recorded."""
        window = self._resend_window(ticket)
        try:
            try:
                order_id, sent_at = await self._send_in_slot(ticket, order_request, broker, sent_at, send_by)
            except SessionExpiredError:
                try:
                    renewed = await self._renewed_broker(ticket.broker_account_id, broker)
                except ApplicationError:
                    await self.store.set_placement_started(ticket.order_key, None)  # a TokenException placed nothing
                    raise
                order_id = await renewed.place_order(order_request)
        except BrokerError as error:
            if not _may_have_placed(error):
                await self.store.set_placement_started(ticket.order_key, None)
            raise broker_failure(error, sent_at=sent_at, window=window) from None
        await self.store.record_placement(ticket.order_key, order_id, sent_at, adopted=False)
        return Placement(broker_order_id=order_id, adopted=False, resent=previous_send is not None)

    async def _send_in_slot(
        self, ticket: OrderTicket, order_request: OrderRequest, broker: Broker, sent_at: datetime,
        send_by: float | None,
    ) -> tuple[str, datetime]:
        """Send within the account's slot. A request that could not leave on time (a busy event loop,
        a slow store) sent nothing: it queues for a new slot, stamped with the slot's time before its
        wait, so that nothing stands between the slot and the request, and a replay's lookup window
        starts when the request really leaves (within the pacer's tolerance after the stamp). Answers
        the order id and the last stamp."""
        while True:
            try:
                return await broker.place_order(order_request, send_by=send_by), sent_at
            except SendSlotMissedError as missed:
                log.info("order %s: %s", ticket.order_key, missed)
            slot = await self.pacer.reserve(ticket.broker_account_id)
            if slot.granted:  # stamped for the slot itself: nothing but the wait stands before the request
                sent_at = _now()
                if slot.wait_seconds > 0 and slot.not_before is not None:
                    sent_at = datetime.fromtimestamp(slot.not_before, UTC)
                await self.store.set_placement_started(ticket.order_key, sent_at)
            send_by = await self.pacer.take(slot)  # raises PacingBacklog when none was granted

    def _resend_window(self, ticket: OrderTicket) -> float:
        """How long after a request its tag must stay unseen before the order is sent again: the
        request's own window, and the order type's quiet time (a stop-loss waits least)."""
        return self.settings.retry_window_seconds + self.settings.resend_quiet_seconds(ticket.order_type)

    @activity.defn(name="find_placed_order")
    async def find_placed_order(self, ticket: OrderTicket) -> Placement | None:
        """After the last placement attempt failed ambiguously: is the order at the broker after all?"""
        previous_send = await self.store.placement_started_at(ticket.order_key)
        if previous_send is None:
            return None  # the last attempt surely sent nothing
        return await self._adopt_placed(ticket, await self._broker(ticket.broker_account_id), previous_send)

    async def _adopt_placed(self, ticket: OrderTicket, broker: Broker, previous_send: datetime) -> Placement | None:
        """Find the order an earlier attempt sent, by tag, and adopt it.

        A "not found" is trusted only once the earlier request's window and the order type's quiet time
        have passed (orders never leave the day's book, so one look then sees the whole span): until then
        the attempt is retried after the rest of it.
        """
        window = self._resend_window(ticket)
        wait = (previous_send + timedelta(seconds=window) - _now()).total_seconds()
        if wait > 0:
            raise ApplicationError(
                f"an earlier placement attempt may still reach the broker; looking it up in {wait:.1f}s",
                type=errors.BROKER_AMBIGUOUS,
                next_retry_delay=timedelta(seconds=wait),
            )
        try:
            existing = await broker.find_order_by_tag(ticket.tag)
        except BrokerError as error:
            raise broker_failure(error, sent_at=None, window=window) from None
        if existing is None:
            return None
        await self.store.record_placement(ticket.order_key, existing.order_id, _now(), adopted=True)
        return Placement(broker_order_id=existing.order_id, adopted=True, resent=True)

    # 4. Follow to a terminal state.

    @activity.defn(name="follow_order")
    async def follow_order(self, request: FollowOrder) -> FollowResult:
        ticket = request.ticket
        details = activity.info().heartbeat_details
        current: BrokerOrderState | None = request.last_known
        if details and details[0] is not None:  # an attempt that died before its first snapshot sent None
            current = BrokerOrderState.model_validate(details[0])
        version = 0
        misses = 0
        failures = 0
        twins: dict[str, BrokerOrder] = {}
        account = str(ticket.broker_account_id)
        while True:
            broker = await self._broker(ticket.broker_account_id)
            fresh = False
            if failures:
                # A failed poll answers at once: wait for the next one, ever longer, instead of spinning.
                await asyncio.sleep(min(request.poll_interval_seconds * 2**failures, FAILED_POLL_BACKOFF_MAX))
            try:
                version, order = await self.watcher.next_snapshot(
                    str(ticket.broker_account_id),
                    broker,
                    request.broker_order_id,
                    version,
                    timeout=max(1.0, request.poll_interval_seconds * 4),
                )
                if order is None:
                    misses += 1
                    if misses >= 3:  # not in the book snapshot yet: ask for the order itself
                        order = await broker.order_status(request.broker_order_id)
                fresh, failures = order is not None, 0
            except SessionExpiredError:
                await self._renewed_broker(ticket.broker_account_id, broker)  # raises when logged out
                version, failures = self.watcher.version(account), failures + 1
                continue
            except DefinitiveBrokerError as refused:
                raise broker_failure(refused, sent_at=None, window=0) from None
            except BrokerError as passing:
                version, failures = self.watcher.version(account), min(failures + 1, 10)
                if failures in (1, 10):  # the first of a run of failures, then one line per long wait
                    log.info("following %s: %s; polling on", request.broker_order_id, passing)
                order = None
            for twin in self.watcher.tagged(str(ticket.broker_account_id), ticket.tag, request.broker_order_id):
                if twin.order_id not in twins:
                    await self._handle_twin(ticket, broker, request.broker_order_id, twin)
                twins[twin.order_id] = twin
            if order is not None:
                update = to_state(order)
                if current is None or supersedes(
                    current.status, current.filled_quantity, update.status, update.filled_quantity
                ):
                    current = update
                    await self._record_update(ticket.order_key, current)
            activity.heartbeat(current)
            if current is not None and is_terminal(current.status):
                return FollowResult(state=current, twins=sorted(twins))
            # Timed out on what the broker said just now: a late follower's old state proves nothing (unless
            # the broker has said nothing for long past the deadline: then the cancel is what can help).
            late = _now() >= request.deadline + STALE_STATE_GRACE
            if _now() >= request.deadline and current is not None and (fresh or late):
                return FollowResult(state=current, timed_out=True, twins=sorted(twins))

    # Twins: a second broker order under one order's tag (a request the broker acted on after the window).

    async def _handle_twin(self, ticket: OrderTicket, broker: Broker, primary_id: str, twin: BrokerOrder) -> None:
        """Record the twin as an order of its own and, while it is open, cancel it at once."""
        log.critical("twin broker order %s under tag %s of order %s (broker order %s)",
                     twin.order_id, ticket.tag, ticket.order_key, primary_id)
        record = await self.store.record_twin(ticket.order_key, twin.order_id, twin.quantity, _now())
        await self.store.record_order_update(
            record.workflow_id, twin.status, twin.filled_quantity, twin.average_price, None
        )
        if is_terminal(twin.status) or twin.status == "CANCEL PENDING":
            return
        try:
            await cancel_in_slot(self.pacer, ticket.broker_account_id, broker, twin.order_id)
        except BrokerError as error:  # the next sweep sees how it ended, and tries again while it is open
            await self.store.append_order_event(record.workflow_id, "TWIN_CANCEL_FAILED", {"message": str(error)})
            return
        await self.store.append_order_event(record.workflow_id, "TWIN_CANCEL_SENT", {"broker_order_id": twin.order_id})

    @activity.defn(name="sweep_twins")
    async def sweep_twins(self, request: SweepTwins) -> list[BrokerOrderState]:
        """One look at the order book for twins of an order that ended: each recorded, an open one cancelled."""
        ticket = request.ticket
        broker = await self._broker(ticket.broker_account_id)
        try:
            book = await broker.orders()
        except BrokerError as error:
            raise broker_failure(error, sent_at=None, window=0) from None
        twins = [o for o in book if o.tag == ticket.tag and o.order_id != request.broker_order_id]
        for twin in twins:
            await self._handle_twin(ticket, broker, request.broker_order_id, twin)
        return [to_state(twin) for twin in twins]

    @activity.defn(name="finish_twin")
    async def finish_twin(self, request: FinishTwin) -> str | None:
        """Apply a twin's final fill to the strategy and close its record; the message for a person when
        it filled anything (None when it ended unfilled)."""
        twin = request.twin
        ticket = request.ticket
        key = twin_workflow_id(request.order_key, twin.order_id)
        now = _now()
        problem = None
        if twin.filled_quantity > 0:
            try:
                await self.store.apply_fill(
                    Fill(workflow_id=key, filled_quantity=twin.filled_quantity, average_price=twin.average_price,
                         status=twin.status, filled_at=now)
                )
            except FillMismatch as beyond:  # a twin exit sold more than the strategy held: short at the broker
                problem = f"{beyond}; the account is short at the broker: buy it back by hand"
        outcome = "SUCCESS" if twin.filled_quantity > 0 else "FAILED"
        await self.store.finish_order(key, outcome, twin.status, to_state_dict(twin), problem, now)
        if twin.filled_quantity == 0:
            return None
        message = (
            f"twin order: broker orders {request.broker_order_id} and {twin.order_id} both carry tag {ticket.tag} "
            f"of {request.order_key}; the twin {ticket.transaction_type} filled {twin.filled_quantity} "
            f"{ticket.symbol} at {twin.average_price}" + (f"; {problem}" if problem else "; applied to the position")
        )
        await self.store.mark_intervention(ticket.strategy_id, message)
        return message

    async def _record_update(self, order_key: str, state: BrokerOrderState) -> None:
        # The store appends the STATUS event to the order's trail in the same transaction.
        await self.store.record_order_update(order_key, state.status, state.filled_quantity, state.average_price, None)

    # Cancel at the broker (timeout, or a person's cancel).

    @activity.defn(name="cancel_at_broker")
    async def cancel_at_broker(self, request: CancelAtBroker) -> CancelAnswer:
        broker = await self._broker(request.ticket.broker_account_id)
        try:
            try:
                await cancel_in_slot(self.pacer, request.ticket.broker_account_id, broker, request.broker_order_id)
            except SessionExpiredError:
                renewed = await self._renewed_broker(request.ticket.broker_account_id, broker)
                await renewed.cancel_order(request.broker_order_id)
        except (SessionExpiredError, RateLimitedError, AmbiguousBrokerError) as error:
            raise broker_failure(error, sent_at=None, window=0) from None
        except DefinitiveBrokerError as refused:
            # Usually: the order is already complete, rejected or cancelled. Following it tells which.
            message = refused.broker_message or refused.message
            await self.store.append_order_event(request.ticket.order_key, "CANCEL_REFUSED", {"message": message})
            return CancelAnswer(accepted=False, message=message)
        await self.store.append_order_event(
            request.ticket.order_key, "CANCEL_SENT", {"broker_order_id": request.broker_order_id}
        )
        return CancelAnswer(accepted=True, message="cancel accepted by the broker")

    # 5 + 6 + 7. Apply the result to the strategy, record it, publish the event.

    @activity.defn(name="finish_order")
    async def finish_order(self, request: FinishOrder) -> None:
        state = request.state
        now = _now()
        fill = None
        if state is not None and state.filled_quantity > 0:
            fill = Fill(
                workflow_id=request.order_key,
                filled_quantity=state.filled_quantity,
                average_price=state.average_price,
                status=state.status,
                filled_at=now,
            )
        audit_outcome = {
            Outcome.FILLED: "SUCCESS",
            Outcome.PARTIALLY_FILLED: "SUCCESS",
            Outcome.REJECTED: "FAILED",
            Outcome.CANCELLED: "FAILED",
            Outcome.INVALID: "FAILED",
            Outcome.FAILED: "ERROR",
            Outcome.UNRESOLVED: "ERROR",
        }[request.outcome]
        result: dict[str, Any] = {"outcome": request.outcome.value}
        if state is not None:
            result.update(state.model_dump(mode="json"))
        try:
            # One transaction: the fill, the flag for a person, the audit row's result and the outbox row.
            await self.store.complete_order(
                request.order_key,
                fill,
                audit_outcome,
                state.status if state is not None else request.outcome.value,
                result,
                request.error,
                now,
                intervention=(request.intervention_reason or "see order") if request.needs_intervention else None,
                strategy_id=request.strategy_id,
            )
        except StoreError as error:
            if not error.retryable:
                raise ApplicationError(str(error), type=type(error).__name__, non_retryable=True) from None
            raise
        # finish_order wrote the ORDER_EXECUTED row of the outbox; subscribers in this process hear it now.
        self.events.publish(
            {
                "type": "ORDER_EXECUTED",
                "order_key": request.order_key,
                "strategy_id": request.strategy_id,
                "order_type": request.order_type.value,
                **result,
            }
        )
