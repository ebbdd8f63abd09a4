"""In-memory object store: a dict, for unit tests that need the full contract without I/O.

ETags are ``"<md5 of content>-<write counter>"``: the counter is global to the
store and only grows, so an ETag never repeats and CAS cannot suffer ABA.
Every operation yields to the event loop once before acting (as real I/O
would) so concurrency tests see interleavings, but each check-and-write runs
without awaiting in between, which is what makes conditional puts atomic.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from collections.abc import Iterable

from objectstore.base import (
    Data,
    NotFound,
    ObjectInfo,
    ObjectStore,
    PreconditionFailed,
    check_key,
    check_range,
)


class MemoryObjectStore(ObjectStore):
    def __init__(self) -> None:
        self._objects: dict[str, tuple[bytes, str]] = {}
        self._writes = itertools.count(1)

    def _store(self, key: str, data: Data) -> str:
        body = bytes(data)
        etag = f"{hashlib.md5(body, usedforsecurity=False).hexdigest()}-{next(self._writes)}"
        self._objects[key] = (body, etag)
        return etag

    def _lookup(self, key: str) -> tuple[bytes, str]:
        try:
            return self._objects[key]
        except KeyError:
            raise NotFound(key) from None

    async def put(self, key: str, data: Data) -> str:
        check_key(key)
        await asyncio.sleep(0)
        return self._store(key, data)

    async def put_if_absent(self, key: str, data: Data) -> str:
        check_key(key)
        await asyncio.sleep(0)
        if key in self._objects:
            raise PreconditionFailed(f"{key} already exists")
        return self._store(key, data)

    async def put_if_match(self, key: str, data: Data, etag: str) -> str:
        check_key(key)
        await asyncio.sleep(0)
        current = self._objects.get(key)
        if current is None:
            raise PreconditionFailed(f"{key} does not exist")
        if current[1] != etag:
            raise PreconditionFailed(f"{key} has etag {current[1]}, not {etag}")
        return self._store(key, data)

    async def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        check_key(key)
        check_range(start, end)
        await asyncio.sleep(0)
        return self._lookup(key)[0][start:end]

    async def get_with_etag(self, key: str) -> tuple[bytes, str]:
        check_key(key)
        await asyncio.sleep(0)
        return self._lookup(key)

    async def head(self, key: str) -> ObjectInfo:
        check_key(key)
        await asyncio.sleep(0)
        body, etag = self._lookup(key)
        return ObjectInfo(key, len(body), etag)

    async def list(self, prefix: str) -> list[ObjectInfo]:
        await asyncio.sleep(0)
        return [
            ObjectInfo(key, len(body), etag)
            for key, (body, etag) in sorted(self._objects.items())
            if key.startswith(prefix)
        ]

    async def delete(self, key: str) -> None:
        check_key(key)
        await asyncio.sleep(0)
        self._objects.pop(key, None)

    async def delete_many(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        for key in keys:
            check_key(key)
        await asyncio.sleep(0)
        for key in keys:
            self._objects.pop(key, None)
