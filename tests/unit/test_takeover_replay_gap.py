"""A takeover serves only once its WAL replay is complete.

Found by the chaos suite: a new leader's read of the old leader's object WAL missed one piece while later
pieces were there.  It logged the gap, served from the first missing offset and gave 273 acknowledged
offsets to other records.  Now a replay that skips offsets is retried on a fresh read, and the partition is
served without the missing entries only after REPLAY_GAP_PATIENCE_SECONDS.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Any

import pytest

from broker import leadership as leadership_module
from broker import wal_entry
from broker.leadership import Leadership, ReplayGap
from broker.partition_log import PartitionLog, TailBatch
from broker.segment import build_segment
from metadata.store import Manifest, MetadataStore, SegmentRef, TopicRecord
from objectstore.memory import MemoryObjectStore
from protocol.records import assign_offsets, build_batch
from wal.object import ObjectWriteAheadLog

TOPIC = TopicRecord(name="audit", topic_id="cd" * 16, partitions=1)
OLD_EPOCH, NEW_EPOCH = 4, 5
OLD_WAL = {"engine": "object", "prefix": "wal/3/7"}


def batch_at(base_offset: int, records: int = 3) -> bytes:
    placed = bytearray(build_batch([(None, b"v%d" % (base_offset + i)) for i in range(records)]))
    assign_offsets(placed, base_offset)
    return bytes(placed)


class FakeBroker:
    """What a takeover touches: the stores, this broker's identity and lease, the flusher, serving."""

    def __init__(self, store: MemoryObjectStore) -> None:
        self.store = store
        self.meta = MetadataStore(store)
        self.settings = SimpleNamespace(broker_id=2)
        self.membership = SimpleNamespace(incarnation=1, lease_valid=lambda: True, registration=None)
        self.stopping = False
        self.served: list[PartitionLog] = []
        self.flusher = SimpleNamespace(flush_partition=self._flush)

    async def _flush(self, plog: PartitionLog, batches: list[TailBatch], **_: Any) -> None:
        plog.flushed_offset = batches[-1].last_offset + 1

    async def update_manifest(self, plog: PartitionLog, change: Any) -> Manifest:
        plog.manifest = change(plog.manifest)
        return plog.manifest

    def serve_partition(self, plog: PartitionLog) -> None:
        self.served.append(plog)


async def old_leaders_wal(store: MemoryObjectStore, batches: list[bytes]) -> ObjectWriteAheadLog:
    wal = ObjectWriteAheadLog(store, OLD_WAL["prefix"])
    await wal.open()
    for batch in batches:  # one WAL object per append: nothing else is in flight
        await wal.append([wal_entry.encode_header(TOPIC.topic_id_bytes, 0, OLD_EPOCH), batch])
    return wal


async def elected(store: MemoryObjectStore) -> FakeBroker:
    broker = FakeBroker(store)
    manifest = Manifest(topic_id=TOPIC.topic_id, partition=0, leader_epoch=NEW_EPOCH, leader=2,
                        leader_incarnation=1, replay_from=[[OLD_WAL, OLD_EPOCH]])
    await broker.meta.commit_manifest(manifest, None)
    return broker


async def test_a_complete_replay_is_served() -> None:
    store = MemoryObjectStore()
    await old_leaders_wal(store, [batch_at(0), batch_at(3), batch_at(6)])
    broker = await elected(store)
    await Leadership(broker).take_over(TOPIC, 0, NEW_EPOCH)  # type: ignore[arg-type]
    assert [p.next_offset for p in broker.served] == [9]


async def test_a_replay_that_skips_offsets_is_not_served(monkeypatch: pytest.MonkeyPatch) -> None:
    store = MemoryObjectStore()
    await old_leaders_wal(store, [batch_at(0), batch_at(3), batch_at(6)])
    pieces = sorted(info.key for info in await store.list(OLD_WAL["prefix"] + "/"))
    await store.delete(pieces[0])  # the piece holding offsets 0..2 is missing from the read: it starts at 3
    broker = await elected(store)
    leadership = Leadership(broker)  # type: ignore[arg-type]

    with pytest.raises(ReplayGap):
        await leadership.take_over(TOPIC, 0, NEW_EPOCH)
    assert broker.served == []

    # Past the patience the partition is served (entries from the gap on are taken as never acknowledged).
    monkeypatch.setattr(leadership_module, "REPLAY_GAP_PATIENCE_SECONDS", 0.0)
    await leadership.take_over(TOPIC, 0, NEW_EPOCH)
    assert [p.next_offset for p in broker.served] == [0]


async def test_a_retry_reads_the_wal_afresh() -> None:
    store = MemoryObjectStore()
    wal = await old_leaders_wal(store, [batch_at(0), batch_at(3), batch_at(6)])
    pieces = sorted(info.key for info in await store.list(OLD_WAL["prefix"] + "/"))
    hidden = await store.get(pieces[0])
    await store.delete(pieces[0])
    broker = await elected(store)
    leadership = Leadership(broker)  # type: ignore[arg-type]
    with pytest.raises(ReplayGap):
        await leadership.take_over(TOPIC, 0, NEW_EPOCH)

    await store.put(pieces[0], hidden)  # the piece is visible again: the retry must not reuse the old read
    await leadership.take_over(TOPIC, 0, NEW_EPOCH)
    assert [p.next_offset for p in broker.served] == [9]
    assert dataclasses.asdict(broker.served[0].manifest)["replay_from"] == []
    await wal.close()


async def put_segment(broker: FakeBroker, batches: list[bytes], epoch: int) -> SegmentRef:
    parts, footer = build_segment(batches)
    key = broker.meta.segment_key(TOPIC.topic_id, 0, footer.base_offset, epoch)
    body = b"".join(parts)
    await broker.store.put(key, body)
    return SegmentRef(footer.base_offset, footer.last_offset, key, len(body), footer.max_timestamp)


async def flushed_twice_one_ref_kept() -> FakeBroker:
    """The old leader wrote 0..8 to its WAL and flushed 0..2 and 3..5, so its WAL was trimmed up to 6; the
    manifest lists only the first segment (offsets 0..2)."""
    store = MemoryObjectStore()
    await old_leaders_wal(store, [batch_at(0), batch_at(3), batch_at(6)])
    pieces = sorted(info.key for info in await store.list(OLD_WAL["prefix"] + "/"))
    for trimmed in pieces[:2]:
        await store.delete(trimmed)
    broker = await elected(store)
    ref = await put_segment(broker, [batch_at(0)], OLD_EPOCH)
    manifest, etag = await broker.meta.load_manifest(TOPIC.topic_id, 0)
    await broker.meta.commit_manifest(dataclasses.replace(manifest, segments=[ref]), etag)
    return broker


async def test_a_flushed_segment_missing_from_the_manifest_fills_the_gap() -> None:
    """Chaos run 2026-12-02 13:07: the old leader flushed offsets 66356..66383 into `66356-171.seg`, its
    manifest commit succeeded and it trimmed its WAL, but the next manifest lacked the ref.  The new
    leader's replay found the WAL starting after the gap."""
    broker = await flushed_twice_one_ref_kept()
    await put_segment(broker, [batch_at(3)], OLD_EPOCH)  # written, its ref lost
    leadership = Leadership(broker)  # type: ignore[arg-type]
    await leadership.take_over(TOPIC, 0, NEW_EPOCH)  # type: ignore[arg-type]
    assert [p.next_offset for p in broker.served] == [9]
    assert leadership.stats["uncommitted_segment_batches"] == 1


async def test_without_that_segment_the_gap_stays() -> None:
    broker = await flushed_twice_one_ref_kept()
    await put_segment(broker, [batch_at(3)], OLD_EPOCH - 1)  # an older leader's leftover, not this epoch's
    with pytest.raises(ReplayGap):
        await Leadership(broker).take_over(TOPIC, 0, NEW_EPOCH)  # type: ignore[arg-type]


async def test_a_missing_segment_after_the_last_wal_entry_is_replayed_too() -> None:
    store = MemoryObjectStore()
    await old_leaders_wal(store, [batch_at(0)])
    broker = await elected(store)
    await put_segment(broker, [batch_at(3), batch_at(6)], OLD_EPOCH)
    await Leadership(broker).take_over(TOPIC, 0, NEW_EPOCH)  # type: ignore[arg-type]
    assert [p.next_offset for p in broker.served] == [9]
