"""Committed offsets stay right while two brokers both believe they coordinate a group.

Found by the chaos suite (lost_commits=6): brokers' views of which brokers are alive differ for a
moment, so for a while two of them coordinate one group.  A commit confirmed by one was then hidden
by the other, which answered OffsetFetch from offsets it had read earlier.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from broker.config import Settings
from broker.core import Broker
from broker.group_coordinator import CommittedOffset, GroupCoordinator
from broker.membership import wall_ms
from metadata.cluster import BrokerRegistration
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


async def test_a_broker_past_its_lease_coordinates_no_group(tmp_path: Path) -> None:
    """Short chaos run of 2026-12-04 (seed 3544641404, lost_commits=6): a broker resumed from a 3.9 s
    SIGSTOP and, before its cluster round ran, took a commit that had waited in its socket.  Its copies of
    the other leases had run out, so it saw itself as the only live broker and the group's coordinator;
    the commit, stamped with the time it was taken, overwrote a later one the real coordinator had
    confirmed."""
    broker = Broker(Settings(data_dir=str(tmp_path), broker_id=1), store=MemoryObjectStore())
    await broker.membership.register()
    other = BrokerRegistration(broker_id=2, host="127.0.0.1", port=9094, incarnation=1,
                               lease_expiry_ms=wall_ms() + 60_000)
    broker.cluster_brokers = {2: other}
    groups = [f"group-{i}" for i in range(8)]
    mine = [g for g in groups if broker.coordinates(g)]
    assert mine and len(mine) < len(groups)  # shared with broker 2

    other.lease_expiry_ms = wall_ms() - 1  # the copy as it looks after a long freeze
    broker.membership._valid_until = time.monotonic() - 0.001
    assert not [g for g in groups if broker.coordinates(g)]
