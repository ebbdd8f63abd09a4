"""The workload of the ``local`` suite: a small TOML file in the style of the OpenMessaging Benchmark.

A workload says how many topics, partitions, producers and consumers a run
uses, the record size and keys, the offered rate and how long to measure.
Every field has a command-line option of ``python -m bench``; an option
given on the command line overrides the file, and whatever neither sets
keeps its default.  The resolved values are written back into the parsed
options (so the suites read ``args.rate`` etc. as before) and recorded in
the results' ``meta.workload``.  The file format: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.workload import KEY_DISTRIBUTIONS, MIN_RECORD_SIZE

WORKLOADS_DIR = Path(__file__).resolve().parent / "workloads"


class WorkloadError(ValueError):
    """The workload file or the options describe no valid workload; the message says why."""


@dataclass(frozen=True)
class Field:
    key: str  # name in the TOML file
    dest: str  # attribute of the parsed options
    flag: str
    type: type
    default: Any
    minimum: float
    help: str


FIELDS = (
    Field("name", "workload_name", "--workload-name", str, "default", 0,
          "name of the workload, recorded in the results (default: the file's name field or stem)"),
    Field("topics", "topics", "--topics", int, 1, 1, "topics each phase writes to"),
    Field("partitions_per_topic", "partitions", "--partitions", int, 4, 1, "partitions of each benchmark topic"),
    Field("message_size", "record_size", "--record-size", int, 1024, MIN_RECORD_SIZE, "bytes per record value"),
    Field("producers_per_topic", "producers_per_topic", "--producers-per-topic", int, 1, 1,
          "producers (threads, each its own client) per topic"),
    Field("consumers_per_topic", "consumers_per_topic", "--consumers-per-topic", int, 1, 1,
          "consumers per topic; they share its partitions"),
    Field("producer_rate", "rate", "--rate", float, 2000.0, 0,
          "records/s offered in all in the latency phases; 0 = as fast as the clients can, for --duration"),
    Field("key_distribution", "key_distribution", "--key-distribution", str, "none", 0,
          f"record keys: {', '.join(KEY_DISTRIBUTIONS)}"),
    Field("keys", "keys", "--keys", int, 1000, 1, "distinct keys of the round-robin, random and zipf distributions"),
    Field("test_duration_s", "duration", "--duration", float, 30.0, 0.001,
          "seconds of each latency phase (rate x duration records are measured)"),
    Field("warmup_s", "warmup", "--warmup", float, 0.5, 0,
          "seconds of unmeasured warm-up (rate x warmup records) before each latency phase"),
    Field("throughput_records", "records", "--records", int, 200_000, 1,
          "records sent in the max-rate throughput phase"),
)
_BY_KEY = {f.key: f for f in FIELDS}


def add_options(parser: argparse.ArgumentParser) -> None:
    """The ``--workload`` option and one option per field (left None, so that "not given" can be told)."""
    g = parser.add_argument_group("workload (local suite); an option given here overrides the --workload file")
    g.add_argument("--workload", metavar="FILE",
                   help="OMB-style TOML workload: a path, or the name of a file in bench/workloads/ "
                        f"({', '.join(sorted(p.stem for p in WORKLOADS_DIR.glob('*.toml')))})")
    for f in FIELDS:
        extra: dict[str, Any] = {"choices": KEY_DISTRIBUTIONS} if f.key == "key_distribution" else {}
        default = "" if f.key == "name" else f" (default: {f.default:g})" if f.type is float else \
            f" (default: {f.default})"
        g.add_argument(f.flag, dest=f.dest, type=f.type, default=None, help=f"{f.help}{default}", **extra)


def find_file(text: str) -> Path:
    """``text`` as a path, else as the name of a workload shipped in bench/workloads/."""
    path = Path(text)
    if path.is_file():
        return path
    for candidate in (WORKLOADS_DIR / text, WORKLOADS_DIR / f"{text}.toml"):
        if candidate.is_file():
            return candidate
    raise WorkloadError(f"workload file {text!r} not found (nor in {WORKLOADS_DIR})")


def _check(f: Field, value: Any, where: str) -> Any:
    if f.type is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, f.type) or isinstance(value, bool):
        raise WorkloadError(f"{where}: {f.key} must be {'a number' if f.type is float else f.type.__name__}, "
                            f"not {value!r}")
    if f.key == "key_distribution" and value not in KEY_DISTRIBUTIONS:
        raise WorkloadError(f"{where}: key_distribution must be one of {', '.join(KEY_DISTRIBUTIONS)}, "
                            f"not {value!r}")
    if f.type in (int, float) and value < f.minimum:
        raise WorkloadError(f"{where}: {f.key} must be at least {f.minimum:g}, not {value}")
    return value


def load_file(path: Path) -> dict[str, Any]:
    """The fields a workload file sets, checked (unknown names are an error: they are usually typos)."""
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise WorkloadError(f"{path}: {exc}") from exc
    unknown = sorted(set(doc) - set(_BY_KEY))
    if unknown:
        raise WorkloadError(f"{path}: unknown field(s) {', '.join(unknown)}; known: {', '.join(_BY_KEY)}")
    return {key: _check(_BY_KEY[key], value, str(path)) for key, value in doc.items()}


def resolve(args: argparse.Namespace) -> dict[str, Any]:
    """Fill every workload option of ``args`` (option > file > default) and return ``meta.workload``."""
    path = find_file(args.workload) if args.workload else None
    from_file = load_file(path) if path else {}
    given = [f for f in FIELDS if getattr(args, f.dest, None) is not None]
    resolved: dict[str, Any] = {}
    for f in FIELDS:
        value = getattr(args, f.dest, None)
        if value is None:
            value = from_file.get(f.key, f.default)
        resolved[f.key] = _check(f, value, f.flag)
    if "name" not in from_file and not any(f.key == "name" for f in given):
        resolved["name"] = path.stem if path else ("custom" if given else "default")
    for f in FIELDS:
        setattr(args, f.dest, resolved[f.key])
    return {**resolved, "file": str(path) if path else None,
            "overridden_by_options": [f.key for f in given if f.key in from_file],
            "set_by_options": [f.key for f in given]}
