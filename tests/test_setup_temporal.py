"""`python -m apps.setup_temporal` registers the engine's search attributes on a bare cluster, once."""

from __future__ import annotations

from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.client import Client

from apps.setup_temporal import register_search_attributes
from dev.devserver import DevServer
from engine.temporal import SEARCH_ATTRIBUTES


async def test_search_attributes_are_registered_once_on_a_bare_cluster() -> None:
    with DevServer(search_attributes=False) as server:
        await server.wait_for_frontend()
        client = await Client.connect(server.address)
        names = sorted(key.name for key in SEARCH_ATTRIBUTES)

        assert await register_search_attributes(client) == names
        assert await register_search_attributes(client) == []  # a second run changes nothing

        listed = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=client.namespace)
        )
        assert set(names) <= set(listed.custom_attributes)
        query = 'StrategyId="12" AND OrderStatus="PLACED" AND BrokerOrderId="x" AND Symbol="SBIN"'
        assert (await client.count_workflows(query)).count == 0  # accepted in queries (unknown names raise)
