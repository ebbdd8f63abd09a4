"""The fault-injecting wrapper injects exactly what it is told to, and nothing when told nothing."""

from __future__ import annotations

import time

import pytest

from objectstore.base import ObjectStore, PreconditionFailed, TransientError
from objectstore.faults import OPS, FaultInjectingStore, InjectedFault
from objectstore.memory import MemoryObjectStore


def _faulty(seed: int | None = 1) -> tuple[FaultInjectingStore, MemoryObjectStore]:
    inner = MemoryObjectStore()
    return FaultInjectingStore(inner, seed=seed), inner


async def _fault_pattern(store: ObjectStore, calls: int) -> list[bool]:
    pattern = []
    for _ in range(calls):
        try:
            await store.get("k")
            pattern.append(False)
        except InjectedFault:
            pattern.append(True)
    return pattern


async def test_without_faults_it_is_a_transparent_wrapper() -> None:
    store, inner = _faulty()
    etag = await store.put("meta/a.json", b"1")
    etag = await store.put_if_match("meta/a.json", b"2", etag)
    await store.put_if_absent("meta/b.json", b"3")
    assert await store.get("meta/a.json", 1) == b""
    assert await store.get_with_etag("meta/a.json") == (b"2", etag)
    assert (await store.head("meta/b.json")).size == 1
    assert [i.key for i in await store.list("meta/")] == ["meta/a.json", "meta/b.json"]
    with pytest.raises(PreconditionFailed):
        await store.put_if_absent("meta/b.json", b"x")
    await store.delete("meta/a.json")
    await store.delete_many(iter(["meta/b.json"]))
    assert await inner.list("") == []
    assert all(s.faults == 0 for s in store.stats.values())
    assert store.stats["put"].calls == 1 and store.stats["put_if_absent"].calls == 2


async def test_error_rate_is_roughly_honoured_and_counted() -> None:
    store, inner = _faulty(seed=42)
    await inner.put("k", b"v")
    store.set_error_rate(0.3)
    pattern = await _fault_pattern(store, 2000)
    assert 480 <= sum(pattern) <= 720
    assert store.stats["get"].calls == 2000
    assert store.stats["get"].faults == sum(pattern)
    assert store.stats["get"].faults_after == 0


async def test_same_seed_same_faults_other_seed_other_faults() -> None:
    runs = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        store, inner = _faulty(seed=seed)
        await inner.put("k", b"v")
        store.set_error_rate(0.5)
        runs[name] = await _fault_pattern(store, 200)
    assert runs["a"] == runs["b"]
    assert runs["a"] != runs["c"]


@pytest.mark.parametrize("kind", ["slowdown", "timeout", "reset"])
async def test_fault_kind_is_reported(kind: str) -> None:
    store, _ = _faulty()
    store.set_error_rate(1.0, kind=kind)  # type: ignore[arg-type]
    with pytest.raises(TransientError, match=kind) as info:
        await store.put("k", b"v")
    assert isinstance(info.value, InjectedFault)
    assert (info.value.op, info.value.kind, info.value.landed) == ("put", kind, False)


async def test_errors_only_hit_the_selected_operations() -> None:
    store, inner = _faulty()
    await inner.put("k", b"v")
    store.set_error_rate(1.0, ops={"put", "put_if_match"})
    with pytest.raises(InjectedFault):
        await store.put("k", b"new")
    with pytest.raises(InjectedFault):
        await store.put_if_match("k", b"new", "whatever")
    assert await store.get("k") == b"v"  # fault before the op: nothing landed
    assert (await store.head("k")).size == 1
    await store.put_if_absent("other", b"x")
    assert store.stats["put"].faults == 1 and store.stats["put_if_match"].faults == 1
    assert store.stats["get"].faults == 0 and store.stats["put_if_absent"].faults == 0


async def test_fault_after_the_operation_leaves_the_write_in_place() -> None:
    store, inner = _faulty()
    store.set_error_rate(1.0, kind="timeout", ops={"put_if_absent", "put", "delete"}, after_fraction=1.0)
    with pytest.raises(InjectedFault) as info:
        await store.put_if_absent("meta/cluster.json", b"mine")
    assert info.value.landed
    assert await inner.get("meta/cluster.json") == b"mine"
    # The retry a client would make now meets its own earlier write.
    with pytest.raises(PreconditionFailed):
        await store.put_if_absent("meta/cluster.json", b"mine")
    with pytest.raises(InjectedFault):
        await store.put("meta/cluster.json", b"overwritten")
    assert await inner.get("meta/cluster.json") == b"overwritten"
    with pytest.raises(InjectedFault):
        await store.delete("meta/cluster.json")
    assert await inner.list("") == []
    assert store.stats["put_if_absent"].faults_after == 1
    assert store.stats["put_if_absent"].faults == 1  # the PreconditionFailed is the inner store's own


async def test_after_fraction_splits_faults() -> None:
    store, inner = _faulty(seed=3)
    store.set_error_rate(1.0, ops={"put"}, after_fraction=0.5)
    landed_keys, lost_keys = [], []
    for i in range(400):
        key = f"k/{i}"
        with pytest.raises(InjectedFault) as info:
            await store.put(key, b"x")
        (landed_keys if info.value.landed else lost_keys).append(key)
    assert 140 <= len(landed_keys) <= 260
    assert [i.key for i in await inner.list("k/")] == sorted(landed_keys)
    assert store.stats["put"].faults == 400
    assert store.stats["put"].faults_after == len(landed_keys)


async def test_latency_is_added() -> None:
    store, inner = _faulty()
    await inner.put("k", b"v")
    store.set_latency(0.05)
    began = time.monotonic()
    await store.get("k")
    assert time.monotonic() - began >= 0.05

    store.set_latency(0.0, jitter=0.04)
    durations = []
    for _ in range(8):
        began = time.monotonic()
        await store.head("k")
        durations.append(time.monotonic() - began)
    assert max(durations) < 0.2
    assert sum(durations) > 0.04  # 8 uniform draws in [0, 40 ms): expected sum 160 ms
    assert len({round(d, 3) for d in durations}) > 1


async def test_unavailable_blocks_every_operation() -> None:
    store, inner = _faulty()
    await inner.put("k", b"v")
    store.set_unavailable(True)
    attempts = {
        "put": store.put("k", b"new"),
        "put_if_absent": store.put_if_absent("new", b"x"),
        "put_if_match": store.put_if_match("k", b"new", "etag"),
        "get": store.get("k"),
        "get_with_etag": store.get_with_etag("k"),
        "head": store.head("k"),
        "list": store.list(""),
        "delete": store.delete("k"),
        "delete_many": store.delete_many(["k"]),
    }
    assert set(attempts) == set(OPS)
    for op, attempt in attempts.items():
        with pytest.raises(TransientError) as info:
            await attempt
        assert isinstance(info.value, InjectedFault) and info.value.kind == "unavailable", op
        assert store.stats[op].faults == 1
    assert await inner.get_with_etag("k") == (b"v", (await inner.head("k")).etag)
    assert [i.key for i in await inner.list("")] == ["k"]

    store.set_unavailable(False)
    assert await store.get("k") == b"v"


async def test_clear_removes_every_fault_but_keeps_stats() -> None:
    store, inner = _faulty()
    await inner.put("k", b"v")
    store.set_error_rate(1.0)
    store.set_latency(0.5)
    store.set_unavailable(True)
    store.clear()
    began = time.monotonic()
    for _ in range(20):
        assert await store.get("k") == b"v"
    assert time.monotonic() - began < 0.4
    assert store.stats["get"].calls == 20
    store.reset_stats()
    assert store.stats["get"].calls == 0


async def test_bad_settings_are_rejected() -> None:
    store, _ = _faulty()
    with pytest.raises(ValueError):
        store.set_error_rate(1.5)
    with pytest.raises(ValueError):
        store.set_error_rate(0.1, after_fraction=-0.1)
    with pytest.raises(ValueError):
        store.set_error_rate(0.1, kind="gremlins")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        store.set_error_rate(0.1, ops={"put", "putt"})
    with pytest.raises(ValueError):
        store.set_latency(-1)


async def test_close_closes_the_inner_store() -> None:
    closed = []

    class Recording(MemoryObjectStore):
        async def close(self) -> None:
            closed.append(True)

    async with FaultInjectingStore(Recording()) as store:
        await store.put("k", b"v")
    assert closed == [True]
