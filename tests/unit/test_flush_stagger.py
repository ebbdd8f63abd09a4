"""Partitions written together come due for their age flush at different moments, never after the interval."""

from __future__ import annotations

from broker.flusher import STAGGER_FROM, _age_share
from broker.partition_log import PartitionLog
from metadata.store import Manifest, TopicRecord


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
