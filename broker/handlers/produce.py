"""Produce (key 0): validate, sequence and durably append each partition's record batch.

All partitions of a request are accepted (offsets assigned) synchronously in
request order before anything is awaited, so pipelined requests on one
connection keep their order.  The response is sent only after every batch's
WAL entry is durable -- for ``acks=1`` and ``acks=all`` alike; ``acks=0`` gets
no response, as in Kafka.  Versions 0-2 are advertised (librdkafka turns
compression off otherwise) and answered with UNSUPPORTED_VERSION, as Kafka 4
does.
"""

from __future__ import annotations

import asyncio
import struct

from broker.core import AppendResult
from broker.handlers.base import Api, Message, RequestContext
from protocol import primitives as p
from protocol.errors import ErrorCode
from protocol.framing import finish_response, read_request_header, start_response
from protocol.primitives import ZERO_UUID
from protocol.schema import request_codec

KEY = 0
_NULL_STRING = b"\xff\xff"


async def handle(ctx: RequestContext, request: Message) -> Message | None:
    broker = ctx.broker
    acks = request["acks"]
    topic_data = request["topic_data"]
    if acks not in (-1, 0, 1):
        return _response(ctx, {_key(t): [(pd["index"], AppendResult(ErrorCode.INVALID_REQUIRED_ACKS))
                                          for pd in t["partition_data"]] for t in topic_data})
    await broker.wait_for_flush_room()
    for topic in topic_data:  # auto-create before the synchronous pass below
        name = topic.get("name")
        if name and name not in broker.topics:
            await broker.ensure_topic(name)

    results: dict[tuple[str | None, bytes], list[tuple[int, AppendResult | asyncio.Future[AppendResult]]]] = {}
    for topic in topic_data:
        name = topic.get("name")
        topic_id = topic.get("topic_id") or ZERO_UUID
        if not name and topic_id != ZERO_UUID:
            name = broker.topic_names_by_id.get(topic_id)
        unknown = ErrorCode.UNKNOWN_TOPIC_ID if ctx.version >= 13 else ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
        entries = results.setdefault((topic.get("name"), topic_id), [])
        for pd in topic["partition_data"]:
            plog = broker.partition(name, pd["index"]) if name else None
            if plog is None:
                error = broker.partition_error(name, pd["index"]) if name else unknown
                entries.append((pd["index"], AppendResult(error)))
            else:
                entries.append((pd["index"], broker.append(plog, pd["records"])))

    pending = [r for entries in results.values() for _, r in entries if isinstance(r, asyncio.Future)]
    if len(pending) == 1:
        await pending[0]  # the common case; gather() costs a future and a callback per child
    elif pending:
        await asyncio.gather(*pending)
    if acks == 0:
        return None
    return _response(ctx, {key: [(index, r.result() if isinstance(r, asyncio.Future) else r)
                                 for index, r in entries] for key, entries in results.items()})


def _key(topic: Message) -> tuple[str | None, bytes]:
    return topic.get("name"), topic.get("topic_id") or ZERO_UUID


def _response(ctx: RequestContext, results: dict[tuple[str | None, bytes], list[tuple[int, AppendResult]]]) -> Message:
    responses = []
    for (name, topic_id), entries in results.items():
        partitions = []
        for index, r in entries:
            partitions.append({
                "index": index, "error_code": r.error, "base_offset": r.base_offset,
                "log_append_time_ms": r.log_append_time, "log_start_offset": r.log_start_offset,
                "record_errors": [], "error_message": r.message if r.error else None,
            })
        responses.append({"name": name, "topic_id": topic_id, "partition_responses": partitions})
    return {"responses": responses, "throttle_time_ms": 0}


def legacy_unsupported(version: int, frame: memoryview) -> bytes | None:
    """Produce v0-2: UNSUPPORTED_VERSION for every partition, in the old response layout."""
    header, pos = read_request_header(frame, flexible=False)
    # v0-2 differ from v3 only by the leading transactional id, so v3's codec reads them.
    body = request_codec(KEY, 3).decode(memoryview(_NULL_STRING + bytes(frame[pos:])))
    if body["acks"] == 0:
        return None
    out = start_response(header.correlation_id, flexible_header=False)
    p.write_array_length(out, len(body["topic_data"]))
    for topic in body["topic_data"]:
        p.write_string(out, topic["name"])
        p.write_array_length(out, len(topic["partition_data"]))
        for pd in topic["partition_data"]:
            out += struct.pack(">ihq", pd["index"], ErrorCode.UNSUPPORTED_VERSION, -1)
            if version >= 2:
                out += struct.pack(">q", -1)
    if version >= 1:
        out += struct.pack(">i", 0)
    return bytes(finish_response(out))


API = Api(KEY, "Produce", 3, 12, handle, advertised_min=0, unsupported=legacy_unsupported)
