"""The block cache: exact byte ranges, a hard memory bound, shared GETs and sequential read-ahead in large GETs."""

import asyncio
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.block_cache import BlockCache
from objectstore.base import ObjectStoreError
from objectstore.memory import MemoryObjectStore

DATA = os.urandom(10_000)


async def _cache(capacity: int = 4096, read_ahead: int = 0) -> tuple[BlockCache, MemoryObjectStore]:
    store = MemoryObjectStore()
    await store.put("seg", DATA)
    return BlockCache(store, capacity_bytes=capacity, block_size=1000, read_ahead=read_ahead), store


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10_500), st.integers(0, 3000)), min_size=1, max_size=20))
def test_reads_return_exact_ranges_within_the_bound(ranges: list[tuple[int, int]]) -> None:
    async def run() -> None:
        cache, _ = await _cache()
        for start, length in ranges:
            assert await cache.read("seg", start, start + length, len(DATA)) == DATA[start:start + length]
            assert cache.size <= 4096
    asyncio.run(run())


async def test_concurrent_readers_of_a_missing_block_share_one_get() -> None:
    cache, _ = await _cache()
    results = await asyncio.gather(*(cache.read("seg", 100, 200, len(DATA)) for _ in range(10)))
    assert all(r == DATA[100:200] for r in results)
    assert cache.stats["gets"] == 1


async def test_sequential_reads_prefetch_the_next_blocks() -> None:
    cache, _ = await _cache(capacity=100_000, read_ahead=2)
    await cache.read("seg", 0, 1000, len(DATA))
    await cache.read("seg", 1000, 2000, len(DATA))  # sequential: blocks 2 and 3 are fetched ahead
    await asyncio.sleep(0.01)
    gets = cache.stats["gets"]
    assert await cache.read("seg", 2000, 4000, len(DATA)) == DATA[2000:4000]
    assert cache.stats["gets"] == gets
    assert cache.stats["prefetched"] >= 2


async def test_forget_drops_a_deleted_objects_blocks() -> None:
    cache, store = await _cache()
    await cache.read("seg", 0, 2000, len(DATA))
    assert cache.size == 2000
    cache.forget("seg")
    assert cache.size == 0


class CountingStore(MemoryObjectStore):
    """Records the byte range of every GET; can be told to fail some of them."""

    def __init__(self) -> None:
        super().__init__()
        self.ranges: list[tuple[int, int | None]] = []
        self.fail_calls: set[int] = set()  # numbers (from 0) of the GETs to fail

    async def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        self.ranges.append((start, end))
        if len(self.ranges) - 1 in self.fail_calls:
            raise ObjectStoreError("injected GET failure")
        return await super().get(key, start, end)


async def _counting(capacity: int = 100_000, read_ahead: int = 0, max_get_blocks: int = 8,
                    ) -> tuple[BlockCache, CountingStore]:
    store = CountingStore()
    await store.put("seg", DATA)
    cache = BlockCache(store, capacity_bytes=capacity, block_size=1000, read_ahead=read_ahead,
                       max_get_blocks=max_get_blocks)
    return cache, store


async def _idle(cache: BlockCache) -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_the_missing_blocks_of_one_read_come_in_one_get() -> None:
    cache, store = await _counting()
    assert await cache.read("seg", 500, 3500, len(DATA)) == DATA[500:3500]
    assert store.ranges == [(0, 4000)]
    assert await cache.read("seg", 1500, 4500, len(DATA)) == DATA[1500:4500]
    assert store.ranges == [(0, 4000), (4000, 5000)]  # only the block not cached yet


async def test_read_ahead_fills_half_a_window_at_a_time_in_large_gets() -> None:
    cache, store = await _counting(read_ahead=6, max_get_blocks=3)
    big = os.urandom(30_000)
    await store.put("big", big)

    async def read_block(n: int) -> None:
        assert await cache.read("big", n * 1000, n * 1000 + 1000, len(big)) == big[n * 1000: n * 1000 + 1000]
        await _idle(cache)

    await read_block(0)
    await read_block(1)  # sequential: blocks 2-7 ahead, in GETs of 3 blocks
    assert store.ranges == [(0, 1000), (1000, 2000), (2000, 5000), (5000, 8000)]
    await read_block(2)  # 1 or 2 blocks of the window missing: not worth a GET yet
    await read_block(3)
    assert len(store.ranges) == 4
    await read_block(4)  # half the window (8-10) missing: one GET
    assert store.ranges[4:] == [(8000, 11_000)]
    for n in range(5, 30):
        await read_block(n)
    assert cache.stats["misses"] == 2  # only the first two reads waited for a GET of their own
    assert all(end - start >= 2000 for start, end in store.ranges[2:])  # type: ignore[operator]


async def test_begin_stream_reads_ahead_from_the_first_read() -> None:
    cache, store = await _counting(read_ahead=4)
    cache.begin_stream("seg")
    await cache.read("seg", 0, 1000, len(DATA))
    await _idle(cache)
    assert store.ranges == [(0, 1000), (1000, 5000)]


async def test_the_window_shrinks_so_that_all_streams_fit_in_half_the_cache() -> None:
    cache, store = await _counting(capacity=8000, read_ahead=16)
    for key in ("a", "b"):
        await store.put(key, DATA)
    await cache.read("a", 0, 1000, len(DATA))
    assert cache.window() == 4  # no stream yet: 16 capped at half the cache (4 blocks)
    await cache.read("a", 1000, 2000, len(DATA))
    assert cache.window() == 4
    await cache.read("b", 0, 1000, len(DATA))
    await cache.read("b", 1000, 2000, len(DATA))
    assert cache.window() == 2  # two streams share half the cache
    await _idle(cache)
    assert cache.size <= 8000


async def test_a_failed_read_ahead_leaves_the_blocks_to_be_read_on_demand() -> None:
    cache, store = await _counting(read_ahead=4)
    store.fail_calls = {1}
    cache.begin_stream("seg")
    assert await cache.read("seg", 0, 1000, len(DATA)) == DATA[0:1000]  # its read-ahead GET (1-4) fails
    await _idle(cache)
    assert cache.stats["prefetched"] == 0
    assert await cache.read("seg", 2000, 4000, len(DATA)) == DATA[2000:4000]
    assert store.ranges[:3] == [(0, 1000), (1000, 5000), (2000, 4000)]


async def test_a_cancelled_reader_does_not_cancel_the_get_others_wait_for() -> None:
    cache, _ = await _counting()
    first = asyncio.ensure_future(cache.read("seg", 0, 500, len(DATA)))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(cache.read("seg", 100, 600, len(DATA)))
    await asyncio.sleep(0)
    first.cancel()
    assert await second == DATA[100:600]
    assert cache.stats["gets"] == 1


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 9), min_size=1, max_size=30), st.integers(1, 12), st.integers(1, 4))
def test_read_ahead_never_breaks_the_memory_bound(starts: list[int], read_ahead: int, max_get: int) -> None:
    async def run() -> None:
        cache, _ = await _counting(capacity=3500, read_ahead=read_ahead, max_get_blocks=max_get)
        for block in sorted(starts):  # mostly sequential, with jumps
            start = block * 1000 + 10
            assert await cache.read("seg", start, start + 1200, len(DATA)) == DATA[start:start + 1200]
            assert cache.size <= 3500
        await _idle(cache)
        assert cache.size <= 3500
    asyncio.run(run())


async def test_a_read_within_one_gets_blocks_is_a_view_of_that_get_not_a_copy() -> None:
    cache, store = await _counting(capacity=100_000)
    first = await cache.read("seg", 0, 4000, len(DATA))  # one GET brings blocks 0-3
    assert bytes(first) == DATA[:4000] and len(store.ranges) == 1
    spanning = await cache.read("seg", 1500, 3500, len(DATA))  # blocks 1-3, cached from that GET
    assert isinstance(spanning, memoryview) and bytes(spanning) == DATA[1500:3500]
    assert isinstance(first, memoryview) and spanning.obj is first.obj  # the same buffer
    assert len(store.ranges) == 1
    across = await cache.read("seg", 3500, 4500, len(DATA))  # block 4 comes from a second GET
    assert bytes(across) == DATA[3500:4500] and len(store.ranges) == 2


async def test_the_blocks_of_one_get_are_evicted_together_and_the_bound_holds() -> None:
    cache, store = await _counting(capacity=5000)
    await cache.read("seg", 0, 4000, len(DATA))  # one GET, 4 blocks: 4000 bytes charged
    assert cache.size == 4000
    await cache.read("seg", 0, 100, len(DATA))  # block 0 is now the most recently used
    await cache.read("seg", 6000, 8000, len(DATA))  # 2000 more: over the bound, the oldest block goes
    # The least recently used block (1) shares its buffer with 0, 2 and 3: all four go, or nothing is freed.
    assert cache.size == 2000
    gets = len(store.ranges)
    assert bytes(await cache.read("seg", 0, 100, len(DATA))) == DATA[:100]
    assert len(store.ranges) == gets + 1


class RecyclingStore(MemoryObjectStore):
    """Returns each GET in a buffer of its own (or, as the S3 engine does for large ones, in a view of
    all of such a buffer) and records what is handed back."""

    def __init__(self, as_view: bool = False) -> None:
        super().__init__()
        self.as_view = as_view
        self.recycled: list[object] = []

    async def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        buffer = bytearray(await super().get(key, start, end))
        return memoryview(buffer) if self.as_view else buffer  # type: ignore[return-value]

    def recycle(self, data: object) -> None:
        self.recycled.append(data)


@pytest.mark.parametrize("as_view", [False, True], ids=["buffer", "view"])
async def test_an_evicted_buffer_goes_back_to_the_store_only_once_nothing_refers_to_it(as_view: bool) -> None:
    store = RecyclingStore(as_view)
    await store.put("seg", DATA)
    cache = BlockCache(store, capacity_bytes=2000, block_size=1000, read_ahead=0)

    async def block(n: int) -> bytes | memoryview:
        return await cache.read("seg", n * 1000, (n + 1) * 1000, len(DATA))

    view = await block(0)  # a Fetch answer still being written holds a view like this one
    await block(1)
    await block(2)  # evicts block 0
    await block(3)  # evicts block 1
    await block(4)  # its GET hands back block 1's buffer, not block 0's
    assert [bytes(b) for b in store.recycled] == [DATA[1000:2000]]
    assert cache.stats["recycled"] == 1
    assert bytes(view) == DATA[:1000]
    del view
    await block(5)
    assert sorted(bytes(b) for b in store.recycled) == sorted([DATA[1000:2000], DATA[:1000], DATA[2000:3000]])
    assert all(isinstance(b, bytearray) for b in store.recycled)  # the buffer a view showed, not the view
    assert await cache.read("seg", 0, 10_000, len(DATA)) == DATA


class PoolingStore(RecyclingStore):
    """Keeps the buffers handed back, up to ``pool`` bytes, as the S3 engine keeps large-GET buffers."""

    def __init__(self, pool: int) -> None:
        super().__init__()
        self.pool = pool

    @property
    def buffer_pool_bytes(self) -> int:
        return self.pool

    def recycle(self, data: object) -> None:
        if sum(len(b) for b in self.recycled) + len(data) <= self.pool:  # type: ignore[arg-type]
            self.recycled.append(data)


async def test_the_stores_buffer_pool_counts_within_the_caches_bound() -> None:
    store = PoolingStore(pool=2000)
    await store.put("seg", DATA)
    cache = BlockCache(store, capacity_bytes=5000, block_size=1000, read_ahead=0)
    for n in range(10):
        assert bytes(await cache.read("seg", n * 1000, (n + 1) * 1000, len(DATA))) == DATA[n * 1000:(n + 1) * 1000]
        held = sum(len(b) for b in store.recycled)
        assert cache.size <= 3000 and cache.size + held <= 5000
    assert cache.size == 3000 and sum(len(b) for b in store.recycled) == 2000
