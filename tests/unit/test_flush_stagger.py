"""Partitions written together come due for their age flush at different moments, never after the interval."""

from __future__ import annotations

import time
from pathlib import Path

from leading_broker import leading_broker

from broker.flusher import STAGGER_FROM, _age_share
from broker.partition_log import PartitionLog
from metadata.store import Manifest, TopicRecord
from objectstore.memory import MemoryObjectStore


def _log(topic_id: str, partition: int) -> PartitionLog:
    topic = TopicRecord(name="t", topic_id=topic_id, partitions=64)
    return PartitionLog.from_manifest(topic, partition, Manifest(topic_id=topic_id, partition=partition), None)


def test_age_shares_are_spread_within_the_interval() -> None:
    shares = [_age_share(_log("ab" * 16, p)) for p in range(64)]
    assert all(STAGGER_FROM <= s <= 1.0 for s in shares)
    assert shares == [_age_share(_log("ab" * 16, p)) for p in range(64)]  # fixed per partition
    assert len({round(s, 3) for s in shares}) > 48  # nearly all distinct
    # Spread over the whole range, so a round of flushes is not one burst.
    ordered = sorted(shares)
    assert ordered[0] < STAGGER_FROM + 0.1 and ordered[-1] > 0.9
    assert max(b - a for a, b in zip(ordered, ordered[1:], strict=False)) < 0.1
    # Another topic's partitions get other shares.
    assert [_age_share(_log("cd" * 16, p)) for p in range(8)] != shares[:8]


async def test_flush_due_flushes_each_partition_at_its_share(tmp_path: Path) -> None:
    topic = TopicRecord(name="audit", topic_id="ab" * 16, partitions=64)
    shares = {p: _age_share(_log(topic.topic_id, p)) for p in range(64)}
    early = min(shares, key=shares.__getitem__)  # comes due well before 0.8 of the interval
    late = max(shares, key=shares.__getitem__)  # only after it
    assert shares[early] < 0.7 < 0.9 < shares[late]
    broker, logs = await leading_broker(tmp_path, MemoryObjectStore(), topic, [early, late], flush_interval_ms=10_000)
    interval = broker.settings.flush_interval_ms / 1000
    for plog in logs.values():
        plog.tail[0].appended_at = time.monotonic() - 0.8 * interval
    await broker.flusher.flush_due()
    assert logs[early].flushed_offset == 1 and len(logs[early].segments) == 1
    assert logs[late].flushed_offset == 0 and logs[late].segments == []
    logs[late].tail[0].appended_at = time.monotonic() - interval
    await broker.flusher.flush_due()  # never later than the interval itself
    assert logs[late].flushed_offset == 1
