"""A consumer catching up on cold data: every partition of one Fetch read from many small segment objects.

After a graceful restart the broker's caches are empty, so the read goes through segment objects, with
read-ahead across segment boundaries and the partitions of each Fetch read at once.  Whatever the
read-ahead and the concurrent reads do, each partition must come back whole, in order, exactly as
produced.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from integration.broker_process import BrokerProcess

PARTITIONS = 3
RECORDS = 1500  # per partition, 1 KiB each: ~25 segment objects of 64 KiB per partition
DEADLINE_S = 60.0


def test_cold_catch_up_over_many_segments_returns_every_partition_whole(broker_factory: object) -> None:
    broker: BrokerProcess = broker_factory(  # type: ignore[operator]
        extra_args=["--segment-bytes", "65536", "--flush-interval-ms", "100", "--tail-cache-bytes", "0",
                    "--block-cache-bytes", str(8 * 1024 * 1024)])
    topic = f"catchup-{uuid.uuid4().hex[:10]}"
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])[topic].result(30)

    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all", "linger.ms": 5,
                         "batch.size": 16384})
    sent: dict[int, list[bytes]] = defaultdict(list)
    for i in range(RECORDS):
        for p in range(PARTITIONS):
            value = f"{p}:{i}:".encode() + bytes([i % 251]) * 1000
            producer.produce(topic, value, partition=p)
            sent[p].append(value)
        producer.poll(0)
    assert producer.flush(30) == 0

    broker.restart(graceful=True)  # cold: the tail and block caches start empty

    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": f"catchup-{uuid.uuid4().hex}",
                         "enable.auto.commit": False})
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        got: dict[int, list[bytes]] = defaultdict(list)
        offsets: dict[int, list[int]] = defaultdict(list)
        deadline = time.monotonic() + DEADLINE_S
        while sum(len(v) for v in got.values()) < PARTITIONS * RECORDS:
            assert time.monotonic() < deadline, {p: len(v) for p, v in got.items()}
            for msg in consumer.consume(num_messages=2000, timeout=0.5):
                assert msg.error() is None, msg.error()
                got[msg.partition()].append(msg.value())
                offsets[msg.partition()].append(msg.offset())
    finally:
        consumer.close()
    for p in range(PARTITIONS):
        assert offsets[p] == list(range(RECORDS)), f"partition {p}: offsets not dense from 0"
        assert got[p] == sent[p], f"partition {p}: values differ from what was produced"
