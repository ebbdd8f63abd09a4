"""Keep ``make bench`` from rotting: run the real harness in a tiny mode and check its output.

The runs start a real broker process and librdkafka's mock cluster, so they
exercise every phase of ``python -m bench`` in a few seconds (once with the
defaults, once with a multi-topic, multi-client workload file); the figures
themselves are meaningless at this size, only their presence and shape, and
that the workload was applied, are checked.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.baselines import MockCluster, MockUnavailable
from bench.failover_suite import StoreSnapshot, orphan_bytes, segment_bytes_copied
from bench.harness import SUITES, Measurements, Phase, build_figures, build_parser, parse_args
from bench.report import Figure, format_table, percentile
from bench.workload import LatencyRun, Throughput

REPO_ROOT = Path(__file__).resolve().parents[2]
EXPECTED = {
    "produce_throughput": "mock_produce_throughput",
    "produce_throughput_records": "mock_produce_throughput_records",
    "consume_throughput": "mock_consume_throughput",
    "produce_latency_p50": "fsync_1KiB_p50",
    "produce_latency_p99": "fsync_1KiB_p99",
    "produce_latency_p99.9": "fsync_1KiB_p99.9",
    "produce_latency_max_rate_p50": "mock_produce_latency_max_rate_p50",
    "produce_latency_max_rate_p99": "mock_produce_latency_max_rate_p99",
    "produce_latency_max_rate_p99.9": "mock_produce_latency_max_rate_p99.9",
    "e2e_latency_p50": "mock_e2e_latency_p50",
    "e2e_latency_p99": "mock_e2e_latency_p99",
    "e2e_latency_p99.9": "mock_e2e_latency_p99.9",
    "broker_rss": "broker_rss_at_start",
    "broker_peak_rss": "broker_rss_at_start",
    "broker_rss_idle_partitions": "broker_rss_at_start",
}


def _positive(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def test_percentile_is_nearest_rank() -> None:
    samples = list(range(1, 1001))  # 1..1000, shuffled order must not matter
    samples.reverse()
    assert percentile(samples, 50) == 500
    assert percentile(samples, 99) == 990
    assert percentile(samples, 99.9) == 999
    assert percentile(samples, 100) == 1000
    assert percentile([7.0], 99.9) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_figure_ratio_and_table() -> None:
    fig = Figure("produce_latency_p99", 3.0, "ms", "fsync_1KiB_p99", 1.5)
    assert fig.ratio == pytest.approx(2.0)
    missing = Figure("e2e_latency_p50", 2.0, "ms", "mock_e2e_latency_p50", None, note="baseline missing")
    assert missing.ratio is None
    table = format_table([fig, missing])
    assert "2x" in table and "baseline missing" in table


def test_missing_mock_leaves_baselines_empty_but_keeps_figures() -> None:
    args = build_parser().parse_args(["--records", "4", "--rate", "1000"])
    m = Measurements(fsync=[0.001] * 10, rss_start_kib=1024, rss_end_kib=2048, rss_peak_kib=4096)
    m.keel_put = Phase(Throughput(records=4, bytes=4096, seconds=0.001, latencies=[0.004] * 4))
    m.keel_get = Phase(Throughput(records=4, bytes=4096, seconds=0.002, read=4))
    m.keel_lat = Phase(LatencyRun(latencies=[0.002] * 10, sent=10, achieved_rate=1000.0))
    m.keel_e2e = Phase(LatencyRun(latencies=[0.003] * 10, sent=10, achieved_rate=1000.0))
    m.mock_put = m.mock_get = m.mock_e2e = Phase(None, "baseline missing: test")
    figures = {f.name: f for f in build_figures(m, args)}
    assert set(figures) == set(EXPECTED)
    assert figures["produce_throughput"].value == pytest.approx(4.096)
    assert figures["produce_throughput"].baseline_value is None and figures["produce_throughput"].ratio is None
    assert "baseline missing" in figures["produce_throughput"].note
    assert figures["produce_latency_p99"].ratio == pytest.approx(2.0)
    assert figures["e2e_latency_p50"].value == pytest.approx(3.0) and figures["e2e_latency_p50"].ratio is None
    assert figures["broker_peak_rss"].ratio == pytest.approx(4.0)
    assert figures["produce_latency_max_rate_p99"].value == pytest.approx(4.0)


def _tiny_run(tmp_path: Path, *extra: str) -> tuple[dict[str, Any], subprocess.CompletedProcess[str], Path]:
    """``python -m bench --suite local`` at a tiny size; returns the JSON document, the process and --out."""
    try:
        MockCluster().close()
    except MockUnavailable as exc:
        pytest.skip(f"librdkafka mock cluster unavailable: {exc}")
    out = tmp_path / "latest.json"
    cmd = [sys.executable, "-m", "bench", "--suite", "local", *extra, "--fsync-iterations", "200", "--idle-partitions", "20",
           "--data-dir", str(tmp_path / "data"), "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    assert "\x1b[" not in proc.stderr, "progress bars must not be drawn when stderr is not a terminal"
    return json.loads(out.read_text()), proc, out


def _check_figures(doc: dict[str, Any], stdout: str, record_size: int) -> dict[str, dict[str, Any]]:
    figures = {f["name"]: f for f in doc["figures"]}
    assert set(figures) == set(EXPECTED)
    for name, baseline in EXPECTED.items():
        f = figures[name]
        assert f["baseline_name"] == baseline
        assert _positive(f["value"]), f
        assert _positive(f["baseline_value"]), f
        assert _positive(f["ratio"]), f
        assert f["ratio"] == pytest.approx(f["value"] / f["baseline_value"])
        assert f["unit"]
        assert name in stdout
    assert figures["produce_throughput_records"]["value"] * record_size / 1e6 == pytest.approx(
        figures["produce_throughput"]["value"])
    lat = [figures[f"produce_latency_{p}"]["value"] for p in ("p50", "p99", "p99.9")]
    assert lat == sorted(lat)
    assert doc["meta"]["failures"] == []
    return figures


def _phases(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    series = doc["timeseries"]
    assert series["interval_s"] > 0
    return {(p["target"], p["phase"]): p for p in series["phases"]}


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


def test_tiny_run_writes_every_figure(tmp_path: Path) -> None:
    doc, proc, out = _tiny_run(tmp_path, "--records", "2000", "--duration", "1", "--rate", "500")
    figures = _check_figures(doc, proc.stdout, 1024)
    assert figures["produce_latency_p50"]["samples"] == 500

    meta = doc["meta"]
    assert meta["machine"]["cores"] >= 1
    assert meta["versions"]["confluent_kafka"] and meta["versions"]["librdkafka"]
    assert meta["command"].startswith("python -m bench --suite local --records 2000")
    assert meta["date"]
    assert meta["workload"]["name"] == "custom" and meta["workload"]["file"] is None
    assert meta["workload"]["producer_rate"] == 500 and meta["workload"]["partitions_per_topic"] == 4
    phases = _phases(doc)
    assert {kind for _, kind in phases} == {"produce_throughput", "consume_throughput", "produce_latency",
                                           "e2e_latency"}
    assert sum(phases["keel", "produce_throughput"]["produced_records"]) == 2000
    if _has_matplotlib():
        assert out.with_suffix(".png").stat().st_size > 0
        assert (tmp_path / "latest-throughput.png").stat().st_size > 0


def test_tiny_run_applies_a_workload_file(tmp_path: Path) -> None:
    spec = tmp_path / "tiny.toml"
    spec.write_text(
        'name = "tiny-keyed"\ntopics = 2\npartitions_per_topic = 3\nmessage_size = 256\n'
        'producers_per_topic = 2\nconsumers_per_topic = 2\nproducer_rate = 9999\n'
        'key_distribution = "zipf"\nkeys = 50\ntest_duration_s = 1\nwarmup_s = 0.2\n'
        'throughput_records = 3000\n')
    # --rate overrides the file's producer_rate; everything else comes from the file.
    doc, proc, out = _tiny_run(tmp_path, "--workload", str(spec), "--rate", "400")
    figures = _check_figures(doc, proc.stdout, 256)
    assert figures["produce_latency_p50"]["samples"] == 400  # 400/s x 1 s
    assert figures["produce_throughput"]["samples"] == 3000

    meta = doc["meta"]
    w = meta["workload"]
    assert w["name"] == "tiny-keyed" and w["file"] == str(spec)
    assert (w["topics"], w["partitions_per_topic"], w["message_size"]) == (2, 3, 256)
    assert (w["producers"], w["consumers"]) == (4, 4)
    assert w["producer_rate"] == 400 and w["overridden_by_options"] == ["producer_rate"]
    assert meta["options"]["record_size"] == 256
    assert meta["keel_partitions"] == 3
    assert meta["warmup_records"] == 80  # 400/s x 0.2 s
    keys = meta["e2e_keys"]
    assert keys["records"] == 400 and keys["keyless"] == 0
    assert 1 < keys["distinct"] <= 50
    assert keys["hottest_share"] > 0.1  # zipf over 50 keys: the hottest has ~22 %, uniform would give 2 %

    phases = _phases(doc)
    assert sum(phases["keel", "produce_throughput"]["produced_records"]) == 3000
    assert sum(phases["keel", "consume_throughput"]["consumed_records"]) == 3000 + 4  # + a warm-up record each
    e2e = phases["keel", "e2e_latency"]
    assert sum(e2e["produced_records"]) == sum(e2e["consumed_records"]) == 400
    for p in phases.values():
        assert len(p["t_s"]) == len(p["produced_records_per_s"]) == len(p["consumed_records_per_s"])
        assert p["t_s"] == sorted(p["t_s"])
    if _has_matplotlib():
        assert out.with_suffix(".png").stat().st_size > 0
        assert (tmp_path / "latest-throughput.png").stat().st_size > 0


def test_suite_option_defaults_to_all_and_rejects_unknown_names() -> None:
    assert build_parser().parse_args([]).suite == list(SUITES)
    assert build_parser().parse_args(["--suite", "s3,failover"]).suite == ["s3", "failover"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--suite", "local,nope"])


def test_s3_catchup_rounds_default_to_three_and_must_be_positive() -> None:
    args, _meta = parse_args([])
    assert args.s3_catchup_rounds == 3
    with pytest.raises(SystemExit):
        parse_args(["--s3-catchup-rounds", "0"])


def test_segment_bytes_copied_counts_rewrites_and_recommitted_offsets_only() -> None:
    def seg(p: int, base: int, epoch: int) -> str:
        return f"data/t1/{p}/{base:020d}-{epoch}.seg"

    committed = [(0, 49, seg(0, 0, 1)), (50, 79, seg(0, 50, 1)), (0, 6, seg(1, 0, 1))]
    objects = {seg(0, 0, 1): 100, seg(0, 50, 1): 200, seg(1, 0, 1): 300, seg(0, 80, 1): 30}  # 80: orphan
    before = StoreSnapshot(objects, committed)
    # the new leader commits replayed and new data past the old ends (80 again: the orphan's offsets)
    grown = [*committed, (80, 99, seg(0, 80, 2)), (7, 9, seg(1, 7, 2))]
    after = StoreSnapshot({**objects, seg(0, 80, 2): 40, seg(1, 7, 2): 10}, grown)
    assert segment_bytes_copied(before, after) == 0
    assert orphan_bytes(before) == 30 and orphan_bytes(after) == 30
    rewritten = StoreSnapshot({**after.objects, seg(0, 50, 1): 250}, grown)
    assert segment_bytes_copied(before, rewritten) == 250
    recopied = StoreSnapshot({**after.objects, seg(0, 50, 2): 200}, [*grown, (50, 79, seg(0, 50, 2))])
    assert segment_bytes_copied(before, recopied) == 200


def _tiny_suite(tmp_path: Path, suite: str, *extra: str) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """``python -m bench --suite SUITE`` at a tiny size: its figures by name, and its meta."""
    out = tmp_path / f"{suite}.json"
    cmd = [sys.executable, "-m", "bench", "--suite", suite, "--no-plot", *extra, "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    doc = json.loads(out.read_text())
    assert doc["meta"]["failures"] == [] and doc["meta"]["skipped"] == []
    figures = {f["name"]: f for f in doc["figures"]}
    for name, f in figures.items():
        assert name in proc.stdout
        if f["baseline_value"] is not None:
            assert f["ratio"] == pytest.approx(f["value"] / f["baseline_value"])
    return figures, doc["meta"]


def test_tiny_s3_suite_measures_each_figure_against_its_raw_s3_floor(tmp_path: Path) -> None:
    from bench.s3_suite import weed_missing  # noqa: PLC0415

    if missing := weed_missing():
        pytest.skip(missing)
    figures, meta = _tiny_suite(tmp_path, "s3", "--s3-records", "300", "--s3-put-samples", "300",
                                "--s3-catchup-mb", "4", "--s3-catchup-rounds", "2", "--s3-remote-records", "150")
    assert set(figures) == {"s3_produce_latency_p50", "s3_produce_latency_p99", "s3_catchup_read",
                            "s3_remote_produce_latency_p50", "s3_remote_produce_latency_p99",
                            "s3_produce_vs_paced_put_p50", "s3_produce_vs_paced_put_p99"}
    for name, baseline in (("s3_produce_latency_p50", "raw_put_latency_p50"),
                           ("s3_produce_latency_p99", "raw_put_latency_p99"), ("s3_catchup_read", "raw_get_read"),
                           ("s3_produce_vs_paced_put_p50", "raw_paced_put_latency_p50"),
                           ("s3_produce_vs_paced_put_p99", "raw_paced_put_latency_p99"),
                           ("s3_remote_produce_latency_p50", "raw_remote_put_latency_p50"),
                           ("s3_remote_produce_latency_p99", "raw_remote_put_latency_p99")):
        assert figures[name]["baseline_name"] == baseline
        assert _positive(figures[name]["value"]) and _positive(figures[name]["baseline_value"]), figures[name]
    assert figures["s3_produce_latency_p50"]["value"] <= figures["s3_produce_latency_p99"]["value"]
    # The paced PUTs are compared with the same latency phase, and kept to its rate (500/s by default):
    # 300 of them cannot start in less than 299 / 500 s.
    for p in ("p50", "p99"):
        assert figures[f"s3_produce_vs_paced_put_{p}"]["value"] == figures[f"s3_produce_latency_{p}"]["value"]
    assert meta["s3_raw_paced_put_seconds"] >= 299 / 500
    # The proxy adds 20 ms (the default) to every request: to the raw PUTs, and to every acknowledgement.
    assert figures["s3_remote_produce_latency_p50"]["baseline_value"] >= 20
    assert figures["s3_remote_produce_latency_p50"]["value"] >= 20
    assert "ratio of each pair" in figures["s3_catchup_read"]["note"]
    assert meta["s3_segment_bytes"] >= 4e6 and meta["s3_segment_objects"] >= 1
    # Every phase says what CPU the store, the broker (where one ran) and the client used. Hundreds of PUTs
    # cost the store many clock ticks; a 4 MB read may take less than one.
    cpu = meta["s3_cpu_seconds"]
    assert set(cpu) == {"lat", "puts", "paced_puts", "median_read", "median_get_pass"}
    for phase, used in cpu.items():
        assert used["wall"] > 0 and used["store"] >= 0 and used["client"] >= 0, (phase, used)
        assert ("broker" in used) == (phase in ("lat", "median_read")), (phase, used)
    assert cpu["lat"]["store"] > 0 and cpu["lat"]["broker"] > 0 and cpu["puts"]["store"] > 0, cpu
    assert "ms CPU a PUT" in figures["s3_produce_latency_p99"]["note"]
    assert "ms CPU a PUT" in figures["s3_produce_vs_paced_put_p99"]["note"]
    assert "store" in figures["s3_catchup_read"]["note"]
    # (No check on the WAL objects listed after the latency phase: at this size the flusher may have
    # moved everything into segments and trimmed the WAL by then.)


def test_tiny_failover_suite_times_each_kill(tmp_path: Path) -> None:
    figures, meta = _tiny_suite(tmp_path, "failover", "--kills", "2")
    assert {"failover_time_p50", "failover_time_p99", "leader_takeover_p50", "segment_bytes_copied_per_move",
            "wal_batches_replayed_per_move"} <= set(figures)
    assert len(meta["failover_times_s"]) == 2 and all(_positive(t) for t in meta["failover_times_s"])
    assert figures["failover_time_p50"]["value"] <= figures["failover_time_p99"]["value"]
    assert figures["segment_bytes_copied_per_move"]["value"] == 0  # stateless brokers: a move copies no data
