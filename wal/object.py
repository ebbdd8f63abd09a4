"""Object-storage write-ahead log: no local state at all.

Appends from all partitions are grouped into objects, each written with ONE
create-only PUT; they are acknowledged only after that PUT succeeded.  The
grouping adapts to load, like Nagle's algorithm: an append that finds no PUT
in flight is written at once (at low load an ack costs one PUT; appends made
in the same event-loop pass share it).  While appends arrive further apart
than half a PUT's duration, one that finds fewer than ``eager_puts`` PUTs in
flight is written at once too: there waiting for the PUT in flight would cost
almost a whole PUT and save almost nothing.  Other appends wait in a buffer,
written as soon as a PUT completes, after ``linger_ms`` at the latest, or
once ``max_bytes`` are waiting: objects grow with the load, at about one PUT
per PUT latency.

Objects are named by the position of their first entry
(``<prefix>/00000000000000000042.wal``) and hold entries in the same framing
as the file WAL, so the same scanner reads both.

Up to ``max_in_flight`` PUTs may be in flight (32 by default: against a store
that answers in 20-25 ms, a linger of 5 ms needs five, and the four that were
once allowed queued appends behind each other), but appends are acknowledged
strictly in position order: an entry is durable-and-acknowledged only when every earlier
entry is too.  A failed PUT is retried (with backoff) until it succeeds, so the
sequence of objects has no holes while the process lives; after a crash,
recovery stops at the first missing position and removes any later objects
(nothing in them was ever acknowledged).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Sequence

from objectstore.base import ObjectStore, ObjectStoreError, PreconditionFailed, TransientError
from wal.base import Buffer, WalEntry, WalError, WriteAheadLog
from wal.framing import encode_entry, scan_entries

log = logging.getLogger(__name__)
SUFFIX = ".wal"
MAX_BACKOFF_SECONDS = 5.0
MAX_GAP_SECONDS = 0.1  # a longer pause between appends says no more about how sparse they are


class ObjectWriteAheadLog(WriteAheadLog):
    def __init__(self, store: ObjectStore, prefix: str, *, linger_ms: float = 5.0,
                 max_bytes: int = 4 * 1024 * 1024, max_in_flight: int = 32, eager_puts: int = 2) -> None:
        if max_in_flight < 1:
            raise ValueError("the object WAL needs at least one PUT in flight")
        self.store = store
        self.prefix = prefix.strip("/")
        self.linger = linger_ms / 1000
        self.max_bytes = max_bytes
        self._slots = asyncio.Semaphore(max_in_flight)
        self.eager_puts = eager_puts
        self._in_flight = 0  # writes started and not finished (holding or awaiting a slot)
        # Moving averages (weight 1/8 for each new sample) of how long a PUT takes and of the time between
        # appends (those of one event-loop pass count as one): they tell sparse appends from dense ones.
        self._put_seconds = 0.0  # set by the first PUT
        self._gap_seconds = MAX_GAP_SECONDS  # sparse, until appends show otherwise
        self._last_arrival = 0.0
        self._joining_pass = False  # a flush at the end of this loop pass is scheduled
        self._next_position = 0
        self._buffer: list[tuple[int, tuple[Buffer, ...], asyncio.Future[int]]] = []
        self._buffer_bytes = 0
        self._timer: asyncio.Handle | None = None
        self._objects: deque[tuple[int, int, str]] = deque()  # (first position, next position, key)
        self._unacked: deque[tuple[int, asyncio.Future[int]]] = deque()
        self._durable_upto = 0  # every position below this is durable
        self._written: set[int] = set()  # first positions of objects written but not yet acknowledged
        self._ranges: dict[int, int] = {}  # first position -> next position, for written objects
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self.stats = {"appends": 0, "commits": 0, "bytes_written": 0, "put_retries": 0}

    def _key(self, first_position: int) -> str:
        return f"{self.prefix}/{first_position:020d}{SUFFIX}"

    @property
    def next_position(self) -> int:
        return self._next_position

    async def open(self) -> list[WalEntry]:
        infos = [info for info in await self.store.list(self.prefix + "/") if info.key.endswith(SUFFIX)]
        entries: list[WalEntry] = []
        expected: int | None = None
        broken = False
        stale: list[str] = []
        for info in sorted(infos, key=lambda i: i.key):
            first = int(info.key.rsplit("/", 1)[1][: -len(SUFFIX)])
            if broken or (expected is not None and first != expected):
                stale.append(info.key)  # after a hole or damage: never acknowledged
                broken = True
                continue
            try:
                data = await self.store.get(info.key)
            except TransientError:
                raise
            except ObjectStoreError as exc:  # a PUT that never completed: nothing from here was acknowledged
                log.error("WAL object %s is unreadable (%s); it and later objects are not replayed", info.key, exc)
                stale.append(info.key)
                broken = True
                continue
            found: list[WalEntry] = []
            _end, next_position, problem = scan_entries(data, first, found)
            if problem is not None:
                log.error("WAL object %s is damaged (%s); it and later objects are not replayed", info.key, problem)
                stale.append(info.key)
                broken = True
                continue
            entries.extend(found)
            self._objects.append((first, next_position, info.key))
            expected = next_position
        if stale:
            log.warning("removing %d WAL objects written after a gap (never acknowledged)", len(stale))
            await self.store.delete_many(stale)
        self._next_position = self._durable_upto = expected or 0
        return entries

    def submit(self, parts: Sequence[Buffer]) -> asyncio.Future[int]:
        if self._closed:
            raise WalError("object WAL is closed")
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        position = self._next_position
        self._next_position += 1
        parts = tuple(parts)
        self._buffer.append((position, parts, future))
        self._buffer_bytes += sum(len(p) for p in parts)
        self._unacked.append((position, future))
        self.stats["appends"] += 1
        loop = asyncio.get_running_loop()
        if not self._joining_pass:
            now = loop.time()
            gap = min(now - self._last_arrival, MAX_GAP_SECONDS)
            self._gap_seconds += (gap - self._gap_seconds) / 8
            self._last_arrival = now
        if self._buffer_bytes >= self.max_bytes:
            self._flush_buffer()
        elif self._timer is None:
            if self._may_write_at_once():  # at the end of this loop pass, with whatever joins it
                self._timer = loop.call_soon(self._flush_buffer)
                self._joining_pass = True
            else:
                self._timer = loop.call_later(self.linger, self._flush_buffer)
        return future

    def _may_write_at_once(self) -> bool:
        if self._in_flight == 0:
            return self.eager_puts > 0
        return self._in_flight < self.eager_puts and 2 * self._gap_seconds >= self._put_seconds

    async def append(self, parts: Sequence[Buffer]) -> int:
        return await self.submit(parts)

    def _flush_buffer(self) -> None:
        self._joining_pass = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._buffer:
            return
        batch, self._buffer, self._buffer_bytes = self._buffer, [], 0
        self._in_flight += 1
        task = asyncio.get_running_loop().create_task(self._write(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write(self, batch: list[tuple[int, tuple[Buffer, ...], asyncio.Future[int]]]) -> None:
        try:
            await self._put(batch)
        finally:
            self._in_flight -= 1
            if self._buffer and self._may_write_at_once():
                self._flush_buffer()  # what gathered while the PUT ran: the next group commit

    async def _put(self, batch: list[tuple[int, tuple[Buffer, ...], asyncio.Future[int]]]) -> None:
        first = batch[0][0]
        body = b"".join(encode_entry(position, parts) for position, parts, _ in batch)
        key = self._key(first)
        attempt = 0
        overwrite = False
        async with self._slots:
            while True:
                started = asyncio.get_running_loop().time()
                try:
                    if overwrite:
                        await self.store.put(key, body)
                    else:
                        await self.store.put_if_absent(key, body)
                    took = asyncio.get_running_loop().time() - started
                    self._put_seconds += (took - self._put_seconds) / 8 if self._put_seconds else took
                    break
                except PreconditionFailed:
                    # The key lies in this incarnation's own prefix, so what is there can only be an earlier
                    # attempt of this very write (whole, or cut short and left empty by the store).
                    # Nothing in it was acknowledged yet: write it whole.
                    overwrite = True
                except ObjectStoreError as exc:
                    attempt += 1
                    self.stats["put_retries"] += 1
                    delay = min(MAX_BACKOFF_SECONDS, 0.05 * 2 ** min(attempt, 10)) * (0.5 + random.random())
                    log.warning("WAL PUT %s failed (%s); retrying in %.2f s", key, exc, delay)
                    await asyncio.sleep(delay)
        self.stats["commits"] += 1
        self.stats["bytes_written"] += len(body)
        next_position = batch[-1][0] + 1
        self._ranges[first] = next_position
        self._objects.append((first, next_position, key))
        self._acknowledge()

    def _acknowledge(self) -> None:
        """Resolve appends in position order up to the first object not yet written."""
        while self._durable_upto in self._ranges:
            end = self._ranges.pop(self._durable_upto)
            while self._unacked and self._unacked[0][0] < end:
                position, future = self._unacked.popleft()
                if not future.done():
                    future.set_result(position)
            self._durable_upto = end

    async def trim(self, before_position: int) -> None:
        doomed = [key for _first, end, key in self._objects
                  if end <= before_position and end <= self._durable_upto]
        if doomed:
            await self.store.delete_many(doomed)
            gone = set(doomed)  # objects written while the delete ran must stay known
            self._objects = deque(o for o in self._objects if o[2] not in gone)

    async def close(self) -> None:
        self._closed = True
        self._flush_buffer()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
