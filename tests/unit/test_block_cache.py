"""The block cache: exact byte ranges, a hard memory bound, shared GETs and sequential read-ahead."""

import asyncio
import os

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.block_cache import BlockCache
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
