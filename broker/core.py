"""The broker's state and its storage-facing operations, independent of the network.

``Broker`` owns the object store, the metadata store, the WAL and the
partition logs.  Handlers (one module per API family) call into it; it knows
nothing of request encodings.  Start-up rebuilds every partition from its
manifest plus the WAL entries not yet flushed, so a ``kill -9`` loses nothing
that was acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from broker import wal_entry
from broker.config import Settings
from broker.controller import Controller
from broker.group_coordinator import GroupCoordinator
from broker.leadership import Leadership
from broker.membership import Membership, wall_ms
from broker.partition_log import PartitionLog, TailBatch
from broker.peer_watch import PeerWatch
from broker.registration_reads import due_for_reading, responsive_cutoff_ms
from broker.retention import retention_start
from broker.segment_reader import SegmentReader
from broker.storage import build_object_store, build_wal, remove_old_wals, wal_base
from broker.topic_configs import TopicConfig
from broker.wal_floors import WalFloors
from metadata.cluster import Assignments, BrokerRegistration, ClusterStore
from metadata.store import (
    ConflictError,
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
from wal.reader import wal_location

log = logging.getLogger("keel.broker")

LIST_EVERY_ROUNDS = 10  # topics and broker registrations are listed every 10th cluster round
LEADER_WAIT_POLL_SECONDS = 0.01
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
        self.wal: WriteAheadLog | None = wal  # built once the incarnation is known, unless given
        self.meta = MetadataStore(self.store)
        self.cluster = ClusterStore(self.meta)
        self.membership = Membership(self.cluster, settings, wal_base(settings))
        self.controller = Controller(self)
        self.leadership = Leadership(self)
        self.cluster_brokers: dict[int, BrokerRegistration] = {}
        self.assignments = Assignments()
        self.leaving = False
        self.wal_floors = WalFloors()
        self.peer_watch = PeerWatch(settings.broker_id)
        self._topics_dirty = False
        self._cluster_task: asyncio.Task[None] | None = None
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
        self.long_polls_ended = False  # the server is shutting down: a Fetch answers with what it has

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
        incarnation = await self.membership.register()
        if self.wal is None:
            self.wal = build_wal(self.settings, self.store, incarnation)
        await self.wal.open()
        await self.refresh_topics()
        await self.groups.start()
        self.membership.start()
        from broker.flusher import Flusher  # noqa: PLC0415 (flusher imports this module)

        self.flusher = Flusher(self)
        self._flusher = asyncio.create_task(self.flusher.run(), name="keel-flusher")
        self._cluster_task = asyncio.create_task(self._cluster_loop(), name="keel-cluster")
        self.controller.start()
        log.info("broker %d (incarnation %d): cluster %s, %d topics", self.settings.broker_id, incarnation,
                 self.cluster_id, len(self.topics))

    async def _cluster_loop(self) -> None:
        """Registrations, topics, the controller's decisions, and this broker's share of them."""
        interval = self.settings.controller_interval_ms / 1000
        rounds = 0
        next_sweep = time.monotonic() + self.settings.wal_sweep_interval_ms / 1000
        sweep: asyncio.Task[None] | None = None
        while not self.stopping:
            try:
                listing = rounds % LIST_EVERY_ROUNDS == 0
                await self._read_registrations(listing)
                if listing or self._topics_dirty:
                    self._topics_dirty = False
                    await self.refresh_topics()
                if self.membership.fenced:
                    self._fail(RuntimeError("another process registered as this broker"))
                    return
                if not self.membership.lease_valid():
                    await self._reincarnate()
                await self.controller.tick()
                if self.controller.active and self.controller.assignments is not None:
                    assignments = self.controller.assignments
                else:
                    assignments, _etag = await self.cluster.read_assignments()
                self.on_assignments(assignments)
                self.groups.forget_unowned(self.coordinates)
            except TransientError as exc:  # the store stayed unavailable through the retries: expected, not a bug
                log.warning("cluster round failed: %s; the next round starts over", exc)
            except Exception:  # noqa: BLE001 - the next round starts over from stored state
                log.exception("cluster round failed")
            if time.monotonic() >= next_sweep and (sweep is None or sweep.done()):
                # In the background: it reads every manifest, which must not hold up lease checks and the
                # controller when the store is slow.
                next_sweep = time.monotonic() + self.settings.wal_sweep_interval_ms / 1000
                sweep = asyncio.create_task(self._sweep_old_wals_logged(), name="keel-wal-sweep")
            rounds += 1
            self.controller.wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.controller.wakeup.wait(), interval)

    async def _read_registrations(self, listing: bool) -> None:
        """Refreshes ``cluster_brokers``: the registrations that are due (``registration_reads``), and,
        every ``LIST_EVERY_ROUNDS`` rounds, a listing that finds brokers that registered or left since."""
        me = self.settings.broker_id
        copies = self.cluster_brokers
        listed = await self.cluster.list_brokers() if listing or not copies else None
        due = due_for_reading(copies, self.settings, wall_ms(), me=me, every=self.controller.active, listed=listed)
        read = await self.cluster.read_brokers(due)
        kept = {b: copy for b, copy in copies.items() if b not in due and b != me and (listed is None or b in listed)}
        fresh = kept | read
        own = self.membership.registration
        if own is not None:
            fresh[me] = own  # renewed in place by the membership: never older than a read would be
        self.cluster_brokers = dict(sorted(fresh.items()))
        self.peer_watch.update(self.cluster_brokers)

    async def _reincarnate(self) -> None:
        """The lease lapsed (renewals too slow, or the process was frozen): other brokers may already
        lead this broker's partitions.  Give everything up, close the WAL (a new leader replays it),
        and rejoin as a new incarnation -- the same path as a restart after ``kill -9``."""
        log.warning("broker %d incarnation %d: lease lapsed; rejoining as a new incarnation",
                    self.settings.broker_id, self.membership.incarnation)
        self.leadership.resign_all("lease lost")
        await self.leadership.wait_idle()
        self.controller.lease = None
        if self.wal is not None:
            old, self.wal = self.wal, None
            await old.close()
        self.wal_floors.clear()
        incarnation = await self.membership.register()
        wal = build_wal(self.settings, self.store, incarnation)
        await wal.open()
        self.wal = wal

    async def _sweep_old_wals_logged(self) -> None:
        try:
            await self._sweep_old_wals()
        except Exception as exc:  # noqa: BLE001 - retried at the next interval
            log.warning("removing old WALs failed (%r); retrying later", exc)

    async def _sweep_old_wals(self) -> None:
        """Deletes the WALs of this broker's earlier incarnations that no partition can need any more.

        An earlier incarnation's lease is over (registering a new one waits it out), so its WAL only
        matters while a manifest names it: as the leader's WAL (the next election adds it to
        ``replay_from``) or in ``replay_from`` (a takeover has yet to replay it).  Manifests are read
        after the incarnation ended, and no manifest can newly name a WAL nobody writes any more, except
        an election that picked an incarnation already dead -- whose WAL then holds nothing to replay."""
        if self.leadership.busy:
            return
        # Only incarnations already over when the manifests are read: an incarnation that ends while the
        # (possibly slow) reads run may be named by a manifest read before it became a leader.
        current = self.membership.incarnation
        referenced: list[dict[str, object]] = []
        for topic in list(self.topics.values()):
            for partition in range(topic.partitions):
                manifest, _etag = await self.meta.load_manifest(topic.topic_id, partition)
                referenced += [manifest.leader_wal or {}, *(location for location, _epoch in manifest.replay_from)]
        base = wal_base(self.settings)
        keep = {i for i in range(1, current) if wal_location(base["engine"], base["base"], i) in referenced}
        removed = await remove_old_wals(self.settings, self.store, current, keep=keep)
        if removed:
            log.info("removed %d WAL(s) of earlier incarnations", removed)

    def on_assignments(self, assignments: Assignments) -> None:
        self.assignments = assignments
        known = {t.topic_id for t in self.topics.values()}
        if any(key.rpartition("/")[0] not in known for key in assignments.partitions):
            self._topics_dirty = True
        self.leadership.reconcile(assignments)

    def serve_partition(self, plog: PartitionLog) -> None:
        self.logs[(plog.topic.name, plog.partition)] = plog
        self.unflushed_bytes += plog.unflushed_bytes

    async def refresh_topics(self) -> None:
        """Brings the topic table up to date with ``meta/topics/`` (topics made or changed elsewhere)."""
        stored = await self.meta.load_topics()
        for name, record in stored.items():
            current = self.topics.get(name)
            if current is None or current.topic_id != record.topic_id:
                self._load_topic(record)
            elif current.partitions != record.partitions or current.configs != record.configs:
                current.partitions = max(current.partitions, record.partitions)
                current.configs = record.configs
                self.topic_configs[name] = TopicConfig.from_configs(record.configs, self.settings)
        for name in [n for n in self.topics if n not in stored and n not in self._creating]:
            self._forget_topic(name)

    def _load_topic(self, record: TopicRecord) -> None:
        self.topics[record.name] = record
        self.topic_configs[record.name] = TopicConfig.from_configs(record.configs, self.settings)
        self.topic_names_by_id[record.topic_id_bytes] = record.name

    def _forget_topic(self, name: str) -> None:
        record = self.topics.pop(name, None)
        self.topic_configs.pop(name, None)
        if record is not None:
            self.topic_names_by_id.pop(record.topic_id_bytes, None)
        for (topic, _p), plog in list(self.logs.items()):
            if topic == name:
                self.leadership.resign(plog, "topic deleted")

    async def stop(self) -> None:
        """Graceful: hand partitions to other brokers (or flush them), then give up the lease."""
        self.leaving = True
        await self.membership.leave()
        self.controller.wakeup.set()
        deadline = time.monotonic() + self.settings.shutdown_timeout_ms / 1000
        while self.logs and time.monotonic() < deadline and self._others_live():
            await asyncio.sleep(0.05)
        self.stopping = True
        await self.groups.stop()
        if self._flusher is not None:
            self.flusher.stop()
            try:
                await asyncio.wait_for(self._flusher, timeout=30)
            except (TimeoutError, asyncio.CancelledError):
                log.warning("flusher did not finish in time; the WAL keeps the unflushed data")
        if self._cluster_task is not None:
            self._cluster_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._cluster_task
        await self.leadership.wait_idle()
        await self.peer_watch.stop()
        await self.controller.release()
        await self.membership.stop(expire=True)
        if self.wal is not None:
            await self.wal.close()
        await self.store.close()

    def end_long_polls(self) -> None:
        """Every Fetch waiting for data answers now, and later ones do not wait: the server is closing."""
        self.long_polls_ended = True
        for plog in list(self.logs.values()):
            plog.wake()

    def _others_live(self) -> bool:
        now = wall_ms()
        me = self.settings.broker_id
        return any(b.live(now) for b in self.cluster_brokers.values() if b.broker_id != me)

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
            self._load_topic(record)
            future.set_result(record)
            log.info("created topic %s (%d partitions, id %s)", name, partitions, record.topic_id)
            await self.wait_for_leaders(record)
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

    async def wait_for_leaders(self, record: TopicRecord, timeout: float = 5.0) -> bool:
        """Waits (bounded) until the controller has given every partition of the topic a leader."""
        self.controller.wakeup.set()
        deadline = time.monotonic() + timeout
        me, incarnation = self.settings.broker_id, self.membership.incarnation
        while time.monotonic() < deadline:
            ready = True
            for p in range(record.partitions):
                a = self.assignments.partitions.get(Assignments.key(record.topic_id, p))
                if a is None or (a.leader == me and a.incarnation == incarnation
                                 and (record.name, p) not in self.logs):
                    ready = False
                    break
            if ready:
                return True
            await asyncio.sleep(LEADER_WAIT_POLL_SECONDS)
        return False

    async def delete_topic(self, name: str) -> None:
        record = self.topics[name]
        self._forget_topic(name)
        await self.meta.delete_topic(record)
        self.controller.wakeup.set()
        log.info("deleted topic %s", name)

    async def add_partitions(self, name: str, new_count: int) -> None:
        """Takes note that a topic (whose stored record already says so) has ``new_count`` partitions;
        the controller gives the new ones leaders."""
        record = self.topics[name]
        # Updated in place so every PartitionLog's ``topic`` stays this very record.
        record.partitions = max(record.partitions, new_count)
        log.info("topic %s now has %d partitions", name, record.partitions)
        await self.wait_for_leaders(record)

    def live_brokers(self) -> list[BrokerRegistration]:
        """Brokers clients may talk to (this one always included while it runs)."""
        now = wall_ms()
        brokers = {b.broker_id: b for b in self.cluster_brokers.values() if b.live(now)}
        me = self.membership.registration
        if me is not None and not self.leaving:
            brokers[me.broker_id] = me
        return sorted(brokers.values(), key=lambda b: b.broker_id)

    def responsive_brokers(self) -> dict[int, int]:
        """Broker id -> incarnation of the brokers that renewed their lease recently: the leaders worth
        naming to clients.  A leader that missed a few renewals is probably gone; naming it keeps clients
        retrying a dead connection, while LEADER_NOT_AVAILABLE makes them poll metadata quickly until
        the controller has moved its partitions (once the lease has run out).  A broker whose port closed
        (``PeerWatch``: its process is gone) is left out at once."""
        recent = responsive_cutoff_ms(self.settings, wall_ms())
        brokers = {b.broker_id: b.incarnation for b in self.cluster_brokers.values()
                   if not b.leaving and b.lease_expiry_ms > recent
                   and not self.peer_watch.is_gone(b.broker_id, b.incarnation)}
        me = self.membership.registration
        if me is not None and not self.leaving and self.membership.lease_valid():
            brokers[me.broker_id] = me.incarnation
        return brokers

    def controller_id(self) -> int:
        """The controller named to clients: a live broker (they send CreateTopics and InitProducerId there)."""
        holder = self.controller.lease.broker_id if self.controller.active and self.controller.lease else None
        live = self.live_brokers()
        if holder is not None:
            return holder
        return live[0].broker_id if live else self.settings.broker_id

    def coordinator_for(self, group_id: str) -> BrokerRegistration | None:
        """The broker that coordinates a consumer group: spread over live brokers by a hash of its id."""
        live = self.live_brokers()
        if not live:
            return None
        return live[zlib.crc32(group_id.encode()) % len(live)]

    def coordinates(self, group_id: str) -> bool:
        if not self.membership.lease_valid():
            # Frozen or cut off past its lease: its copies of the others' leases have run out, so it would
            # see itself as the only live broker and take every group, while another broker coordinates
            # them.  A commit it took then could overwrite a later one (a lost commit, seen in a chaos run).
            return False
        coordinator = self.coordinator_for(group_id)
        return coordinator is not None and coordinator.broker_id == self.settings.broker_id

    def partition_error(self, topic: str | None, partition: int) -> ErrorCode:
        """Why this broker does not serve the partition: unknown, or led by another broker."""
        record = self.topics.get(topic or "")
        if record is None or not 0 <= partition < record.partitions:
            return ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
        return ErrorCode.NOT_LEADER_OR_FOLLOWER

    def partition_exists(self, topic: str | None, partition: int) -> bool:
        record = self.topics.get(topic or "")
        return record is not None and 0 <= partition < record.partitions

    def partition(self, topic: str, partition: int) -> PartitionLog | None:
        return self.logs.get((topic, partition))

    def serving_error(self, plog: PartitionLog, current_leader_epoch: int = -1) -> ErrorCode:
        """Why this broker must not answer a read of ``plog`` now, or NONE.

        A client names the leader epoch it knows (KIP-320): a newer one means this broker has lost the
        partition and does not know yet, an older one that the client is behind.  A broker past its
        lease (frozen, cut off) keeps its partitions until its next cluster round resigns them, while
        the new leader may have gone further: a Fetch above this copy's high watermark would get
        OFFSET_OUT_OF_RANGE, and the consumer would reset its position to the earliest or latest offset."""
        epoch = plog.manifest.leader_epoch
        if current_leader_epoch > epoch:
            return ErrorCode.UNKNOWN_LEADER_EPOCH
        if 0 <= current_leader_epoch < epoch:
            return ErrorCode.FENCED_LEADER_EPOCH
        if plog.resigned or not self.membership.lease_valid():
            return ErrorCode.NOT_LEADER_OR_FOLLOWER
        return ErrorCode.NONE

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
        if plog.resigned or plog.handing_over or self.wal is None or not self.membership.lease_valid():
            return AppendResult(ErrorCode.NOT_LEADER_OR_FOLLOWER, message="not the leader any more")
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
            entry = plog.producers.producers.get(header.producer_id)
            log.info("%s-%d: producer %d epoch %d sequences %d..%d refused with %s (known: epoch %s, last sequence %s)",
                     plog.topic.name, plog.partition, header.producer_id, header.producer_epoch, header.base_sequence,
                     header.last_sequence, check.error.name, entry and entry.epoch, entry and entry.last_sequence)
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
        wal_header = wal_entry.encode_header(plog.topic.topic_id_bytes, plog.partition, plog.manifest.leader_epoch)
        result = AppendResult(ErrorCode.NONE, base_offset, append_time if append_time is not None else -1,
                              plog.log_start_offset)
        done: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        assert self.wal is not None
        # The position is known now (submit assigns them in call order), not only once the entry is durable:
        # between the WAL's write and this batch's callback the flusher must still see it as unflushed, or
        # it trims the WAL object holding it (a chaos run lost a new leader's first batch that way).
        tail_batch.wal_position = self.wal.next_position
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
        # Fencing: expose and acknowledge only while this broker is certainly still the leader.  A write
        # that lands after the lease lapsed (e.g. a PUT in flight across a SIGSTOP) may be missing from the
        # next leader's replay, which can already serve its offset to another batch: consumers here must
        # not read it (a chaos run saw one offset with two values), so the high watermark stays put; the
        # lapse is final and the partition is resigned next.  The answer must say "possibly written" (a
        # timeout: the client retries the same batch, which is deduplicated), never NOT_LEADER, which
        # tells an idempotent client the batch was not written and lets it renumber.
        if plog.resigned or not self.membership.lease_valid():
            if not done.done():
                done.set_result(AppendResult(ErrorCode.REQUEST_TIMED_OUT, message="leadership lost after the write"))
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
            while plog.high_watermark <= last and self.failed is None and not plog.resigned:
                waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                plog.waiters.append(waiter)
                await waiter
            if self.failed is not None:
                done.set_result(AppendResult(ErrorCode.KAFKA_STORAGE_ERROR, message="write-ahead log failed"))
            elif plog.high_watermark <= last:
                done.set_result(AppendResult(ErrorCode.REQUEST_TIMED_OUT, message="leadership lost"))
            else:
                done.set_result(result)

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
            while True:
                updated = change(plog.manifest)
                try:
                    etag = await self.meta.commit_manifest(updated, plog.manifest_etag)
                    break
                except ConflictError:
                    stored, etag = await self.meta.load_manifest(plog.topic.topic_id, plog.partition)
                    if (stored.leader_epoch != plog.manifest.leader_epoch or stored.leader != self.settings.broker_id
                            or stored.leader_incarnation != self.membership.incarnation):
                        self.leadership.resign(plog, f"fenced: the manifest is at epoch {stored.leader_epoch}")
                        raise
                    plog.manifest, plog.manifest_etag = stored, etag
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
        return await self.segments.read(segment, offset, max_bytes, following=plog.segments_after(segment))

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
