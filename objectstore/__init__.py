"""Keel's object-store layer: one async interface (base) and its engines (memory, localfs, faults)."""

from objectstore.base import (
    NotFound,
    ObjectInfo,
    ObjectStore,
    ObjectStoreError,
    PreconditionFailed,
    TransientError,
    check_key,
)
from objectstore.faults import FaultInjectingStore, InjectedFault, OpStats
from objectstore.localfs import LocalFSObjectStore
from objectstore.memory import MemoryObjectStore

__all__ = [
    "FaultInjectingStore",
    "InjectedFault",
    "LocalFSObjectStore",
    "MemoryObjectStore",
    "NotFound",
    "ObjectInfo",
    "ObjectStore",
    "ObjectStoreError",
    "OpStats",
    "PreconditionFailed",
    "TransientError",
    "check_key",
]
