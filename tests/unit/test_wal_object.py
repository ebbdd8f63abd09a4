"""The object WAL: in-order acknowledgements, replay by another broker, and PUTs that never completed."""

import asyncio
import time
from typing import Any

import pytest

from objectstore.base import ObjectStoreError
from objectstore.memory import MemoryObjectStore
from wal.object import ObjectWriteAheadLog
from wal.reader import read_wal


async def _write(store: MemoryObjectStore, prefix: str, payloads: list[bytes]) -> list[int]:
    wal = ObjectWriteAheadLog(store, prefix, linger_ms=0, max_bytes=1)  # one object per append
    await wal.open()
    positions = [await wal.append([p]) for p in payloads]
    await wal.close()
    return positions


async def test_another_broker_replays_every_acknowledged_entry_in_order() -> None:
    store = MemoryObjectStore()
    payloads = [b"entry-%d" % i for i in range(20)]
    assert await _write(store, "wal/1/1", payloads) == list(range(20))
    entries = await read_wal({"engine": "object", "prefix": "wal/1/1"}, store)
    assert [e.payload for e in entries] == payloads


async def test_replay_stops_at_an_object_whose_put_never_completed() -> None:
    store = MemoryObjectStore()
    await _write(store, "wal/1/1", [b"a", b"b", b"c", b"d"])
    broken = "wal/1/1/00000000000000000002.wal"
    original_get = store.get

    async def get(key: str, *args: Any, **kwargs: Any) -> bytes:
        if key == broken:
            raise ObjectStoreError(f"{key}: object of 0 bytes was not written by Keel")
        return await original_get(key, *args, **kwargs)

    store.get = get  # type: ignore[method-assign]
    entries = await read_wal({"engine": "object", "prefix": "wal/1/1"}, store)
    assert [e.payload for e in entries] == [b"a", b"b"]

    reopened = ObjectWriteAheadLog(store, "wal/1/1")
    assert [e.payload for e in await reopened.open()] == [b"a", b"b"]
    assert reopened.next_position == 2  # the unreadable object and everything after it were removed
    assert [i.key for i in await store.list("wal/1/1/")] == [
        "wal/1/1/00000000000000000000.wal", "wal/1/1/00000000000000000001.wal"]


async def test_a_retried_put_over_a_leftover_object_of_the_same_write_succeeds() -> None:
    store = MemoryObjectStore()
    await store.put("wal/1/1/00000000000000000000.wal", b"")  # an earlier attempt, cut short
    wal = ObjectWriteAheadLog(store, "wal/1/1", linger_ms=0)
    wal._next_position = 0  # as after open() on an empty prefix
    assert await wal.append([b"x"]) == 0
    await wal.close()
    assert [e.payload for e in await read_wal({"engine": "object", "prefix": "wal/1/1"}, store)] == [b"x"]


class GatedStore(MemoryObjectStore):
    """Holds each WAL PUT until the test opens its gate, and records what every PUT carried."""

    def __init__(self) -> None:
        super().__init__()
        self.gates: list[asyncio.Event] = []
        self.started: list[str] = []

    async def put_if_absent(self, key: str, data: Any) -> str:
        gate = asyncio.Event()
        self.gates.append(gate)
        self.started.append(key)
        await gate.wait()
        return await super().put_if_absent(key, data)


async def _settle(rounds: int = 5) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


async def test_a_lone_append_is_put_at_once_without_waiting_for_the_linger() -> None:
    store = MemoryObjectStore()
    wal = ObjectWriteAheadLog(store, "wal/1/1", linger_ms=60_000)
    await wal.open()
    started = time.monotonic()
    assert await asyncio.wait_for(wal.append([b"x"]), 5) == 0
    assert time.monotonic() - started < 5
    assert wal.stats["commits"] == 1
    await wal.close()


async def test_appends_in_one_event_loop_pass_share_one_object() -> None:
    store = MemoryObjectStore()
    wal = ObjectWriteAheadLog(store, "wal/1/1", linger_ms=60_000)
    await wal.open()
    futures = [wal.submit([b"p%d" % i]) for i in range(3)]  # e.g. one produce request, three partitions
    assert await asyncio.gather(*futures) == [0, 1, 2]
    assert wal.stats["commits"] == 1
    await wal.close()


async def test_appends_arriving_while_a_put_is_in_flight_are_grouped_and_acknowledged_in_order() -> None:
    store = GatedStore()
    wal = ObjectWriteAheadLog(store, "wal/1/1", linger_ms=60_000, eager_puts=1)
    await wal.open()
    first = wal.submit([b"a"])
    await _settle()
    assert len(store.started) == 1  # written at once
    later = [wal.submit([p]) for p in (b"b", b"c")]
    await _settle()
    later.append(wal.submit([b"d"]))
    await _settle()
    assert len(store.started) == 1 and not any(f.done() for f in [first, *later])  # they wait for the PUT
    store.gates[0].set()
    assert await first == 0
    await _settle()
    assert len(store.started) == 2  # everything that gathered meanwhile: the next group commit, one PUT
    store.gates[1].set()
    assert await asyncio.gather(*later) == [1, 2, 3]
    await wal.close()
    assert store.started == ["wal/1/1/00000000000000000000.wal", "wal/1/1/00000000000000000001.wal"]
    entries = await read_wal({"engine": "object", "prefix": "wal/1/1"}, store)
    assert [e.payload for e in entries] == [b"a", b"b", b"c", b"d"]


async def test_the_linger_bounds_the_wait_behind_a_slow_put_but_acks_stay_in_order() -> None:
    store = GatedStore()
    wal = ObjectWriteAheadLog(store, "wal/1/1", linger_ms=20)
    await wal.open()
    first = wal.submit([b"a"])
    await _settle()
    second = wal.submit([b"b"])
    await asyncio.sleep(0.2)
    assert len(store.started) == 2  # the linger ran out: a second PUT while the first still hangs
    store.gates[1].set()
    await asyncio.sleep(0.05)
    assert not second.done()  # written, but not acknowledged before the entry ahead of it
    store.gates[0].set()
    assert await asyncio.gather(first, second) == [0, 1]
    await wal.close()


async def test_eager_puts_zero_always_waits_for_the_linger() -> None:
    store = MemoryObjectStore()
    wal = ObjectWriteAheadLog(store, "wal/1/1", linger_ms=100, eager_puts=0)
    await wal.open()
    started = time.monotonic()
    assert await wal.append([b"x"]) == 0
    assert time.monotonic() - started >= 0.09
    await wal.close()


async def test_a_store_slower_than_a_few_lingers_gets_a_put_per_linger_not_a_queue() -> None:
    """Against a store that takes 20 ms more per PUT, four PUTs in flight (the old fixed bound) queued
    appends behind each other and doubled the produce latency (docs/performance.md).  With the default
    bound every linger's appends start their PUT when the linger runs out."""
    store = GatedStore()
    wal = ObjectWriteAheadLog(store, "wal/1/1", linger_ms=1)
    await wal.open()
    futures = [wal.submit([b"x0"])]
    for i in range(1, 10):  # each append arrives after the previous linger ran out; every PUT still hangs
        await asyncio.sleep(0.01)
        futures.append(wal.submit([b"x%d" % i]))
    await asyncio.sleep(0.05)
    assert len(store.started) == 10
    for gate in store.gates:
        gate.set()
    assert await asyncio.gather(*futures) == list(range(10))
    await wal.close()


class TimedStore(MemoryObjectStore):
    """Every PUT takes ``seconds``; notes the most PUTs in flight at once since ``peak`` was last reset."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.in_flight = self.peak = 0

    async def put_if_absent(self, key: str, data: Any) -> Any:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(self.seconds)
            return await super().put_if_absent(key, data)
        finally:
            self.in_flight -= 1


async def _paced_appends(wal: ObjectWriteAheadLog, count: int, every: float,
                         latencies: list[float] | None = None) -> list[asyncio.Future[int]]:
    loop = asyncio.get_running_loop()
    futures = []
    for i in range(count):
        future, sent = wal.submit([b"x%d" % i]), loop.time()
        if latencies is not None:
            future.add_done_callback(lambda _f, sent=sent: latencies.append(loop.time() - sent))
        futures.append(future)
        await asyncio.sleep(every)
    return futures


async def test_sparse_appends_do_not_wait_for_the_put_in_flight() -> None:
    """Appends further apart than half a PUT: waiting for the PUT in flight would cost most of a PUT and
    group nothing, so each starts its own (two in flight) as long as eager_puts allows.  With one eager
    PUT, appends 70 ms apart wait up to most of a 100 ms PUT."""
    for eager, want_peak in ((2, 2), (1, 1)):
        store = TimedStore(0.1)
        wal = ObjectWriteAheadLog(store, "wal/1/1", linger_ms=60_000, eager_puts=eager)
        await wal.open()
        latencies: list[float] = []
        futures = await _paced_appends(wal, 12, 0.07, latencies)  # the first few settle the averages
        assert await asyncio.gather(*futures) == list(range(12))
        assert store.peak == want_peak
        if eager == 2:
            assert max(latencies[5:]) < 0.14
        else:
            assert max(latencies[5:]) > 0.16
        await wal.close()


async def test_dense_appends_wait_for_the_put_in_flight_and_share_the_next() -> None:
    """Appends much closer together than a PUT lasts: one PUT at a time, each carrying what gathered."""
    store = TimedStore(0.04)
    wal = ObjectWriteAheadLog(store, "wal/1/1", linger_ms=60_000, eager_puts=2)
    await wal.open()
    warm = await _paced_appends(wal, 30, 0.002)  # the averages settle
    await asyncio.gather(*warm)
    store.peak = 0
    commits = wal.stats["commits"]
    futures = await _paced_appends(wal, 60, 0.002)
    assert await asyncio.gather(*futures) == list(range(30, 90))
    assert store.peak == 1
    assert wal.stats["commits"] - commits <= 6  # about one PUT per 40 ms, not one per append
    await wal.close()


def test_at_least_one_put_in_flight() -> None:
    with pytest.raises(ValueError):
        ObjectWriteAheadLog(MemoryObjectStore(), "wal/1/1", max_in_flight=0)
