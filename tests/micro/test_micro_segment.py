"""Micro benchmarks of segment objects: building one at flush, reading batches back for a fetch.

The segment holds 256 batches of 4 records of 1 KiB (about 1 MiB, 17 index
entries at the default 64 KiB interval). Reads are a fetch at an offset in the
middle of the segment for at most 256 KiB: once through the in-memory parsing
functions (``open_segment`` verifies footer, index and body CRCs, then
``find_batches``), and through ``SegmentReader`` on the in-memory object
store, cold (a new reader: footer, index and one block are fetched) and warm
(footer, index and block cached).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from broker.segment import INDEX_ENTRY_SIZE, SegmentFooter, build_segment, find_batches, open_segment
from broker.segment_reader import SegmentReader
from metadata.store import SegmentRef
from objectstore.memory import MemoryObjectStore
from protocol.records import iter_batch_headers

BatchFactory = Callable[..., bytes]
BATCHES = 256
RECORDS_PER_BATCH = 4
FETCH_BATCH = 128
FETCH_OFFSET = FETCH_BATCH * RECORDS_PER_BATCH + 1  # inside batch 128
MAX_BYTES = 256 * 1024
KEY = "topics/bench/0/00000000000000000000.seg"

pytestmark = pytest.mark.benchmark(group="segment")


@pytest.fixture
def batches(make_batch: BatchFactory) -> list[bytes]:
    return [make_batch(RECORDS_PER_BATCH, base_offset=RECORDS_PER_BATCH * i) for i in range(BATCHES)]


def expected_fetch(batches: list[bytes]) -> bytes:
    """Whole batches from the one holding FETCH_OFFSET while they fit in MAX_BYTES (at least one)."""
    taken: list[bytes] = []
    size = 0
    for batch in batches[FETCH_BATCH:]:
        if taken and size + len(batch) > MAX_BYTES:
            break
        taken.append(batch)
        size += len(batch)
    return b"".join(taken)


def check_fetched(data: bytes, batches: list[bytes]) -> None:
    assert data == expected_fetch(batches)
    headers = [h for _pos, h in iter_batch_headers(data)]
    assert headers[0].base_offset <= FETCH_OFFSET <= headers[0].last_offset
    assert all(a.next_offset == b.base_offset for a, b in zip(headers, headers[1:], strict=False))


def segment_ref(footer: SegmentFooter) -> SegmentRef:
    return SegmentRef(footer.base_offset, footer.last_offset, KEY, footer.object_size, footer.max_timestamp)


def test_build_segment(benchmark: Any, batches: list[bytes]) -> None:
    parts, footer = benchmark(build_segment, batches)

    body = b"".join(batches)
    assert footer.base_offset == 0 and footer.last_offset == BATCHES * RECORDS_PER_BATCH - 1
    assert (footer.batch_count, footer.record_count) == (BATCHES, BATCHES * RECORDS_PER_BATCH)
    assert footer.body_length == len(body)
    data = b"".join(parts)
    assert len(data) == footer.object_size
    parsed_footer, index, parsed_body = open_segment(data)  # verifies every CRC
    assert parsed_footer == footer and parsed_body == body
    assert len(index) == footer.index_length // INDEX_ENTRY_SIZE > 1


def read_in_memory(data: bytes, offset: int, max_bytes: int) -> memoryview:
    footer, index, body = open_segment(data)
    start, _next_indexed = index.position_range_for_offset(offset)
    span = find_batches(body[start:], offset, max_bytes, chunk_pos=start)
    assert span.need == 0
    return body[span.start:span.end]


def test_read_segment_in_memory(benchmark: Any, batches: list[bytes]) -> None:
    parts, _footer = build_segment(batches)
    data = b"".join(parts)

    fetched = benchmark(read_in_memory, data, FETCH_OFFSET, MAX_BYTES)

    check_fetched(bytes(fetched), batches)


@pytest.mark.parametrize("cache", ["cold", "warm"])
def test_segment_reader_read(benchmark: Any, batches: list[bytes], bench_loop: asyncio.AbstractEventLoop,
                             cache: str) -> None:
    parts, footer = build_segment(batches)
    store = MemoryObjectStore()
    bench_loop.run_until_complete(store.put(KEY, b"".join(parts)))
    ref = segment_ref(footer)
    last: list[SegmentReader] = []  # only the latest reader: each cold one holds a 1 MiB block

    def read(reader: SegmentReader | None) -> list[bytes | memoryview]:
        if reader is None:
            reader = SegmentReader(store)
            last[:] = [reader]
        return bench_loop.run_until_complete(reader.read(ref, FETCH_OFFSET, MAX_BYTES))

    warm = None
    if cache == "warm":
        warm = SegmentReader(store)
        read(warm)
        last[:] = [warm]

    chunks = benchmark(read, warm)

    check_fetched(b"".join(chunks), batches)
    [reader] = last
    assert reader.stats["gets"] == 1  # footer and index in one GET of the tail, once per reader
    assert reader.blocks.stats["misses"] >= 1
    if warm is not None:
        assert warm.blocks.stats["hits"] >= 1
