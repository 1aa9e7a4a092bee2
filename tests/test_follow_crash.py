"""A worker killed while following an order that no order-book snapshot has shown yet.

The follow step heartbeats before its first snapshot; the attempt that replaces the killed one must
pick up from there and apply the broker's fill, not end the order UNRESOLVED with nothing filled.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

from temporalio.client import Client

from brokers.paper.testing import PaperBrokerServer
from dev.devserver import DevServer
from engine.models import Outcome
from store import Store
from tests.fixtures.temporal import make_engine
from tests.test_worker_crash import start_worker, workers  # noqa: F401 (the fixture)


def worker_env(server: DevServer, database_url: str, secret_key: str, paper_url: str, task_queue: str) -> dict:
    return {
        **os.environ,
        "TEMPORAL_ADDRESS": server.address,
        "TEMPORAL_NAMESPACE": "default",
        "DATABASE_URL": database_url,
        "ENGINE_SECRET_KEY": secret_key,
        "ENGINE_KITE_ROOT": paper_url,
        "ENGINE_TASK_QUEUE": task_queue,
        "ENGINE_ENFORCE_MARKET_HOURS": "false",
        "ENGINE_BROKER_HTTP_TIMEOUT_SECONDS": "3",
        "ENGINE_ORDER_POLL_INTERVAL_SECONDS": "0.05",
        "ENGINE_FOLLOW_HEARTBEAT_TIMEOUT_SECONDS": "4",  # the killed follower is taken for dead sooner
        "PYTHONUNBUFFERED": "1",
        "ENGINE_METRICS_PORT": "0",
        "ENGINE_TEMPORAL_METRICS_PORT": "0",
    }


async def follow_heartbeats(client: Client, workflow_id: str) -> bool:
    """Whether the order's follow step is pending and has heartbeated at least once."""
    description = await client.get_workflow_handle(workflow_id).describe()
    for pending in description.raw_description.pending_activities:
        if pending.activity_type.name == "follow_order" and pending.HasField("last_heartbeat_time"):
            return True
    return False


async def test_a_follow_killed_before_its_first_snapshot_still_applies_the_fill(
    temporal_server: DevServer,
    temporal_client: Client,
    engine_store: Store,
    engine_db_url: str,
    engine_secret_key: str,
    paper: PaperBrokerServer,
    workers: list[subprocess.Popen[bytes]],  # noqa: F811
    tmp_path: Path,
) -> None:
    async for engine in make_engine(temporal_client, engine_store, paper, start_worker=False):
        env = worker_env(temporal_server, engine_db_url, engine_secret_key, paper.url, engine.settings.task_queue)
        log = tmp_path / "worker.log"
        strategy = await engine.strategy("RELIANCE", quantity=8, api_key=f"fc{uuid.uuid4().hex[:6]}")
        # The order fills at once, but no order-book read answers in time: the follower has no snapshot.
        paper.control.add_fault("latency", route="orders", count=None, seconds=2.5)
        paper.control.add_fault("latency", route="order_history", count=None, seconds=2.5)
        first = start_worker(env, log)
        workers.append(first)
        handle = await engine.starter.place_buy_order(strategy)

        deadline = time.monotonic() + 60
        while not await follow_heartbeats(temporal_client, handle.id):
            assert time.monotonic() < deadline, "the follow step never heartbeated"
            await asyncio.sleep(0.1)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        assert (await engine.store.get_strategy(strategy.id)).open_quantity == 0
        paper.control.clear_faults()

        second = start_worker(env, log)
        workers.append(second)
        result = await asyncio.wait_for(handle.result(), 120)

        assert result.outcome is Outcome.FILLED and result.filled_quantity == 8
        after = await engine.store.get_strategy(strategy.id)
        assert (after.open_quantity, after.position) == (8, "LONG")
        assert (await engine.store.get_order(result.order_key)).outcome == "SUCCESS"
