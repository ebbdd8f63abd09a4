"""Reads record batches out of segment objects with ranged GETs.

A segment's footer and sparse index are fetched once and cached (bounded
LRU), usually with one GET of the object's tail; body bytes come through the
block cache (bounded memory, sequential read-ahead), so a fetch GETs only the
blocks that hold the wanted batches.  For a reader that scans a partition
(it started at a segment's first batch, or reads on sequentially) the
read-ahead window reaches on into the following segments, so a catch-up read
does not stall at each segment boundary waiting for the next GET.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Sequence

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
from objectstore.base import ObjectStore, ObjectStoreError
from protocol.records import iter_batch_headers

MIN_READ = 64 * 1024
TAIL_READ = 64 * 1024  # the first GET of an unopened segment: footer and (usually) the whole index


class SegmentReader:
    def __init__(self, store: ObjectStore, *, cache_bytes: int = 64 * 1024 * 1024, block_size: int = 1024 * 1024,
                 read_ahead: int = 2, max_cached_indexes: int = 4096, max_get_blocks: int = 8) -> None:
        self.store = store
        self.blocks = BlockCache(store, capacity_bytes=cache_bytes, block_size=block_size, read_ahead=read_ahead,
                                 max_get_blocks=max_get_blocks)
        self.max_cached = max_cached_indexes
        self._indexes: OrderedDict[str, tuple[SegmentFooter, SegmentIndex]] = OrderedDict()
        self._opening: dict[str, asyncio.Task[tuple[SegmentFooter, SegmentIndex]]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self.stats = {"gets": 0, "bytes": 0, "segments_read_ahead": 0}

    async def _get(self, segment: SegmentRef, start: int, end: int) -> bytes | memoryview:
        if self.blocks.holds(segment.key, start, end):  # read ahead already: no GET of its own
            return await self.blocks.read(segment.key, start, end, segment.size, sequential=False)
        data = await self.store.get(segment.key, start, end)
        self.stats["gets"] += 1
        self.stats["bytes"] += len(data)
        self.blocks.offer(segment.key, start, data, segment.size)  # a small segment's tail is all of it
        return data

    async def open(self, segment: SegmentRef) -> tuple[SegmentFooter, SegmentIndex]:
        cached = self._indexes.get(segment.key)
        if cached is not None:
            self._indexes.move_to_end(segment.key)
            return cached
        task = self._opening.get(segment.key)
        if task is None:  # one opening per segment, shared, and not cancelled with any one reader
            task = asyncio.get_running_loop().create_task(self._open(segment))
            self._opening[segment.key] = task
            task.add_done_callback(lambda t: t.cancelled() or t.exception())  # waiters see any failure
        return await asyncio.shield(task)

    async def _open(self, segment: SegmentRef) -> tuple[SegmentFooter, SegmentIndex]:
        try:
            opened = await self._load_index(segment)
        finally:
            self._opening.pop(segment.key, None)
        self._indexes[segment.key] = opened
        if len(self._indexes) > self.max_cached:
            self._indexes.popitem(last=False)
        return opened

    async def _load_index(self, segment: SegmentRef) -> tuple[SegmentFooter, SegmentIndex]:
        try:
            tail_start = max(0, segment.size - max(TAIL_READ, FOOTER_SIZE))
            tail = await self._get(segment, tail_start, segment.size)
            footer = parse_footer(tail, object_size=segment.size)
            index_start, index_end = footer.body_length, footer.body_length + footer.index_length
            if index_start >= tail_start:
                raw_index = memoryview(tail)[index_start - tail_start: index_end - tail_start]
            else:
                raw_index = await self._get(segment, index_start, index_end)
            return footer, SegmentIndex.parse(raw_index, footer)
        except CorruptSegmentError as exc:  # name the object, so that an operator can find it
            raise CorruptSegmentError(f"{segment.key}: {exc}") from exc

    def forget(self, key: str) -> None:
        self._indexes.pop(key, None)
        self.blocks.forget(key)

    async def _body(self, segment: SegmentRef, start: int, end: int) -> bytes | memoryview:
        return await self.blocks.read(segment.key, start, end, segment.size)

    async def read(self, segment: SegmentRef, offset: int, max_bytes: int,
                   following: Sequence[SegmentRef] = ()) -> list[bytes | memoryview]:
        """Whole batches starting with the one holding ``offset``; at least one batch.

        ``following`` are the segments after this one, in order (a few are enough): when this read
        is part of a scan, the read-ahead window reaches on into them."""
        footer, index = await self.open(segment)
        start, next_indexed = index.position_range_for_offset(offset)
        end = min(footer.body_length, next_indexed + max(max_bytes, MIN_READ))
        if start == 0:
            self.blocks.begin_stream(segment.key)  # from the first batch on: most likely a scan
        if following and self.blocks.is_sequential(segment.key, start, end):
            self._read_ahead_following(segment, end, following)
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

    def _read_ahead_following(self, segment: SegmentRef, end: int, following: Sequence[SegmentRef]) -> None:
        """Extends a sequential reader's read-ahead window past the end of ``segment`` (the reader is at
        body position ``end``): the first blocks of the following segments, and their indexes."""
        window = self.blocks.window()
        if not window:
            return
        half = max(1, window // 2)
        budget = window - (self.blocks.blocks_of(segment.size) - 1 - (end - 1) // self.blocks.block_size)
        for after in following:
            if budget < min(half, self.blocks.blocks_of(after.size)):
                break
            count = self.blocks.blocks_of(after.size)
            self.blocks.begin_stream(after.key)
            # A segment that fits in the window is fetched whole as soon as half a window is free (one GET
            # brings its body, index and footer); a larger one half a window at a time.
            wanted = count if count <= window else budget
            if self.blocks.prefetch(after.key, 0, wanted, after.size, min_missing=half):
                self.stats["segments_read_ahead"] += 1
            # Its index: from the blocks just requested if they reach its tail, else with a GET of its own
            # (only for a segment too large to be read ahead whole, so whose tail is far off anyway).
            if after.key not in self._indexes and after.key not in self._opening and (
                    wanted >= count or count > window):
                task = asyncio.get_running_loop().create_task(self._open_quietly(after))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
            budget -= count

    async def _open_quietly(self, segment: SegmentRef) -> None:
        with contextlib.suppress(ObjectStoreError, CorruptSegmentError):  # the reader will meet it itself
            await self.open(segment)

    async def batches_from_timestamp(self, segment: SegmentRef, timestamp: int) -> list[memoryview]:
        """Every batch from the first one that may hold ``timestamp`` to the end of the segment."""
        footer, index = await self.open(segment)
        start = index.position_for_timestamp(timestamp)
        body = memoryview(await self._body(segment, start, footer.body_length))
        return [body[pos: pos + header.size] for pos, header in iter_batch_headers(body)
                if header.max_timestamp >= timestamp]
