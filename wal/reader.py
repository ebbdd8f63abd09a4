"""Read-only replay of another broker's WAL, for a partition's new leader.

A WAL location is a small dict kept in broker registrations and manifests:
``{"engine": "file", "path": DIR}`` or ``{"engine": "object", "prefix": P}``.
Reading never modifies the log (no truncation of a torn tail: its writer may
still be alive), it just stops at the first entry that does not check out.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from objectstore.base import NotFound, ObjectStore
from wal.base import WalEntry
from wal.framing import scan_entries

SUFFIX = ".wal"


def wal_location(engine: str, base: str, incarnation: int) -> dict[str, Any]:
    """Where incarnation ``incarnation`` of a broker keeps its WAL."""
    if engine == "file":
        return {"engine": "file", "path": str(Path(base) / str(incarnation))}
    return {"engine": "object", "prefix": f"{base.strip('/')}/{incarnation}"}


async def read_wal(location: dict[str, Any], store: ObjectStore) -> list[WalEntry]:
    if location.get("engine") == "file":
        return await asyncio.to_thread(_read_file_wal, Path(location["path"]))
    return await _read_object_wal(store, location["prefix"])


def _first_position(name: str) -> int | None:
    stem = name[: -len(SUFFIX)]
    return int(stem) if name.endswith(SUFFIX) and stem.isdigit() else None


def _read_file_wal(directory: Path) -> list[WalEntry]:
    if not directory.is_dir():
        return []
    files = sorted((p, f) for f in os.listdir(directory) if (p := _first_position(f)) is not None)
    entries: list[WalEntry] = []
    expected: int | None = None
    for first, name in files:
        if expected is not None and first != expected:
            break
        try:
            data = (directory / name).read_bytes()
        except FileNotFoundError:  # trimmed meanwhile
            expected = None
            continue
        _end, expected, problem = scan_entries(data, first, entries)
        if problem is not None:
            break
    return entries


async def _read_object_wal(store: ObjectStore, prefix: str) -> list[WalEntry]:
    infos = [i for i in await store.list(prefix.strip("/") + "/") if i.key.endswith(SUFFIX)]
    entries: list[WalEntry] = []
    expected: int | None = None
    for info in sorted(infos, key=lambda i: i.key):
        first = _first_position(info.key.rsplit("/", 1)[1])
        if first is None or (expected is not None and first != expected):
            break
        try:
            data = await store.get(info.key)
        except NotFound:
            expected = None
            continue
        _end, expected, problem = scan_entries(data, first, entries)
        if problem is not None:
            break
    return entries
