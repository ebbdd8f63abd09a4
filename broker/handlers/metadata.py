"""Metadata (key 3): brokers, the controller, topics and partition leaders.

A partition's leader is named only while it holds the assignment's incarnation and renews its lease;
otherwise the partition is LEADER_NOT_AVAILABLE, which clients answer by polling metadata quickly.
Unknown topics are auto-created when the broker allows it and the request
asks for it (v4+) -- as Kafka does with ``auto.create.topics.enable``.
"""

from __future__ import annotations

from broker.core import valid_topic_name
from broker.handlers.base import Api, Message, RequestContext
from metadata.cluster import Assignments
from metadata.store import TopicRecord
from protocol.errors import ErrorCode
from protocol.primitives import ZERO_UUID


def broker_list(ctx: RequestContext) -> list[Message]:
    return [{"node_id": b.broker_id, "host": b.host, "port": b.port, "rack": b.rack}
            for b in ctx.broker.live_brokers()]


def topic_metadata(ctx: RequestContext, record: TopicRecord) -> Message:
    responsive = ctx.broker.responsive_brokers()
    partitions = []
    for p in range(record.partitions):
        a = ctx.broker.assignments.partitions.get(Assignments.key(record.topic_id, p))
        if a is None or responsive.get(a.leader) != a.incarnation:
            partitions.append({"error_code": ErrorCode.LEADER_NOT_AVAILABLE, "partition_index": p, "leader_id": -1,
                               "leader_epoch": a.epoch if a else -1, "replica_nodes": [], "isr_nodes": [],
                               "offline_replicas": []})
            continue
        # There are no follower replicas: the object store is the replica.  Clients want the leader listed.
        partitions.append({"error_code": 0, "partition_index": p, "leader_id": a.leader, "leader_epoch": a.epoch,
                           "replica_nodes": [a.leader], "isr_nodes": [a.leader], "offline_replicas": []})
    return {"error_code": 0, "name": record.name, "topic_id": record.topic_id_bytes, "is_internal": False,
            "partitions": partitions}


def _error_topic(name: str | None, topic_id: bytes, error: ErrorCode) -> Message:
    return {"error_code": error, "name": name, "topic_id": topic_id, "is_internal": False, "partitions": []}


async def handle(ctx: RequestContext, request: Message) -> Message:
    broker = ctx.broker
    requested = request["topics"]
    if requested is None or (ctx.version == 0 and not requested):
        topics = [topic_metadata(ctx, record) for record in list(broker.topics.values())]
    else:
        allow_create = request.get("allow_auto_topic_creation", True) if ctx.version >= 4 else True
        topics = []
        for item in requested:
            name = item.get("name")
            topic_id = item.get("topic_id") or ZERO_UUID
            if name is None and topic_id != ZERO_UUID:
                name = broker.topic_names_by_id.get(topic_id)
                if name is None:
                    topics.append(_error_topic(None, topic_id, ErrorCode.UNKNOWN_TOPIC_ID))
                    continue
            if not valid_topic_name(name):
                topics.append(_error_topic(name, ZERO_UUID, ErrorCode.INVALID_TOPIC_EXCEPTION))
                continue
            record = broker.topics.get(name)
            if record is None and allow_create:
                record = await broker.ensure_topic(name)
            if record is None:
                topics.append(_error_topic(name, ZERO_UUID, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION))
            else:
                topics.append(topic_metadata(ctx, record))
    return {
        "throttle_time_ms": 0,
        "brokers": broker_list(ctx),
        "cluster_id": broker.cluster_id,
        "controller_id": broker.controller_id(),
        "topics": topics,
    }


API = Api(3, "Metadata", 0, 12, handle)
