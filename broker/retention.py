"""Retention policy: how far ``retention.ms`` and ``retention.bytes`` move a partition's log start.

Only whole segment objects are ever removed, oldest first, as in Kafka: a
segment goes when its newest record is older than ``retention.ms``, or while
the partition is larger than ``retention.bytes`` by at least that segment's
size.  Data still only in the WAL is never counted or removed.
"""

from __future__ import annotations

from typing import Protocol

from metadata.store import SegmentRef


class RetentionConfig(Protocol):
    retention_ms: int
    retention_bytes: int


def retention_start(segments: list[SegmentRef], log_start: int, config: RetentionConfig, now_ms: int) -> int:
    """The log start offset after applying retention (``log_start`` if nothing expires)."""
    live = [s for s in segments if s.last_offset >= log_start]
    drop = 0
    if config.retention_ms >= 0:
        cutoff = now_ms - config.retention_ms
        while drop < len(live) and live[drop].max_timestamp < cutoff:
            drop += 1
    if config.retention_bytes >= 0:
        excess = sum(s.size for s in live[drop:]) - config.retention_bytes
        while drop < len(live) and excess >= live[drop].size:
            excess -= live[drop].size
            drop += 1
    if drop == 0:
        return log_start
    return max(log_start, live[drop - 1].last_offset + 1)
