"""The benchmark's workload description, key distributions and phase monitor, without a broker.

The tiny end-to-end runs are in test_bench_smoke.py; these check the parts
whose mistakes a tiny run would not show: option/file precedence, the
shipped workload files, the shape of each key distribution, how records are
shared out, and what the sampler and the progress bar produce.
"""

from __future__ import annotations

import io
import threading
import time
from collections import Counter
from itertools import islice
from pathlib import Path

import pytest

from bench import monitor, workload_spec
from bench.harness import build_parser, parse_args
from bench.workload import Keys, Meters, Schedule, _assignments


def test_defaults_without_a_file() -> None:
    args, meta = parse_args([])
    assert (args.rate, args.duration, args.records, args.record_size, args.partitions) == (2000.0, 30.0, 200_000,
                                                                                          1024, 4)
    assert (args.topics, args.producers_per_topic, args.consumers_per_topic) == (1, 1, 1)
    assert args.key_distribution == "none" and args.warmup == 0.5
    assert meta["name"] == "default" and meta["file"] is None and meta["set_by_options"] == []


def test_options_override_the_file_and_the_file_overrides_defaults(tmp_path: Path) -> None:
    spec = tmp_path / "w.toml"
    spec.write_text('topics = 3\nproducer_rate = 100\nmessage_size = 64\nkey_distribution = "random"\n')
    args, meta = parse_args(["--workload", str(spec), "--rate", "250", "--partitions", "7"])
    assert args.rate == 250.0  # option beats file
    assert args.partitions == 7  # option, file silent
    assert args.topics == 3 and args.record_size == 64 and args.key_distribution == "random"  # file
    assert args.duration == 30.0  # neither: default
    assert meta["name"] == "w"  # no name field: the file's stem
    assert meta["overridden_by_options"] == ["producer_rate"]
    assert sorted(meta["set_by_options"]) == ["partitions_per_topic", "producer_rate"]
    assert meta["producers"] == 3 and meta["consumers"] == 3


def test_shipped_workloads_load_and_default_matches_the_defaults() -> None:
    shipped = sorted(p.stem for p in workload_spec.WORKLOADS_DIR.glob("*.toml"))
    assert {"default", "1-topic-16-partitions-1kb", "agent-audit"} <= set(shipped)
    defaults = {f.key: f.default for f in workload_spec.FIELDS}
    for name in shipped:
        values = workload_spec.load_file(workload_spec.find_file(name))  # found by name, too
        assert values["name"] == name
        assert set(values) == set(defaults), f"{name} should set every field"
    assert workload_spec.load_file(workload_spec.find_file("default")) == defaults
    audit = workload_spec.load_file(workload_spec.find_file("agent-audit"))
    assert audit["key_distribution"] == "zipf" and audit["message_size"] < 1024


@pytest.mark.parametrize("text, fragment", [
    ("partitons_per_topic = 4\n", "unknown field"),
    ("topics = 0\n", "at least 1"),
    ('producer_rate = "fast"\n', "must be a number"),
    ("message_size = 4\n", "at least"),
    ('key_distribution = "gauss"\n', "key_distribution must be one of"),
    ("topics = [\n", "w.toml"),
])
def test_bad_workload_files_are_rejected_with_the_reason(tmp_path: Path, text: str, fragment: str) -> None:
    spec = tmp_path / "w.toml"
    spec.write_text(text)
    with pytest.raises(workload_spec.WorkloadError, match=fragment):
        workload_spec.resolve(build_parser().parse_args(["--workload", str(spec)]))


def test_bad_option_and_missing_file_exit_with_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--workload", "no-such-workload"])
    assert "not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--producers-per-topic", "0"])
    assert "at least 1" in capsys.readouterr().err


def test_key_distributions() -> None:
    assert set(islice(Keys("none").stream(0), 100)) == {None}
    rr = list(islice(Keys("round-robin", 10).stream(3), 40))
    assert rr[:3] == [Keys.name(3), Keys.name(4), Keys.name(5)]
    assert Counter(rr) == {Keys.name(i): 4 for i in range(10)}  # every key equally often

    n = 20_000
    uniform = Counter(islice(Keys("random", 100).stream(0), n))
    assert len(uniform) == 100 and max(uniform.values()) < 3 * n / 100
    zipf = Counter(islice(Keys("zipf", 100).stream(0), n))
    ranked = [zipf[Keys.name(i)] for i in range(100)]
    harmonic = sum(1 / r for r in range(1, 101))
    assert ranked[0] / n == pytest.approx(1 / harmonic, rel=0.1)  # rank 1 carries ~19 %
    assert ranked[0] > 1.5 * ranked[1] > ranked[9] > ranked[99]
    # seeded: a workload sends the same keys every run; producers differ from each other
    assert list(islice(Keys("zipf", 100).stream(1), 50)) == list(islice(Keys("zipf", 100).stream(1), 50))
    assert list(islice(Keys("random", 100).stream(1), 50)) != list(islice(Keys("random", 100).stream(2), 50))
    with pytest.raises(ValueError):
        Keys("gauss")


def test_records_and_partitions_are_shared_out_completely() -> None:
    shares = [Schedule(300.0, 1001).share(i, 4) for i in range(4)]
    assert sum(s.count or 0 for s in shares) == 1001 and {s.rate for s in shares} == {75.0}
    assert Schedule(0.0, None, 5.0).share(1, 3) == Schedule(0.0, None, 5.0)
    plan = _assignments(["a", "b"], 5, 2)
    assert plan == [("a", [0, 2, 4]), ("a", [1, 3]), ("b", [0, 2, 4]), ("b", [1, 3])]
    assert _assignments(["a"], 2, 3) == [("a", [0]), ("a", [1])]  # more consumers than partitions: one idles


def _fake_phase(meters: Meters, records: int, seconds: float) -> None:
    """Two "producer" threads counting ``records`` in all over about ``seconds``."""
    def count(cell: list[int], n: int) -> None:
        for _ in range(n):
            cell[0] += 1
            time.sleep(seconds / n)

    meters.produced.expect(records)
    cells = [meters.produced.cell(), meters.produced.cell()]
    meters.begin()
    threads = [threading.Thread(target=count, args=(c, records // 2)) for c in cells]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_sampler_series_adds_up_to_what_was_counted() -> None:
    meters = Meters()
    with monitor.observe("fake", meters, 0.1, stream=io.StringIO()) as timeline:
        _fake_phase(meters, 200, 0.5)
    t = timeline[0]
    assert sum(t.produced_records) == 200 and sum(t.consumed_records) == 0
    assert len(t.t_s) >= 3 and t.t_s == sorted(t.t_s)
    widths = [b - a for a, b in zip([0.0, *t.t_s], t.t_s, strict=False)]
    assert sum(r * w for r, w in zip(t.produced_records_per_s, widths, strict=True)) == pytest.approx(200, rel=0.02)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal() -> None:
    pytest.importorskip("rich")
    plain, tty = io.StringIO(), _Terminal()
    for stream in (plain, tty):
        meters = Meters()
        with monitor.observe("fake phase", meters, 0.1, stream=stream):
            _fake_phase(meters, 100, 0.6)
    assert plain.getvalue() == ""
    drawn = tty.getvalue()
    assert "fake phase" in drawn and "100/100 records" in drawn
