"""The chaos runner: a Keel cluster under faults while idempotent producers and consumers keep going.

    python -m tests.chaos.run --duration 900 --faults 200 --brokers 3 --store seaweedfs \\
        --report bench/results/chaos.json

Brokers run as processes on 127.0.0.1 over one shared store: SeaweedFS behind
the fault proxy (``--store seaweedfs``), or a shared local directory
(``--store local``, no proxy).  Idempotent producers (acks=all) write unique
values to a multi-partition topic and record every acknowledgement and error;
a consumer reads along (assigned to every partition) and a consumer group
member reads and commits.  Every few seconds the scheduler injects one fault:

* ``kill``    -- kill -9 a random broker; it is restarted a few seconds later;
* ``freeze``  -- SIGSTOP a broker that leads partitions for longer than its
  lease, so its partitions move, then SIGCONT it;
* ``store``   -- object-store latency, 503 SlowDown, or 503 after the write
  landed, for a few seconds (SeaweedFS only);
* ``add``     -- start a new broker;
* ``remove``  -- SIGTERM a broker (graceful hand-over); it does not come back.

The run ends when ``--duration`` seconds have passed or ``--faults`` faults
were injected, whichever comes first.  Then everything is healed, producers
drain, every partition is read back from offset 0, and the checker
(``tests/chaos/checker.py``) counts lost, duplicated, inconsistent and
out-of-order records.  The JSON report holds the counts, examples of every
anomaly, each fault with its timing, failover times (fault -> first
acknowledgement on each partition the broker led) and error lines from the
broker logs.  Exit status 1 when any checked count is not zero.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import json
import logging
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cluster.cluster_process import Cluster, S3Target, wait_until
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from .bootstrap_proxy import BootstrapProxy
from .checker import (
    FinalRead,
    Read,
    RecordingProducer,
    Send,
    Verdict,
    check,
    check_commits,
    percentile,
    read_back,
    summary,
)
from .fault_proxy import FaultProxyProcess

KINDS = ("kill", "freeze", "store", "add", "remove")
WEIGHTS = {"kill": 4, "freeze": 3, "store": 3, "add": 1, "remove": 1}
FAILOVER_KINDS = ("kill", "freeze", "remove")
DRAIN_S = 60.0  # after healing: longest wait for outstanding deliveries
HEAL_S = 300.0  # longest wait for every partition to be served again after the last fault


@dataclass
class Options:
    duration: float = 60.0
    faults: int = 10
    brokers: int = 3
    store: str = "local"
    report: Path | None = None
    wal: str = ""  # default: file for local, object for seaweedfs
    partitions: int = 6
    producers: int = 3
    rate: float = 100.0  # records per second per producer
    interval: float = 0.0  # seconds between faults; 0 = derived from duration and faults
    lease_ms: int = 1000
    seed: int | None = None
    base_dir: Path | None = None
    keep: bool = False
    quiet: bool = False
    kinds: tuple[str, ...] = KINDS
    history: Path | None = None
    client_debug: str = ""  # librdkafka debug contexts for the producers, logged to <base>/producer-N.log


@dataclass
class Fault:
    kind: str
    at: float  # seconds since the run started
    target: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    affected: list[int] = field(default_factory=list)  # partitions the target led
    t0: float = 0.0  # monotonic time of the fault
    ended_at: float | None = None
    recovery_ms: dict[int, float] = field(default_factory=dict)  # partition -> ms from fault to first ack


# ---- workload threads ---------------------------------------------------------------------------


class ProducerThread(threading.Thread):
    """Sends at a steady rate through one RecordingProducer; replaces it if it hits a fatal error."""

    def __init__(self, run: ChaosRun, producer_id: int) -> None:
        super().__init__(name=f"chaos-producer-{producer_id}", daemon=True)
        self.run_ = run
        self.producers: list[RecordingProducer] = []
        self.stop_sending = threading.Event()
        self.fatal: list[str] = []
        self.crashed: str | None = None
        self._new(producer_id)

    def _new(self, producer_id: int) -> None:
        run = self.run_
        config: dict[str, Any] = {}
        if run.options.client_debug:
            logger = logging.getLogger(f"chaos.producer.{producer_id}")
            logger.propagate = False
            logger.addHandler(logging.FileHandler(run.base / f"producer-{producer_id}.log"))
            logger.setLevel(logging.DEBUG)
            config = {"debug": run.options.client_debug, "logger": logger}
        self.current = RecordingProducer(producer_id, run.client_bootstrap, run.topic, run.options.partitions,
                                         config)
        self.producers.append(self.current)

    def run(self) -> None:
        try:
            self._produce()
        except Exception as exc:  # noqa: BLE001 - reported; the other producers go on
            self.run_.log(f"producer thread {self.name} crashed: {exc!r}")
            self.crashed = repr(exc)

    def _produce(self) -> None:
        period = 1.0 / self.run_.options.rate
        next_at = time.monotonic()
        while not self.stop_sending.is_set():
            self.current.send()
            self.current.poll(0)
            if self.current.fatal:
                self.fatal.append(f"p{self.current.producer_id}: {self.current.fatal}")
                self.run_.log(f"producer p{self.current.producer_id} fatal error: {self.current.fatal}")
                self.current.flush(5)
                self._new(self.run_.next_producer_id())
            next_at += period
            delay = next_at - time.monotonic()
            if delay > 0:
                self.current.poll(delay)
            else:
                next_at = time.monotonic()

    def drain(self, deadline: float) -> int:
        """Stops sending and waits (until monotonic ``deadline``) for outstanding deliveries; returns how
        many stayed unanswered."""
        self.stop_sending.set()
        self.join(30)
        return sum(p.flush(max(0.1, deadline - time.monotonic())) for p in self.producers)

    def sends(self) -> list[Send]:
        return [s for p in self.producers for s in p.sends]


class ReaderThread(threading.Thread):
    """Reads every partition along (``group=False``: assigned from offset 0) or as a group member that
    commits automatically (``group=True``), recording every record and every successful commit."""

    def __init__(self, run: ChaosRun, name: str, group_id: str | None) -> None:
        super().__init__(name=f"chaos-{name}", daemon=True)
        self.run_ = run
        self.reader = name
        self.group_id = group_id
        self.reads: list[Read] = []
        self.errors: Counter[str] = Counter()
        self.committed: dict[int, int] = {}
        self.commit_failures = 0
        self.stop = threading.Event()

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        if err is not None:
            self.commit_failures += 1
            return
        for tp in partitions:
            if tp.error is None and tp.offset >= 0:
                self.committed[tp.partition] = max(self.committed.get(tp.partition, -1), tp.offset)

    def run(self) -> None:
        run = self.run_
        config: dict[str, Any] = {
            "bootstrap.servers": run.client_bootstrap, "auto.offset.reset": "earliest",
            "group.id": self.group_id or f"chaos-along-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": self.group_id is not None, "auto.commit.interval.ms": 500,
            "on_commit": self._on_commit, "error_cb": lambda e: self.errors.update([e.name()]),
            "session.timeout.ms": 6000, "heartbeat.interval.ms": 500, "reconnect.backoff.max.ms": 1000,
            "topic.metadata.refresh.interval.ms": 2000, "log_level": 2,
        }
        consumer = Consumer(config)
        try:
            if self.group_id is None:
                consumer.assign([TopicPartition(run.topic, p, OFFSET_BEGINNING)
                                 for p in range(run.options.partitions)])
            else:
                consumer.subscribe([run.topic])
            while not self.stop.is_set():
                for msg in consumer.consume(500, 0.2):
                    if msg.error() is not None:
                        self.errors.update([msg.error().name()])
                        continue
                    self.reads.append(Read(self.reader, msg.partition(), msg.offset(),
                                           msg.value().decode(errors="replace")))
        except Exception as exc:  # noqa: BLE001 - recorded; the checker still runs on what was read
            self.errors.update([f"exception: {exc!r}"])
        finally:
            with contextlib.suppress(KafkaException, RuntimeError):
                consumer.close()


# ---- the run --------------------------------------------------------------------------------------


class ChaosRun:
    def __init__(self, options: Options) -> None:
        self.options = options
        self.rng = random.Random(options.seed)
        self.topic = f"chaos-{uuid.uuid4().hex[:8]}"
        self.group_id = f"chaos-group-{uuid.uuid4().hex[:8]}"
        self.faults: list[Fault] = []
        self.events: list[dict[str, Any]] = []
        self.started = time.monotonic()
        self._producer_ids = options.producers
        self._ids_lock = threading.Lock()
        self.pending: list[tuple[float, str, int]] = []  # (due, action, broker) recoveries
        self.cluster: Cluster
        self.weed: Any = None
        self.proxy: FaultProxyProcess | None = None
        self.bootstrap_proxy: BootstrapProxy | None = None  # the workload's clients bootstrap through it
        self.producers: list[ProducerThread] = []
        self.readers: list[ReaderThread] = []
        self._tmp: str | None = None
        self.recovered_s: float | None = None  # from the end of the faults until every partition is served

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def client_bootstrap(self) -> str:
        """The workload's ``bootstrap.servers``: one address that outlives every broker (bootstrap_proxy.py)."""
        return self.bootstrap_proxy.address if self.bootstrap_proxy is not None else self.cluster.bootstrap

    def now(self) -> float:
        return time.monotonic() - self.started

    def log(self, message: str) -> None:
        self.events.append({"at": round(self.now(), 3), "event": message})
        if not self.options.quiet:
            print(f"[{self.now():7.1f}s] {message}", file=sys.stderr, flush=True)

    def next_producer_id(self) -> int:
        with self._ids_lock:
            self._producer_ids += 1
            return self._producer_ids - 1

    # -- set-up -----------------------------------------------------------------------------

    def setup(self) -> None:
        o = self.options
        if o.base_dir is None:
            self._tmp = tempfile.mkdtemp(prefix="keel-chaos-")
            base = Path(self._tmp)
        else:
            base = Path(o.base_dir)
            base.mkdir(parents=True, exist_ok=True)
        self.base = base
        wal = o.wal or ("object" if o.store == "seaweedfs" else "file")
        s3 = None
        if o.store == "seaweedfs":
            from s3server import SeaweedFS  # noqa: PLC0415 - only for this store

            self.weed = SeaweedFS(base / "weed").start()
            self.proxy = FaultProxyProcess(self.weed.endpoint_url, base / "proxy.log", seed=o.seed).start()
            s3 = S3Target(self.proxy.url, "keel-chaos", f"run-{uuid.uuid4().hex[:8]}", self.weed.access_key,
                          self.weed.secret_key)
        self.cluster = Cluster(base / "cluster", s3=s3, wal=wal, lease_ms=o.lease_ms)
        self.cluster.start(o.brokers)
        self.cluster.wait_for_brokers(self.cluster.members, timeout=60)
        self.bootstrap_proxy = BootstrapProxy(lambda: [m.process.address for m in self.cluster.serving()]).start()
        self._create_topic()
        self.log(f"cluster of {o.brokers} brokers on {o.store} (WAL {wal}), topic {self.topic} "
                 f"with {o.partitions} partitions")

    def _create_topic(self) -> None:
        admin = AdminClient({"bootstrap.servers": self.cluster.bootstrap})

        def create() -> bool:
            futures = admin.create_topics([NewTopic(self.topic, self.options.partitions)], request_timeout=15)
            try:
                futures[self.topic].result(20)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
            return True

        wait_until(create, 60, interval=1.0, what="topic created")
        self.cluster.wait_for_leaders(self.topic, self.options.partitions, timeout=60)

    def start_workload(self) -> None:
        for i in range(self.options.producers):
            self.producers.append(ProducerThread(self, i))
        self.readers = [ReaderThread(self, "along", None), ReaderThread(self, "group", self.group_id)]
        for thread in [*self.producers, *self.readers]:
            thread.start()

    # -- faults -----------------------------------------------------------------------------

    def _serving_ids(self) -> list[int]:
        return [m.broker_id for m in self.cluster.serving() if not m.removed]

    def _leaders(self, avoid: int | None = None) -> dict[int, int]:
        """{partition: leader} as some serving broker (other than ``avoid``) reports it."""
        for member in self.cluster.serving():
            if member.broker_id == avoid:
                continue
            with contextlib.suppress(Exception):
                return {p: pl.leader for p, pl in self.cluster.leaders(self.topic, via=member.broker_id).items()}
        return {}

    def choose(self) -> str | None:
        o = self.options
        serving = self._serving_ids()
        present = [m for m in self.cluster.members.values() if not m.removed]
        feasible = []
        for kind in o.kinds:
            if kind in ("kill", "freeze", "remove") and len(serving) < 2:
                continue
            if kind == "store" and self.proxy is None:
                continue
            if kind == "add" and len(present) >= o.brokers + 2:
                continue
            if kind == "remove" and len(present) <= max(2, o.brokers - 1):
                continue
            feasible.append(kind)
        if not feasible:
            return None
        return self.rng.choices(feasible, weights=[WEIGHTS[k] for k in feasible])[0]

    def inject(self, kind: str) -> Fault:
        o = self.options
        lease = o.lease_ms / 1000
        fault = Fault(kind, round(self.now(), 3))
        if kind in ("kill", "freeze", "remove"):
            serving = self._serving_ids()
            leaders = self._leaders()
            if kind == "freeze":  # freeze a broker that leads something, when there is one
                leading = [b for b in serving if b in leaders.values()]
                serving = leading or serving
            target = self.rng.choice(serving)
            fault.target = target
            fault.affected = sorted(p for p, leader in leaders.items() if leader == target)
            fault.t0 = time.monotonic()
            if kind == "kill":
                self.cluster.kill(target)
                delay = self.rng.uniform(1.0, 6.0)
                self.pending.append((time.monotonic() + delay, "restart", target))
                fault.detail = {"restart_after_s": round(delay, 2)}
            elif kind == "freeze":
                self.cluster.sigstop(target)
                hold = lease + 1.0 + self.rng.uniform(0.0, 2.0)
                self.pending.append((time.monotonic() + hold, "sigcont", target))
                fault.detail = {"frozen_for_s": round(hold, 2)}
            else:
                started = time.monotonic()
                code = self.cluster.remove(target)
                fault.detail = {"exit_code": code, "stop_s": round(time.monotonic() - started, 3)}
        elif kind == "store":
            assert self.proxy is not None
            duration = self.rng.uniform(2.0, 6.0)
            flavour = self.rng.choice(["latency", "slowdown", "both", "landed"])
            spec: dict[str, float] = {"duration_s": duration}
            if flavour in ("latency", "both"):
                spec.update(latency_ms=self.rng.uniform(50, 600), jitter_ms=self.rng.uniform(0, 300))
            if flavour in ("slowdown", "both"):
                spec.update(error_rate=self.rng.uniform(0.1, 0.5))
            if flavour == "landed":
                spec.update(landed_error_rate=self.rng.uniform(0.05, 0.3))
            self.proxy.set_faults(**spec)
            fault.t0 = time.monotonic()
            fault.detail = {"flavour": flavour, **{k: round(v, 3) for k, v in spec.items()}}
            fault.ended_at = round(self.now() + duration, 3)
        elif kind == "add":
            fault.t0 = time.monotonic()
            member = self.cluster.add()
            fault.target = member.broker_id
            fault.detail = {"start_s": round(time.monotonic() - fault.t0, 3)}
        self.faults.append(fault)
        self.log(f"fault #{len(self.faults)}: {kind} broker={fault.target} affected={fault.affected} {fault.detail}")
        return fault

    def recover_due(self, force: bool = False) -> None:
        now = time.monotonic()
        due = [item for item in self.pending if force or item[0] <= now]
        self.pending = [item for item in self.pending if item not in due]
        for _due, action, broker_id in sorted(due):
            member = self.cluster.members[broker_id]
            try:
                if action == "sigcont":
                    self.cluster.sigcont(broker_id)
                    self.log(f"SIGCONT broker {broker_id}")
                elif action == "restart" and not member.removed and not member.process.is_running():
                    started = time.monotonic()
                    self.cluster.restart(broker_id)
                    self.log(f"restarted broker {broker_id} in {time.monotonic() - started:.1f} s")
            except Exception as exc:  # noqa: BLE001 - reported; the run goes on
                self.log(f"recovery {action} of broker {broker_id} failed: {exc!r}")

    def schedule(self) -> None:
        o = self.options
        interval = o.interval or min(6.0, max(2.0, o.duration / max(1, o.faults)))
        end = self.started + o.duration
        next_fault = time.monotonic() + interval
        last_progress = time.monotonic()
        while time.monotonic() < end and len(self.faults) < o.faults:
            self.recover_due()
            if time.monotonic() >= next_fault:
                kind = self.choose()
                if kind is not None:
                    try:
                        self.inject(kind)
                    except Exception as exc:  # noqa: BLE001 - reported; the run goes on
                        self.log(f"injecting {kind} failed: {exc!r}")
                next_fault = time.monotonic() + interval * self.rng.uniform(0.6, 1.4)
            if time.monotonic() - last_progress >= 15:
                last_progress = time.monotonic()
                per_thread = [sum(q.acked for q in p.producers) for p in self.producers]
                self.log(f"progress: {len(self.faults)} faults, {sum(per_thread)} acked {per_thread}, "
                         f"serving {self._serving_ids()}")
            time.sleep(0.05)

    def heal(self) -> None:
        """Ends every fault: proxy cleared, frozen brokers resumed, killed ones restarted."""
        if self.proxy is not None:
            self.proxy.clear()
        self.recover_due(force=True)
        for member in self.cluster.members.values():
            if member.frozen:
                self.cluster.sigcont(member.broker_id)
        started = time.monotonic()
        try:
            self.cluster.wait_for_leaders(self.topic, self.options.partitions, timeout=HEAL_S)
            wait_until(self._all_readable, max(1.0, HEAL_S - (time.monotonic() - started)), interval=1.0,
                       what="every partition answering ListOffsets")
            self.recovered_s = time.monotonic() - started
            self.log(f"healed in {self.recovered_s:.1f} s: serving {self._serving_ids()}")
        except TimeoutError as exc:  # the read-back will show what this costs
            self.log(f"not every partition is served {HEAL_S:.0f} s after healing: {exc}")

    def _all_readable(self) -> bool:
        """Whether every partition's leader really serves it (a Metadata leader may still be taking over)."""
        consumer = Consumer({"bootstrap.servers": self.cluster.bootstrap, "group.id": "chaos-heal",
                             "log_level": 2})
        try:
            for p in range(self.options.partitions):
                consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=5)
            return True
        except KafkaException:
            return False
        finally:
            consumer.close()

    # -- measuring --------------------------------------------------------------------------

    def failover(self, sends: list[Send]) -> dict[str, Any]:
        """Per fault and affected partition: time from the fault to the first acknowledgement after it."""
        acks: dict[int, list[float]] = defaultdict(list)
        for s in sends:
            if s.acked_at is not None:
                acks[s.ack_partition].append(s.acked_at)
        for times in acks.values():
            times.sort()
        out: dict[str, Any] = {}
        for kind in FAILOVER_KINDS:
            samples = []
            for fault in (f for f in self.faults if f.kind == kind):
                for p in fault.affected:
                    times = acks.get(p, [])
                    i = bisect.bisect_right(times, fault.t0)
                    if i < len(times):
                        fault.recovery_ms[p] = round((times[i] - fault.t0) * 1000, 1)
                        samples.append(fault.recovery_ms[p])
            out[kind] = {"samples": len(samples), "p50_ms": percentile(samples, 50),
                         "p99_ms": percentile(samples, 99), "max_ms": max(samples, default=None)}
        return out

    def broker_log_problems(self, limit: int = 40) -> dict[str, Any]:
        counts: Counter[str] = Counter()
        lines: list[str] = []
        for member in self.cluster.members.values():
            try:
                text = member.process.log_path.read_text(errors="replace")
            except OSError:
                continue
            for line in text.splitlines():
                for level in ("CRITICAL", "ERROR", "Traceback"):
                    if level in line:
                        counts[level] += 1
                        if len(lines) < limit:
                            lines.append(f"broker {member.broker_id}: {line[:400]}")
                        break
        return {"counts": dict(counts), "lines": lines}

    # -- the whole run ------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        o = self.options
        self.setup()
        self.start_workload()
        self.schedule()
        fault_phase_s = self.now()
        self.heal()
        time.sleep(3.0)  # a little traffic on the healed cluster
        for producer in self.producers:
            producer.stop_sending.set()
        drain_deadline = time.monotonic() + DRAIN_S
        unanswered = sum(p.drain(drain_deadline) for p in self.producers)
        for reader in self.readers:
            reader.stop.set()
        for reader in self.readers:
            reader.join(30)
        sends = [s for p in self.producers for s in p.sends()]
        self.log(f"drained: {len(sends)} sent, {unanswered} unanswered; reading back")
        final = read_back(self.cluster.bootstrap, self.topic, o.partitions)
        reads = [r for reader in self.readers for r in reader.reads]
        verdict = check(sends, final, reads, origin=self.started)
        if o.history is not None:
            self.write_history(o.history, sends, final)
        group = next(r for r in self.readers if r.group_id is not None)
        check_commits(verdict, group.committed, self._final_commits())
        return self.report(verdict, sends, final, unanswered, fault_phase_s)

    def write_history(self, path: Path, sends: list[Send], final: FinalRead) -> None:
        """Every send and the final read, one JSON object per line (times in s since the start)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as out:
            for s in sends:
                row = {"value": s.value, "p": s.partition, "sent_s": round(s.sent_at - self.started, 4),
                       "acked_s": None if s.acked_at is None else round(s.acked_at - self.started, 4),
                       "ack": [s.ack_partition, s.ack_offset] if s.acked else None, "error": s.error}
                out.write(json.dumps(row) + "\n")
            for p, rows in final.records.items():
                out.write(json.dumps({"final": p, "records": rows}) + "\n")

    def _final_commits(self) -> dict[int, int]:
        consumer = Consumer({"bootstrap.servers": self.cluster.bootstrap, "group.id": self.group_id,
                             "enable.auto.commit": False})
        try:
            tps = consumer.committed([TopicPartition(self.topic, p) for p in range(self.options.partitions)],
                                     timeout=30)
            return {tp.partition: tp.offset for tp in tps if tp.error is None}
        finally:
            consumer.close()

    def report(self, verdict: Verdict, sends: list[Send], final: FinalRead, unanswered: int,
               fault_phase_s: float) -> dict[str, Any]:
        o = self.options
        failover = self.failover(sends)
        kinds = Counter(f.kind for f in self.faults)
        errors = Counter((s.error or "").split(":")[0] for s in sends if s.error and not s.acked)
        line = summary(verdict, len(self.faults))
        return {
            "summary": line,
            "ok": verdict.ok,
            "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(o).items()},
            "topic": self.topic,
            "fault_phase_s": round(fault_phase_s, 1),
            "recovery_after_faults_s": None if self.recovered_s is None else round(self.recovered_s, 1),
            "total_s": round(self.now(), 1),
            "faults": {"total": len(self.faults), "by_kind": dict(kinds)},
            "counts": verdict.as_dict(),
            "failover": failover,
            "producers": {
                "instances": sum(len(p.producers) for p in self.producers),
                "fatal_errors": [f for p in self.producers for f in p.fatal],
                "crashed_threads": [p.crashed for p in self.producers if p.crashed],
                "unanswered_at_end": unanswered,
                "delivery_errors": dict(errors),
                "client_errors": dict(Counter(e.split(":")[0] for p in self.producers for q in p.producers
                                              for _t, e in q.client_errors)),
            },
            "readers": {r.reader: {"reads": len(r.reads), "errors": dict(r.errors),
                                   "commits": r.committed, "commit_failures": r.commit_failures}
                        for r in self.readers},
            "partitions": {str(p): {"high_watermark": final.high_watermarks[p], "records": len(final.records[p])}
                           for p in final.records},
            "unreadable_partitions": {str(p): {"reached": reached, "high_watermark": target,
                                               "last_error": final.errors.get(p, ""),
                                               "leader_in_metadata": final.leaders.get(p)}
                                      for p, (reached, target) in final.incomplete.items()},
            "proxy": self.proxy.stats() if self.proxy is not None else None,
            "broker_logs": self.broker_log_problems(),
            "fault_log": [asdict(f) | {"t0": None} for f in self.faults],
            "events": self.events,
        }

    def cleanup(self) -> None:
        """Stops every thread and process the run started; each step runs even if an earlier one fails
        (or a second Ctrl-C arrives)."""
        for producer in self.producers:
            producer.stop_sending.set()
        for reader in self.readers:
            reader.stop.set()
        steps = [lambda: self.bootstrap_proxy.stop() if self.bootstrap_proxy is not None else None,
                 lambda: self.cluster.close() if hasattr(self, "cluster") else None,
                 lambda: self.proxy.stop() if self.proxy is not None else None,
                 lambda: self.weed.stop() if self.weed is not None else None,
                 *[lambda t=t: t.join(5) for t in [*self.producers, *self.readers]]]
        if self._tmp is not None and not self.options.keep:
            steps.append(lambda: shutil.rmtree(self._tmp or "", ignore_errors=True))
        for step in steps:
            try:
                step()
            except BaseException as exc:  # noqa: BLE001 - keep cleaning up; report it
                print(f"cleanup step failed: {exc!r}", file=sys.stderr)


def run_chaos(options: Options) -> dict[str, Any]:
    """Runs one chaos test and returns its report (written to ``options.report`` before cleaning up)."""
    run = ChaosRun(options)
    try:
        report = run.run()
        if options.report is not None:
            options.report.parent.mkdir(parents=True, exist_ok=True)
            options.report.write_text(json.dumps(report, indent=2, default=str))
        return report
    except BaseException:
        if not options.quiet:
            traceback.print_exc()
        with contextlib.suppress(Exception):
            print(run.cluster.log_tails(3000), file=sys.stderr)
        raise
    finally:
        run.cleanup()


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.run", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of faults (upper bound)")
    parser.add_argument("--faults", type=int, default=10, help="number of faults (upper bound)")
    parser.add_argument("--brokers", type=int, default=3)
    parser.add_argument("--store", choices=("local", "seaweedfs"), default="local")
    parser.add_argument("--wal", choices=("file", "object"), default="",
                        help="WAL engine (default: file for local, object for seaweedfs)")
    parser.add_argument("--report", type=Path, default=None, help="write the JSON report here")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--producers", type=int, default=3)
    parser.add_argument("--rate", type=float, default=100.0, help="records per second per producer")
    parser.add_argument("--interval", type=float, default=0.0, help="seconds between faults (default: derived)")
    parser.add_argument("--lease-ms", type=int, default=1000)
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"faults to choose from ({','.join(KINDS)})")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--base-dir", type=Path, default=None, help="keep processes' files here")
    parser.add_argument("--keep", action="store_true", help="do not delete the temporary directory")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--history", type=Path, default=None, help="write every send and the final read here")
    parser.add_argument("--client-debug", default="", help="librdkafka debug contexts for the producers "
                        "(e.g. eos,msg), logged to producer-N.log in the base directory")
    args = parser.parse_args(argv)
    kinds = tuple(k for k in args.kinds.split(",") if k)
    unknown = set(kinds) - set(KINDS)
    if unknown:
        parser.error(f"unknown fault kinds: {sorted(unknown)}")
    return Options(duration=args.duration, faults=args.faults, brokers=args.brokers, store=args.store,
                   report=args.report, wal=args.wal, partitions=args.partitions, producers=args.producers,
                   rate=args.rate, interval=args.interval, lease_ms=args.lease_ms, seed=args.seed,
                   base_dir=args.base_dir, keep=args.keep, quiet=args.quiet, kinds=kinds,
                   history=args.history, client_debug=args.client_debug)


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    if options.seed is None:
        options.seed = int.from_bytes(os.urandom(4), "big")

    def terminate(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminate)
    report = run_chaos(options)
    print(report["summary"] + f" (seed {options.seed}; failover p50/p99 after kill: "
          f"{report['failover']['kill']['p50_ms']}/{report['failover']['kill']['p99_ms']} ms)")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: after a long run with many replaced producers, destroying their
    # librdkafka handles at exit once crashed the process (SIGSEGV) after the report was written.
    os._exit(code)
