"""The history of a chaos run, and the checker that judges it (in the spirit of Jepsen's Kafka tests).

Producers write unique values (``p<producer>-<seq>``) and record what happened
to each: acknowledged at (partition, offset), failed with an error, or never
answered.  Consumers record every (partition, offset, value) they saw along
the way.  Afterwards every partition is read from offset 0 to its high
watermark, and :func:`check` counts

* **lost** -- acknowledged, but not in the final read;
* **duplicated** -- one value at two or more offsets;
* **inconsistent** -- an acknowledged value read at another offset than the
  one acknowledged, two values acknowledged at one offset, an offset that two
  reads saw with different values (or that a consumer saw and the final read
  does not have), or a value nobody sent;
* **out_of_order** -- within one producer and one partition, values whose
  offsets do not increase in acknowledgement order;
* **gaps** -- missing offsets inside a partition (offsets must be dense);
* **lost_commits** -- a consumer-group offset commit that succeeded but is
  not reflected (at least) in the group's final committed offset;
* **unseen** -- sent, never acknowledged and never read (informational: an
  unacknowledged write may or may not have happened), and **recovered** --
  not acknowledged but read (also allowed).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition

MAX_EXAMPLES = 20
FAILURES = ("lost", "duplicated", "inconsistent", "out_of_order", "gaps", "lost_commits")

PRODUCER_CONFIG: dict[str, Any] = {
    "acks": "all",
    "enable.idempotence": True,
    "linger.ms": 5,
    "message.timeout.ms": 120_000,
    "request.timeout.ms": 5_000,  # a frozen broker must not hold the partition's queue for 30 s
    "retry.backoff.ms": 50,
    "retry.backoff.max.ms": 500,
    "reconnect.backoff.ms": 50,
    "reconnect.backoff.max.ms": 1000,
    "topic.metadata.refresh.interval.ms": 2000,
    "socket.connection.setup.timeout.ms": 3000,
    "log_level": 2,  # brokers come and go on purpose: no "connection refused" noise
}


# ---- the history -------------------------------------------------------------------------------


@dataclass(slots=True)
class Send:
    """One value a producer sent, and what became of it."""

    value: str
    producer: int
    seq: int
    partition: int
    sent_at: float
    acked_at: float | None = None
    ack_partition: int = -1
    ack_offset: int = -1
    ack_index: int = -1  # position among this producer's acknowledgements
    error: str | None = None

    @property
    def acked(self) -> bool:
        return self.acked_at is not None


@dataclass(slots=True)
class Read:
    """One record a reader saw."""

    reader: str
    partition: int
    offset: int
    value: str


class RecordingProducer:
    """An idempotent confluent-kafka producer (acks=all) that records every delivery report.

    Not thread-safe: one thread sends and polls (delivery reports arrive in ``poll``)."""

    def __init__(self, producer_id: int, bootstrap: str, topic: str, partitions: int,
                 config: Mapping[str, Any] | None = None) -> None:
        self.producer_id = producer_id
        self.topic = topic
        self.partitions = partitions
        self.sends: list[Send] = []
        self.client_errors: list[tuple[float, str]] = []
        self.fatal: str | None = None
        self._acks = 0
        settings = {**PRODUCER_CONFIG, "bootstrap.servers": bootstrap, "error_cb": self._on_error,
                    "client.id": f"chaos-p{producer_id}", **(config or {})}
        self.producer = Producer(settings)

    def _on_error(self, error: KafkaError) -> None:
        self.client_errors.append((time.monotonic(), f"{error.name()}: {error.str()}"))
        if error.fatal():
            self.fatal = f"{error.name()}: {error.str()}"

    def send(self, partition: int | None = None) -> Send:
        seq = len(self.sends)
        p = seq % self.partitions if partition is None else partition
        record = Send(f"p{self.producer_id}-{seq}", self.producer_id, seq, p, time.monotonic())
        self.sends.append(record)

        def report(err: KafkaError | None, msg: Any) -> None:
            if err is None:
                record.acked_at = time.monotonic()
                record.ack_partition = msg.partition()
                offset = msg.offset()  # None: librdkafka knows the write succeeded but not where
                record.ack_offset = -1 if offset is None else offset
                record.ack_index = self._acks
                self._acks += 1
            else:
                record.error = f"{err.name()}: {err.str()}"

        while True:
            try:
                self.producer.produce(self.topic, record.value.encode(), partition=p, on_delivery=report)
                return record
            except BufferError:  # local queue full: let delivery reports drain it
                self.poll(0.05)
            except KafkaException as exc:  # the producer is unusable (a fatal error happened)
                self._failed(exc)
                record.error = f"not sent: {exc.args[0].str()}"
                return record

    def _failed(self, exc: KafkaException) -> None:
        error = exc.args[0]
        self.fatal = self.fatal or f"{error.name()}: {error.str()}"

    def poll(self, timeout: float = 0.0) -> int:
        """Serves delivery reports; a fatal error (which confluent-kafka raises here) is recorded in ``fatal``."""
        try:
            return self.producer.poll(timeout)
        except KafkaException as exc:
            self._failed(exc)
            return 0

    def flush(self, timeout: float) -> int:
        """Waits up to ``timeout`` s for outstanding deliveries; returns how many are still unanswered."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.producer.flush(max(0.0, deadline - time.monotonic()))
            except KafkaException as exc:
                self._failed(exc)
                if time.monotonic() >= deadline:
                    return len(self.producer)

    @property
    def acked(self) -> int:
        return self._acks


# ---- reading everything back -------------------------------------------------------------------


@dataclass
class FinalRead:
    records: dict[int, list[tuple[int, str]]]  # partition -> [(offset, value)] in offset order
    high_watermarks: dict[int, int]
    low_watermarks: dict[int, int]
    # Partitions that could not be read to their high watermark in time: {partition: (reached, target)}
    # (target -1: not even the watermarks could be read).  Their missing records count as lost.
    incomplete: dict[int, tuple[int, int]] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)  # the last error each unreadable partition gave
    leaders: dict[int, int] = field(default_factory=dict)  # the leaders Metadata named when the read ended


def read_back(bootstrap: str, topic: str, partitions: int, timeout: float = 120.0) -> FinalRead:
    """Reads every partition from its first offset up to the high watermark seen at the start.

    A partition that stays unreadable (no leader, a fetch error) until ``timeout`` is reported in
    ``incomplete`` rather than failing the whole read."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"chaos-checker-{time.time_ns()}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest",
                         "enable.partition.eof": True, "fetch.max.bytes": 8 * 1024 * 1024, "log_level": 2})
    lows: dict[int, int] = {}
    highs: dict[int, int] = {}
    incomplete: dict[int, tuple[int, int]] = {}
    records: dict[int, list[tuple[int, str]]] = {p: [] for p in range(partitions)}
    errors: dict[int, str] = {}
    try:
        # All partitions in turn, so that one without watermarks does not use up the others' time.
        deadline = time.monotonic() + timeout
        missing = set(range(partitions))
        while missing:
            for p in sorted(missing):
                try:
                    lows[p], highs[p] = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5)
                    missing.discard(p)
                except KafkaException as exc:
                    errors[p] = str(exc)
            if missing and time.monotonic() > deadline:
                for p in missing:
                    incomplete[p] = (0, -1)
                    lows[p] = highs[p] = 0
                break
            if missing:
                time.sleep(0.2)
        deadline = time.monotonic() + timeout  # the read of the readable partitions gets its own time
        readable = [p for p in range(partitions) if p not in incomplete]
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in readable])
        pending = {p for p in readable if highs[p] > lows[p]}
        position = {p: lows[p] for p in range(partitions)}
        while pending and time.monotonic() < deadline:
            for msg in consumer.consume(1000, 1.0):
                if msg.error() is not None:
                    if msg.partition() is not None and msg.error().code() != KafkaError._PARTITION_EOF:
                        errors[msg.partition()] = msg.error().str()
                    continue  # EOF markers and transient errors: the loop condition decides
                p, offset = msg.partition(), msg.offset()
                if offset < highs[p]:
                    records[p].append((offset, msg.value().decode(errors="replace")))
                position[p] = max(position[p], offset + 1)
                if position[p] >= highs[p]:
                    pending.discard(p)
        for p in pending:
            incomplete[p] = (position[p], highs[p])
        leaders: dict[int, int] = {}
        if incomplete:
            with contextlib.suppress(KafkaException):
                meta = consumer.list_topics(topic, timeout=10).topics[topic]
                leaders = {p: part.leader for p, part in meta.partitions.items()}
        return FinalRead(records, highs, lows, incomplete, {p: errors.get(p, "") for p in incomplete}, leaders)
    finally:
        consumer.close()


# ---- the verdict -------------------------------------------------------------------------------


@dataclass
class Verdict:
    sent: int = 0
    acked: int = 0
    failed: int = 0  # delivery reports with an error
    read: int = 0  # records in the final read
    lost: int = 0
    duplicated: int = 0
    inconsistent: int = 0
    out_of_order: int = 0
    gaps: int = 0
    lost_commits: int = 0
    unseen: int = 0
    recovered: int = 0
    acked_without_offset: int = 0  # success reported without an offset (informational)
    unreadable: int = 0  # partitions not readable to their end (their acknowledged records count as lost)
    examples: dict[str, list[Any]] = field(default_factory=dict)

    def note(self, kind: str, example: Any) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        examples = self.examples.setdefault(kind, [])
        if len(examples) < MAX_EXAMPLES:
            examples.append(example)

    @property
    def ok(self) -> bool:
        return all(getattr(self, kind) == 0 for kind in FAILURES)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        return out


def check(sends: Iterable[Send], final: FinalRead, reads: Iterable[Read] = (), origin: float = 0.0) -> Verdict:
    """Judges a history; ``origin`` (monotonic) makes the times in examples relative to the run's start."""
    verdict = Verdict()
    sent = {s.value: s for s in sends}
    verdict.sent = len(sent)
    verdict.read = sum(len(r) for r in final.records.values())
    verdict.unreadable = len(final.incomplete)

    # Where the final read found each value, and what it holds at each offset.
    found: dict[str, list[tuple[int, int]]] = defaultdict(list)
    at: dict[tuple[int, int], str] = {}
    for p, rows in final.records.items():
        previous = None
        for offset, value in rows:
            if (p, offset) in at:  # a consumer should never deliver an offset twice; count it anyway
                verdict.note("inconsistent", {"why": "offset read twice", "partition": p, "offset": offset})
                continue
            at[(p, offset)] = value
            found[value].append((p, offset))
            if value not in sent:
                verdict.note("inconsistent", {"why": "value nobody sent", "partition": p, "offset": offset,
                                              "value": value})
            start = final.low_watermarks.get(p, 0) if previous is None else previous + 1
            if offset != start:
                verdict.note("gaps", {"partition": p, "expected": start, "got": offset})
            previous = offset

    for value, places in found.items():
        if len(places) > 1:
            verdict.note("duplicated", {"value": value, "at": places})

    acked_at: dict[tuple[int, int], str] = {}
    for s in sent.values():
        if s.acked:
            verdict.acked += 1
            place = (s.ack_partition, s.ack_offset)
            if s.ack_offset < 0:
                verdict.acked_without_offset += 1
            elif acked_at.setdefault(place, s.value) != s.value:
                verdict.note("inconsistent", {"why": "two values acknowledged at one offset", "at": place,
                                              "values": [acked_at[place], s.value],
                                              "acked_s": round(s.acked_at - origin, 3)})
            if s.value not in found:
                verdict.note("lost", {"value": s.value, "acked_at": place, "sent_s": round(s.sent_at - origin, 3),
                                      "acked_s": round(s.acked_at - origin, 3)})
            elif s.ack_offset >= 0 and place not in found[s.value]:
                verdict.note("inconsistent", {"why": "read at another offset than acknowledged",
                                              "value": s.value, "acked_at": place, "read_at": found[s.value]})
        else:
            if s.error is not None:
                verdict.failed += 1
            if s.value in found:
                verdict.recovered += 1
            else:
                verdict.unseen += 1

    for r in reads:
        if r.partition in final.incomplete and r.offset >= final.incomplete[r.partition][0]:
            continue  # the final read never got there: nothing to compare with
        final_value = at.get((r.partition, r.offset))
        if final_value != r.value:
            verdict.note("inconsistent", {"why": "reads disagree", "reader": r.reader, "partition": r.partition,
                                          "offset": r.offset, "saw": r.value, "final": final_value})

    _check_order(sent.values(), found, verdict)
    return verdict


def _check_order(sends: Iterable[Send], found: Mapping[str, list[tuple[int, int]]], verdict: Verdict) -> None:
    """Per producer and partition, acknowledged values must sit at increasing offsets in ack order."""
    streams: dict[tuple[int, int], list[Send]] = defaultdict(list)
    for s in sends:
        if s.acked:
            streams[(s.producer, s.ack_partition)].append(s)
    for (producer, partition), stream in streams.items():
        stream.sort(key=lambda s: s.ack_index)
        last_acked = last_read = -1
        for s in stream:
            if 0 <= s.ack_offset <= last_acked:
                verdict.note("out_of_order", {"why": "acknowledged offsets go backwards", "producer": producer,
                                              "partition": partition, "value": s.value, "offset": s.ack_offset,
                                              "after": last_acked})
            last_acked = max(last_acked, s.ack_offset)
            places = [o for p, o in found.get(s.value, ()) if p == partition]
            if places:
                offset = min(places)
                if offset <= last_read:
                    verdict.note("out_of_order", {"why": "read offsets go backwards", "producer": producer,
                                                  "partition": partition, "value": s.value, "offset": offset,
                                                  "after": last_read})
                last_read = max(last_read, offset)


def check_commits(verdict: Verdict, committed: Mapping[int, int], final_committed: Mapping[int, int]) -> None:
    """``committed``: the highest offset per partition whose commit the group consumer saw succeed;
    ``final_committed``: the group's committed offsets read afterwards.  A lower final offset means a
    commit was lost."""
    for p, offset in committed.items():
        final_offset = final_committed.get(p, -1)
        if final_offset < offset:
            verdict.note("lost_commits", {"partition": p, "committed": offset, "final": final_offset})


def summary(verdict: Verdict, faults: int) -> str:
    return (f"chaos: {faults} faults, {verdict.acked} acked, lost={verdict.lost} duplicated={verdict.duplicated} "
            f"inconsistent={verdict.inconsistent} out_of_order={verdict.out_of_order} gaps={verdict.gaps} "
            f"lost_commits={verdict.lost_commits} unseen={verdict.unseen}"
            + (f" unreadable_partitions={verdict.unreadable}" if verdict.unreadable else ""))


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]

