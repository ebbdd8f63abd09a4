"""Committed offsets and epoch lookups: OffsetCommit, OffsetFetch, OffsetDelete, OffsetForLeaderEpoch."""

from __future__ import annotations

import logging
import time

from broker.group_coordinator import MAX_METADATA_BYTES, STABLE, CommittedOffset
from broker.handlers.base import Api, Message, RequestContext
from broker.handlers.groups import coordinated
from objectstore.base import TransientError
from protocol.errors import ErrorCode
from protocol.schema import codec

log = logging.getLogger("keel.offsets")


def _topic_name(ctx: RequestContext, topic: Message) -> str | None:
    name = topic.get("name")
    if name:
        return name
    topic_id = topic.get("topic_id")
    return ctx.broker.topic_names_by_id.get(topic_id) if topic_id else None


async def offset_commit(ctx: RequestContext, request: Message) -> Message:
    broker = ctx.broker
    group_id = request["group_id"]
    # Stamped before anything is awaited: commits merge by this time, and a broker frozen while it loads
    # the group must not stamp an old commit with the time it resumed.
    now_ms = int(time.time() * 1000)
    error = await coordinated(ctx, group_id) or broker.groups.validate_commit(group_id, request["generation_id_or_member_epoch"],
                                          request["member_id"], request.get("group_instance_id"))
    accepted: dict[tuple[str, int], CommittedOffset] = {}
    results: list[tuple[Message, list[tuple[int, ErrorCode]]]] = []
    for topic in request["topics"]:
        name = _topic_name(ctx, topic)
        codes = []
        for part in topic["partitions"]:
            index = part["partition_index"]
            metadata = part.get("committed_metadata")
            if error:
                codes.append((index, error))
            elif not broker.partition_exists(name, index):
                codes.append((index, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION))
            elif metadata is not None and len(metadata.encode()) > MAX_METADATA_BYTES:
                codes.append((index, ErrorCode.OFFSET_METADATA_TOO_LARGE))
            else:
                accepted[(name, index)] = CommittedOffset(part["committed_offset"],
                                                          part.get("committed_leader_epoch", -1), metadata, now_ms)
                codes.append((index, ErrorCode.NONE))
        results.append((topic, codes))
    if accepted:
        try:
            await broker.groups.commit(group_id, accepted)
        except Exception as exc:  # noqa: BLE001 - the client retries on COORDINATOR_NOT_AVAILABLE
            if isinstance(exc, TransientError):  # the store stayed unavailable through the retries
                log.warning("committing offsets of group %s failed: %s", group_id, exc)
            else:
                log.exception("committing offsets of group %s failed", group_id)
            results = [(topic, [(i, ErrorCode.COORDINATOR_NOT_AVAILABLE if c == ErrorCode.NONE else c)
                                for i, c in codes]) for topic, codes in results]
    return {"throttle_time_ms": 0, "topics": [
        {"name": topic.get("name"), "topic_id": topic.get("topic_id"),
         "partitions": [{"partition_index": i, "error_code": c} for i, c in codes]}
        for topic, codes in results]}


def _fetch_group(ctx: RequestContext, group_id: str, topics: list[Message] | None) -> list[Message]:
    committed = ctx.broker.groups.committed(group_id)
    if topics is None:
        by_topic: dict[str, list[int]] = {}
        for name, index in sorted(committed):
            by_topic.setdefault(name, []).append(index)
        topics = [{"name": name, "partition_indexes": indexes} for name, indexes in by_topic.items()]
    out = []
    for topic in topics:
        name = _topic_name(ctx, topic)
        partitions = []
        for index in topic["partition_indexes"]:
            entry = committed.get((name, index)) if name else None
            partitions.append({
                "partition_index": index,
                "committed_offset": entry.offset if entry else -1,
                "committed_leader_epoch": entry.leader_epoch if entry else -1,
                "metadata": entry.metadata if entry else "",
                "error_code": ErrorCode.NONE,
            })
        out.append({"name": name, "topic_id": topic.get("topic_id"), "partitions": partitions})
    return out


async def offset_fetch(ctx: RequestContext, request: Message) -> Message:
    if ctx.version <= 7:
        error = await coordinated(ctx, request["group_id"], fresh_offsets=True)
        return {"throttle_time_ms": 0, "error_code": error,
                "topics": [] if error else _fetch_group(ctx, request["group_id"], request["topics"])}
    groups = []
    for g in request["groups"]:
        error = await coordinated(ctx, g["group_id"], fresh_offsets=True)
        groups.append({"group_id": g["group_id"], "error_code": error,
                       "topics": [] if error else _fetch_group(ctx, g["group_id"], g["topics"])})
    return {"throttle_time_ms": 0, "groups": groups}


def _subscribed_topics(ctx: RequestContext, group_id: str) -> set[str]:
    group = ctx.broker.groups.groups.get(group_id)
    if group is None or group.state != STABLE or group.protocol_type != "consumer":
        return set()
    topics: set[str] = set()
    for member in group.members.values():
        raw = member.metadata_for(group.protocol_name or "")
        try:
            version = int.from_bytes(raw[:2], "big", signed=True)
            subscription = codec("ConsumerProtocolSubscription", min(max(version, 0), 3)).read(memoryview(raw), 2)[0]
            topics.update(subscription["topics"])
        except Exception:  # noqa: BLE001 - unreadable metadata: assume nothing about it
            continue
    return topics


async def offset_delete(ctx: RequestContext, request: Message) -> Message:
    group_id = request["group_id"]
    error = await coordinated(ctx, group_id)
    if error:
        return {"error_code": error, "throttle_time_ms": 0, "topics": []}
    group = ctx.broker.groups.groups.get(group_id)
    if group is None or (not group.offsets and not group.members):
        return {"error_code": ErrorCode.GROUP_ID_NOT_FOUND, "throttle_time_ms": 0, "topics": []}
    subscribed = _subscribed_topics(ctx, group_id)
    deletable = []
    topics = []
    for topic in request["topics"]:
        partitions = []
        for part in topic["partitions"]:
            index = part["partition_index"]
            if topic["name"] in subscribed:
                code = ErrorCode.GROUP_SUBSCRIBED_TO_TOPIC
            elif not ctx.broker.partition_exists(topic["name"], index):
                code = ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
            else:
                code = ErrorCode.NONE
                deletable.append((topic["name"], index))
            partitions.append({"partition_index": index, "error_code": code})
        topics.append({"name": topic["name"], "partitions": partitions})
    if deletable:
        await ctx.broker.groups.delete_offsets(group_id, deletable)
    return {"error_code": ErrorCode.NONE, "throttle_time_ms": 0, "topics": topics}


async def offset_for_leader_epoch(ctx: RequestContext, request: Message) -> Message:
    topics = []
    for topic in request["topics"]:
        partitions = []
        for part in topic["partitions"]:
            plog = ctx.broker.partition(topic["topic"], part["partition"])
            result = {"partition": part["partition"], "error_code": ErrorCode.NONE, "leader_epoch": -1,
                      "end_offset": -1}
            if plog is None:
                result["error_code"] = ctx.broker.partition_error(topic["topic"], part["partition"])
            else:
                error = ctx.broker.serving_error(plog, part.get("current_leader_epoch", -1))
                if error:
                    result["error_code"] = error
                else:
                    result["leader_epoch"], result["end_offset"] = plog.epoch_end_offset(part["leader_epoch"])
            partitions.append(result)
        topics.append({"topic": topic["topic"], "partitions": partitions})
    return {"throttle_time_ms": 0, "topics": topics}


OFFSET_COMMIT = Api(8, "OffsetCommit", 2, 9, offset_commit)
OFFSET_FETCH = Api(9, "OffsetFetch", 1, 9, offset_fetch)
OFFSET_DELETE = Api(47, "OffsetDelete", 0, 0, offset_delete)
OFFSET_FOR_LEADER_EPOCH = Api(23, "OffsetForLeaderEpoch", 2, 4, offset_for_leader_epoch)
APIS = (OFFSET_COMMIT, OFFSET_FETCH, OFFSET_DELETE, OFFSET_FOR_LEADER_EPOCH)
