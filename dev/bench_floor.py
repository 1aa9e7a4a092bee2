"""The benchmark's floor: a trivial workflow of the order workflow's old shape, and a worker for it.

Eager start, a local activity, one regular activity that heartbeats once, a local activity: what Temporal
itself costs for an order that takes that path, with no store, no broker and no order logic. The bench
runs it on the same dev server, with the same worker options and start options as the engine, so the
distance between the two is the engine's own cost.

    python -m dev.bench_floor     (a floor worker process, for `make bench -- --workers N`)
"""

from __future__ import annotations

import asyncio
import os
import signal
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import Worker

from apps.worker import worker_tuning
from engine.settings import Settings


@activity.defn(name="floor_local")
async def floor_local(value: int) -> int:
    return value + 1


@activity.defn(name="floor_follow")
async def floor_follow(value: int) -> int:
    activity.heartbeat(value)
    return value + 1


@workflow.defn(name="FloorWorkflow")
class FloorWorkflow:
    @workflow.run
    async def run(self, value: int) -> int:
        value = await workflow.execute_local_activity(floor_local, value, start_to_close_timeout=timedelta(seconds=10))
        value = await workflow.execute_activity(
            floor_follow, value, start_to_close_timeout=timedelta(seconds=60), heartbeat_timeout=timedelta(seconds=30)
        )
        return await workflow.execute_local_activity(floor_local, value, start_to_close_timeout=timedelta(seconds=10))


def floor_worker(client: Client, task_queue: str) -> Worker:
    return Worker(
        client, task_queue=task_queue, workflows=[FloorWorkflow], activities=[floor_local, floor_follow],
        **worker_tuning(Settings()),
    )


async def main() -> None:
    from engine.temporal import connect

    client = await connect(os.environ["TEMPORAL_ADDRESS"], environ={})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with floor_worker(client, os.environ["ENGINE_TASK_QUEUE"]):
        print("ready", flush=True)
        await stop.wait()


if __name__ == "__main__":
    # The sandbox re-imports a workflow's module by its name: run the imported module's worker, not
    # __main__'s (whose FloorWorkflow the sandbox cannot find).
    from dev import bench_floor

    asyncio.run(bench_floor.main())
