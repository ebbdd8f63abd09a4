"""Fixtures for the micro benchmarks: measure only when asked, run once otherwise.

The benchmarks double as correctness tests of the hot-path code, so the
normal test run must execute them without spending seconds on each.
pytest-benchmark measures by default and refuses ``--benchmark-disable`` in
addopts together with ``--benchmark-only``; instead the ``benchmark`` fixture
is overridden here for this directory: it measures only under
``--benchmark-only`` or ``--benchmark-enable``, and otherwise calls each
benchmarked function once (pytest-benchmark's disabled mode).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterator

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from protocol.records import assign_offsets, build_batch

BASE_TIMESTAMP = 1_700_000_000_000
VALUE_SIZE = 1024

BatchFactory = Callable[..., bytes]


def measuring(config: pytest.Config) -> bool:
    return bool(config.getoption("benchmark_only") or config.getoption("benchmark_enable"))


@pytest.fixture
def benchmark(benchmark: BenchmarkFixture, request: pytest.FixtureRequest) -> BenchmarkFixture:
    if not measuring(request.config):
        benchmark.disabled = True
    return benchmark


@pytest.fixture
def make_batch() -> BatchFactory:
    """``make_batch(records, base_offset=0, value_size=1024)``: a v2 batch of random values, offsets assigned."""

    def make(records: int, base_offset: int = 0, value_size: int = VALUE_SIZE) -> bytes:
        rng = random.Random(records * 7919 + base_offset)
        batch = build_batch(
            [(b"key-%d" % i, rng.randbytes(value_size)) for i in range(records)],
            base_timestamp=BASE_TIMESTAMP + base_offset,
        )
        if base_offset:
            placed = bytearray(batch)
            assign_offsets(placed, base_offset)
            batch = bytes(placed)
        return batch

    return make


def _new_loop() -> asyncio.AbstractEventLoop:
    try:  # the broker runs on uvloop where it is available (broker/cli.py)
        import uvloop  # noqa: PLC0415
    except ImportError:  # pragma: no cover
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


@pytest.fixture
def bench_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """A private event loop for benchmarks that drive async code with ``run_until_complete``."""
    loop = _new_loop()
    try:
        yield loop
    finally:
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
