"""Committed offsets stay right while two brokers both believe they coordinate a group.

Found by the chaos suite (lost_commits=6): brokers' views of which brokers are alive differ for a
moment, so for a while two of them coordinate one group.  A commit confirmed by one was then hidden
by the other, which answered OffsetFetch from offsets it had read earlier.
"""

from __future__ import annotations

from typing import Any

import pytest

from broker.group_coordinator import CommittedOffset, GroupCoordinator
from metadata.store import GroupOffsetsStore, MetadataStore
from objectstore.base import TransientError
from objectstore.memory import MemoryObjectStore

GROUP = "audit-readers"
KEY = ("audit", 0)


def two_coordinators() -> tuple[GroupCoordinator, GroupCoordinator]:
    meta = MetadataStore(MemoryObjectStore(), prefix="c1")
    return GroupCoordinator(GroupOffsetsStore(meta)), GroupCoordinator(GroupOffsetsStore(meta))


def at(offset: int, commit_ms: int) -> dict[tuple[str, int], CommittedOffset]:
    return {KEY: CommittedOffset(offset, -1, None, commit_ms)}


async def test_offset_fetch_sees_a_commit_taken_by_the_other_coordinator() -> None:
    first, second = two_coordinators()
    await first.commit(GROUP, at(10, commit_ms=1_000))
    await second.load(GROUP)
    await first.load(GROUP)
    await second.commit(GROUP, at(20, commit_ms=2_000))

    await first.load(GROUP, fresh=True)
    assert first.committed(GROUP)[KEY].offset == 20


async def test_a_commit_received_earlier_does_not_undo_a_later_one() -> None:
    first, second = two_coordinators()
    await first.commit(GROUP, at(10, commit_ms=1_000))
    await second.load(GROUP)
    await second.commit(GROUP, at(30, commit_ms=3_000))
    # first still holds the old ETag: its write conflicts, and it merges onto the stored document.
    await first.commit(GROUP, at(20, commit_ms=2_000))

    await second.load(GROUP, fresh=True)
    assert second.committed(GROUP)[KEY].offset == 30
    assert first.committed(GROUP)[KEY].offset == 30


async def test_a_later_commit_wins_over_the_stored_one() -> None:
    first, second = two_coordinators()
    await first.commit(GROUP, at(10, commit_ms=1_000))
    await second.load(GROUP)
    await second.commit(GROUP, at(30, commit_ms=3_000))
    await first.commit(GROUP, at(5, commit_ms=4_000))  # a consumer may move its offset back

    await second.load(GROUP, fresh=True)
    assert second.committed(GROUP)[KEY].offset == 5


async def test_a_failed_retry_after_a_conflict_leaves_no_stale_view(monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = two_coordinators()
    other = ("audit", 1)
    await first.commit(GROUP, at(10, commit_ms=1_000))
    await second.load(GROUP)
    await second.commit(GROUP, {other: CommittedOffset(5, -1, None, 2_000)})

    real_write = first.store.write
    calls = 0

    async def write_failing_after_the_conflict(*args: Any) -> str:
        nonlocal calls
        calls += 1
        if calls == 2:  # the retry that follows the conflict
            raise TransientError("store unreachable")
        return await real_write(*args)

    monkeypatch.setattr(first.store, "write", write_failing_after_the_conflict)
    with pytest.raises(TransientError):
        await first.commit(GROUP, at(20, commit_ms=3_000))

    await first.load(GROUP, fresh=True)
    assert first.committed(GROUP)[other].offset == 5  # the other coordinator's confirmed commit is seen
    await first.commit(GROUP, at(30, commit_ms=4_000))
    await second.load(GROUP, fresh=True)
    assert second.committed(GROUP)[other].offset == 5  # and not overwritten by the next commit
    assert second.committed(GROUP)[KEY].offset == 30
