"""The registry of served APIs: one module per API family, each declaring its version range."""

from broker.handlers import (
    admin,
    api_versions,
    delete_records,
    fetch,
    groups,
    list_offsets,
    metadata,
    offsets,
    produce,
    producer_ids,
    topics,
)
from broker.handlers.base import Api

APIS: dict[int, Api] = {
    api.key: api
    for api in (
        produce.API,
        fetch.API,
        list_offsets.API,
        metadata.API,
        api_versions.API,
        topics.CREATE_TOPICS,
        topics.DELETE_TOPICS,
        producer_ids.API,
        delete_records.API,
        *groups.APIS,
        *offsets.APIS,
        *admin.APIS,
    )
}
