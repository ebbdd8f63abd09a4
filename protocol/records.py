"""Kafka RecordBatch v2 (magic 2), handled as opaque bytes.

The broker stores batches exactly as producers sent them. On the hot path it
only needs the fixed 61-byte header: validate a produced batch (magic, size,
CRC-32C, counts), rewrite the base offset (outside the CRC, so no CRC work),
optionally stamp LogAppendTime (inside the CRC, so the CRC is recomputed), and
walk consecutive batches in a buffer. None of that touches individual records.

Decoding and building records (:func:`decode_records`, :func:`build_batch`)
are for tools, tests and benchmarks only.

Header layout (big endian)::

    @0  baseOffset            i64
    @8  batchLength           i32   bytes after this field
    @12 partitionLeaderEpoch  i32
    @16 magic                 i8    2
    @17 crc                   u32   CRC-32C of bytes [21, end of batch)
    @21 attributes            i16   bits 0-2 codec, 3 LogAppendTime, 4 transactional, 5 control
    @23 lastOffsetDelta       i32
    @27 baseTimestamp         i64
    @35 maxTimestamp          i64
    @43 producerId            i64
    @51 producerEpoch         i16
    @53 baseSequence          i32
    @57 recordCount           i32
    @61 records (compressed as a whole when the codec is not 0)
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from crc32c import crc32c

from protocol import compression as codecs

BATCH_HEADER_SIZE = 61
LOG_OVERHEAD = 12  # baseOffset + batchLength: the part of a batch not counted in batchLength
MAGIC = 2

CORRUPT_MESSAGE = 2
INVALID_RECORD = 87

NO_PRODUCER_ID = -1
NO_PRODUCER_EPOCH = -1
NO_SEQUENCE = -1
NO_PARTITION_LEADER_EPOCH = -1
NO_TIMESTAMP = -1

COMPRESSION_MASK = 0x07
TIMESTAMP_TYPE_MASK = 0x08
TRANSACTIONAL_MASK = 0x10
CONTROL_MASK = 0x20

CREATE_TIME = 0
LOG_APPEND_TIME = 1

MAGIC_POS = 16
CRC_POS = 17
ATTRIBUTES_POS = 21
MAX_TIMESTAMP_POS = 35

_HEADER = struct.Struct(">qiibIhiqqqhii")
_I64 = struct.Struct(">q")
_I32 = struct.Struct(">i")
_U32 = struct.Struct(">I")
_I16 = struct.Struct(">h")
_MIN_RECORD_SIZE = 7  # one byte each: length, attributes, ts delta, offset delta, key len, value len, headers
_INT31 = 1 << 31

assert _HEADER.size == BATCH_HEADER_SIZE


class InvalidRecordError(ValueError):
    """A batch that must be rejected; ``error_code`` is the Kafka error code to answer with."""

    def __init__(self, message: str, error_code: int = INVALID_RECORD) -> None:
        super().__init__(message)
        self.error_code = error_code


def _corrupt(message: str) -> InvalidRecordError:
    return InvalidRecordError(message, CORRUPT_MESSAGE)


class BatchHeader(NamedTuple):
    """The fixed header of one v2 batch, in wire order."""

    base_offset: int
    batch_length: int
    partition_leader_epoch: int
    magic: int
    crc: int
    attributes: int
    last_offset_delta: int
    base_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    record_count: int

    @property
    def compression(self) -> int:
        return self.attributes & COMPRESSION_MASK

    @property
    def timestamp_type(self) -> int:
        return LOG_APPEND_TIME if self.attributes & TIMESTAMP_TYPE_MASK else CREATE_TIME

    @property
    def is_transactional(self) -> bool:
        return bool(self.attributes & TRANSACTIONAL_MASK)

    @property
    def is_control(self) -> bool:
        return bool(self.attributes & CONTROL_MASK)

    @property
    def size(self) -> int:
        """Total bytes of the batch on the wire."""
        return self.batch_length + LOG_OVERHEAD

    @property
    def last_offset(self) -> int:
        return self.base_offset + self.last_offset_delta

    @property
    def next_offset(self) -> int:
        return self.base_offset + self.last_offset_delta + 1

    @property
    def last_sequence(self) -> int:
        """Sequence number of the last record; wraps to 0 after 2**31-1, as Kafka does."""
        if self.base_sequence == NO_SEQUENCE:
            return NO_SEQUENCE
        return (self.base_sequence + self.last_offset_delta) % _INT31


_unpack_header = _HEADER.unpack_from
_new_header = tuple.__new__


def read_header(buf: Any, pos: int = 0) -> BatchHeader:
    """Parse the header at ``pos``; only checks that 61 bytes are there."""
    if len(buf) - pos < BATCH_HEADER_SIZE or pos < 0:
        raise _corrupt("record batch header truncated")
    return _new_header(BatchHeader, _unpack_header(buf, pos))


def validate_single_batch(buf: Any, *, allow_control: bool = False) -> BatchHeader:
    """Check that ``buf`` is exactly one well-formed v2 batch, as a Produce request must carry.

    Raises :class:`InvalidRecordError` with CORRUPT_MESSAGE for a bad CRC or sizes
    that do not add up, INVALID_RECORD for anything that is well framed but not
    acceptable (wrong magic, several batches, bad counts, unknown codec, control
    batches from a client).
    """
    n = len(buf)
    if n <= MAGIC_POS:
        raise _corrupt(f"record set of {n} bytes is too short for a batch")
    magic = buf[MAGIC_POS]
    if magic != MAGIC:
        raise InvalidRecordError(f"unsupported record batch magic {magic}")
    h = read_header(buf)
    size = h.batch_length + LOG_OVERHEAD
    if size < BATCH_HEADER_SIZE:
        raise _corrupt(f"batch length {h.batch_length} is smaller than the batch header")
    if size > n:
        raise _corrupt(f"batch of {size} bytes truncated to {n}")
    if size < n:
        rest = n - size
        if rest >= LOG_OVERHEAD and _I32.unpack_from(buf, size + 8)[0] + LOG_OVERHEAD <= rest:
            raise InvalidRecordError("exactly one record batch per partition is expected")
        raise _corrupt(f"{rest} trailing bytes after the record batch")
    if crc32c(memoryview(buf)[ATTRIBUTES_POS:size]) != h.crc:
        raise _corrupt("record batch CRC mismatch")
    count = h.record_count
    if count <= 0:
        raise InvalidRecordError(f"record count {count} must be positive")
    if h.last_offset_delta < count - 1:
        raise InvalidRecordError(f"last offset delta {h.last_offset_delta} too small for {count} records")
    codec = h.attributes & COMPRESSION_MASK
    if codec > codecs.ZSTD:
        raise InvalidRecordError(f"unknown compression codec {codec}")
    if codec == codecs.NONE and count > (size - BATCH_HEADER_SIZE) // _MIN_RECORD_SIZE:
        raise InvalidRecordError(f"record count {count} cannot fit in {size - BATCH_HEADER_SIZE} bytes")
    if h.attributes & CONTROL_MASK and not allow_control:
        raise InvalidRecordError("clients may not produce control batches")
    return h


def assign_offsets(
    batch: bytearray | memoryview,
    base_offset: int,
    *,
    log_append_time_ms: int | None = None,
    partition_leader_epoch: int | None = None,
) -> None:
    """Rewrite, in place, the fields the broker owns.

    ``baseOffset`` and ``partitionLeaderEpoch`` lie outside the CRC. When
    ``log_append_time_ms`` is given the batch becomes a LogAppendTime batch: the
    timestamp-type bit is set and ``maxTimestamp`` holds the append time (consumers
    then report it for every record); both lie inside the CRC, which is recomputed.
    """
    _I64.pack_into(batch, 0, base_offset)
    if partition_leader_epoch is not None:
        _I32.pack_into(batch, 12, partition_leader_epoch)
    if log_append_time_ms is not None:
        (attributes,) = _I16.unpack_from(batch, ATTRIBUTES_POS)
        _I16.pack_into(batch, ATTRIBUTES_POS, attributes | TIMESTAMP_TYPE_MASK)
        _I64.pack_into(batch, MAX_TIMESTAMP_POS, log_append_time_ms)
        (batch_length,) = _I32.unpack_from(batch, 8)
        crc = crc32c(memoryview(batch)[ATTRIBUTES_POS : batch_length + LOG_OVERHEAD])
        _U32.pack_into(batch, CRC_POS, crc)


def iter_batch_headers(buf: Any, start: int = 0) -> Iterator[tuple[int, BatchHeader]]:
    """Yield ``(position, header)`` for consecutive batches, stopping at a partial trailing batch.

    A declared length too small to hold a header means the bytes are not batches
    at all: that raises CORRUPT_MESSAGE rather than looping or guessing.
    """
    pos = start
    end = len(buf)
    while end - pos >= BATCH_HEADER_SIZE:
        h = _new_header(BatchHeader, _unpack_header(buf, pos))
        size = h.batch_length + LOG_OVERHEAD
        if size < BATCH_HEADER_SIZE:
            raise _corrupt(f"batch at position {pos} declares length {h.batch_length}")
        if size > end - pos:
            return
        yield pos, h
        pos += size


# --- records: for tools and tests only -------------------------------------------------------------


@dataclass(slots=True)
class Record:
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]] = field(default_factory=list)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise _corrupt("varint runs past the end of the records")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7
        if shift > 63:
            raise _corrupt("varint longer than 10 bytes")


def _read_bytes(buf: bytes, pos: int) -> tuple[bytes | None, int]:
    length, pos = _read_varint(buf, pos)
    if length < 0:
        return None, pos
    end = pos + length
    if end > len(buf):
        raise _corrupt("record field runs past the end of the records")
    return buf[pos:end], end


def decode_records(batch: Any) -> list[Record]:
    """Decompress a batch and parse its records (slow; never used on the broker's hot path)."""
    h = read_header(batch)
    if h.magic != MAGIC:
        raise InvalidRecordError(f"unsupported record batch magic {h.magic}")
    size = h.size
    if size < BATCH_HEADER_SIZE or size > len(batch):
        raise _corrupt("batch length does not match the buffer")
    payload = bytes(memoryview(batch)[BATCH_HEADER_SIZE:size])
    if h.compression:
        try:
            payload = codecs.decompress(h.compression, payload)
        except codecs.CompressionError as exc:
            raise _corrupt(str(exc)) from exc
    log_append = h.timestamp_type == LOG_APPEND_TIME
    records = []
    pos = 0
    for _ in range(h.record_count):
        length, pos = _read_varint(payload, pos)
        end = pos + length
        if length < _MIN_RECORD_SIZE - 1 or end > len(payload):
            raise _corrupt("record length out of bounds")
        pos += 1  # record attributes: unused
        ts_delta, pos = _read_varint(payload, pos)
        offset_delta, pos = _read_varint(payload, pos)
        key, pos = _read_bytes(payload, pos)
        value, pos = _read_bytes(payload, pos)
        count, pos = _read_varint(payload, pos)
        if count < 0:
            raise _corrupt("negative header count")
        headers: list[tuple[str, bytes | None]] = []
        for _ in range(count):
            hkey, pos = _read_bytes(payload, pos)
            if hkey is None:
                raise _corrupt("null header key")
            hvalue, pos = _read_bytes(payload, pos)
            try:
                headers.append((hkey.decode("utf-8"), hvalue))
            except UnicodeDecodeError as exc:
                raise _corrupt("header key is not UTF-8") from exc
        if pos != end:
            raise _corrupt("record length does not match its fields")
        timestamp = h.max_timestamp if log_append else h.base_timestamp + ts_delta
        records.append(Record(h.base_offset + offset_delta, timestamp, key, value, headers))
    if pos != len(payload):
        raise _corrupt("bytes left over after the last record")
    return records


def _write_varint(out: bytearray, value: int) -> None:
    v = (value << 1) ^ (value >> 63)
    while v > 0x7F:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)


def _write_bytes(out: bytearray, data: bytes | bytearray | memoryview | None) -> None:
    if data is None:
        out.append(1)  # zigzag(-1)
    else:
        _write_varint(out, len(data))
        out += data


def _fields(item: Any) -> tuple[Any, Any, Any]:
    if isinstance(item, tuple):
        return item[0], item[1], item[2] if len(item) > 2 else ()
    return item.key, item.value, item.headers


def build_batch(
    records: Sequence[Any],
    *,
    base_offset: int = 0,
    base_timestamp: int | None = None,
    compression: int = 0,
    producer_id: int = NO_PRODUCER_ID,
    producer_epoch: int = NO_PRODUCER_EPOCH,
    base_sequence: int = NO_SEQUENCE,
    timestamps: Sequence[int] | None = None,
    offset_deltas: Sequence[int] | None = None,
    is_transactional: bool = False,
    is_control: bool = False,
    partition_leader_epoch: int = NO_PARTITION_LEADER_EPOCH,
) -> bytes:
    """Build a correct v2 batch (for tests, benchmarks and tools).

    ``records`` holds ``(key, value, headers)`` tuples (headers may be omitted) or
    objects with ``key``, ``value`` and ``headers`` attributes. Timestamps default
    to ``base_timestamp`` (itself defaulting to the first of ``timestamps``, else
    now); offset deltas default to 0, 1, 2, ...
    """
    n = len(records)
    if n == 0:
        raise ValueError("a batch needs at least one record")
    if timestamps is not None and len(timestamps) != n:
        raise ValueError("one timestamp per record is needed")
    if offset_deltas is not None and len(offset_deltas) != n:
        raise ValueError("one offset delta per record is needed")
    if base_timestamp is None:
        base_timestamp = timestamps[0] if timestamps else int(time.time() * 1000)
    body = bytearray()
    rec = bytearray()
    for i, item in enumerate(records):
        key, value, headers = _fields(item)
        rec.clear()
        rec.append(0)
        _write_varint(rec, (timestamps[i] if timestamps else base_timestamp) - base_timestamp)
        _write_varint(rec, offset_deltas[i] if offset_deltas else i)
        _write_bytes(rec, key)
        _write_bytes(rec, value)
        _write_varint(rec, len(headers))
        for hkey, hvalue in headers:
            _write_bytes(rec, hkey.encode("utf-8"))
            _write_bytes(rec, hvalue)
        _write_varint(body, len(rec))
        body += rec
    payload = codecs.compress(compression, body) if compression else bytes(body)
    attributes = compression & COMPRESSION_MASK
    if is_transactional:
        attributes |= TRANSACTIONAL_MASK
    if is_control:
        attributes |= CONTROL_MASK
    last_offset_delta = offset_deltas[-1] if offset_deltas else n - 1
    max_timestamp = max(timestamps) if timestamps else base_timestamp
    out = bytearray(BATCH_HEADER_SIZE)
    _HEADER.pack_into(
        out,
        0,
        base_offset,
        BATCH_HEADER_SIZE - LOG_OVERHEAD + len(payload),
        partition_leader_epoch,
        MAGIC,
        0,
        attributes,
        last_offset_delta,
        base_timestamp,
        max_timestamp,
        producer_id,
        producer_epoch,
        base_sequence,
        n,
    )
    out += payload
    _U32.pack_into(out, CRC_POS, crc32c(memoryview(out)[ATTRIBUTES_POS:]))
    return bytes(out)
