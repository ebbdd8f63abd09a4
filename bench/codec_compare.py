"""Keel's compiled codec (protocol.schema) against the ``kio`` package, measured in one run.

This is the measurement behind docs/protocol-codec.md: decode of a
ProduceRequest v9 and a FetchRequest v12, encode of a MetadataResponse v12 and
a FetchResponse v12, each timed with ``timeit`` for both codecs on identical
bytes, plus which API versions each one covers.  ``kio`` is not a Keel
dependency; without it the script prints Keel's figures only.

    .venv/bin/python bench/codec_compare.py [--seconds 0.3]
"""

from __future__ import annotations

import argparse
import io
import sys
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from protocol import records, schema  # noqa: E402

try:
    import kio
    from kio.index import load_request_schema, load_response_schema
    from kio.schema.index import api_key_map, schema_name_map
    from kio.serial import entity_reader, entity_writer
except ImportError:  # the comparison is optional
    kio = None


def produce_request() -> dict[str, Any]:
    batch = records.build_batch([(b"key", b"v" * 960, [("h", b"1")])], base_timestamp=1_700_000_000_000)
    batch += b"\0" * (1024 - len(batch))  # pad the blob to exactly 1 KiB; codecs treat records as opaque
    return {"transactional_id": None, "acks": -1, "timeout_ms": 30000,
            "topic_data": [{"name": "bench", "partition_data": [{"index": 0, "records": batch}]}]}


def produce_response() -> dict[str, Any]:
    partition = {"index": 0, "error_code": 0, "base_offset": 123456, "log_append_time_ms": -1,
                 "log_start_offset": 0, "record_errors": [], "error_message": None}
    return {"responses": [{"name": "bench", "partition_responses": [partition]}], "throttle_time_ms": 0}


def fetch_request() -> dict[str, Any]:
    partitions = [{"partition": i, "current_leader_epoch": 0, "fetch_offset": 1000 * i, "last_fetched_epoch": -1,
                   "log_start_offset": -1, "partition_max_bytes": 1 << 20} for i in range(4)]
    return {"replica_id": -1, "max_wait_ms": 500, "min_bytes": 1, "max_bytes": 50 << 20, "isolation_level": 0,
            "session_id": 0, "session_epoch": -1, "topics": [{"topic": "bench", "partitions": partitions}],
            "forgotten_topics_data": [], "rack_id": ""}


def metadata_response() -> dict[str, Any]:
    brokers = [{"node_id": i, "host": f"broker-{i}.keel.local", "port": 9092, "rack": None} for i in range(3)]
    topics = [{"error_code": 0, "name": f"topic-{t:02d}", "topic_id": bytes([t + 1]) * 16, "is_internal": False,
               "partitions": [{"error_code": 0, "partition_index": p, "leader_id": p % 3, "leader_epoch": 7,
                               "replica_nodes": [p % 3], "isr_nodes": [p % 3], "offline_replicas": []}
                              for p in range(4)],
               "topic_authorized_operations": -2147483648} for t in range(10)]
    return {"throttle_time_ms": 0, "brokers": brokers, "cluster_id": "keel-bench", "controller_id": 0,
            "topics": topics}


def fetch_response() -> dict[str, Any]:
    blob = bytes(range(256)) * 64  # 16 KiB of record batches, opaque to both codecs
    partitions = [{"partition_index": i, "error_code": 0, "high_watermark": 5000, "last_stable_offset": 5000,
                   "log_start_offset": 0, "aborted_transactions": None, "preferred_read_replica": -1,
                   "records": blob} for i in range(4)]
    return {"throttle_time_ms": 0, "error_code": 0, "session_id": 0,
            "responses": [{"topic": "bench", "partitions": partitions}]}


# (label, message name, version, api key, is_request, direction, message builder)
CASES: list[tuple[str, str, int, int, bool, str, Callable[[], dict[str, Any]]]] = [
    ("decode ProduceRequest v9 (1 KiB records)", "ProduceRequest", 9, 0, True, "decode", produce_request),
    ("encode ProduceResponse v9 (1 partition)", "ProduceResponse", 9, 0, False, "encode", produce_response),
    ("decode FetchRequest v12 (4 partitions)", "FetchRequest", 12, 1, True, "decode", fetch_request),
    ("encode MetadataResponse v12 (10 topics x 4 partitions)", "MetadataResponse", 12, 3, False, "encode",
     metadata_response),
    ("encode FetchResponse v12 (4 partitions x 16 KiB)", "FetchResponse", 12, 1, False, "encode",
     fetch_response),
]


def per_op_us(fn: Callable[[], Any], seconds: float) -> float:
    timer = timeit.Timer(fn)
    number, elapsed = timer.autorange()
    number = max(1, int(number * seconds / max(elapsed, 1e-9)))
    return min(timer.repeat(repeat=5, number=number)) / number * 1e6


def measure(seconds: float) -> list[tuple[str, float, float | None]]:
    rows = []
    for label, name, version, api_key, is_request, direction, build in CASES:
        codec = schema.codec(name, version)
        wire = bytes(codec.encode(build()))
        assert bytes(codec.encode(codec.decode(wire))) == wire
        if direction == "decode":
            ours = per_op_us(lambda c=codec, w=wire: c.decode(w), seconds)
        else:
            message = codec.decode(wire)
            ours = per_op_us(lambda c=codec, m=message: c.encode(m), seconds)
        theirs = None
        if kio is not None:
            entity_type = (load_request_schema if is_request else load_response_schema)(api_key, version)
            read = entity_reader(entity_type)
            entity, size = read(wire, 0)
            if size != len(wire):
                raise AssertionError(f"kio read {size} of {len(wire)} bytes of {name} v{version}")
            write = entity_writer(entity_type)
            check = io.BytesIO()
            write(check, entity)
            if check.getvalue() != wire:
                raise AssertionError(f"kio and protocol.schema disagree on {name} v{version}")
            if direction == "decode":
                theirs = per_op_us(lambda r=read, w=wire: r(w, 0), seconds)
            else:
                def kio_encode(w: Any = write, e: Any = entity) -> bytes:
                    out = io.BytesIO()
                    w(out, e)
                    return out.getvalue()
                theirs = per_op_us(kio_encode, seconds)
        rows.append((label, ours, theirs))
    return rows


def _ranges(versions: set[int]) -> str:
    if not versions:
        return "-"
    return f"{min(versions)}-{max(versions)}" if max(versions) - min(versions) + 1 == len(versions) else \
        ",".join(map(str, sorted(versions)))


def coverage() -> tuple[dict[int, set[int]], dict[int, set[int]]]:
    ours: dict[int, set[int]] = {}
    for api_key, name in schema.api_names().items():
        valid = schema.message_spec(name + "Request").valid
        ours[api_key] = set(range(valid.low, valid.high + 1))
    theirs: dict[int, set[int]] = {}
    if kio is not None:
        from kio.static.constants import EntityType
        for api_key, name in api_key_map.items():
            theirs[api_key] = {v for v, kinds in schema_name_map.get(name, {}).items() if EntityType.request in kinds}
    return ours, theirs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.3, help="approximate time per repeat")
    parser.add_argument("--coverage", action="store_true", help="also list versions per API key")
    args = parser.parse_args(argv)
    print(f"python {sys.version.split()[0]}; kio {kio.__version__ if kio else 'not installed (pip install kio)'}")
    rows = measure(args.seconds)
    # A broker pays for a request decode plus a response encode; show those pairs too.
    by_label = {label: (ours, theirs) for label, ours, theirs in rows}
    for cycle, parts in (("produce cycle (decode request + encode response)", (0, 1)),
                         ("fetch cycle (decode request + encode response)", (2, 4))):
        pair = [by_label[CASES[i][0]] for i in parts]
        kio_sum = None if kio is None else sum(t for _, t in pair if t is not None)
        rows.append((cycle, sum(o for o, _ in pair), kio_sum))
    print(f"{'case':58} {'keel µs/op':>11} {'kio µs/op':>10} {'kio/keel':>9}")
    for label, ours, theirs in rows:
        if theirs is None:
            print(f"{label:58} {ours:11.2f} {'-':>10} {'-':>9}")
        else:
            print(f"{label:58} {ours:11.2f} {theirs:10.2f} {theirs / ours:8.2f}x")
    ours_cov, theirs_cov = coverage()
    pairs = sum(map(len, ours_cov.values()))
    print(f"coverage: protocol.schema {len(ours_cov)} API keys / {pairs} request versions", end="")
    if kio is not None:
        print(f"; kio {len(theirs_cov)} API keys / {sum(map(len, theirs_cov.values()))} request versions")
        differ = [k for k in sorted(set(ours_cov) | set(theirs_cov)) if ours_cov.get(k) != theirs_cov.get(k)]
        for key in differ:
            print(f"  api {key:3}: keel {_ranges(ours_cov.get(key, set())):8} kio {_ranges(theirs_cov.get(key, set()))}")
    else:
        print()
    if args.coverage:
        names = schema.api_names()
        for key in sorted(ours_cov):
            print(f"  {key:3} {names[key]:32} keel {_ranges(ours_cov[key]):8} kio {_ranges(theirs_cov.get(key, set()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
