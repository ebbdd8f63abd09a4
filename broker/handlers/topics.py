"""CreateTopics (key 19) and DeleteTopics (key 20)."""

from __future__ import annotations

import logging

from broker import topic_configs
from broker.core import valid_topic_name
from broker.handlers.base import Api, Message, RequestContext
from metadata.store import TopicExistsError
from protocol.errors import ErrorCode
from protocol.primitives import ZERO_UUID

log = logging.getLogger("keel.topics")
MAX_PARTITIONS = 10_000


def _result(name: str, error: ErrorCode, message: str | None = None, **extra: object) -> Message:
    return {"name": name, "error_code": error, "error_message": message, **extra}


async def create_topics(ctx: RequestContext, request: Message) -> Message:
    broker = ctx.broker
    results = []
    seen: set[str] = set()
    for topic in request["topics"]:
        name = topic["name"]
        if name in seen:
            results.append(_result(name, ErrorCode.INVALID_REQUEST, "topic named twice in one request"))
            continue
        seen.add(name)
        if not valid_topic_name(name):
            results.append(_result(name, ErrorCode.INVALID_TOPIC_EXCEPTION, f"illegal topic name {name!r}"))
            continue
        partitions = topic["num_partitions"]
        if topic["assignments"]:
            partitions = len(topic["assignments"])
        if partitions == -1:
            partitions = broker.settings.default_partitions
        if not 1 <= partitions <= MAX_PARTITIONS:
            results.append(_result(name, ErrorCode.INVALID_PARTITIONS, f"partition count must be 1..{MAX_PARTITIONS}"))
            continue
        replication = topic["replication_factor"]
        if replication == 0 or replication < -1:
            results.append(_result(name, ErrorCode.INVALID_REPLICATION_FACTOR, "replication factor must be positive"))
            continue
        try:
            configs = topic_configs.validate({c["name"]: c["value"] for c in topic["configs"]})
        except topic_configs.InvalidConfigError as exc:
            results.append(_result(name, ErrorCode.INVALID_CONFIG, str(exc)))
            continue
        if name in broker.topics:
            results.append(_result(name, ErrorCode.TOPIC_ALREADY_EXISTS, f"topic {name!r} already exists"))
            continue
        if request["validate_only"]:
            results.append(_result(name, ErrorCode.NONE, num_partitions=partitions, replication_factor=1))
            continue
        try:
            record = await broker.create_topic(name, partitions, configs)
        except TopicExistsError:
            results.append(_result(name, ErrorCode.TOPIC_ALREADY_EXISTS, f"topic {name!r} already exists"))
            continue
        effective = topic_configs.effective(record.configs, broker.settings)
        results.append(_result(
            name, ErrorCode.NONE, topic_id=record.topic_id_bytes, num_partitions=partitions, replication_factor=1,
            configs=[{"name": k, "value": v, "read_only": False, "config_source": 5 if default else 1,
                      "is_sensitive": False} for k, (v, default) in effective.items()],
        ))
    return {"throttle_time_ms": 0, "topics": results}


async def delete_topics(ctx: RequestContext, request: Message) -> Message:
    broker = ctx.broker
    wanted: list[tuple[str | None, bytes]] = [(name, ZERO_UUID) for name in request.get("topic_names") or []]
    wanted += [(t.get("name"), t.get("topic_id") or ZERO_UUID) for t in request.get("topics") or []]
    responses = []
    for name, topic_id in wanted:
        if name is None and topic_id != ZERO_UUID:
            name = broker.topic_names_by_id.get(topic_id)
            if name is None:
                responses.append({"name": None, "topic_id": topic_id, "error_code": ErrorCode.UNKNOWN_TOPIC_ID})
                continue
        record = broker.topics.get(name or "")
        if record is None:
            responses.append({"name": name, "topic_id": topic_id, "error_code": ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
                              "error_message": f"topic {name!r} does not exist"})
            continue
        await broker.delete_topic(record.name)
        responses.append({"name": record.name, "topic_id": record.topic_id_bytes, "error_code": ErrorCode.NONE})
    return {"throttle_time_ms": 0, "responses": responses}


CREATE_TOPICS = Api(19, "CreateTopics", 2, 7, create_topics)
DELETE_TOPICS = Api(20, "DeleteTopics", 1, 6, delete_topics)
