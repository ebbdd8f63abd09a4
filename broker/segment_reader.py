"""Reads record batches out of segment objects with ranged GETs.

A segment's footer and sparse index are fetched once and cached (bounded
LRU); body bytes come through the block cache (bounded memory, sequential
read-ahead), so a fetch GETs only the blocks that hold the wanted batches.
"""

from __future__ import annotations

from collections import OrderedDict

from broker.block_cache import BlockCache
from broker.segment import (
    FOOTER_SIZE,
    CorruptSegmentError,
    SegmentFooter,
    SegmentIndex,
    find_batches,
    parse_footer,
)
from metadata.store import SegmentRef
from objectstore.base import ObjectStore
from protocol.records import iter_batch_headers

MIN_READ = 64 * 1024


class SegmentReader:
    def __init__(self, store: ObjectStore, *, cache_bytes: int = 64 * 1024 * 1024, block_size: int = 1024 * 1024,
                 read_ahead: int = 2, max_cached_indexes: int = 4096) -> None:
        self.store = store
        self.blocks = BlockCache(store, capacity_bytes=cache_bytes, block_size=block_size, read_ahead=read_ahead)
        self.max_cached = max_cached_indexes
        self._indexes: OrderedDict[str, tuple[SegmentFooter, SegmentIndex]] = OrderedDict()
        self.stats = {"gets": 0, "bytes": 0}

    async def _get(self, key: str, start: int, end: int) -> bytes:
        data = await self.store.get(key, start, end)
        self.stats["gets"] += 1
        self.stats["bytes"] += len(data)
        return data

    async def open(self, segment: SegmentRef) -> tuple[SegmentFooter, SegmentIndex]:
        cached = self._indexes.get(segment.key)
        if cached is not None:
            self._indexes.move_to_end(segment.key)
            return cached
        try:
            tail = await self._get(segment.key, segment.size - FOOTER_SIZE, segment.size)
            footer = parse_footer(tail, object_size=segment.size)
            raw_index = await self._get(segment.key, footer.body_length, footer.body_length + footer.index_length)
            index = SegmentIndex.parse(raw_index, footer)
        except CorruptSegmentError as exc:  # name the object, so that an operator can find it
            raise CorruptSegmentError(f"{segment.key}: {exc}") from exc
        self._indexes[segment.key] = (footer, index)
        if len(self._indexes) > self.max_cached:
            self._indexes.popitem(last=False)
        return footer, index

    def forget(self, key: str) -> None:
        self._indexes.pop(key, None)
        self.blocks.forget(key)

    async def _body(self, segment: SegmentRef, start: int, end: int) -> bytes:
        return await self.blocks.read(segment.key, start, end, segment.size)

    async def read(self, segment: SegmentRef, offset: int, max_bytes: int) -> list[bytes | memoryview]:
        """Whole batches starting with the one holding ``offset``; at least one batch."""
        footer, index = await self.open(segment)
        start, next_indexed = index.position_range_for_offset(offset)
        end = min(footer.body_length, next_indexed + max(max_bytes, MIN_READ))
        try:
            chunk = await self._body(segment, start, end)
            span = find_batches(chunk, offset, max_bytes, chunk_pos=start)
            if span.need and span.start < footer.body_length:
                start = span.start
                end = min(footer.body_length, start + max(span.need, max_bytes))
                chunk = await self._body(segment, start, end)
                span = find_batches(chunk, offset, max_bytes, chunk_pos=start)
        except CorruptSegmentError as exc:
            raise CorruptSegmentError(f"{segment.key}: {exc}") from exc
        if span.end <= span.start:
            return []
        return [memoryview(chunk)[span.start - start: span.end - start]]

    async def batches_from_timestamp(self, segment: SegmentRef, timestamp: int) -> list[memoryview]:
        """Every batch from the first one that may hold ``timestamp`` to the end of the segment."""
        footer, index = await self.open(segment)
        start = index.position_for_timestamp(timestamp)
        body = memoryview(await self._body(segment, start, footer.body_length))
        return [body[pos: pos + header.size] for pos, header in iter_batch_headers(body)
                if header.max_timestamp >= timestamp]
