"""Micro benchmarks of record-batch handling on the produce path, and of CRC-32C.

``accept`` does what ``Broker.append`` does with a produced batch before the
WAL: validate the header (which checks the CRC-32C over the whole batch), copy
it, and assign the base offset and leader epoch -- and, for topics with
LogAppendTime, stamp the time, which recomputes the CRC.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import crc32c
import pytest

from protocol.records import (
    BatchHeader,
    assign_offsets,
    decode_records,
    validate_single_batch,
)

BatchFactory = Callable[..., bytes]
BASE_OFFSET = 123_456
LEADER_EPOCH = 7
APPEND_TIME = 1_800_000_000_000


def accept(data: bytes, log_append_time_ms: int | None) -> tuple[BatchHeader, bytearray]:
    header = validate_single_batch(data)
    batch = bytearray(data)
    assign_offsets(batch, BASE_OFFSET, log_append_time_ms=log_append_time_ms, partition_leader_epoch=LEADER_EPOCH)
    return header, batch


@pytest.mark.benchmark(group="records")
@pytest.mark.parametrize("log_append_time", [False, True], ids=["create-time", "log-append-time"])
@pytest.mark.parametrize("records", [1, 100])
def test_validate_and_assign_offsets(benchmark: Any, make_batch: BatchFactory, records: int,
                                     log_append_time: bool) -> None:
    """One produced batch of ``records`` records of 1 KiB each."""
    data = make_batch(records)
    append_time = APPEND_TIME if log_append_time else None

    header, batch = benchmark(accept, data, append_time)

    assert header.record_count == records and header.base_offset == 0
    placed = validate_single_batch(batch)  # still a valid batch: the CRC matches after the rewrite
    assert placed.base_offset == BASE_OFFSET and placed.partition_leader_epoch == LEADER_EPOCH
    assert placed.last_offset == BASE_OFFSET + records - 1
    assert (placed.crc == header.crc) == (not log_append_time)
    decoded = decode_records(batch)
    assert [r.offset for r in decoded] == list(range(BASE_OFFSET, BASE_OFFSET + records))
    original = decode_records(data)
    assert [r.value for r in decoded] == [r.value for r in original]
    if log_append_time:
        assert {r.timestamp for r in decoded} == {APPEND_TIME}
    else:
        assert [r.timestamp for r in decoded] == [r.timestamp for r in original]


def _crc32c_reference(data: bytes) -> int:
    """Bitwise-table CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), independent of the package."""
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    crc = 0xFFFFFFFF
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


@pytest.mark.benchmark(group="crc32c")
@pytest.mark.parametrize("size", [1024, 1024 * 1024], ids=["1KiB", "1MiB"])
def test_crc32c(benchmark: Any, size: int) -> None:
    data = os.urandom(size)
    benchmark.extra_info["hardware_based"] = crc32c.hardware_based

    crc = benchmark(crc32c.crc32c, data)

    assert _crc32c_reference(b"123456789") == 0xE3069283  # the standard check value
    assert crc == _crc32c_reference(data)
