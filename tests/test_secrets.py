"""Broker secrets never leave the store: orders that fill, are rejected, meet an ambiguous fault and an
expired session run with DEBUG logging captured; the accounts' access tokens and api secrets then
appear in no log line, no exception and no event of any workflow history on the task queue."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from google.protobuf.message import Message
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError

from engine.logs import JsonFormatter, OrderContextFilter
from engine.models import OrderResult, Outcome
from tests.fixtures.logs import attached_to_root
from tests.fixtures.temporal import Engine

VISIBILITY_WAIT_SECONDS = 10.0


class EverythingLogged(logging.Handler):
    """Every record, as the worker's JSON line and as plain text with its traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.addFilter(OrderContextFilter())
        self.json = JsonFormatter()
        self.plain = logging.Formatter("%(name)s %(levelname)s %(message)s")
        self.texts: list[str] = []
        self.levels: set[int] = set()

    def emit(self, record: logging.LogRecord) -> None:
        self.levels.add(record.levelno)
        self.texts.append(self.json.format(record))
        self.texts.append(self.plain.format(record))
        self.texts.append(repr(vars(record)))  # the raw extras, whatever the formatters leave out


@pytest.fixture
def everything_logged() -> Iterator[EverythingLogged]:
    with attached_to_root(EverythingLogged(), logging.DEBUG) as handler:
        yield handler


@dataclass(frozen=True)
class Account:
    api_key: str
    api_secret: str
    access_token: str


async def logged_in_account(engine: Engine, name: str) -> Account:
    """A user with a broker account whose secret is unguessable, logged in to the paper broker."""
    api_key, api_secret = f"{name}{uuid.uuid4().hex[:6]}", f"apisecret{uuid.uuid4().hex}"
    token = engine.paper.login(api_key, api_secret=api_secret)
    user, _ = await engine.store.create_user(f"user-{api_key}")
    account = await engine.store.add_broker_account(
        user.id, broker="kite", api_key=api_key, api_secret=api_secret, access_token=token
    )
    engine.accounts[api_key] = (user.id, account.id)  # engine.strategy() trades on it
    return Account(api_key, api_secret, token)


def proto_strings(message: Message) -> Iterator[str]:
    """Every string in a protobuf message, bytes decoded (payload data is JSON), map keys included."""
    for field, value in message.ListFields():
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            items = list(value.items())
            values = [v for _, v in items]
            yield from (str(k) for k, _ in items)
        else:
            values = list(value) if field.is_repeated else [value]
        for item in values:
            if isinstance(item, Message):
                yield from proto_strings(item)
            elif isinstance(item, bytes):
                yield item.decode("utf-8", "replace")
            elif isinstance(item, str):
                yield item


async def histories_on(client: Client, task_queue: str, at_least: int) -> list[str]:
    """The text of every event of every workflow run on `task_queue`, once visibility lists them all."""
    deadline = time.monotonic() + VISIBILITY_WAIT_SECONDS
    while True:
        executions = [e async for e in client.list_workflows(f'TaskQueue="{task_queue}"')]
        if len(executions) >= at_least or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert len(executions) >= at_least, f"visibility lists {len(executions)} of {at_least} workflows"
    texts = []
    for execution in executions:
        history = await client.get_workflow_handle(execution.id, run_id=execution.run_id).fetch_history()
        texts.append("\n".join(text for event in history.events for text in proto_strings(event)))
    return texts


async def outcome_of(handle: WorkflowHandle, exceptions: list[str]) -> Outcome:
    """The order's outcome; a failure's full text (chain, details) goes to `exceptions`."""
    try:
        result: OrderResult = await handle.result()
        return result.outcome
    except WorkflowFailureError as failed:
        exceptions.append("".join(traceback.format_exception(failed)))
        cause = failed.cause
        assert isinstance(cause, ApplicationError) and cause.type is not None
        exceptions.append(repr(cause) + repr(cause.details))
        return Outcome(cause.type)


async def test_no_secret_in_logs_exceptions_or_history(engine: Engine, everything_logged: EverythingLogged) -> None:
    trading = await logged_in_account(engine, "secretsa")
    expiring = await logged_in_account(engine, "secretsb")
    engine.paper.control.set_price("RELIANCE", "2500")
    exceptions: list[str] = []
    outcomes = []

    happy = await engine.strategy("RELIANCE", quantity=2, api_key=trading.api_key)
    outcomes.append(await outcome_of(await engine.starter.place_buy_order(happy), exceptions))
    outcomes.append(await outcome_of(await engine.starter.place_sell_order(happy.id), exceptions))

    rejected = await engine.strategy("INFY", quantity=2, api_key=trading.api_key)
    engine.paper.control.add_fault("reject", route="place_order", count=1, message="RMS: margin exceeds")
    outcomes.append(await outcome_of(await engine.starter.place_buy_order(rejected), exceptions))

    # The broker takes the order but answers after the client gave up: found again by its tag.
    ambiguous = await engine.strategy("TCS", quantity=2, api_key=trading.api_key)
    engine.paper.control.add_fault("accept_then_timeout", route="place_order", count=1, seconds=2.0)
    outcomes.append(await outcome_of(await engine.starter.place_buy_order(ambiguous), exceptions))

    expired = await engine.strategy("SBIN", quantity=2, api_key=expiring.api_key)
    assert engine.paper.control.expire_tokens(expiring.api_key) == 1
    outcomes.append(await outcome_of(await engine.starter.place_buy_order(expired), exceptions))

    histories = await histories_on(engine.client, engine.settings.task_queue, at_least=len(outcomes))

    assert outcomes == [Outcome.FILLED, Outcome.FILLED, Outcome.REJECTED, Outcome.FILLED, Outcome.INVALID]
    # The searches see what they should: DEBUG lines, decoded payloads, failure messages.
    assert logging.DEBUG in everything_logged.levels
    everything = "\n".join(histories)
    assert '"symbol":"TCS"' in everything and "RMS: margin exceeds" in everything
    assert "log in to Kite for account" in everything and any("log in to Kite" in text for text in exceptions)
    places = {"the logs": everything_logged.texts, "an exception": exceptions, "a workflow history": histories}
    for account in (trading, expiring):
        secrets = {"access token": account.access_token, "api secret": account.api_secret}
        for (what, secret), (place, texts) in itertools.product(secrets.items(), places.items()):
            assert not any(secret in text for text in texts), f"{account.api_key}'s {what} is in {place}"
