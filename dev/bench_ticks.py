"""`make bench-ticks`: a tick received → the SL_SELL at the broker, through the market-data service.

The load: 1,000 open positions with stop-losses over 200 instruments, and a ticker streaming 10 ticks a
second per instrument (2,000 ticks/s) to the service's `KiteTicker`. Measured in one run:

1. tick received → order at the broker, p50/p99: a tick crosses one stop at a time; from the tick's
   arrival (the `trigger_tick_at` the service records on the order) to the paper broker's receipt of the
   SL_SELL; against the same SL_SELL started directly by `OrderStarter.place_sl_sell_order` (from the
   call to the broker's receipt), in the same run;
2. the service's CPU per 1,000 ticks (user + system from /proc/PID/stat over a steady window).

The parts, each a process of its own: the market-data service (`python -m apps.market_data`, as
production runs it), the paper broker (orders), a tick server speaking Kite's ticker protocol
(`python -m dev.bench_ticks --serve-ticks PORT`: the paper broker trades a dozen instruments, the load
needs 200), the Temporal dev server; the worker runs in this process. 80 positions are bought through
the engine (40 for each measurement); the other 920, whose stops no tick reaches, are written to the
store directly. `bench_ticks()` returns the numbers as a dict.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from cryptography.fernet import Fernet
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from apps.worker import build_worker
from brokers.paper.control import SimControl
from brokers.paper.instruments import BUILTIN_INSTRUMENTS
from brokers.paper.ticker import tick_frame
from dev.devserver import DevServer, free_port
from engine.market_hours import IST
from engine.settings import Settings
from engine.temporal import connect
from starter.orders import OrderStarter
from store import Store
from store.records import StrategyRecord, StrategySpec

ROOT = Path(__file__).resolve().parent.parent
POSITIONS = int(os.environ.get("BENCH_TICK_POSITIONS", "1000"))
INSTRUMENTS = int(os.environ.get("BENCH_TICK_INSTRUMENTS", "200"))
TICKS_PER_SECOND = int(os.environ.get("BENCH_TICKS_PER_SECOND", "10"))  # per instrument
SAMPLES = int(os.environ.get("BENCH_TICK_SAMPLES", "40"))
CPU_WINDOW_SECONDS = float(os.environ.get("BENCH_TICK_CPU_WINDOW", "10"))
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SYNTHETIC_TOKEN_BASE = 3_000_000  # shifted left a byte below: still a 32-bit token
# A token's low byte is its segment, and KiteTicker divides prices by the segment's divisor (CDS: 10^7):
# synthetic instruments are NSE equities (segment 1), like the real ones.
NSE_SEGMENT = 1
SYNTHETIC_PRICE = Decimal("100.00")
STOP_GAP = Decimal("10")  # a triggered strategy's stop lies this far (and more) below its base price
WAIT_SECONDS = 30.0
PG_ADMIN = os.environ.get("BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def at(share: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))], 1)

    return {"p50": at(0.5), "p99": at(0.99), "max": round(ordered[-1], 1), "samples": len(ordered)}


async def make_database() -> tuple[str, str | None]:
    """A fresh PostgreSQL database (its name to drop), or a SQLite file when PostgreSQL is unreachable."""
    try:
        admin = await asyncpg.connect(PG_ADMIN)
    except OSError:
        path = ROOT / "data" / f"bench-ticks-{uuid.uuid4().hex[:6]}.db"
        path.parent.mkdir(exist_ok=True)
        return f"sqlite+aiosqlite:///{path}", None
    name = f"bench_ticks_{uuid.uuid4().hex[:10]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    return f"{PG_ADMIN.rsplit('/', 1)[0].replace('postgresql://', 'postgresql+asyncpg://')}/{name}", name


async def drop_database(name: str | None) -> None:
    if name:
        admin = await asyncpg.connect(PG_ADMIN)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


# ---- the tick server --------------------------------------------------------------------------------


def serve_ticks(port: int, prices: dict[int, Decimal], per_second: int) -> None:
    """Kite's ticker protocol on ws://127.0.0.1:PORT: LTP packets of every subscribed instrument,
    `per_second` frames a second, prices wandering a few paise; stdin lines `pin TOKEN PRICE` fix an
    instrument's price (a fall through a stop)."""
    from websockets.asyncio.server import serve

    pinned: dict[int, Decimal] = {}
    walk = {token: Decimal(0) for token in prices}
    subscribers: dict[Any, set[int]] = {}

    async def handler(websocket: Any) -> None:
        subscribed: set[int] = set()
        subscribers[websocket] = subscribed
        try:
            async for message in websocket:
                request = json.loads(message)
                if request.get("a") == "subscribe":
                    subscribed.update(int(token) for token in request["v"])
                elif request.get("a") == "unsubscribe":
                    subscribed.difference_update(int(token) for token in request["v"])
        finally:
            subscribers.pop(websocket, None)

    async def pump() -> None:
        loop = asyncio.get_running_loop()
        interval = 1.0 / per_second
        next_at = loop.time()
        while True:
            for token in walk:
                step = walk[token] + Decimal(random.choice((-5, 0, 5))) / 100
                walk[token] = max(Decimal("-1"), min(Decimal("1"), step))
            for websocket, tokens in list(subscribers.items()):
                packets = [struct.pack(">II", token, int((pinned.get(token, prices[token] + walk[token])) * 100))
                           for token in tokens if token in prices]
                if packets:
                    try:
                        await websocket.send(tick_frame(packets))
                    except Exception:
                        subscribers.pop(websocket, None)
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    def read_commands(loop: asyncio.AbstractEventLoop) -> None:
        for line in sys.stdin:
            parts = line.split()
            if len(parts) == 3 and parts[0] == "pin":
                loop.call_soon_threadsafe(pinned.__setitem__, int(parts[1]), Decimal(parts[2]))

    async def main() -> None:
        threading.Thread(target=read_commands, args=(asyncio.get_running_loop(),), daemon=True).start()
        async with serve(handler, "127.0.0.1", port):
            await pump()

    asyncio.run(main())


# ---- the bench ----------------------------------------------------------------------------------


def instruments() -> dict[str, tuple[int, Decimal]]:
    """`EXCHANGE:SYMBOL` → (token, base price): the paper broker's own, then synthetic ones up to INSTRUMENTS."""
    chosen = {i.key: (i.instrument_token, i.default_price) for i in BUILTIN_INSTRUMENTS if i.default_price > 200}
    for index in range(INSTRUMENTS - len(chosen)):
        chosen[f"NSE:BENCH{index:03d}"] = ((SYNTHETIC_TOKEN_BASE + index) << 8 | NSE_SEGMENT, SYNTHETIC_PRICE)
    return chosen


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def service_ticks(metrics_url: str) -> float:
    for family in text_string_to_metric_families(httpx.get(metrics_url, timeout=5).text):
        for sample in family.samples:
            if sample.name == "engine_market_data_ticks_total":
                return sample.value
    return 0.0


def broker_received(control: SimControl) -> dict[str, float]:
    return {o["tag"]: o["received_at_epoch"] for o in control.orders() if o["side"] == "SELL" and o["order_id"]}


async def wait_for(what: str, condition: Any, timeout: float = WAIT_SECONDS) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"bench: never {what}")
        await asyncio.sleep(0.01)


async def seed(store: Store, paper_url: str, starter: OrderStarter, names: dict[str, tuple[int, Decimal]]
               ) -> tuple[list[tuple[StrategyRecord, int, Decimal]], list[StrategyRecord]]:
    """The positions: 2 x SAMPLES bought through the engine (the first half with stops STOP_GAP and more
    below the price, for the ticks to cross), the rest written to the store; stops no tick reaches at 1.00."""
    from kiteconnect import KiteConnect

    run = uuid.uuid4().hex[:6]
    api_key = f"ticks{run}"
    kite = KiteConnect(api_key, root=paper_url)
    # A request token from the paper broker's login page, good once, as Kite's redirect hands it over.
    request_token = await asyncio.to_thread(SimControl(paper_url).request_token, api_key)
    token = str((await asyncio.to_thread(kite.generate_session, request_token, "bench"))["access_token"])
    user, _ = await store.create_user(f"bench-ticks-{run}")
    account = await store.add_broker_account(user.id, api_key=api_key, api_secret="bench", access_token=token)
    real = [(key, token_, price) for key, (token_, price) in names.items() if token_ < SYNTHETIC_TOKEN_BASE << 8]
    keys = list(names)

    async def strategy(index: int, key: str, stop: Decimal) -> StrategyRecord:
        exchange, symbol = key.split(":")
        made = await store.create_strategy(StrategySpec(
            user_id=user.id, broker_account_id=account.id, name=f"ticks-{run}-{index}", symbol=symbol,
            exchange=exchange, quantity=1, stop_loss_price=stop))
        return await store.set_strategy_status(made.id, "RUNNING")

    triggered: list[tuple[StrategyRecord, int, Decimal]] = []
    direct: list[StrategyRecord] = []
    for index in range(SAMPLES):
        key, instrument_token, price = real[index % len(real)]
        level = price - STOP_GAP - index // len(real)  # one stop per step: crossed one at a time, highest first
        triggered.append((await strategy(index, key, level), instrument_token, level))
    for index in range(SAMPLES, 2 * SAMPLES):  # started directly: stops no tick reaches
        direct.append(await strategy(index, real[index % len(real)][0], Decimal("1.00")))
    bought = [s for s, _, _ in triggered] + direct
    handles = []
    for position in bought:
        handles.append(await starter.place_buy_order(position))
        await asyncio.sleep(0.105)  # the broker's 10 orders/s
    await asyncio.gather(*(handle.result() for handle in handles))
    rest = [await strategy(2 * SAMPLES + i, keys[i % len(keys)], Decimal("1.00"))
            for i in range(POSITIONS - 2 * SAMPLES)]
    async with store.engine.begin() as connection:
        await connection.execute(text(
            "UPDATE strategies SET position = 'LONG', open_quantity = 1, entry_price = 100, version = version + 1 "
            "WHERE id = ANY(:ids)" if store.engine.dialect.name == "postgresql" else
            f"UPDATE strategies SET position = 'LONG', open_quantity = 1, entry_price = 100, version = version + 1 "
            f"WHERE id IN ({','.join(str(s.id) for s in rest)})"),
            {"ids": [s.id for s in rest]} if store.engine.dialect.name == "postgresql" else {})
    triggered = [(await store.get_strategy(s.id), t, level) for s, t, level in triggered]
    direct = [await store.get_strategy(s.id) for s in direct]
    return triggered, direct


async def bench_ticks() -> dict[str, Any]:
    database_url, pg_name = await make_database()
    secret_key = Fernet.generate_key().decode()
    paper_port, tick_port, metrics_port = free_port(), free_port(), free_port()
    names = instruments()
    cache = Path(tempfile.mkdtemp(prefix="bench-ticks-"))
    (cache / f"instruments-{datetime.now(IST).date().isoformat()}.json").write_text(
        json.dumps({key: token for key, (token, _) in names.items()}))
    paper = subprocess.Popen([sys.executable, "-m", "dev.paper_broker", "--port", str(paper_port),  # noqa: ASYNC220
                              "--fill-delay", "0.02", "--log-level", "warning"], cwd=ROOT)
    ticks = subprocess.Popen([sys.executable, "-m", "dev.bench_ticks", "--serve-ticks", str(tick_port)],  # noqa: ASYNC220
                             cwd=ROOT, stdin=subprocess.PIPE, text=True)
    temporal = DevServer().start()
    store = await Store.connect(database_url, secret_key, pool_size=20)
    service: subprocess.Popen[bytes] | None = None
    try:
        await store.migrate()
        await temporal.wait_for_frontend()
        paper_url = f"http://127.0.0.1:{paper_port}"
        control = SimControl(paper_url)
        await wait_for("the paper broker answered", lambda: _answers(control))
        task_queue = f"bench-ticks-{uuid.uuid4().hex[:6]}"
        settings = Settings(database_url=database_url, kite_root=paper_url, enforce_market_hours=False,
                            order_poll_interval_seconds=0.1, task_queue=task_queue)
        client = await connect(temporal.address, environ={})
        worker, _ = build_worker(client, store, settings)
        starter = OrderStarter(client, store, settings)
        async with worker:
            print(f"seeding {POSITIONS} positions over {len(names)} instruments ...", flush=True)
            triggered, direct = await seed(store, paper_url, starter, names)
            env = {**os.environ, "DATABASE_URL": database_url, "ENGINE_SECRET_KEY": secret_key,
                   "TEMPORAL_ADDRESS": temporal.address, "ENGINE_TASK_QUEUE": task_queue, "ENGINE_KITE_ROOT": paper_url,
                   "ENGINE_KITE_TICKER_ROOT": f"ws://127.0.0.1:{tick_port}", "ENGINE_INSTRUMENTS_CACHE_DIR": str(cache),
                   "ENGINE_MARKET_DATA_METRICS_PORT": str(metrics_port), "ENGINE_ENFORCE_MARKET_HOURS": "false",
                   "ENGINE_LOG_LEVEL": "WARNING"}
            service = subprocess.Popen([sys.executable, "-m", "apps.market_data"], cwd=ROOT, env=env)  # noqa: ASYNC220
            metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
            await wait_for("ticks reached the service", lambda: _ticks_flowing(metrics_url), timeout=60)

            print(f"CPU: {CPU_WINDOW_SECONDS:.0f}s of {len(names) * TICKS_PER_SECOND} ticks/s ...", flush=True)
            cpu0, ticks0, t0 = cpu_seconds(service.pid), service_ticks(metrics_url), time.monotonic()
            await asyncio.sleep(CPU_WINDOW_SECONDS)
            cpu1, ticks1, t1 = cpu_seconds(service.pid), service_ticks(metrics_url), time.monotonic()
            cpu_ms_per_1000 = (cpu1 - cpu0) * 1000 / max(1.0, (ticks1 - ticks0) / 1000)
            tick_rate = (ticks1 - ticks0) / (t1 - t0)

            print(f"latency: {SAMPLES} stops crossed by a tick, one at a time, under the load ...", flush=True)
            assert ticks.stdin is not None
            via_ticks: list[float] = []
            for strategy, instrument_token, level in triggered:
                ticks.stdin.write(f"pin {instrument_token} {level - Decimal('0.05')}\n")
                ticks.stdin.flush()
                order = await wait_for("the SL_SELL recorded", lambda s=strategy: _exit_order(store, s))
                received = await wait_for("the SL_SELL at the broker",
                                          lambda o=order: broker_received(control).get(o.tag))
                via_ticks.append((received - order.trigger_tick_at.timestamp()) * 1000)
                await wait_for("the position closed", lambda s=strategy: _flat(store, s))

            print(f"baseline: the same SL_SELL started directly, {SAMPLES} times ...", flush=True)
            started_directly: list[float] = []
            for strategy in direct:
                t_start = time.time()
                handle = await starter.place_sl_sell_order(strategy, Decimal("1.00"))
                result = await handle.result()
                tag = (await store.get_order(result.order_key)).tag
                received = await wait_for("the SL_SELL at the broker", lambda t=tag: broker_received(control).get(t))
                started_directly.append((received - t_start) * 1000)
    finally:
        for process in (service, ticks, paper):
            if process is not None:
                process.terminate()
                process.wait(10)
        await store.close()
        temporal.stop()
        await drop_database(pg_name)

    results: dict[str, Any] = {
        "tick_to_broker_ms": summary(via_ticks),
        "direct_sl_sell_to_broker_ms": summary(started_directly),
        "service_cpu_ms_per_1000_ticks": round(cpu_ms_per_1000, 2),
        "ticks_per_second": round(tick_rate, 1),
        "positions": POSITIONS,
        "instruments": len(names),
        "database": "postgresql" if pg_name else "sqlite",
    }
    print()
    print(f"{'':36}{'via ticks':>12}{'direct':>12}")
    print(f"{'tick/start -> broker p50 (ms)':36}{results['tick_to_broker_ms']['p50']:>12}"
          f"{results['direct_sl_sell_to_broker_ms']['p50']:>12}")
    print(f"{'tick/start -> broker p99 (ms)':36}{results['tick_to_broker_ms']['p99']:>12}"
          f"{results['direct_sl_sell_to_broker_ms']['p99']:>12}")
    print(f"service CPU: {results['service_cpu_ms_per_1000_ticks']} ms per 1,000 ticks "
          f"at {results['ticks_per_second']} ticks/s, {POSITIONS} positions over {len(names)} instruments")
    return results


def _answers(control: SimControl) -> bool:
    try:
        control.fill()
    except Exception:
        return False
    return True


def _ticks_flowing(metrics_url: str) -> bool:
    try:
        return service_ticks(metrics_url) > 0
    except httpx.HTTPError:
        return False


async def _exit_order(store: Store, strategy: StrategyRecord) -> Any:
    current = await store.get_strategy(strategy.id)
    order_key = current.last_order_workflow_id  # {workflow id}/{run id}
    if order_key is None or ":exit" not in order_key:
        return None
    order = await store.get_order(order_key)
    return order if order.trigger_tick_at is not None else None


async def _flat(store: Store, strategy: StrategyRecord) -> bool:
    return (await store.get_strategy(strategy.id)).open_quantity == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve-ticks", type=int, metavar="PORT", help="run only the tick server")
    args = parser.parse_args()
    if args.serve_ticks:
        names = instruments()
        serve_ticks(args.serve_ticks, {token: price for token, price in names.values()}, TICKS_PER_SECOND)
        return
    results = bench_ticks_sync()
    (ROOT / "bench-ticks-results.json").write_text(json.dumps(results, indent=2) + "\n")
    print("\nwritten to bench-ticks-results.json")


def bench_ticks_sync() -> dict[str, Any]:
    return asyncio.run(bench_ticks())


if __name__ == "__main__":
    main()
