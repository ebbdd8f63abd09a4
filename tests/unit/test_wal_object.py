"""The object WAL: in-order acknowledgements, replay by another broker, and PUTs that never completed."""

from typing import Any

from objectstore.base import ObjectStoreError
from objectstore.memory import MemoryObjectStore
from wal.object import ObjectWriteAheadLog
from wal.reader import read_wal


async def _write(store: MemoryObjectStore, prefix: str, payloads: list[bytes]) -> list[int]:
    wal = ObjectWriteAheadLog(store, prefix, linger_ms=0, max_bytes=1)  # one object per append
    await wal.open()
    positions = [await wal.append([p]) for p in payloads]
    await wal.close()
    return positions


async def test_another_broker_replays_every_acknowledged_entry_in_order() -> None:
    store = MemoryObjectStore()
    payloads = [b"entry-%d" % i for i in range(20)]
    assert await _write(store, "wal/1/1", payloads) == list(range(20))
    entries = await read_wal({"engine": "object", "prefix": "wal/1/1"}, store)
    assert [e.payload for e in entries] == payloads


async def test_replay_stops_at_an_object_whose_put_never_completed() -> None:
    store = MemoryObjectStore()
    await _write(store, "wal/1/1", [b"a", b"b", b"c", b"d"])
    broken = "wal/1/1/00000000000000000002.wal"
    original_get = store.get

    async def get(key: str, *args: Any, **kwargs: Any) -> bytes:
        if key == broken:
            raise ObjectStoreError(f"{key}: object of 0 bytes was not written by Keel")
        return await original_get(key, *args, **kwargs)

    store.get = get  # type: ignore[method-assign]
    entries = await read_wal({"engine": "object", "prefix": "wal/1/1"}, store)
    assert [e.payload for e in entries] == [b"a", b"b"]

    reopened = ObjectWriteAheadLog(store, "wal/1/1")
    assert [e.payload for e in await reopened.open()] == [b"a", b"b"]
    assert reopened.next_position == 2  # the unreadable object and everything after it were removed
    assert [i.key for i in await store.list("wal/1/1/")] == [
        "wal/1/1/00000000000000000000.wal", "wal/1/1/00000000000000000001.wal"]


async def test_a_retried_put_over_a_leftover_object_of_the_same_write_succeeds() -> None:
    store = MemoryObjectStore()
    await store.put("wal/1/1/00000000000000000000.wal", b"")  # an earlier attempt, cut short
    wal = ObjectWriteAheadLog(store, "wal/1/1", linger_ms=0)
    wal._next_position = 0  # as after open() on an empty prefix
    assert await wal.append([b"x"]) == 0
    await wal.close()
    assert [e.payload for e in await read_wal({"engine": "object", "prefix": "wal/1/1"}, store)] == [b"x"]
