"""End to end on real S3: ``keel serve --s3-endpoint`` against SeaweedFS, with confluent-kafka clients.

The object-store contract is tested engine by engine elsewhere; this module
proves the whole broker on the S3 path, as users run it: keyed records
acknowledged with ``acks=all`` read back at their acknowledged offsets, also
after ``kill -9`` (with either WAL engine) and, with the object WAL, after the
broker's local directory is deleted; retention and DeleteRecords move the log
start and remove whole segment objects from the bucket; and a segment object in
the bucket holds the produced batches byte for byte, followed by the footer.

The helpers here (a broker on S3, a view of its bucket prefix, produce and
read-back) are shared with ``test_faults.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from broker.segment import FOOTER_SIZE, SEGMENT_MAGIC, open_segment
from integration.broker_process import BrokerProcess, fetch_v4
from metadata.store import Manifest, MetadataStore
from objectstore.base import ObjectInfo
from objectstore.s3 import S3ObjectStore
from protocol import records
from protocol.errors import ErrorCode
from s3server import SeaweedFS

BUCKET = "keel-test"
DEADLINE_S = 30.0
WAL_ENGINES = ["file", "object"]
# Local errors while a restarted broker has not yet taken over its partitions.
WAIT_FOR_LEADER = {KafkaError._UNKNOWN_PARTITION, KafkaError.LEADER_NOT_AVAILABLE, KafkaError.NOT_LEADER_FOR_PARTITION}

_T = TypeVar("_T")


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:10]}"


# ---- a broker on S3 ------------------------------------------------------------------------------


class S3Broker(BrokerProcess):
    """A ``keel serve`` process on an S3 bucket prefix; ``wait_on_start=False`` launches it without
    waiting for the Kafka port (a broker whose object store is down does not open it yet)."""

    def __init__(self, data_dir: Path, *, server: SeaweedFS, prefix: str, wal: str, endpoint: str | None = None,
                 args: Sequence[str] = (), log_path: Path) -> None:
        s3_args = ["--s3-endpoint", endpoint or server.endpoint_url, "--bucket", BUCKET, "--prefix", prefix,
                   "--wal", wal]
        super().__init__(data_dir, extra_args=[*s3_args, *args], env=server.env(), log_path=log_path)
        self.prefix = prefix
        self.wal = wal
        self.wait_on_start = True

    def wait_ready(self) -> None:
        if self.wait_on_start:
            super().wait_ready()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


S3BrokerFactory = Callable[..., S3Broker]


def _test_failed(node: pytest.Item) -> bool:
    return any(getattr(getattr(node, f"_keel_report_{when}", None), "failed", False) for when in ("setup", "call"))


@contextlib.contextmanager
def s3_brokers(request: pytest.FixtureRequest, base: Path, server: SeaweedFS) -> Iterator[S3BrokerFactory]:
    """A factory ``(wal="file", args=[...], endpoint=None, prefix=None, start=True)`` -> S3Broker.

    Each broker gets a fresh bucket prefix unless one is given; all are SIGKILLed on exit, and their
    log tails printed if the test failed."""
    started: list[S3Broker] = []

    def make(*, wal: str = "file", args: Sequence[str] = (), endpoint: str | None = None,
             prefix: str | None = None, start: bool = True) -> S3Broker:
        name = f"broker{len(started)}"
        proc = S3Broker(base / name / "data", server=server, prefix=prefix or unique("s3b"), wal=wal,
                        endpoint=endpoint, args=args, log_path=base / name / "broker.log")
        started.append(proc)
        return proc.start() if start else proc

    try:
        yield make
    finally:
        for proc in started:
            proc.kill()
            if _test_failed(request.node):
                print(proc.log_tail())


@pytest.fixture
def s3_broker_factory(request: pytest.FixtureRequest, tmp_path: Path,
                      s3_server: SeaweedFS) -> Iterator[S3BrokerFactory]:
    with s3_brokers(request, tmp_path, s3_server) as factory:
        yield factory


# ---- the bucket, seen directly (not through the broker) -------------------------------------------


class Bucket:
    """Synchronous look into one cluster prefix of the test bucket, straight on SeaweedFS."""

    def __init__(self, server: SeaweedFS, prefix: str) -> None:
        self.server = server
        self.prefix = prefix

    def _run(self, op: Callable[[S3ObjectStore], Awaitable[_T]]) -> _T:
        async def go() -> _T:
            store = S3ObjectStore(BUCKET, endpoint_url=self.server.endpoint_url, access_key=self.server.access_key,
                                  secret_key=self.server.secret_key, prefix=self.prefix, read_timeout=20)
            try:
                return await op(store)
            finally:
                await store.close()

        return asyncio.run(go())

    def list(self, under: str) -> list[ObjectInfo]:
        return self._run(lambda s: s.list(under))

    def get(self, key: str) -> bytes:
        return self._run(lambda s: s.get(key))

    def put(self, key: str, data: bytes) -> None:
        self._run(lambda s: s.put(key, data))

    def topic_id(self, topic: str) -> str:
        async def read(store: S3ObjectStore) -> str:
            record, _etag = await MetadataStore(store).read_topic(topic)
            return record.topic_id

        return self._run(read)

    def manifest(self, topic_id: str, partition: int) -> Manifest:
        async def read(store: S3ObjectStore) -> Manifest:
            return (await MetadataStore(store).load_manifest(topic_id, partition))[0]

        return self._run(read)

    def segment_keys(self, topic_id: str, partition: int) -> list[str]:
        return [i.key for i in self.list(f"data/{topic_id}/{partition}/") if i.key.endswith(".seg")]


def wait_for(what: str, check: Callable[[], _T], timeout: float = DEADLINE_S, interval: float = 0.1) -> _T:
    """Polls ``check`` until it returns something truthy; fails naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(interval)


def wait_flushed(bucket: Bucket, topic_id: str, partition: int, end_offset: int) -> Manifest:
    """Waits until the partition's segments (in its manifest) reach ``end_offset``."""
    return wait_for(f"partition {partition} flushed up to offset {end_offset}",
                    lambda: (m := bucket.manifest(topic_id, partition)).next_offset >= end_offset and m,
                    interval=0.2)


# ---- clients ----------------------------------------------------------------------------------------

Acks = dict[bytes, tuple[int, int]]  # value -> (partition, offset) from its delivery report


def create_topic(bootstrap: str, topic: str, partitions: int, config: dict[str, str] | None = None) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1,
                                            config=config or {})])
    futures[topic].result(timeout=DEADLINE_S)


def produce(bootstrap: str, topic: str, values: Sequence[bytes], *, key: Callable[[int], bytes] | None = None,
            partition: int | None = None, config: dict[str, Any] | None = None) -> Acks:
    """Produces ``values`` with ``acks=all``; every one must be acknowledged. Returns where each landed."""
    acks: Acks = {}
    errors: list[str] = []

    def on_delivery(err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            errors.append(str(err))
        else:
            acks[msg.value()] = (msg.partition(), msg.offset())

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5, **(config or {})})
    for i, value in enumerate(values):
        kwargs: dict[str, Any] = {"value": value, "on_delivery": on_delivery}
        if key is not None:
            kwargs["key"] = key(i)
        if partition is not None:
            kwargs["partition"] = partition
        while True:
            try:
                producer.produce(topic, **kwargs)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    assert producer.flush(DEADLINE_S) == 0, "records got no delivery report in time"
    assert not errors, f"{len(errors)} deliveries failed, e.g. {errors[:3]}"
    assert len(acks) == len(values)
    return acks


def consumer(bootstrap: str, **config: Any) -> Consumer:
    return Consumer({"bootstrap.servers": bootstrap, "group.id": unique("s3-reader"), "enable.auto.commit": False,
                     "fetch.wait.max.ms": 100, "check.crcs": True, **config})


def watermarks(bootstrap: str, topic: str, partition: int) -> tuple[int, int]:
    """(log start, high watermark) by ListOffsets, retrying while the partition has no leader yet (a
    restarted broker answers before it has taken its partitions over). Each attempt uses a new client:
    librdkafka keeps a partition it once saw without a leader as unknown in its metadata cache."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        c = consumer(bootstrap)
        try:
            low, high = c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10, cached=False)
            return int(low), int(high)
        except KafkaException as exc:
            retry = exc.args[0].retriable() or exc.args[0].code() in WAIT_FOR_LEADER
            if not retry or time.monotonic() > deadline:
                raise
        finally:
            c.close()
        time.sleep(0.1)


Log = dict[int, list[tuple[int, bytes | None, bytes]]]  # partition -> [(offset, key, value)]


def read_all(bootstrap: str, topic: str, partitions: int) -> Log:
    """Every record of every partition from its log start to its high watermark (which must be reached)."""
    ends = {p: watermarks(bootstrap, topic, p) for p in range(partitions)}
    c = consumer(bootstrap)
    try:
        c.assign([TopicPartition(topic, p, low) for p, (low, _high) in ends.items()])
        got: Log = defaultdict(list)
        deadline = time.monotonic() + DEADLINE_S

        def done(p: int) -> bool:
            return ends[p][1] <= ends[p][0] or (bool(got[p]) and got[p][-1][0] >= ends[p][1] - 1)

        while not all(done(p) for p in range(partitions)):
            assert time.monotonic() < deadline, f"read timed out: have { {p: len(got[p]) for p in got} }, want {ends}"
            for msg in c.consume(num_messages=10_000, timeout=0.2):
                assert msg.error() is None, msg.error()
                got[msg.partition()].append((msg.offset(), msg.key(), msg.value()))
        return got
    finally:
        c.close()


def check_log(log: Log, acks: Acks, *, dense_from: dict[int, int] | None = None) -> None:
    """Invariants 1 and 2: every acknowledged value at its acknowledged offset, once; offsets dense."""
    for p, entries in log.items():
        offsets = [o for o, _k, _v in entries]
        first = (dense_from or {}).get(p, 0)
        assert offsets == list(range(first, first + len(entries))), f"partition {p}: offsets not dense from {first}"
    where = {(p, o): v for p, entries in log.items() for o, _k, v in entries}
    missing = [(v, at) for v, at in acks.items() if where.get(at) != v]
    assert not missing, (f"{len(missing)} of {len(acks)} acknowledged records are not at their offset, "
                         f"e.g. {missing[:3]} (found there: {[where.get(at) for _v, at in missing[:3]]})")
    counts: dict[bytes, int] = defaultdict(int)
    for entries in log.values():
        for _o, _k, v in entries:
            counts[v] += 1
    twice = [v for v in acks if counts[v] != 1]
    assert not twice, f"{len(twice)} acknowledged values stored more than once, e.g. {twice[:3]}"


def values(tag: str, count: int, size: int = 0) -> list[bytes]:
    return [f"{tag}-{i:06d}-".encode().ljust(size, b"x") for i in range(count)]


# ---- tests ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("wal", WAL_ENGINES)
def test_keyed_records_survive_kill9_on_s3(s3_broker_factory: S3BrokerFactory, s3_server: SeaweedFS,
                                           wal: str) -> None:
    broker = s3_broker_factory(wal=wal, args=["--flush-interval-ms", "1000"])
    bucket = Bucket(s3_server, broker.prefix)
    topic = unique("s3-keyed")
    create_topic(broker.bootstrap, topic, 3)

    def key(i: int) -> bytes:
        return f"key-{i % 17}".encode()

    acks = produce(broker.bootstrap, topic, values("a", 1500), key=key)
    log = read_all(broker.bootstrap, topic, 3)
    check_log(log, acks)
    by_key: dict[bytes | None, set[int]] = defaultdict(set)
    for p, entries in log.items():
        for _o, k, _v in entries:
            by_key[k].add(p)
    assert len(by_key) == 17 and all(len(ps) == 1 for ps in by_key.values()), "a key spread over partitions"
    assert len({p for ps in by_key.values() for p in ps}) > 1, "all keys hashed to one partition"

    # Part of the data reaches segment objects, the rest is only in the WAL when the broker dies.
    topic_id = bucket.topic_id(topic)
    for p in range(3):
        wait_flushed(bucket, topic_id, p, max((o for _v, (q, o) in acks.items() if q == p), default=-1) + 1)
    acks |= produce(broker.bootstrap, topic, values("b", 900), key=key)
    broker.restart()  # SIGKILL, same port and data directory
    check_log(read_all(broker.bootstrap, topic, 3), acks)

    if wal == "object":  # no local state at all: the broker comes back on an empty directory
        acks |= produce(broker.bootstrap, topic, values("c", 600), key=key)
        assert bucket.list(f"wal/0/{broker.starts}/"), "the object WAL wrote nothing to the bucket"
        broker.kill()
        shutil.rmtree(broker.data_dir)
        broker.start()
        check_log(read_all(broker.bootstrap, topic, 3), acks)

    acks |= produce(broker.bootstrap, topic, values("d", 300), key=key)  # and it carries on writing
    check_log(read_all(broker.bootstrap, topic, 3), acks)


def _retention_settled(manifest: Manifest, retention_bytes: int) -> Manifest | None:
    """``manifest`` if retention has moved its log start and would drop no further segment, else None."""
    if not manifest.log_start_offset or not manifest.segments:
        return None
    oldest = manifest.segments[0]
    return manifest if sum(s.size for s in manifest.segments) - retention_bytes < oldest.size else None


def test_retention_bytes_deletes_segment_objects(s3_broker_factory: S3BrokerFactory, s3_server: SeaweedFS) -> None:
    broker = s3_broker_factory(args=["--flush-interval-ms", "200", "--segment-bytes", "20000",
                                     "--retention-check-interval-ms", "300"])
    bucket = Bucket(s3_server, broker.prefix)
    topic = unique("s3-retention")
    create_topic(broker.bootstrap, topic, 1, {"retention.bytes": "45000"})
    topic_id = bucket.topic_id(topic)
    acks: Acks = {}
    for round_ in range(6):  # several flushes, so several segment objects
        acks |= produce(broker.bootstrap, topic, values(f"r{round_}", 40, size=500), partition=0,
                        config={"batch.size": 4000})
        wait_flushed(bucket, topic_id, 0, len(acks))
    # Retention rounds run on their own clock: wait until the next one has nothing left to drop (the
    # partition exceeds retention.bytes by less than its oldest segment), or the log start may move again.
    manifest = wait_for("retention to settle", lambda: _retention_settled(bucket.manifest(topic_id, 0), 45000))
    low = manifest.log_start_offset
    wait_for("the broker to report that log start", lambda: watermarks(broker.bootstrap, topic, 0)[0] == low)
    assert 0 < low < len(acks)
    assert sum(s.size for s in manifest.segments) <= 45000 + 20000 + 4000

    # Expired segment objects are gone from the bucket; only the manifest's segments remain.
    keys = wait_for("segment objects to be deleted",
                    lambda: (k := bucket.segment_keys(topic_id, 0)) == sorted(s.key for s in manifest.segments) and k)
    assert not any(k.endswith(f"/{0:020d}-1.seg") for k in keys), "the first segment object is still there"
    assert all(s.last_offset >= low for s in manifest.segments)

    # Below the log start: OFFSET_OUT_OF_RANGE, on the wire and through the client.
    assert fetch_v4(broker.address, topic, 0, 0).error_code == ErrorCode.OFFSET_OUT_OF_RANGE
    assert_out_of_range(broker.bootstrap, topic, 0, 0)
    log = read_all(broker.bootstrap, topic, 1)
    assert log[0][0][0] == low
    check_log(log, {v: at for v, at in acks.items() if at[1] >= low}, dense_from={0: low})


def assert_out_of_range(bootstrap: str, topic: str, partition: int, offset: int) -> None:
    """A consumer with ``auto.offset.reset=error`` fetching at ``offset`` gets the error, not records."""
    c = consumer(bootstrap, **{"auto.offset.reset": "error"})
    try:
        c.assign([TopicPartition(topic, partition, offset)])
        deadline = time.monotonic() + DEADLINE_S
        while True:
            assert time.monotonic() < deadline, "no OFFSET_OUT_OF_RANGE error reached the consumer"
            msg = c.poll(0.2)
            if msg is None:
                continue
            assert msg.error() is not None, f"got a record at offset {msg.offset()} below the log start"
            assert msg.error().code() in (KafkaError._AUTO_OFFSET_RESET, KafkaError.OFFSET_OUT_OF_RANGE), msg.error()
            assert "out of range" in msg.error().str().lower(), msg.error()
            return
    finally:
        c.close()


def test_delete_records_moves_low_watermark(s3_broker_factory: S3BrokerFactory, s3_server: SeaweedFS) -> None:
    broker = s3_broker_factory(args=["--flush-interval-ms", "200", "--segment-bytes", "8000"])
    bucket = Bucket(s3_server, broker.prefix)
    topic = unique("s3-delete-records")
    create_topic(broker.bootstrap, topic, 1)
    topic_id = bucket.topic_id(topic)
    acks: Acks = {}
    for round_ in range(3):
        acks |= produce(broker.bootstrap, topic, values(f"d{round_}", 100, size=100), partition=0,
                        config={"batch.size": 2000})
        wait_flushed(bucket, topic_id, 0, len(acks))
    before = bucket.segment_keys(topic_id, 0)
    assert len(before) >= 3

    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    result = admin.delete_records([TopicPartition(topic, 0, 150)])
    deleted = next(iter(result.values())).result(timeout=DEADLINE_S)
    assert deleted.low_watermark == 150
    assert watermarks(broker.bootstrap, topic, 0) == (150, 300)

    manifest = bucket.manifest(topic_id, 0)
    assert manifest.log_start_offset == 150
    gone = set(before) - set(bucket.segment_keys(topic_id, 0))
    assert gone and all(s.last_offset >= 150 for s in manifest.segments)
    assert set(bucket.segment_keys(topic_id, 0)) == {s.key for s in manifest.segments}

    assert fetch_v4(broker.address, topic, 0, 100).error_code == ErrorCode.OFFSET_OUT_OF_RANGE
    assert_out_of_range(broker.bootstrap, topic, 0, 0)
    check_log(read_all(broker.bootstrap, topic, 1), {v: at for v, at in acks.items() if at[1] >= 150},
              dense_from={0: 150})

    broker.restart()  # the new log start is durable (in the manifest), not just in memory
    assert watermarks(broker.bootstrap, topic, 0) == (150, 300)


def test_segment_object_holds_the_batches_then_the_footer(s3_broker_factory: S3BrokerFactory,
                                                          s3_server: SeaweedFS) -> None:
    broker = s3_broker_factory(args=["--flush-interval-ms", "200"])
    bucket = Bucket(s3_server, broker.prefix)
    topic = unique("s3-segment")
    create_topic(broker.bootstrap, topic, 1)
    sent = values("seg", 500, size=64)
    keys = {v: f"k{i}".encode() for i, v in enumerate(sent)}
    acks = produce(broker.bootstrap, topic, sent, partition=0, key=lambda i: f"k{i}".encode())
    topic_id = bucket.topic_id(topic)
    manifest = wait_flushed(bucket, topic_id, 0, len(sent))

    by_offset = {o: v for v, (_p, o) in acks.items()}
    seen: dict[int, tuple[bytes | None, bytes | None]] = {}
    for ref in manifest.segments:
        data = bucket.get(ref.key)
        assert len(data) == ref.size
        assert data[-FOOTER_SIZE:][:8] == SEGMENT_MAGIC, "the object does not end with the segment footer"
        footer, _index, body = open_segment(data)  # checks lengths and the body, index and footer CRCs
        assert (footer.base_offset, footer.last_offset) == (ref.base_offset, ref.last_offset)
        # The body is the batches as produced, concatenated: each one whole, CRC-valid, in offset order.
        end = 0
        for pos, header in records.iter_batch_headers(body):
            assert pos == end, "bytes between batches"
            batch = bytes(body[pos:pos + header.size])
            records.validate_single_batch(batch)  # CRC32C over the batch as the producer built it
            for record in records.decode_records(batch):
                seen[record.offset] = (record.key, record.value)
            end = pos + header.size
        assert end == footer.body_length, "bytes after the last batch"
    assert sorted(seen) == list(range(len(sent)))
    assert all(seen[o] == (keys[v], v) for o, v in by_offset.items())
