"""The ``failover`` suite: how long a partition is unwritable when its leader dies, and what moves.

A local 3-broker cluster shares one object store (``--objects-dir``) and runs
with the default lease settings.  An idempotent producer writes to partition
0 at a fixed rate the whole time.  Each round kills the leader of partition 0
with SIGKILL and measures the failover time: from the kill to the first
delivery report (success) of a record *produced after the kill*.  Then the
killed broker is restarted and the cluster is left to settle.

Leadership is meant to move no segment data, so around each move the suite
compares the segment objects under ``data/`` (key → size) and counts
"segment bytes copied": objects that existed before and changed size, plus
new objects whose base offset is not past the partition's newest segment
(data already in a segment, written again).  The WAL batches the new leader
replayed come from its log line ``N batches replayed``.  See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import statistics
import threading
import time
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from confluent_kafka import Message, Producer
from confluent_kafka.admin import AdminClient

from bench import workload
from bench.broker_proc import BrokerProcess
from bench.report import Figure
from bench.suite_common import SuiteResult, join_notes, pct_ms, say
from broker.config import build_parser, load_settings
from objectstore.localfs import LocalFSObjectStore

BROKER_IDS = (1, 2, 3)
PARTITIONS = 3
FAILOVER_TIMEOUT_S = 30.0
REPLAY_LINE = r"^(\S+ \S+) INFO \S+ {topic}-0: serving as leader at epoch \d+ from offset \d+ \((\d+) batches replayed in (\d+) ms\)"
LOG_TIME = "%Y-%m-%d %H:%M:%S,%f"


class _Writer(threading.Thread):
    """Idempotent producer writing to partition 0 at ``rate``/s; keeps (send time, ack time, error) per record."""

    def __init__(self, bootstrap: str, topic: str, rate: float, size: int) -> None:
        super().__init__(name="bench-failover-writer", daemon=True)
        # log_level 2: the refused connections to the killed broker are expected, not worth printing
        self.producer = Producer(workload.producer_config(bootstrap, 0, **{"enable.idempotence": True,
                                                                           "log_level": 2}))
        self.topic, self.rate, self.value = topic, rate, bytes(size)
        self.acks: list[tuple[float, float, str]] = []  # appended from the poll loop of this thread only
        self.stop = threading.Event()
        self.sent = 0

    def run(self) -> None:
        start = time.perf_counter()
        while not self.stop.is_set():
            target = start + self.sent / self.rate
            while (left := target - time.perf_counter()) > 0.0001:
                self.producer.poll(max(0.001, left - 0.0005))
            sent_at = time.perf_counter()

            def delivered(err: Any, _msg: Message, sent_at: float = sent_at) -> None:
                self.acks.append((sent_at, time.perf_counter(), "" if err is None else str(err)))

            try:
                self.producer.produce(self.topic, self.value, partition=0, on_delivery=delivered)
                self.sent += 1
            except BufferError:
                self.producer.poll(0.01)
        self.producer.flush(workload.DRAIN_TIMEOUT_S)

    def first_ack_after(self, t: float, timeout: float) -> float | None:
        """Ack time of the first successful record sent after ``t`` (perf_counter), waiting up to ``timeout``."""
        deadline = time.perf_counter() + timeout
        seen = 0
        while True:
            acks = self.acks[seen:]
            seen += len(acks)
            done = [ack for sent, ack, err in acks if sent > t and not err]
            if done:
                return min(done)
            if time.perf_counter() >= deadline:
                return None
            time.sleep(0.005)


Committed = list[tuple[int, int, str]]  # (base offset, last offset, object key) of manifest segments


@dataclass
class StoreSnapshot:
    """Segment objects under ``data/`` (key -> size) and the segments the manifests commit."""

    objects: dict[str, int]
    committed: Committed


def snapshot(objects_dir: Path) -> StoreSnapshot:
    async def go() -> StoreSnapshot:
        store = LocalFSObjectStore(objects_dir)
        objects = {o.key: o.size for o in await store.list("data/")}
        committed: Committed = []
        for info in await store.list("meta/partitions/"):
            with contextlib.suppress(Exception):  # a manifest being replaced is read next round
                doc = json.loads(await store.get(info.key))
                committed += [(s["base_offset"], s["last_offset"], s["key"]) for s in doc.get("segments", [])]
        return StoreSnapshot(objects, committed)
    return asyncio.run(go())


def _folder(key: str) -> str:
    return key.rpartition("/")[0]


def segment_bytes_copied(before: StoreSnapshot, after: StoreSnapshot) -> int:
    """Bytes of segment objects rewritten in place, or newly committed over offsets already committed before."""
    copied = sum(size for key, size in after.objects.items()
                 if key in before.objects and before.objects[key] != size)
    old_keys = {key for _b, _l, key in before.committed}
    old_ranges: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for base, last, key in before.committed:
        old_ranges[_folder(key)].append((base, last))
    for base, last, key in after.committed:
        if key not in old_keys and any(base <= o_last and o_base <= last for o_base, o_last in old_ranges[_folder(key)]):
            copied += after.objects.get(key, 0)
    return copied


def orphan_bytes(snap: StoreSnapshot) -> int:
    """Bytes of segment objects no manifest commits (a dead leader's PUT that never reached its manifest)."""
    committed = {key for _b, _l, key in snap.committed}
    return sum(size for key, size in snap.objects.items() if key not in committed)


class _Cluster:
    def __init__(self, work_dir: Path, extra_args: list[str]) -> None:
        self.objects_dir = work_dir / "objects"
        self.objects_dir.mkdir(parents=True, exist_ok=True)
        self.brokers = {
            i: BrokerProcess(work_dir / f"broker{i}", work_dir / f"broker{i}.log",
                             ["--broker-id", str(i), "--objects-dir", str(self.objects_dir), *extra_args])
            for i in BROKER_IDS}

    def start(self) -> None:
        with ThreadPoolExecutor(len(self.brokers)) as pool:
            for f in [pool.submit(b.start, 60.0) for b in self.brokers.values()]:
                f.result()

    def live_bootstrap(self) -> str:
        return ",".join(b.bootstrap for b in self.brokers.values() if b.proc and b.proc.poll() is None)

    def stop(self) -> list[int | None]:
        with ThreadPoolExecutor(len(self.brokers)) as pool:
            return list(pool.map(lambda b: b.stop(), self.brokers.values()))


def _leader(admin: AdminClient, topic: str) -> tuple[int, int]:
    """(leader of partition 0 or -1, number of brokers in the metadata)."""
    try:
        md = admin.list_topics(topic, timeout=5)
        part = md.topics[topic].partitions.get(0)
        return (part.leader if part is not None and part.error is None else -1), len(md.brokers)
    except Exception:  # noqa: BLE001 - no answer is "no leader yet"
        return -1, 0


def _settle(admin_for: Any, topic: str, writer: _Writer, quiet_s: float, timeout: float = 60.0) -> int:
    """Wait until 3 brokers are known, partition 0's leader has not changed for ``quiet_s`` and acks flow."""
    deadline = time.monotonic() + timeout
    last, since = -2, time.monotonic()
    admin = admin_for()
    while time.monotonic() < deadline:
        leader, brokers = _leader(admin, topic)
        now = time.monotonic()
        if leader != last or brokers < len(BROKER_IDS) or leader < 0:
            last, since = leader, now
        elif now - since >= quiet_s and writer.first_ack_after(time.perf_counter() - 0.5, 0.0) is not None:
            return leader
        time.sleep(0.1)
    raise TimeoutError(f"cluster did not settle within {timeout:.0f} s (leader of {topic}-0: {last})")


def run(args: Any, work_dir: Path) -> SuiteResult:
    res = SuiteResult("failover")
    parser = build_parser(argparse.ArgumentParser())
    effective = load_settings(parser.parse_args(list(args.broker_arg)), env={})  # defaults and --broker-arg
    lease = {k: getattr(effective, k) for k in ("lease_ms", "lease_renew_ms", "lease_margin_ms",
                                                 "controller_interval_ms")}
    res.meta["failover_lease_settings"] = lease
    if args.broker_arg:
        res.meta["failover_broker_args"] = list(args.broker_arg)
    topic = f"bench-{uuid.uuid4().hex[:8]}-failover"
    cluster = _Cluster(work_dir, list(args.broker_arg))
    times: list[float] = []
    copied: list[int] = []
    seg_bytes: list[int] = []
    replayed: list[int] = []
    replay_ms: list[int] = []
    orphans: list[int] = []
    writer: _Writer | None = None
    takeovers: list[float] = []
    pattern = re.compile(REPLAY_LINE.format(topic=re.escape(topic)), re.MULTILINE)
    try:
        say("failover: starting a 3-broker cluster")
        cluster.start()
        workload.prepare_topic(cluster.live_bootstrap(), topic, PARTITIONS)
        writer = _Writer(cluster.live_bootstrap(), topic, args.failover_rate, args.record_size)
        writer.start()

        def admin() -> AdminClient:
            return AdminClient({"bootstrap.servers": cluster.live_bootstrap(), "log_level": 3})

        leader = _settle(admin, topic, writer, args.failover_settle_s)
        for round_no in range(1, args.kills + 1):
            victim = cluster.brokers[leader]
            before = snapshot(cluster.objects_dir)
            log_marks = {i: b.log_path.stat().st_size for i, b in cluster.brokers.items()}
            t_kill, wall_kill = time.perf_counter(), time.time()
            victim.kill()
            ack = writer.first_ack_after(t_kill, FAILOVER_TIMEOUT_S)
            if ack is None:
                res.failures.append(f"failover round {round_no}: no ack within {FAILOVER_TIMEOUT_S:.0f} s")
            else:
                times.append(ack - t_kill)
            after = snapshot(cluster.objects_dir)
            copied.append(segment_bytes_copied(before, after))
            orphans.append(orphan_bytes(after) - orphan_bytes(before))
            p0 = [key for _b, _l, key in before.committed if _folder(key).endswith("/0")]
            if p0:
                seg_bytes.append(sum(before.objects.get(key, 0) for key in p0))
            for i, b in cluster.brokers.items():
                if i == leader:
                    continue
                with b.log_path.open("rb") as fh:
                    fh.seek(log_marks[i])
                    for m in pattern.finditer(fh.read().decode(errors="replace")):
                        served = datetime.strptime(m.group(1), LOG_TIME).timestamp()
                        takeovers.append(served - wall_kill)
                        replayed.append(int(m.group(2)))
                        replay_ms.append(int(m.group(3)))
            say(f"failover round {round_no}/{args.kills}: killed broker {leader}, "
                f"{'%.0f ms' % ((ack - t_kill) * 1000) if ack else 'no ack'}, copied {copied[-1]} B")
            victim.start(60.0)
            leader = _settle(admin, topic, writer, args.failover_settle_s)
    finally:
        if writer is not None:
            writer.stop.set()
            writer.join(workload.DRAIN_TIMEOUT_S + 5)
        codes = cluster.stop()
        if any(c not in (0, None) for c in codes):
            res.failures.append(f"failover cluster exit codes {codes}")
    errors = [err for _s, _a, err in writer.acks if err] if writer else []
    if errors:
        res.failures.append(f"failover: {len(errors)} delivery errors ({errors[0]})")
    settings = ", ".join(f"{k}={v}" for k, v in lease.items())
    res.meta.update(failover_kills=args.kills, failover_samples=len(times), failover_records_sent=writer.sent
                    if writer else 0, failover_delivery_errors=len(errors),
                    failover_replayed_batches=replayed, failover_replay_ms=replay_ms,
                    failover_copied_bytes=copied, failover_new_orphan_bytes=orphans,
                    failover_takeover_s=[round(t, 3) for t in takeovers], failover_times_s=[round(t, 3) for t in times])
    for p in (50.0, 99.0):
        res.figures.append(Figure(
            f"failover_time_p{p:g}", pct_ms(times, p), "ms", "lease_ms", float(lease["lease_ms"]),
            samples=len(times), note=join_notes(settings, "target p99 <= 2000 ms" if p == 99.0 else "")))
    for p in (50.0, 99.0):
        res.figures.append(Figure(
            f"leader_takeover_p{p:g}", pct_ms(takeovers, p), "ms", "lease_ms", float(lease["lease_ms"]),
            samples=len(takeovers), note="kill -> new leader logs 'serving as leader' (broker side, 1 ms clock)"))
    res.figures.append(Figure(
        "segment_bytes_copied_per_move", float(max(copied)) if copied else None, "bytes (max)",
        "partition_segment_bytes", statistics.mean(seg_bytes) if seg_bytes else None, samples=len(copied),
        note=join_notes("baseline: mean bytes of partition 0's committed segments at the kill",
                        f"uncommitted segment PUTs left by the dead leader: up to {max(orphans, default=0):,} B")))
    res.figures.append(Figure(
        "wal_batches_replayed_per_move", statistics.mean(replayed) if replayed else None, "batches (mean)",
        samples=len(replayed),
        note=f"max {max(replayed)}, replay took up to {max(replay_ms)} ms" if replayed else "no replay lines"))
    return res

