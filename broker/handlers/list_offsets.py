"""ListOffsets (key 2): earliest, latest, max-timestamp and by-timestamp offset lookups."""

from __future__ import annotations

from broker.handlers.base import Api, Message, RequestContext
from protocol.errors import ErrorCode

KEY = 2
LATEST = -1
EARLIEST = -2
MAX_TIMESTAMP = -3
EARLIEST_LOCAL = -4
LATEST_TIERED = -5


async def handle(ctx: RequestContext, request: Message) -> Message:
    broker = ctx.broker
    topics = []
    for topic in request["topics"]:
        name = topic["name"]
        partitions = []
        for part in topic["partitions"]:
            index = part["partition_index"]
            plog = broker.partition(name, index)
            result = {"partition_index": index, "error_code": ErrorCode.NONE, "timestamp": -1, "offset": -1,
                      "leader_epoch": -1, "old_style_offsets": []}
            if plog is None:
                result["error_code"] = broker.partition_error(name, index)
            elif error := broker.serving_error(plog, part.get("current_leader_epoch", -1)):
                result["error_code"] = error
            else:
                result["leader_epoch"] = plog.manifest.leader_epoch
                ts = part["timestamp"]
                if ts == LATEST:
                    result["offset"] = plog.high_watermark
                elif ts in (EARLIEST, EARLIEST_LOCAL):
                    result["offset"] = plog.log_start_offset
                elif ts == LATEST_TIERED:
                    result["offset"] = plog.flushed_offset - 1
                elif ts == MAX_TIMESTAMP:
                    result["offset"], result["timestamp"] = await broker.max_timestamp_offset(plog)
                elif ts >= 0:
                    result["offset"], result["timestamp"] = await broker.offset_for_timestamp(plog, ts)
                else:
                    result["error_code"] = ErrorCode.INVALID_REQUEST
            partitions.append(result)
        topics.append({"name": name, "partitions": partitions})
    return {"throttle_time_ms": 0, "topics": topics}


API = Api(KEY, "ListOffsets", 1, 10, handle)
