"""The broker's state and its storage-facing operations, independent of the network.

``Broker`` owns the object store, the metadata store, the WAL and the
partition logs.  Handlers (one module per API family) call into it; it knows
nothing of request encodings.  Start-up rebuilds every partition from its
manifest plus the WAL entries not yet flushed, so a ``kill -9`` loses nothing
that was acknowledged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from broker.config import Settings
from broker.group_coordinator import GroupCoordinator
from broker.partition_log import PartitionLog, TailBatch
from broker.retention import retention_start
from broker.segment_reader import SegmentReader
from broker.storage import build_object_store, build_wal
from broker.topic_configs import TopicConfig
from metadata.store import (
    GroupOffsetsStore,
    Manifest,
    MetadataStore,
    SegmentRef,
    TopicExistsError,
    TopicRecord,
)
from objectstore.base import ObjectStore, ObjectStoreError, TransientError
from protocol import records
from protocol.errors import ErrorCode
from wal.base import WalError, WriteAheadLog

log = logging.getLogger("keel.broker")

_WAL_HEADER = struct.Struct(">B16si")  # entry version, topic id, partition
WAL_ENTRY_VERSION = 1
_TOPIC_NAME = re.compile(r"^[a-zA-Z0-9._-]{1,249}$")
PRODUCER_ID_BLOCK = 1000


def valid_topic_name(name: str | None) -> bool:
    return bool(name) and name not in (".", "..") and _TOPIC_NAME.match(name or "") is not None


@dataclass(slots=True)
class AppendResult:
    error: ErrorCode
    base_offset: int = -1
    log_append_time: int = -1
    log_start_offset: int = -1
    message: str | None = None


class Broker:
    def __init__(self, settings: Settings, store: ObjectStore | None = None,
                 wal: WriteAheadLog | None = None) -> None:
        self.settings = settings
        self.store = store or build_object_store(settings)
        self.wal = wal or build_wal(settings, self.store)
        self.meta = MetadataStore(self.store)
        self.segments = SegmentReader(self.store, cache_bytes=settings.block_cache_bytes,
                                      read_ahead=settings.read_ahead_blocks)
        self.groups = GroupCoordinator(GroupOffsetsStore(self.meta))
        self.cluster_id = ""
        self.topics: dict[str, TopicRecord] = {}
        self.topic_configs: dict[str, TopicConfig] = {}
        self.topic_names_by_id: dict[bytes, str] = {}
        self.logs: dict[tuple[str, int], PartitionLog] = {}
        self.unflushed_bytes = 0
        self.flush_progress = asyncio.Event()
        self.failed: BaseException | None = None
        self._creating: dict[str, asyncio.Future[TopicRecord]] = {}
        self._pid_next = 0
        self._pid_end = 0
        self._pid_lock = asyncio.Lock()
        self._flusher: asyncio.Task[None] | None = None
        self.stopping = False

    # Start-up and shutdown -------------------------------------------------

    async def start(self) -> None:
        delay = 0.5
        while True:
            try:
                self.cluster_id = await self.meta.ensure_cluster()
                break
            except TransientError as exc:
                log.warning("object store unreachable (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        for record in (await self.meta.load_topics()).values():
            await self._load_topic(record)
        await self.groups.start()
        entries = await self.wal.open()
        replayed = self._replay(entries)
        log.info("broker %d: cluster %s, %d topics, %d partitions, %d WAL entries replayed",
                 self.settings.broker_id, self.cluster_id, len(self.topics), len(self.logs), replayed)
        from broker.flusher import Flusher  # noqa: PLC0415 (flusher imports this module)

        self.flusher = Flusher(self)
        self._flusher = asyncio.create_task(self.flusher.run(), name="keel-flusher")

    async def _load_topic(self, record: TopicRecord) -> None:
        self.topics[record.name] = record
        self.topic_configs[record.name] = TopicConfig.from_configs(record.configs, self.settings)
        self.topic_names_by_id[record.topic_id_bytes] = record.name
        for p in range(record.partitions):
            manifest, etag = await self.meta.load_manifest(record.topic_id, p)
            self.logs[(record.name, p)] = PartitionLog.from_manifest(record, p, manifest, etag)

    def _replay(self, entries: Iterable[object]) -> int:
        replayed = 0
        now = time.monotonic()
        for entry in entries:
            payload = memoryview(entry.payload)  # type: ignore[attr-defined]
            version, topic_id, partition = _WAL_HEADER.unpack_from(payload, 0)
            if version != WAL_ENTRY_VERSION:
                raise RuntimeError(f"unknown WAL entry version {version}")
            name = self.topic_names_by_id.get(topic_id)
            plog = self.logs.get((name, partition)) if name else None
            if plog is None:
                continue  # topic deleted since
            batch = bytes(payload[_WAL_HEADER.size:])
            header = records.read_header(batch)
            if header.last_offset < plog.next_offset:
                continue  # already in a segment
            if not header.base_offset <= plog.next_offset <= header.last_offset + 1:
                log.error("WAL gap in %s-%d: expected offset %d, found %d", name, partition,
                          plog.next_offset, header.base_offset)
            plog.add(TailBatch(header.base_offset, header.last_offset, header.max_timestamp, batch,
                               wal_position=entry.position, durable=True, appended_at=now))  # type: ignore[attr-defined]
            plog.producers.record(header.producer_id, header.producer_epoch, header.base_sequence,
                                  header.last_sequence, header.base_offset, header.last_offset)
            self.unflushed_bytes += len(batch)
            replayed += 1
        return replayed

    async def stop(self) -> None:
        self.stopping = True
        await self.groups.stop()
        if self._flusher is not None:
            self.flusher.stop()
            try:
                await asyncio.wait_for(self._flusher, timeout=30)
            except (TimeoutError, asyncio.CancelledError):
                log.warning("flusher did not finish in time; the WAL keeps the unflushed data")
        await self.wal.close()
        await self.store.close()

    # Topics -----------------------------------------------------------------

    async def create_topic(self, name: str, partitions: int, configs: dict[str, str]) -> TopicRecord:
        if name in self.topics:
            raise TopicExistsError(name)
        pending = self._creating.get(name)
        if pending is not None:
            raise TopicExistsError(name)
        future: asyncio.Future[TopicRecord] = asyncio.get_running_loop().create_future()
        self._creating[name] = future
        try:
            record = await self.meta.create_topic(name, partitions, configs)
            await self._load_topic(record)
            future.set_result(record)
            log.info("created topic %s (%d partitions, id %s)", name, partitions, record.topic_id)
            return record
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: nobody else may be waiting
            raise
        finally:
            self._creating.pop(name, None)

    async def ensure_topic(self, name: str) -> TopicRecord | None:
        """The topic, auto-created with the default partition count if allowed."""
        record = self.topics.get(name)
        if record is not None:
            return record
        pending = self._creating.get(name)
        if pending is not None:
            try:
                return await asyncio.shield(pending)
            except Exception:
                return self.topics.get(name)
        if not self.settings.auto_create_topics or not valid_topic_name(name):
            return None
        try:
            return await self.create_topic(name, self.settings.default_partitions, {})
        except TopicExistsError:
            return self.topics.get(name)

    async def delete_topic(self, name: str) -> None:
        record = self.topics.pop(name)
        self.topic_configs.pop(name, None)
        self.topic_names_by_id.pop(record.topic_id_bytes, None)
        for p in range(record.partitions):
            plog = self.logs.pop((name, p), None)
            if plog is not None:
                self.unflushed_bytes -= plog.unflushed_bytes
                plog.wake()
        await self.meta.delete_topic(record)
        log.info("deleted topic %s", name)

    async def add_partitions(self, name: str, new_count: int) -> None:
        """Serves partitions up to ``new_count`` of a topic whose stored record already says so."""
        record = self.topics[name]
        for p in range(record.partitions, new_count):
            manifest, etag = await self.meta.load_manifest(record.topic_id, p)
            if self.topics.get(name) is not record:
                return  # deleted meanwhile
            self.logs.setdefault((name, p), PartitionLog.from_manifest(record, p, manifest, etag))
        # Updated in place so every PartitionLog's ``topic`` stays this very record.
        record.partitions = max(record.partitions, new_count)
        log.info("topic %s now has %d partitions", name, record.partitions)

    def partition(self, topic: str, partition: int) -> PartitionLog | None:
        return self.logs.get((topic, partition))

    # Produce ------------------------------------------------------------------

    async def wait_for_flush_room(self) -> None:
        """Backpressure: produce waits while too much data is only in the WAL."""
        while self.unflushed_bytes > self.settings.max_unflushed_bytes and not self.stopping:
            self.flush_progress.clear()
            self.flusher.wake()
            await self.flush_progress.wait()

    def append(self, plog: PartitionLog, data: bytes | bytearray | memoryview | None,
               ) -> AppendResult | asyncio.Future[AppendResult]:
        """Validates and sequences one partition's batch synchronously; the returned future completes
        once the batch is durable.  An immediate ``AppendResult`` is an error (or a duplicate whose
        original is already durable)."""
        if self.failed is not None:
            return AppendResult(ErrorCode.KAFKA_STORAGE_ERROR, message="write-ahead log failed")
        if data is None or len(data) == 0:
            return AppendResult(ErrorCode.INVALID_RECORD, message="no records")
        config = self.topic_configs[plog.topic.name]
        if len(data) > config.max_message_bytes:
            return AppendResult(ErrorCode.MESSAGE_TOO_LARGE,
                                message=f"batch of {len(data)} bytes exceeds max.message.bytes={config.max_message_bytes}")
        try:
            header = records.validate_single_batch(data)
        except records.InvalidRecordError as exc:
            log.warning("rejected batch for %s-%d: %s", plog.topic.name, plog.partition, exc)
            return AppendResult(ErrorCode(exc.error_code), message=str(exc))
        if header.is_transactional or header.is_control:
            return AppendResult(ErrorCode.INVALID_RECORD, message="transactions are not supported")
        check = plog.producers.check(header.producer_id, header.producer_epoch, header.base_sequence,
                                     header.last_sequence)
        if check.duplicate_of is not None:
            return self._duplicate(plog, check.duplicate_of)
        if check.error:
            return AppendResult(check.error, message=check.error.name)

        batch = bytearray(data)
        base_offset = plog.next_offset
        last_offset = base_offset + header.last_offset_delta
        append_time = int(time.time() * 1000) if config.log_append_time else None
        records.assign_offsets(batch, base_offset, log_append_time_ms=append_time,
                               partition_leader_epoch=plog.manifest.leader_epoch)
        max_ts = append_time if append_time is not None else header.max_timestamp
        tail_batch = TailBatch(base_offset, last_offset, max_ts, batch, appended_at=time.monotonic())
        plog.producers.record(header.producer_id, header.producer_epoch, header.base_sequence,
                              header.last_sequence, base_offset, last_offset)
        plog.add(tail_batch)
        self.unflushed_bytes += len(batch)
        wal_header = _WAL_HEADER.pack(WAL_ENTRY_VERSION, plog.topic.topic_id_bytes, plog.partition)
        result = AppendResult(ErrorCode.NONE, base_offset, append_time if append_time is not None else -1,
                              plog.log_start_offset)
        done: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        durable = self.wal.submit([wal_header, batch])
        durable.add_done_callback(lambda f: self._on_durable(f, plog, tail_batch, result, done))
        return done

    def _on_durable(self, future: asyncio.Future[int], plog: PartitionLog, batch: TailBatch,
                    result: AppendResult, done: asyncio.Future[AppendResult]) -> None:
        exc = future.exception() if not future.cancelled() else asyncio.CancelledError()
        if exc is not None:
            self._fail(exc)
            if not done.done():
                done.set_result(AppendResult(ErrorCode.KAFKA_STORAGE_ERROR, message=str(exc)))
            return
        plog.mark_durable(batch, future.result())
        if not done.done():
            done.set_result(result)

    def _duplicate(self, plog: PartitionLog, original: tuple[int, int]) -> AppendResult | asyncio.Future[AppendResult]:
        base, last = original
        result = AppendResult(ErrorCode.NONE, base, -1, plog.log_start_offset)
        if plog.high_watermark > last:
            return result
        done: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()

        async def wait() -> None:
            while plog.high_watermark <= last and self.failed is None:
                waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                plog.waiters.append(waiter)
                await waiter
            done.set_result(result if self.failed is None else
                            AppendResult(ErrorCode.KAFKA_STORAGE_ERROR, message="write-ahead log failed"))

        task = asyncio.ensure_future(wait())
        task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)
        return done

    def _fail(self, exc: BaseException) -> None:
        """The WAL can no longer make writes durable: stop acknowledging anything."""
        if self.failed is None:
            self.failed = exc
            log.critical("write-ahead log failed, refusing all produce requests: %s", exc)
            if isinstance(exc, WalError):
                for plog in self.logs.values():
                    plog.wake()

    # Manifests, retention, DeleteRecords ------------------------------------------

    async def update_manifest(self, plog: PartitionLog, change: Callable[[Manifest], Manifest]) -> Manifest:
        """Applies ``change`` to the partition's current manifest and commits it (conditional write).

        One update at a time per partition, so the flusher and log-start moves never overwrite
        each other."""
        async with plog.manifest_lock:
            updated = change(plog.manifest)
            etag = await self.meta.commit_manifest(updated, plog.manifest_etag)
            plog.manifest, plog.manifest_etag = updated, etag
            return updated

    async def advance_log_start(self, plog: PartitionLog, offset: int) -> int:
        """Moves the log start offset forward to ``offset`` and deletes the segment objects wholly below it."""
        doomed: list[SegmentRef] = []

        def change(manifest: Manifest) -> Manifest:
            start = max(manifest.log_start_offset, offset)
            doomed[:] = [s for s in manifest.segments if s.last_offset < start]
            kept = [s for s in manifest.segments if s.last_offset >= start]
            return dataclasses.replace(manifest, log_start_offset=start, segments=kept)

        updated = await self.update_manifest(plog, change)
        if doomed:
            for segment in doomed:
                self.segments.forget(segment.key)
            try:
                await self.store.delete_many([s.key for s in doomed])
            except ObjectStoreError as exc:  # the manifest no longer names them; a later sweep can remove them
                log.warning("could not delete %d segment objects of %s-%d: %s", len(doomed), plog.topic.name,
                            plog.partition, exc)
        plog.evict_below(updated.log_start_offset)
        log.info("%s-%d: log start offset now %d (%d segment objects deleted)", plog.topic.name, plog.partition,
                 updated.log_start_offset, len(doomed))
        return updated.log_start_offset

    async def enforce_retention(self, now_ms: int) -> None:
        for (name, _p), plog in list(self.logs.items()):
            config = self.topic_configs.get(name)
            if config is None:
                continue
            start = retention_start(plog.manifest.segments, plog.log_start_offset, config, now_ms)
            if start > plog.log_start_offset:
                await self.advance_log_start(plog, start)

    # Producer ids ---------------------------------------------------------------

    async def next_producer_id(self) -> int:
        async with self._pid_lock:
            if self._pid_next >= self._pid_end:
                start = await self.meta.allocate_producer_ids(PRODUCER_ID_BLOCK)
                self._pid_next, self._pid_end = start, start + PRODUCER_ID_BLOCK
            pid = self._pid_next
            self._pid_next += 1
            return pid

    # Reads ----------------------------------------------------------------------

    async def read(self, plog: PartitionLog, offset: int, max_bytes: int) -> list[bytes | bytearray | memoryview]:
        """Whole batches from ``offset`` (which must be in [log start, high watermark))."""
        if offset >= plog.tail_start():
            return list(plog.read_tail(offset, max_bytes))
        segment = plog.segment_for(offset)
        if segment is None:
            return list(plog.read_tail(offset, max_bytes))
        return await self.segments.read(segment, offset, max_bytes)

    async def offset_for_timestamp(self, plog: PartitionLog, timestamp: int) -> tuple[int, int]:
        """(offset, timestamp) of the first record with timestamp >= ``timestamp``; (-1, -1) if none."""
        for segment in plog.segments:
            if segment.last_offset < plog.log_start_offset or segment.max_timestamp < timestamp:
                continue
            for batch in await self.segments.batches_from_timestamp(segment, timestamp):
                found = _first_record_at_or_after(batch, timestamp, plog.log_start_offset)
                if found is not None:
                    return found
        for tail_batch in list(plog.tail):
            if tail_batch.base_offset >= plog.high_watermark:
                break
            if tail_batch.last_offset < plog.flushed_offset and plog.segments:
                continue
            if tail_batch.max_timestamp >= timestamp:
                found = _first_record_at_or_after(tail_batch.data, timestamp, plog.log_start_offset)
                if found is not None:
                    return found
        return -1, -1

    async def max_timestamp_offset(self, plog: PartitionLog) -> tuple[int, int]:
        """(offset, timestamp) of the record with the largest timestamp (ListOffsets -3)."""
        best = (-1, -1)
        for segment in plog.segments:
            if segment.max_timestamp > best[1]:
                best = (segment.base_offset, segment.max_timestamp)
        for tail_batch in plog.tail:
            if tail_batch.base_offset < plog.high_watermark and tail_batch.max_timestamp > best[1]:
                best = (tail_batch.base_offset, tail_batch.max_timestamp)
        if best[0] < 0:
            return best
        found = await self.offset_for_timestamp(plog, best[1])
        return found if found[0] >= 0 else best


def _first_record_at_or_after(batch: bytes | bytearray | memoryview, timestamp: int,
                              log_start: int) -> tuple[int, int] | None:
    header = records.read_header(batch)
    if header.timestamp_type == records.LOG_APPEND_TIME:
        if header.max_timestamp >= timestamp and header.last_offset >= log_start:
            return max(header.base_offset, log_start), header.max_timestamp
        return None
    for record in records.decode_records(batch):
        if record.timestamp >= timestamp and record.offset >= log_start:
            return record.offset, record.timestamp
    return None
