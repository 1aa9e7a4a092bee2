"""Structured logs: lines logged inside the order path's activities and inside workflows carry the
workflow id, run id, activity type, strategy id and order key; JSON for machines, text for people."""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from temporalio import activity, workflow
from temporalio.client import Client, WorkflowFailureError
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from apps.worker import build_worker
from brokers.factory import KiteBrokerFactory
from brokers.paper.testing import PaperBrokerServer
from engine.ids import OrderType, order_key
from engine.logs import JsonFormatter, LogContextInterceptor, OrderContextFilter, TextFormatter, configure_logging
from engine.models import OrderIntent
from store import Store
from tests.fixtures.logs import attached_to_root
from tests.fixtures.temporal import Engine, make_engine, replay_task_queue
from workflows.order import OrderWorkflow


class CapturedLines(logging.Handler):
    """Every record that reaches the root logger, stamped by the filter, kept with its JSON line."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.addFilter(OrderContextFilter())
        self.setFormatter(JsonFormatter())
        self.lines: list[tuple[logging.LogRecord, dict[str, Any]]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record, json.loads(self.format(record))))

    def matching(self, text: str) -> list[dict[str, Any]]:
        return [line for record, line in self.lines if text in record.getMessage()]


@pytest.fixture
def captured() -> Iterator[CapturedLines]:
    with attached_to_root(CapturedLines(), logging.INFO) as handler:
        yield handler


@pytest.fixture
async def logged_engine(
    temporal_client: Client, engine_store: Store, paper: PaperBrokerServer
) -> AsyncIterator[Engine]:
    """The engine with the worker `python worker.py` runs: the log context interceptor installed."""
    async for engine in make_engine(temporal_client, engine_store, paper, start_worker=False):
        worker, parts = build_worker(
            temporal_client, engine_store, engine.settings, brokers=KiteBrokerFactory(engine.settings),
            events=engine.events, interceptors=[LogContextInterceptor()],
        )
        engine.worker, engine.parts = worker, parts
        async with worker:
            yield engine
    await replay_task_queue(temporal_client, engine.settings.task_queue)


async def test_lines_inside_the_order_path_carry_workflow_strategy_and_order(
    logged_engine: Engine, captured: CapturedLines
) -> None:
    engine = logged_engine
    strategy = await engine.strategy("INFY", quantity=3)
    engine.paper.control.add_fault("reject", route="place_order", count=1, message="RMS: blocked")
    handle = await engine.starter.place_buy_order(strategy)
    with pytest.raises(WorkflowFailureError):
        await handle.result()
    logging.getLogger("tests.outside").info("a line outside any workflow")

    run_id = handle.result_run_id
    assert run_id is not None
    [alert] = captured.matching("ALERT WARNING: BUY order rejected")
    assert alert["workflow_id"] == handle.id and alert["run_id"] == run_id
    assert alert["workflow_type"] == "OrderWorkflow" and alert["activity_type"] == "log_alert"
    assert alert["strategy_id"] == strategy.id
    assert alert["order_key"] == order_key(handle.id, run_id)
    assert alert["level"] == "WARNING" and alert["logger"] == "engine.alerts"
    [outside] = captured.matching("a line outside any workflow")
    assert not {"workflow_id", "run_id", "activity_type", "strategy_id", "order_key"} & set(outside)


async def test_the_strategy_comes_from_the_activity_input_whatever_the_workflow_id(
    logged_engine: Engine, captured: CapturedLines
) -> None:
    engine = logged_engine
    flat = await engine.strategy("TCS", quantity=2)
    handle = await engine.client.start_workflow(
        OrderWorkflow.run,
        OrderIntent(strategy_id=flat.id, user_id=flat.user_id, order_type=OrderType.SELL),
        id=f"logs-{uuid.uuid4()}",  # no strategy in this id: only the input names it
        task_queue=engine.settings.task_queue,
    )
    with pytest.raises(WorkflowFailureError):
        await handle.result()

    # The SDK's own line about the refused validation, and the alert the workflow raised after it.
    refused = [line for line in captured.matching("Completing activity as failed") if line["workflow_id"] == handle.id]
    [alert] = captured.matching("ALERT WARNING: SELL order invalid")
    assert [line["activity_type"] for line in refused] == ["begin_and_place_order"]
    assert {line["strategy_id"] for line in [*refused, alert]} == {flat.id}
    assert {line["order_key"] for line in [*refused, alert]} == {order_key(handle.id, handle.result_run_id or "")}
    assert "ValidationFailed" in refused[0]["exception"]


@workflow.defn(name="LoggingWorkflow", sandboxed=True)
class LoggingWorkflow:
    @workflow.run
    async def run(self, note: str) -> None:
        workflow.logger.info("workflow says %s", note)


async def test_lines_logged_inside_a_workflow_carry_its_ids(temporal_client: Client, captured: CapturedLines) -> None:
    task_queue = f"logs-{uuid.uuid4()}"
    workflow_id = f"order:4242:1:entry-{uuid.uuid4().hex[:6]}"
    async with Worker(
        temporal_client, task_queue=task_queue, workflows=[LoggingWorkflow],
        workflow_runner=SandboxedWorkflowRunner(restrictions=SandboxRestrictions.default.with_passthrough_all_modules()),
    ):
        handle = await temporal_client.start_workflow(
            LoggingWorkflow.run, "hello", id=workflow_id, task_queue=task_queue
        )
        await handle.result()

    [line] = captured.matching("workflow says hello")
    assert (line["workflow_id"], line["run_id"]) == (workflow_id, handle.result_run_id)
    assert line["workflow_type"] == "LoggingWorkflow" and line["strategy_id"] == 4242
    assert "activity_type" not in line and "order_key" not in line  # not an order workflow


def test_text_lines_end_with_the_context_and_json_lines_keep_extras() -> None:
    record = logging.makeLogRecord({
        "name": "engine.alerts", "levelno": logging.WARNING, "levelname": "WARNING", "msg": "ALERT %s",
        "args": ("CRITICAL",), "workflow_id": "order:7:2:exit", "strategy_id": 7, "order_key": "order:7:2:exit/r1",
        "broker_order_id": "261124000000017",
    })

    text = TextFormatter().format(record)
    line = json.loads(JsonFormatter().format(record))

    assert text.endswith("ALERT CRITICAL [workflow_id=order:7:2:exit strategy_id=7 order_key=order:7:2:exit/r1]")
    assert line["message"] == "ALERT CRITICAL" and line["broker_order_id"] == "261124000000017"
    assert (line["workflow_id"], line["strategy_id"], line["order_key"]) == ("order:7:2:exit", 7, "order:7:2:exit/r1")


def test_configure_logging_writes_json_lines_and_refuses_an_unknown_format() -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    stream = io.StringIO()
    try:
        configure_logging("json", "debug", stream)
        logging.getLogger("engine.worker").debug("polling %s", "orders")
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved_handlers:
            root.addHandler(handler)
        root.setLevel(saved_level)
        activity.logger.activity_info_on_message = workflow.logger.workflow_info_on_message = True

    line = json.loads(stream.getvalue())
    assert (line["level"], line["logger"], line["message"]) == ("DEBUG", "engine.worker", "polling orders")
    with pytest.raises(ValueError, match="use 'json' or 'text'"):
        configure_logging("xml", "INFO")  # type: ignore[arg-type]
