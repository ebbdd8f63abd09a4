"""One partition's log as the broker sees it: offsets, the tail cache and the segment list.

Offsets are assigned synchronously when a batch is accepted, so concurrent
produce requests get dense, ordered offsets without locks.  A batch becomes
visible to consumers (the high watermark moves past it) only once its WAL
entry is durable, and strictly in offset order.  The tail holds every batch
not yet in a segment object plus some recently flushed ones; older data is
read from segments through the manifest.
"""

from __future__ import annotations

import asyncio
import bisect
from collections import deque
from dataclasses import dataclass, field

from broker.producer_state import ProducerStateTable
from metadata.store import Manifest, SegmentRef, TopicRecord


@dataclass(slots=True, eq=False)
class TailBatch:
    base_offset: int
    last_offset: int
    max_timestamp: int
    data: bytes | bytearray
    wal_position: int = -1
    durable: bool = False
    appended_at: float = 0.0


@dataclass(slots=True, eq=False)
class PartitionLog:
    topic: TopicRecord
    partition: int
    manifest: Manifest
    manifest_etag: str | None
    next_offset: int = 0
    high_watermark: int = 0
    flushed_offset: int = 0
    tail: list[TailBatch] = field(default_factory=list)
    pending: deque[TailBatch] = field(default_factory=deque)
    producers: ProducerStateTable = field(default_factory=ProducerStateTable)
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    unflushed_bytes: int = 0
    tail_bytes: int = 0
    manifest_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    flush_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    resigned: bool = False
    handing_over: bool = False

    @classmethod
    def from_manifest(cls, topic: TopicRecord, partition: int, manifest: Manifest, etag: str | None) -> PartitionLog:
        end = manifest.next_offset
        return cls(topic=topic, partition=partition, manifest=manifest, manifest_etag=etag,
                   next_offset=end, high_watermark=end, flushed_offset=end,
                   producers=ProducerStateTable.restore(manifest.producers))

    @property
    def log_start_offset(self) -> int:
        return self.manifest.log_start_offset

    @property
    def segments(self) -> list[SegmentRef]:
        return self.manifest.segments

    # Appending ----------------------------------------------------------------

    def add(self, batch: TailBatch) -> None:
        """Registers an accepted batch (offsets already assigned) in offset order."""
        self.next_offset = batch.last_offset + 1
        self.tail.append(batch)
        size = len(batch.data)
        self.tail_bytes += size
        self.unflushed_bytes += size
        if batch.durable:
            self.high_watermark = self.next_offset
        else:
            self.pending.append(batch)

    def mark_durable(self, batch: TailBatch, wal_position: int) -> None:
        batch.wal_position = wal_position
        batch.durable = True
        advanced = False
        pending = self.pending
        while pending and pending[0].durable:
            self.high_watermark = pending.popleft().last_offset + 1
            advanced = True
        if advanced:
            self.wake()

    def wake(self) -> None:
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # Reading --------------------------------------------------------------------

    def tail_start(self) -> int:
        return self.tail[0].base_offset if self.tail else self.next_offset

    def read_tail(self, offset: int, max_bytes: int) -> list[bytes | bytearray]:
        """Whole batches from the tail starting with the one holding ``offset``, below the high watermark."""
        tail = self.tail
        index = bisect.bisect_left(tail, offset, key=lambda b: b.last_offset)
        chunks: list[bytes | bytearray] = []
        total = 0
        hwm = self.high_watermark
        while index < len(tail):
            batch = tail[index]
            if batch.base_offset >= hwm:
                break
            size = len(batch.data)
            if chunks and total + size > max_bytes:
                break
            chunks.append(batch.data)
            total += size
            index += 1
        return chunks

    def unflushed_batches(self) -> list[TailBatch]:
        """Durable batches not yet in a segment, in offset order."""
        tail = self.tail
        index = bisect.bisect_left(tail, self.flushed_offset, key=lambda b: b.last_offset)
        out = []
        for batch in tail[index:]:
            if not batch.durable:
                break
            out.append(batch)
        return out

    def oldest_unflushed_wal_position(self) -> int | None:
        tail = self.tail
        index = bisect.bisect_left(tail, self.flushed_offset, key=lambda b: b.last_offset)
        if index < len(tail):
            return tail[index].wal_position
        return None

    def oldest_unflushed_time(self) -> float | None:
        tail = self.tail
        index = bisect.bisect_left(tail, self.flushed_offset, key=lambda b: b.last_offset)
        return tail[index].appended_at if index < len(tail) else None

    def mark_flushed(self, segment: SegmentRef, flushed_bytes: int, keep_tail_bytes: int) -> None:
        self.flushed_offset = segment.last_offset + 1
        self.unflushed_bytes -= flushed_bytes
        self.evict(keep_tail_bytes)

    def evict(self, keep_tail_bytes: int) -> None:
        """Drops flushed batches from the front of the tail while it holds more than ``keep_tail_bytes``."""
        drop = 0
        tail = self.tail
        while (drop < len(tail) and self.tail_bytes > keep_tail_bytes
               and tail[drop].last_offset < self.flushed_offset):
            self.tail_bytes -= len(tail[drop].data)
            drop += 1
        if drop:
            del tail[:drop]

    def epoch_end_offset(self, epoch: int) -> tuple[int, int]:
        """(largest known epoch <= ``epoch``, the offset where it ended) -- OffsetForLeaderEpoch."""
        history = self.manifest.epochs or [[self.manifest.leader_epoch, self.log_start_offset]]
        found = -1
        for i, (known, _start) in enumerate(history):
            if known <= epoch:
                found = i
        if found < 0:
            return -1, -1
        if found == len(history) - 1:
            return history[found][0], self.high_watermark
        return history[found][0], history[found + 1][1]

    def evict_below(self, offset: int) -> None:
        """Drops flushed tail batches that lie wholly below ``offset`` (the new log start)."""
        tail = self.tail
        drop = 0
        while drop < len(tail) and tail[drop].last_offset < min(offset, self.flushed_offset):
            self.tail_bytes -= len(tail[drop].data)
            drop += 1
        if drop:
            del tail[:drop]

    def segments_after(self, segment: SegmentRef, limit: int = 8) -> list[SegmentRef]:
        """Up to ``limit`` segments that follow ``segment`` in the manifest, in order."""
        segments = self.manifest.segments
        index = bisect.bisect_right(segments, segment.last_offset, key=lambda s: s.last_offset)
        return segments[index: index + limit]

    def segment_for(self, offset: int) -> SegmentRef | None:
        segments = self.manifest.segments
        index = bisect.bisect_left(segments, offset, key=lambda s: s.last_offset)
        if index < len(segments) and segments[index].base_offset <= max(offset, segments[index].base_offset):
            return segments[index]
        return None
