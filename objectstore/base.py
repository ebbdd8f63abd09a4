"""The one async object-store interface every Keel storage user codes against.

Keel keeps all durable state (segments, manifests, leases, WAL chunks) in an
object store, so the rest of the broker must not care whether that store is S3,
a local directory or a dict. This module fixes the contract:

* ``put`` overwrites unconditionally; ``put_if_absent`` creates only;
  ``put_if_match`` is compare-and-swap on the ETag last read. Every successful
  write returns the object's new ETag, and an ETag never repeats for a key
  (not even when the same bytes are written again), so CAS is free of ABA.
* ``get(key, start, end)`` returns ``data[start:end]`` (``end=None`` reads to
  the end, an ``end`` past the size is clamped, a ``start`` past it gives
  ``b""``). A missing key raises :class:`NotFound` whatever the range.
* ``list(prefix)`` returns every key starting with ``prefix``, sorted by key.
* ``delete`` of a missing key succeeds.

Keys are '/'-separated like ``meta/topics/orders.json``; :func:`check_key`
defines which are valid, and every engine rejects the others with
``ValueError`` (a bug in the caller, not a storage failure).
"""

from __future__ import annotations

import abc
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Self

Data = bytes | bytearray | memoryview

MAX_KEY_BYTES = 1024  # S3's limit; keeping it everywhere keeps engines interchangeable


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    etag: str


class ObjectStoreError(Exception):
    """Base of every error an object store raises on purpose."""


class NotFound(ObjectStoreError):
    """The key does not exist (get, get_with_etag, head)."""


class PreconditionFailed(ObjectStoreError):
    """A conditional put lost: the key exists (create-only) or its ETag moved on or it is gone (CAS)."""


class TransientError(ObjectStoreError):
    """Retriable failure: 5xx, SlowDown, timeout, connection reset. A write may or may not have landed."""


def check_key(key: str) -> None:
    """Raise ValueError unless ``key`` is a valid object key.

    Valid: a non-empty str of at most 1024 UTF-8 bytes, no NUL, no leading
    '/', and no empty, '.' or '..' segment (so no '//' and no trailing '/').
    """
    if not isinstance(key, str) or not key:
        raise ValueError(f"object key must be a non-empty str, got {key!r}")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise ValueError(f"object key longer than {MAX_KEY_BYTES} bytes: {key[:64]!r}...")
    if "\x00" in key:
        raise ValueError(f"object key contains NUL: {key!r}")
    if key.startswith("/"):
        raise ValueError(f"object key must not start with '/': {key!r}")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise ValueError(f"object key has an empty, '.' or '..' segment: {key!r}")


def check_range(start: int, end: int | None) -> None:
    """Raise ValueError unless ``[start, end)`` is a well-formed byte range."""
    if start < 0:
        raise ValueError(f"range start must be >= 0, got {start}")
    if end is not None and end < start:
        raise ValueError(f"range end {end} is before start {start}")


class ObjectStore(abc.ABC):
    """Async object store. Engines: memory, localfs (and later S3); see the module docstring."""

    @abc.abstractmethod
    async def put(self, key: str, data: Data) -> str:
        """Write ``data`` at ``key`` whatever is there; return the new ETag."""

    @abc.abstractmethod
    async def put_if_absent(self, key: str, data: Data) -> str:
        """Create ``key``; raise PreconditionFailed if it already exists. Return the new ETag."""

    @abc.abstractmethod
    async def put_if_match(self, key: str, data: Data, etag: str) -> str:
        """Replace ``key`` only if its ETag is ``etag``; else (or if missing) raise PreconditionFailed."""

    @abc.abstractmethod
    async def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        """Return bytes ``[start, end)`` of the object (``end=None``: to the end). NotFound if missing."""

    @abc.abstractmethod
    async def get_with_etag(self, key: str) -> tuple[bytes, str]:
        """Return the whole object and the ETag of exactly that content. NotFound if missing."""

    @abc.abstractmethod
    async def head(self, key: str) -> ObjectInfo:
        """Return size and ETag. NotFound if missing."""

    @abc.abstractmethod
    async def list(self, prefix: str) -> list[ObjectInfo]:
        """Return all objects whose key starts with ``prefix``, sorted by key."""

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is not an error."""

    async def delete_many(self, keys: Iterable[str]) -> None:
        """Remove every key (missing ones are fine). Engines override this to batch."""
        for key in keys:
            await self.delete(key)

    @property
    def buffer_pool_bytes(self) -> int:
        """The most memory this engine keeps in buffers handed back with :meth:`recycle` (0: it keeps none).
        A cache of what ``get`` returned counts it within its own memory bound."""
        return 0

    def recycle(self, data: object) -> None:  # noqa: B027 - deliberately a no-op default
        """Takes back a buffer that ``get`` returned (or that a view it returned showed) and that nothing
        refers to any more, for a later ``get`` to fill instead of fresh memory.  The default drops it."""

    async def close(self) -> None:  # noqa: B027 - deliberately a no-op default
        """Release connections and threads. The default has nothing to release."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
