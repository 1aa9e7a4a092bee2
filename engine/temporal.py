"""The Temporal connection, data converter and search attributes, in one place.

The connection follows Temporal's own conventions (`TEMPORAL_ADDRESS`, `TEMPORAL_NAMESPACE`,
`TEMPORAL_API_KEY`, TLS settings and profiles, read by `temporalio.envconfig.ClientConfig`), so a user's
existing setup just works. Payloads are pydantic models; with `ENGINE_PAYLOAD_CODEC_KEYS` set they are
encrypted by the payload codec before they reach the server.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.common import SearchAttributeKey
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.runtime import Runtime

from engine.models import OrderResult

DEFAULT_ADDRESS = "localhost:7233"

STRATEGY_ID = SearchAttributeKey.for_keyword("StrategyId")
USER_ID = SearchAttributeKey.for_keyword("UserId")
ORDER_TYPE = SearchAttributeKey.for_keyword("OrderType")
ORDER_STATUS = SearchAttributeKey.for_keyword("OrderStatus")
SYMBOL = SearchAttributeKey.for_keyword("Symbol")
BROKER_ORDER_ID = SearchAttributeKey.for_keyword("BrokerOrderId")
EXIT_REASON = SearchAttributeKey.for_keyword("ExitReason")

SEARCH_ATTRIBUTES = (STRATEGY_ID, USER_ID, ORDER_TYPE, ORDER_STATUS, SYMBOL, BROKER_ORDER_ID, EXIT_REASON)

# A canceled run has no result: an order run that ends Canceled keeps its OrderResult in this memo field.
RESULT_MEMO = "result"


async def ended_order_result(handle: WorkflowHandle[Any, Any], failure: WorkflowFailureError) -> OrderResult | None:
    """The OrderResult of an order run that did not complete: the details of its failure, or the memo
    of a canceled run. None when the run ended otherwise (terminated, timed out)."""
    cause = failure.cause
    if isinstance(cause, ApplicationError) and cause.details:
        try:
            return OrderResult.model_validate(cause.details[0])
        except ValueError:
            return None
    if isinstance(cause, CancelledError):
        description = await handle.describe()
        try:
            return await description.memo_value(RESULT_MEMO, type_hint=OrderResult)
        except KeyError:
            return None
    return None


def data_converter(environ: Mapping[str, str] | None = None) -> DataConverter:
    """Pydantic payloads, encrypted when the environment holds codec keys."""
    from engine.codec import codec_from_env, encrypted_data_converter

    codec = codec_from_env(os.environ if environ is None else environ)
    if codec is None:
        return pydantic_data_converter
    return encrypted_data_converter(codec)  # failure messages too, not only payloads


def connect_config(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Client.connect keyword arguments from Temporal's environment conventions."""
    from temporalio.envconfig import ClientConfig

    env = dict(os.environ if environ is None else environ)
    config: dict[str, Any] = dict(ClientConfig.load_client_connect_config(override_env_vars=env))
    config.setdefault("target_host", DEFAULT_ADDRESS)
    config.setdefault("namespace", "default")
    return config


async def connect(
    address: str | None = None, environ: Mapping[str, str] | None = None, *, runtime: Runtime | None = None
) -> Client:
    """`runtime`: one made before the client, e.g. to serve the SDK's metrics (`apps.metrics`)."""
    config = connect_config(environ)
    if address:
        config["target_host"] = address
    return await Client.connect(data_converter=data_converter(environ), runtime=runtime, **config)
