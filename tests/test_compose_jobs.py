"""The compose stack's one-shot Temporal jobs, run as they are against a real dev server: they create the
namespace and register the search attributes the order workflows set, and re-running them changes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client
from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes
from temporalio.testing import WorkflowEnvironment

ROOT = Path(__file__).resolve().parent.parent
JOBS = ROOT / "deploy" / "temporal"
VENV_BIN = Path(sys.executable).parent
SEARCH_ATTRIBUTE_NAMES = {"StrategyId", "UserId", "OrderType", "OrderStatus", "Symbol", "BrokerOrderId", "ExitReason"}


@pytest.fixture(scope="module")
async def dev_server() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(VENV_BIN / "temporal"), dev_server_log_level="error"
    )
    async with env:
        yield env


@pytest.fixture(scope="module")
def namespace() -> str:
    return f"engine-{uuid.uuid4().hex[:8]}"


def run_job(script: str, address: str, namespace: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "TEMPORAL_ADDRESS": address,
        "TEMPORAL_NAMESPACE": namespace,
        "TEMPORAL_NAMESPACE_RETENTION": "3d",
    }
    return subprocess.run(["sh", str(JOBS / script)], env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def first_runs(dev_server: WorkflowEnvironment, namespace: str) -> list[subprocess.CompletedProcess[str]]:
    address = dev_server.client.service_client.config.target_host
    return [
        run_job("create-namespace.sh", address, namespace),
        run_job("register-search-attributes.sh", address, namespace),
    ]


async def test_namespace_job_creates_the_namespace_with_its_retention(
    dev_server: WorkflowEnvironment, namespace: str, first_runs: list[subprocess.CompletedProcess[str]]
) -> None:
    namespace_run = first_runs[0]
    assert namespace_run.returncode == 0, namespace_run.stderr

    described = await dev_server.client.workflow_service.describe_namespace(
        DescribeNamespaceRequest(namespace=namespace)
    )

    assert described.config.workflow_execution_retention_ttl.ToTimedelta() == timedelta(days=3)


async def test_search_attribute_job_registers_the_six_keywords(
    dev_server: WorkflowEnvironment, namespace: str, first_runs: list[subprocess.CompletedProcess[str]]
) -> None:
    attributes_run = first_runs[1]
    assert attributes_run.returncode == 0, attributes_run.stderr

    listed = await dev_server.client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace)
    )

    registered = {name: kind for name, kind in listed.custom_attributes.items() if name in SEARCH_ATTRIBUTE_NAMES}
    assert registered == {name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD for name in SEARCH_ATTRIBUTE_NAMES}


async def test_a_workflow_can_carry_the_attributes_in_that_namespace(
    dev_server: WorkflowEnvironment, namespace: str, first_runs: list[subprocess.CompletedProcess[str]]
) -> None:
    assert all(run.returncode == 0 for run in first_runs)
    client = await Client.connect(dev_server.client.service_client.config.target_host, namespace=namespace)
    attributes = TypedSearchAttributes(
        [SearchAttributePair(SearchAttributeKey.for_keyword(name), f"{name}-value") for name in SEARCH_ATTRIBUTE_NAMES]
    )

    # The server refuses a start that sets an unregistered attribute.
    handle = await client.start_workflow(
        "OrderWorkflow",
        id=f"order-{uuid.uuid4()}",
        task_queue=f"nobody-polls-{uuid.uuid4()}",
        search_attributes=attributes,
    )
    description = await handle.describe()
    await handle.terminate("search attribute check done")

    assert description.typed_search_attributes.get(SearchAttributeKey.for_keyword("Symbol")) == "Symbol-value"


def test_jobs_are_idempotent(
    dev_server: WorkflowEnvironment, namespace: str, first_runs: list[subprocess.CompletedProcess[str]]
) -> None:
    address = dev_server.client.service_client.config.target_host

    namespace_again = run_job("create-namespace.sh", address, namespace)
    attributes_again = run_job("register-search-attributes.sh", address, namespace)

    assert namespace_again.returncode == 0 and f"namespace {namespace} exists" in namespace_again.stdout
    assert attributes_again.returncode == 0, attributes_again.stderr
    assert "registered search attribute" not in attributes_again.stdout
    assert attributes_again.stdout.count("exists") == len(SEARCH_ATTRIBUTE_NAMES)


def test_jobs_fail_loudly_when_temporal_never_answers(namespace: str) -> None:
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "TEMPORAL_ADDRESS": "127.0.0.1:1",
        "TEMPORAL_NAMESPACE": namespace,
    }
    # Source the waiting step alone with a short budget: the real jobs wait two minutes.
    script = f'set -eu; MAX_WAIT_ATTEMPTS=1; . "{JOBS / "wait-for-cluster.sh"}"; echo unreachable-line'

    completed = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=60)

    assert completed.returncode != 0
    assert "did not become healthy" in completed.stderr
    assert "unreachable-line" not in completed.stdout
