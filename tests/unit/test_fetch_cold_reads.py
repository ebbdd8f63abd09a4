"""Fetch: the partitions of one request that must be read from segment objects are read at once,
with the same answer as when read one after another."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from broker.handlers import fetch
from broker.segment import CorruptSegmentError
from protocol.errors import ErrorCode


class FakeLog:
    def __init__(self, index: int) -> None:
        self.partition = index
        self.topic = SimpleNamespace(name="t")
        self.log_start_offset = 0
        self.high_watermark = 1000
        self.tail = 900  # below this, reads go to segment objects

    def tail_start(self) -> int:
        return self.tail


class FakeBroker:
    def __init__(self, partitions: int, corrupt: set[int] = frozenset()) -> None:  # type: ignore[assignment]
        self.logs = [FakeLog(i) for i in range(partitions)]
        self.corrupt = corrupt
        self.running = 0
        self.most = 0
        self.limits: list[tuple[int, int]] = []
        self.topic_names_by_id: dict[Any, str] = {}
        self.stopping = False

    def partition(self, name: str, index: int) -> FakeLog | None:
        return self.logs[index] if name == "t" and index < len(self.logs) else None

    def partition_error(self, name: str, index: int) -> ErrorCode:
        return ErrorCode.UNKNOWN_TOPIC_OR_PARTITION

    def serving_error(self, plog: FakeLog, current_leader_epoch: int = -1) -> ErrorCode:
        return ErrorCode.NONE

    async def read(self, plog: FakeLog, offset: int, max_bytes: int) -> list[bytes]:
        self.limits.append((plog.partition, max_bytes))
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await asyncio.sleep(0.02 if offset < plog.tail else 0)
        finally:
            self.running -= 1
        if plog.partition in self.corrupt:
            raise CorruptSegmentError("bad segment")
        return [bytes([plog.partition]) * min(max_bytes, 600)]


def _request(offsets: list[int], partition_max: int, max_bytes: int) -> dict[str, Any]:
    parts = [{"partition": i, "fetch_offset": o, "partition_max_bytes": partition_max} for i, o in enumerate(offsets)]
    return {"max_bytes": max_bytes, "topics": [{"topic": "t", "partitions": parts}]}


async def _collect(broker: FakeBroker, request: dict[str, Any]) -> tuple[list[Any], int, bool]:
    ctx = SimpleNamespace(broker=broker, version=12)
    return await fetch._collect(ctx, request, ["t"])  # type: ignore[arg-type]


def _records(responses: list[Any]) -> list[Any]:
    return [(p["partition_index"], p["error_code"], b"".join(p["records"]) if p["records"] else b"")
            for p in responses[0]["partitions"]]


async def test_cold_partitions_are_read_concurrently() -> None:
    broker = FakeBroker(4)
    responses, total, errors = await _collect(broker, _request([0, 10, 20, 30], 1000, 10_000))
    assert broker.most == 4
    assert not errors and total == 4 * 600
    assert _records(responses) == [(i, ErrorCode.NONE, bytes([i]) * 600) for i in range(4)]


async def test_when_the_budget_binds_they_are_read_one_after_another_with_what_is_left() -> None:
    broker = FakeBroker(3)
    responses, total, _ = await _collect(broker, _request([0, 0, 0], 1000, 1500))
    assert broker.most == 1
    assert broker.limits == [(0, 1000), (1, 900), (2, 300)]
    assert [len(r[2]) for r in _records(responses)] == [600, 600, 300]
    assert total == 1500


async def test_hot_partitions_are_read_in_order_only() -> None:
    broker = FakeBroker(3)
    await _collect(broker, _request([950, 960, 0], 1000, 10_000))  # only the last one is cold
    assert broker.most == 1


async def test_a_corrupt_segment_fails_its_partition_only() -> None:
    broker = FakeBroker(3, corrupt={1})
    responses, total, errors = await _collect(broker, _request([0, 0, 0], 1000, 10_000))
    assert errors and total == 1200
    assert [r[1] for r in _records(responses)] == [ErrorCode.NONE, ErrorCode.KAFKA_STORAGE_ERROR, ErrorCode.NONE]


async def test_reads_left_unused_are_cancelled() -> None:
    broker = FakeBroker(3)
    task = asyncio.ensure_future(_collect(broker, _request([0, 0, 0], 1000, 10_000)))
    await asyncio.sleep(0)
    broker.logs[1].log_start_offset = 10  # partition 1 became out of range while the reads ran
    responses, _total, errors = await task
    assert errors
    assert [r[1] for r in _records(responses)] == [ErrorCode.NONE, ErrorCode.OFFSET_OUT_OF_RANGE, ErrorCode.NONE]
    assert broker.limits == [(0, 1000), (1, 1000), (2, 1000)]  # read once each: the unused one was dropped
