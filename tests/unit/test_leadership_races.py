"""Leadership races: a lost manifest race is a warning; a takeover never replays a stale read of a live WAL."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from broker import leadership as leadership_module
from broker.config import Settings
from broker.controller import registration_wal
from broker.core import Broker
from metadata.cluster import BrokerRegistration
from metadata.store import ConflictError
from objectstore.base import TransientError
from objectstore.memory import MemoryObjectStore
from wal.object import ObjectWriteAheadLog
from wal.reader import wal_location


async def test_a_lost_manifest_race_is_logged_as_a_warning_and_frees_the_partition(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broker = Broker(Settings(data_dir=str(tmp_path)), store=MemoryObjectStore())

    async def take_over_fenced() -> None:
        raise ConflictError("meta/partitions/ab/3.json")

    with caplog.at_level(logging.INFO, logger="keel.leadership"):
        broker.leadership._spawn("ab/3", take_over_fenced())
        await broker.leadership.wait_idle()
    records = [r for r in caplog.records if r.name == "keel.leadership"]
    assert [r.levelno for r in records] == [logging.WARNING]
    assert "lost a race" in records[0].getMessage() and records[0].exc_info is None
    assert "ab/3" not in broker.leadership._busy  # the next reconcile may try again


async def test_a_takeover_reads_this_brokers_own_wal_afresh_not_from_the_shared_cache(tmp_path: Path) -> None:
    """Chaos run 2026-12-03 11:01 (seed 978362404): the controller moved p1 from epoch 85 to 86 with the
    same incarnation of broker 6 as leader.  Epoch 85 acknowledged offsets up to 40560 until it resigned;
    epoch 86's replay used a read of broker 6's own WAL cached half a second earlier for another
    partition's takeover, found entries only up to 40420, and served from there: 141 acknowledged records
    lost.  A WAL still being written is read afresh; a dead incarnation's WAL is still read once."""
    store = MemoryObjectStore()
    own = wal_location("object", "wal/6", 35)
    wal = ObjectWriteAheadLog(store, own["prefix"])
    await wal.open()
    broker = Broker(Settings(data_dir=str(tmp_path)), store=store, wal=wal)
    broker.membership.registration = BrokerRegistration(6, "127.0.0.1", 9092, 35, 0, {"engine": "object",
                                                                                     "base": "wal/6"})
    assert registration_wal(broker.membership.registration) == own
    await wal.append([b"epoch 85, first"])
    assert len(await broker.leadership._read_wal(own)) == 1  # a takeover of another partition reads it
    await wal.append([b"epoch 85, acknowledged before it resigned"])
    assert [bytes(e.payload) for e in await broker.leadership._read_wal(own)][-1].endswith(b"resigned")

    dead = wal_location("object", "wal/6", 34)  # an earlier incarnation: nobody writes it any more
    old = ObjectWriteAheadLog(store, dead["prefix"])
    await old.open()
    await old.append([b"written before the lapse"])
    reads = 0
    original = leadership_module.read_wal

    async def counting(location: dict[str, object], store_: object) -> list[object]:
        nonlocal reads
        reads += 1
        return await original(location, store_)

    leadership_module.read_wal = counting  # type: ignore[assignment]
    try:
        first = await broker.leadership._read_wal(dead)
        second = await broker.leadership._read_wal(dead)
    finally:
        leadership_module.read_wal = original  # type: ignore[assignment]
    assert len(first) == len(second) == 1 and reads == 1  # the partitions of a dead incarnation share one read


async def test_a_cluster_round_the_store_fails_is_a_warning_and_the_loop_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Injected 503s (chaos 2026-12-03 23:20) made cluster rounds give up after their retries; each was
    logged as an ERROR with a traceback, though the next round simply starts over."""
    broker = Broker(Settings(data_dir=str(tmp_path), controller_interval_ms=1), store=MemoryObjectStore())
    rounds = 0

    async def read_brokers_failing(_known: object = None) -> list[BrokerRegistration]:
        nonlocal rounds
        rounds += 1
        broker.stopping = rounds >= 2
        raise TransientError("get cluster/brokers: gave up after 5 attempts: SlowDown")

    broker.cluster.read_brokers = read_brokers_failing  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO, logger="keel.broker"):
        await broker._cluster_loop()
    records = [r for r in caplog.records if r.name == "keel.broker"]
    assert rounds == 2  # the first failure did not end the loop
    assert [r.levelno for r in records] == [logging.WARNING, logging.WARNING]
    assert "SlowDown" in records[0].getMessage() and records[0].exc_info is None
