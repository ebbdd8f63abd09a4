"""Micro benchmark of the file WAL's append path and group commit.

One round is what concurrent producers do to the broker's WAL: ``entries``
appends (the broker's entry header plus a batch of one 1 KiB record) are
submitted in the same event-loop tick and awaited together until durable.
They must land in one group commit: one writev and, with fsync on, one
fdatasync. The WAL is then reopened and every entry is read back.

Rounds are fixed (not time-bound) so that the log written to the temporary
directory stays at a few MiB however fast the disk is.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from broker import wal_entry
from wal import FileWriteAheadLog

BatchFactory = Callable[..., bytes]
TOPIC_ID = uuid.UUID("0d6d3c57-5a5e-4c1e-8f2e-9b1d2a3c4e5f").bytes
LEADER_EPOCH = 3
ROUNDS = 400
WARMUP_ROUNDS = 20

pytestmark = [pytest.mark.benchmark(group="wal"), pytest.mark.timeout(120)]


@pytest.mark.parametrize("sync", [True, False], ids=["fsync", "no-fsync"])
@pytest.mark.parametrize("entries", [1, 32])
def test_wal_append_group_commit(benchmark: Any, make_batch: BatchFactory, bench_loop: asyncio.AbstractEventLoop,
                                 tmp_path: Path, entries: int, sync: bool) -> None:
    batch = make_batch(1)
    headers = [wal_entry.encode_header(TOPIC_ID, i, LEADER_EPOCH) for i in range(entries)]
    directory = tmp_path / "wal"
    log = FileWriteAheadLog(directory, sync=sync)
    assert bench_loop.run_until_complete(log.open()) == []
    groups: list[list[int]] = []

    async def commit_group() -> list[int]:
        futures = [log.submit([header, batch]) for header in headers]
        return list(await asyncio.gather(*futures))

    def run() -> list[int]:
        positions = bench_loop.run_until_complete(commit_group())
        groups.append(positions)
        return positions

    try:
        benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=WARMUP_ROUNDS)
    finally:
        bench_loop.run_until_complete(log.close())

    total = entries * len(groups)
    assert [p for group in groups for p in group] == list(range(total))
    stats = log.stats
    assert stats["appends"] == stats["entries_written"] == total
    assert stats["commits"] == len(groups)  # one group commit per round
    assert stats["max_batch"] == entries
    if sync:
        assert stats["fsyncs"] >= stats["commits"]
    else:
        assert stats["fsyncs"] == 0
    benchmark.extra_info.update(commits=stats["commits"], fsyncs=stats["fsyncs"], entries=total)

    reopened = FileWriteAheadLog(directory, sync=sync)
    replayed = bench_loop.run_until_complete(reopened.open())
    bench_loop.run_until_complete(reopened.close())
    assert [e.position for e in replayed] == list(range(total))
    for entry in replayed:
        header, body = wal_entry.decode(entry.payload)
        assert header == (TOPIC_ID, entry.position % entries, LEADER_EPOCH)
        assert body == batch
