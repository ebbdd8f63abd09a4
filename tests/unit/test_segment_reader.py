"""The segment reader: footer and index in one GET, shared openings, and the next segment fetched ahead."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from broker import segment_reader
from broker.segment import CorruptSegmentError, build_segment
from broker.segment_reader import SegmentReader
from metadata.store import SegmentRef
from objectstore.memory import MemoryObjectStore
from protocol.records import assign_offsets, build_batch, iter_batch_headers

# Sizes scaled down from the defaults (1 MiB blocks, 64 KiB tail reads, 64 KiB index interval and reads).
BLOCK = 4096
TAIL = 2048
INTERVAL = MIN_READ = 256


@pytest.fixture(autouse=True)
def _small_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(segment_reader, "TAIL_READ", TAIL)
    monkeypatch.setattr(segment_reader, "MIN_READ", MIN_READ)


class CountingStore(MemoryObjectStore):
    def __init__(self) -> None:
        super().__init__()
        self.gets: list[tuple[str, int, int | None]] = []

    async def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        self.gets.append((key, start, end))
        return await super().get(key, start, end)


def _batches(base: int, count: int, value_size: int = 900) -> list[bytes]:
    out = []
    for offset in range(base, base + count):
        batch = bytearray(build_batch([(None, b"v" * value_size, [])], timestamps=[offset]))
        assign_offsets(batch, offset)
        out.append(bytes(batch))
    return out


async def _segment(store: MemoryObjectStore, key: str, base: int, count: int,
                   interval: int = INTERVAL) -> tuple[SegmentRef, list[bytes]]:
    batches = _batches(base, count)
    parts, footer = build_segment(batches, index_interval_bytes=interval)
    data = b"".join(parts)
    await store.put(key, data)
    return SegmentRef(footer.base_offset, footer.last_offset, key, len(data), footer.max_timestamp), batches


async def _idle() -> None:
    for _ in range(30):
        await asyncio.sleep(0)


def _offsets(chunks: list[Any]) -> list[int]:
    return [h.base_offset for chunk in chunks for _pos, h in iter_batch_headers(chunk)]


async def test_footer_and_index_come_in_one_get_of_the_tail() -> None:
    store = CountingStore()
    ref, _ = await _segment(store, "s0", 0, 40)
    reader = SegmentReader(store, cache_bytes=1 << 20, block_size=BLOCK)
    await reader.open(ref)
    assert store.gets == [("s0", ref.size - TAIL, ref.size)]
    await reader.open(ref)
    assert len(store.gets) == 1


async def test_an_index_larger_than_the_tail_read_takes_a_second_get() -> None:
    store = CountingStore()
    ref, _ = await _segment(store, "s0", 0, 200, interval=1)  # 200 index entries: 4,800 bytes
    reader = SegmentReader(store, cache_bytes=1 << 20, block_size=BLOCK)
    assert _offsets(await reader.read(ref, 190, 100_000)) == list(range(190, 200))
    index_start = ref.size - 80 - 200 * 24
    assert store.gets[:2] == [("s0", ref.size - TAIL, ref.size), ("s0", index_start, ref.size - 80)]


async def test_a_small_segment_read_whole_for_its_index_needs_no_more_gets() -> None:
    store = CountingStore()
    ref, _ = await _segment(store, "s0", 0, 1)
    assert ref.size < TAIL
    reader = SegmentReader(store, cache_bytes=1 << 20, block_size=BLOCK)
    assert _offsets(await reader.read(ref, 0, 10_000)) == [0]
    assert store.gets == [("s0", 0, ref.size)]


async def test_concurrent_readers_share_one_opening() -> None:
    store = CountingStore()
    ref, _ = await _segment(store, "s0", 0, 40)
    reader = SegmentReader(store, cache_bytes=1 << 20, block_size=BLOCK)
    results = await asyncio.gather(*(reader.open(ref) for _ in range(5)))
    assert all(r is results[0] for r in results)
    assert len(store.gets) == 1


async def test_a_corrupt_segment_is_reported_with_its_key() -> None:
    store = CountingStore()
    ref, _ = await _segment(store, "s0", 0, 40)
    data = bytearray(await store.get("s0"))
    data[-5] ^= 0xFF  # the footer CRC
    await store.put("s0", bytes(data))
    reader = SegmentReader(store, cache_bytes=1 << 20, block_size=BLOCK)
    with pytest.raises(CorruptSegmentError, match="s0"):
        await reader.read(ref, 0, 1000)


async def test_a_scan_reads_ahead_into_the_next_segment() -> None:
    store = CountingStore()
    first, _ = await _segment(store, "s0", 0, 40)  # ~39 KB: 10 blocks of 4 KiB
    second, _ = await _segment(store, "s1", 40, 40)
    reader = SegmentReader(store, cache_bytes=1 << 20, block_size=BLOCK, read_ahead=8, max_get_blocks=4)
    offset = 0
    while offset < 40:
        chunks = await reader.read(first, offset, 3000, following=[second])
        offset = _offsets(chunks)[-1] + 1
        await _idle()
    assert "s1" in reader._indexes  # opened in the background
    # By the end of s0 the 8-block window lies in s1: fetched half a window at a time, plus its tail.
    assert sorted(g for g in store.gets if g[0] == "s1") == [
        ("s1", 0, 4 * BLOCK), ("s1", 4 * BLOCK, 8 * BLOCK), ("s1", second.size - TAIL, second.size)]
    assert reader.stats["segments_read_ahead"] == 2
    before = len(store.gets)
    while offset < 80:
        chunks = await reader.read(second, offset, 3000)
        got = _offsets(chunks)
        assert got[0] == offset
        offset = got[-1] + 1
        await _idle()
    assert reader.blocks.stats["misses"] == 1  # only s0's very first read waited for a GET of its own
    assert all(start >= 8 * BLOCK for _key, start, _end in store.gets[before:])


async def test_a_next_segment_that_fits_in_the_window_comes_whole_in_one_get() -> None:
    store = CountingStore()
    first, _ = await _segment(store, "s0", 0, 40)  # 10 blocks
    second, _ = await _segment(store, "s1", 40, 40)
    reader = SegmentReader(store, cache_bytes=1 << 20, block_size=BLOCK, read_ahead=16, max_get_blocks=16)
    offset = 0
    while offset < 40:
        chunks = await reader.read(first, offset, 3000, following=[second])
        offset = _offsets(chunks)[-1] + 1
        await _idle()
    assert [g for g in store.gets if g[0] == "s1"] == [("s1", 0, second.size)]  # body, index and footer
    assert "s1" in reader._indexes
    before = len(store.gets)
    while offset < 80:
        chunks = await reader.read(second, offset, 3000)
        offset = _offsets(chunks)[-1] + 1
    assert len(store.gets) == before


async def test_a_random_read_does_not_fetch_the_next_segment() -> None:
    store = CountingStore()
    first, _ = await _segment(store, "s0", 0, 40)
    second, _ = await _segment(store, "s1", 40, 40)
    reader = SegmentReader(store, cache_bytes=1 << 20, block_size=BLOCK, read_ahead=8)
    assert _offsets(await reader.read(first, 38, 1000, following=[second])) == [38]
    await _idle()
    assert not any(g[0] == "s1" for g in store.gets)
