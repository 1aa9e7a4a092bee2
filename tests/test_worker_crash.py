"""A worker killed with SIGKILL after the broker accepted the order and before anything was recorded.

The worker runs as its own process (`python worker.py`, configured from the environment). The paper
broker creates the order and holds its answer; the worker is killed while it waits. A new worker
replays the workflow, finds the order by its tag and adopts it: one order at the broker, applied once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from temporalio.client import Client

from brokers.paper.testing import PaperBrokerServer
from dev.devserver import DevServer
from engine.models import Outcome
from store import Store
from tests.fixtures.temporal import Engine, make_engine

ROOT = Path(__file__).resolve().parent.parent


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    return subprocess.Popen(
        [sys.executable, "worker.py"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def workers() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(10)


async def wait_for(predicate: Callable[[], list[dict]], timeout: float, what: str) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def test_worker_killed_after_the_broker_accepted_places_once(
    temporal_server: DevServer,
    temporal_client: Client,
    engine_store: Store,
    engine_db_url: str,
    engine_secret_key: str,
    paper: PaperBrokerServer,
    workers: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    async for engine in make_engine(temporal_client, engine_store, paper, start_worker=False):
        await run_crash_scenario(
            engine, temporal_server, engine_db_url, engine_secret_key, workers, tmp_path
        )


async def run_crash_scenario(
    engine: Engine,
    temporal_server: DevServer,
    database_url: str,
    secret_key: str,
    workers: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    env = {
        **os.environ,
        "TEMPORAL_ADDRESS": temporal_server.address,
        "TEMPORAL_NAMESPACE": "default",
        "DATABASE_URL": database_url,
        "ENGINE_SECRET_KEY": secret_key,
        "ENGINE_KITE_ROOT": engine.paper.url,
        "ENGINE_TASK_QUEUE": engine.settings.task_queue,
        "ENGINE_ENFORCE_MARKET_HOURS": "false",
        "ENGINE_BROKER_HTTP_TIMEOUT_SECONDS": "3",
        "ENGINE_ORDER_POLL_INTERVAL_SECONDS": "0.05",
        "PYTHONUNBUFFERED": "1",
        "ENGINE_METRICS_PORT": "0",
        "ENGINE_TEMPORAL_METRICS_PORT": "0",
    }
    log = tmp_path / "worker.log"
    strategy = await engine.strategy("RELIANCE", quantity=8, api_key=f"crash{uuid.uuid4().hex[:6]}")
    api_key = next(iter(engine.accounts))
    # The broker creates the order at once and holds its answer for 2.5 s (the client waits 3 s).
    engine.paper.control.add_fault("accept_then_timeout", route="place_order", count=1, seconds=2.5)

    first = start_worker(env, log)
    workers.append(first)
    handle = await engine.starter.place_buy_order(strategy)

    def created() -> list[dict]:
        return [
            order for order in engine.paper.control.orders()
            if order["api_key"] == api_key and order["order_id"] is not None
        ]

    await wait_for(created, 30, "the broker to accept the order")
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    assert (await engine.store.get_order(f"{handle.id}/{handle.result_run_id}")).broker_order_id is None

    second = start_worker(env, log)
    workers.append(second)
    result = await asyncio.wait_for(handle.result(), 60)

    assert result.outcome is Outcome.FILLED and result.filled_quantity == 8
    orders = created()
    assert len(orders) == 1, orders
    assert result.broker_order_id == orders[0]["order_id"]
    record = await engine.store.get_order(result.order_key)
    assert record.adopted and record.broker_order_id == orders[0]["order_id"]
    after = await engine.store.get_strategy(strategy.id)
    assert after.open_quantity == 8
