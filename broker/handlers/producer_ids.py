"""InitProducerId (key 22): producer ids and epochs for idempotent producers.

Ids come from a block reserved durably in the metadata store, so no id is
handed out twice, even across restarts.  As in Kafka, a producer without a
transactional id gets a fresh id (epoch 0) on every call, also when it
presents its old id and epoch (KIP-360).  Transactions are not supported: a
transactional id is refused.
"""

from __future__ import annotations

from broker.handlers.base import Api, Message, RequestContext
from protocol.errors import ErrorCode


async def handle(ctx: RequestContext, request: Message) -> Message:
    if request.get("transactional_id") is not None:
        return {"throttle_time_ms": 0, "error_code": ErrorCode.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
                "producer_id": -1, "producer_epoch": -1}
    return {"throttle_time_ms": 0, "error_code": ErrorCode.NONE,
            "producer_id": await ctx.broker.next_producer_id(), "producer_epoch": 0}


API = Api(22, "InitProducerId", 0, 5, handle)
