"""Fetch (key 1): whole record batches from the tail cache or from segment objects, with long polling.

A request waits up to ``max_wait_ms`` until ``min_bytes`` are available for
the partitions it asks for; any error answers at once.  ``max_bytes`` and
``partition_max_bytes`` bound the response, except that the first batch found
is always returned whole (KIP-74) so a consumer can make progress past a large
batch.  Fetch sessions (KIP-227) are not kept: every response carries session
id 0, which tells clients to send full requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from broker.handlers.base import Api, Message, RequestContext
from broker.partition_log import PartitionLog
from broker.segment import CorruptSegmentError
from protocol.errors import ErrorCode
from protocol.primitives import ZERO_UUID

if TYPE_CHECKING:
    from broker.core import Broker

KEY = 1
log = logging.getLogger("keel.fetch")
MAX_WAIT_MS = 30_000


def _partition_result(index: int, error: ErrorCode, plog: PartitionLog | None = None,
                      records: list[bytes | bytearray | memoryview] | None = None) -> Message:
    return {
        "partition_index": index,
        "error_code": error,
        "high_watermark": plog.high_watermark if plog else -1,
        "last_stable_offset": plog.high_watermark if plog else -1,
        "log_start_offset": plog.log_start_offset if plog else -1,
        "aborted_transactions": None,
        "preferred_read_replica": -1,
        "records": records if records else b"",
    }


_ColdRead = tuple[PartitionLog, int, "asyncio.Task[list[bytes | bytearray | memoryview]]"]


def _start_cold_reads(broker: Broker, request: Message, names: list[str | None],
                      budget: int) -> dict[tuple[int, int], _ColdRead]:
    """Starts, all at once, the reads of the requested partitions that must come from segment objects,
    if every one of them will get its whole ``partition_max_bytes`` (so the answer is the same as when
    read one after another, only sooner: each cold read waits for GETs)."""
    wanted = []
    for t, (topic, name) in enumerate(zip(request["topics"], names, strict=True)):
        for p, part in enumerate(topic["partitions"]):
            plog = broker.partition(name, part["partition"]) if name else None
            offset = part["fetch_offset"]
            if plog is not None and plog.log_start_offset <= offset < min(plog.tail_start(), plog.high_watermark) \
                    and not broker.serving_error(plog, part.get("current_leader_epoch", -1)):
                wanted.append((t, p, plog, offset, part["partition_max_bytes"]))
    if len(wanted) < 2 or sum(w[4] for w in wanted) > budget:
        return {}
    return {(t, p): (plog, limit, asyncio.ensure_future(broker.read(plog, offset, limit)))
            for t, p, plog, offset, limit in wanted}


def _drop(reads: dict[tuple[int, int], _ColdRead]) -> None:
    for _plog, _limit, task in reads.values():
        if not task.done():
            task.cancel()
        elif not task.cancelled():
            task.exception()  # an unused read's failure is nobody's business: mark it retrieved


async def _collect(ctx: RequestContext, request: Message, names: list[str | None]) -> tuple[list[Message], int, bool]:
    """One pass over the requested partitions: (topic responses, bytes gathered, any error)."""
    broker = ctx.broker
    budget = request.get("max_bytes", 0x7FFFFFFF)
    cold = _start_cold_reads(broker, request, names, budget)
    try:
        return await _assemble(broker, ctx, request, names, budget, cold)
    finally:
        _drop(cold)


async def _assemble(broker: Broker, ctx: RequestContext, request: Message, names: list[str | None], budget: int,
                    cold: dict[tuple[int, int], _ColdRead]) -> tuple[list[Message], int, bool]:
    total = 0
    errors = False
    responses = []
    for t, (topic, name) in enumerate(zip(request["topics"], names, strict=True)):
        partitions = []
        for p, part in enumerate(topic["partitions"]):
            started = cold.get((t, p))
            index = part["partition"]
            plog = broker.partition(name, index) if name else None
            if plog is None:
                error = (ErrorCode.UNKNOWN_TOPIC_ID if name is None and ctx.version >= 13
                         else broker.partition_error(name, index))
                partitions.append(_partition_result(index, error))
                errors = True
                continue
            error = broker.serving_error(plog, part.get("current_leader_epoch", -1))
            if error:
                partitions.append(_partition_result(index, error))
                errors = True
                continue
            offset = part["fetch_offset"]
            if offset < plog.log_start_offset or offset > plog.high_watermark:
                partitions.append(_partition_result(index, ErrorCode.OFFSET_OUT_OF_RANGE, plog))
                errors = True
                continue
            chunks: list[bytes | bytearray | memoryview] = []
            if offset < plog.high_watermark and (budget > 0 or total == 0):
                limit = min(part["partition_max_bytes"], max(budget, 1))
                try:
                    if started is not None and started[0] is plog and started[1] == limit:
                        chunks = await started[2]
                    else:
                        chunks = await broker.read(plog, offset, limit)
                except CorruptSegmentError as exc:
                    broker_log_corrupt(plog, exc)
                    partitions.append(_partition_result(index, ErrorCode.KAFKA_STORAGE_ERROR, plog))
                    errors = True
                    continue
                size = sum(len(c) for c in chunks)
                total += size
                budget -= size
            partitions.append(_partition_result(index, ErrorCode.NONE, plog, chunks))
        responses.append({"topic": name, "topic_id": topic.get("topic_id") or ZERO_UUID, "partitions": partitions})
    return responses, total, errors


def broker_log_corrupt(plog: PartitionLog, exc: Exception) -> None:
    log.error("corrupt segment in %s-%d: %s", plog.topic.name, plog.partition, exc)


async def handle(ctx: RequestContext, request: Message) -> Message:
    broker = ctx.broker
    if request.get("session_epoch", -1) > 0 or request.get("session_id", 0) != 0:
        return {"throttle_time_ms": 0, "error_code": ErrorCode.FETCH_SESSION_ID_NOT_FOUND, "session_id": 0,
                "responses": []}
    names = [t.get("topic") or broker.topic_names_by_id.get(t.get("topic_id") or ZERO_UUID) for t in request["topics"]]
    max_wait = min(max(request["max_wait_ms"], 0), MAX_WAIT_MS) / 1000
    deadline = time.monotonic() + max_wait
    min_bytes = max(request["min_bytes"], 1)
    while True:
        responses, total, errors = await _collect(ctx, request, names)
        remaining = deadline - time.monotonic()
        if total >= min_bytes or errors or remaining <= 0 or broker.stopping or broker.long_polls_ended:
            return {"throttle_time_ms": 0, "error_code": ErrorCode.NONE, "session_id": 0, "responses": responses}
        await _wait_for_data(broker, request, names, remaining)


async def _wait_for_data(broker: object, request: Message, names: list[str | None], timeout: float) -> None:
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()
    logs = []
    for topic, name in zip(request["topics"], names, strict=True):
        for part in topic["partitions"]:
            plog = broker.partition(name, part["partition"]) if name else None  # type: ignore[attr-defined]
            if plog is not None:
                logs.append(plog)
                plog.waiters.append(waiter)
    try:
        await asyncio.wait_for(waiter, timeout)
    except TimeoutError:
        pass
    finally:
        for plog in logs:
            with contextlib.suppress(ValueError):
                plog.waiters.remove(waiter)


API = Api(KEY, "Fetch", 4, 17, handle)
