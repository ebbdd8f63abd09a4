"""Due partitions are flushed side by side, at most ``flush_concurrency`` at once (by default 8 on S3, 1 on the
local-filesystem store), and one that fails does not stop the others: against a store that answers in tens of milliseconds, flushing them one after another
stretched a round of 64 partitions to seconds (docs/performance.md)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from leading_broker import leading_broker

from broker.core import Broker
from broker.flusher import S3_FLUSH_CONCURRENCY
from broker.partition_log import PartitionLog
from metadata.store import TopicRecord
from objectstore.base import Data, TransientError
from objectstore.memory import MemoryObjectStore

TOPIC = TopicRecord(name="audit", topic_id="ab" * 16, partitions=12)


class SlowSegmentStore(MemoryObjectStore):
    """Segment PUTs take ``delay`` seconds; counts how many run at once and can fail one partition's."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.running = 0
        self.most = 0
        self.failing_partition: int | None = None

    async def put(self, key: str, data: Data) -> str:
        if TOPIC.topic_id not in key or not key.startswith("data/"):
            return await super().put(key, data)
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await asyncio.sleep(self.delay)
            if self.failing_partition is not None and f"/{self.failing_partition}/" in key:
                raise TransientError(f"{key}: store unavailable")
            return await super().put(key, data)
        finally:
            self.running -= 1


async def _broker(tmp_path: Path, store: SlowSegmentStore, **settings: object) -> tuple[Broker, list[PartitionLog]]:
    broker, logs = await leading_broker(tmp_path, store, TOPIC, list(range(TOPIC.partitions)), **settings)
    return broker, list(logs.values())


@pytest.mark.parametrize(("settings", "at_once"), [
    ({"flush_concurrency": 1}, 1),
    ({"flush_concurrency": 4}, 4),
    ({}, 1),  # the local-filesystem store: one disk gains nothing from flushes side by side
    ({"s3_endpoint": "http://127.0.0.1:9"}, S3_FLUSH_CONCURRENCY),  # S3: each flush mostly waits for answers
])
async def test_due_partitions_are_flushed_at_most_flush_concurrency_at_once(
        tmp_path: Path, settings: dict[str, object], at_once: int) -> None:
    assert at_once < TOPIC.partitions
    store = SlowSegmentStore(delay=0.05)
    broker, logs = await _broker(tmp_path, store, **settings)
    await broker.flusher.flush_due(force=True)
    assert all(plog.flushed_offset == 1 and len(plog.segments) == 1 for plog in logs)
    assert store.most == at_once


async def test_a_partition_that_fails_does_not_keep_the_others_in_the_wal(tmp_path: Path) -> None:
    store = SlowSegmentStore(delay=0.01)
    store.failing_partition = 5
    broker, logs = await _broker(tmp_path, store, flush_concurrency=4)
    with pytest.raises(TransientError):
        await broker.flusher.flush_due(force=True)  # reported, so the flusher's round backs off and logs it
    assert [plog.flushed_offset for plog in logs] == [0 if p == 5 else 1 for p in range(TOPIC.partitions)]
    store.failing_partition = None
    await broker.flusher.flush_due(force=True)
    assert all(plog.flushed_offset == 1 for plog in logs)
