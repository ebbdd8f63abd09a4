"""Client workloads, driven by confluent-kafka, that any Kafka-compatible broker can run.

Each function takes a bootstrap address and returns raw samples, so the
same code measures Keel and the baseline mock cluster.  Conventions
(docs/benchmarks.md): ``acks=all``; ``linger.ms=0`` for latency workloads,
``linger.ms=5`` for throughput; rates are paced against a fixed schedule,
so a slow broker does not lower the offered load (no coordinated omission).

A phase can write to several topics with several producers and read with
several consumers per topic.  Each client is its own confluent-kafka
instance in its own thread of this process: librdkafka does the network
I/O in its own threads and releases the GIL while it waits, so the Python
threads only share the GIL for the per-record calls and callbacks.  Records
get keys from a :class:`Keys` distribution.  Producers and consumers count
what they see in :class:`Meter` cells (one per thread, no lock), which
bench/monitor.py samples for the throughput-over-time series.

Every record's value starts with a header: send time (ns, from
``perf_counter_ns`` shifted to wall time), producer index, sequence number
and phase (warm-up or measured); the rest is padding up to the record size.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import random
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

HEADER = struct.Struct(">qHIB")  # send wall time ns, producer index, sequence, phase
MIN_RECORD_SIZE = HEADER.size
WARMUP, MEASURED = 0, 1
CLIENT_LOG_LEVEL = 4  # librdkafka: warnings and worse
DRAIN_TIMEOUT_S = 60.0
START_TIMEOUT_S = 120.0  # clients of a phase waiting for each other to be ready (a warm-up included)
KEY_DISTRIBUTIONS = ("none", "round-robin", "random", "zipf")
ZIPF_EXPONENT = 1.0
# Latency phases at max rate (rate 0): each producer's client queue holds at most this many records, so a
# send waits for room (a closed loop) instead of queueing for seconds; the latency then is a steady state.
MAX_RATE_QUEUE = 1000
POLL_EVERY = 64  # max-rate loops serve delivery reports every this many records (fewer GIL hand-offs)
KEY_DRAWS = 1 << 16  # random and zipf keys: drawn once per producer, then cycled
_WALL_OFFSET_NS = time.time_ns() - time.perf_counter_ns()
_T = TypeVar("_T")
Topics = str | Sequence[str]


def wall_ns() -> int:
    """Wall-clock nanoseconds with perf_counter's resolution and monotonicity."""
    return _WALL_OFFSET_NS + time.perf_counter_ns()


def make_value(size: int, producer: int, seq: int, phase: int, padding: bytes) -> bytes:
    return HEADER.pack(wall_ns(), producer, seq, phase) + padding[: size - HEADER.size]


def producer_config(bootstrap: str, linger_ms: int, **extra: Any) -> dict[str, Any]:
    return {"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": linger_ms,
            "log_level": CLIENT_LOG_LEVEL, **extra}


# librdkafka stops fetching a partition for fetch.queue.backoff.ms (1 s by default) once its local queue
# holds queued.min.messages (100,000) records: a reader faster than the Python loop that drains it then
# sits idle for a second.  One such pause made a 300 MB catch-up read at 200 MB/s instead of 600 (the
# Fetch the broker answered in 0.3 ms, then no request for 1,002 ms).  The throughput phases measure the
# broker, so they poll the queue again after 10 ms, the mock baseline included.
CATCHUP_QUEUE_BACKOFF_MS = 10


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


@dataclass(frozen=True)
class Keys:
    """Which key each record gets.

    ``none``: no key (the client's partitioner spreads keyless records).
    ``round-robin``: the ``count`` keys in turn, each producer starting at its
    own index. ``random``: uniform over the ``count`` keys. ``zipf``: key of
    rank r (1 = hottest) with probability proportional to 1/r, a few hot keys
    and a long tail. Keys are ``key-<8 digits>`` (12 bytes); the draws are
    seeded, so a workload sends the same keys in every run.
    """

    distribution: str = "none"
    count: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.distribution not in KEY_DISTRIBUTIONS:
            raise ValueError(f"key distribution {self.distribution!r} is not one of {', '.join(KEY_DISTRIBUTIONS)}")
        if self.count < 1:
            raise ValueError("the key count must be at least 1")

    @staticmethod
    def name(index: int) -> bytes:
        return b"key-%08d" % index

    def stream(self, producer: int) -> Iterator[bytes | None]:
        """The endless key sequence of producer number ``producer``."""
        if self.distribution == "none":
            return itertools.repeat(None)
        names = [self.name(i) for i in range(self.count)]
        if self.distribution == "round-robin":
            start = producer % self.count
            return itertools.cycle(names[start:] + names[:start])
        rng = random.Random(self.seed * 1_000_003 + producer)
        weights = None
        if self.distribution == "zipf":
            weights = [1.0 / rank ** ZIPF_EXPONENT for rank in range(1, self.count + 1)]
        return itertools.cycle(rng.choices(names, weights=weights, k=KEY_DRAWS))


class Meter:
    """Records counted by any number of threads without a lock: each thread increments its own cell."""

    def __init__(self) -> None:
        self._cells: list[list[int]] = []
        self._lock = threading.Lock()
        self.expected = 0  # records the phase will count in all, when known (0: not known)

    def cell(self) -> list[int]:
        cell = [0]
        with self._lock:
            self._cells.append(cell)
        return cell

    def expect(self, records: int) -> None:
        with self._lock:
            self.expected += records

    def total(self) -> int:
        with self._lock:
            cells = list(self._cells)
        return sum(c[0] for c in cells)


class Meters:
    """The counters of one phase: records acknowledged to producers and records received by consumers.

    ``begin()`` marks when the measured part of the phase starts (after warm-up
    and client set-up); the throughput-over-time series is timed from there.
    """

    def __init__(self) -> None:
        self.produced = Meter()
        self.consumed = Meter()
        self.started = threading.Event()
        self.t0 = 0.0

    def begin(self) -> None:
        if not self.started.is_set():
            self.t0 = time.perf_counter()
            self.started.set()


@dataclass(frozen=True)
class Schedule:
    """What a phase sends: ``count`` records, or for ``seconds`` (whichever ends first), at ``rate``/s in all.

    A rate of 0 sends as fast as the client accepts records.
    """

    rate: float
    count: int | None = None
    seconds: float | None = None

    def share(self, index: int, of: int) -> Schedule:
        """The part producer ``index`` of ``of`` sends: 1/of of the rate and of the records."""
        count = None if self.count is None else self.count // of + (1 if index < self.count % of else 0)
        return Schedule(self.rate / of, count, self.seconds)


@dataclass
class Throughput:
    records: int
    bytes: int
    seconds: float
    errors: int = 0
    read: int = 0  # records read in all, timed or not (consume only)
    latencies: list[float] = field(default_factory=list)  # produce only: produce() -> ack, seconds, per record

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
    keys: Counter[bytes | None] = field(default_factory=Counter)  # e2e: measured records received per key


def _topic_list(topics: Topics) -> list[str]:
    return [topics] if isinstance(topics, str) else list(topics)


def _run_parallel(name: str, jobs: Sequence[Callable[[], _T]],
                  barriers: Sequence[threading.Barrier] = ()) -> list[_T]:
    """Run each job in a thread of its own and return their results; re-raise the first failure.

    Jobs line up on ``barriers`` so that they start measuring together; a job
    that fails breaks them, so the others stop waiting.
    """
    if len(jobs) == 1:
        return [jobs[0]()]
    results: list[Any] = [None] * len(jobs)
    errors: list[BaseException | None] = [None] * len(jobs)

    def work(i: int) -> None:
        try:
            results[i] = jobs[i]()
        except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
            errors[i] = exc
            for barrier in barriers:
                barrier.abort()

    threads = [threading.Thread(target=work, args=(i,), name=f"{name}-{i}", daemon=True) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    failures = [e for e in errors if e is not None]
    if failures:
        raise next((e for e in failures if not isinstance(e, threading.BrokenBarrierError)), failures[0])
    return results


def _produce(producer: Producer, topic: str, value: bytes, key: bytes | None,
             on_delivery: Callable[..., None]) -> None:
    """produce(), waiting for room when the client's queue is full."""
    while True:
        try:
            producer.produce(topic, value, key, on_delivery=on_delivery)
            return
        except BufferError:
            producer.poll(0.005)


def _flush(producer: Producer, what: str) -> None:
    if producer.flush(DRAIN_TIMEOUT_S) > 0:
        raise RuntimeError(f"{what}: records still undelivered after {DRAIN_TIMEOUT_S:.0f} s")


def produce_throughput(bootstrap: str, topics: Topics, records: int, record_size: int, linger_ms: int = 5, *,
                       producers_per_topic: int = 1, keys: Keys | None = None,
                       meters: Meters | None = None) -> Throughput:
    """Send ``records`` values in all as fast as the clients accept them; time until the last ack.

    The records are shared evenly by ``producers_per_topic`` producers on each
    topic; timed from the moment they all start until the last one's last ack.
    """
    names, keys, meters = _topic_list(topics), keys or Keys(), meters or Meters()
    clients = len(names) * producers_per_topic
    go = threading.Barrier(clients, action=meters.begin, timeout=START_TIMEOUT_S)
    meters.produced.expect(records)
    padding = bytes(record_size)
    value = make_value(record_size, 0, 0, MEASURED, padding)  # content does not matter here

    latencies: list[list[float]] = [[] for _ in range(clients)]

    def job(index: int) -> Callable[[], tuple[float, float, int]]:
        topic, share = names[index % len(names)], Schedule(0, records).share(index, clients).count or 0

        def run() -> tuple[float, float, int]:
            producer = Producer(producer_config(bootstrap, linger_ms))
            errors, acked = [0], meters.produced.cell()
            key_of = keys.stream(index)
            record_latency = latencies[index].append

            def delivered(err: Any, msg: Message) -> None:
                if err is None:
                    acked[0] += 1
                    record_latency(msg.latency())  # librdkafka's own produce() -> ack time
                else:
                    errors[0] += 1

            def warm_delivered(err: Any, _msg: Message) -> None:
                if err is not None:
                    errors[0] += 1

            _produce(producer, topic, make_value(record_size, index, 0, WARMUP, padding), next(key_of),
                     warm_delivered)
            _flush(producer, "throughput warm-up")
            go.wait()
            start = time.perf_counter()
            for i in range(share):
                _produce(producer, topic, value, next(key_of), delivered)
                if i % POLL_EVERY == 0:
                    producer.poll(0)
            _flush(producer, "produce throughput")
            return start, time.perf_counter(), errors[0]

        return run

    out = _run_parallel("bench-producer", [job(i) for i in range(clients)], [go])
    elapsed = max(end for _, end, _ in out) - min(start for start, _, _ in out)
    return Throughput(records, records * record_size, elapsed, sum(e for _, _, e in out),
                      latencies=[x for per_client in latencies for x in per_client if x is not None])


@dataclass
class _Read:
    """One consumer's catch-up read: its first batch (not timed), its last receipt, what it got."""

    first: float = 0.0
    first_got: int = 0
    first_size: int = 0
    last: float = 0.0
    got: int = 0
    size: int = 0
    errors: int = 0
    expected: int = 0


def _assignments(topics: Sequence[str], partitions: int, consumers_per_topic: int) -> list[tuple[str, list[int]]]:
    """Partitions of each topic dealt out to its consumers (p mod consumers); a consumer without one is left out."""
    return [(topic, list(range(j, partitions, consumers_per_topic)))
            for topic in topics for j in range(min(consumers_per_topic, partitions))]


def consume_throughput(bootstrap: str, topics: Topics, partitions: int, *, consumers_per_topic: int = 1,
                       meters: Meters | None = None) -> Throughput:
    """Read every record the broker still holds in ``topics``, from each partition's log start to its end."""
    meters = meters or Meters()
    plan = _assignments(_topic_list(topics), partitions, consumers_per_topic)
    go = threading.Barrier(len(plan), action=meters.begin, timeout=START_TIMEOUT_S)

    def job(topic: str, parts: list[int]) -> Callable[[], _Read]:
        def run() -> _Read:
            consumer = Consumer(consumer_config(bootstrap, **{"fetch.queue.backoff.ms": CATCHUP_QUEUE_BACKOFF_MS}))
            try:
                consumer.list_topics(topic, timeout=10)  # a fresh client may not know the partitions yet
                assignment, r = [], _Read()
                for p in parts:
                    low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                    assignment.append(TopicPartition(topic, p, low))
                    r.expected += high - low
                meters.consumed.expect(r.expected)
                cell = meters.consumed.cell()
                go.wait()
                consumer.assign(assignment)
                deadline = time.perf_counter() + DRAIN_TIMEOUT_S
                while r.got < r.expected and time.perf_counter() < deadline:
                    # consume(n) returns early only once n records are there: never ask for more than remain.
                    got = 0
                    for msg in consumer.consume(num_messages=min(1000, r.expected - r.got), timeout=0.5):
                        if msg.error() is not None:
                            r.errors += 1
                            continue
                        got += 1
                        r.size += len(msg.value() or b"")
                    r.got += got
                    cell[0] += got
                    r.last = time.perf_counter()
                    if not r.first and r.got:
                        r.first, r.first_got, r.first_size = r.last, r.got, r.size
                return r
            finally:
                consumer.close()

        return run

    reads = _run_parallel("bench-consumer", [job(t, parts) for t, parts in plan], [go])
    started = [r for r in reads if r.got]
    got, size = sum(r.got for r in reads), sum(r.size for r in reads)
    errors = sum(r.errors + r.expected - r.got for r in reads)
    if not started:
        return Throughput(0, 0, 1e-9, errors, read=0)
    # Timed from the first batch received (connection set-up is not read throughput), so that batch's
    # records are not counted either; other consumers' first batches came later, inside the window.
    first = min(started, key=lambda r: r.first)
    timed = max(max(r.last for r in started) - first.first, 1e-9)
    return Throughput(got - first.first_got, size - first.first_size, timed, errors, read=got)


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


def _paced_send(producer: Producer, topic: str, schedule: Schedule, record_size: int, phase: int, index: int,
                key_of: Iterator[bytes | None], on_send: Callable[[int], Callable[..., None]]) -> tuple[int, float]:
    """Send on ``schedule`` (a fixed timetable, or flat out at rate 0); return (records sent, achieved rate)."""
    padding = bytes(record_size)
    rate = schedule.rate
    limit = math.inf if schedule.count is None else schedule.count
    start = time.perf_counter()
    deadline = math.inf if schedule.seconds is None else start + schedule.seconds
    seq = 0
    while seq < limit:
        if rate > 0:
            due = start + seq / rate
            if due >= deadline:
                break
            _pace_until(producer, due)
        elif time.perf_counter() >= deadline:
            break
        callback = on_send(seq)
        _produce(producer, topic, make_value(record_size, index, seq, phase, padding), next(key_of), callback)
        producer.poll(0)
        seq += 1
    elapsed = time.perf_counter() - start
    return seq, ((seq - 1) / elapsed if seq > 1 and elapsed > 0 else float(rate))


class _Sender:
    """One producer of a latency phase (``linger.ms=0``): its client, its keys and its delivery reports.

    With ``track_acks`` it notes each measured record's send → delivery-report time.
    """

    def __init__(self, bootstrap: str, topic: str, index: int, keys: Keys, meter: Meter, track_acks: bool,
                 max_rate: bool, config: dict[str, Any] | None = None) -> None:
        extra = {"queue.buffering.max.messages": MAX_RATE_QUEUE} if max_rate else {}
        self.producer = Producer(producer_config(bootstrap, 0, **extra, **(config or {})))
        self.topic, self.index, self.track = topic, index, track_acks
        self.key_of = keys.stream(index)
        self.acked = meter.cell()
        self.run = LatencyRun()
        self.warm_errors = 0
        self.sent_at: dict[int, float] = {}

    def _on_send(self, measured: bool) -> Callable[[int], Callable[..., None]]:
        callback = self._delivered if measured else self._warm_delivered
        if not self.track:
            return lambda _seq: callback

        def on_send(seq: int) -> Callable[..., None]:
            self.sent_at[seq] = time.perf_counter()
            return callback
        return on_send

    def _delivered(self, err: Any, msg: Message) -> None:
        now = time.perf_counter()
        sent = self.sent_at.pop(HEADER.unpack_from(msg.value())[2], 0.0) if self.track else 0.0
        if err is not None:
            self.run.errors += 1
            self.run.first_error = self.run.first_error or str(err)
            return
        self.acked[0] += 1
        if self.track:
            self.run.latencies.append(now - sent)

    def _warm_delivered(self, err: Any, _msg: Message) -> None:
        if err is not None:
            self.warm_errors += 1
            self.run.first_error = self.run.first_error or str(err)

    def warm_up(self, schedule: Schedule, record_size: int, what: str) -> int:
        """Send the unmeasured warm-up records; return how many arrived."""
        sent, _ = _paced_send(self.producer, self.topic, schedule, record_size, WARMUP, self.index, self.key_of,
                              self._on_send(False))
        _flush(self.producer, f"{what} warm-up")
        self.sent_at.clear()
        return sent - self.warm_errors

    def measure(self, schedule: Schedule, record_size: int, what: str) -> LatencyRun:
        self.run.sent, self.run.achieved_rate = _paced_send(
            self.producer, self.topic, schedule, record_size, MEASURED, self.index, self.key_of,
            self._on_send(True))
        _flush(self.producer, what)
        return self.run


def _merge(runs: Sequence[LatencyRun]) -> LatencyRun:
    out = LatencyRun()
    for r in runs:
        out.latencies += r.latencies
        out.sent += r.sent
        out.errors += r.errors
        out.missing += r.missing
        out.achieved_rate += r.achieved_rate
        out.first_error = out.first_error or r.first_error
        out.keys.update(r.keys)
    return out


def _schedules(rate: float, count: int | None, seconds: float | None, warmup: int | None,
               warmup_seconds: float | None) -> tuple[Schedule, Schedule]:
    """The measured and the warm-up schedule of a latency phase (no warm-up when neither bound is given)."""
    if count is None and seconds is None:
        raise ValueError("a latency phase needs a record count or a duration")
    if warmup is None and warmup_seconds is None:
        warmup = 0
    return Schedule(rate, count, seconds), Schedule(rate, warmup, warmup_seconds)


def produce_latency(bootstrap: str, topics: Topics, rate: float, count: int | None, record_size: int,
                    warmup: int | None, *, seconds: float | None = None, warmup_seconds: float | None = None,
                    producers_per_topic: int = 1, keys: Keys | None = None,
                    meters: Meters | None = None, producer: dict[str, Any] | None = None) -> LatencyRun:
    """Ack latency (send → delivery report) of ``count`` records paced at ``rate``/s in all, linger.ms=0.

    ``seconds`` bounds the measured part by time instead (or as well): with
    ``rate`` 0 the producers send flat out for that long, each keeping at most
    :data:`MAX_RATE_QUEUE` records unacknowledged.  ``warmup`` records
    (or ``warmup_seconds``) go first, unmeasured.  ``producer`` adds client
    settings (such as ``enable.idempotence``).
    """
    names, keys, meters = _topic_list(topics), keys or Keys(), meters or Meters()
    clients = len(names) * producers_per_topic
    measured, warm = _schedules(rate, count, seconds, warmup, warmup_seconds)
    if count is not None:
        meters.produced.expect(count)
    senders = [_Sender(bootstrap, names[i % len(names)], i, keys, meters.produced, True, rate <= 0, producer)
               for i in range(clients)]
    ready = threading.Barrier(clients, timeout=START_TIMEOUT_S)
    go = threading.Barrier(clients, action=meters.begin, timeout=START_TIMEOUT_S)

    def job(s: _Sender) -> Callable[[], LatencyRun]:
        def run() -> LatencyRun:
            ready.wait()
            s.warm_up(warm.share(s.index, clients), record_size, "latency")
            go.wait()
            r = s.measure(measured.share(s.index, clients), record_size, "produce latency")
            r.missing = r.sent - len(r.latencies) - r.errors
            return r
        return run

    return _merge(_run_parallel("bench-producer", [job(s) for s in senders], [ready, go]))


class _Receiver(threading.Thread):
    """Consumes in the background and notes, per record, receipt time − send time."""

    def __init__(self, consumer: Consumer, meter: Meter) -> None:
        super().__init__(name="bench-e2e-consumer", daemon=True)
        self.consumer = consumer
        self.cell = meter.cell()
        self.stop = threading.Event()
        self.received: list[dict[int, int]] = [{}, {}]  # per phase: producer << 32 | seq -> latency ns
        self.keys: Counter[bytes | None] = Counter()  # measured records per key
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
            sent, producer, seq, phase = HEADER.unpack_from(msg.value())
            self.received[phase].setdefault(producer << 32 | seq, now - sent)
            if phase == MEASURED:
                self.cell[0] += 1
                self.keys[msg.key()] += 1


def _wait_for(receivers: Sequence[_Receiver], phase: int, count: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while sum(len(r.received[phase]) for r in receivers) < count:
        if time.monotonic() > deadline or not all(r.is_alive() for r in receivers):
            return False
        time.sleep(0.01)
    return True


def end_to_end_latency(bootstrap: str, topics: Topics, partitions: int, rate: float, count: int | None,
                       record_size: int, warmup: int | None, fetch_wait_max_ms: int | None = None, *,
                       seconds: float | None = None, warmup_seconds: float | None = None,
                       producers_per_topic: int = 1, consumers_per_topic: int = 1, keys: Keys | None = None,
                       meters: Meters | None = None) -> LatencyRun:
    """Send → consumer receipt of ``count`` records paced at ``rate``/s in all (linger.ms=0).

    The consumers share each topic's partitions (assigned from offset 0 of a
    fresh topic) and are warmed up first, so the measured records see
    consumers already long-polling at the log end.  ``fetch_wait_max_ms``
    overrides the client's long-poll wait (librdkafka default 500 ms).
    ``seconds``, ``warmup_seconds`` and rate 0 as in :func:`produce_latency`.
    """
    names, keys, meters = _topic_list(topics), keys or Keys(), meters or Meters()
    extra = {} if fetch_wait_max_ms is None else {"fetch.wait.max.ms": fetch_wait_max_ms}
    receivers = []
    for topic, parts in _assignments(names, partitions, consumers_per_topic):
        consumer = Consumer(consumer_config(bootstrap, **extra))
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        receivers.append(_Receiver(consumer, meters.consumed))
    for receiver in receivers:
        receiver.start()
    clients = len(names) * producers_per_topic
    measured, warm = _schedules(rate, count, seconds, warmup, warmup_seconds)
    if count is not None:
        meters.produced.expect(count)
        meters.consumed.expect(count)
    try:
        senders = [_Sender(bootstrap, names[i % len(names)], i, keys, meters.produced, False, rate <= 0)
                   for i in range(clients)]
        warmed = sum(_run_parallel("bench-producer", [
            (lambda s=s: s.warm_up(warm.share(s.index, clients), record_size, "end-to-end")) for s in senders]))
        if not _wait_for(receivers, WARMUP, warmed, DRAIN_TIMEOUT_S):
            got = sum(len(r.received[WARMUP]) for r in receivers)
            first_error = next((r.first_error for r in receivers if r.first_error), "no error reported")
            raise RuntimeError(f"end-to-end warm-up: consumers got {got} of {warmed} records ({first_error})")
        go = threading.Barrier(clients, action=meters.begin, timeout=START_TIMEOUT_S)

        def job(s: _Sender) -> Callable[[], LatencyRun]:
            def run() -> LatencyRun:
                go.wait()
                return s.measure(measured.share(s.index, clients), record_size, "end-to-end latency")
            return run

        run = _merge(_run_parallel("bench-producer", [job(s) for s in senders], [go]))
        _wait_for(receivers, MEASURED, run.sent - run.errors, DRAIN_TIMEOUT_S)
    finally:
        for receiver in receivers:
            receiver.stop.set()
        for receiver in receivers:
            receiver.join(10)
            with contextlib.suppress(KafkaException, RuntimeError):
                receiver.consumer.close()
    run.latencies = [ns / 1e9 for r in receivers for ns in r.received[MEASURED].values()]
    run.missing = run.sent - run.errors - len(run.latencies)
    run.errors += sum(r.errors for r in receivers)
    run.first_error = run.first_error or next((r.first_error for r in receivers if r.first_error), "")
    for r in receivers:
        run.keys.update(r.keys)
    return run
