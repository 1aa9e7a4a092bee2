"""Structured logs: every line logged inside a workflow or an activity says which order it belongs to.

`OrderContextFilter` stamps each record with the workflow id, run id, workflow and activity type,
the attempt, the strategy id and the order key, read from Temporal's own context (`activity.info()`,
`workflow.info()`) and from what `LogContextInterceptor` learned from the activity's input.
`JsonFormatter` writes one JSON object a line for machines; `TextFormatter` a readable line for people.

    configure_logging("json", "INFO")      # what `python worker.py` does (ENGINE_LOG_FORMAT, ENGINE_LOG_LEVEL)
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any, Literal

from temporalio import activity, workflow
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)

from engine.ids import order_key

LogFormat = Literal["json", "text"]

# The record attributes the filter sets, in the order the formatters write them.
CONTEXT_FIELDS = ("workflow_id", "run_id", "workflow_type", "activity_type", "attempt", "strategy_id", "order_key")

ORDER_WORKFLOW_TYPE = "OrderWorkflow"
ORDER_WORKFLOW_PREFIX = "order:"

# LogRecord's own attributes: anything else on a record came from a caller's `extra`.
_STANDARD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
# Temporal's adapters attach these; the context fields already carry what matters in them.
_TEMPORAL_EXTRAS = frozenset(
    {"temporal_activity", "temporal_workflow", "activity_info", "workflow_info", "temporal_log"}
)


@dataclass(frozen=True)
class OrderContext:
    """What an activity's input says about the order it serves."""

    strategy_id: int | None = None
    order_key: str | None = None


_order_context: contextvars.ContextVar[OrderContext | None] = contextvars.ContextVar("order_context", default=None)


def order_context_of(payload: object) -> OrderContext:
    """The strategy id and order key of an activity input: on the model itself, its `ticket` or its `intent`."""
    strategy_id: int | None = None
    key: str | None = None
    for part in (payload, getattr(payload, "ticket", None), getattr(payload, "intent", None)):
        part_strategy, part_key = getattr(part, "strategy_id", None), getattr(part, "order_key", None)
        if strategy_id is None and isinstance(part_strategy, int):
            strategy_id = part_strategy
        if key is None and isinstance(part_key, str):
            key = part_key
    return OrderContext(strategy_id, key)


def strategy_of_workflow_id(workflow_id: str | None) -> int | None:
    """The strategy id inside an order workflow id (`order:{strategy}:{cycle}:{leg}`), else None."""
    if not workflow_id or not workflow_id.startswith(ORDER_WORKFLOW_PREFIX):
        return None
    strategy = workflow_id[len(ORDER_WORKFLOW_PREFIX) :].split(":", 1)[0]
    return int(strategy) if strategy.isdigit() else None


def _order_fields(workflow_type: str | None, workflow_id: str | None, run_id: str | None) -> dict[str, Any]:
    fields: dict[str, Any] = {"strategy_id": strategy_of_workflow_id(workflow_id)}
    if workflow_type == ORDER_WORKFLOW_TYPE and workflow_id and run_id:
        fields["order_key"] = order_key(workflow_id, run_id)
    return fields


def current_log_context() -> dict[str, Any]:
    """The context fields of the code running now; empty outside workflows and activities."""
    fields: dict[str, Any] = {}
    if activity.in_activity():
        info = activity.info()
        fields = {
            "workflow_id": info.workflow_id,
            "run_id": info.workflow_run_id,
            "workflow_type": info.workflow_type,
            "activity_type": info.activity_type,
            "attempt": info.attempt,
            **_order_fields(info.workflow_type, info.workflow_id, info.workflow_run_id),
        }
    elif workflow.in_workflow():
        winfo = workflow.info()
        fields = {
            "workflow_id": winfo.workflow_id,
            "run_id": winfo.run_id,
            "workflow_type": winfo.workflow_type,
            "attempt": winfo.attempt,
            **_order_fields(winfo.workflow_type, winfo.workflow_id, winfo.run_id),
        }
    known = _order_context.get()
    if known is not None:  # the input's own ids beat what the workflow id suggests
        if known.strategy_id is not None:
            fields["strategy_id"] = known.strategy_id
        if known.order_key is not None:
            fields["order_key"] = known.order_key
    return {name: value for name, value in fields.items() if value is not None}


class OrderContextFilter(logging.Filter):
    """Stamps every record with the current workflow/activity context; never drops a record.

    Attach it to a handler (a logger's filters do not see records propagated from child loggers).
    A value the caller passed in `extra` is kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in current_log_context().items():
            if getattr(record, name, None) is None:
                setattr(record, name, value)
        return True


def context_of(record: logging.LogRecord) -> dict[str, Any]:
    """The context fields a record carries, in `CONTEXT_FIELDS` order."""
    fields = {name: getattr(record, name, None) for name in CONTEXT_FIELDS}
    return {name: value for name, value in fields.items() if value is not None}


def _extras_of(record: logging.LogRecord) -> dict[str, Any]:
    return {
        name: value
        for name, value in vars(record).items()
        if name not in _STANDARD_ATTRIBUTES and name not in _TEMPORAL_EXTRAS and name not in CONTEXT_FIELDS
    }


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, the context fields, extras, exception."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **context_of(record),
            **_extras_of(record),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`time LEVEL logger message [workflow_id=… activity_type=… strategy_id=… order_key=…]`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        context = context_of(record)
        if context:
            line += " [" + " ".join(f"{name}={value}" for name, value in context.items()) + "]"
        return line


def formatter_for(log_format: LogFormat) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter()
    if log_format == "text":
        return TextFormatter()
    raise ValueError(f"unknown log format {log_format!r}: use 'json' or 'text'")


def configure_logging(
    log_format: LogFormat, level: str | int = "INFO", stream: IO[str] | None = None
) -> logging.Handler:
    """Send every log line to `stream` (stderr) in `log_format`, stamped with the order context.

    Replaces the root logger's handlers; returns the one installed."""
    if isinstance(level, str) and not isinstance(logging.getLevelName(level.upper()), int):
        raise ValueError(f"unknown log level {level!r}: use DEBUG, INFO, WARNING, ERROR or CRITICAL")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter_for(log_format))
    handler.addFilter(OrderContextFilter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    if log_format == "json":
        # The fields carry the context; Temporal's adapters would repeat it inside every message.
        activity.logger.activity_info_on_message = False
        workflow.logger.workflow_info_on_message = False
    return handler


class LogContextInterceptor(Interceptor):
    """Makes an activity's strategy id and order key (read from its input) known to every log line it writes."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _LogContextActivityInbound(next)


class _LogContextActivityInbound(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        # Not reset afterwards: the SDK logs the attempt's outcome later in this same task, which ends
        # with the attempt.
        _order_context.set(order_context_of(input.args[0]) if input.args else OrderContext())
        return await self.next.execute_activity(input)

