"""Produce latency of a paced producer while other clients produce flat out, against one broker.

The WAL acknowledges in the order it was given data, so what one pipelining bulk producer has in
flight is queued ahead of every other client's writes.  This probe measures, per broker tree and
``request_queue_bytes``: flat-out produce MB/s alone; latency at 500 records/s alone; and
latency at 200 records/s while other processes produce flat out (the bulk producers, one by default).

    .venv/bin/python -m bench.probes.produce_fairness [--rounds 2] [--mb 100] [--bulk N] [--file-wal] TREE[@BYTES] ...

TREE is a checkout of Keel (e.g. a ``git worktree`` of the base commit); ``@BYTES`` sets
``KEEL_REQUEST_QUEUE_BYTES`` for that broker (and ``KEEL_CONNECTION_INFLIGHT_BYTES``, the per-connection
bound of trees before 2026-12-04 07:30).  The object WAL on SeaweedFS is the default;
``--file-wal`` runs the embedded default (file WAL, local-filesystem store) instead.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import uuid
from pathlib import Path

from bench import workload
from bench.broker_proc import HOST, REPO_ROOT, BrokerProcess
from bench.s3_suite import SeaweedFS  # tests/s3server.py, put on the path there
from bench.suite_common import pct_ms

RUN_FROM = "import sys; sys.path.insert(0, sys.argv.pop(1)); from broker.cli import main; sys.exit(main(sys.argv[1:]))"
BULK = ("import sys; sys.path.insert(0, {repo!r}); from bench import workload; "
        "print(workload.produce_throughput({bootstrap!r}, {topic!r}, {count}, 1024).mb_per_s)")


class TreeBroker(BrokerProcess):
    """A broker run from another checkout of Keel."""

    def __init__(self, tree: str, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.tree = tree

    def command(self) -> list[str]:
        return [sys.executable, "-c", RUN_FROM, self.tree, "serve", "--host", HOST, "--port", str(self.port),
                "--data-dir", str(self.data_dir), *self.extra_args]


def _one(spec: str, mb: float, bulks: int, file_wal: bool, work: Path, s3: SeaweedFS | None) -> str:
    tree, _, window = spec.partition("@")
    flags, env = [], {}
    if s3 is not None:
        prefix = uuid.uuid4().hex[:8]
        flags = ["--s3-endpoint", s3.endpoint_url, "--bucket", "keel-probe", "--prefix", prefix,
                 "--region", s3.region, "--wal", "object", "--flush-interval-ms", "500"]
        env = dict(s3.env())
    if window:
        env["KEEL_REQUEST_QUEUE_BYTES"] = env["KEEL_CONNECTION_INFLIGHT_BYTES"] = window
    broker = TreeBroker(tree, work / uuid.uuid4().hex[:8], work / "broker.log", flags, env=env)
    broker.start(60)
    try:
        for topic in ("flat", "alone", "beside", *(f"bulk{i}" for i in range(bulks))):
            workload.prepare_topic(broker.bootstrap, topic, 1)
        flat = workload.produce_throughput(broker.bootstrap, "flat", int(mb * 1e6 / 1024), 1024)
        alone = workload.produce_latency(broker.bootstrap, "alone", 500, 3000, 1024, 250)
        count = int(2 * mb * 1e6 / 1024 / bulks)  # the bulk producers send twice the flat-out phase in all
        procs = [subprocess.Popen([sys.executable, "-c", BULK.format(repo=str(REPO_ROOT), bootstrap=broker.bootstrap,
                                                                     topic=f"bulk{i}", count=count)],
                                  stdout=subprocess.PIPE, text=True) for i in range(bulks)]
        time.sleep(1.5)  # the bulk producers are under way
        beside = workload.produce_latency(broker.bootstrap, "beside", 200, 400, 1024, 20)
        bulk_mb_s = sum(float(p.communicate(timeout=600)[0].split()[-1]) for p in procs)
    finally:
        broker.stop()
    return (f"flat-out {flat.mb_per_s:.1f} MB/s | 500/s alone p50 {pct_ms(alone.latencies, 50):.2f} "
            f"p99 {pct_ms(alone.latencies, 99):.2f} ms | 200/s beside the bulk producers p50 "
            f"{pct_ms(beside.latencies, 50):.1f} p99 {pct_ms(beside.latencies, 99):.1f} ms "
            f"(bulk {bulk_mb_s:.1f} MB/s, the producers' rates summed)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trees", nargs="+", metavar="TREE[@BYTES]")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--mb", type=float, default=100, help="MB of the flat-out phase (the bulk producer sends twice that)")
    parser.add_argument("--bulk", type=int, default=1, help="bulk producers, each in its own process and topic")
    parser.add_argument("--file-wal", action="store_true")
    args = parser.parse_args()
    work = Path(f"/tmp/keel-probe-{uuid.uuid4().hex[:6]}")
    work.mkdir(parents=True)
    for round_ in range(args.rounds):
        for spec in args.trees:
            if args.file_wal:
                line = _one(spec, args.mb, args.bulk, True, work, None)
            else:
                with SeaweedFS(work / f"weed-{uuid.uuid4().hex[:6]}") as s3:
                    line = _one(spec, args.mb, args.bulk, False, work, s3)
            print(f"round {round_} {spec}: {line}", flush=True)


if __name__ == "__main__":
    main()
