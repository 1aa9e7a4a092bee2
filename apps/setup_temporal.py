"""Register the engine's custom search attributes on a Temporal cluster (idempotent).

    python -m apps.setup_temporal          # uses TEMPORAL_ADDRESS / TEMPORAL_NAMESPACE / profiles

The dev server started by `make demo` and the tests registers them itself; a production cluster needs
this once per namespace (docker-compose runs the equivalent `temporal operator` job).
"""

from __future__ import annotations

import asyncio

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
from temporalio.client import Client

from engine.temporal import SEARCH_ATTRIBUTES, connect


async def register_search_attributes(client: Client) -> list[str]:
    """Add whichever of the engine's search attributes the namespace lacks; returns the names added."""
    namespace = client.namespace
    existing = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace)
    )
    missing = {
        key.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD
        for key in SEARCH_ATTRIBUTES
        if key.name not in existing.custom_attributes
    }
    if missing:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(namespace=namespace, search_attributes=missing)
        )
    return sorted(missing)


async def main() -> None:
    client = await connect()
    added = await register_search_attributes(client)
    names = ", ".join(key.name for key in SEARCH_ATTRIBUTES)
    print(f"namespace {client.namespace}: added {', '.join(added) or 'nothing'}; registered: {names}")


if __name__ == "__main__":
    asyncio.run(main())
