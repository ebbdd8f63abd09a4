"""What the object WAL costs in PUT requests, and what it buys in ack latency, per setting and offered rate.

On AWS S3 every PUT is billed, and the object WAL makes one for each group of appends it writes, so
its settings trade requests for latency.  How many appends share a PUT also depends on how long the
store takes to answer one: appends that arrive while PUTs are in flight are grouped.  This probe
starts SeaweedFS, optionally behind the fault proxy adding ``--latency-ms`` to every request (a
store across a network), and one broker with the object WAL and the given settings.  An idempotent
producer (``linger.ms=0``) then sends 1 KiB records at each rate.  Flushing is pushed out of the
run, so no WAL object is deleted, and the objects under ``wal/`` are counted after each rate.  Each
PUT of the WAL writes one object under a key of its own, and a retried PUT rewrites that key.

    .venv/bin/python -m bench.probes.wal_requests [--latency-ms 20] [--rates 50,500] [--seconds 10] \\
        [--broker-arg=--wal-object-eager-puts=0 --broker-arg=--wal-object-linger-ms=50]

It prints, per rate: ack p50 / p99, WAL PUTs a second (WAL objects per record sent, the half second
of unmeasured warm-up included, times the rate), and what a month of them would cost at AWS S3
Standard's list price.
"""

from __future__ import annotations

import argparse
import contextlib
import uuid
from pathlib import Path
from tempfile import TemporaryDirectory

from bench import workload
from bench.broker_proc import BrokerProcess
from bench.s3_suite import BUCKET, FaultProxyProcess, SeaweedFS, _Store  # tests/ is put on the path there
from bench.suite_common import pct_ms

PUT_PRICE_PER_1000 = 0.005  # USD, S3 Standard PUT/COPY/POST/LIST, us-east-1 list price
MONTH_SECONDS = 30 * 24 * 3600
NO_FLUSH_MS = 3_600_000  # segments would trim the WAL's objects before they are counted


def measure(store: _Store, bootstrap: str, rate: float, seconds: float) -> str:
    topic = f"wal-requests-{rate:g}-{uuid.uuid4().hex[:6]}"
    workload.prepare_topic(bootstrap, topic, 1)
    before = len(store.run(store.store.list("wal/")))
    warmup = max(20, round(rate / 2))
    run = workload.produce_latency(bootstrap, topic, rate, round(rate * seconds), 1024, warmup,
                                   producer={"enable.idempotence": True})
    objects = len(store.run(store.store.list("wal/"))) - before
    puts = objects / (run.sent + warmup) * rate  # PUTs a record, at the offered rate
    month = puts * MONTH_SECONDS
    return (f"{rate:g} records/s: ack p50 / p99 {pct_ms(run.latencies, 50):.1f} / {pct_ms(run.latencies, 99):.1f} ms, "
            f"{puts:.1f} WAL PUTs/s ({month / 1e6:,.1f} million a month, about ${month / 1000 * PUT_PRICE_PER_1000:,.0f}), "
            f"errors {run.errors}, missing {run.missing}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency-ms", type=float, default=0, help="added to every S3 request by a proxy (0: none)")
    parser.add_argument("--rates", default="50,500", help="records/s offered, one phase each")
    parser.add_argument("--seconds", type=float, default=10, help="measured seconds of each phase")
    parser.add_argument("--broker-arg", action="append", default=[], help="a flag for the broker (repeatable)")
    args = parser.parse_args()
    with TemporaryDirectory(prefix="keel-wal-requests-") as tmp, SeaweedFS(Path(tmp) / "weed") as s3:
        work = Path(tmp)
        prefix = uuid.uuid4().hex[:8]
        store = _Store(s3, prefix)
        with contextlib.ExitStack() as stack:
            endpoint = s3.endpoint_url
            if args.latency_ms > 0:
                proxy = stack.enter_context(FaultProxyProcess(s3.endpoint_url, work / "proxy.log"))
                proxy.set_faults(latency_ms=args.latency_ms)
                endpoint = proxy.url
            flags = ["--s3-endpoint", endpoint, "--bucket", BUCKET, "--prefix", prefix, "--region", s3.region,
                     "--wal", "object", "--flush-interval-ms", str(NO_FLUSH_MS), *args.broker_arg]
            broker = BrokerProcess(work / "broker", work / "broker.log", flags, env=s3.env())
            broker.start(timeout=60)
            stack.callback(broker.stop)
            stack.callback(store.close)
            print(f"store {'+' + format(args.latency_ms, 'g') + ' ms' if args.latency_ms else 'direct'}, "
                  f"broker flags: {' '.join(args.broker_arg) or '(defaults)'}", flush=True)
            for rate in (float(r) for r in args.rates.split(",")):
                print(measure(store, broker.bootstrap, rate, args.seconds), flush=True)


if __name__ == "__main__":
    main()
