"""A bounded LRU cache of fixed-size blocks of immutable objects, with sequential read-ahead.

Segment objects never change once written, so a block (``block_size`` bytes
at a block-aligned position) can be cached by (key, block number) for as
long as memory allows.  Concurrent readers of the same missing block share
one GET, and the missing blocks of one read are fetched with one GET.

Read-ahead: when a reader moves on from the block it read last (or was
announced with ``begin_stream``), up to ``read_ahead`` blocks after
it are fetched in the background, in GETs of up to ``max_get_blocks`` blocks:
a consumer catching up on cold data then finds them already cached.  On an
object store every request costs about the same latency and CPU whatever its
size, so read-ahead waits until half the window is missing and then fills it
with few large GETs rather than one block at a time.  The window shrinks
when several readers stream at once so that what is read ahead for all of
them fits in half of the cache, and the cache never holds more than
``capacity_bytes``, counting the buffers the store keeps for reuse
(``ObjectStore.buffer_pool_bytes``).

The blocks of one GET stay views of the buffer that GET returned, not copies:
a cold read then touches each byte once in Python (when the HTTP body is
joined), and a read spanning several blocks of one GET is a single slice.
Such blocks share one allocation, so they are charged and evicted together:
evicting any of them frees the whole buffer.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections import OrderedDict

from objectstore.base import ObjectStore

log = logging.getLogger("keel.blockcache")

MAX_RELEASED = 64  # evicted extents watched for their buffers to become free
STREAM_IDLE_SECONDS = 1.0  # a sequential reader counts as active this long after its last read
MAX_TRACKED_KEYS = 10_000


class _Extent:
    """The bytes one GET returned (``data`` holds object bytes from position ``start``), cut into the
    cached blocks ``first``..``last``; ``live`` of them are still in the cache."""

    __slots__ = ("key", "data", "start", "first", "last", "live")

    def __init__(self, key: str, data: bytes | bytearray | memoryview, start: int, first: int, last: int) -> None:
        self.key, self.data, self.start, self.first, self.last = key, _backing(data), start, first, last
        self.live = 0

    def view(self, start: int, end: int) -> memoryview:
        """Object bytes [start, end), which must lie in this extent's blocks."""
        return memoryview(self.data)[start - self.start: end - self.start]


def _backing(data: bytes | bytearray | memoryview) -> object:
    """The buffer a view of all of it shows (a large GET's body comes as such a view), else ``data``: every
    view made of a buffer counts among its references, while views made of a view do not count among the
    view's, and ``_recycle_released`` goes by those counts."""
    if isinstance(data, memoryview) and data.obj is not None and data.nbytes == len(data.obj):
        return data.obj
    return data


class BlockCache:
    def __init__(self, store: ObjectStore, *, capacity_bytes: int, block_size: int = 1024 * 1024,
                 read_ahead: int = 2, max_get_blocks: int = 8) -> None:
        self.store = store
        # Buffers of evicted blocks that the store keeps for its next GETs are memory of this cache too.
        self.capacity = max(0, capacity_bytes - store.buffer_pool_bytes)
        self.block_size = block_size
        self.read_ahead = read_ahead
        self.max_get_blocks = max(1, max_get_blocks)
        self._blocks: OrderedDict[tuple[str, int], _Extent] = OrderedDict()
        self._loading: dict[tuple[str, int], asyncio.Future[_Extent]] = {}
        self._last_block: dict[str, int] = {}  # key -> last block read, for spotting sequential readers
        # key -> (time of its last sequential read, whether that read reached the object's last block)
        self._streams: dict[str, tuple[float, bool]] = {}
        self._size = 0
        self._released: list[_Extent] = []  # evicted, buffer maybe still in use: see _recycle_released
        self._background: set[asyncio.Task[None]] = set()
        self.stats = {"hits": 0, "misses": 0, "gets": 0, "bytes_fetched": 0, "prefetched": 0, "recycled": 0}

    @property
    def size(self) -> int:
        return self._size

    def blocks_of(self, object_size: int) -> int:
        return (object_size + self.block_size - 1) // self.block_size

    def holds(self, key: str, start: int, end: int) -> bool:
        """Whether every block of [start, end) is cached or being fetched (a read of it needs no new GET)."""
        return all((key, n) in self._blocks or (key, n) in self._loading
                   for n in range(start // self.block_size, (end - 1) // self.block_size + 1))

    async def read(self, key: str, start: int, end: int, object_size: int, *,
                   sequential: bool = True) -> bytes | memoryview:
        """Bytes [start, end) of the object ``key`` of ``object_size`` bytes.  With ``sequential=False``
        the read is not taken as a step of a sequential reader (no read-ahead)."""
        end = min(end, object_size)
        if start >= end:
            return b""
        bs = self.block_size
        first, last = start // bs, (end - 1) // bs
        wanted = self._claim(key, first, last, object_size)  # the GETs this read needs go out first
        if sequential:
            self._maybe_read_ahead(key, first, last, object_size)
        extents = [w if isinstance(w, _Extent) else await asyncio.shield(w) for w in wanted]
        head = extents[0]
        if all(extent is head for extent in extents):  # one GET's buffer holds the whole range
            return head.view(start, end)
        return b"".join(extent.view(max(start, n * bs), min(end, (n + 1) * bs))
                        for n, extent in enumerate(extents, first))

    def _claim(self, key: str, first: int, last: int, object_size: int) -> list[asyncio.Future[_Extent] | _Extent]:
        """Blocks first..last: cached ones, or futures of GETs in flight (started here, one per run of
        missing blocks, when no other reader's GET is bringing them)."""
        waits: list[asyncio.Future[_Extent] | _Extent] = []
        run_start = -1
        for n in range(first, last + 2):
            cache_key = (key, n)
            missing = n <= last and cache_key not in self._blocks and cache_key not in self._loading
            if missing:
                if run_start < 0:
                    run_start = n
                continue
            if run_start >= 0:  # one GET for the run of missing blocks that ends here
                self.stats["misses"] += n - run_start
                self._start_load(key, run_start, n - 1, object_size)
                waits.extend(self._loading[(key, m)] for m in range(run_start, n))
                run_start = -1
            if n > last:
                break
            extent = self._blocks.get(cache_key)
            if extent is not None:
                self._blocks.move_to_end(cache_key)
                self.stats["hits"] += 1
                waits.append(extent)
            else:
                self.stats["hits"] += 1  # another reader's GET is bringing it
                waits.append(self._loading[cache_key])
        return waits

    def _start_load(self, key: str, first: int, last: int, object_size: int, prefetch: bool = False) -> None:
        """Starts one GET for blocks first..last (none cached or loading); each gets a future."""
        loop = asyncio.get_running_loop()
        futures = []
        for n in range(first, last + 1):
            future: asyncio.Future[_Extent] = loop.create_future()
            self._loading[(key, n)] = future
            futures.append(future)
        task = loop.create_task(self._load(key, first, futures, object_size, prefetch))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _load(self, key: str, first: int, futures: list[asyncio.Future[_Extent]], object_size: int,
                    prefetch: bool) -> None:
        bs = self.block_size
        start = first * bs
        self._recycle_released()
        try:
            data = await self.store.get(key, start, min(start + len(futures) * bs, object_size))
        except BaseException as exc:
            for n, future in enumerate(futures, first):
                self._loading.pop((key, n), None)
                if not future.done():
                    future.set_exception(exc)
                    future.exception()  # marked retrieved: a waiter, if any, re-raises it itself
            if isinstance(exc, asyncio.CancelledError):
                raise
            if prefetch:
                log.debug("read-ahead of %s failed: %s", key, exc)
            return
        self.stats["gets"] += 1
        self.stats["bytes_fetched"] += len(data)
        if prefetch:
            self.stats["prefetched"] += len(futures)
        extent = _Extent(key, data, start, first, first + len(futures) - 1)
        for n in range(first, first + len(futures)):
            self._loading.pop((key, n), None)
        self._insert(extent)
        for future in futures:
            if not future.done():
                future.set_result(extent)

    def offer(self, key: str, start: int, data: bytes, object_size: int) -> None:
        """Caches the whole blocks inside ``data`` (bytes [start, ...) of ``key``) that some other GET
        brought anyway."""
        bs = self.block_size
        first = (start + bs - 1) // bs
        last = first - 1
        for n in range(first, self.blocks_of(object_size)):
            if min((n + 1) * bs, object_size) - start > len(data):
                break
            if (key, n) in self._blocks or (key, n) in self._loading:
                break  # blocks of an extent are adjacent: stop at the first one held already
            last = n
        if last >= first:
            self._insert(_Extent(key, data, start, first, last))

    def _insert(self, extent: _Extent) -> None:
        if len(extent.data) > self.capacity:
            return
        for n in range(extent.first, extent.last + 1):
            old = self._blocks.pop((extent.key, n), None)
            if old is not None:
                self._unref(old)
            self._blocks[(extent.key, n)] = extent
        extent.live = extent.last - extent.first + 1
        self._size += len(extent.data)
        while self._size > self.capacity:
            self._drop(next(iter(self._blocks.values())))  # the least recently used block, with its extent

    def _unref(self, extent: _Extent) -> None:
        extent.live -= 1
        if extent.live == 0:
            self._size -= len(extent.data)
            self._released.append(extent)
            if len(self._released) > MAX_RELEASED:
                del self._released[0]

    def _recycle_released(self) -> None:
        """Hands the buffers of evicted extents back to the store (``ObjectStore.recycle``) once nothing
        refers to them: a fresh 8 MiB buffer costs 2,048 page faults as it is filled, a third of the
        broker's CPU in a cold catch-up (docs/performance.md).  A Fetch answer still being written
        holds a view of the buffer, and a reader that took the extent before it was evicted holds the
        extent; CPython's reference counts show both, so a buffer is handed back only when the extent
        is referred to by this list alone and the buffer by the extent alone."""
        kept = []
        for extent in self._released:
            # References: the list, ``extent`` and getrefcount's argument; the attribute and the argument.
            if sys.getrefcount(extent) == 3 and sys.getrefcount(extent.data) == 2:
                self.store.recycle(extent.data)
                self.stats["recycled"] += 1
            else:
                kept.append(extent)
        self._released = kept

    def _drop(self, extent: _Extent) -> None:
        """Evicts every block still cached from ``extent``: they share its buffer, so only all together
        free it."""
        for n in range(extent.first, extent.last + 1):
            if self._blocks.get((extent.key, n)) is extent:
                del self._blocks[(extent.key, n)]
                self._unref(extent)

    # Read-ahead -------------------------------------------------------------------

    def window(self) -> int:
        """Blocks each sequential reader may have read ahead: ``read_ahead``, shrunk so that the
        windows of all readers streaming now fit in half of the cache."""
        if not self.read_ahead:
            return 0
        now = time.monotonic()
        if len(self._streams) > 64:
            for key in [k for k, (t, _done) in self._streams.items() if now - t > STREAM_IDLE_SECONDS]:
                del self._streams[key]
        # A reader that finished an object has moved on (to the next segment): it counts there.
        active = max(1, sum(1 for t, done in self._streams.values() if not done and now - t <= STREAM_IDLE_SECONDS))
        return max(1, min(self.read_ahead, self.capacity // (2 * self.block_size * active)))

    def is_sequential(self, key: str, start: int, end: int) -> bool:
        """Whether a read of [start, end) would continue a sequential reader of ``key``."""
        previous = self._last_block.get(key)
        first, last = start // self.block_size, max(start, end - 1) // self.block_size
        return previous is not None and first <= previous + 1 and last >= previous

    def begin_stream(self, key: str) -> None:
        """Announces a sequential reader about to read ``key`` from its start (e.g. the next segment):
        its first read then continues the read-ahead at once."""
        self._last_block.setdefault(key, -1)
        self._track(self._last_block)

    def _track(self, table: dict[str, int] | dict[str, tuple[float, bool]]) -> None:
        if len(table) > MAX_TRACKED_KEYS:
            table.pop(next(iter(table)))

    def _maybe_read_ahead(self, key: str, first: int, last: int, object_size: int) -> None:
        previous = self._last_block.get(key)
        self._last_block[key] = last
        self._track(self._last_block)
        # Sequential: the read moves on from where the last one ended (a fetch starts at an index entry, so
        # it may begin a little before the end of the previous read).
        if previous is None or not first <= previous + 1 or last < previous or not self.read_ahead:
            return
        count = self.blocks_of(object_size)
        self._streams[key] = (time.monotonic(), last >= count - 1)
        self._track(self._streams)
        window = self.window()
        end = min(last + 1 + window, count)
        if count - end < window // 2:
            end = count  # rather than a small GET for the last few blocks later
        missing = [n for n in range(last + 1, end) if (key, n) not in self._blocks and (key, n) not in self._loading]
        # Not one block at a time: wait until half the window is missing, unless the reader would stall
        # (the very next block is missing) or the window already reaches the end of the object.
        if missing and (missing[0] == last + 1 or len(missing) >= max(1, window // 2) or end == count):
            self._fetch_ahead(key, missing, object_size)

    def prefetch(self, key: str, first: int, count: int, object_size: int, min_missing: int = 1) -> int:
        """Starts fetching the blocks of [first, first + count) of ``key`` that are neither cached nor
        loading, if there are at least ``min_missing`` of them or they reach the end of the object;
        returns how many it fetches."""
        end = min(first + count, self.blocks_of(object_size))
        missing = [n for n in range(first, end) if (key, n) not in self._blocks and (key, n) not in self._loading]
        if not missing or (len(missing) < min_missing and end < self.blocks_of(object_size)):
            return 0
        self._fetch_ahead(key, missing, object_size)
        return len(missing)

    def _fetch_ahead(self, key: str, missing: list[int], object_size: int) -> None:
        """Background GETs for the blocks ``missing`` (ascending): each run of adjacent blocks in
        GETs of up to ``max_get_blocks``, of about equal size."""
        i = 0
        while i < len(missing):
            j = i + 1
            while j < len(missing) and missing[j] == missing[j - 1] + 1:
                j += 1
            run, gets = j - i, -(-(j - i) // self.max_get_blocks)
            for g in range(gets):  # GETs of equal size, rather than full ones and a small last one
                a, b = i + run * g // gets, i + run * (g + 1) // gets
                self._start_load(key, missing[a], missing[b - 1], object_size, prefetch=True)
            i = j

    def forget(self, key: str) -> None:
        for extent in {id(e): e for k, e in self._blocks.items() if k[0] == key}.values():
            self._drop(extent)
        self._last_block.pop(key, None)
        self._streams.pop(key, None)
