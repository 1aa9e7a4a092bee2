"""OrderWorkflow: one order, from intent to a recorded result, exactly once.

validate + record the attempt → place once → follow to COMPLETE / REJECTED / CANCELLED (cancel on
timeout or request) → apply the fill, record the result, publish the event → alert when needed.

The steps before the order leaves are local activities in the first workflow task: no round trip to
the server stands between a trigger and the broker. A run that ends with nothing filled fails, so the
same intent may be tried again under the same workflow id; a run that filled anything completes, and
its workflow id then refuses every repeat.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from decimal import Decimal

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError, FailureError

with workflow.unsafe.imports_passed_through():
    from activities.alerts import AlertActivities
    from activities.order import OrderActivities
    from engine import errors
    from engine.ids import OrderType, broker_tag, order_key
    from engine.models import (
        RETRYABLE_OUTCOMES,
        Alert,
        AlertLevel,
        BeginOrder,
        BrokerOrderState,
        CancelAnswer,
        CancelAtBroker,
        FinishOrder,
        FollowOrder,
        FollowResult,
        OrderIntent,
        OrderResult,
        OrderStatusView,
        OrderTicket,
        Outcome,
        Placement,
        PlaceOrder,
        WatchTwins,
    )
    from engine.temporal import BROKER_ORDER_ID, ORDER_STATUS, RESULT_MEMO

from workflows.emergency_stop import deliver_alert_later

STORE_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    maximum_interval=timedelta(seconds=5),
    maximum_attempts=10,
    non_retryable_error_types=list(errors.NOT_RETRYABLE),
)
BROKER_CALL_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=500),
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=10,
    non_retryable_error_types=[errors.BROKER_REFUSED, errors.SESSION_EXPIRED],
)
# Placing and cancelling first wait their turn in the account's order queue (Kite: 10 per second per
# account, across workers): room in one attempt for a burst of a few hundred orders of one account.
ORDER_QUEUE_ALLOWANCE = timedelta(seconds=30)
# The first, combined attempt: validation, the attempt's record, the per-account queue and one request.
FIRST_ATTEMPT_TIMEOUT = timedelta(seconds=60)
# After a cancel, how long the broker gets to confirm a terminal state before a person is asked.
CANCEL_GRACE = timedelta(seconds=30)
# An operator's cancel is a `cancel` signal (or the `request_cancel` update) followed at once by Temporal's
# cancel request: a run that ends cancelled with nothing filled waits this long for the request, so that
# it reads "Canceled" in the UI, not "Failed".
CANCEL_REQUEST_WAIT = timedelta(seconds=5)
TEMPORAL_CANCEL_REASON = "cancel requested in Temporal"


def outcome_of(state: BrokerOrderState) -> Outcome:
    if state.status == "COMPLETE":
        return Outcome.FILLED
    if state.filled_quantity > 0:
        return Outcome.PARTIALLY_FILLED
    if state.status == "REJECTED":
        return Outcome.REJECTED
    return Outcome.CANCELLED


def _cause(error: BaseException) -> ApplicationError | None:
    """The ApplicationError an activity raised: wrapped for activities, bare for local activities."""
    cause = error.cause if isinstance(error, ActivityError) else error
    return cause if isinstance(cause, ApplicationError) else None


def _logged_out(error: FailureError | None) -> bool:
    """The account has no usable Kite token (expired, or refused by Kite): nothing was sent."""
    cause = _cause(error) if error is not None else None
    return cause is not None and cause.type == errors.SESSION_EXPIRED


def _first_notice(error: FailureError | None) -> bool:
    """Whether this failure is the account's first "log in to Kite" since its last login."""
    cause = _cause(error) if error is not None else None
    if cause is None or not cause.details or not isinstance(cause.details[0], dict):
        return True
    return bool(cause.details[0].get("first_notice", True))


def _cause_message(error: FailureError | None) -> str:
    cause = _cause(error) if error is not None else None
    return cause.message if cause is not None else "the account is logged out"


def _entry_stopped(error: FailureError | None) -> bool:
    """The strategy was stopped before this entry left: nothing was sent."""
    cause = _cause(error) if error is not None else None
    return cause is not None and cause.type == errors.ENTRY_STOPPED


@workflow.defn(name="OrderWorkflow")
class OrderWorkflow:
    def __init__(self) -> None:
        self._intent: OrderIntent | None = None
        self._stage = "starting"
        self._ticket: OrderTicket | None = None
        self._broker_order_id: str | None = None
        self._state: BrokerOrderState | None = None
        self._cancel_requested = False
        self._cancel_reason: str | None = None
        self._cancel_answer: CancelAnswer | None = None
        self._result: OrderResult | None = None
        self._lost_track: str | None = None
        self._placement_failure: FailureError | None = None
        self._placement: Placement | None = None
        self._twins: set[str] = set()
        self._entry_stopped = False  # refused at the send stamp by an emergency stop, which cancels it too

    # Control

    @workflow.signal
    def cancel(self, reason: str = "cancelled by request") -> None:
        if not self._cancel_requested:
            self._cancel_requested = True
            self._cancel_reason = reason

    @workflow.update
    async def request_cancel(self, reason: str = "cancelled by request") -> CancelAnswer:
        """Cancel, and answer once the broker answered the cancel or the order ended."""
        self.cancel(reason)
        await workflow.wait_condition(lambda: self._cancel_answer is not None or self._result is not None)
        if self._cancel_answer is not None:
            return self._cancel_answer
        assert self._result is not None
        return CancelAnswer(accepted=False, message=f"the order already ended: {self._result.outcome}")

    @workflow.query
    def status(self) -> OrderStatusView:
        assert self._intent is not None
        return OrderStatusView(
            workflow_id=workflow.info().workflow_id,
            order_type=self._intent.order_type,
            strategy_id=self._intent.strategy_id,
            stage=self._stage,
            broker_order_id=self._broker_order_id,
            status=self._state.status if self._state else None,
            filled_quantity=self._state.filled_quantity if self._state else 0,
            quantity=self._ticket.quantity if self._ticket else 0,
            average_price=self._state.average_price if self._state and self._state.filled_quantity else None,
            cancel_requested=self._cancel_requested,
            result=self._result,
        )

    # The process

    @workflow.run
    async def run(self, intent: OrderIntent) -> OrderResult:
        """The order, shielded from Temporal's cancel request: the request (the UI's "Request
        Cancellation", or the one an operator's cancel sends) becomes an ordinary cancel of the order,
        which then ends as it would: cancelled at the broker, whatever filled kept. A run that ended
        cancelled with nothing filled reads "Canceled"; its OrderResult is in the run's memo."""
        self._intent = intent
        body = asyncio.create_task(self._run(intent))
        try:
            return await asyncio.shield(body)
        except asyncio.CancelledError:
            self.cancel(TEMPORAL_CANCEL_REASON)
        except ApplicationError as ended:
            if ended.type != Outcome.CANCELLED.value or not (self._cancel_requested or self._entry_stopped):
                raise
            try:  # an operator's cancel or a stop: Temporal's cancel request follows the signal
                await workflow.wait_condition(lambda: False, timeout=CANCEL_REQUEST_WAIT)
            except TimeoutError:
                raise ended from None
            except asyncio.CancelledError:
                raise self._cancelled(ended) from None
        try:
            return await body
        except ApplicationError as ended:
            if ended.type != Outcome.CANCELLED.value:
                raise
            raise self._cancelled(ended) from None

    def _cancelled(self, ended: ApplicationError) -> CancelledError:
        """The end of a run cancelled with nothing filled, its result kept in the memo."""
        assert self._result is not None
        workflow.upsert_memo({RESULT_MEMO: self._result})
        return CancelledError(ended.message)

    async def _run(self, intent: OrderIntent) -> OrderResult:
        self._intent = intent
        info = workflow.info()
        key = order_key(info.workflow_id, info.run_id)

        self._set_stage("validating")
        begin = BeginOrder(
            intent=intent, workflow_id=info.workflow_id, run_id=info.run_id, order_key=key, tag=broker_tag(key)
        )
        # The fast path: validate, record and place in one local activity, one attempt. Anything else
        # (a refusal, a retry, a fault) takes the steps one by one below, each with its own retry policy.
        try:
            begun = await workflow.execute_local_activity_method(
                OrderActivities.begin_and_place_order,
                begin,
                start_to_close_timeout=FIRST_ATTEMPT_TIMEOUT,
                retry_policy=RetryPolicy(maximum_attempts=1),
            )
            ticket, first_failure = begun.ticket, None
            placement: Placement | None = begun.placement
            filled_at_once = begun.state
        except FailureError as failed:
            cause = _cause(failed)
            if cause is not None and cause.type in (errors.VALIDATION_FAILED, errors.ORDER_IN_FLIGHT):
                return await self._end_unplaced(key, None, Outcome.INVALID, failed)
            first_failure, placement, filled_at_once = failed, None, None
            try:
                ticket = await workflow.execute_local_activity_method(  # idempotent: the recorded attempt
                    OrderActivities.begin_order, begin, start_to_close_timeout=timedelta(seconds=10),
                    retry_policy=STORE_RETRY,
                )
            except FailureError as refused:
                return await self._end_unplaced(key, None, Outcome.INVALID, refused)
        self._ticket = ticket
        is_exit = intent.order_type is not OrderType.BUY
        if placement is None and is_exit and _logged_out(first_failure):
            placement = await self._place_after_login(ticket, first_failure)
            if placement is None:
                failure = self._placement_failure or first_failure
                outcome = Outcome.CANCELLED if self._cancel_requested else Outcome.FAILED
                return await self._end_unplaced(key, ticket, outcome, None if self._cancel_requested else failure)
        if placement is None:
            cause = _cause(first_failure) if first_failure is not None else None
            if cause is not None and cause.type in (errors.BROKER_REFUSED, errors.SESSION_EXPIRED):
                # An entry of a logged-out account is refused: nothing was sent, and nothing needs a person.
                unplaced = Outcome.INVALID if _logged_out(first_failure) else Outcome.FAILED
                return await self._end_unplaced(key, ticket, unplaced, first_failure)
            if self._cancel_requested or _entry_stopped(first_failure):
                # The first attempt may have reached the broker: its tag is looked up before anything ends.
                placement = await self._find_placed(ticket)
                if placement is None:
                    why = first_failure if _entry_stopped(first_failure) else None
                    return await self._end_unplaced(key, ticket, Outcome.CANCELLED, why)
            else:
                placement = await self._place_with_retries(ticket)
                if placement is None and is_exit and _logged_out(self._placement_failure):
                    placement = await self._place_after_login(ticket, self._placement_failure)
            if placement is None:
                failure = self._placement_failure
                outcome = Outcome.CANCELLED if _entry_stopped(failure) else Outcome.FAILED
                if _logged_out(failure) and not is_exit:
                    outcome = Outcome.INVALID
                return await self._end_unplaced(key, ticket, outcome, failure)
        self._broker_order_id = placement.broker_order_id
        self._placement = placement
        if filled_at_once is not None:
            # The fast path saw the order end within its bound: no follower, and the search attributes
            # are set once, with the result (`_conclude`).
            self._state = filled_at_once
            self._set_details()
            return await self._end_placed(key, ticket, filled_at_once, False)
        # Followed for longer: the UI finds the order by its broker id while it is live.
        workflow.upsert_search_attributes(
            [BROKER_ORDER_ID.value_set(placement.broker_order_id), ORDER_STATUS.value_set("PLACED")]
        )
        state, timed_out = await self._follow_to_end(ticket, placement.broker_order_id)
        return await self._end_placed(key, ticket, state, timed_out)

    async def _place_with_retries(self, ticket: OrderTicket) -> Placement | None:
        """Place with retries and backoff; None when it surely failed (the error kept for the audit)."""
        policy = ticket.policy
        self._set_stage("placing")
        try:
            return await workflow.execute_local_activity_method(
                OrderActivities.place_order_once,
                PlaceOrder(ticket=ticket),
                # Longer than the HTTP client's timeout: an attempt is never abandoned mid-request.
                start_to_close_timeout=timedelta(seconds=policy.broker_timeout_seconds + 5) + ORDER_QUEUE_ALLOWANCE,
                retry_policy=RetryPolicy(
                    initial_interval=timedelta(milliseconds=500),
                    backoff_coefficient=2.0,
                    maximum_interval=timedelta(seconds=30),
                    maximum_attempts=policy.retry_attempts,
                    non_retryable_error_types=[errors.BROKER_REFUSED, errors.SESSION_EXPIRED],
                ),
            )
        except FailureError as failed:
            self._placement_failure = failed
            cause = _cause(failed)
            if cause is not None and cause.type in (errors.BROKER_REFUSED, errors.SESSION_EXPIRED):
                return None
        # The last attempt's outcome may be unknown: nothing ends until the order book has been asked.
        return await self._find_placed(ticket)

    async def _place_after_login(self, ticket: OrderTicket, failure: FailureError | None) -> Placement | None:
        """An exit of an account Kite logged out (or whose token expired) is not given up: it waits for
        the next login, then is sent (a TokenException placed nothing). None when cancelled meanwhile,
        or when placing fails otherwise after a login."""
        account_id = ticket.broker_account_id
        while _logged_out(failure) and not self._cancel_requested:
            if _first_notice(failure):
                await self._alert(AlertLevel.CRITICAL, f"log in to Kite for account {account_id}",
                                  f"{_cause_message(failure)}; this exit is sent after the next login, entries "
                                  "are refused until then")
            self._set_stage(f"waiting for a Kite login of account {account_id}")
            while not self._cancel_requested:
                waiting = workflow.start_activity_method(
                    OrderActivities.wait_for_login, account_id,
                    start_to_close_timeout=timedelta(minutes=2), heartbeat_timeout=timedelta(seconds=20),
                    retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=30)),
                    cancellation_type=workflow.ActivityCancellationType.TRY_CANCEL,
                )
                await workflow.wait_condition(lambda: waiting.done() or self._cancel_requested)  # noqa: B023
                if not waiting.done():
                    waiting.cancel()
                    return None
                if waiting.result():
                    break
            if self._cancel_requested:
                return None
            self._placement_failure = None
            placement = await self._place_with_retries(ticket)
            if placement is not None:
                return placement
            failure = self._placement_failure
        return None

    async def _find_placed(self, ticket: OrderTicket) -> Placement | None:
        """The order an earlier attempt placed, looked up by tag once its request's window has passed;
        None at once when no attempt sent anything."""
        policy = ticket.policy
        return await workflow.execute_local_activity_method(
            OrderActivities.find_placed_order,
            ticket,
            start_to_close_timeout=timedelta(seconds=policy.broker_timeout_seconds + 5),
            retry_policy=RetryPolicy(
                initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30),
                non_retryable_error_types=[errors.SESSION_EXPIRED],
            ),
        )

    async def _follow_to_end(self, ticket: OrderTicket, broker_order_id: str) -> tuple[BrokerOrderState, bool]:
        """Follow until terminal; cancel on request or at the deadline; keep whatever was filled."""
        policy = ticket.policy
        deadline = workflow.now() + timedelta(seconds=policy.timeout_seconds)
        timed_out = False
        cancel_sent = False
        while True:
            self._set_stage("cancelling" if cancel_sent else "following")
            follow = workflow.start_activity_method(
                OrderActivities.follow_order,
                FollowOrder(
                    ticket=ticket, broker_order_id=broker_order_id, deadline=deadline,
                    poll_interval_seconds=policy.poll_interval_seconds, last_known=self._state,
                ),
                start_to_close_timeout=timedelta(seconds=policy.timeout_seconds) + CANCEL_GRACE * 2,
                heartbeat_timeout=timedelta(
                    seconds=max(policy.follow_heartbeat_timeout_seconds, policy.poll_interval_seconds * 20)
                ),
                retry_policy=BROKER_CALL_RETRY,
                # The follower hears of a cancel only at its next (throttled) heartbeat: the broker's cancel
                # must not wait for that. A stale follower's late updates never win (`supersedes`).
                cancellation_type=workflow.ActivityCancellationType.TRY_CANCEL,
            )
            await workflow.wait_condition(
                lambda: follow.done() or (self._cancel_requested and not cancel_sent)  # noqa: B023
            )
            if not follow.done():
                follow.cancel()
            try:
                result: FollowResult | None = await follow
            except ActivityError as failed:
                if not isinstance(failed.cause, CancelledError):
                    cause = _cause(failed)
                    self._lost_track = cause.message if cause is not None else str(failed)
                    return self._state or self._unknown_state(ticket, broker_order_id), timed_out
                result = None  # cancelled to send the cancel; the next follow picks up from _state
            if result is not None:
                self._state = result.state
                self._twins.update(result.twins)
                if result.state.filled_quantity:
                    self._set_details()
                if result.state.status in ("COMPLETE", "REJECTED", "CANCELLED"):
                    return result.state, timed_out
                if result.timed_out:
                    if cancel_sent:
                        return result.state, True  # the broker never confirmed the cancel: a person must look
                    timed_out = True
            if not cancel_sent and (timed_out or self._cancel_requested):
                self._cancel_answer = await workflow.execute_activity_method(
                    OrderActivities.cancel_at_broker,
                    CancelAtBroker(ticket=ticket, broker_order_id=broker_order_id),
                    start_to_close_timeout=timedelta(seconds=policy.broker_timeout_seconds + 5) + ORDER_QUEUE_ALLOWANCE,
                    retry_policy=BROKER_CALL_RETRY,
                )
                cancel_sent = True
                deadline = workflow.now() + CANCEL_GRACE

    def _unknown_state(self, ticket: OrderTicket, broker_order_id: str) -> BrokerOrderState:
        return BrokerOrderState(
            order_id=broker_order_id, status="UNKNOWN", quantity=ticket.quantity, filled_quantity=0,
            pending_quantity=ticket.quantity, average_price=Decimal(0),
        )

    async def _end_placed(
        self, key: str, ticket: OrderTicket, state: BrokerOrderState, timed_out: bool
    ) -> OrderResult:
        intent = self._require_intent()
        terminal = state.status in ("COMPLETE", "REJECTED", "CANCELLED")
        outcome = outcome_of(state) if terminal else Outcome.UNRESOLVED
        reasons = []
        if self._lost_track:
            reasons.append(f"could not follow the order: {self._lost_track}")
        elif not terminal:
            reasons.append(f"the broker never confirmed a final state (last: {state.status})")
        if timed_out and state.status != "COMPLETE":  # on the broker's state: a fill that beat the cancel is whole
            reasons.append(f"not complete after {ticket.policy.timeout_seconds:g}s; the remainder was cancelled")
        if outcome is Outcome.PARTIALLY_FILLED:
            reasons.append(f"only {state.filled_quantity} of {ticket.quantity} filled")
        if outcome in (Outcome.REJECTED, Outcome.CANCELLED) and intent.order_type is not OrderType.BUY:
            reasons.append(f"exit order {outcome.value.lower()}: the position is still open")
        needs_intervention = bool(reasons)
        message = state.status_message if outcome is Outcome.REJECTED else None
        if self._cancel_requested and outcome in (Outcome.CANCELLED, Outcome.PARTIALLY_FILLED):
            message = self._cancel_reason
        result = self._result_of(key, outcome, ticket, state, message, needs_intervention)
        await self._finish(key, ticket, result, state, "; ".join(reasons) or None)
        await self._watch_for_twins(key, ticket)
        level = AlertLevel.CRITICAL if intent.order_type is not OrderType.BUY else AlertLevel.WARNING
        if needs_intervention or outcome is Outcome.REJECTED:
            await self._alert(level, f"{intent.order_type} order {outcome.value.lower()}",
                              "; ".join(reasons) or (message or outcome.value))
        return self._conclude(result)

    async def _watch_for_twins(self, key: str, ticket: OrderTicket) -> None:
        """An order sent more than once (or with a twin seen already) has its tag watched after it ends,
        by a workflow of its own: this one's result does not wait for the watch."""
        placement = self._placement
        if placement is None or not (placement.resent or placement.adopted or self._twins):
            return
        intent = self._require_intent()
        await workflow.start_child_workflow(
            "TwinWatchWorkflow",
            WatchTwins(
                ticket=ticket, order_key=key, order_type=intent.order_type, strategy_id=intent.strategy_id,
                user_id=intent.user_id, broker_order_id=placement.broker_order_id,
                until=workflow.now() + timedelta(seconds=ticket.policy.twin_watch_seconds),
                known_twins=sorted(self._twins),
            ),
            id=f"twin-watch:{ticket.tag}",
            parent_close_policy=workflow.ParentClosePolicy.ABANDON,
            static_summary=f"twin watch of {key}",
        )

    async def _end_unplaced(
        self, key: str, ticket: OrderTicket | None, outcome: Outcome, error: FailureError | None
    ) -> OrderResult:
        """Nothing reached the broker (or it refused the request outright)."""
        intent = self._require_intent()
        self._entry_stopped = _entry_stopped(error)
        cause = _cause(error) if error is not None else None
        message = cause.message if cause is not None else (self._cancel_reason or outcome.value)
        if cause is not None and cause.type == errors.BROKER_REFUSED:
            outcome = Outcome.REJECTED
        is_exit = intent.order_type is not OrderType.BUY
        needs_intervention = ticket is not None and (outcome is Outcome.FAILED or is_exit)
        result = self._result_of(key, outcome, ticket, None, message, needs_intervention)
        if ticket is not None:
            await self._finish(key, ticket, result, None, message if needs_intervention else None, error=message)
        if _logged_out(error):
            if _first_notice(error):  # one alert per account until its next login, not one per order
                account = cause.details[0].get("account_id") if cause is not None and cause.details else None
                await self._alert(AlertLevel.CRITICAL, f"log in to Kite for account {account}",
                                  f"{message}; entries are refused until then")
        elif outcome is not Outcome.CANCELLED:
            level = AlertLevel.CRITICAL if is_exit and ticket is not None else AlertLevel.WARNING
            await self._alert(level, f"{intent.order_type} order {outcome.value.lower()}", message)
        return self._conclude(result)

    async def _finish(
        self,
        key: str,
        ticket: OrderTicket,
        result: OrderResult,
        state: BrokerOrderState | None,
        intervention_reason: str | None,
        error: str | None = None,
    ) -> None:
        self._set_stage("recording")
        await workflow.execute_local_activity_method(
            OrderActivities.finish_order,
            FinishOrder(
                ticket=ticket, order_key=key, strategy_id=ticket.strategy_id,
                order_type=self._require_intent().order_type, outcome=result.outcome, state=state,
                error=error, needs_intervention=result.needs_intervention,
                intervention_reason=intervention_reason,
            ),
            start_to_close_timeout=timedelta(seconds=10),
            retry_policy=STORE_RETRY,
        )

    async def _alert(self, level: AlertLevel, title: str, message: str) -> None:
        intent = self._require_intent()
        alert = Alert(
            level=level, title=title, message=message, strategy_id=intent.strategy_id,
            user_id=intent.user_id, workflow_id=workflow.info().workflow_id, created_at=workflow.now(),
        )
        has_sinks = await workflow.execute_local_activity_method(
            AlertActivities.log_alert, alert, start_to_close_timeout=timedelta(seconds=5)
        )
        if has_sinks:
            await deliver_alert_later(alert)  # a failing webhook must not hold the order's end back

    def _result_of(
        self,
        key: str,
        outcome: Outcome,
        ticket: OrderTicket | None,
        state: BrokerOrderState | None,
        message: str | None,
        needs_intervention: bool,
    ) -> OrderResult:
        intent = self._require_intent()
        filled = state.filled_quantity if state else 0
        return OrderResult(
            workflow_id=workflow.info().workflow_id,
            order_key=key,
            order_type=intent.order_type,
            strategy_id=intent.strategy_id,
            outcome=outcome,
            broker_order_id=self._broker_order_id,
            requested_quantity=ticket.quantity if ticket else 0,
            filled_quantity=filled,
            average_price=state.average_price if state and filled else None,
            message=message,
            needs_intervention=needs_intervention,
        )

    def _conclude(self, result: OrderResult) -> OrderResult:
        """Fail when nothing is live at the broker and nothing filled, so the intent may be tried again;
        complete otherwise, so that this workflow id refuses every repeat."""
        self._result = result
        self._set_stage("done")
        final = [ORDER_STATUS.value_set(result.outcome.value)]
        if self._broker_order_id is not None:  # set here alone when the fast path finished the order
            final.append(BROKER_ORDER_ID.value_set(self._broker_order_id))
        workflow.upsert_search_attributes(final)
        if result.filled_quantity > 0 or result.outcome not in RETRYABLE_OUTCOMES:
            return result
        raise ApplicationError(
            f"{result.order_type} order {result.outcome.value}: {result.message or 'nothing filled'}",
            result,
            type=result.outcome.value,
            non_retryable=True,
        ) from None

    def _set_stage(self, stage: str) -> None:
        self._stage = stage
        self._set_details()

    def _set_details(self) -> None:
        parts = [self._stage]
        if self._broker_order_id:
            parts.append(f"broker order {self._broker_order_id}")
        if self._state is not None:
            parts.append(f"{self._state.status}, {self._state.filled_quantity}/{self._state.quantity} filled")
        if self._cancel_requested:
            parts.append(f"cancel requested: {self._cancel_reason}")
        workflow.set_current_details("; ".join(parts))

    def _require_intent(self) -> OrderIntent:
        assert self._intent is not None
        return self._intent
