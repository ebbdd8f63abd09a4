"""A short chaos run inside the normal test suite: about 75 s and a dozen faults on a local shared store.

Brokers are killed, frozen past their lease, added and removed while idempotent producers write;
afterwards every acknowledged record must be readable exactly once at its acknowledged offset.  The
seed is random (set ``KEEL_CHAOS_SEED`` to replay one); it is printed with any failure, together with
the report's examples.  ``make chaos`` runs the long version on SeaweedFS.
"""

from __future__ import annotations

import http.server
import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from chaos.checker import FAILURES, FinalRead, Read, Send, check, check_commits
from chaos.fault_proxy import FaultProxyProcess
from chaos.run import Options, run_chaos

DURATION_S = 75.0
FAULTS = 12


@pytest.mark.timeout(420)
def test_short_chaos_run_loses_nothing(tmp_path: Path) -> None:
    seed = int(os.environ.get("KEEL_CHAOS_SEED") or random.randrange(2**32))
    report_path = tmp_path / "chaos.json"
    report = run_chaos(Options(duration=DURATION_S, faults=FAULTS, brokers=3, store="local", report=report_path,
                               seed=seed, base_dir=tmp_path / "run", quiet=True))
    counts = report["counts"]
    context = f"seed {seed}: {report['summary']}\n{json.dumps(counts['examples'], indent=1)[:4000]}"
    assert {kind: counts[kind] for kind in FAILURES} == dict.fromkeys(FAILURES, 0), context
    assert report["faults"]["total"] >= FAULTS - 2, context
    assert counts["acked"] >= 5000, context
    assert not report["producers"]["crashed_threads"], context
    assert report_path.exists()


# ---- the checker and the fault proxy themselves -------------------------------------------------------


def _acked(value: str, partition: int, offset: int, index: int) -> Send:
    producer, seq = (int(x) for x in value[1:].split("-"))
    return Send(value, producer, seq, partition, 0.0, 1.0, partition, offset, index)


def test_checker_counts_each_kind_of_anomaly() -> None:
    sends = [_acked("p0-0", 0, 0, 0), _acked("p0-1", 0, 1, 1), _acked("p0-2", 0, 2, 2),  # p0-1 lost
             _acked("p0-3", 0, 3, 3), _acked("p0-4", 0, 4, 4),  # p0-4 read at offset 5 instead of 4
             _acked("p1-0", 1, 0, 0), _acked("p1-1", 1, 1, 1),  # read back in the wrong order
             Send("p2-0", 2, 0, 1, 0.0, error="timed out")]  # never acknowledged, never read: unseen
    final = FinalRead(records={0: [(0, "p0-0"), (1, "p0-3"), (2, "p0-2"), (3, "p0-3"), (5, "p0-4")],
                               1: [(0, "p1-1"), (1, "p1-0")]},
                      high_watermarks={0: 6, 1: 2}, low_watermarks={0: 0, 1: 0})
    along = [Read("along", 0, 0, "p0-0"), Read("along", 0, 2, "p0-9")]  # p0-9 was never there
    verdict = check(sends, final, along)
    assert (verdict.lost, verdict.duplicated, verdict.gaps, verdict.unseen) == (1, 1, 1, 1)
    assert verdict.out_of_order == 2  # p0-3 read at 1 before p0-2 at 2 (min offset), p1-0 after p1-1
    # p0-4 at another offset than acknowledged, p1-0 and p1-1 likewise, and a reader that saw p0-9 at 0/2
    assert verdict.inconsistent == 4
    assert not verdict.ok

    clean = check(sends[:1], FinalRead({0: [(0, "p0-0")]}, {0: 1}, {0: 0}))
    assert clean.ok and clean.acked == 1 and clean.read == 1
    check_commits(clean, {0: 5}, {0: 4})
    assert clean.lost_commits == 1 and not clean.ok


def test_fault_proxy_delays_and_throttles_on_demand(tmp_path: Path) -> None:
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Upstream) as upstream:
        threading.Thread(target=upstream.serve_forever, daemon=True).start()
        with FaultProxyProcess(f"http://127.0.0.1:{upstream.server_address[1]}", tmp_path / "proxy.log") as proxy:
            def get() -> tuple[int, float]:
                started = time.monotonic()
                try:
                    with urllib.request.urlopen(proxy.url + "/bucket/key", timeout=10) as response:
                        return response.status, time.monotonic() - started
                except urllib.error.HTTPError as exc:
                    return exc.code, time.monotonic() - started

            assert get()[0] == 200
            proxy.set_faults(error_rate=1.0, duration_s=30)
            assert get()[0] == 503
            proxy.set_faults(latency_ms=300)
            status, took = get()
            assert status == 200 and took >= 0.3
            proxy.set_faults(error_rate=1.0, duration_s=0.3)
            time.sleep(0.4)  # the faults expired by themselves
            assert get()[0] == 200
            stats = proxy.stats()["stats"]
            assert stats["slowdowns"] == 1 and stats["delayed"] >= 1 and stats["requests"] == 4
        upstream.shutdown()


class _Upstream(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the signature http.server uses
        pass
