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
from metadata.store import Manifest, MetadataStore, TopicRecord
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
        self.membership = SimpleNamespace(incarnation=1, lease_valid=lambda: True)
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
