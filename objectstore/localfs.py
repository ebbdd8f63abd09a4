"""Local-filesystem object store: Keel's embedded default, and shareable by several brokers.

Layout. Key ``a/b/c.json`` is the file ``<root>/a/b/c.json``. A key segment
that starts with '.' is stored with that dot written as ``%2E`` (and a literal
``%`` as ``%25``), so every name beginning with '.' belongs to the store
itself: temp files ``.tmp.<random>`` next to their target and the lock
directory ``<root>/.keel-locks/``. ``list`` skips all of them. Because keys
are real paths, one key cannot also be the directory of another (``a/b`` and
``a/b/c``); such a write raises ObjectStoreError rather than corrupting
anything. Keel's object layout never does this.

Durability and atomicity. A write goes to a temp file in the target's
directory, is fsynced, renamed over the target, and the directory is fsynced,
so a reader sees the old or the new object whole, and a returned ETag
survives a crash. New directories are fsynced into their parents.

ETag. ``"<mtime_ns>-<inode>-<size>"`` (hex), read from the file itself, so
nothing is stored beside the object and ``head``/``list`` need no read. It
changes on every write, even of identical bytes: under the key's lock the
writer sets the new file's mtime to ``max(now, previous mtime + 1 ns)``, so
mtimes of one key strictly increase, and the inode differs from the replaced
file's. (Content hashes would repeat on identical bytes and cost a full read
on every head/list.) The filesystem must keep nanosecond mtimes; ext4, XFS,
btrfs and tmpfs do, and the constructor refuses a filesystem that does not.

Cross-process safety. Every write and delete of a key holds an exclusive
``fcntl.flock`` on one of ``_LOCK_STRIPES`` lock files chosen by a stable hash
of the key, so conditional puts are atomic across processes sharing the
directory, and mtimes stay monotonic. The lock covers only the check, the
mtime and the rename (microseconds, no syncs): a process stopped while it
holds the lock blocks every writer of that stripe until it runs again. All
processes must use the same stripe count (a constant here). Reads take no lock. Inside one process an asyncio
lock per stripe keeps waiters from piling up in the thread pool.

Blocking calls run in ``asyncio.to_thread``. ``delete`` removes directories
that became empty; a writer that loses such a race recreates the directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import os
import secrets
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from objectstore.base import (
    Data,
    NotFound,
    ObjectInfo,
    ObjectStore,
    ObjectStoreError,
    PreconditionFailed,
    check_key,
    check_range,
)

_LOCK_DIR = ".keel-locks"
_LOCK_STRIPES = 1024  # part of the on-disk protocol: every process sharing a root must agree
_TMP_PREFIX = ".tmp."
_MKDIR_ATTEMPTS = 8

_T = TypeVar("_T")


def _encode_segment(segment: str) -> str:
    segment = segment.replace("%", "%25")
    return "%2E" + segment[1:] if segment.startswith(".") else segment


def _decode_name(name: str) -> str:
    if name.startswith("%2E"):
        return "." + name[3:].replace("%25", "%")
    return name.replace("%25", "%")


def _etag(st: os.stat_result) -> str:
    return f"{st.st_mtime_ns:x}-{st.st_ino:x}-{st.st_size:x}"


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_exact(fd: int, size: int, offset: int) -> bytes:
    chunks = []
    while size > 0:
        chunk = os.pread(fd, size, offset)
        if not chunk:  # the file cannot shrink under us (writers replace it), but be safe
            break
        chunks.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return b"".join(chunks)


class LocalFSObjectStore(ObjectStore):
    def __init__(self, root: str | Path) -> None:
        self._root = os.path.abspath(os.fspath(root))
        self._lock_dir = os.path.join(self._root, _LOCK_DIR)
        os.makedirs(self._lock_dir, exist_ok=True)
        self._check_nanosecond_mtime()
        self._stripe_locks: dict[int, asyncio.Lock] = {}

    @property
    def root(self) -> str:
        return self._root

    # ---- async API -------------------------------------------------------

    async def put(self, key: str, data: Data) -> str:
        check_key(key)
        return await self._locked(key, self._write, key, data, None, None)

    async def put_if_absent(self, key: str, data: Data) -> str:
        check_key(key)
        return await self._locked(key, self._write, key, data, "absent", None)

    async def put_if_match(self, key: str, data: Data, etag: str) -> str:
        check_key(key)
        return await self._locked(key, self._write, key, data, "match", etag)

    async def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        check_key(key)
        check_range(start, end)
        body, _ = await self._thread(self._read, key, start, end)
        return body

    async def get_with_etag(self, key: str) -> tuple[bytes, str]:
        check_key(key)
        return await self._thread(self._read, key, 0, None)

    async def head(self, key: str) -> ObjectInfo:
        check_key(key)
        return await self._thread(self._head, key)

    async def list(self, prefix: str) -> list[ObjectInfo]:
        return await self._thread(self._list, prefix)

    async def delete(self, key: str) -> None:
        check_key(key)
        await self._locked(key, self._delete_keys, [key])

    async def delete_many(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        for key in keys:
            check_key(key)
        if keys:
            await self._thread(self._delete_keys, keys)

    # ---- plumbing --------------------------------------------------------

    async def _thread(self, fn: Callable[..., _T], *args: object) -> _T:
        try:
            return await asyncio.to_thread(fn, *args)
        except OSError as exc:
            raise ObjectStoreError(f"local object store {fn.__name__} failed: {exc}") from exc

    async def _locked(self, key: str, fn: Callable[..., _T], *args: object) -> _T:
        lock = self._stripe_locks.setdefault(self._stripe(key), asyncio.Lock())
        async with lock:
            return await self._thread(fn, *args)

    @staticmethod
    def _stripe(key: str) -> int:
        digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=4).digest()
        return int.from_bytes(digest, "big") % _LOCK_STRIPES

    @contextlib.contextmanager
    def _key_lock(self, key: str) -> Iterator[None]:
        path = os.path.join(self._lock_dir, f"{self._stripe(key):04d}.lock")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # someone removed the lock directory
            os.makedirs(self._lock_dir, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock

    def _segments(self, key: str) -> list[str]:
        return [_encode_segment(s) for s in key.split("/")]

    def _path(self, key: str) -> str:
        return os.path.join(self._root, *self._segments(key))

    def _check_nanosecond_mtime(self) -> None:
        probe = os.path.join(self._lock_dir, f"{_TMP_PREFIX}probe.{secrets.token_hex(8)}")
        wanted = time.time_ns() // 1000 * 1000 + 123
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.utime(fd, ns=(wanted, wanted))
            got = os.fstat(fd).st_mtime_ns
        finally:
            os.close(fd)
            os.unlink(probe)
        if got != wanted:
            raise ObjectStoreError(
                f"filesystem under {self._root} does not keep nanosecond mtimes, which ETags rely on"
            )

    # ---- blocking work (runs in a thread) ---------------------------------

    def _ensure_dir(self, segments: list[str]) -> str:
        """Create the directories for ``segments`` (which exclude the file name); return the leaf."""
        path = os.path.join(self._root, *segments)
        if os.path.isdir(path):
            return path
        current = self._root
        for segment in segments:
            parent, current = current, os.path.join(current, segment)
            try:
                os.mkdir(current)
            except FileExistsError:
                if not os.path.isdir(current):
                    raise ObjectStoreError(
                        f"{current} is an object, so it cannot also be a key's directory"
                    ) from None
                continue
            _fsync_dir(parent)
        return path

    def _open_temp(self, segments: list[str]) -> tuple[str, str, int]:
        for _ in range(_MKDIR_ATTEMPTS):
            directory = self._ensure_dir(segments[:-1])
            tmp = os.path.join(directory, _TMP_PREFIX + secrets.token_hex(8))
            try:
                return directory, tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileNotFoundError:
                continue  # a concurrent delete pruned the directory we just made
        raise ObjectStoreError(f"could not create a directory for {'/'.join(segments)}")

    def _write(self, key: str, data: Data, condition: str | None, expected: str | None) -> str:
        segments = self._segments(key)
        path = os.path.join(self._root, *segments)
        if condition is not None:
            self._check_condition(key, path, condition, expected)  # cheap early answer for losers
        directory, tmp, fd = self._open_temp(segments)
        renamed = False
        try:
            view = memoryview(data).cast("B")
            while view:
                view = view[os.write(fd, view) :]
            # The syncs stay outside the key's lock, which is held only for the check, the mtime and the
            # rename: a process stopped while holding it (SIGSTOP, a paused VM) stops every other process
            # writing a key of that stripe, and one that stopped during a sync there kept a frozen
            # controller's lease from being taken over (tests/cluster).
            os.fdatasync(fd)  # the bytes, before the name makes them visible
            with self._key_lock(key):
                current = self._check_condition(key, path, condition, expected)
                mtime = max(time.time_ns(), current.st_mtime_ns + 1 if current else 0)
                os.utime(fd, ns=(mtime, mtime))
                written = os.fstat(fd)
                os.rename(tmp, path)
                renamed = True
            os.fsync(fd)  # the mtime, part of the ETag returned
            _fsync_dir(directory)  # the rename
            return _etag(written)
        finally:
            os.close(fd)
            if not renamed:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                with contextlib.suppress(OSError):  # keep the original error
                    self._prune(directory)  # do not leave directories made for a write that failed

    @staticmethod
    def _check_condition(
        key: str, path: str, condition: str | None, expected: str | None
    ) -> os.stat_result | None:
        """Raise unless a write with ``condition`` may replace what is at ``path``; return its stat."""
        try:
            current = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            current = None
        if current is not None and not stat.S_ISREG(current.st_mode):
            if condition == "match":
                raise PreconditionFailed(f"{key} does not exist")
            raise ObjectStoreError(f"{key}: the path is a directory of other keys")
        if condition == "absent" and current is not None:
            raise PreconditionFailed(f"{key} already exists")
        if condition == "match":
            if current is None:
                raise PreconditionFailed(f"{key} does not exist")
            if _etag(current) != expected:
                raise PreconditionFailed(f"{key} has etag {_etag(current)}, not {expected}")
        return current

    def _read(self, key: str, start: int, end: int | None) -> tuple[bytes, str]:
        try:
            fd = os.open(self._path(key), os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(key) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise NotFound(key)
            stop = st.st_size if end is None else min(end, st.st_size)
            body = _read_exact(fd, stop - start, start) if stop > start else b""
            return body, _etag(st)
        finally:
            os.close(fd)

    def _head(self, key: str) -> ObjectInfo:
        try:
            st = os.stat(self._path(key))
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(key) from None
        if not stat.S_ISREG(st.st_mode):
            raise NotFound(key)
        return ObjectInfo(key, st.st_size, _etag(st))

    def _list(self, prefix: str) -> list[ObjectInfo]:
        # Start at the deepest directory the prefix names in full; filter the rest by key.
        directory_key, _, _ = prefix.rpartition("/")
        if directory_key:
            try:
                check_key(directory_key)
            except ValueError:
                return []  # no valid key can start with this prefix
            stack = [(self._path(directory_key), directory_key + "/")]
        else:
            stack = [(self._root, "")]
        found = []
        while stack:
            directory, key_prefix = stack.pop()
            try:
                entries = list(os.scandir(directory))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for entry in entries:
                if entry.name.startswith("."):
                    continue  # temp files, the lock directory
                key = key_prefix + _decode_name(entry.name)
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if (key + "/").startswith(prefix):
                            stack.append((entry.path, key + "/"))
                    elif key.startswith(prefix) and entry.is_file(follow_symlinks=False):
                        st = entry.stat(follow_symlinks=False)
                        found.append(ObjectInfo(key, st.st_size, _etag(st)))
                except FileNotFoundError:
                    continue  # deleted while we looked
        found.sort(key=lambda info: info.key)
        return found

    def _delete_keys(self, keys: list[str]) -> None:
        touched: set[str] = set()
        for key in keys:
            path = self._path(key)
            with self._key_lock(key):
                try:
                    st = os.stat(path)
                    if not stat.S_ISREG(st.st_mode):
                        continue  # a directory of other keys, not an object
                    os.unlink(path)
                except (FileNotFoundError, NotADirectoryError):
                    continue
            touched.add(os.path.dirname(path))
        for directory in touched:
            with contextlib.suppress(FileNotFoundError):  # already pruned by another deleter
                _fsync_dir(directory)
        for directory in sorted(touched, key=len, reverse=True):
            self._prune(directory)

    def _prune(self, directory: str) -> None:
        """Remove ``directory`` and its ancestors below the root while they are empty."""
        while directory != self._root and directory.startswith(self._root + os.sep):
            try:
                os.rmdir(directory)
            except FileNotFoundError:
                pass  # pruned by someone else; its parent may still be empty
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    return
                raise
            directory = os.path.dirname(directory)
