"""Builds the object store and the WAL that the settings ask for."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

from broker.config import Settings
from objectstore.base import ObjectStore
from objectstore.localfs import LocalFSObjectStore
from wal.base import WriteAheadLog
from wal.file import FileWriteAheadLog
from wal.object import ObjectWriteAheadLog
from wal.reader import wal_location

WAL_ENGINES = ("file", "object")
# A block cache smaller than this keeps no GET buffers for reuse: half of it would not hold one of the
# largest GETs (8 one-MiB blocks), and what it holds is taken from the cache (BlockCache.capacity).
MIN_CACHE_FOR_BUFFER_POOL = 8 * 1024 * 1024


def build_object_store(settings: Settings) -> ObjectStore:
    if not settings.s3_endpoint:
        root = Path(settings.objects_dir) if settings.objects_dir else Path(settings.data_dir) / "objects"
        if settings.prefix:
            root = root / settings.prefix.strip("/")
        return LocalFSObjectStore(root)
    from objectstore.s3 import S3ObjectStore  # noqa: PLC0415 - aiobotocore is only needed for S3
    from objectstore.s3_threaded_get import POOL_BYTES  # noqa: PLC0415 - as above

    return S3ObjectStore(
        settings.bucket,
        endpoint_url=settings.s3_endpoint,
        region=settings.region,
        prefix=settings.prefix,
        access_key=os.environ.get("AWS_ACCESS_KEY_ID"),
        secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
        # Buffers of evicted blocks, kept for the next GETs to fill: half the block cache, out of its bound.
        get_buffer_pool_bytes=min(POOL_BYTES, settings.block_cache_bytes // 2)
        if settings.block_cache_bytes >= MIN_CACHE_FOR_BUFFER_POOL else 0,
    )


def wal_base(settings: Settings) -> dict[str, str]:
    """Where this broker's WALs live (one sub-location per incarnation), as other brokers will read them."""
    if settings.wal == "file":
        return {"engine": "file", "base": str((Path(settings.data_dir) / "wal").resolve())}
    if settings.wal == "object":
        return {"engine": "object", "base": f"wal/{settings.broker_id}"}
    raise ValueError(f"unknown WAL engine {settings.wal!r}; choose one of {', '.join(WAL_ENGINES)}")


def build_wal(settings: Settings, store: ObjectStore, incarnation: int) -> WriteAheadLog:
    location = wal_location(**_location_args(settings, incarnation))
    if location["engine"] == "file":
        return FileWriteAheadLog(location["path"], segment_bytes=settings.wal_segment_bytes, sync=settings.wal_fsync,
                                 inline_bytes=settings.wal_inline_bytes)
    return ObjectWriteAheadLog(store, location["prefix"], linger_ms=settings.wal_object_linger_ms,
                               max_bytes=settings.wal_object_max_bytes, eager_puts=settings.wal_object_eager_puts,
                               max_in_flight=settings.wal_object_max_in_flight)


def _location_args(settings: Settings, incarnation: int) -> dict[str, object]:
    base = wal_base(settings)
    return {"engine": base["engine"], "base": base["base"], "incarnation": incarnation}


async def remove_old_wals(settings: Settings, store: ObjectStore, incarnation: int,
                          keep: set[int] | frozenset[int] = frozenset()) -> int:
    """Deletes the WALs of this broker's incarnations before ``incarnation`` except those in ``keep``;
    returns how many."""
    base = wal_base(settings)
    removed = 0
    if base["engine"] == "file":
        root = Path(base["base"])
        for child in (root.iterdir() if root.is_dir() else []):
            if child.is_dir() and child.name.isdigit() and int(child.name) < incarnation and int(child.name) not in keep:
                await asyncio.to_thread(shutil.rmtree, child, True)
                removed += 1
        return removed
    old: dict[str, list[str]] = {}
    for info in await store.list(base["base"] + "/"):
        part = info.key[len(base["base"]) + 1:].split("/", 1)[0]
        if part.isdigit() and int(part) < incarnation and int(part) not in keep:
            old.setdefault(part, []).append(info.key)
    for keys in old.values():
        await store.delete_many(keys)
    return len(old)
