"""File-backed write-ahead log: one log for all partitions, fsync group commit.

A produce is acknowledged only once its entry is on disk, and an fsync costs
milliseconds, so appends are group-committed: every append that arrives while a
write+fsync is in flight rides on the next one.  Each append therefore waits
about one fsync, however many run concurrently.

On disk the log is a directory of segment files named after the position of
their first entry (``00000000000000000042.wal``), holding entries framed as
:mod:`wal.framing` defines (a fixed header with a CRC-32C, then the payload).  A new file
is started once the active one holds ``segment_bytes`` or more; the previous
file is fsynced before the new one is created, and the directory is fsynced
after, so only the last file can have a torn tail after a crash.

The active file is grown ahead of the writes, ``PREALLOCATE_BYTES`` at a time
(``posix_fallocate``), and entries are written into that space at their offset.
Most fdatasyncs then change no file size, so they need no filesystem journal
commit and take less time and CPU (measured in docs/performance.md).  The
unused space reads as zeros; a file is cut to its last entry when the log
rolls to the next file and when it is closed, so only the active file has such
a tail.

Recovery (``open``) validates every entry.  The first bad or truncated entry
ends the log: its file is truncated there (with a warning, unless all that
follows is zeros: preallocated space) and appends continue from that point.
Files after that point cannot result from a crash; they mean
real corruption, so they are logged as errors and renamed to
``<name>.wal.corrupt`` (kept for inspection, never replayed again) rather than
deleted.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from wal.base import Buffer, WalEntry, WalError, WriteAheadLog
from wal.framing import HEADER_SIZE, MAX_PAYLOAD, entry_header, nbytes, scan_entries

__all__ = ["HEADER_SIZE", "FileWriteAheadLog", "segment_name"]

log = logging.getLogger(__name__)

SUFFIX = ".wal"
_NAME_DIGITS = 20


def _iov_max() -> int:
    try:
        value = os.sysconf("SC_IOV_MAX")
    except (AttributeError, ValueError, OSError):
        return 1024
    return value if value > 0 else 1024


IOV_MAX = _iov_max()
PREALLOCATE_BYTES = 1 << 20  # the active file grows this much at a time, ahead of the writes

# (position, payload parts, payload length, future resolved with the position)
_Pending = tuple[int, tuple[Buffer, ...], int, "asyncio.Future[int]"]


def segment_name(position: int) -> str:
    """File name of the segment whose first entry has ``position``."""
    return f"{position:0{_NAME_DIGITS}d}{SUFFIX}"


def _parse_segment_name(name: str) -> int | None:
    stem = name[: -len(SUFFIX)]
    if not name.endswith(SUFFIX) or len(stem) != _NAME_DIGITS or not (stem.isascii() and stem.isdigit()):
        return None
    return int(stem)


def _pwritev_all(fd: int, bufs: list[Buffer], lens: list[int], offset: int) -> int:
    """Write all of ``bufs`` at ``offset`` with as few pwritev calls as possible; return the byte count."""
    total = 0
    index = 0
    count = len(bufs)
    while index < count:
        written = os.pwritev(fd, bufs[index : index + IOV_MAX], offset + total)
        if written <= 0:
            raise OSError(f"pwritev wrote {written} bytes")
        total += written
        while index < count and written >= lens[index]:
            written -= lens[index]
            index += 1
        if written:  # partial write inside bufs[index]: resume after what went out
            bufs[index] = memoryview(bufs[index]).cast("B")[written:]
            lens[index] -= written
    return total


def _is_zeros(data: bytes, start: int) -> bool:
    return data.count(0, start) == len(data) - start


class FileWriteAheadLog(WriteAheadLog):
    """Write-ahead log in rolling files under ``directory`` with fsync group commit.

    ``sync=False`` skips every fsync: for benchmarks only, it acknowledges
    writes that a power cut would lose.
    """

    def __init__(self, directory: str | Path, *, segment_bytes: int = 64 * 1024 * 1024, sync: bool = True,
                 inline_bytes: int = 0):
        if segment_bytes <= 0:
            raise ValueError("segment_bytes must be positive")
        self._dir = Path(directory)
        self._segment_bytes = segment_bytes
        self._sync = sync
        self.stats = dict.fromkeys(
            (
                "appends",
                "commits",
                "fsyncs",
                "entries_written",
                "bytes_written",
                "max_batch",
                "files_created",
                "files_deleted",
            ),
            0,
        )
        self.inline_bytes = inline_bytes  # groups up to this size are written on the event loop's thread
        self._state = "new"  # new -> open -> closing -> closed
        self._next_position = 0
        self._pending: list[_Pending] = []
        self._wakeup: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._error: WalError | None = None
        # Used only by one commit at a time (the writer thread, or the loop for small groups).
        self._fd = -1
        self._active_size = 0  # bytes of entries in the active file: the next write goes here
        self._allocated = 0  # size of the active file, preallocated space included
        self._preallocate = True  # off once the filesystem refuses fallocate
        # First positions of the files on disk, oldest first; the last is the active file.
        self._segments: list[int] = []
        self._segments_lock = threading.Lock()

    @property
    def next_position(self) -> int:
        return self._next_position

    # -- opening and recovery -------------------------------------------------

    async def open(self) -> list[WalEntry]:
        if self._state != "new":
            raise RuntimeError("open() may be called only once")
        self._state = "opening"
        loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="keel-wal")
        try:
            entries = await loop.run_in_executor(self._executor, self._recover)
        except OSError as exc:
            self._executor.shutdown(wait=False)
            self._state = "closed"
            raise WalError(f"cannot open write-ahead log in {self._dir}: {exc}") from exc
        self._wakeup = asyncio.Event()
        self._writer = loop.create_task(self._write_loop(), name=f"wal-writer:{self._dir}")
        self._state = "open"
        return entries

    def _recover(self) -> list[WalEntry]:
        self._dir.mkdir(parents=True, exist_ok=True)
        files = self._list_files()
        entries: list[WalEntry] = []
        kept: list[int] = []
        next_position = files[0][0] if files else 0
        cut: int | None = None  # byte offset at which the last kept file must be truncated
        for index, (start, path) in enumerate(files):
            if index and start != next_position:
                log.error(
                    "WAL %s: file %s should start at position %d; the log ends there",
                    self._dir,
                    path.name,
                    next_position,
                )
                self._quarantine(files[index:])
                break
            data = path.read_bytes()
            valid_end, next_position, problem = scan_entries(data, start, entries)
            kept.append(start)
            self._active_size = valid_end
            if problem is not None:
                cut = valid_end
                last = index + 1 == len(files)
                if last and _is_zeros(data, valid_end):
                    break  # the unused preallocated space after the last entry: a clean end
                log.warning(
                    "WAL %s: %s at byte %d of %s; dropping %d trailing bytes, log ends at position %d",
                    self._dir,
                    problem,
                    valid_end,
                    path.name,
                    len(data) - valid_end,
                    next_position,
                )
                if not last:
                    log.error(
                        "WAL %s: %d file(s) follow the corrupt entry in %s; a crash cannot cause this",
                        self._dir,
                        len(files) - index - 1,
                        path.name,
                    )
                    self._quarantine(files[index + 1 :])
                break

        flags = os.O_WRONLY | getattr(os, "O_CLOEXEC", 0)
        if kept:
            self._fd = os.open(self._dir / segment_name(kept[-1]), flags)
            if cut is not None:
                os.ftruncate(self._fd, cut)
                self._datasync(self._fd)
            self._allocated = self._active_size
        else:
            self._fd = os.open(self._dir / segment_name(next_position), flags | os.O_CREAT | os.O_EXCL, 0o644)
            self._sync_dir()
            self._active_size = self._allocated = 0
            kept.append(next_position)
        with self._segments_lock:
            self._segments = kept
        self._next_position = next_position
        return entries

    def _list_files(self) -> list[tuple[int, Path]]:
        files = []
        for path in self._dir.iterdir():
            start = _parse_segment_name(path.name)
            if start is not None:
                files.append((start, path))
            elif path.name.endswith(SUFFIX):
                log.warning("WAL %s: ignoring %s (not a segment name)", self._dir, path.name)
        files.sort()
        return files

    def _quarantine(self, files: list[tuple[int, Path]]) -> None:
        for _start, path in files:
            target = path.with_name(path.name + ".corrupt")
            attempt = 1
            while target.exists():
                target = path.with_name(f"{path.name}.corrupt.{attempt}")
                attempt += 1
            log.error("WAL %s: moving %s aside to %s; it is not replayed", self._dir, path.name, target.name)
            os.rename(path, target)
        self._sync_dir()

    # -- appending --------------------------------------------------------------

    async def append(self, parts: Sequence[Buffer]) -> int:
        return await self.submit(parts)

    def submit(self, parts: Sequence[Buffer]) -> asyncio.Future[int]:
        # Runs synchronously: positions follow call order.
        if self._error is not None:
            raise WalError(str(self._error)) from self._error.__cause__
        if self._state != "open":
            if self._state in ("new", "opening"):
                raise RuntimeError("append() before open()")
            raise WalError(f"write-ahead log in {self._dir} is closed")
        if isinstance(parts, bytes | bytearray | memoryview):
            raise TypeError("parts must be a sequence of buffers, not a single buffer")
        parts = tuple(parts)
        length = 0
        for part in parts:
            length += nbytes(part)
        if length > MAX_PAYLOAD:
            raise ValueError(f"WAL payload of {length} bytes exceeds {MAX_PAYLOAD}")
        position = self._next_position
        self._next_position = position + 1
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append((position, parts, length, future))
        self.stats["appends"] += 1
        assert self._wakeup is not None
        self._wakeup.set()
        return future

    async def _write_loop(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending and self._error is None:
                batch, self._pending = self._pending, []
                await self._commit(loop, batch)
            if self._state == "closing":
                return

    async def _commit(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending]) -> None:
        try:
            if sum(length for _position, _parts, length, _future in batch) <= self.inline_bytes:
                # A small group is written and synced right here: handing it to the writer thread and
                # back costs more than the write itself, and the thread then competes for the GIL with
                # the event loop (measured in docs/performance.md).
                written, fsyncs, created = self._write_batch(batch)
            else:
                written, fsyncs, created = await loop.run_in_executor(self._executor, self._write_batch, batch)
        except asyncio.CancelledError:
            self._fail(batch, RuntimeError("WAL writer task cancelled"))
            raise
        except Exception as exc:
            self._fail(batch, exc)
            return
        stats = self.stats
        stats["commits"] += 1
        stats["fsyncs"] += fsyncs
        stats["entries_written"] += len(batch)
        stats["bytes_written"] += written
        stats["files_created"] += created
        stats["max_batch"] = max(stats["max_batch"], len(batch))
        for position, _parts, _length, future in batch:
            if not future.done():  # a cancelled caller's entry is still written
                future.set_result(position)
        batch.clear()  # drop the payload references now

    def _fail(self, batch: list[_Pending], exc: BaseException) -> None:
        cause = exc.with_traceback(None)  # the traceback would pin the failed batch's payloads
        message = f"write-ahead log in {self._dir} can no longer make writes durable: {exc!r}"
        log.critical(message)
        self._error = WalError(message)
        self._error.__cause__ = cause
        for _position, _parts, _length, future in (*batch, *self._pending):
            if not future.done():
                error = WalError(message)
                error.__cause__ = cause
                future.set_exception(error)
        batch.clear()
        self._pending.clear()

    def _write_batch(self, batch: list[_Pending]) -> tuple[int, int, int]:
        """Writer thread: write and sync one group.  Returns (bytes, fsyncs, files created)."""
        bufs: list[Buffer] = []
        lens: list[int] = []
        written = fsyncs = created = 0
        start = self._active_size  # where this file's part of the group goes
        for position, parts, length, _future in batch:
            if self._active_size >= self._segment_bytes:
                written += self._write_at(bufs, lens, start)
                bufs, lens = [], []
                self._cut_to_entries()
                fsyncs += self._datasync(self._fd)
                self._roll(position)
                created += 1
                start = 0
            bufs.append(entry_header(position, parts, length))
            lens.append(HEADER_SIZE)
            for part in parts:
                size = nbytes(part)
                if size:
                    bufs.append(part)
                    lens.append(size)
            self._active_size += HEADER_SIZE + length
        written += self._write_at(bufs, lens, start)
        fsyncs += self._datasync(self._fd)
        return written, fsyncs, created

    def _write_at(self, bufs: list[Buffer], lens: list[int], offset: int) -> int:
        end = offset + sum(lens)
        if self._preallocate and end > self._allocated:
            size = -(-end // PREALLOCATE_BYTES) * PREALLOCATE_BYTES
            try:
                os.posix_fallocate(self._fd, self._allocated, size - self._allocated)
            except OSError as exc:
                # A failed call may still have grown the file (zeros after the entries): cut on roll and close.
                log.warning("WAL %s: no preallocation (%s); the files grow with each write", self._dir, exc)
                self._preallocate = False
            else:
                self._allocated = size
        return _pwritev_all(self._fd, bufs, lens, offset) if bufs else 0

    def _cut_to_entries(self) -> None:
        """Drop the active file's preallocated space after its last entry.  The file's own size decides,
        not ``_allocated``: a preallocation that failed half-way may have grown it all the same."""
        if os.fstat(self._fd).st_size > self._active_size:
            os.ftruncate(self._fd, self._active_size)
        self._allocated = self._active_size

    def _roll(self, position: int) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(self._dir / segment_name(position), flags, 0o644)
        os.close(self._fd)
        self._fd = fd
        self._active_size = self._allocated = 0
        self._sync_dir()
        with self._segments_lock:
            self._segments.append(position)

    def _datasync(self, fd: int) -> int:
        if not self._sync:
            return 0
        if hasattr(os, "fdatasync"):
            os.fdatasync(fd)
        else:
            os.fsync(fd)
        return 1

    def _sync_dir(self) -> None:
        if not self._sync:
            return
        fd = os.open(self._dir, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- trimming and closing ---------------------------------------------------

    async def trim(self, before_position: int) -> None:
        doomed: list[int] = []
        with self._segments_lock:
            # A file holds [its start, the next file's start); the active (last) file is never removed.
            while len(self._segments) > 1 and self._segments[1] <= before_position:
                doomed.append(self._segments.pop(0))
        if doomed:
            self.stats["files_deleted"] += await asyncio.to_thread(self._delete, doomed)

    def _delete(self, starts: list[int]) -> int:
        deleted = 0
        for start in starts:
            try:
                os.unlink(self._dir / segment_name(start))
            except FileNotFoundError:
                deleted += 1
            except OSError as exc:
                log.warning("WAL %s: cannot delete %s (will retry): %s", self._dir, segment_name(start), exc)
                with self._segments_lock:
                    bisect.insort(self._segments, start)
            else:
                deleted += 1
        if deleted:
            try:
                self._sync_dir()
            except OSError as exc:
                log.warning("WAL %s: directory fsync after trim failed: %s", self._dir, exc)
        return deleted

    async def close(self) -> None:
        if self._state != "open":
            self._state = "closed" if self._state == "new" else self._state
            return
        self._state = "closing"
        assert self._wakeup is not None and self._writer is not None and self._executor is not None
        self._wakeup.set()
        try:
            await self._writer
        finally:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._close_file)
            self._executor.shutdown(wait=False)
            self._state = "closed"

    def _close_file(self) -> None:
        if self._fd >= 0:
            if self._error is None:
                with contextlib.suppress(OSError):  # a zero tail left behind is read as the clean end
                    self._cut_to_entries()
                    self._datasync(self._fd)
            os.close(self._fd)
            self._fd = -1
