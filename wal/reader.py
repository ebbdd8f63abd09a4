"""Read-only replay of another broker's WAL, for a partition's new leader.

A WAL location is a small dict kept in broker registrations and manifests:
``{"engine": "file", "path": DIR}`` or ``{"engine": "object", "prefix": P}``.
Reading never modifies the log (no truncation of a torn tail: its writer may
still be alive), it just stops at the first entry that does not check out.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from objectstore.base import NotFound, ObjectStore, ObjectStoreError, TransientError
from wal.base import WalEntry
from wal.framing import scan_entries

SUFFIX = ".wal"
READ_AHEAD = 16  # WAL pieces fetched at once during a replay
log = logging.getLogger(__name__)


def wal_location(engine: str, base: str, incarnation: int) -> dict[str, Any]:
    """Where incarnation ``incarnation`` of a broker keeps its WAL."""
    if engine == "file":
        return {"engine": "file", "path": str(Path(base) / str(incarnation))}
    return {"engine": "object", "prefix": f"{base.strip('/')}/{incarnation}"}


async def read_wal(location: dict[str, Any], store: ObjectStore) -> list[WalEntry]:
    if location.get("engine") == "file":
        directory = Path(location["path"])

        async def read_file(name: str) -> bytes | None:
            try:
                return await asyncio.to_thread((directory / name).read_bytes)
            except FileNotFoundError:  # trimmed meanwhile
                return None

        names = await asyncio.to_thread(lambda: os.listdir(directory) if directory.is_dir() else [])
        return await _scan_in_order(names, read_file)

    prefix = location["prefix"].strip("/") + "/"

    async def read_object(name: str) -> bytes | None:
        try:
            return await store.get(prefix + name)
        except NotFound:  # trimmed meanwhile
            return None

    names = [info.key[len(prefix):] for info in await store.list(prefix)]
    return await _scan_in_order(names, read_object)


def _first_position(name: str) -> int | None:
    stem = name[: -len(SUFFIX)]
    return int(stem) if name.endswith(SUFFIX) and stem.isdigit() else None


async def _scan_in_order(names: list[str], read: Callable[[str], Awaitable[bytes | None]]) -> list[WalEntry]:
    """Entries of the WAL pieces named by the position of their first entry, up to the first gap or damage.

    Pieces are fetched up to ``READ_AHEAD`` at a time (a takeover waits for this) and scanned in order."""
    pieces = sorted((p, name) for name in names if (p := _first_position(name)) is not None)
    slots = asyncio.Semaphore(READ_AHEAD)

    async def fetch(name: str) -> bytes | None:
        async with slots:
            return await read(name)

    reads = [asyncio.ensure_future(fetch(name)) for _first, name in pieces]
    try:
        return await _scan(pieces, reads)
    finally:
        for pending in reads:
            pending.cancel()
        await asyncio.gather(*reads, return_exceptions=True)


async def _scan(pieces: list[tuple[int, str]], reads: list[asyncio.Future[bytes | None]]) -> list[WalEntry]:
    entries: list[WalEntry] = []
    expected: int | None = None
    for (first, name), pending in zip(pieces, reads, strict=True):
        if expected is not None and first != expected:
            break
        try:
            data = await pending
        except TransientError:
            raise
        except ObjectStoreError as exc:
            # An object whose PUT never completed (e.g. the writer was killed mid-upload, which some
            # stores keep as an empty object).  Acknowledgements are in order, so nothing from here on
            # was acknowledged: this is the end of the log.
            log.warning("WAL piece %s is unreadable (%s); replay stops there", name, exc)
            break
        if data is None:  # listed, then gone: trimmed by its writer, so its entries are in segments
            log.info("WAL piece %s was listed but is gone (trimmed meanwhile)", name)
            expected = None
            continue
        _end, expected, problem = scan_entries(data, first, entries)
        if problem is not None:
            break
    return entries
