"""Taking over, handing over and giving up partition leadership, as the assignment says.

Every broker polls ``meta/assignments.json`` (and the registrations and
topics) and reconciles what it leads:

* assigned to me at an epoch I do not serve yet -> **take over**: read the
  manifest (the controller already wrote me in as leader, which fenced the
  old one), replay the unflushed entries of the WALs listed in
  ``replay_from`` for this partition and the epochs they were written in,
  write them as a segment, commit the manifest, and only then serve;
* led by me but assigned elsewhere -> **resign**: stop serving at once; new
  writes are answered NOT_LEADER_OR_FOLLOWER, writes already in the WAL
  REQUEST_TIMED_OUT ("possibly written": the client retries them unchanged and
  the next leader deduplicates), never acknowledged;
* led by me with ``moving_to`` set -> **hand over**: refuse new writes, wait
  for in-flight ones, flush everything, write the target into the manifest.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from broker import wal_entry
from broker.controller import registration_wal
from broker.partition_log import PartitionLog, TailBatch
from broker.segment import CorruptSegmentError, open_segment
from metadata.cluster import Assignments
from metadata.store import ConflictError, Manifest, TopicRecord
from objectstore.base import NotFound
from protocol import records
from wal.base import WalEntry
from wal.reader import read_wal

if TYPE_CHECKING:
    from broker.core import Broker

log = logging.getLogger("keel.leadership")
# Takeovers of one dead incarnation's partitions start together and share one read of its WAL.  A read
# is only valid once that incarnation can no longer acknowledge (the controller elects only then), so
# it is never reused beyond this window.  This broker's own current WAL is never shared: when the
# controller moves a partition's epoch on with the same incarnation as leader, the old epoch kept
# acknowledging until it resigned, so a read taken earlier (for another partition) misses entries.
WAL_CACHE_SECONDS = 1.0
MAX_PARALLEL_TAKEOVERS = 16
# A replay whose entries skip offsets read an incomplete WAL (a chaos run saw one WAL piece missing from
# a read while later pieces were there): the takeover is retried on a fresh read for this long before the
# partition is served without the missing entries, which can only be right for entries never acknowledged
# (a writer that died with an earlier PUT still in flight).
REPLAY_GAP_PATIENCE_SECONDS = 10.0
# A hand-over waits for the partition's writes still on their way to the WAL; if none lands for this long
# (a slow store), it leaves the partition serving and the next round asks again.
HAND_OVER_PATIENCE_SECONDS = 1.0


class ReplayGap(Exception):
    """The WAL entries of a partition skip offsets: the read missed part of the log."""


class Leadership:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self._busy: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._wal_cache: dict[str, tuple[float, asyncio.Future[list[WalEntry]]]] = {}
        self._gaps_since: dict[tuple[str, int, int], float] = {}  # (topic id, partition, epoch) -> first seen
        self._slots = asyncio.Semaphore(MAX_PARALLEL_TAKEOVERS)
        self.stats = {"takeovers": 0, "handovers": 0, "resignations": 0, "replayed_batches": 0,
                      "replayed_bytes": 0, "wal_bytes_read": 0, "segment_bytes_copied": 0,
                      "uncommitted_segment_batches": 0}

    @property
    def busy(self) -> bool:
        return bool(self._busy)

    def reconcile(self, assignments: Assignments) -> None:
        broker = self.broker
        me, incarnation = broker.settings.broker_id, broker.membership.incarnation
        by_id = {t.topic_id: t for t in broker.topics.values()}
        for key, a in assignments.partitions.items():
            topic_id, _, p = key.rpartition("/")
            topic = by_id.get(topic_id)
            if topic is None:
                continue
            partition = int(p)
            plog = broker.logs.get((topic.name, partition))
            mine = a.leader == me and a.incarnation == incarnation
            if plog is not None and (not mine or plog.manifest.leader_epoch != a.epoch):
                if not plog.handing_over:
                    self.resign(plog, "assigned elsewhere" if not mine else "epoch moved on")
                plog = None if not mine else plog
            if mine and plog is None and key not in self._busy and broker.membership.lease_valid():
                self._spawn(key, self.take_over(topic, partition, a.epoch))
            elif mine and plog is not None and a.moving_to >= 0 and not plog.handing_over and key not in self._busy:
                self._spawn(key, self.hand_over(plog, a.moving_to))
        for (name, partition), plog in list(broker.logs.items()):
            key = Assignments.key(plog.topic.topic_id, partition)
            if key not in assignments.partitions or name not in broker.topics:
                self.resign(plog, "no longer assigned")

    def _spawn(self, key: str, work: Any) -> None:
        self._busy.add(key)

        async def run() -> None:
            try:
                async with self._slots:
                    await work
            except ReplayGap as gap:
                log.warning("taking over %s deferred: %s; retrying on a fresh read", key, gap)
            except ConflictError:  # another broker's or epoch's manifest write won: fenced, not broken
                log.warning("leadership change for %s lost a race for the manifest; the next round starts from "
                            "the stored state", key)
            except Exception:  # noqa: BLE001 - the next reconcile retries
                log.exception("leadership change for %s failed", key)
            finally:
                self._busy.discard(key)

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # Taking over --------------------------------------------------------------

    async def take_over(self, topic: TopicRecord, partition: int, epoch: int) -> None:
        broker = self.broker
        manifest, etag = await broker.meta.load_manifest(topic.topic_id, partition)
        if (manifest.leader != broker.settings.broker_id or manifest.leader_incarnation != broker.membership.incarnation
                or manifest.leader_epoch != epoch):
            return  # the assignment is ahead of or behind the manifest; the next round sees it settled
        started = time.monotonic()
        plog = PartitionLog.from_manifest(topic, partition, manifest, etag)
        replayed = 0
        gap: tuple[int, int] | None = None  # (offset found, offset expected)
        source_epochs = sorted({epoch for _location, epoch in manifest.replay_from})
        tried: set[int] = set()  # offsets already looked up as uncommitted segments
        for location, source_epoch in manifest.replay_from:
            for entry in await self._read_wal(location):
                header, batch_view = wal_entry.decode(entry.payload)
                if (header.topic_id != topic.topic_id_bytes or header.partition != partition
                        or header.leader_epoch != source_epoch):
                    continue
                batch = bytes(batch_view)
                batch_header = records.read_header(batch)
                if gap is None and batch_header.base_offset > plog.next_offset:
                    replayed += await self._replay_uncommitted_segments(topic, plog, source_epochs, tried)
                    if batch_header.base_offset > plog.next_offset:
                        gap = (batch_header.base_offset, plog.next_offset)
                if gap is None and _add_replayed(plog, batch, batch_header):
                    replayed += 1
                    self.stats["replayed_bytes"] += len(batch)
        if gap is None:  # the last entries may have been flushed, and trimmed, without their ref
            replayed += await self._replay_uncommitted_segments(topic, plog, source_epochs, tried)
        gap_key = (topic.topic_id, partition, epoch)
        if gap is not None:
            since = self._gaps_since.setdefault(gap_key, started)
            if time.monotonic() - since < REPLAY_GAP_PATIENCE_SECONDS:
                for location, _epoch in manifest.replay_from:
                    self._wal_cache.pop(json.dumps(location, sort_keys=True), None)
                raise ReplayGap(f"WAL replay found offset {gap[0]} where {gap[1]} was expected")
            log.critical("%s-%d: WAL replay still finds offset %d where %d was expected after %.0f s; serving "
                         "without the entries from %d on (lost if they were acknowledged)", topic.name, partition,
                         gap[0], gap[1], time.monotonic() - since, gap[0])
        self._gaps_since.pop(gap_key, None)
        self.stats["replayed_batches"] += replayed
        batches = plog.unflushed_batches()
        if batches:
            await broker.flusher.flush_partition(plog, batches, require_current=False)
        start_offset = plog.next_offset
        await broker.update_manifest(plog, lambda m: dataclasses.replace(
            m, replay_from=[], epochs=[*m.epochs, [epoch, start_offset]]))
        if not broker.membership.lease_valid() or broker.stopping:
            return
        broker.serve_partition(plog)
        self.stats["takeovers"] += 1
        log.info("%s-%d: serving as leader at epoch %d from offset %d (%d batches replayed in %.0f ms)",
                 topic.name, partition, epoch, plog.next_offset, replayed, (time.monotonic() - started) * 1000)

    async def _replay_uncommitted_segments(self, topic: TopicRecord, plog: PartitionLog, epochs: list[int],
                                           tried: set[int]) -> int:
        """Replays segment objects that a former leader wrote at the log's end but that the manifest lacks.

        A leader trims its WAL once a segment's manifest commit succeeds. If that committed ref is
        later missing from the manifest (seen once under S3 faults; how it was lost is not known),
        the entries are in neither place a takeover reads, except the segment object itself, whose
        key is fixed by its base offset and epoch. Its batches are replayed like WAL entries;
        returns how many were added."""
        broker = self.broker
        added = 0
        while plog.next_offset not in tried:
            offset = plog.next_offset
            tried.add(offset)
            for epoch in epochs:
                key = broker.meta.segment_key(topic.topic_id, plog.partition, offset, epoch)
                try:
                    _footer, _index, body = open_segment(await broker.store.get(key))
                    batches = [(bytes(body[pos:pos + header.size]), header)
                               for pos, header in records.iter_batch_headers(body)]
                except NotFound:
                    continue
                except (CorruptSegmentError, records.InvalidRecordError) as exc:
                    log.error("%s-%d: uncommitted segment %s is corrupt (%s); not replayed", topic.name,
                              plog.partition, key, exc)
                    continue
                count = sum(_add_replayed(plog, batch, header) for batch, header in batches)
                log.warning("%s-%d: offsets %d..%d were in a segment the manifest did not list (%s); replayed "
                            "%d batches from it", topic.name, plog.partition, offset, plog.next_offset - 1, key, count)
                self.stats["uncommitted_segment_batches"] += count
                added += count
                break
        return added

    async def _read_wal(self, location: dict[str, Any]) -> list[WalEntry]:
        registration = self.broker.membership.registration
        if registration is not None and location == registration_wal(registration):
            entries = await read_wal(location, self.broker.store)  # still written to: read it afresh
            self.stats["wal_bytes_read"] += sum(len(e.payload) for e in entries)
            return entries
        key = json.dumps(location, sort_keys=True)
        now = time.monotonic()
        cached = self._wal_cache.get(key)
        if cached is None or now - cached[0] > WAL_CACHE_SECONDS:
            future: asyncio.Future[list[WalEntry]] = asyncio.ensure_future(read_wal(location, self.broker.store))
            self._wal_cache[key] = (now, future)
            for stale in [k for k, (t, _f) in self._wal_cache.items() if now - t > WAL_CACHE_SECONDS]:
                del self._wal_cache[stale]
            entries = await future
            self.stats["wal_bytes_read"] += sum(len(e.payload) for e in entries)
            return entries
        return await cached[1]

    # Giving up ---------------------------------------------------------------------

    def resign(self, plog: PartitionLog, reason: str) -> None:
        broker = self.broker
        key = (plog.topic.name, plog.partition)
        if broker.logs.get(key) is plog:
            del broker.logs[key]
        if not plog.resigned:
            position = plog.oldest_unflushed_wal_position()
            if position is not None and position >= 0:
                # Unflushed data stays in this WAL for the next leader to replay: never trim it.
                broker.wal_floors.pin(plog.manifest, position)
            plog.resigned = True
            broker.unflushed_bytes -= plog.unflushed_bytes
            plog.wake()
            self.stats["resignations"] += 1
            log.info("%s-%d: no longer leader (%s)", plog.topic.name, plog.partition, reason)

    def resign_all(self, reason: str) -> None:
        for plog in list(self.broker.logs.values()):
            self.resign(plog, reason)

    async def hand_over(self, plog: PartitionLog, target_id: int) -> None:
        broker = self.broker
        target = broker.cluster_brokers.get(target_id)
        if target is None:
            return
        plog.handing_over = True
        try:
            while plog.pending and not plog.resigned:
                if not broker.membership.lease_valid():
                    # The lapse resigns everything; a batch that lands now stays pending until then.
                    log.info("%s-%d: hand-over to broker %d dropped: the lease lapsed", plog.topic.name,
                             plog.partition, target_id)
                    plog.handing_over = False
                    return
                waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                plog.waiters.append(waiter)
                try:
                    await asyncio.wait_for(waiter, HAND_OVER_PATIENCE_SECONDS)
                except TimeoutError:
                    if broker.membership.lease_valid():
                        log.warning("%s-%d: hand-over to broker %d postponed: %d writes on their way to the WAL, "
                                    "none landed for %.1f s; the partition keeps serving", plog.topic.name,
                                    plog.partition, target_id, len(plog.pending), HAND_OVER_PATIENCE_SECONDS)
                        plog.handing_over = False
                        return
            if plog.resigned:
                return
            batches = plog.unflushed_batches()
            if batches:
                await broker.flusher.flush_partition(plog, batches)

            def change(m: Manifest) -> Manifest:
                return dataclasses.replace(m, leader=target.broker_id, leader_incarnation=target.incarnation,
                                           leader_epoch=m.leader_epoch + 1, leader_wal=registration_wal(target),
                                           replay_from=[])

            with contextlib.suppress(ConflictError):
                await broker.update_manifest(plog, change)
            self.stats["handovers"] += 1
            self.resign(plog, f"handed over to broker {target_id}")
        except BaseException:
            plog.handing_over = False
            raise

    async def wait_idle(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def _add_replayed(plog: PartitionLog, batch: bytes, header: records.BatchHeader) -> bool:
    """Adds a replayed batch that follows the log (not one already in a segment; never past a gap)."""
    if header.last_offset < plog.next_offset or header.base_offset > plog.next_offset:
        return False
    plog.add(TailBatch(header.base_offset, header.last_offset, header.max_timestamp, batch,
                       durable=True, appended_at=time.monotonic()))
    plog.producers.record(header.producer_id, header.producer_epoch, header.base_sequence,
                          header.last_sequence, header.base_offset, header.last_offset)
    return True
