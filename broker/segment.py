"""Keel's segment object format: one partition's record batches, a sparse index and a footer.

A segment object is written once by the flusher and then only read, mostly
with ranged GETs: the reader fetches the fixed-size footer from the end,
then the index (its range is in the footer), then just the body bytes a fetch
needs. Batches are stored exactly as they were produced (offsets assigned),
so a fetch serves body bytes without re-encoding anything.

Byte layout (all integers big endian)::

    body    batches, concatenated, offsets ascending           body_length bytes
    index   entries of 24 bytes:                               index_length bytes
              i64 base offset of the batch minus the segment base offset
              u64 position of the batch in the body
              i64 max timestamp of all batches *before* this one (i64 min for the first)
            one entry for the first batch, then one for the first batch that
            starts at least index_interval_bytes after the previous entry
    footer  FOOTER_SIZE (80) bytes at the very end:
              @0  8s  magic b"KEELSEG1"
              @8  u16 format version (1)
              @10 u16 index entry size (24)
              @12 i64 base offset (first batch's base offset)
              @20 i64 last offset (last batch's last offset)
              @28 i64 max timestamp over all batches
              @36 i64 batch count
              @44 i64 record count (sum of the batches' record counts)
              @52 u64 body length
              @60 u64 index length
              @68 u32 CRC-32C of the body
              @72 u32 CRC-32C of the index
              @76 u32 CRC-32C of footer bytes [0, 76)

The index finds the batch containing an offset (last entry whose base offset is
<= the offset, then scan forward) and the first batch whose max timestamp is
>= T (last entry whose "max before" is < T, then scan forward), which is what
Fetch and ListOffsets need.
"""

from __future__ import annotations

import struct
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from crc32c import crc32c

from protocol.records import BATCH_HEADER_SIZE, LOG_OVERHEAD, MAGIC, read_header

SEGMENT_MAGIC = b"KEELSEG1"
FORMAT_VERSION = 1
DEFAULT_INDEX_INTERVAL_BYTES = 64 * 1024

_ENTRY = struct.Struct(">qQq")
_FOOTER = struct.Struct(">8sHHqqqqqQQII")
_U32 = struct.Struct(">I")
_BATCH_PREFIX = struct.Struct(">qi")  # baseOffset, batchLength
_LAST_OFFSET_DELTA = struct.Struct(">i")
FOOTER_SIZE = _FOOTER.size + _U32.size
INDEX_ENTRY_SIZE = _ENTRY.size
_MIN_I64 = -(1 << 63)

assert FOOTER_SIZE == 80 and INDEX_ENTRY_SIZE == 24


class CorruptSegmentError(Exception):
    """The bytes are not a valid segment object (bad magic, CRC, or inconsistent lengths)."""


@dataclass(frozen=True, slots=True)
class SegmentFooter:
    base_offset: int
    last_offset: int
    max_timestamp: int
    batch_count: int
    record_count: int
    body_length: int
    index_length: int
    body_crc: int
    index_crc: int

    @property
    def index_start(self) -> int:
        """Position of the index in the object (it follows the body)."""
        return self.body_length

    @property
    def object_size(self) -> int:
        return self.body_length + self.index_length + FOOTER_SIZE

    @property
    def next_offset(self) -> int:
        return self.last_offset + 1

    def to_bytes(self) -> bytes:
        head = _FOOTER.pack(
            SEGMENT_MAGIC,
            FORMAT_VERSION,
            INDEX_ENTRY_SIZE,
            self.base_offset,
            self.last_offset,
            self.max_timestamp,
            self.batch_count,
            self.record_count,
            self.body_length,
            self.index_length,
            self.body_crc,
            self.index_crc,
        )
        return head + _U32.pack(crc32c(head))


def build_segment(
    batches: Sequence[bytes | bytearray | memoryview],
    *,
    index_interval_bytes: int = DEFAULT_INDEX_INTERVAL_BYTES,
    require_contiguous: bool = True,
) -> tuple[list[bytes | bytearray | memoryview], SegmentFooter]:
    """Lay out a segment; returns the parts to write in order (body batches, index, footer).

    Batches must be whole v2 batches with offsets assigned, in ascending offset
    order; with ``require_contiguous`` each must start right after the previous
    one's last offset. Batch CRCs are not re-checked (Produce validated them).
    """
    if not batches:
        raise ValueError("a segment needs at least one batch")
    if index_interval_bytes <= 0:
        raise ValueError("index_interval_bytes must be positive")
    base_offset = read_header(batches[0]).base_offset
    index = bytearray()
    body_crc = 0
    pos = 0
    last_indexed = -index_interval_bytes
    max_before = _MIN_I64
    max_timestamp = _MIN_I64
    record_count = 0
    next_offset: int | None = None
    for batch in batches:
        h = read_header(batch)
        if h.magic != MAGIC or h.size != len(batch) or h.size < BATCH_HEADER_SIZE:
            raise ValueError(f"not a single whole v2 batch at body position {pos}")
        if h.last_offset_delta < 0 or h.record_count < 0:
            raise ValueError(f"batch at body position {pos} has negative counts")
        if next_offset is not None and (
            h.base_offset < next_offset or (require_contiguous and h.base_offset != next_offset)
        ):
            raise ValueError(f"batch base offset {h.base_offset} does not follow offset {next_offset - 1}")
        if pos - last_indexed >= index_interval_bytes:
            index += _ENTRY.pack(h.base_offset - base_offset, pos, max_before)
            last_indexed = pos
        max_before = max(max_before, h.max_timestamp)
        max_timestamp = max_before
        record_count += h.record_count
        body_crc = crc32c(batch, body_crc)
        next_offset = h.base_offset + h.last_offset_delta + 1
        pos += h.size
    assert next_offset is not None
    index_bytes = bytes(index)
    footer = SegmentFooter(
        base_offset=base_offset,
        last_offset=next_offset - 1,
        max_timestamp=max_timestamp,
        batch_count=len(batches),
        record_count=record_count,
        body_length=pos,
        index_length=len(index_bytes),
        body_crc=body_crc,
        index_crc=crc32c(index_bytes),
    )
    return [*batches, index_bytes, footer.to_bytes()], footer


def parse_footer(tail: Any, *, object_size: int | None = None) -> SegmentFooter:
    """Parse the footer from the last FOOTER_SIZE bytes of ``tail``.

    With ``object_size`` the lengths in the footer are checked against it too.
    """
    if len(tail) < FOOTER_SIZE:
        raise CorruptSegmentError(f"segment tail of {len(tail)} bytes is shorter than the footer")
    raw = bytes(memoryview(tail)[len(tail) - FOOTER_SIZE :])
    head = raw[: _FOOTER.size]
    (
        magic,
        version,
        entry_size,
        base,
        last,
        max_ts,
        batches,
        records,
        body_len,
        index_len,
        body_crc,
        index_crc,
    ) = _FOOTER.unpack(head)
    if magic != SEGMENT_MAGIC:
        raise CorruptSegmentError("bad segment magic")
    if _U32.unpack_from(raw, _FOOTER.size)[0] != crc32c(head):
        raise CorruptSegmentError("segment footer CRC mismatch")
    if version != FORMAT_VERSION or entry_size != INDEX_ENTRY_SIZE:
        raise CorruptSegmentError(f"unsupported segment format version {version}")
    if (
        batches < 1
        or records < 0
        or last < base
        or body_len < batches * BATCH_HEADER_SIZE
        or index_len < INDEX_ENTRY_SIZE
        or index_len % INDEX_ENTRY_SIZE
    ):
        raise CorruptSegmentError("segment footer fields are inconsistent")
    footer = SegmentFooter(base, last, max_ts, batches, records, body_len, index_len, body_crc, index_crc)
    if object_size is not None and object_size != footer.object_size:
        raise CorruptSegmentError(f"segment is {object_size} bytes, footer says {footer.object_size}")
    return footer


def verify_body(body: Any, footer: SegmentFooter) -> None:
    if len(body) != footer.body_length:
        raise CorruptSegmentError(f"segment body is {len(body)} bytes, footer says {footer.body_length}")
    if crc32c(body) != footer.body_crc:
        raise CorruptSegmentError("segment body CRC mismatch")


class SegmentIndex:
    """The parsed sparse index: sorted base offsets, body positions and max-before timestamps."""

    __slots__ = ("offsets", "positions", "max_before", "body_length")

    def __init__(self, offsets: list[int], positions: list[int], max_before: list[int], body_length: int):
        self.offsets = offsets
        self.positions = positions
        self.max_before = max_before
        self.body_length = body_length

    @classmethod
    def parse(cls, data: Any, footer: SegmentFooter) -> SegmentIndex:
        if len(data) != footer.index_length:
            raise CorruptSegmentError(
                f"segment index is {len(data)} bytes, footer says {footer.index_length}"
            )
        if crc32c(data) != footer.index_crc:
            raise CorruptSegmentError("segment index CRC mismatch")
        base = footer.base_offset
        offsets: list[int] = []
        positions: list[int] = []
        max_before: list[int] = []
        for delta, pos, ts in _ENTRY.iter_unpack(data):
            if positions and (pos <= positions[-1] or delta + base <= offsets[-1] or ts < max_before[-1]):
                raise CorruptSegmentError("segment index entries are not ascending")
            offsets.append(base + delta)
            positions.append(pos)
            max_before.append(ts)
        if positions[0] != 0 or offsets[0] != base or positions[-1] >= footer.body_length:
            raise CorruptSegmentError("segment index does not match the body")
        return cls(offsets, positions, max_before, footer.body_length)

    def __len__(self) -> int:
        return len(self.positions)

    def position_for_offset(self, offset: int) -> int:
        """Body position of the last indexed batch at or before the batch containing ``offset``."""
        i = bisect_right(self.offsets, offset) - 1
        return self.positions[i if i > 0 else 0]

    def position_range_for_offset(self, offset: int) -> tuple[int, int]:
        """``(start, end)``: the batch containing ``offset`` begins in the body range [start, end)."""
        i = bisect_right(self.offsets, offset)
        start = self.positions[i - 1 if i > 0 else 0]
        end = self.positions[i] if i < len(self.positions) else self.body_length
        return start, end

    def position_for_timestamp(self, timestamp: int) -> int:
        """Body position to scan from for the first batch whose max timestamp is >= ``timestamp``.

        If no batch qualifies (``timestamp`` > the footer's max timestamp) the scan
        from here finds nothing; callers may check the footer first.
        """
        i = bisect_left(self.max_before, timestamp) - 1
        return self.positions[i if i > 0 else 0]


class BatchSpan(NamedTuple):
    """Result of :func:`find_batches`, in body positions."""

    start: int  # first batch whose last offset >= the fetch offset, or where the scan stopped
    end: int  # just after the last whole batch to serve; == start when nothing is served
    need: int  # > 0: the chunk ended too early; read at least this many bytes at `start` and retry


def find_batches(
    chunk: Any, offset: int, max_bytes: int, *, chunk_pos: int = 0, min_one: bool = True
) -> BatchSpan:
    """Pick the whole batches of ``chunk`` to serve for a fetch at ``offset``.

    ``chunk`` is body bytes starting at a batch boundary (e.g. an index position),
    ``chunk_pos`` its position in the body. Batches ending before ``offset`` are
    skipped; then whole batches are taken while they fit in ``max_bytes``. With
    ``min_one`` (KIP-74) the first batch is served even if it alone exceeds
    ``max_bytes``. ``need > 0`` means the chunk did not reach far enough (when
    ``start`` equals the body length, the offset is past this segment).
    """
    n = len(chunk)
    pos = 0
    start = -1
    unpack_prefix = _BATCH_PREFIX.unpack_from
    unpack_delta = _LAST_OFFSET_DELTA.unpack_from
    while n - pos >= BATCH_HEADER_SIZE:
        base, length = unpack_prefix(chunk, pos)
        size = length + LOG_OVERHEAD
        if size < BATCH_HEADER_SIZE:
            raise CorruptSegmentError(f"batch at body position {chunk_pos + pos} declares length {length}")
        if start < 0:
            if base + unpack_delta(chunk, pos + 23)[0] < offset:
                pos += size
                continue
            start = pos
            if size > n - pos:
                return BatchSpan(chunk_pos + pos, chunk_pos + pos, size)
            if size > max_bytes and not min_one:
                return BatchSpan(chunk_pos + pos, chunk_pos + pos, 0)
        elif size > n - pos or pos + size - start > max_bytes:
            break
        pos += size
    if start < 0:
        return BatchSpan(chunk_pos + pos, chunk_pos + pos, BATCH_HEADER_SIZE)
    return BatchSpan(chunk_pos + start, chunk_pos + pos, 0)


def open_segment(data: Any) -> tuple[SegmentFooter, SegmentIndex, memoryview]:
    """Parse and fully verify a whole segment object held in memory; returns the body as a view."""
    view = memoryview(data).cast("B")
    footer = parse_footer(view, object_size=len(view))
    index = SegmentIndex.parse(view[footer.index_start : footer.index_start + footer.index_length], footer)
    body = view[: footer.body_length]
    verify_body(body, footer)
    return footer, index, body
