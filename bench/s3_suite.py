"""The ``s3`` suite: Keel on a real S3 server (SeaweedFS) against raw S3 calls to that server.

With ``--wal object`` every acknowledged produce costs at least one PUT, and a
cold catch-up read costs GETs of segment objects; so the floor for each is
the same S3 call made directly with ``S3ObjectStore`` in the same run:

- ``s3_produce_latency_p50/p99``: ack latency of a broker with the object
  WAL, next to ``raw_put_latency_p*`` (PUT of an object the size of the WAL
  object one 1 KiB record produces, as the create-only PUT the WAL makes).
- ``s3_produce_vs_paced_put_p50/p99``: the same ack latency next to
  ``raw_paced_put_latency_p*``, the same PUTs started at the latency phase's
  rate on a fixed timetable, not one after another: the store alone at that
  load, waking from idle between requests and overlapping PUTs as the
  broker's do.  Not the target's baseline; it shows which part of the gap
  is the store's own at that rate.
- ``s3_catchup_read``: MB/s of a consumer reading a topic from offset 0
  after a broker restart (cold caches), next to ``raw_get_read`` (the same
  segment objects read sequentially in ranged GETs).  Both are the median of
  ``--s3-catchup-rounds`` passes (the broker restarted before each read): a
  single pass over 150 MB took 0.15-0.3 s, and one tree's ratio swung from
  0.47 to 0.72 between three runs.

- ``s3_remote_produce_latency_p50/p99``: the same latency phase with a proxy in front of SeaweedFS that
  adds ``--s3-remote-latency-ms`` to every request (AWS S3 answers a small PUT in tens of milliseconds;
  SeaweedFS on the same cores in one or two), next to ``raw_remote_put_latency_p*``, the raw PUTs through
  the same proxy.  It shows what of the broker's cost is added to a PUT rather than multiplied with it.

Each baseline is measured right after its Keel figure, with the broker stopped:
the raw PUTs after the latency phase, and a raw GET pass after each cold read
(the note gives the ratio of each such pair).  The machine's speed drifts over
minutes, and baselines taken at the end of the suite moved the ratios with it.

SeaweedFS comes from tests/s3server.py; without a ``weed`` binary the suite
is skipped with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from bench import workload
from bench.broker_proc import REPO_ROOT, BrokerProcess, read_cpu_seconds
from bench.report import Figure
from bench.suite_common import MiB, SuiteResult, join_notes, pct_ms, sample_note, say
from objectstore.s3 import S3ObjectStore

if str(REPO_ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "tests"))
from chaos.fault_proxy import FaultProxyProcess  # noqa: E402

from s3server import SeaweedFS, find_weed  # noqa: E402

BUCKET = "keel-bench"
# A WAL object holding one 1 KiB record: the record batch (~1.1 KiB) plus the WAL entry header.  The objects
# the broker really wrote are listed into the metadata; at 500/s with linger 5 ms most hold 1-3 records.
WAL_OBJECT_BYTES = 1152
GET_RANGE_BYTES = 4 * MiB


class _CpuUse:
    """CPU seconds that named processes (the store, the broker, this process with its client threads) use
    over one stretch of wall time: on 2 cores these three share, the store's part says how close to
    saturation a phase ran."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = {name: pid for name, pid in pids.items() if pid is not None}
        self.used: dict[str, float] = {}
        self.seconds = 0.0
        self._start: dict[str, float] = {}
        self._t0 = 0.0

    def __enter__(self) -> _CpuUse:
        self._start = self._read()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.seconds = time.perf_counter() - self._t0
        end = self._read()
        self.used = {name: end[name] - self._start[name] for name in end if name in self._start}

    def _read(self) -> dict[str, float]:
        out = {}
        for name, pid in self.pids.items():
            with contextlib.suppress(OSError):  # exited meanwhile: left out
                out[name] = read_cpu_seconds(pid)
        return out

    def cores(self) -> str:
        """``"store 0.93, broker 0.36, client 0.21 cores"``: each process's CPU seconds per wall second."""
        if not self.used or self.seconds <= 0:
            return ""
        return "CPU " + ", ".join(f"{name} {used / self.seconds:.2f}" for name, used in self.used.items()) + " cores"

    def per(self, count: int, unit: str) -> str:
        """``"store 1.42, client 0.50 ms CPU a PUT"``."""
        if not self.used or count <= 0:
            return ""
        return ", ".join(f"{name} {1e3 * used / count:.2f}" for name, used in self.used.items()) + f" ms CPU a {unit}"


def weed_missing() -> str:
    """Why the suite cannot run here, or "" if it can."""
    try:
        find_weed()
    except FileNotFoundError as exc:
        return str(exc)
    return ""


class _Store:
    """A synchronous face on one S3ObjectStore, driven by its own event loop."""

    def __init__(self, s3: SeaweedFS, prefix: str, endpoint_url: str | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self.store = S3ObjectStore(BUCKET, endpoint_url=endpoint_url or s3.endpoint_url, region=s3.region,
                                   prefix=prefix, access_key=s3.access_key, secret_key=s3.secret_key)

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        self.run(self.store.close())
        self.loop.close()


async def _put_latencies(store: S3ObjectStore, count: int, size: int, rate: float = 0.0) -> list[float]:
    """Create-only PUTs of ``size`` bytes, each timed: one after another, or with ``rate`` each started on
    a fixed timetable of ``rate`` a second whether the ones before it have finished or not, as the
    broker's appends arrive (the store alone at the latency phase's offered rate, waking from idle between
    requests and overlapping when one runs long)."""
    prefix = "raw-paced-put" if rate > 0 else "raw-put"
    payload = bytes(size)
    await store.put(f"{prefix}/warmup", payload)
    out: list[float] = []

    async def one(i: int) -> None:
        t0 = time.perf_counter()
        await store.put_if_absent(f"{prefix}/{i:08d}", payload)
        out.append(time.perf_counter() - t0)

    if rate <= 0:
        for i in range(count):
            await one(i)
        return out
    loop = asyncio.get_running_loop()
    start = loop.time()
    started = []
    for i in range(count):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        started.append(asyncio.ensure_future(one(i)))
    await asyncio.gather(*started)
    return out


async def _sequential_get(store: S3ObjectStore, objects: list[tuple[str, int]]) -> tuple[int, float]:
    """Read every object in GET_RANGE_BYTES ranges, one request at a time: (bytes, seconds).  Each body's
    buffer is handed back at once, so every GET after the first fills the same memory: the floor has no
    page faults, which a broker's cold read (its block cache filling) cannot avoid."""
    total = 0
    t0 = time.perf_counter()
    for key, size in objects:
        for start in range(0, size, GET_RANGE_BYTES):
            body = await store.get(key, start, min(size, start + GET_RANGE_BYTES))
            total += len(body)
            if isinstance(body, memoryview):
                buffer = body.obj
                body.release()
                store.recycle(buffer)
    return total, time.perf_counter() - t0


def _topic_id(store: _Store, topic: str) -> str | None:
    try:
        doc = json.loads(store.run(store.store.get(f"meta/topics/{topic}.json")))
    except Exception:  # noqa: BLE001 - the fallback reads every segment
        return None
    value = doc.get("topic_id") or doc.get("id")
    return str(value) if value else None


def _wait_high_watermark(bootstrap: str, topic: str, want: int, timeout: float = 60.0) -> int:
    """After a restart: wait until the partition is served again and holds ``want`` records."""
    consumer = Consumer(workload.consumer_config(bootstrap))
    deadline = time.monotonic() + timeout
    high, last_error = -1, ""
    try:
        while time.monotonic() < deadline:
            try:
                part = consumer.list_topics(topic, timeout=5).topics[topic].partitions.get(0)
                if part is None or part.leader < 0:
                    raise RuntimeError(f"{topic}-0 has no leader yet")
                _low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=5)
                if high >= want:
                    return high
            except Exception as exc:  # noqa: BLE001 - not leader yet, keep asking
                last_error = str(exc)
            time.sleep(0.2)
    finally:
        consumer.close()
    raise TimeoutError(f"{topic}-0 high watermark {high} < {want} after {timeout:.0f} s {last_error}")


def _stop(broker: BrokerProcess, res: SuiteResult) -> None:
    """Stops the broker if it runs; an exit code other than 0 is a failure (reported once per process)."""
    proc = broker.proc
    code = broker.stop()
    note = f"s3 broker (pid {proc.pid if proc else '?'}) exited with code {code}"
    if code not in (0, None) and note not in res.failures:
        res.failures.append(note)


def _median_index(values: list[float]) -> int | None:
    """Where the median of ``values`` (the upper one of an even count) stands in it; None if it is empty."""
    if not values:
        return None
    return sorted(range(len(values)), key=values.__getitem__)[len(values) // 2]


def _pids(s3: SeaweedFS, broker: BrokerProcess | None = None) -> dict[str, int | None]:
    """The processes whose CPU a phase reports: the store, the broker (if one runs), this process."""
    return {"store": s3.proc.pid if s3.proc else None, "broker": broker.proc.pid if broker and broker.proc else None,
            "client": os.getpid()}


def _broker_flags(args: Any, s3: SeaweedFS, endpoint_url: str, prefix: str) -> list[str]:
    return ["--s3-endpoint", endpoint_url, "--bucket", BUCKET, "--prefix", prefix, "--region", s3.region,
            "--wal", "object", "--flush-interval-ms", str(args.s3_flush_interval_ms), *args.broker_arg]


def _warmup(args: Any) -> int:
    """Unmeasured records before a latency phase: half a second's worth, 20 to 1,000."""
    return min(1000, max(20, round(args.s3_rate / 2)))


def _remote_phase(args: Any, work_dir: Path, s3: SeaweedFS, prefix: str, res: SuiteResult,
                  errors: dict[str, str]) -> tuple[workload.LatencyRun | None, list[float]]:
    """The latency phase again, through a proxy that adds ``--s3-remote-latency-ms`` to every request; then
    raw PUTs through the same proxy."""
    delay = args.s3_remote_latency_ms
    say(f"s3: object-WAL produce latency with {delay:g} ms added to every S3 request, "
        f"{args.s3_remote_records:,} records, then as many raw PUTs")
    lat: workload.LatencyRun | None = None
    puts: list[float] = []
    with FaultProxyProcess(s3.endpoint_url, work_dir / "s3-remote-proxy.log") as proxy:
        proxy.set_faults(latency_ms=delay)
        broker = BrokerProcess(work_dir / "s3-remote-broker", work_dir / "s3-remote-broker.log",
                               _broker_flags(args, s3, proxy.url, prefix + "-remote"), env=s3.env())
        try:
            broker.start(timeout=120)
            topic = f"{prefix}-s3remote"
            workload.prepare_topic(broker.bootstrap, topic, 1)
            lat = workload.produce_latency(broker.bootstrap, topic, args.s3_rate, args.s3_remote_records,
                                           args.record_size, _warmup(args))
        except Exception as exc:  # noqa: BLE001 - recorded; the raw PUTs still run
            errors["remote"] = f"failed: {exc}"
            say(broker.log_tail())
        finally:
            _stop(broker, res)
        store = _Store(s3, prefix + "-remote-raw", endpoint_url=proxy.url)
        try:
            puts = store.run(_put_latencies(store.store, args.s3_remote_records, WAL_OBJECT_BYTES))
        finally:
            store.close()
    return lat, puts


def _phase_failures(res: SuiteResult, lat: workload.LatencyRun, what: str) -> str:
    """Records a latency phase that lost or failed records as a failure; the note saying so, or ""."""
    if not (lat.errors or lat.missing):
        return ""
    res.failures.append(f"{what}: {lat.errors} errors, {lat.missing} missing")
    return f"{lat.errors} errors, {lat.missing} missing"


def _latency_figures(res: SuiteResult, kind: str, lat: workload.LatencyRun | None, puts: list[float],
                     note: str) -> None:
    """p50 and p99 of a latency phase (``s3_<kind>produce_latency_p*``) next to its raw PUTs'."""
    for p in (50.0, 99.0):
        res.figures.append(Figure(
            f"s3_{kind}produce_latency_p{p:g}", pct_ms(lat.latencies if lat else None, p), "ms",
            f"raw_{kind}put_latency_p{p:g}", pct_ms(puts, p), samples=len(lat.latencies) if lat else None,
            note=note))


def run(args: Any, work_dir: Path) -> SuiteResult:
    res = SuiteResult("s3")
    missing = weed_missing()
    if missing:
        res.skipped = f"s3 suite skipped: {missing}"
        return res
    run_id = uuid.uuid4().hex[:8]
    prefix = f"bench-{run_id}"
    size = args.record_size
    lat_topic, read_topic = f"bench-{run_id}-s3lat", f"bench-{run_id}-s3read"
    read_records = max(1, int(args.s3_catchup_mb * 1e6 / size))
    with SeaweedFS(work_dir / "weed") as s3:
        say(f"SeaweedFS on {s3.endpoint_url}")
        broker = BrokerProcess(work_dir / "s3-broker", work_dir / "s3-broker.log",
                               _broker_flags(args, s3, s3.endpoint_url, prefix), env=s3.env())
        store = _Store(s3, prefix)
        lat: workload.LatencyRun | None = None
        remote_lat: workload.LatencyRun | None = None
        remote_puts: list[float] = []
        reads: list[workload.Throughput] = []
        passes: list[tuple[int, float]] = []
        puts: list[float] = []
        paced_puts: list[float] = []
        segments: list[tuple[str, int]] = []
        read_errors = 0
        errors: dict[str, str] = {}
        wal_sizes: list[int] = []
        wal_object = WAL_OBJECT_BYTES
        cpu: dict[str, _CpuUse] = {}
        read_cpus: list[_CpuUse] = []
        get_cpus: list[_CpuUse] = []
        try:
            # Each baseline runs right after the Keel figure it is the floor of, with the broker stopped so
            # that nothing competes with it: the machine's speed drifts over minutes, and a ratio of two
            # figures taken minutes apart moved with that drift.
            broker.start(timeout=60)
            res.meta["broker_command"] = " ".join(broker.command())
            say(f"s3: object-WAL produce latency at {args.s3_rate:g}/s for {args.s3_records:,} records")
            try:
                workload.prepare_topic(broker.bootstrap, lat_topic, 1)
                with _CpuUse(_pids(s3, broker)) as cpu["lat"]:
                    lat = workload.produce_latency(broker.bootstrap, lat_topic, args.s3_rate, args.s3_records,
                                                   size, _warmup(args))
            except Exception as exc:  # noqa: BLE001 - recorded, the other phase still runs
                errors["lat"] = f"failed: {exc}"
                say(broker.log_tail())
            wal_sizes = [o.size for o in store.run(store.store.list("wal/"))]
            _stop(broker, res)
            say(f"s3: raw PUT latency, {args.s3_put_samples:,} x {wal_object} B")
            with _CpuUse(_pids(s3)) as cpu["puts"]:
                puts = store.run(_put_latencies(store.store, args.s3_put_samples, wal_object))
            if args.s3_rate > 0:
                say(f"s3: raw PUT latency paced at {args.s3_rate:g}/s, {args.s3_put_samples:,} x {wal_object} B")
                with _CpuUse(_pids(s3)) as cpu["paced_puts"]:
                    paced_puts = store.run(_put_latencies(store.store, args.s3_put_samples, wal_object, args.s3_rate))
                res.meta["s3_raw_paced_put_seconds"] = round(cpu["paced_puts"].seconds, 3)
            if args.s3_remote_latency_ms > 0:
                try:
                    remote_lat, remote_puts = _remote_phase(args, work_dir, s3, prefix, res, errors)
                except Exception as exc:  # noqa: BLE001 - the proxy or the raw PUTs failed; the read phase still runs
                    errors["remote"] = f"failed: {exc}"
            broker.start(timeout=60)
            say(f"s3: producing {read_records:,} records ({args.s3_catchup_mb:g} MB) for the catch-up read")
            try:
                workload.prepare_topic(broker.bootstrap, read_topic, 1)
                workload.produce_throughput(broker.bootstrap, read_topic, read_records, size)
                for round_ in range(1, args.s3_catchup_rounds + 1):
                    say(f"s3: restarting the broker (cold caches), catch-up read {round_}/{args.s3_catchup_rounds}, "
                        "then a raw GET pass")
                    _stop(broker, res)
                    broker.start(timeout=60)
                    _wait_high_watermark(broker.bootstrap, read_topic, read_records + 1)
                    with _CpuUse(_pids(s3, broker)) as read_cpu:
                        reads.append(workload.consume_throughput(broker.bootstrap, read_topic, 1))
                    read_cpus.append(read_cpu)
                    _stop(broker, res)
                    topic_id = _topic_id(store, read_topic)
                    listing = store.run(store.store.list(f"data/{topic_id}/" if topic_id else "data/"))
                    segments = sorted((o.key, o.size) for o in listing)
                    with _CpuUse(_pids(s3)) as get_cpu:
                        passes.append(store.run(_sequential_get(store.store, segments)) if segments else (0, 0.0))
                    get_cpus.append(get_cpu)
                read_errors = sum(r.errors for r in reads)
            except Exception as exc:  # noqa: BLE001
                errors["read"] = f"failed: {exc}"
                say(broker.log_tail(6000))
        finally:
            _stop(broker, res)
            store.close()
    # Each round's CPU was recorded beside its read and its GET pass: the median round gives both.
    mid = _median_index([r.mb_per_s for r in reads])
    read, read_cpu = (reads[mid], read_cpus[mid]) if mid is not None else (None, None)
    mid = _median_index([g / t if t > 0 else 0.0 for g, t in passes])
    (got, secs), get_cpu = (passes[mid], get_cpus[mid]) if mid is not None else ((0, 0.0), None)
    paired = [r.mb_per_s / (g / 1e6 / t) for r, (g, t) in zip(reads, passes, strict=False) if g and t > 0]
    res.meta.update(s3_wal_object_bytes=wal_object, s3_wal_objects_listed=len(wal_sizes),
                    s3_wal_object_bytes_seen_median=statistics.median(wal_sizes) if wal_sizes else None,
                    s3_wal_object_bytes_seen_min=min(wal_sizes, default=None),
                    s3_segment_objects=len(segments), s3_segment_bytes=got, s3_get_range_bytes=GET_RANGE_BYTES,
                    s3_raw_get_seconds=round(secs, 3), s3_prefix=prefix,
                    s3_cpu_seconds={phase: {name: round(used, 3) for name, used in use.used.items()} | {
                        "wall": round(use.seconds, 3)} for phase, use in (
                            *cpu.items(), ("median_read", read_cpu), ("median_get_pass", get_cpu)) if use})
    puts_cpu = cpu["puts"].per(len(puts), "PUT") if "puts" in cpu else ""
    lat_note = errors.get("lat", "")
    if lat is not None:
        lat_note = join_notes(_phase_failures(res, lat, "s3 produce latency") or lat_note,
                              sample_note(len(lat.latencies)),
                              f"offered only {lat.achieved_rate:,.0f}/s"
                              if lat.achieved_rate < 0.95 * args.s3_rate else "")
    _latency_figures(res, "", lat, puts, join_notes(
        lat_note, f"PUT {wal_object} B x {len(puts):,}", puts_cpu,
        f"during the phase {cpu['lat'].cores()}" if "lat" in cpu else ""))
    if paced_puts:
        for p in (50.0, 99.0):
            res.figures.append(Figure(
                f"s3_produce_vs_paced_put_p{p:g}", pct_ms(lat.latencies if lat else None, p), "ms",
                f"raw_paced_put_latency_p{p:g}", pct_ms(paced_puts, p), samples=len(lat.latencies) if lat else None,
                note=join_notes(
                    f"the same latency phase against PUTs started {args.s3_rate:g} a second on a fixed timetable "
                    f"(PUT {wal_object} B x {len(paced_puts):,})", cpu["paced_puts"].per(len(paced_puts), "PUT"),
                    "the target compares with PUTs one after another")))
    if args.s3_remote_latency_ms > 0:
        remote_note = errors.get("remote", "")
        if remote_lat is not None:
            remote_note = _phase_failures(res, remote_lat, "s3 produce latency with added latency") or remote_note
        _latency_figures(res, "remote_", remote_lat, remote_puts,
                         join_notes(remote_note, f"+{args.s3_remote_latency_ms:g} ms a request (proxy); "
                                                 f"PUT {wal_object} B x {len(remote_puts):,}"))
    read_note = errors.get("read", "")
    if read is not None and read_errors:
        res.failures.append(f"s3 catch-up read: {read_errors} errors or missing records")
        read_note = join_notes(read_note, f"{read_errors} errors/missing")
    res.figures.append(Figure(
        "s3_catchup_read", read.mb_per_s if read else None, "MB/s", "raw_get_read",
        got / 1e6 / secs if secs > 0 else None, samples=read.records if read else None,
        note=join_notes(read_note, f"{got / 1e6:,.0f} MB in {len(segments)} segments, "
                                   f"{GET_RANGE_BYTES // MiB} MiB GETs, median of {len(reads)} cold reads "
                                   f"({', '.join(f'{r.mb_per_s:.0f}' for r in reads)}) and of "
                                   f"{len(passes)} GET passes, each right after its read; ratio of each pair "
                                   f"{', '.join(f'{x:.2f}' for x in paired)}",
                        f"median read {read_cpu.cores()}" if read_cpu else "",
                        f"median GET pass {get_cpu.cores()}" if get_cpu else "")))
    for key in ("lat", "remote", "read"):
        if key in errors:
            res.failures.append(f"s3 {key}: {errors[key]}")
    return res
