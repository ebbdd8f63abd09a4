"""Client workloads, driven by confluent-kafka, that any Kafka-compatible broker can run.

Each function takes a bootstrap address and returns raw samples, so the
same code measures Keel and the baseline mock cluster.  Conventions
(docs/benchmarks.md): ``acks=all``; ``linger.ms=0`` for latency workloads,
``linger.ms=5`` for throughput; rates are paced against a fixed schedule,
so a slow broker does not lower the offered load (no coordinated omission).

Every record's value starts with a header: send time (ns, from
``perf_counter_ns`` shifted to wall time), sequence number and phase
(warm-up or measured); the rest is padding up to the record size.
"""

from __future__ import annotations

import contextlib
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

HEADER = struct.Struct(">qIB")  # send wall time ns, sequence, phase
MIN_RECORD_SIZE = HEADER.size
WARMUP, MEASURED = 0, 1
CLIENT_LOG_LEVEL = 4  # librdkafka: warnings and worse
DRAIN_TIMEOUT_S = 60.0
_WALL_OFFSET_NS = time.time_ns() - time.perf_counter_ns()


def wall_ns() -> int:
    """Wall-clock nanoseconds with perf_counter's resolution and monotonicity."""
    return _WALL_OFFSET_NS + time.perf_counter_ns()


def make_value(size: int, seq: int, phase: int, padding: bytes) -> bytes:
    return HEADER.pack(wall_ns(), seq, phase) + padding[: size - HEADER.size]


def producer_config(bootstrap: str, linger_ms: int, **extra: Any) -> dict[str, Any]:
    return {"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": linger_ms,
            "log_level": CLIENT_LOG_LEVEL, **extra}


def consumer_config(bootstrap: str, **extra: Any) -> dict[str, Any]:
    return {"bootstrap.servers": bootstrap, "group.id": "keel-bench", "enable.auto.commit": False,
            "enable.partition.eof": False, "log_level": CLIENT_LOG_LEVEL, **extra}


def prepare_topic(bootstrap: str, topic: str, partitions: int, create: bool = True) -> int:
    """Create ``topic`` (or let the broker auto-create it) and return its partition count."""
    if create:
        admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": CLIENT_LOG_LEVEL})
        for future in admin.create_topics([NewTopic(topic, partitions, 1)], operation_timeout=30).values():
            future.result(timeout=30)
    probe = Producer(producer_config(bootstrap, 0))
    deadline = time.monotonic() + 30
    while True:
        meta = probe.list_topics(topic, timeout=10).topics.get(topic)
        if meta is not None and meta.error is None and meta.partitions:
            return len(meta.partitions)
        if time.monotonic() > deadline:
            raise RuntimeError(f"topic {topic} not available on {bootstrap}: {meta and meta.error}")
        time.sleep(0.1)


@dataclass
class Throughput:
    records: int
    bytes: int
    seconds: float
    errors: int = 0
    read: int = 0  # records read in all, timed or not (consume only)

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds

    @property
    def records_per_s(self) -> float:
        return self.records / self.seconds


@dataclass
class LatencyRun:
    """Latencies (seconds) of the measured records, plus what went wrong on the way."""

    latencies: list[float] = field(default_factory=list)
    sent: int = 0
    errors: int = 0
    missing: int = 0
    achieved_rate: float = 0.0
    first_error: str = ""


def _produce(producer: Producer, topic: str, value: bytes, on_delivery: Callable[..., None]) -> None:
    """produce(), waiting for room when the client's queue is full."""
    while True:
        try:
            producer.produce(topic, value, on_delivery=on_delivery)
            return
        except BufferError:
            producer.poll(0.005)


def _flush(producer: Producer, what: str) -> None:
    if producer.flush(DRAIN_TIMEOUT_S) > 0:
        raise RuntimeError(f"{what}: records still undelivered after {DRAIN_TIMEOUT_S:.0f} s")


def produce_throughput(bootstrap: str, topic: str, records: int, record_size: int,
                       linger_ms: int = 5) -> Throughput:
    """Send ``records`` values as fast as the client accepts them; time until the last ack."""
    producer = Producer(producer_config(bootstrap, linger_ms))
    padding = bytes(record_size)
    errors = [0]

    def delivered(err: Any, _msg: Message) -> None:
        if err is not None:
            errors[0] += 1

    _produce(producer, topic, make_value(record_size, 0, WARMUP, padding), delivered)
    _flush(producer, "throughput warm-up")
    value = make_value(record_size, 0, MEASURED, padding)  # content does not matter here
    start = time.perf_counter()
    for _ in range(records):
        _produce(producer, topic, value, delivered)
        producer.poll(0)
    _flush(producer, "produce throughput")
    elapsed = time.perf_counter() - start
    return Throughput(records, records * record_size, elapsed, errors[0])


def consume_throughput(bootstrap: str, topic: str, partitions: int) -> Throughput:
    """Read every record the broker still holds in ``topic``, from its log start to its end."""
    consumer = Consumer(consumer_config(bootstrap))
    try:
        consumer.list_topics(topic, timeout=10)  # a fresh client may not know the partitions yet
        assignment, expected = [], 0
        for p in range(partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            assignment.append(TopicPartition(topic, p, low))
            expected += high - low
        got = size = errors = 0
        first = last = 0.0
        first_got = first_size = 0
        consumer.assign(assignment)
        deadline = time.perf_counter() + DRAIN_TIMEOUT_S
        while got < expected and time.perf_counter() < deadline:
            # consume(n) returns early only once n records are there: never ask for more than remain.
            for msg in consumer.consume(num_messages=min(1000, expected - got), timeout=0.5):
                if msg.error() is not None:
                    errors += 1
                    continue
                got += 1
                size += len(msg.value() or b"")
            last = time.perf_counter()
            if not first and got:
                first, first_got, first_size = last, got, size
        # Timed from the first batch received (connection set-up is not read throughput),
        # so that batch's records are not counted either.
        timed = max(last - first, 1e-9)
        return Throughput(got - first_got, size - first_size, timed, errors + (expected - got), read=got)
    finally:
        consumer.close()


def _pace_until(producer: Producer, target: float) -> None:
    """Serve delivery reports until perf_counter() reaches ``target``.

    poll() blocks in whole milliseconds but returns at once when a report
    arrives, so reports are timed promptly without spinning a core (which
    on a small machine would starve the broker).  A send may leave up to
    1 ms late; the schedule is absolute, so the next ones catch up and the
    offered rate stays exact.
    """
    while True:
        remaining = target - time.perf_counter()
        if remaining <= 0.0001:
            return
        producer.poll(max(0.001, remaining - 0.0005))


def _paced_send(producer: Producer, topic: str, count: int, rate: float, record_size: int, phase: int,
                on_send: Callable[[int], Callable[..., None]]) -> float:
    """Send ``count`` records on a fixed schedule of ``rate`` per second; return the achieved rate."""
    padding = bytes(record_size)
    start = time.perf_counter()
    for seq in range(count):
        _pace_until(producer, start + seq / rate)
        callback = on_send(seq)
        _produce(producer, topic, make_value(record_size, seq, phase, padding), callback)
        producer.poll(0)
    elapsed = time.perf_counter() - start
    return (count - 1) / elapsed if count > 1 and elapsed > 0 else float(rate)


def produce_latency(bootstrap: str, topic: str, rate: float, count: int, record_size: int,
                    warmup: int) -> LatencyRun:
    """Ack latency (send → delivery report) of ``count`` records paced at ``rate``/s, linger.ms=0."""
    producer = Producer(producer_config(bootstrap, 0))
    run = LatencyRun()
    sent_at: dict[int, float] = {}

    def tracker(measured: bool) -> Callable[[int], Callable[..., None]]:
        def on_send(seq: int) -> Callable[..., None]:
            sent_at[seq] = time.perf_counter()
            return delivered if measured else warm_delivered
        return on_send

    def delivered(err: Any, msg: Message) -> None:
        now = time.perf_counter()
        if err is not None:
            run.errors += 1
            run.first_error = run.first_error or str(err)
            return
        _, seq, _ = HEADER.unpack_from(msg.value())
        run.latencies.append(now - sent_at[seq])

    def warm_delivered(err: Any, _msg: Message) -> None:
        if err is not None:
            run.first_error = run.first_error or str(err)

    _paced_send(producer, topic, warmup, rate, record_size, WARMUP, tracker(False))
    _flush(producer, "latency warm-up")
    sent_at.clear()
    run.achieved_rate = _paced_send(producer, topic, count, rate, record_size, MEASURED, tracker(True))
    run.sent = count
    _flush(producer, "produce latency")
    run.missing = count - len(run.latencies) - run.errors
    return run


class _Receiver(threading.Thread):
    """Consumes in the background and notes, per record, receipt time − send time."""

    def __init__(self, consumer: Consumer) -> None:
        super().__init__(name="bench-e2e-consumer", daemon=True)
        self.consumer = consumer
        self.stop = threading.Event()
        self.received: list[dict[int, int]] = [{}, {}]  # per phase: seq -> latency ns
        self.errors = 0
        self.first_error = ""

    def run(self) -> None:
        # poll(), not consume(n): consume() holds records back until n arrived or its timeout passed.
        while not self.stop.is_set():
            msg = self.consumer.poll(0.05)
            if msg is None:
                continue
            now = wall_ns()
            if msg.error() is not None:
                self.errors += 1
                self.first_error = self.first_error or str(msg.error())
                continue
            sent, seq, phase = HEADER.unpack_from(msg.value())
            self.received[phase].setdefault(seq, now - sent)

    def wait_for(self, phase: int, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while len(self.received[phase]) < count:
            if time.monotonic() > deadline or not self.is_alive():
                return False
            time.sleep(0.01)
        return True


def end_to_end_latency(bootstrap: str, topic: str, partitions: int, rate: float, count: int,
                       record_size: int, warmup: int, fetch_wait_max_ms: int | None = None) -> LatencyRun:
    """Send → consumer receipt of ``count`` records paced at ``rate``/s (linger.ms=0).

    The consumer is assigned every partition of a fresh topic from offset 0
    and warmed up first, so the measured records see a consumer already
    long-polling at the log end.  ``fetch_wait_max_ms`` overrides the
    client's long-poll wait (librdkafka default 500 ms).
    """
    extra = {} if fetch_wait_max_ms is None else {"fetch.wait.max.ms": fetch_wait_max_ms}
    consumer = Consumer(consumer_config(bootstrap, **extra))
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    receiver = _Receiver(consumer)
    receiver.start()
    producer = Producer(producer_config(bootstrap, 0))
    run = LatencyRun()

    def on_send(_seq: int) -> Callable[..., None]:
        return delivered

    def delivered(err: Any, _msg: Message) -> None:
        if err is not None:
            run.errors += 1
            run.first_error = run.first_error or str(err)

    try:
        _paced_send(producer, topic, warmup, rate, record_size, WARMUP, on_send)
        _flush(producer, "end-to-end warm-up")
        if not receiver.wait_for(WARMUP, warmup, DRAIN_TIMEOUT_S):
            raise RuntimeError(f"end-to-end warm-up: consumer got {len(receiver.received[WARMUP])} of "
                               f"{warmup} records ({receiver.first_error or 'no error reported'})")
        run.errors = 0
        run.achieved_rate = _paced_send(producer, topic, count, rate, record_size, MEASURED, on_send)
        run.sent = count
        _flush(producer, "end-to-end latency")
        receiver.wait_for(MEASURED, count - run.errors, DRAIN_TIMEOUT_S)
    finally:
        receiver.stop.set()
        receiver.join(10)
        with contextlib.suppress(KafkaException, RuntimeError):
            consumer.close()
    measured = receiver.received[MEASURED]
    run.latencies = [ns / 1e9 for ns in measured.values()]
    run.missing = count - run.errors - len(measured)
    run.errors += receiver.errors
    run.first_error = run.first_error or receiver.first_error
    return run
