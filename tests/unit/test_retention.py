"""Retention policy: whole segments, oldest first, by age and by size."""

from dataclasses import dataclass

from broker.retention import retention_start
from metadata.store import SegmentRef


@dataclass
class Config:
    retention_ms: int = -1
    retention_bytes: int = -1


def segments(*spec: tuple[int, int, int]) -> list[SegmentRef]:
    """(base, last, max_timestamp) each 100 bytes."""
    return [SegmentRef(base, last, f"k{base}", 100, ts) for base, last, ts in spec]


SEGS = segments((0, 9, 1000), (10, 19, 2000), (20, 29, 3000))


def test_nothing_expires_without_limits() -> None:
    assert retention_start(SEGS, 0, Config(), now_ms=10_000) == 0


def test_age_removes_only_segments_whose_newest_record_is_too_old() -> None:
    assert retention_start(SEGS, 0, Config(retention_ms=8500), now_ms=10_000) == 10
    assert retention_start(SEGS, 0, Config(retention_ms=7500), now_ms=10_000) == 20
    assert retention_start(SEGS, 0, Config(retention_ms=0), now_ms=10_000) == 30


def test_size_keeps_at_least_the_limit() -> None:
    assert retention_start(SEGS, 0, Config(retention_bytes=300), now_ms=0) == 0
    assert retention_start(SEGS, 0, Config(retention_bytes=250), now_ms=0) == 0
    assert retention_start(SEGS, 0, Config(retention_bytes=200), now_ms=0) == 10
    assert retention_start(SEGS, 0, Config(retention_bytes=0), now_ms=0) == 30


def test_log_start_never_moves_back() -> None:
    assert retention_start(SEGS, 25, Config(retention_ms=8500), now_ms=10_000) == 25
