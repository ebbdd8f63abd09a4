"""One contract suite that every ObjectStore engine must pass, plus localfs-only checks.

To add an engine, add a factory to STORE_FACTORIES (it may ``pytest.skip`` when
its server is not reachable); every contract test then runs against it.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from objectstore import localfs
from objectstore.base import NotFound, ObjectStore, ObjectStoreError, PreconditionFailed
from objectstore.localfs import LocalFSObjectStore
from objectstore.memory import MemoryObjectStore

REPO_ROOT = Path(__file__).resolve().parents[2]

StoreFactory = Callable[[Path], Awaitable[ObjectStore]]


async def _memory_store(tmp_path: Path) -> ObjectStore:
    return MemoryObjectStore()


async def _localfs_store(tmp_path: Path) -> ObjectStore:
    return LocalFSObjectStore(tmp_path / "objects")


STORE_FACTORIES: dict[str, StoreFactory] = {
    "memory": _memory_store,
    "localfs": _localfs_store,
}


@pytest.fixture(params=list(STORE_FACTORIES))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ObjectStore]:
    engine = await STORE_FACTORIES[request.param](tmp_path)
    try:
        yield engine
    finally:
        await engine.close()


@pytest.fixture
async def fs_store(tmp_path: Path) -> AsyncIterator[LocalFSObjectStore]:
    engine = LocalFSObjectStore(tmp_path / "objects")
    try:
        yield engine
    finally:
        await engine.close()


# ---- basic reads and writes ----------------------------------------------


async def test_put_get_round_trip(store: ObjectStore) -> None:
    etag = await store.put("meta/topics/orders.json", b'{"partitions": 3}')
    assert isinstance(etag, str) and etag
    assert await store.get("meta/topics/orders.json") == b'{"partitions": 3}'
    assert await store.get_with_etag("meta/topics/orders.json") == (b'{"partitions": 3}', etag)


async def test_put_accepts_bytearray_memoryview_and_empty(store: ObjectStore) -> None:
    await store.put("a/bytearray", bytearray(b"xyz"))
    await store.put("a/memoryview", memoryview(b"0123456789")[2:5])
    await store.put("a/empty", b"")
    assert await store.get("a/bytearray") == b"xyz"
    assert await store.get("a/memoryview") == b"234"
    assert await store.get("a/empty") == b""
    assert (await store.head("a/empty")).size == 0


RANGE_DATA = bytes(range(256)) * 4  # 1024 bytes, every offset distinguishable by position


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (0, None),
        (0, 1),
        (10, 20),
        (100, None),
        (1000, 1024),
        (1000, 5000),  # end beyond size is clamped
        (0, 10_000),
        (1023, None),
        (1024, None),  # start at the size: empty
        (2000, None),  # start beyond the size: empty
        (2000, 3000),
        (5, 5),  # empty range
    ],
)
async def test_ranged_get(store: ObjectStore, start: int, end: int | None) -> None:
    await store.put("data/t/0/00000000000000000000-1.seg", RANGE_DATA)
    got = await store.get("data/t/0/00000000000000000000-1.seg", start, end)
    assert got == RANGE_DATA[start:end]


async def test_ranged_get_rejects_bad_ranges(store: ObjectStore) -> None:
    await store.put("k", b"abc")
    with pytest.raises(ValueError):
        await store.get("k", -1)
    with pytest.raises(ValueError):
        await store.get("k", 2, 1)


async def test_missing_key_raises_not_found(store: ObjectStore) -> None:
    await store.put("meta/other.json", b"x")
    with pytest.raises(NotFound):
        await store.get("meta/missing.json")
    with pytest.raises(NotFound):
        await store.get("meta/missing.json", 0, 0)
    with pytest.raises(NotFound):
        await store.get_with_etag("meta/missing.json")
    with pytest.raises(NotFound):
        await store.head("meta/missing.json")
    with pytest.raises(NotFound):  # a "directory" of other keys is not an object
        await store.head("meta")
    with pytest.raises(NotFound):
        await store.get("meta")


async def test_head_reports_size_and_etag(store: ObjectStore) -> None:
    etag = await store.put("meta/cluster.json", b"0123456789")
    info = await store.head("meta/cluster.json")
    assert (info.key, info.size, info.etag) == ("meta/cluster.json", 10, etag)


async def test_etag_changes_on_every_overwrite_even_with_same_bytes(store: ObjectStore) -> None:
    etags = [await store.put("meta/controller.json", b"same") for _ in range(20)]
    etags += [await store.put("meta/controller.json", b"other") for _ in range(5)]
    assert len(set(etags)) == len(etags)
    assert (await store.head("meta/controller.json")).etag == etags[-1]


async def test_etag_is_not_reused_after_delete_and_recreate(store: ObjectStore) -> None:
    seen = set()
    for _ in range(10):
        seen.add(await store.put("meta/brokers/1.json", b"lease"))
        await store.delete("meta/brokers/1.json")
    assert len(seen) == 10


async def test_unusual_key_segments_round_trip(store: ObjectStore) -> None:
    keys = [
        "meta/topics/.hidden.json",
        "meta/topics/100%.json",
        "meta/topics/%2E.json",
        ".top",
        "é/ü",
        "a b/c",
    ]
    for i, key in enumerate(keys):
        await store.put(key, str(i).encode())
    for i, key in enumerate(keys):
        assert await store.get(key) == str(i).encode()
    assert [info.key for info in await store.list("")] == sorted(keys)
    assert [info.key for info in await store.list("meta/topics/.")] == ["meta/topics/.hidden.json"]


@pytest.mark.parametrize(
    "key", ["", "/abs", "a//b", "a/", "a/../b", "..", "./a", "a/./b", "nul\x00", "x" * 1025]
)
async def test_invalid_keys_are_rejected(store: ObjectStore, key: str) -> None:
    with pytest.raises(ValueError):
        await store.put(key, b"x")
    with pytest.raises(ValueError):
        await store.get(key)
    with pytest.raises(ValueError):
        await store.delete(key)


# ---- conditional puts -------------------------------------------------------


async def test_put_if_absent_creates_once(store: ObjectStore) -> None:
    etag = await store.put_if_absent("meta/cluster.json", b"first")
    with pytest.raises(PreconditionFailed):
        await store.put_if_absent("meta/cluster.json", b"second")
    assert await store.get_with_etag("meta/cluster.json") == (b"first", etag)


async def test_put_if_match_with_current_etag_succeeds(store: ObjectStore) -> None:
    first = await store.put("meta/groups/g.json", b"v1")
    second = await store.put_if_match("meta/groups/g.json", b"v2", first)
    assert second != first
    assert await store.get_with_etag("meta/groups/g.json") == (b"v2", second)
    third = await store.put_if_match("meta/groups/g.json", b"v3", second)
    assert await store.get_with_etag("meta/groups/g.json") == (b"v3", third)


async def test_put_if_match_with_stale_etag_fails(store: ObjectStore) -> None:
    stale = await store.put("meta/groups/g.json", b"v1")
    current = await store.put("meta/groups/g.json", b"v2")
    with pytest.raises(PreconditionFailed):
        await store.put_if_match("meta/groups/g.json", b"v3", stale)
    assert await store.get_with_etag("meta/groups/g.json") == (b"v2", current)


async def test_put_if_match_is_free_of_aba(store: ObjectStore) -> None:
    seen = await store.put("meta/controller.json", b"A")
    await store.put("meta/controller.json", b"B")
    await store.put("meta/controller.json", b"A")  # same bytes as when we read
    with pytest.raises(PreconditionFailed):
        await store.put_if_match("meta/controller.json", b"mine", seen)


async def test_put_if_match_on_missing_key_fails(store: ObjectStore) -> None:
    with pytest.raises(PreconditionFailed):
        await store.put_if_match("meta/missing.json", b"x", "some-etag")
    etag = await store.put("meta/gone.json", b"x")
    await store.delete("meta/gone.json")
    with pytest.raises(PreconditionFailed):
        await store.put_if_match("meta/gone.json", b"y", etag)
    with pytest.raises(NotFound):
        await store.head("meta/gone.json")


@pytest.mark.parametrize("round_", range(4))
async def test_concurrent_cas_has_exactly_one_winner(store: ObjectStore, round_: int) -> None:
    key = "meta/partitions/t/0.json"
    etag = await store.put(key, b"start")
    for step in range(3):
        payloads = [f"{round_}:{step}:{i}".encode() for i in range(16)]
        outcomes = await asyncio.gather(
            *(store.put_if_match(key, p, etag) for p in payloads), return_exceptions=True
        )
        winners = [(p, o) for p, o in zip(payloads, outcomes, strict=True) if isinstance(o, str)]
        losers = [o for o in outcomes if isinstance(o, PreconditionFailed)]
        assert len(winners) == 1 and len(losers) == 15, outcomes
        payload, etag = winners[0]
        assert await store.get_with_etag(key) == (payload, etag)


@pytest.mark.parametrize("round_", range(4))
async def test_concurrent_put_if_absent_has_exactly_one_winner(store: ObjectStore, round_: int) -> None:
    key = f"meta/topics/race-{round_}.json"
    payloads = [f"creator-{i}".encode() for i in range(16)]
    outcomes = await asyncio.gather(*(store.put_if_absent(key, p) for p in payloads), return_exceptions=True)
    winners = [(p, o) for p, o in zip(payloads, outcomes, strict=True) if isinstance(o, str)]
    assert len(winners) == 1, outcomes
    assert sum(isinstance(o, PreconditionFailed) for o in outcomes) == 15
    assert await store.get_with_etag(key) == winners[0]


# ---- list and delete ---------------------------------------------------------


async def test_list_by_prefix_is_sorted_and_exact(store: ObjectStore) -> None:
    keys = [
        "meta/topics/b.json",
        "meta/topics/a.json",
        "meta/topics/sub/c.json",
        "meta/topicsX.json",
        "meta/topics-other/d.json",
        "meta/brokers/1.json",
        "data/abc/0/00000000000000000000-1.seg",
        "data/abd/0/00000000000000000000-1.seg",
        "data/xyz/0/00000000000000000000-1.seg",
    ]
    shuffled = keys[:]
    random.Random(7).shuffle(shuffled)
    for key in shuffled:
        await store.put(key, key.encode())

    listed = await store.list("meta/topics/")
    assert [i.key for i in listed] == ["meta/topics/a.json", "meta/topics/b.json", "meta/topics/sub/c.json"]
    for info in listed:
        assert info.size == len(info.key)
        assert info == await store.head(info.key)

    assert [i.key for i in await store.list("meta/topics")] == [
        "meta/topics-other/d.json",
        "meta/topics/a.json",
        "meta/topics/b.json",
        "meta/topics/sub/c.json",
        "meta/topicsX.json",
    ]
    assert [i.key for i in await store.list("data/ab")] == keys[6:8]
    assert [i.key for i in await store.list("")] == sorted(keys)
    assert await store.list("nothing/") == []
    assert await store.list("meta/topics/a.json/") == []
    assert [i.key for i in await store.list("meta/topics/a.json")] == ["meta/topics/a.json"]


async def test_delete_is_idempotent(store: ObjectStore) -> None:
    await store.put("meta/brokers/1.json", b"x")
    await store.put("meta/brokers/2.json", b"y")
    await store.delete("meta/brokers/1.json")
    await store.delete("meta/brokers/1.json")
    await store.delete("never/existed")
    with pytest.raises(NotFound):
        await store.get("meta/brokers/1.json")
    assert [i.key for i in await store.list("meta/")] == ["meta/brokers/2.json"]
    # the key can be created again, also create-only
    await store.put_if_absent("meta/brokers/1.json", b"again")
    assert await store.get("meta/brokers/1.json") == b"again"


async def test_delete_many(store: ObjectStore) -> None:
    keys = [f"data/t/{p}/{n:020d}-1.seg" for p in range(3) for n in range(4)]
    for key in keys:
        await store.put(key, b"seg")
    await store.delete_many(k for k in keys[:7])  # any iterable
    await store.delete_many([keys[0], "missing/key"])
    await store.delete_many([])
    assert [i.key for i in await store.list("data/")] == keys[7:]


# ---- binary data ----------------------------------------------------------------


@st.composite
def _body_and_ranges(draw: st.DrawFn) -> tuple[bytes, list[tuple[int, int | None]]]:
    size = draw(st.one_of(st.integers(0, 16), st.integers(17, 3000)))  # plain binary() stays tiny
    body = draw(st.binary(min_size=size, max_size=size))
    bound = len(body) + 8  # ranges reach a little past the end
    ranges = draw(
        st.lists(st.tuples(st.integers(0, bound), st.none() | st.integers(0, bound)), min_size=1, max_size=4)
    )
    return body, [(start, None if length is None else start + length) for start, length in ranges]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=_body_and_ranges())
async def test_binary_round_trip(
    store: ObjectStore, case: tuple[bytes, list[tuple[int, int | None]]]
) -> None:
    body, ranges = case
    etag = await store.put("data/bin/0/blob.seg", body)
    assert await store.get_with_etag("data/bin/0/blob.seg") == (body, etag)
    assert (await store.head("data/bin/0/blob.seg")).size == len(body)
    for start, end in ranges:
        assert await store.get("data/bin/0/blob.seg", start, end) == body[start:end]


# ---- localfs only ------------------------------------------------------------------


def _all_files(root: str) -> list[str]:
    return [os.path.join(d, f) for d, _, files in os.walk(root) for f in files]


async def test_localfs_list_never_shows_temp_or_lock_files(fs_store: LocalFSObjectStore) -> None:
    for i in range(20):
        await fs_store.put(f"meta/partitions/t/{i}.json", b"x")
    with pytest.raises(PreconditionFailed):
        await fs_store.put_if_absent("meta/partitions/t/0.json", b"y")
    # a temp file left behind by a crashed writer in another process
    Path(fs_store.root, "meta", "partitions", "t", ".tmp.deadbeefdeadbeef").write_bytes(b"junk")

    names = [os.path.basename(p) for p in _all_files(fs_store.root)]
    assert any(n.endswith(".lock") for n in names)  # the locks really are on disk
    listed = [i.key for i in await fs_store.list("")]
    assert listed == sorted(f"meta/partitions/t/{i}.json" for i in range(20))
    assert [i.key for i in await fs_store.list("meta/partitions/t/")] == listed
    assert await fs_store.list(".") == []
    # the failed conditional put cleaned up its own temp file
    assert sum(n.startswith(".tmp.") for n in names) == 1


async def test_localfs_files_mirror_keys_and_share_across_instances(fs_store: LocalFSObjectStore) -> None:
    etag = await fs_store.put("meta/topics/orders.json", b"{}")
    assert Path(fs_store.root, "meta", "topics", "orders.json").read_bytes() == b"{}"
    other = LocalFSObjectStore(fs_store.root)
    assert await other.get_with_etag("meta/topics/orders.json") == (b"{}", etag)
    new = await other.put_if_match("meta/topics/orders.json", b"{1}", etag)
    with pytest.raises(PreconditionFailed):
        await fs_store.put_if_match("meta/topics/orders.json", b"{2}", etag)
    assert await fs_store.get_with_etag("meta/topics/orders.json") == (b"{1}", new)


async def test_localfs_delete_prunes_empty_directories(fs_store: LocalFSObjectStore) -> None:
    await fs_store.put("data/t/0/a.seg", b"a")
    await fs_store.put("data/t/1/b.seg", b"b")
    await fs_store.delete("data/t/0/a.seg")
    assert not Path(fs_store.root, "data", "t", "0").exists()
    assert Path(fs_store.root, "data", "t", "1").is_dir()
    await fs_store.delete_many(["data/t/1/b.seg"])
    assert sorted(os.listdir(fs_store.root)) == [".keel-locks"]
    await fs_store.put("data/t/0/a.seg", b"again")
    assert await fs_store.get("data/t/0/a.seg") == b"again"
    await fs_store.delete("data/t/0/a.seg")
    with pytest.raises(PreconditionFailed):
        await fs_store.put_if_match("meta/partitions/t/0.json", b"x", "etag")
    assert sorted(os.listdir(fs_store.root)) == [".keel-locks"]


async def test_localfs_key_cannot_be_both_object_and_directory(fs_store: LocalFSObjectStore) -> None:
    await fs_store.put("a/b", b"object")
    with pytest.raises(ObjectStoreError):
        await fs_store.put("a/b/c", b"x")
    await fs_store.put("x/y/z", b"object")
    with pytest.raises(ObjectStoreError):
        await fs_store.put("x/y", b"x")
    with pytest.raises(PreconditionFailed):  # not an object: CAS cannot match
        await fs_store.put_if_match("x/y", b"x", "etag")
    assert await fs_store.get("a/b") == b"object"
    assert [i.key for i in await fs_store.list("")] == ["a/b", "x/y/z"]


async def test_localfs_fsyncs_file_and_directory(
    fs_store: LocalFSObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import stat

    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    await fs_store.put("meta/cluster.json", b"v0")
    monkeypatch.setattr(os, "fsync", recording_fsync)
    await fs_store.put("meta/cluster.json", b"v1")
    assert synced == ["file", "dir"]


async def test_localfs_etags_stay_unique_when_the_clock_stands_still(
    fs_store: LocalFSObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = "meta/controller.json"
    path = Path(fs_store.root, "meta", "controller.json")
    await fs_store.put(key, b"lease")
    # The clock is frozen in the past: each write must still move the mtime (and the ETag) forward.
    monkeypatch.setattr(localfs, "time", SimpleNamespace(time_ns=lambda: 1_500_000_000_000_000_000))
    mtimes = [path.stat().st_mtime_ns]
    etags = []
    for _ in range(10):
        etags.append(await fs_store.put(key, b"lease"))
        mtimes.append(path.stat().st_mtime_ns)
    assert len(set(etags)) == len(etags)
    assert [b - a for a, b in itertools.pairwise(mtimes)] == [1] * 10


async def test_localfs_readers_never_see_partial_objects(fs_store: LocalFSObjectStore) -> None:
    key = "data/t/0/big.seg"
    bodies = [bytes([c]) * 512 * 1024 for c in b"ab"]
    await fs_store.put(key, bodies[0])
    done = False

    async def writer() -> None:
        nonlocal done
        for i in range(12):
            await fs_store.put(key, bodies[i % 2])
        done = True

    async def reader() -> int:
        reads = 0
        while not done:
            body, etag = await fs_store.get_with_etag(key)
            assert body in bodies
            reads += 1
        return reads

    results = await asyncio.gather(writer(), reader(), reader())
    assert sum(results[1:]) > 0


_CAS_WORKER = """
import asyncio, sys
from objectstore import localfs
from objectstore.base import PreconditionFailed
from objectstore.localfs import LocalFSObjectStore

async def main():
    store = LocalFSObjectStore(sys.argv[1])
    key, me = sys.argv[2], sys.argv[3]
    print("ready", flush=True)
    for line in sys.stdin:
        round_, etag = line.split()
        try:
            print("won", await store.put_if_match(key, f"{me}:{round_}".encode(), etag), flush=True)
        except PreconditionFailed:
            print("lost", flush=True)

asyncio.run(main())
"""


async def test_localfs_cas_race_across_processes(fs_store: LocalFSObjectStore) -> None:
    key = "meta/partitions/t/0.json"
    etag = await fs_store.put(key, b"start")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", _CAS_WORKER, fs_store.root, key, f"p{i}",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env,
        )
        for i in range(6)
    ]  # fmt: skip
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert await asyncio.wait_for(proc.stdout.readline(), 30) == b"ready\n"
        for round_ in range(10):
            for proc in procs:  # release all workers at (nearly) the same instant
                assert proc.stdin is not None
                proc.stdin.write(f"{round_} {etag}\n".encode())
            await asyncio.gather(*(p.stdin.drain() for p in procs if p.stdin))
            replies = [(await asyncio.wait_for(p.stdout.readline(), 30)).split() for p in procs if p.stdout]
            winners = [(i, r[1].decode()) for i, r in enumerate(replies) if r[0] == b"won"]
            assert len(winners) == 1, replies
            assert sum(r == [b"lost"] for r in replies) == len(procs) - 1
            winner, etag = winners[0]
            assert await fs_store.get_with_etag(key) == (f"p{winner}:{round_}".encode(), etag)
    finally:
        for proc in procs:
            if proc.stdin:
                proc.stdin.close()
        for proc in procs:
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
    assert all(p.returncode == 0 for p in procs)
