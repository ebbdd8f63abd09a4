"""A bounded LRU cache of fixed-size blocks of immutable objects, with sequential read-ahead.

Segment objects never change once written, so a block (``block_size`` bytes
at a block-aligned position) can be cached by (key, block number) for as
long as memory allows.  Concurrent readers of the same missing block share
one GET.  When a reader moves on to the block after the one it read last, the
next ``read_ahead`` blocks are fetched in the background: a consumer catching
up on cold data then finds them already cached.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict

from objectstore.base import ObjectStore, ObjectStoreError

log = logging.getLogger("keel.blockcache")


class BlockCache:
    def __init__(self, store: ObjectStore, *, capacity_bytes: int, block_size: int = 1024 * 1024,
                 read_ahead: int = 2) -> None:
        self.store = store
        self.capacity = capacity_bytes
        self.block_size = block_size
        self.read_ahead = read_ahead
        self._blocks: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._loading: dict[tuple[str, int], asyncio.Future[bytes]] = {}
        self._last_block: dict[str, int] = {}
        self._size = 0
        self._background: set[asyncio.Task[None]] = set()
        self.stats = {"hits": 0, "misses": 0, "gets": 0, "bytes_fetched": 0, "prefetched": 0}

    @property
    def size(self) -> int:
        return self._size

    async def read(self, key: str, start: int, end: int, object_size: int) -> bytes:
        """Bytes [start, end) of the object ``key`` of ``object_size`` bytes."""
        end = min(end, object_size)
        if start >= end:
            return b""
        first, last = start // self.block_size, (end - 1) // self.block_size
        blocks = await asyncio.gather(*(self._block(key, n, object_size) for n in range(first, last + 1)))
        self._maybe_read_ahead(key, first, last, object_size)
        data = blocks[0] if len(blocks) == 1 else b"".join(blocks)
        offset = first * self.block_size
        return data[start - offset: end - offset]

    async def _block(self, key: str, number: int, object_size: int) -> bytes:
        cache_key = (key, number)
        block = self._blocks.get(cache_key)
        if block is not None:
            self._blocks.move_to_end(cache_key)
            self.stats["hits"] += 1
            return block
        loading = self._loading.get(cache_key)
        if loading is not None:
            self.stats["hits"] += 1
            return await asyncio.shield(loading)
        self.stats["misses"] += 1
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._loading[cache_key] = future
        try:
            start = number * self.block_size
            block = await self.store.get(key, start, min(start + self.block_size, object_size))
            self.stats["gets"] += 1
            self.stats["bytes_fetched"] += len(block)
            self._insert(cache_key, block)
            future.set_result(block)
            return block
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters, if any, re-raise it themselves
            raise
        finally:
            self._loading.pop(cache_key, None)

    def _insert(self, cache_key: tuple[str, int], block: bytes) -> None:
        if len(block) > self.capacity:
            return
        self._blocks[cache_key] = block
        self._size += len(block)
        while self._size > self.capacity:
            _, evicted = self._blocks.popitem(last=False)
            self._size -= len(evicted)

    def _maybe_read_ahead(self, key: str, first: int, last: int, object_size: int) -> None:
        previous = self._last_block.get(key)
        self._last_block[key] = last
        if len(self._last_block) > 10_000:
            self._last_block.pop(next(iter(self._last_block)))
        if previous is None or not previous <= first <= previous + 1 or not self.read_ahead:
            return
        block_count = (object_size + self.block_size - 1) // self.block_size
        for number in range(last + 1, min(last + 1 + self.read_ahead, block_count)):
            if (key, number) not in self._blocks and (key, number) not in self._loading:
                self.stats["prefetched"] += 1
                task = asyncio.get_running_loop().create_task(self._prefetch(key, number, object_size))
                self._background.add(task)
                task.add_done_callback(self._background.discard)

    async def _prefetch(self, key: str, number: int, object_size: int) -> None:
        with contextlib.suppress(ObjectStoreError):
            await self._block(key, number, object_size)

    def forget(self, key: str) -> None:
        for cache_key in [k for k in self._blocks if k[0] == key]:
            self._size -= len(self._blocks.pop(cache_key))
        self._last_block.pop(key, None)
