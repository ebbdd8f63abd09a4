"""Produce and consume through the three Python Kafka clients against a real broker process.

Each client library speaks different API versions and has different defaults
(kafka-python is idempotent by default, aiokafka uses old Fetch/Metadata
versions, librdkafka uses flexible versions), so each is driven through the
same scenario: create a 4-partition topic, produce keyed records with headers
and explicit timestamps under every compression codec, read them back by
partition assignment and compare every field and offset with the producer's
acknowledgements, then check ListOffsets (earliest, latest, by timestamp).
A raw Fetch confirms the batches really arrived compressed with that codec,
since a client may silently fall back to no compression.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import pytest

from integration.broker_process import BatchInfo, BrokerProcess, fetch_v4

PARTITIONS = 4
RECORDS_PER_CODEC = 200
CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]
CODEC_IDS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
MiB = 1024 * 1024
LARGE_VALUE_BYTES = MiB
CLIENT_MAX_BYTES = 4 * MiB
DEADLINE_S = 30.0
LINGER_MS = 20  # lets a few hundred records form multi-record batches that compress

Header = tuple[str, bytes]


@dataclass(frozen=True)
class Rec:
    key: bytes
    value: bytes
    headers: tuple[Header, ...]
    timestamp: int


@dataclass(frozen=True)
class Consumed:
    offset: int
    rec: Rec
    create_time: bool


Acks = list[tuple[int, int]]
ByPartition = dict[int, list[Consumed]]


@dataclass(frozen=True)
class OffsetsReport:
    earliest: dict[int, int]
    latest: dict[int, int]
    by_time: dict[int, int | None]


class Client(Protocol):
    name: str

    def create_topic(self, bootstrap: str, topic: str, partitions: int) -> None: ...

    def produce(self, bootstrap: str, topic: str, records: Sequence[Rec], codec: str) -> Acks: ...

    def consume(self, bootstrap: str, topic: str, counts: dict[int, int]) -> ByPartition: ...

    def list_offsets(self, bootstrap: str, topic: str, partitions: Sequence[int],
                     times: dict[int, int]) -> OffsetsReport: ...


def _done(got: ByPartition, counts: dict[int, int]) -> bool:
    return all(len(got[p]) >= n for p, n in counts.items())


def _deadline_error(got: ByPartition, counts: dict[int, int]) -> AssertionError:
    have = {p: len(got[p]) for p in counts}
    return AssertionError(f"consumer timed out after {DEADLINE_S} s: have {have}, want {counts}")


# --- confluent-kafka (librdkafka) ---


class ConfluentClient:
    name = "confluent"

    def create_topic(self, bootstrap: str, topic: str, partitions: int) -> None:
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": bootstrap})
        futures = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)],
                                      operation_timeout=10)
        futures[topic].result(timeout=DEADLINE_S)
        md = admin.list_topics(topic, timeout=10)
        assert len(md.topics[topic].partitions) == partitions

    def produce(self, bootstrap: str, topic: str, records: Sequence[Rec], codec: str) -> Acks:
        from confluent_kafka import Producer

        producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "compression.type": codec,
                             "linger.ms": LINGER_MS, "message.max.bytes": CLIENT_MAX_BYTES})
        acks: list[tuple[int, int] | None] = [None] * len(records)
        errors: list[str] = []

        def report(index: int):
            def on_delivery(err, msg) -> None:
                if err is not None:
                    errors.append(f"record {index}: {err}")
                else:
                    acks[index] = (msg.partition(), msg.offset())
            return on_delivery

        for i, rec in enumerate(records):
            producer.produce(topic, value=rec.value, key=rec.key, headers=list(rec.headers),
                             timestamp=rec.timestamp, on_delivery=report(i))
            producer.poll(0)
        remaining = producer.flush(DEADLINE_S)
        assert remaining == 0, f"{remaining} records not delivered"
        assert not errors, errors[:5]
        assert all(a is not None for a in acks)
        return [a for a in acks if a is not None]

    def consume(self, bootstrap: str, topic: str, counts: dict[int, int]) -> ByPartition:
        from confluent_kafka import TIMESTAMP_CREATE_TIME, Consumer, TopicPartition

        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"keel-it-{uuid.uuid4().hex}",
                             "enable.auto.commit": False, "fetch.wait.max.ms": 100,
                             "max.partition.fetch.bytes": CLIENT_MAX_BYTES,
                             "fetch.max.bytes": 2 * CLIENT_MAX_BYTES,
                             "receive.message.max.bytes": 4 * CLIENT_MAX_BYTES})
        got: ByPartition = defaultdict(list)
        try:
            consumer.assign([TopicPartition(topic, p, 0) for p in counts])
            deadline = time.monotonic() + DEADLINE_S
            while not _done(got, counts):
                if time.monotonic() > deadline:
                    raise _deadline_error(got, counts)
                for msg in consumer.consume(num_messages=1000, timeout=0.2):
                    assert msg.error() is None, msg.error()
                    ts_type, ts = msg.timestamp()
                    rec = Rec(msg.key(), msg.value(), tuple(msg.headers() or ()), ts)
                    got[msg.partition()].append(Consumed(msg.offset(), rec, ts_type == TIMESTAMP_CREATE_TIME))
        finally:
            consumer.close()
        return got

    def list_offsets(self, bootstrap: str, topic: str, partitions: Sequence[int],
                     times: dict[int, int]) -> OffsetsReport:
        from confluent_kafka import Consumer, TopicPartition

        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"keel-it-{uuid.uuid4().hex}",
                             "enable.auto.commit": False})
        try:
            earliest, latest = {}, {}
            for p in partitions:
                lo, hi = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)
                earliest[p], latest[p] = lo, hi
            found = consumer.offsets_for_times([TopicPartition(topic, p, ts) for p, ts in times.items()],
                                               timeout=10)
            by_time: dict[int, int | None] = {}
            for tp in found:
                assert tp.error is None, tp.error
                by_time[tp.partition] = tp.offset if tp.offset >= 0 else None
        finally:
            consumer.close()
        return OffsetsReport(earliest, latest, by_time)


# --- kafka-python ---


class KafkaPythonClient:
    name = "kafka-python"

    def create_topic(self, bootstrap: str, topic: str, partitions: int) -> None:
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        try:
            admin.create_topics({topic: {"num_partitions": partitions, "replication_factor": 1}},
                                timeout_ms=10_000, wait_for_metadata=True)
            (described,) = admin.describe_topics([topic])
            assert len(described["partitions"]) == partitions
        finally:
            admin.close()

    def produce(self, bootstrap: str, topic: str, records: Sequence[Rec], codec: str) -> Acks:
        from kafka import KafkaProducer

        # Defaults deliberately kept (idempotence on, acks=all): that is what users get.
        producer = KafkaProducer(bootstrap_servers=bootstrap,
                                 compression_type=None if codec == "none" else codec,
                                 linger_ms=LINGER_MS, max_request_size=CLIENT_MAX_BYTES,
                                 max_block_ms=int(DEADLINE_S * 1000))
        try:
            futures = [producer.send(topic, value=rec.value, key=rec.key, headers=list(rec.headers),
                                     timestamp_ms=rec.timestamp) for rec in records]
            producer.flush(timeout=DEADLINE_S)
            acks = []
            for fut in futures:
                md = fut.get(timeout=DEADLINE_S)
                acks.append((md.partition, md.offset))
        finally:
            producer.close(timeout=10)
        return acks

    def _consumer(self, bootstrap: str):
        from kafka import KafkaConsumer

        return KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             auto_offset_reset="earliest", fetch_max_wait_ms=100,
                             max_partition_fetch_bytes=CLIENT_MAX_BYTES, fetch_max_bytes=2 * CLIENT_MAX_BYTES)

    def consume(self, bootstrap: str, topic: str, counts: dict[int, int]) -> ByPartition:
        from kafka import TopicPartition

        consumer = self._consumer(bootstrap)
        got: ByPartition = defaultdict(list)
        try:
            tps = [TopicPartition(topic, p) for p in counts]
            consumer.assign(tps)
            for tp in tps:
                consumer.seek(tp, 0)
            deadline = time.monotonic() + DEADLINE_S
            while not _done(got, counts):
                if time.monotonic() > deadline:
                    raise _deadline_error(got, counts)
                for tp, msgs in consumer.poll(timeout_ms=200).items():
                    for m in msgs:
                        rec = Rec(m.key, m.value, tuple((k, v) for k, v in m.headers), m.timestamp)
                        got[tp.partition].append(Consumed(m.offset, rec, m.timestamp_type == 0))
        finally:
            consumer.close()
        return got

    def list_offsets(self, bootstrap: str, topic: str, partitions: Sequence[int],
                     times: dict[int, int]) -> OffsetsReport:
        from kafka import TopicPartition

        consumer = self._consumer(bootstrap)
        try:
            tps = [TopicPartition(topic, p) for p in partitions]
            earliest = {tp.partition: off for tp, off in consumer.beginning_offsets(tps).items()}
            latest = {tp.partition: off for tp, off in consumer.end_offsets(tps).items()}
            found = consumer.offsets_for_times({TopicPartition(topic, p): ts for p, ts in times.items()})
            by_time = {tp.partition: (None if ot is None else ot.offset) for tp, ot in found.items()}
        finally:
            consumer.close()
        return OffsetsReport(earliest, latest, by_time)


# --- aiokafka ---


class AioKafkaClient:
    name = "aiokafka"

    def create_topic(self, bootstrap: str, topic: str, partitions: int) -> None:
        asyncio.run(self._create_topic(bootstrap, topic, partitions))

    async def _create_topic(self, bootstrap: str, topic: str, partitions: int) -> None:
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic

        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            resp = await admin.create_topics([NewTopic(topic, partitions, 1)], timeout_ms=10_000)
            errors = [(t[0], t[1]) for t in resp.topic_errors if t[1] != 0]
            assert not errors, errors
            deadline = time.monotonic() + DEADLINE_S
            while True:
                described = await admin.describe_topics([topic])
                if described and described[0]["error_code"] == 0 and len(described[0]["partitions"]) == partitions:
                    break
                assert time.monotonic() < deadline, f"topic not visible: {described}"
                await asyncio.sleep(0.1)
        finally:
            await admin.close()

    def produce(self, bootstrap: str, topic: str, records: Sequence[Rec], codec: str) -> Acks:
        return asyncio.run(self._produce(bootstrap, topic, records, codec))

    async def _produce(self, bootstrap: str, topic: str, records: Sequence[Rec], codec: str) -> Acks:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                    compression_type=None if codec == "none" else codec,
                                    linger_ms=LINGER_MS, max_request_size=CLIENT_MAX_BYTES)
        await producer.start()
        try:
            futures = [await producer.send(topic, value=rec.value, key=rec.key, headers=list(rec.headers),
                                           timestamp_ms=rec.timestamp) for rec in records]
            metas = await asyncio.wait_for(asyncio.gather(*futures), DEADLINE_S)
        finally:
            await producer.stop()
        return [(md.partition, md.offset) for md in metas]

    def _consumer(self, bootstrap: str):
        from aiokafka import AIOKafkaConsumer

        return AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest", fetch_max_wait_ms=100,
                                max_partition_fetch_bytes=CLIENT_MAX_BYTES,
                                fetch_max_bytes=2 * CLIENT_MAX_BYTES)

    def consume(self, bootstrap: str, topic: str, counts: dict[int, int]) -> ByPartition:
        return asyncio.run(self._consume(bootstrap, topic, counts))

    async def _consume(self, bootstrap: str, topic: str, counts: dict[int, int]) -> ByPartition:
        from aiokafka import TopicPartition

        consumer = self._consumer(bootstrap)
        await consumer.start()
        got: ByPartition = defaultdict(list)
        try:
            tps = [TopicPartition(topic, p) for p in counts]
            consumer.assign(tps)
            for tp in tps:
                consumer.seek(tp, 0)
            deadline = time.monotonic() + DEADLINE_S
            while not _done(got, counts):
                if time.monotonic() > deadline:
                    raise _deadline_error(got, counts)
                batches = await consumer.getmany(timeout_ms=200)
                for tp, msgs in batches.items():
                    for m in msgs:
                        rec = Rec(m.key, m.value, tuple((k, v) for k, v in m.headers), m.timestamp)
                        got[tp.partition].append(Consumed(m.offset, rec, m.timestamp_type == 0))
        finally:
            await consumer.stop()
        return got

    def list_offsets(self, bootstrap: str, topic: str, partitions: Sequence[int],
                     times: dict[int, int]) -> OffsetsReport:
        return asyncio.run(self._list_offsets(bootstrap, topic, partitions, times))

    async def _list_offsets(self, bootstrap: str, topic: str, partitions: Sequence[int],
                            times: dict[int, int]) -> OffsetsReport:
        from aiokafka import TopicPartition

        consumer = self._consumer(bootstrap)
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in partitions]
            earliest = {tp.partition: off for tp, off in (await consumer.beginning_offsets(tps)).items()}
            latest = {tp.partition: off for tp, off in (await consumer.end_offsets(tps)).items()}
            found = await consumer.offsets_for_times({TopicPartition(topic, p): ts for p, ts in times.items()})
            by_time = {tp.partition: (None if ot is None else ot.offset) for tp, ot in found.items()}
        finally:
            await consumer.stop()
        return OffsetsReport(earliest, latest, by_time)


CLIENTS: dict[str, Client] = {c.name: c for c in (ConfluentClient(), KafkaPythonClient(), AioKafkaClient())}


# --- scenario pieces ---


def new_topic(tag: str) -> str:
    return f"it-{tag}-{uuid.uuid4().hex[:10]}"


def make_records(tag: str, n: int) -> list[Rec]:
    """Keyed records; timestamps strictly increase (gaps of 10 ms), an hour in the past."""
    base_ts = int(time.time() * 1000) - 3_600_000
    return [Rec(key=f"key-{i % 17}".encode(),
                value=f"{tag}:{i}:".encode() + os.urandom(i % 64),
                headers=(("idx", str(i).encode()), ("tag", tag.encode()), ("dup", b"first"),
                         ("dup", b"second")),
                timestamp=base_ts + 10 * i)
            for i in range(n)]


def placed_by_partition(records: Sequence[Rec], acks: Acks) -> dict[int, list[tuple[int, Rec]]]:
    """Group acknowledged records per partition, in send order; checks the acks themselves."""
    assert len(acks) == len(records)
    out: dict[int, list[tuple[int, Rec]]] = defaultdict(list)
    key_partition: dict[bytes, int] = {}
    for (p, o), rec in zip(acks, records, strict=True):
        assert 0 <= p < PARTITIONS, f"acked partition {p}"
        assert key_partition.setdefault(rec.key, p) == p, f"key {rec.key!r} went to two partitions"
        out[p].append((o, rec))
    for p, items in out.items():
        # A fresh topic and one producer: offsets are 0..n-1 in send order.
        assert [o for o, _ in items] == list(range(len(items))), f"partition {p} acked offsets not dense/ordered"
    return out


def verify_consumed(placed: dict[int, list[tuple[int, Rec]]], got: ByPartition) -> None:
    assert set(got) <= set(placed), f"records in unexpected partitions {set(got) - set(placed)}"
    for p, items in placed.items():
        consumed = got[p]
        assert [c.offset for c in consumed] == [o for o, _ in items], f"partition {p}: offsets differ"
        for (offset, sent), c in zip(items, consumed, strict=True):
            assert c.create_time, f"{p}/{offset}: timestamp type is not CreateTime"
            assert c.rec == sent, f"{p}/{offset}: sent {sent!r}, consumed {c.rec!r}"


def verify_list_offsets(client: Client, bootstrap: str, topic: str,
                        placed: dict[int, list[tuple[int, Rec]]]) -> None:
    partitions = list(range(PARTITIONS))
    # Per partition, ask for a timestamp just below its middle record: the answer is that record.
    times: dict[int, int] = {}
    expect_by_time: dict[int, int | None] = {}
    newest = max(rec.timestamp for items in placed.values() for _, rec in items)
    for p in partitions:
        items = placed.get(p, [])
        if items:
            offset, rec = items[len(items) // 2]
            times[p], expect_by_time[p] = rec.timestamp - 1, offset
        else:
            times[p], expect_by_time[p] = 0, None
    report = client.list_offsets(bootstrap, topic, partitions, times)
    assert report.earliest == {p: 0 for p in partitions}
    assert report.latest == {p: len(placed.get(p, [])) for p in partitions}
    assert report.by_time == expect_by_time
    # A timestamp after every record finds nothing.
    after = client.list_offsets(bootstrap, topic, partitions, {p: newest + 1 for p in partitions})
    assert after.by_time == {p: None for p in partitions}


def verify_wire_codec(broker: BrokerProcess, topic: str, placed: dict[int, list[tuple[int, Rec]]],
                      codec: str) -> list[BatchInfo]:
    """The producer's codec really reached the broker, as a raw Fetch shows.

    Clients send a batch uncompressed when compressing would not make it
    smaller (typically a batch of one small record), so a batch may carry
    either the configured codec or none; most records must be compressed.
    """
    want = CODEC_IDS[codec]
    records_by_codec: Counter[int] = Counter()
    seen: list[BatchInfo] = []
    for p, items in placed.items():
        offset, end = 0, len(items)
        while offset < end:
            fetched = fetch_v4(broker.address, topic, p, offset)
            assert fetched.error_code == 0, f"Fetch {topic}/{p}@{offset}: error {fetched.error_code}"
            assert fetched.batches, f"Fetch {topic}/{p}@{offset} returned no batches"
            for batch in fetched.batches:
                assert batch.magic == 2
                assert batch.compression in (0, want), (
                    f"{topic}/{p} batch @{batch.base_offset}: codec {batch.compression}, want {codec}")
                records_by_codec[batch.compression] += batch.record_count
                seen.append(batch)
            last = fetched.batches[-1]
            offset = last.base_offset + last.last_offset_delta + 1
    total = sum(records_by_codec.values())
    assert total == sum(len(items) for items in placed.values())
    assert records_by_codec[want] * 2 > total, f"too few records compressed with {codec}: {dict(records_by_codec)}"
    return seen


def counts_of(placed: dict[int, list[tuple[int, Rec]]]) -> dict[int, int]:
    return {p: len(items) for p, items in placed.items()}


# --- tests ---


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("client_name", list(CLIENTS))
def test_produce_consume_every_codec(module_broker: BrokerProcess, client_name: str, codec: str) -> None:
    client = CLIENTS[client_name]
    bootstrap = module_broker.bootstrap
    topic = new_topic(f"{client_name}-{codec}")
    client.create_topic(bootstrap, topic, PARTITIONS)

    records = make_records(f"{client_name}-{codec}", RECORDS_PER_CODEC)
    placed = placed_by_partition(records, client.produce(bootstrap, topic, records, codec))
    assert len(placed) > 1, "17 keys over 4 partitions should use more than one partition"

    batches = verify_wire_codec(module_broker, topic, placed, codec)
    if client_name == "kafka-python":
        # Its default producer is idempotent: batches carry a producer id from InitProducerId.
        assert all(b.producer_id >= 0 for b in batches), [b.producer_id for b in batches]
    verify_consumed(placed, client.consume(bootstrap, topic, counts_of(placed)))
    verify_list_offsets(client, bootstrap, topic, placed)


@pytest.mark.parametrize(("producer_name", "consumer_name", "codec"), [
    ("confluent", "kafka-python", "lz4"),
    ("kafka-python", "aiokafka", "zstd"),
    ("aiokafka", "confluent", "snappy"),
    ("kafka-python", "confluent", "gzip"),
])
def test_cross_client(module_broker: BrokerProcess, producer_name: str, consumer_name: str,
                      codec: str) -> None:
    producer, consumer = CLIENTS[producer_name], CLIENTS[consumer_name]
    bootstrap = module_broker.bootstrap
    topic = new_topic(f"{producer_name}-to-{consumer_name}")
    consumer.create_topic(bootstrap, topic, PARTITIONS)

    records = make_records(topic, RECORDS_PER_CODEC)
    placed = placed_by_partition(records, producer.produce(bootstrap, topic, records, codec))
    verify_consumed(placed, consumer.consume(bootstrap, topic, counts_of(placed)))
    verify_list_offsets(consumer, bootstrap, topic, placed)


@pytest.mark.parametrize("client_name", list(CLIENTS))
def test_one_mebibyte_record(module_broker: BrokerProcess, client_name: str) -> None:
    client = CLIENTS[client_name]
    bootstrap = module_broker.bootstrap
    topic = new_topic(f"{client_name}-large")
    client.create_topic(bootstrap, topic, PARTITIONS)

    small = make_records(topic, 3)
    big = Rec(key=b"big", value=os.urandom(LARGE_VALUE_BYTES), headers=(("size", b"1MiB"),),
              timestamp=small[-1].timestamp + 10)
    records = [*small, big, *make_records(topic + "-after", 2)]
    placed = placed_by_partition(records, client.produce(bootstrap, topic, records, "none"))
    verify_consumed(placed, client.consume(bootstrap, topic, counts_of(placed)))
