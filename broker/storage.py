"""Builds the object store and the WAL that the settings ask for."""

from __future__ import annotations

import os
from pathlib import Path

from broker.config import Settings
from objectstore.base import ObjectStore
from objectstore.localfs import LocalFSObjectStore
from wal.base import WriteAheadLog
from wal.file import FileWriteAheadLog
from wal.object import ObjectWriteAheadLog

WAL_ENGINES = ("file", "object")


def build_object_store(settings: Settings) -> ObjectStore:
    if not settings.s3_endpoint:
        root = Path(settings.data_dir) / "objects"
        if settings.prefix:
            root = root / settings.prefix.strip("/")
        return LocalFSObjectStore(root)
    from objectstore.s3 import S3ObjectStore  # noqa: PLC0415 - aiobotocore is only needed for S3

    return S3ObjectStore(
        settings.bucket,
        endpoint_url=settings.s3_endpoint,
        region=settings.region,
        prefix=settings.prefix,
        access_key=os.environ.get("AWS_ACCESS_KEY_ID"),
        secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
    )


def build_wal(settings: Settings, store: ObjectStore) -> WriteAheadLog:
    if settings.wal == "file":
        return FileWriteAheadLog(Path(settings.data_dir) / "wal", segment_bytes=settings.wal_segment_bytes,
                                 sync=settings.wal_fsync)
    if settings.wal == "object":
        return ObjectWriteAheadLog(store, f"wal/{settings.broker_id}", linger_ms=settings.wal_object_linger_ms,
                                   max_bytes=settings.wal_object_max_bytes)
    raise ValueError(f"unknown WAL engine {settings.wal!r}; choose one of {', '.join(WAL_ENGINES)}")
