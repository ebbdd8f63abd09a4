"""How long ``S3ObjectStore.put`` holds the event loop: a task that yields in a loop notes every gap.

    .venv/bin/python -m bench.probes.put_loop_lag TREE ... [--rounds 3]

Starts SeaweedFS, then for each TREE (a checkout of Keel) in turn, in a fresh process on uvloop:
100 PUTs of 256 KiB and 20 of 8 MiB, printing the time taken, how often the loop was held more
than 1 ms, the longest hold and the sum of those holds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from bench.broker_proc import REPO_ROOT


async def _measure(endpoint: str, size: int, count: int) -> str:
    from objectstore.s3 import S3ObjectStore  # noqa: PLC0415 - from the tree under test

    store = S3ObjectStore("keel-probe", endpoint_url=endpoint, prefix=uuid.uuid4().hex[:8])
    data = os.urandom(size)
    await store.put("warm-up", data)
    gaps: list[float] = []
    done = False

    async def ticker() -> None:
        last = time.perf_counter()
        while not done:
            await asyncio.sleep(0)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(ticker())
    started = time.perf_counter()
    for i in range(count):
        await store.put(f"k{i}", data)
    took = time.perf_counter() - started
    done = True
    await task
    await store.close()
    held = [g for g in gaps if g > 0.001]
    return (f"{count} PUTs of {size >> 10} KiB in {took:.2f} s; loop held >1 ms {len(held)} times, "
            f"longest {max(gaps) * 1e3:.1f} ms, {sum(held) * 1e3:.0f} ms in all")


def _child(tree: str, endpoint: str, size: int, count: int) -> None:
    sys.path.insert(0, tree)
    import uvloop  # noqa: PLC0415

    print(f"{tree}: {uvloop.run(_measure(endpoint, size, count))}", flush=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trees", nargs="+")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    # Here, not at the top: bench.s3_suite imports objectstore, which a child must take from its TREE.
    from bench.s3_suite import SeaweedFS  # noqa: PLC0415 - tests/s3server.py, put on the path there

    with SeaweedFS(Path(f"/tmp/keel-probe-{uuid.uuid4().hex[:6]}")) as s3:
        for _ in range(args.rounds):
            for tree in args.trees:
                for size, count in ((256 << 10, 100), (8 << 20, 20)):
                    subprocess.run([sys.executable, "-m", "bench.probes.put_loop_lag", "--child", tree,
                                    s3.endpoint_url, str(size), str(count)], env={**os.environ, **s3.env()},
                                   cwd=REPO_ROOT, check=True)


if __name__ == "__main__":
    main()
