"""Invariants 1 and 2 under ``kill -9``: acknowledged records survive, offsets stay dense.

A producer keeps writing while the broker process is SIGKILLed (twice, with a
restart on the same data directory in between). Every record whose delivery
report said "success" must afterwards be readable at exactly the partition and
offset it was acknowledged with, and each partition must read back densely
from offset 0. Records that were in flight at a kill may be lost or duplicated
by client retries (the producer is not idempotent here), but a record that was
both sent and acknowledged while one broker incarnation was up, with no kill
in between, has no reason to be written twice and must appear exactly once.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from integration.broker_process import BrokerProcess

PARTITIONS = 4
PRODUCE_SECONDS = 2.0
BURST = 100  # records between short sleeps, to keep the log a size we can read back quickly
BURST_PAUSE_S = 0.01
DEADLINE_S = 60.0


@dataclass(frozen=True)
class Ack:
    partition: int
    offset: int
    sent_at: float
    acked_at: float


@dataclass
class RecordingProducer:
    """A confluent-kafka producer that remembers every successful delivery report."""

    bootstrap: str
    topic: str
    acked: dict[bytes, Ack] = field(default_factory=dict)
    sent_at: dict[bytes, float] = field(default_factory=dict)
    failed: dict[bytes, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.producer = Producer({
            "bootstrap.servers": self.bootstrap, "acks": "all", "linger.ms": 2,
            "message.timeout.ms": 30_000, "reconnect.backoff.ms": 50, "reconnect.backoff.max.ms": 500,
            "retry.backoff.ms": 100, "retry.backoff.max.ms": 500,
        })
        self._seq = 0
        self._prefix = uuid.uuid4().hex[:8]

    def _on_delivery(self, err, msg) -> None:
        value = msg.value()
        if err is not None:
            self.failed[value] = str(err)
            return
        assert value not in self.acked, f"two success reports for {value!r}"
        self.acked[value] = Ack(msg.partition(), msg.offset(), self.sent_at[value], time.monotonic())

    def produce_until(self, stop: threading.Event) -> None:
        """Send unique values until ``stop`` is set; delivery reports are served here too."""
        while not stop.is_set():
            for _ in range(BURST):
                value = f"{self._prefix}-{self._seq:09d}".encode()
                self._seq += 1
                self.sent_at[value] = time.monotonic()
                while True:
                    try:
                        self.producer.produce(self.topic, value=value, key=value[-2:],
                                              on_delivery=self._on_delivery)
                        break
                    except BufferError:
                        self.producer.poll(0.05)
                self.producer.poll(0)
            time.sleep(BURST_PAUSE_S)

    def run_in_background(self) -> tuple[threading.Thread, threading.Event]:
        stop = threading.Event()
        thread = threading.Thread(target=self.produce_until, args=(stop,), name="kill9-producer", daemon=True)
        thread.start()
        return thread, stop

    def flush(self) -> None:
        remaining = self.producer.flush(DEADLINE_S)
        assert remaining == 0, f"{remaining} records got no delivery report within {DEADLINE_S} s"


@dataclass(frozen=True)
class Window:
    """One broker incarnation's life: from ready to SIGKILL."""

    up_at: float
    killed_at: float


def create_topic(bootstrap: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])
    futures[topic].result(timeout=DEADLINE_S)


def produce_then_kill(broker: BrokerProcess, producer: RecordingProducer, up_at: float) -> Window:
    """Produce in the background, SIGKILL the broker mid-stream, stop producing."""
    thread, stop = producer.run_in_background()
    time.sleep(PRODUCE_SECONDS)
    killed_at = time.monotonic()
    broker.kill()
    time.sleep(0.3)  # the producer keeps sending into a dead broker for a moment
    stop.set()
    thread.join(timeout=DEADLINE_S)
    assert not thread.is_alive()
    return Window(up_at, killed_at)


def read_all(bootstrap: str, topic: str) -> dict[int, list[tuple[int, bytes]]]:
    """Every (offset, value) of every partition from offset 0 up to the high watermark."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"kill9-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "fetch.wait.max.ms": 100})
    try:
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)
                for p in range(PARTITIONS)}
        for p, (low, _high) in ends.items():
            assert low == 0, f"partition {p} log start moved to {low}"
        consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        got: dict[int, list[tuple[int, bytes]]] = defaultdict(list)
        deadline = time.monotonic() + DEADLINE_S
        while any(len(got[p]) < ends[p][1] for p in range(PARTITIONS)):
            assert time.monotonic() < deadline, (
                f"read timed out: have { {p: len(got[p]) for p in range(PARTITIONS)} }, want {ends}")
            for msg in consumer.consume(num_messages=5000, timeout=0.2):
                assert msg.error() is None, msg.error()
                got[msg.partition()].append((msg.offset(), msg.value()))
        return got
    finally:
        consumer.close()


def test_acked_records_survive_two_sigkills(broker: BrokerProcess) -> None:
    topic = f"kill9-{uuid.uuid4().hex[:10]}"
    create_topic(broker.bootstrap, topic)
    producer = RecordingProducer(broker.bootstrap, topic)

    windows = []
    up_at = time.monotonic()
    for _ in range(2):
        acked_before = len(producer.acked)
        windows.append(produce_then_kill(broker, producer, up_at))
        broker.start()  # same port, same data directory
        up_at = time.monotonic()
        producer.flush()  # in-flight records are retried against the new incarnation, or fail
        assert len(producer.acked) - acked_before > 100, "the producer made too little progress to test"

    log = read_all(broker.bootstrap, topic)

    # Invariant 2: dense offsets from 0 in every partition.
    for p, entries in log.items():
        assert [o for o, _ in entries] == list(range(len(entries))), f"partition {p}: offsets not dense"

    # Invariant 1: every acknowledged value sits exactly where its ack said.
    where = {(p, o): v for p, entries in log.items() for o, v in entries}
    missing = [(v, a) for v, a in producer.acked.items() if where.get((a.partition, a.offset)) != v]
    assert not missing, (f"{len(missing)} of {len(producer.acked)} acknowledged records are not at their "
                         f"acknowledged offset, e.g. {missing[:5]} (found there: "
                         f"{[where.get((a.partition, a.offset)) for _, a in missing[:5]]})")

    # Nothing appears that was never sent.
    copies = Counter(v for entries in log.values() for _, v in entries)
    strangers = [v for v in copies if v not in producer.sent_at]
    assert not strangers, f"values never produced: {strangers[:5]}"

    # Sent and acknowledged within one incarnation's life: no retry, so exactly one copy.
    def clean(ack: Ack) -> bool:
        return any(w.up_at <= ack.sent_at and ack.acked_at < w.killed_at for w in windows)

    duplicated = [v for v, a in producer.acked.items() if clean(a) and copies[v] != 1]
    assert not duplicated, f"{len(duplicated)} cleanly acknowledged values stored more than once: {duplicated[:5]}"
