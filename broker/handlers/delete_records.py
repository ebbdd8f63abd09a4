"""DeleteRecords (key 21): move a partition's log start offset forward.

Records below the new log start are no longer served (Fetch answers
OFFSET_OUT_OF_RANGE, ListOffsets earliest returns the new start); segment
objects wholly below it are deleted.  Offset -1 means "up to the high
watermark".
"""

from __future__ import annotations

from broker.handlers.base import Api, Message, RequestContext
from protocol.errors import ErrorCode


async def handle(ctx: RequestContext, request: Message) -> Message:
    broker = ctx.broker
    topics = []
    for topic in request["topics"]:
        partitions = []
        for part in topic["partitions"]:
            index = part["partition_index"]
            plog = broker.partition(topic["name"], index)
            result = {"partition_index": index, "low_watermark": -1, "error_code": ErrorCode.NONE}
            if plog is None:
                result["error_code"] = broker.partition_error(topic["name"], index)
            else:
                offset = plog.high_watermark if part["offset"] == -1 else part["offset"]
                if offset < 0 or offset > plog.high_watermark:
                    result["error_code"] = ErrorCode.OFFSET_OUT_OF_RANGE
                    result["low_watermark"] = plog.log_start_offset
                else:
                    result["low_watermark"] = await broker.advance_log_start(plog, offset)
            partitions.append(result)
        topics.append({"name": topic["name"], "partitions": partitions})
    return {"throttle_time_ms": 0, "topics": topics}


API = Api(21, "DeleteRecords", 0, 2, handle)
