"""Tests of the file write-ahead log: round trips, group commit, rolling/trim, recovery, crash safety."""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import wal.file as wal_file
from objectstore.memory import MemoryObjectStore
from wal import FileWriteAheadLog, WalEntry, WalError
from wal.file import HEADER_SIZE, segment_name
from wal.reader import read_wal

REPO_ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(60)  # a broken writer hangs its callers; fail fast instead


def files_of(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".wal"))


async def reopen(directory: Path, **kwargs) -> tuple[FileWriteAheadLog, list[WalEntry]]:
    log = FileWriteAheadLog(directory, **kwargs)
    return log, await log.open()


async def test_round_trip_across_reopen(tmp_path: Path) -> None:
    log, entries = await reopen(tmp_path)
    assert entries == [] and log.next_position == 0
    payloads = [b"", b"a", b"hello world" * 100, bytes(range(256))]
    positions = [await log.append([p]) for p in payloads]
    multi = [b"head", bytearray(b"-mid-"), memoryview(b"xxtailxx")[2:6], b""]
    positions.append(await log.append(multi))
    payloads.append(b"head-mid-tail")
    assert positions == [0, 1, 2, 3, 4]
    assert log.next_position == 5
    await log.close()

    log, entries = await reopen(tmp_path)
    assert entries == [WalEntry(i, p) for i, p in enumerate(payloads)]
    assert log.next_position == 5
    assert await log.append([b"after"]) == 5
    await log.close()

    log, entries = await reopen(tmp_path)
    assert [e.position for e in entries] == list(range(6))
    assert entries[-1].payload == b"after"
    await log.close()


async def test_group_commit_batches_concurrent_appends(tmp_path: Path) -> None:
    log, _ = await reopen(tmp_path)
    payloads = [f"record-{i}".encode() * (i % 5 + 1) for i in range(200)]
    positions = await asyncio.gather(*(log.append([p]) for p in payloads))
    # Positions follow call order, are distinct and dense.
    assert positions == list(range(200))
    stats = log.stats
    assert stats["appends"] == 200
    assert stats["commits"] < 200 / 4, stats
    assert stats["fsyncs"] <= stats["commits"] + stats["files_created"]
    assert stats["max_batch"] > 4

    # A second wave arriving while a commit is in flight rides on the next commit.
    before = stats["commits"]
    first = asyncio.ensure_future(log.append([b"first"]))
    await asyncio.sleep(0)
    wave = [asyncio.ensure_future(log.append([f"w{i}".encode()])) for i in range(100)]
    results = await asyncio.gather(first, *wave)
    assert results == list(range(200, 301))
    assert log.stats["commits"] - before <= 3
    await log.close()

    _, entries = await reopen(tmp_path)
    assert [e.payload for e in entries[:200]] == payloads
    assert entries[200].payload == b"first"
    assert [e.payload for e in entries[201:]] == [f"w{i}".encode() for i in range(100)]


async def test_submit_assigns_positions_at_call_time(tmp_path: Path) -> None:
    log, _ = await reopen(tmp_path)
    futures = [log.submit([f"s{i}".encode()]) for i in range(20)]
    assert log.next_position == 20  # assigned synchronously, before anything ran
    later = asyncio.ensure_future(log.append([b"appended"]))
    # Awaiting in reverse order changes nothing.
    assert [await f for f in reversed(futures)] == list(reversed(range(20)))
    assert await later == 20
    await log.close()
    _, entries = await reopen(tmp_path)
    assert entries == [*(WalEntry(i, f"s{i}".encode()) for i in range(20)), WalEntry(20, b"appended")]


async def test_rolling_replay_and_trim(tmp_path: Path) -> None:
    log, _ = await reopen(tmp_path, segment_bytes=256)
    payloads = [bytes([i]) * 60 for i in range(40)]
    for i, p in enumerate(payloads):
        assert await log.append([p]) == i
    # A concurrent group spanning several files.
    more = [bytes([100 + i]) * 30 for i in range(30)]
    assert await asyncio.gather(*(log.append([p]) for p in more)) == list(range(40, 70))
    payloads += more
    await log.close()

    names = files_of(tmp_path)
    assert len(names) > 5
    starts = [int(n.removesuffix(".wal")) for n in names]
    assert starts[0] == 0
    # Each file is bounded by segment_bytes plus one entry.
    for name in names:
        assert (tmp_path / name).stat().st_size < 256 + HEADER_SIZE + 60

    log, entries = await reopen(tmp_path, segment_bytes=256)
    assert entries == [WalEntry(i, p) for i, p in enumerate(payloads)]
    # Every file is named after its first entry (recovery checks this) and the files tile the log.
    assert set(starts) <= {e.position for e in entries}

    await log.trim(21)
    remaining = [int(n.removesuffix(".wal")) for n in files_of(tmp_path)]
    assert len(remaining) < len(starts)
    assert remaining[0] <= 21
    assert remaining[0] == max(s for s in starts if s <= 21)
    assert log.stats["files_deleted"] == len(starts) - len(remaining)
    assert await log.append([b"x"]) == 70
    await log.close()

    log, entries = await reopen(tmp_path, segment_bytes=256)
    assert entries[0].position == remaining[0]
    assert entries == [WalEntry(i, p) for i, p in enumerate([*payloads, b"x"])][remaining[0] :]
    assert log.next_position == 71

    # Trimming past the end keeps the active file, and positions still survive a restart.
    await log.trim(10**9)
    assert len(files_of(tmp_path)) == 1
    await log.close()
    log, entries = await reopen(tmp_path, segment_bytes=256)
    assert entries[-1] == WalEntry(70, b"x")
    assert await log.append([b"y"]) == 71
    await log.close()


def _last_entry_offset(path: Path) -> int:
    data = path.read_bytes()
    offset = last = 0
    while offset < len(data):
        last = offset
        length = int.from_bytes(data[offset + 1 : offset + 5], "big")
        offset += HEADER_SIZE + length
    return last


def _flip(path: Path, index: int) -> None:
    data = bytearray(path.read_bytes())
    data[index] ^= 0x40
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "survivors", "warns"),
    [
        ("truncate_payload", 9, True),
        ("truncate_header", 9, True),
        ("flip_payload", 9, True),
        ("flip_position", 9, True),
        ("flip_length", 9, True),
        ("garbage", 10, True),
        ("zeros", 10, False),  # what preallocated space looks like: a clean end, not damage
        ("zeros_then_garbage", 10, True),
        ("stale_entry", 10, True),
    ],
)
async def test_torn_tail_is_truncated(tmp_path: Path, caplog, damage: str, survivors: int, warns: bool) -> None:
    log, _ = await reopen(tmp_path)
    payloads = [f"payload {i} ".encode() * 8 for i in range(10)]
    for p in payloads:
        await log.append([p])
    await log.close()
    path = tmp_path / segment_name(0)
    intact_size = path.stat().st_size
    last = _last_entry_offset(path)
    if damage == "truncate_payload":
        os.truncate(path, intact_size - 3)
    elif damage == "truncate_header":
        os.truncate(path, last + 5)
    elif damage == "flip_payload":
        _flip(path, intact_size - 10)
    elif damage == "flip_position":
        _flip(path, last + 12)
    elif damage == "flip_length":
        _flip(path, last + 4)
    elif damage == "garbage":
        with open(path, "ab") as f:
            f.write(b"\x13\x37 not an entry at all")
    elif damage == "zeros":
        with open(path, "ab") as f:
            f.write(bytes(4096))
    elif damage == "zeros_then_garbage":
        with open(path, "ab") as f:
            f.write(bytes(4096) + b"\x01")
    elif damage == "stale_entry":  # a valid entry whose position does not follow
        data = path.read_bytes()
        with open(path, "ab") as f:
            f.write(data[: HEADER_SIZE + len(payloads[0])])

    with caplog.at_level(logging.WARNING, logger="wal.file"):
        log, entries = await reopen(tmp_path)
    assert entries == [WalEntry(i, p) for i, p in enumerate(payloads[:survivors])]
    assert any("dropping" in r.getMessage() for r in caplog.records) == warns
    assert log.next_position == survivors
    assert await log.append([b"new"]) == survivors
    await log.close()

    log, entries = await reopen(tmp_path)
    assert entries == [WalEntry(i, p) for i, p in enumerate([*payloads[:survivors], b"new"])]
    assert log.next_position == survivors + 1
    await log.close()
    # Nothing of the damage is left behind.
    expected = sum(HEADER_SIZE + len(p) for p in [*payloads[:survivors], b"new"])
    assert path.stat().st_size == expected


@pytest.mark.parametrize("damage", ["corrupt_middle_file", "missing_middle_file"])
async def test_damage_before_later_files_quarantines_them(tmp_path: Path, caplog, damage: str) -> None:
    log, _ = await reopen(tmp_path, segment_bytes=100)
    for i in range(20):
        await log.append([bytes([i]) * 40])
    await log.close()
    names = files_of(tmp_path)
    assert len(names) >= 5
    victim = tmp_path / names[2]
    if damage == "corrupt_middle_file":
        _flip(victim, HEADER_SIZE + 3)  # first entry of the third file
        expect_end = int(names[2].removesuffix(".wal"))
        quarantined = names[3:]
    else:
        victim.unlink()
        expect_end = int(names[2].removesuffix(".wal"))
        quarantined = names[3:]

    with caplog.at_level(logging.WARNING, logger="wal.file"):
        log, entries = await reopen(tmp_path, segment_bytes=100)
    assert [e.position for e in entries] == list(range(expect_end))
    assert all(e.payload == bytes([e.position]) * 40 for e in entries)
    assert any(r.levelno >= logging.ERROR for r in caplog.records)
    for name in quarantined:
        assert not (tmp_path / name).exists()
        assert (tmp_path / (name + ".corrupt")).exists()
    assert await log.append([b"resumed"]) == expect_end
    await log.close()

    log, entries = await reopen(tmp_path, segment_bytes=100)
    assert entries[-1] == WalEntry(expect_end, b"resumed")
    assert log.next_position == expect_end + 1
    await log.close()


CRASH_SCRIPT = """
import asyncio, sys
from wal import FileWriteAheadLog

async def writer(log, n):
    i = 0
    while True:
        payload = f"{n}:{i}:".encode() * (1 + i % 9)
        position = await log.append([payload[:2], payload[2:]])
        sys.stdout.write(f"{position} {payload.hex()}\\n")
        sys.stdout.flush()
        i += 1

async def main():
    log = FileWriteAheadLog(sys.argv[1], segment_bytes=16384)
    await log.open()
    await asyncio.gather(*(writer(log, n) for n in range(16)))

asyncio.run(main())
"""


async def test_acknowledged_entries_survive_sigkill(tmp_path: Path) -> None:
    wal_dir = tmp_path / "wal"
    out_path = tmp_path / "acks.txt"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    with open(out_path, "wb") as out, open(tmp_path / "stderr.txt", "wb") as err:
        proc = subprocess.Popen([sys.executable, "-c", CRASH_SCRIPT, str(wal_dir)], stdout=out, stderr=err, env=env)
        try:
            deadline = time.monotonic() + 30
            while out_path.stat().st_size == 0:
                assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()
                assert time.monotonic() < deadline, "writer process never acknowledged anything"
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.5)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL

    acked: dict[int, bytes] = {}
    text = out_path.read_text()
    lines = text.split("\n")[:-1]  # the last piece may be a line cut short by the kill
    for line in lines:
        position, payload = line.split(" ")
        acked[int(position)] = bytes.fromhex(payload)
    assert len(acked) > 20

    log, entries = await reopen(wal_dir)
    replayed = {e.position: e.payload for e in entries}
    assert [e.position for e in entries] == list(range(len(entries)))
    for position, payload in acked.items():
        assert replayed.get(position) == payload, position
    assert await log.append([b"after crash"]) == len(entries)
    await log.close()


_buffers = st.binary(max_size=300).flatmap(
    lambda b: st.sampled_from([b, bytearray(b), memoryview(b), memoryview(b"<" + b + b">")[1:-1]])
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    entries=st.lists(st.lists(_buffers, max_size=5), max_size=30),
    segment_bytes=st.sampled_from([1, 64, 500, 1 << 20]),
    concurrent=st.booleans(),
    inline_bytes=st.sampled_from([0, 100, 1 << 20]),  # small groups written on the loop, larger on the thread
)
def test_hypothesis_round_trip(entries: list[list], segment_bytes: int, concurrent: bool, inline_bytes: int) -> None:
    expected = [b"".join(bytes(p) for p in parts) for parts in entries]

    async def scenario(directory: str) -> None:
        log, replay = await reopen(Path(directory), segment_bytes=segment_bytes, sync=False, inline_bytes=inline_bytes)
        assert replay == []
        if concurrent:
            positions = await asyncio.gather(*(log.append(parts) for parts in entries))
        else:
            positions = [await log.append(parts) for parts in entries]
        assert positions == list(range(len(entries)))
        await log.close()
        log, replay = await reopen(Path(directory), segment_bytes=segment_bytes, sync=False)
        assert replay == [WalEntry(i, p) for i, p in enumerate(expected)]
        assert log.next_position == len(entries)
        await log.close()

    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(scenario(directory))


@pytest.mark.parametrize("inline_bytes", [0, 1 << 20], ids=["writer-thread", "inline"])
@pytest.mark.parametrize("failing", ["fdatasync", "pwritev"])
async def test_write_or_sync_failure_is_fatal(tmp_path: Path, monkeypatch, failing: str, inline_bytes: int) -> None:
    log, _ = await reopen(tmp_path, inline_bytes=inline_bytes)
    assert await log.append([b"durable"]) == 0

    def broken(*args, **kwargs):
        raise OSError(errno.EIO, "simulated disk error")

    monkeypatch.setattr(wal_file.os, failing, broken)
    if failing == "fdatasync":
        monkeypatch.setattr(wal_file.os, "fsync", broken)
    results = await asyncio.gather(*(log.append([b"doomed"]) for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, WalError) for r in results), results
    monkeypatch.undo()
    # Never acknowledge after a failed write or fsync, even once the disk "recovers".
    with pytest.raises(WalError):
        await log.append([b"later"])
    await log.close()

    log, entries = await reopen(tmp_path)
    assert entries[0] == WalEntry(0, b"durable")
    assert all(e.payload == b"doomed" for e in entries[1:])
    await log.close()


async def test_partial_writes_and_iov_limit(tmp_path: Path, monkeypatch) -> None:
    calls = 0

    def short_pwritev(fd: int, buffers, offset: int) -> int:
        nonlocal calls
        calls += 1
        assert len(buffers) <= 1024
        head = b"".join(bytes(b) for b in buffers[:3])
        return os.pwrite(fd, head[: max(1, len(head) * 2 // 3)], offset)

    log, _ = await reopen(tmp_path)
    monkeypatch.setattr(wal_file.os, "pwritev", short_pwritev)
    many_parts = [bytes([i % 251, 7]) for i in range(3000)]
    results = await asyncio.gather(log.append([b"before"]), log.append(many_parts), log.append([b"after"]))
    assert results == [0, 1, 2]
    monkeypatch.undo()
    await log.close()
    assert calls > 3000 / 1024

    _, entries = await reopen(tmp_path)
    assert entries == [WalEntry(0, b"before"), WalEntry(1, b"".join(many_parts)), WalEntry(2, b"after")]


async def test_payload_not_retained_after_write(tmp_path: Path) -> None:
    class Buf(bytearray):
        pass

    log, _ = await reopen(tmp_path)
    buf = Buf(b"x" * 100_000)
    ref = weakref.ref(buf)
    await log.append([memoryview(buf)[10:]])
    del buf
    gc.collect()
    assert ref() is None
    await log.close()


async def test_close_flushes_pending_and_rejects_later_appends(tmp_path: Path) -> None:
    log, _ = await reopen(tmp_path)
    tasks = [asyncio.ensure_future(log.append([f"{i}".encode()])) for i in range(50)]
    await asyncio.sleep(0)  # the appends have started and hold positions
    await log.close()
    assert [t.result() for t in tasks] == list(range(50))
    with pytest.raises(WalError):
        await log.append([b"too late"])
    _, entries = await reopen(tmp_path)
    assert [e.payload for e in entries] == [f"{i}".encode() for i in range(50)]


async def test_cancelled_caller_entry_is_still_written(tmp_path: Path) -> None:
    log, _ = await reopen(tmp_path)
    task = asyncio.ensure_future(log.append([b"abandoned"]))
    await asyncio.sleep(0)
    task.cancel()
    assert await log.append([b"next"]) == 1
    await log.close()
    _, entries = await reopen(tmp_path)
    assert entries == [WalEntry(0, b"abandoned"), WalEntry(1, b"next")]


async def test_misuse_is_rejected(tmp_path: Path) -> None:
    log = FileWriteAheadLog(tmp_path)
    with pytest.raises(RuntimeError):
        await log.append([b"x"])
    await log.open()
    with pytest.raises(RuntimeError):
        await log.open()
    with pytest.raises(TypeError):
        await log.append(b"not a list of parts")  # type: ignore[arg-type]
    assert log.next_position == 0
    await log.close()


async def test_active_file_is_preallocated_and_cut_to_its_entries(tmp_path: Path) -> None:
    log, _ = await reopen(tmp_path, segment_bytes=3 * wal_file.PREALLOCATE_BYTES)
    payload = b"p" * 1000
    for _ in range(5):
        await log.append([payload])
    path = tmp_path / segment_name(0)
    entries_size = 5 * (HEADER_SIZE + len(payload))
    # Grown ahead of the writes, so an fdatasync seldom has a file size to commit.
    assert path.stat().st_size == wal_file.PREALLOCATE_BYTES
    big = b"b" * (wal_file.PREALLOCATE_BYTES + 10)
    await log.append([big])
    entries_size += HEADER_SIZE + len(big)
    assert path.stat().st_size == 2 * wal_file.PREALLOCATE_BYTES
    await log.close()
    assert path.stat().st_size == entries_size
    _, entries = await reopen(tmp_path)
    assert [e.payload for e in entries] == [payload] * 5 + [big]


async def test_rolled_files_hold_only_their_entries(tmp_path: Path) -> None:
    log, _ = await reopen(tmp_path, segment_bytes=4096)
    for i in range(40):
        await log.append([bytes([i]) * 500])
    names = files_of(tmp_path)
    assert len(names) > 3
    for name in names[:-1]:  # while the log is still open: only the active file has spare room
        data = (tmp_path / name).read_bytes()
        _end, _next, problem = wal_file.scan_entries(data, int(name.removesuffix(".wal")), [])
        assert problem is None, name
    assert (tmp_path / names[-1]).stat().st_size == wal_file.PREALLOCATE_BYTES
    await log.close()


async def test_crash_with_preallocated_tail_recovers_cleanly(tmp_path: Path, caplog) -> None:
    """A copy taken while the log is open is what a crash leaves: the active file ends in zeros."""
    live, crashed = tmp_path / "live", tmp_path / "crashed"
    log, _ = await reopen(live, segment_bytes=2048)
    payloads = [f"entry {i} ".encode() * 20 for i in range(30)]
    for p in payloads:
        await log.append([p])
    crashed.mkdir()
    for name in files_of(live):
        (crashed / name).write_bytes((live / name).read_bytes())
    await log.close()
    assert (crashed / files_of(crashed)[-1]).read_bytes().endswith(bytes(64))

    # Another broker's takeover reads such a log without touching it...
    read = await read_wal({"engine": "file", "path": str(crashed)}, MemoryObjectStore())
    assert read == [WalEntry(i, p) for i, p in enumerate(payloads)]
    # ...and recovery ends the log at the last entry without calling the zeros damage.
    with caplog.at_level(logging.WARNING, logger="wal.file"):
        log, entries = await reopen(crashed, segment_bytes=2048)
    assert entries == [WalEntry(i, p) for i, p in enumerate(payloads)]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert await log.append([b"after"]) == 30
    await log.close()
    _, entries = await reopen(crashed, segment_bytes=2048)
    assert entries[-1] == WalEntry(30, b"after") and len(entries) == 31


async def test_filesystem_without_fallocate(tmp_path: Path, monkeypatch) -> None:
    def refused(*args, **kwargs):
        raise OSError(errno.EOPNOTSUPP, "fallocate not supported")

    monkeypatch.setattr(wal_file.os, "posix_fallocate", refused)
    log, _ = await reopen(tmp_path)
    for i in range(3):
        assert await log.append([b"x" * (i + 1)]) == i
    assert (tmp_path / segment_name(0)).stat().st_size == sum(HEADER_SIZE + i + 1 for i in range(3))
    await log.close()
    _, entries = await reopen(tmp_path)
    assert [e.payload for e in entries] == [b"x", b"xx", b"xxx"]


async def test_a_preallocation_that_fails_half_way_leaves_no_zeros_in_rolled_files(tmp_path: Path, monkeypatch) -> None:
    """ENOSPC part-way through fallocate can leave the file longer than what was asked for before."""
    real = os.posix_fallocate

    def half_then_full(fd: int, offset: int, length: int) -> None:
        real(fd, offset, length // 2)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(wal_file.os, "posix_fallocate", half_then_full)
    log, _ = await reopen(tmp_path, segment_bytes=4096)
    for i in range(20):
        await log.append([bytes([i]) * 500])
    names = files_of(tmp_path)
    assert len(names) > 2
    for name in names[:-1]:
        data = (tmp_path / name).read_bytes()
        _end, _next, problem = wal_file.scan_entries(data, int(name.removesuffix(".wal")), [])
        assert problem is None, (name, problem)
    await log.close()
    read = await read_wal({"engine": "file", "path": str(tmp_path)}, MemoryObjectStore())
    assert [e.payload for e in read] == [bytes([i]) * 500 for i in range(20)]
