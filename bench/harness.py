"""``python -m bench``: one end-to-end benchmark run of Keel with its baselines.

One run starts a broker (or uses ``--bootstrap``), measures the baselines
(disk fsync, librdkafka's mock cluster) and the broker with the same client
workloads, then prints a table and writes ``bench/results/latest.json`` and
two PNG plots (latency percentiles, throughput over time).  The ``local``
suite's workload (topics, partitions, producers, consumers, record size,
keys, rate, duration) comes from options or an OMB-style TOML file
(``--workload``, bench/workload_spec.py).  What each figure means and the
conventions behind it: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

import confluent_kafka

from bench import baselines, failover_suite, idle_rss, monitor, report, s3_suite, workload, workload_spec
from bench.broker_proc import BrokerProcess, read_cpu_seconds, read_memory_kib
from bench.report import PERCENTILES, Figure, pct_label, percentile
from bench.suite_common import SuiteResult

RESULTS_DIR = Path(__file__).resolve().parent / "results"
MIN_PERCENTILE_SAMPLES = 10_000
MOCK_FETCH_WAIT_MS = 1
# Past ~4,000 records per partition the mock's consumer stalls for hundreds of ms
# (observed with librdkafka 2.16; it trims its log there), so its e2e phase is capped.
MOCK_E2E_MAX_RECORDS = 12_000
KiB = 1024
_T = TypeVar("_T")
TopicFor = Callable[[str], tuple[list[str], int]]  # phase kind -> (topic names, partitions per topic)
Call = Callable[[workload.Meters], _T]
PHASE_TITLES = {
    "produce_throughput": "produce throughput phase (max rate, linger.ms=5)",
    "consume_throughput": "consume throughput phase (catch-up read)",
    "produce_latency": "produce latency phase (linger.ms=0)",
    "e2e_latency": "end-to-end latency phase (linger.ms=0)",
}


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except the None of the workload options (their help text gives the real one)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return action.help if action.default is None else super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description="One end-to-end benchmark run of Keel.",
                                formatter_class=_HelpFormatter)
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "latest.json",
                   help="JSON results file; the PNGs go beside it (<stem>.png, <stem>-throughput.png)")
    p.add_argument("--bootstrap", help="benchmark a running broker at HOST:PORT instead of starting one")
    p.add_argument("--broker-pid", type=int, help="with --bootstrap: pid of that broker, for its RSS")
    p.add_argument("--data-dir", type=Path,
                   help="where the started broker keeps its data and where fsync is probed; "
                        "kept afterwards (None: a temporary directory, removed afterwards)")
    p.add_argument("--broker-arg", action="append", default=[], metavar="FLAG",
                   help="extra flag for `keel serve`, repeatable (e.g. --broker-arg=--no-wal-fsync)")
    p.add_argument("--fsync-iterations", type=int, default=5000, help="write+fdatasync samples")
    p.add_argument("--no-mock", action="store_true", help="skip librdkafka's mock-cluster baseline")
    p.add_argument("--no-plot", action="store_true", help="do not write the PNG plots")
    p.add_argument("--idle-partitions", type=int, default=1000,
                   help="partitions (one record each) on a fresh broker for the idle-RSS figure; 0 = skip")
    p.add_argument("--series-interval", type=float, default=1.0,
                   help="seconds per point of the throughput-over-time series")
    p.add_argument("--suite", type=_suites, default=",".join(SUITES),
                   help=f"comma-separated suites to run, of {','.join(SUITES)}; a suite that cannot run here "
                        "(s3 without a `weed` binary) is skipped with the reason")
    workload_spec.add_options(p)
    g = p.add_argument_group("s3 suite (SeaweedFS, object WAL)")
    g.add_argument("--s3-records", type=int, default=10_000, help="records measured in the object-WAL latency phase")
    g.add_argument("--s3-rate", type=float, default=500.0, help="records/s offered in the object-WAL latency phase")
    g.add_argument("--s3-put-samples", type=int, default=10_000, help="raw PUTs timed for the PUT baseline")
    g.add_argument("--s3-catchup-mb", type=float, default=300.0, help="MB produced, then read back cold")
    g.add_argument("--s3-catchup-rounds", type=int, default=3,
                   help="cold reads (each after a broker restart) and raw GET passes; the figures are their medians")
    g.add_argument("--s3-flush-interval-ms", type=int, default=500, help="broker --flush-interval-ms in the s3 suite")
    g.add_argument("--s3-remote-latency-ms", type=float, default=20.0,
                   help="latency a proxy adds to every S3 request in a second latency phase, as a store across a "
                        "network would have (0 skips the phase)")
    g.add_argument("--s3-remote-records", type=int, default=3000,
                   help="records measured, and raw PUTs timed, in the phase with added latency")
    g = p.add_argument_group("failover suite (local 3-broker cluster)")
    g.add_argument("--kills", type=int, default=20, help="leader kills (kill -9), one failover sample each")
    g.add_argument("--failover-rate", type=float, default=200.0, help="records/s the idempotent producer writes")
    g.add_argument("--failover-settle-s", type=float, default=2.0,
                   help="after a restart: seconds the leader must stay put before the next kill")
    return p


SUITES = ("local", "s3", "failover")


def _suites(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = sorted(set(names) - set(SUITES))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown suite(s) {unknown}; choose from {','.join(SUITES)}")
    return names


def _say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Phase(Generic[_T]):
    """One measurement: its result, or why there is none."""

    result: _T | None = None
    error: str = ""


@dataclass
class Measurements:
    fsync: list[float]
    keel_put: Phase[workload.Throughput] = field(default_factory=Phase)
    mock_put: Phase[workload.Throughput] = field(default_factory=Phase)
    keel_get: Phase[workload.Throughput] = field(default_factory=Phase)
    mock_get: Phase[workload.Throughput] = field(default_factory=Phase)
    keel_lat: Phase[workload.LatencyRun] = field(default_factory=Phase)
    keel_e2e: Phase[workload.LatencyRun] = field(default_factory=Phase)
    mock_e2e: Phase[workload.LatencyRun] = field(default_factory=Phase)
    rss_start_kib: int | None = None
    rss_end_kib: int | None = None
    rss_peak_kib: int | None = None
    idle: Phase[idle_rss.IdleRss] = field(default_factory=Phase)
    failures: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    series: list[dict[str, Any]] = field(default_factory=list)  # throughput over time, one entry per phase

    def attempt(self, label: str, fn: Callable[[], _T], *, fatal: bool = True) -> Phase[_T]:
        """Run one phase; a failure is recorded (and fails the run if ``fatal``) but hides no other figure."""
        try:
            return Phase(fn())
        except Exception as exc:
            _say(f"{label} failed: {exc!r}")
            traceback.print_exc(file=sys.stderr)
            if fatal:
                self.failures.append(f"{label}: {exc}")
            return Phase(None, f"failed: {exc}")


class Run:
    """The targets of one run (Keel and maybe the mock) and the phases measured against both."""

    def __init__(self, args: argparse.Namespace, bootstrap: str, mock: baselines.MockCluster | None,
                 mock_missing: str, m: Measurements) -> None:
        self.args = args
        self.bootstrap = bootstrap
        self.mock = mock
        self.mock_missing = mock_missing
        self.m = m
        self.run_id = uuid.uuid4().hex[:8]
        self.keys = workload.Keys(args.key_distribution, args.keys)
        if args.rate > 0:  # a fixed rate: rate x duration records, after rate x warm-up ones
            self.count: int | None = max(1, round(args.rate * args.duration))
            self.warmup: int | None = round(args.rate * args.warmup)
            self.seconds: float | None = None
            self.warmup_seconds: float | None = None
        else:  # max rate: bounded by time
            self.count = self.warmup = None
            self.seconds, self.warmup_seconds = args.duration, args.warmup
        self.t0 = time.perf_counter()
        self._topics: dict[tuple[str, str], int] = {}

    def _names(self, kind: str) -> list[str]:
        base = f"bench-{self.run_id}-{kind}"
        return [base] if self.args.topics == 1 else [f"{base}-{i}" for i in range(self.args.topics)]

    def keel_topic(self, kind: str) -> tuple[list[str], int]:
        names = self._names(kind)
        for name in names:
            if ("keel", name) not in self._topics:
                parts = workload.prepare_topic(self.bootstrap, name, self.args.partitions)
                self._topics["keel", name] = self.m.meta["keel_partitions"] = parts
        return names, min(self._topics["keel", n] for n in names)

    def mock_topic(self, kind: str) -> tuple[list[str], int]:
        assert self.mock is not None
        names = self._names(kind)
        for name in names:
            if ("mock", name) not in self._topics:
                # The mock has no CreateTopics: it auto-creates with librdkafka's default partition count.
                parts = workload.prepare_topic(self.mock.bootstrap, name, self.args.partitions, create=False)
                self._topics["mock", name] = self.m.meta["mock_partitions"] = parts
        return names, min(self._topics["mock", n] for n in names)

    def observed(self, target: str, kind: str, label: str, call: Call[_T], *, watch: str = "produced",
                 seconds: float | None = None, fatal: bool = True) -> Phase[_T]:
        """One phase against one target, with its progress bar and its throughput-over-time series."""
        name = "Keel" if target == "keel" else target
        _say(f"{name}: {label}")
        meters = workload.Meters()
        with monitor.observe(f"{name} {kind.replace('_', ' ')}", meters, self.args.series_interval, watch,
                             seconds) as timeline:
            phase = self.m.attempt(f"{name} {label}", lambda: call(meters), fatal=fatal)
        t = timeline[0]
        self.m.series.append({
            "target": target, "phase": kind, "title": PHASE_TITLES[kind], "record_size": self.args.record_size,
            "start_s": None if t.started_at is None else round(t.started_at - self.t0, 3),
            "t_s": t.t_s, "produced_records_per_s": t.produced_records_per_s,
            "consumed_records_per_s": t.consumed_records_per_s, "produced_records": t.produced_records,
            "consumed_records": t.consumed_records})
        return phase

    def both(self, kind: str, label: str, fn: Callable[[str, TopicFor, workload.Meters], _T], *,
             watch: str = "produced", seconds: float | None = None) -> tuple[Phase[_T], Phase[_T]]:
        keel = self.observed("keel", kind, label, lambda ms: fn(self.bootstrap, self.keel_topic, ms),
                             watch=watch, seconds=seconds)
        if self.mock is None:
            return keel, Phase(None, f"baseline missing: {self.mock_missing}")
        mock_bootstrap = self.mock.bootstrap
        return keel, self.observed("mock", kind, label, lambda ms: fn(mock_bootstrap, self.mock_topic, ms),
                                   watch=watch, seconds=seconds, fatal=False)

    # The phases; each takes a bootstrap address, the topic factory of that target and the phase's meters.

    def throughput(self, target: str, topic: TopicFor, meters: workload.Meters) -> workload.Throughput:
        names, _ = topic("tput")
        return workload.produce_throughput(target, names, self.args.records, self.args.record_size, linger_ms=5,
                                           producers_per_topic=self.args.producers_per_topic, keys=self.keys,
                                           meters=meters)

    def consume(self, target: str, topic: TopicFor, meters: workload.Meters) -> workload.Throughput:
        names, parts = topic("tput")
        return workload.consume_throughput(target, names, parts, consumers_per_topic=self.args.consumers_per_topic,
                                           meters=meters)

    def latency(self, target: str, topic: TopicFor, meters: workload.Meters) -> workload.LatencyRun:
        names, _ = topic("lat")
        return workload.produce_latency(target, names, self.args.rate, self.count, self.args.record_size,
                                        self.warmup, seconds=self.seconds, warmup_seconds=self.warmup_seconds,
                                        producers_per_topic=self.args.producers_per_topic, keys=self.keys,
                                        meters=meters)

    def e2e(self, target: str, topic: TopicFor, meters: workload.Meters) -> workload.LatencyRun:
        names, parts = topic("e2e")
        if topic == self.mock_topic:
            # The mock answers a Fetch only when its wait expires (no wake-up on new data),
            # so its consumer polls every millisecond: that makes it the client-side floor.
            n: int | None = min(self.count or MOCK_E2E_MAX_RECORDS, MOCK_E2E_MAX_RECORDS)
            wait: int | None = MOCK_FETCH_WAIT_MS
        else:
            n, wait = self.count, None
        return workload.end_to_end_latency(
            target, names, parts, self.args.rate, n, self.args.record_size, self.warmup, fetch_wait_max_ms=wait,
            seconds=self.seconds, warmup_seconds=self.warmup_seconds,
            producers_per_topic=self.args.producers_per_topic, consumers_per_topic=self.args.consumers_per_topic,
            keys=self.keys, meters=meters)

    def measure_all(self) -> None:
        a, m = self.args, self.m
        clients = (f"{a.topics} topic(s) x {a.partitions} partitions, {a.producers_per_topic} producer(s) and "
                   f"{a.consumers_per_topic} consumer(s) per topic, keys {a.key_distribution}")
        _say(f"workload {a.workload_name}: {clients}")
        m.keel_put, m.mock_put = self.both(
            "produce_throughput", f"produce throughput, {a.records:,} x {a.record_size} B, linger.ms=5",
            self.throughput)
        m.keel_get, m.mock_get = self.both("consume_throughput", "consume throughput (catch-up read)", self.consume,
                                           watch="consumed")
        pace = f"at {a.rate:g}/s for {self.count:,} records" if self.count else f"at max rate for {a.duration:g} s"
        m.keel_lat = self.observed("keel", "produce_latency", f"produce latency {pace}, linger.ms=0",
                                   lambda ms: self.latency(self.bootstrap, self.keel_topic, ms), seconds=self.seconds)
        mock_n = f"{min(self.count, MOCK_E2E_MAX_RECORDS):,}" if self.count else f"<= {MOCK_E2E_MAX_RECORDS:,}"
        e2e_pace = f"at {a.rate:g}/s (Keel {self.count:,} records" if self.count else \
            f"at max rate for {a.duration:g} s (Keel"
        m.keel_e2e, m.mock_e2e = self.both("e2e_latency", f"end-to-end latency {e2e_pace}, mock {mock_n})",
                                           self.e2e, watch="consumed", seconds=self.seconds)
        for label, phase in (("produce throughput", m.keel_put), ("consume throughput", m.keel_get),
                             ("produce latency", m.keel_lat), ("end-to-end latency", m.keel_e2e)):
            res = phase.result
            missing = getattr(res, "missing", 0)
            if res is not None and (res.errors or missing):
                m.failures.append(f"Keel {label}: {res.errors} errors, {missing} missing")
        lat, e2e = m.keel_lat.result, m.keel_e2e.result
        m.meta.update(latency_records=lat.sent if lat else self.count,
                      warmup_records=self.warmup, warmup_seconds=self.warmup_seconds)
        if e2e is not None and e2e.keys:
            received = sum(e2e.keys.values())
            m.meta["e2e_keys"] = {"records": received, "distinct": len(e2e.keys),
                                  "keyless": e2e.keys.get(None, 0),
                                  "hottest_share": round(max(e2e.keys.values()) / received, 4)}


def _ms(seconds: float) -> float:
    return seconds * 1000.0


def _pcts(samples: Sequence[float] | None) -> dict[float, float | None]:
    return {p: (_ms(percentile(samples, p)) if samples else None) for p in PERCENTILES}


def _latency_note(phase: Phase[workload.LatencyRun], rate: float) -> str:
    run = phase.result
    if run is None:
        return phase.error
    notes = []
    if run.errors or run.missing:
        notes.append(f"{run.errors} errors, {run.missing} missing ({run.first_error or 'no error text'})")
    if rate <= 0:
        notes.append(f"max rate: {run.achieved_rate:,.0f}/s offered")
    elif run.achieved_rate < 0.95 * rate:
        notes.append(f"offered only {run.achieved_rate:,.0f}/s")
    if len(run.latencies) < MIN_PERCENTILE_SAMPLES:
        notes.append(f"< {MIN_PERCENTILE_SAMPLES:,} samples")
    return "; ".join(notes)


def _mb(phase: Phase[workload.Throughput]) -> float | None:
    return phase.result.mb_per_s if phase.result else None


def _rps(phase: Phase[workload.Throughput]) -> float | None:
    return phase.result.records_per_s if phase.result else None


def latency_series(m: Measurements) -> dict[str, dict[float, float | None]]:
    """Latency percentiles (ms) of every latency measurement, by plot label."""
    def lat(phase: Phase[workload.LatencyRun]) -> list[float] | None:
        return phase.result.latencies if phase.result else None

    return {"fsync 1 KiB": _pcts(m.fsync), "Keel produce (ack)": _pcts(lat(m.keel_lat)),
            "mock e2e": _pcts(lat(m.mock_e2e)), "Keel e2e": _pcts(lat(m.keel_e2e))}


def build_figures(m: Measurements, args: argparse.Namespace) -> list[Figure]:
    put_note = m.keel_put.error or m.mock_put.error
    if m.keel_put.result and m.keel_put.result.errors:
        put_note = f"{m.keel_put.result.errors} delivery errors"
    get_note = m.keel_get.error or m.mock_get.error
    if not get_note and m.mock_get.result and m.mock_get.result.read < args.records:
        get_note = f"mock holds only {m.mock_get.result.read:,} records"
    figures = [
        Figure("produce_throughput", _mb(m.keel_put), "MB/s", "mock_produce_throughput", _mb(m.mock_put),
               samples=args.records, note=put_note),
        Figure("produce_throughput_records", _rps(m.keel_put), "records/s", "mock_produce_throughput_records",
               _rps(m.mock_put), samples=args.records, note=put_note),
        Figure("consume_throughput", _mb(m.keel_get), "MB/s", "mock_consume_throughput", _mb(m.mock_get),
               samples=m.keel_get.result.records if m.keel_get.result else None, note=get_note),
    ]
    series = latency_series(m)
    lat_samples = len(m.keel_lat.result.latencies) if m.keel_lat.result else None
    for p in PERCENTILES:
        figures.append(Figure(
            f"produce_latency_{pct_label(p)}", series["Keel produce (ack)"][p], "ms", f"fsync_1KiB_{pct_label(p)}",
            series["fsync 1 KiB"][p], samples=lat_samples, note=_latency_note(m.keel_lat, args.rate)))
    put_lat = {name: _pcts(phase.result.latencies if phase.result else None)
               for name, phase in (("keel", m.keel_put), ("mock", m.mock_put))}
    for p in PERCENTILES:
        figures.append(Figure(
            f"produce_latency_max_rate_{pct_label(p)}", put_lat["keel"][p], "ms",
            f"mock_produce_latency_max_rate_{pct_label(p)}", put_lat["mock"][p],
            samples=len(m.keel_put.result.latencies) if m.keel_put.result else None,
            note=put_note or "throughput phase: every record's produce() -> ack, linger.ms=5"))
    e2e_samples = len(m.keel_e2e.result.latencies) if m.keel_e2e.result else None
    e2e_note = _latency_note(m.keel_e2e, args.rate) or m.mock_e2e.error
    if not e2e_note and m.mock_e2e.result and len(m.mock_e2e.result.latencies) < (e2e_samples or 0):
        e2e_note = f"mock over {len(m.mock_e2e.result.latencies):,} records"
    for p in PERCENTILES:
        figures.append(Figure(
            f"e2e_latency_{pct_label(p)}", series["Keel e2e"][p], "ms", f"mock_e2e_latency_{pct_label(p)}",
            series["mock e2e"][p], samples=e2e_samples, note=e2e_note))

    def mib(kib: int | None) -> float | None:
        return kib / KiB if kib else None

    rss_note = "" if m.rss_start_kib else "broker pid unknown (use --broker-pid)"
    figures.append(Figure("broker_rss", mib(m.rss_end_kib), "MiB", "broker_rss_at_start", mib(m.rss_start_kib),
                          note=rss_note))
    figures.append(Figure("broker_peak_rss", mib(m.rss_peak_kib), "MiB", "broker_rss_at_start",
                          mib(m.rss_start_kib), note=rss_note))
    idle = m.idle.result
    figures.append(Figure(
        "broker_rss_idle_partitions", mib(idle.rss_kib) if idle else None, "MiB", "broker_rss_at_start",
        mib(idle.rss_at_start_kib) if idle else None, samples=idle.partitions if idle else None,
        note=(f"a fresh broker with {idle.partitions:,} partitions, one record each, at rest; target <= 200 MB"
              if idle else m.idle.error or "not measured")))
    return figures


def _dist_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _git_commit() -> str:
    repo = RESULTS_DIR.parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                              timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _first_line_value(path: str, prefix: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def metadata(args: argparse.Namespace, argv: Sequence[str], broker: BrokerProcess | None,
             started: datetime, elapsed: float, workload_meta: dict[str, Any] | None = None) -> dict[str, Any]:
    mem = _first_line_value("/proc/meminfo", "MemTotal")
    return {
        "date": started.isoformat(timespec="seconds"),
        "duration_s": round(elapsed, 1),
        "command": " ".join(["python -m bench", shlex.join(argv)]).strip(),
        "machine": {"cores": os.cpu_count(), "platform": platform.platform(),
                    "cpu": _first_line_value("/proc/cpuinfo", "model name") or platform.processor(),
                    "memory_kib": int(mem.split()[0]) if mem else None},
        "versions": {"python": platform.python_version(), "keel": _dist_version("keel"), "git": _git_commit(),
                     "confluent_kafka": _dist_version("confluent-kafka"),
                     "librdkafka": confluent_kafka.libversion()[0]},
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "workload": workload_meta,
        "broker_command": shlex.join(broker.command()) if broker else None,
        "conventions": {"acks": "all", "latency_linger_ms": 0, "throughput_linger_ms": 5,
                        "mock_e2e_fetch_wait_max_ms": MOCK_FETCH_WAIT_MS,
                        "ratio": "value / baseline_value", "MB": "10^6 bytes of record values"},
    }


def _start_mock(args: argparse.Namespace) -> tuple[baselines.MockCluster | None, str]:
    if args.no_mock:
        return None, "skipped (--no-mock)"
    try:
        mock = baselines.MockCluster()
    except baselines.MockUnavailable as exc:
        _say(f"mock baseline missing: {exc}")
        return None, str(exc)
    _say(f"librdkafka mock cluster on {mock.bootstrap}")
    return mock, ""


def measure(args: argparse.Namespace, data_dir: Path, log_path: Path) -> tuple[Measurements, BrokerProcess | None]:
    """Every measurement of one run; starts and stops the broker and the mock cluster."""
    loadavg_start = list(os.getloadavg())
    _say(f"fsync baseline: {args.fsync_iterations} x write {KiB} B + fdatasync in {data_dir}")
    m = Measurements(baselines.fsync_latencies(data_dir, args.fsync_iterations, KiB))
    m.meta.update(fsync_samples=len(m.fsync), loadavg_start=loadavg_start)
    broker: BrokerProcess | None = None
    mock: baselines.MockCluster | None = None
    try:
        if args.bootstrap:
            bootstrap, pid = args.bootstrap, args.broker_pid
        else:
            broker = BrokerProcess(data_dir, log_path, args.broker_arg)
            _say("starting Keel broker")
            broker.start()
            bootstrap, pid = broker.bootstrap, broker.pid
            _say(f"Keel broker pid {pid} on {bootstrap}, data in {data_dir}")
        if pid:
            m.rss_start_kib = read_memory_kib(pid)[0]
        mock, mock_missing = _start_mock(args)
        Run(args, bootstrap, mock, mock_missing, m).measure_all()
        m.meta["loadavg_end"] = list(os.getloadavg())
        if pid:
            m.rss_end_kib, m.rss_peak_kib = read_memory_kib(pid)
            m.meta["broker_cpu_s"] = round(read_cpu_seconds(pid), 2)
        if args.bootstrap or args.idle_partitions <= 0:
            m.idle = Phase(None, "skipped (--bootstrap or --idle-partitions 0)")
        else:
            _say(f"idle broker: {args.idle_partitions:,} partitions with one record each")
            m.idle = m.attempt("idle-partitions RSS", lambda: idle_rss.measure_idle_rss(
                data_dir.with_name(data_dir.name + "-idle"), args.idle_partitions, max(1, args.idle_partitions // 10), args.broker_arg))
    finally:
        if mock is not None:
            mock.close()
        if broker is not None:
            code = broker.stop()
            if code not in (0, None):
                m.failures.append(f"broker exited with code {code}")
            if m.failures:
                _say(broker.log_tail())
    return m, broker


def _run_suite(name: str, fn: Callable[[argparse.Namespace, Path], SuiteResult], args: argparse.Namespace,
               work_dir: Path) -> SuiteResult:
    _say(f"=== suite {name}")
    try:
        res = fn(args, work_dir)
    except Exception as exc:
        _say(f"suite {name} failed: {exc!r}")
        traceback.print_exc(file=sys.stderr)
        return SuiteResult(name, failures=[f"suite {name}: {exc}"])
    if res.skipped:
        _say(res.skipped)
    return res


def run(args: argparse.Namespace, argv: Sequence[str], workload_meta: dict[str, Any] | None = None) -> int:
    """One run with options already resolved (:func:`parse_args`); returns the exit status."""
    started, t0 = datetime.now(UTC), time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="keel-bench-"))
    if args.data_dir is None:
        data_dir, log_path = tmp / "data", tmp / "broker.log"
    else:  # the caller keeps the data, so keep the broker's log beside it
        data_dir = args.data_dir
        log_path = data_dir.with_name(data_dir.name + ".broker.log")
    figures: list[Figure] = []
    failures: list[str] = []
    suite_meta: dict[str, Any] = {"suites": args.suite, "skipped": []}
    m: Measurements | None = None
    broker: BrokerProcess | None = None
    try:
        if "local" in args.suite:
            _say("=== suite local")
            m, broker = measure(args, data_dir, log_path)
            figures += build_figures(m, args)
            failures += m.failures
            suite_meta.update(m.meta)
        extra = {"s3": s3_suite.run, "failover": failover_suite.run}
        for name in args.suite:
            if name in extra:
                res = _run_suite(name, extra[name], args, tmp / name)
                figures += res.figures
                failures += res.failures
                suite_meta.update(res.meta)
                if res.skipped:
                    suite_meta["skipped"].append(res.skipped)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if args.data_dir is not None and not args.bootstrap and "local" in args.suite:
            _say(f"broker log kept in {log_path}")
    meta = {**metadata(args, argv, broker, started, time.monotonic() - t0, workload_meta), **suite_meta,
            "failures": failures}
    print(report.format_table(figures), flush=True)
    series = m.series if m is not None else []
    report.write_json(args.out, figures, meta, {"interval_s": args.series_interval, "phases": series})
    _say(f"wrote {args.out}")
    if not args.no_plot and m is not None:
        plotted = {name: [v or 0.0 for v in pcts.values()]
                   for name, pcts in latency_series(m).items() if all(pcts.values())}
        for png, write in ((args.out.with_suffix(".png"), lambda path: report.write_plot(path, plotted)),
                           (args.out.with_name(f"{args.out.stem}-throughput.png"),
                            lambda path: report.write_throughput_plot(path, series))):
            why_not = write(png)
            _say(f"plot {png.name} not written: {why_not}" if why_not else f"wrote {png}")
    for skipped in suite_meta["skipped"]:
        _say(f"SKIPPED: {skipped}")
    for failure in failures:
        _say(f"FAILED: {failure}")
    return 1 if failures else 0


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, dict[str, Any]]:
    """Options with the workload resolved (option > --workload file > default), and ``meta.workload``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        resolved = workload_spec.resolve(args)
    except workload_spec.WorkloadError as exc:
        parser.error(str(exc))
    if args.series_interval <= 0:
        parser.error("--series-interval must be positive")
    if args.s3_catchup_rounds < 1:
        parser.error("--s3-catchup-rounds must be at least 1")
    resolved.update(producers=args.topics * args.producers_per_topic,
                    consumers=args.topics * min(args.consumers_per_topic, args.partitions))
    return args, resolved


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, workload_meta = parse_args(argv)
    return run(args, argv, workload_meta)
