"""Against a real Temporal dev server: order data in the stored history is ciphertext, and only a
client (or the codec server) holding the key can read it back."""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from google.protobuf import json_format
from google.protobuf.message import Message
from pydantic import BaseModel
from temporalio import activity, workflow
from temporalio.api.common.v1 import Payload
from temporalio.client import Client, WorkflowHistory
from temporalio.common import RetryPolicy
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from apps.codec_server import create_app
from engine.codec import (
    ENCRYPTED_ENCODING,
    EncryptionCodec,
    encrypted_data_converter,
    generate_key,
    parse_keys,
)

TEMPORAL_CLI = Path(sys.executable).parent / "temporal"
# Sub-second activity retry backoff needs the timer queue to run unthrottled (DESIGN.md, measured).
DEV_SERVER_ARGS = [
    "--dynamic-config-value",
    "history.transferProcessorMaxPollRPS=10000",
    "--dynamic-config-value",
    "history.timerProcessorMaxPollRPS=10000",
    "--dynamic-config-value",
    'history.timerProcessorMaxTimeShift="10ms"',
]

STRATEGY_ID = "strat-nifty-momentum-4417"
USER_ID = "user-ZX9041"
SYMBOL = "RELIANCE"
REASON = "stop-loss breached at 2811.40"
SECRETS_IN_ORDER_DATA = (SYMBOL, STRATEGY_ID, USER_ID, REASON, "2811.40", "broker timed out")


class OrderTicket(BaseModel):
    strategy_id: str
    user_id: str
    symbol: str
    order_type: str
    quantity: int
    trigger_price: Decimal
    reason: str


class Placement(BaseModel):
    broker_order_id: str
    summary: str


class OperatorNote(BaseModel):
    note: str


class OrderOutcome(BaseModel):
    summary: str
    operator_note: str


@activity.defn
async def place_paper_order(ticket: OrderTicket) -> Placement:
    if activity.info().attempt == 1:
        # A failure message naming the order lands in history as the next attempt's last failure.
        raise ApplicationError(f"broker timed out placing {ticket.symbol} for {ticket.strategy_id}")
    return Placement(
        broker_order_id="250101000012345",
        summary=f"{ticket.order_type} {ticket.quantity} {ticket.symbol} for {ticket.strategy_id}",
    )


@workflow.defn
class EncryptedOrderWorkflow:
    def __init__(self) -> None:
        self.operator_note: OperatorNote | None = None

    @workflow.run
    async def run(self, ticket: OrderTicket) -> OrderOutcome:
        placement = await workflow.execute_activity(
            place_paper_order,
            ticket,
            start_to_close_timeout=timedelta(seconds=10),
            retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=20), maximum_attempts=3),
        )
        await workflow.wait_condition(lambda: self.operator_note is not None)
        assert self.operator_note is not None
        return OrderOutcome(summary=placement.summary, operator_note=self.operator_note.note)

    @workflow.signal
    def annotate(self, note: OperatorNote) -> None:
        self.operator_note = note


@pytest.fixture(scope="module")
def codec() -> EncryptionCodec:
    return EncryptionCodec(parse_keys(f"k2026a:{generate_key()}"))


@pytest.fixture(scope="module")
async def encrypted_env(codec: EncryptionCodec) -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_local(
        data_converter=encrypted_data_converter(codec),
        dev_server_existing_path=str(TEMPORAL_CLI),
        dev_server_extra_args=DEV_SERVER_ARGS,
        dev_server_log_level="error",
    )
    async with env:
        yield env


@pytest.fixture(scope="module")
async def finished_order(encrypted_env: WorkflowEnvironment) -> tuple[str, OrderOutcome]:
    """One order workflow run to completion with the codec: its id and the result read back through it."""
    client = encrypted_env.client
    task_queue = f"codec-{uuid.uuid4()}"
    workflow_id = f"order-{uuid.uuid4()}"
    ticket = OrderTicket(
        strategy_id=STRATEGY_ID,
        user_id=USER_ID,
        symbol=SYMBOL,
        order_type="SL_SELL",
        quantity=10,
        trigger_price=Decimal("2811.40"),
        reason=REASON,
    )
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[EncryptedOrderWorkflow],
        activities=[place_paper_order],
        workflow_runner=UnsandboxedWorkflowRunner(),
    ):
        handle = await client.start_workflow(
            EncryptedOrderWorkflow.run,
            ticket,
            id=workflow_id,
            task_queue=task_queue,
            memo={"symbol": SYMBOL, "strategy": STRATEGY_ID},
        )
        await handle.signal(EncryptedOrderWorkflow.annotate, OperatorNote(note=f"checked {SYMBOL} fill"))
        outcome = await handle.result()
    return workflow_id, outcome


async def raw_history(env: WorkflowEnvironment, workflow_id: str) -> WorkflowHistory:
    """The history as stored, read by a client that has no codec."""
    plain_client = await Client.connect(
        env.client.service_client.config.target_host,
        namespace=env.client.namespace,
        data_converter=pydantic_data_converter,
    )
    return await plain_client.get_workflow_handle(workflow_id).fetch_history()


def payloads_in(message: Message) -> Iterator[Payload]:
    """Every Payload anywhere inside a protobuf message: fields, repeated fields and maps."""
    if isinstance(message, Payload):
        yield message
        return
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            if field.message_type.fields_by_name["value"].message_type is not None:
                for item in value.values():
                    yield from payloads_in(item)
        elif field.is_repeated:
            for item in value:
                yield from payloads_in(item)
        else:
            yield from payloads_in(value)


async def test_order_round_trips_through_the_codec(finished_order: tuple[str, OrderOutcome]) -> None:
    _, outcome = finished_order

    assert outcome == OrderOutcome(
        summary=f"SL_SELL 10 {SYMBOL} for {STRATEGY_ID}", operator_note=f"checked {SYMBOL} fill"
    )


async def test_stored_history_holds_no_plaintext_order_data(
    encrypted_env: WorkflowEnvironment, finished_order: tuple[str, OrderOutcome]
) -> None:
    workflow_id, _ = finished_order
    history = await raw_history(encrypted_env, workflow_id)

    whole_history = b"".join(event.SerializeToString() for event in history.events)
    for plaintext in SECRETS_IN_ORDER_DATA:
        assert plaintext.encode() not in whole_history, f"{plaintext!r} is readable in the stored history"
    payloads = [payload for event in history.events for payload in payloads_in(event)]
    # input, memo x2, activity input, activity result, last failure, signal, workflow result
    assert len(payloads) >= 8
    assert {payload.metadata["encoding"] for payload in payloads} == {ENCRYPTED_ENCODING}


async def test_the_failure_message_is_encrypted_not_just_the_payloads(
    encrypted_env: WorkflowEnvironment, finished_order: tuple[str, OrderOutcome]
) -> None:
    workflow_id, _ = finished_order
    history = await raw_history(encrypted_env, workflow_id)

    last_failures = [
        event.activity_task_started_event_attributes.last_failure
        for event in history.events
        if event.HasField("activity_task_started_event_attributes")
        and event.activity_task_started_event_attributes.HasField("last_failure")
    ]

    assert last_failures, "the retried activity records its first failure"
    assert all(failure.message == "Encoded failure" for failure in last_failures)
    assert all(
        failure.encoded_attributes.metadata["encoding"] == ENCRYPTED_ENCODING for failure in last_failures
    )


async def test_the_codec_server_decodes_the_stored_history_for_operators(
    encrypted_env: WorkflowEnvironment, finished_order: tuple[str, OrderOutcome], codec: EncryptionCodec
) -> None:
    workflow_id, _ = finished_order
    history = await raw_history(encrypted_env, workflow_id)
    started = history.events[0].workflow_execution_started_event_attributes
    body = {"payloads": [json_format.MessageToDict(payload) for payload in started.input.payloads]}

    transport = httpx.ASGITransport(app=create_app(codec))
    async with httpx.AsyncClient(transport=transport, base_url="http://codec") as client:
        response = await client.post("/default/decode", json=body, headers={"X-Namespace": "default"})

    decoded = json_format.ParseDict(response.json(), type(started.input)())
    [ticket] = pydantic_data_converter.payload_converter.from_payloads(decoded.payloads, [OrderTicket])
    assert ticket.symbol == SYMBOL and ticket.strategy_id == STRATEGY_ID
    assert ticket.trigger_price == Decimal("2811.40")
