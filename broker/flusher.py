"""Moves durable data from the WAL into segment objects and lets the WAL trim behind it.

For each partition, once its unflushed bytes reach ``segment_bytes`` or its
oldest unflushed batch is older than its share of ``flush_interval_ms`` (a
fixed share between half and all of it, so that partitions do not all come
due in the same tick), the flusher writes
one segment object (batches + index + footer), then commits the partition
manifest with a conditional write, and only then marks the data flushed.  The
WAL is trimmed to the oldest batch that is still only in the WAL.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import zlib
from typing import TYPE_CHECKING

from broker.partition_log import PartitionLog, TailBatch
from broker.segment import SegmentFooter, build_segment
from metadata.store import ConflictError, SegmentRef
from objectstore.base import ObjectStoreError, TransientError

if TYPE_CHECKING:
    from broker.core import Broker

log = logging.getLogger("keel.flusher")
TICK_SECONDS = 0.1
RETRY_SECONDS = 1.0
STAGGER_FROM = 0.5  # the earliest share of flush_interval_ms at which a partition is flushed by age
S3_FLUSH_CONCURRENCY = 8  # partitions flushed at once on S3 unless flush_concurrency says otherwise


class Flusher:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self._wakeup = asyncio.Event()
        self._stopping = False
        self.stats = {"segments": 0, "bytes": 0, "errors": 0}

    def wake(self) -> None:
        self._wakeup.set()

    def stop(self) -> None:
        self._stopping = True
        self._wakeup.set()

    async def run(self) -> None:
        next_retention = time.monotonic()
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), TICK_SECONDS)
            self._wakeup.clear()
            await self._round(force=False)
            if time.monotonic() >= next_retention:
                next_retention = time.monotonic() + self.broker.settings.retention_check_interval_ms / 1000
                try:
                    await self.broker.enforce_retention(int(time.time() * 1000))
                except Exception:  # noqa: BLE001 - retried at the next interval
                    log.exception("applying retention failed")
        await self._round(force=True)

    async def _round(self, force: bool) -> None:
        try:
            await self.flush_due(force=force)
        except Exception as exc:  # noqa: BLE001 - keep flushing; the data stays safe in the WAL
            self.stats["errors"] += 1
            if isinstance(exc, TransientError):  # the store stayed unavailable through the retries: not a bug
                log.warning("flush failed: %s; the data stays in the WAL, retrying in %.1f s", exc, RETRY_SECONDS)
            else:
                log.exception("flush failed; retrying in %.1f s", RETRY_SECONDS)
            await asyncio.sleep(RETRY_SECONDS)

    async def flush_due(self, force: bool = False) -> None:
        broker = self.broker
        settings = broker.settings
        now = time.monotonic()
        pressure = broker.unflushed_bytes > settings.max_unflushed_bytes // 2
        due: list[tuple[PartitionLog, float]] = []
        for plog in list(broker.logs.values()):
            oldest = plog.oldest_unflushed_time()
            if oldest is None:
                continue
            max_age_ms = settings.flush_interval_ms * _age_share(plog)
            if not (force or pressure or plog.unflushed_bytes >= settings.segment_bytes
                    or (now - oldest) * 1000 >= max_age_ms):
                continue  # nothing due: skip listing the batches (this runs every tick)
            due.append((plog, max_age_ms))
        if due:
            # Partitions are flushed side by side: each flush is a segment PUT and a manifest CAS, and against
            # a store that answers in 20 ms, 64 partitions one after another took 3 s a round.
            slots = asyncio.Semaphore(max(1, settings.flush_concurrency or (
                S3_FLUSH_CONCURRENCY if settings.s3_endpoint else 1)))
            outcomes = await asyncio.gather(
                *(self._flush_due_batches(plog, max_age_ms, now, force or pressure, slots) for plog, max_age_ms in due),
                return_exceptions=True)
            failed = next((o for o in outcomes if isinstance(o, BaseException)), None)
            if failed is not None:
                raise failed
        await self._trim_wal()
        broker.flush_progress.set()

    async def _flush_due_batches(self, plog: PartitionLog, max_age_ms: float, now: float, urgent: bool,
                                 slots: asyncio.Semaphore) -> None:
        """Flushes one partition's due batches, oldest first, in segments of up to ``segment_bytes``."""
        segment_bytes = self.broker.settings.segment_bytes
        async with slots:
            batches = plog.unflushed_batches()
            while batches:
                size = sum(len(b.data) for b in batches)
                age_ms = (now - batches[0].appended_at) * 1000
                if not (urgent or size >= segment_bytes or age_ms >= max_age_ms):
                    return
                taken = _take(batches, segment_bytes)
                try:
                    await self.flush_partition(plog, taken)
                except ConflictError:
                    return  # fenced: the partition has a newer leader and was resigned; its data is in the WAL
                batches = batches[len(taken):]

    async def flush_partition(self, plog: PartitionLog, batches: list[TailBatch], *,
                              require_current: bool = True) -> None:
        """Writes ``batches`` as one segment object and commits it to the manifest.

        ``require_current=False`` is for a partition being taken over, not yet served."""
        async with plog.flush_lock:  # the flusher and a hand-over must not write the same range twice
            batches = [b for b in batches if b.last_offset >= plog.flushed_offset]
            if batches:
                await self._flush_partition(plog, batches, require_current)

    async def _flush_partition(self, plog: PartitionLog, batches: list[TailBatch], require_current: bool) -> None:
        broker = self.broker
        if require_current and broker.logs.get((plog.topic.name, plog.partition)) is not plog:
            return  # resigned or deleted meanwhile
        # Laying out a segment walks every batch and copies megabytes: off the event loop, so that produce
        # requests arriving meanwhile are not held up behind it.
        body, footer = await asyncio.to_thread(_segment_body, [b.data for b in batches])
        key = broker.meta.segment_key(plog.topic.topic_id, plog.partition, footer.base_offset,
                                      plog.manifest.leader_epoch)
        try:
            await broker.store.put(key, body)
        except ObjectStoreError:
            self.stats["errors"] += 1
            raise
        ref = SegmentRef(base_offset=footer.base_offset, last_offset=footer.last_offset, key=key,
                         size=len(body), max_timestamp=footer.max_timestamp,
                         first_timestamp=min(b.max_timestamp for b in batches))
        await broker.update_manifest(plog, lambda m: dataclasses.replace(
            m, segments=[*m.segments, ref], producers=plog.producers.snapshot(upto_offset=ref.last_offset)))
        flushed = sum(len(b.data) for b in batches)
        plog.mark_flushed(ref, flushed, _keep_bytes(broker))
        if broker.logs.get((plog.topic.name, plog.partition)) is plog:
            broker.unflushed_bytes -= flushed
        self.stats["segments"] += 1
        self.stats["bytes"] += len(body)
        log.debug("flushed %s-%d offsets %d..%d (%d bytes) to %s", plog.topic.name, plog.partition,
                  footer.base_offset, footer.last_offset, len(body), key)

    async def _trim_wal(self) -> None:
        broker = self.broker
        wal = broker.wal
        if wal is None:
            return  # between incarnations
        try:
            await broker.wal_floors.release_done(broker.meta)
        except ObjectStoreError as exc:
            log.warning("checking WAL pins failed (%s); keeping them", exc)
        if broker.wal is not wal:
            return  # a new incarnation started meanwhile; its WAL is trimmed by the next round
        # A batch without a WAL position (-1) holds the trim back instead of being left out of it.
        positions = [p for plog in broker.logs.values() if (p := plog.oldest_unflushed_wal_position()) is not None]
        floor = broker.wal_floors.floor()
        if floor is not None:
            positions.append(floor)  # entries a new leader may still have to replay
        await wal.trim(min(positions, default=wal.next_position))


def _age_share(plog: PartitionLog) -> float:
    """The part of ``flush_interval_ms`` after which this partition's data is flushed: a fixed value in
    [STAGGER_FROM, 1] per partition.  Partitions written together would otherwise all come due in the same
    tick, and that burst of segment writes held up every produce request behind it (docs/performance.md)."""
    spread = zlib.crc32(b"%s/%d" % (plog.topic.topic_id.encode(), plog.partition)) / 0xFFFF_FFFF
    return STAGGER_FROM + (1 - STAGGER_FROM) * spread


def _segment_body(batches: list[bytearray | bytes]) -> tuple[bytes, SegmentFooter]:
    parts, footer = build_segment(batches)
    return b"".join(parts), footer


def _take(batches: list[TailBatch], limit: int) -> list[TailBatch]:
    taken, size = [], 0
    for batch in batches:
        if taken and size + len(batch.data) > limit:
            break
        taken.append(batch)
        size += len(batch.data)
    return taken


def _keep_bytes(broker: Broker) -> int:
    """Each partition keeps an equal share of the tail cache for recently flushed data."""
    return broker.settings.tail_cache_bytes // max(1, len(broker.logs))
