"""The local-filesystem store holds a key's cross-process lock only for the check, the mtime and the
rename, never across a sync: a broker stopped while it holds the lock (SIGSTOP, a paused VM) blocks
every other broker writing a key of that stripe, and one stopped inside a sync there once kept a frozen
controller's lease from being taken over.  What a returned ETag promises still holds: it survives a
crash, since the syncs all finish before the write returns."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from objectstore.localfs import LocalFSObjectStore


async def test_no_sync_runs_while_a_key_lock_is_held(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalFSObjectStore(tmp_path)
    held = [0]
    syncs: list[tuple[str, bool]] = []
    key_lock = store._key_lock

    @contextlib.contextmanager
    def tracked(key: str) -> Iterator[None]:
        with key_lock(key):
            held[0] += 1
            try:
                yield
            finally:
                held[0] -= 1

    monkeypatch.setattr(store, "_key_lock", tracked)

    def recording(name: str) -> Callable[[int], None]:
        real = getattr(os, name)

        def sync(fd: int) -> None:
            syncs.append((name, held[0] > 0))
            real(fd)

        return sync

    for name in ("fsync", "fdatasync"):
        monkeypatch.setattr(os, name, recording(name))

    etag = await store.put("meta/controller.json", b"one")
    etag = await store.put_if_match("meta/controller.json", b"two", etag)
    await store.put_if_absent("meta/brokers/1.json", b"me")
    await store.delete_many(["meta/brokers/1.json"])
    assert await store.get("meta/controller.json") == b"two"
    assert (await store.head("meta/controller.json")).etag == etag

    assert len(syncs) >= 9  # each write syncs its bytes, its mtime and its directory
    assert [name for name, under_lock in syncs if under_lock] == []
