"""RecordBatch v2 handling and compression codecs, cross-checked against independent implementations.

kafka-python's record reader/builder and the lz4, zstandard and python-snappy
libraries serve as oracles: they share no code with protocol/.
"""

from __future__ import annotations

import gzip
import struct

import lz4.frame
import pytest
import snappy
import zstandard
from crc32c import crc32c
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka import codec as kcodec
from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder

from protocol import compression
from protocol.records import (
    BATCH_HEADER_SIZE,
    CORRUPT_MESSAGE,
    INVALID_RECORD,
    LOG_APPEND_TIME,
    InvalidRecordError,
    Record,
    assign_offsets,
    build_batch,
    decode_records,
    iter_batch_headers,
    read_header,
    validate_single_batch,
)

CODECS = [compression.NONE, compression.GZIP, compression.SNAPPY, compression.LZ4, compression.ZSTD]

fast = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

opt_bytes = st.none() | st.binary(max_size=300)
headers_st = st.lists(st.tuples(st.text(max_size=20), opt_bytes), max_size=4)
record_st = st.tuples(opt_bytes, opt_bytes, headers_st)
records_st = st.lists(record_st, min_size=1, max_size=25)
timestamp_st = st.integers(min_value=0, max_value=2**42)


def _as_tuples(records: list[Record]) -> list[tuple]:
    return [(r.key, r.value, r.headers) for r in records]


def _norm(records: list[tuple]) -> list[tuple]:
    return [(k, v, list(h)) for k, v, h in records]


def _reseal(buf: bytearray) -> bytearray:
    """Recompute the CRC after a test edits a field inside it."""
    struct.pack_into(">I", buf, 17, crc32c(memoryview(buf)[21:]))
    return buf


def _code(buf) -> int:
    with pytest.raises(InvalidRecordError) as info:
        validate_single_batch(buf)
    return info.value.error_code


# --- round trips ----------------------------------------------------------------------------------


@fast
@given(
    records=records_st,
    codec=st.sampled_from(CODECS),
    base_offset=st.integers(min_value=0, max_value=2**62),
    ts=st.data(),
    producer=st.tuples(st.integers(0, 2**62), st.integers(0, 2**15 - 1), st.integers(0, 2**31 - 1)),
)
def test_build_validate_decode_round_trip(records, codec, base_offset, ts, producer):
    timestamps = ts.draw(st.none() | st.lists(timestamp_st, min_size=len(records), max_size=len(records)))
    pid, epoch, seq = producer
    batch = build_batch(
        records,
        base_offset=base_offset,
        base_timestamp=None if timestamps else 1_700_000_000_000,
        compression=codec,
        producer_id=pid,
        producer_epoch=epoch,
        base_sequence=seq,
        timestamps=timestamps,
    )
    h = validate_single_batch(batch)
    assert h.size == len(batch)
    assert h.compression == codec
    assert h.record_count == len(records)
    assert h.last_offset_delta == len(records) - 1
    assert h.last_offset == base_offset + len(records) - 1
    assert (h.producer_id, h.producer_epoch, h.base_sequence) == (pid, epoch, seq)
    assert h.last_sequence == (seq + len(records) - 1) % 2**31
    assert not h.is_transactional and not h.is_control and h.timestamp_type == 0
    expected_ts = timestamps or [1_700_000_000_000] * len(records)
    assert h.max_timestamp == max(expected_ts)
    assert h.base_timestamp == expected_ts[0]
    decoded = decode_records(batch)
    assert _as_tuples(decoded) == _norm(records)
    assert [r.offset for r in decoded] == list(range(base_offset, base_offset + len(records)))
    assert [r.timestamp for r in decoded] == expected_ts


def test_record_objects_and_flags_are_accepted():
    recs = [Record(0, 0, b"k", b"v", [("a", None)]), Record(0, 0, None, b"", [])]
    batch = build_batch(
        recs, base_timestamp=5, is_transactional=True, producer_id=7, producer_epoch=1, base_sequence=0
    )
    h = validate_single_batch(batch)
    assert h.is_transactional
    assert _as_tuples(decode_records(batch)) == [(b"k", b"v", [("a", None)]), (None, b"", [])]
    control = build_batch([(b"\x00\x00\x00\x01", b"\x00\x00\x00\x00\x00\x00", [])], is_control=True)
    assert _code(control) == INVALID_RECORD
    assert validate_single_batch(control, allow_control=True).is_control


def test_compacted_batch_with_offset_gaps():
    batch = build_batch([(b"a", b"1", []), (b"b", b"2", [])], offset_deltas=[0, 5], base_offset=100)
    h = validate_single_batch(batch)
    assert (h.record_count, h.last_offset_delta, h.last_offset) == (2, 5, 105)
    assert [r.offset for r in decode_records(batch)] == [100, 105]


# --- kafka-python as an oracle, both directions ---------------------------------------------------


@fast
@given(records=records_st, codec=st.sampled_from(CODECS), base_offset=st.integers(0, 2**40))
def test_kafka_python_reads_our_batches(records, codec, base_offset):
    timestamps = [1_000 + 7 * i for i in range(len(records))]
    batch = build_batch(
        records,
        base_offset=base_offset,
        compression=codec,
        timestamps=timestamps,
        producer_id=3,
        producer_epoch=2,
        base_sequence=11,
    )
    theirs = DefaultRecordBatch(batch)
    assert theirs.validate_crc()
    assert theirs.compression_type == codec
    assert (theirs.base_offset, theirs.last_offset) == (base_offset, base_offset + len(records) - 1)
    assert (theirs.producer_id, theirs.producer_epoch, theirs.base_sequence) == (3, 2, 11)
    got = [(r.offset, r.timestamp, r.key, r.value, list(r.headers)) for r in theirs]
    want = [(base_offset + i, timestamps[i], k, v, list(h)) for i, (k, v, h) in enumerate(records)]
    assert got == want


def _kafka_python_batch(records, codec, timestamps, pid=-1, epoch=-1, seq=-1, txn=False):
    builder = DefaultRecordBatchBuilder(2, codec, txn, pid, epoch, seq, batch_size=1 << 30)
    for i, (k, v, h) in enumerate(records):
        assert builder.append(i, timestamps[i], k, v, h) is not None
    return bytes(builder.build())


@fast
@given(records=records_st, codec=st.sampled_from(CODECS), data=st.data())
def test_we_read_kafka_python_batches(records, codec, data):
    timestamps = data.draw(st.lists(timestamp_st, min_size=len(records), max_size=len(records)))
    batch = _kafka_python_batch(records, codec, timestamps, pid=42, epoch=0, seq=2**31 - 2)
    h = validate_single_batch(batch)
    # kafka-python sends uncompressed when compression does not pay off
    assert h.compression in (codec, compression.NONE)
    assert h.record_count == len(records)
    assert h.max_timestamp == max(timestamps)
    assert h.last_sequence == DefaultRecordBatch(batch).last_sequence
    decoded = decode_records(batch)
    assert _as_tuples(decoded) == _norm(records)
    assert [r.timestamp for r in decoded] == timestamps
    assert [r.offset for r in decoded] == list(range(len(records)))


def test_kafka_python_compressed_batches_for_every_codec():
    records = [(b"key-%d" % i, b"value " * 50, [("h", b"x")]) for i in range(20)]
    for codec in CODECS:
        batch = _kafka_python_batch(records, codec, list(range(20)))
        assert validate_single_batch(batch).compression == codec
        assert _as_tuples(decode_records(batch)) == records


def test_last_sequence_wraps_like_kafka():
    batch = build_batch([(None, b"x", [])] * 5, producer_id=1, producer_epoch=0, base_sequence=2**31 - 3)
    h = read_header(batch)
    assert h.last_sequence == 1 == DefaultRecordBatch(batch).last_sequence
    assert read_header(build_batch([(None, b"x", [])])).last_sequence == -1


# --- offset assignment and LogAppendTime ----------------------------------------------------------


@fast
@given(
    records=records_st,
    codec=st.sampled_from(CODECS),
    new_base=st.integers(0, 2**63 - 2**20),
    epoch=st.none() | st.integers(0, 2**31 - 1),
)
def test_assign_offsets_keeps_crc(records, codec, new_base, epoch):
    original = build_batch(records, compression=codec, base_timestamp=123)
    batch = bytearray(original)
    assign_offsets(batch, new_base, partition_leader_epoch=epoch)
    assert batch[17:] == original[17:]  # CRC and everything it covers untouched
    h = validate_single_batch(batch)
    assert h.base_offset == new_base
    assert h.partition_leader_epoch == (-1 if epoch is None else epoch)
    assert [r.offset for r in decode_records(batch)] == list(range(new_base, new_base + len(records)))
    assert DefaultRecordBatch(bytes(batch)).validate_crc()


@fast
@given(records=records_st, codec=st.sampled_from(CODECS), append_time=timestamp_st)
def test_log_append_time(records, codec, append_time):
    batch = bytearray(build_batch(records, compression=codec, timestamps=[5] * len(records)))
    assign_offsets(batch, 77, log_append_time_ms=append_time)
    h = validate_single_batch(batch)
    assert h.timestamp_type == LOG_APPEND_TIME
    assert h.max_timestamp == append_time
    assert h.base_timestamp == 5
    assert h.compression == codec
    assert all(r.timestamp == append_time for r in decode_records(batch))
    theirs = DefaultRecordBatch(bytes(batch))
    assert theirs.validate_crc()
    assert theirs.timestamp_type == 1
    assert [r.timestamp for r in theirs] == [append_time] * len(records)


def test_assign_offsets_on_a_memoryview_into_a_larger_buffer():
    a = build_batch([(b"k", b"v", [])])
    b = build_batch([(b"k2", b"v2", [])] * 3)
    buf = bytearray(a + b)
    assign_offsets(memoryview(buf)[len(a) :], 10, log_append_time_ms=99)
    assert read_header(buf).base_offset == 0
    h = validate_single_batch(buf[len(a) :])
    assert (h.base_offset, h.max_timestamp, h.timestamp_type) == (10, 99, 1)
    validate_single_batch(buf[: len(a)])


# --- rejection --------------------------------------------------------------------------------------


@fast
@given(records=records_st, codec=st.sampled_from(CODECS), data=st.data())
def test_any_flipped_byte_under_the_crc_is_corrupt(records, codec, data):
    batch = bytearray(build_batch(records, compression=codec))
    i = data.draw(st.integers(17, len(batch) - 1))
    batch[i] ^= data.draw(st.integers(1, 255))
    assert _code(batch) == CORRUPT_MESSAGE


@fast
@given(records=records_st, data=st.data())
def test_truncated_batch_is_corrupt(records, data):
    batch = build_batch(records)
    cut = data.draw(st.integers(0, len(batch) - 1))
    assert _code(batch[:cut]) == CORRUPT_MESSAGE


@pytest.mark.parametrize("magic", [0, 1, 3, 255])
def test_wrong_magic_is_invalid(magic):
    batch = bytearray(build_batch([(b"k", b"v", [])]))
    batch[16] = magic
    assert _code(batch) == INVALID_RECORD


def test_legacy_message_set_is_invalid():
    # v1 message: offset, size, crc, magic=1, attributes, timestamp, key, value
    msg = struct.pack(">bbqii", 1, 0, 0, -1, 1) + b"v"
    legacy = struct.pack(">qiI", 0, len(msg) + 4, 0) + msg
    assert _code(legacy) == INVALID_RECORD


def test_two_batches_or_trailing_bytes():
    a = build_batch([(b"k", b"v", [])])
    assert _code(a + a) == INVALID_RECORD
    assert _code(a + a[:30]) == CORRUPT_MESSAGE
    assert _code(a + b"\x00") == CORRUPT_MESSAGE


def test_length_field_lies():
    batch = bytearray(build_batch([(b"k", b"v" * 100, [])]))
    struct.pack_into(">i", batch, 8, 10)  # smaller than a header
    assert _code(batch) == CORRUPT_MESSAGE
    struct.pack_into(">i", batch, 8, 2**31 - 1)
    assert _code(batch) == CORRUPT_MESSAGE
    assert _code(b"") == CORRUPT_MESSAGE
    assert _code(b"\x00" * 16) == CORRUPT_MESSAGE


@pytest.mark.parametrize(
    ("offset", "fmt", "value"),
    [
        (57, ">i", 0),  # record count zero
        (57, ">i", -1),  # negative record count
        (57, ">i", 10_000),  # more records than the bytes can hold
        (23, ">i", -1),  # negative last offset delta
        (23, ">i", 1),  # 3 records cannot span 2 offsets
        (21, ">h", 5),  # unknown codec
        (21, ">h", 7),
    ],
)
def test_bad_counts_and_attributes_are_invalid(offset, fmt, value):
    batch = bytearray(build_batch([(b"k", b"v", [])] * 3))
    struct.pack_into(fmt, batch, offset, value)
    assert _code(_reseal(batch)) == INVALID_RECORD


def test_error_is_a_value_error_with_code():
    err = InvalidRecordError("x", CORRUPT_MESSAGE)
    assert isinstance(err, ValueError) and err.error_code == 2
    assert InvalidRecordError("y").error_code == INVALID_RECORD


def test_decode_rejects_garbage_records():
    batch = bytearray(build_batch([(b"k", b"v", [])]))
    batch[61] = 0x7F  # record length far beyond the payload
    with pytest.raises(InvalidRecordError):
        decode_records(batch)
    bad_zstd = bytearray(build_batch([(b"k", b"v" * 50, [])], compression=compression.ZSTD))
    bad_zstd[70] ^= 0xFF
    with pytest.raises(InvalidRecordError):
        decode_records(_reseal(bad_zstd))


# --- header reading and iteration ---------------------------------------------------------------------


def test_read_header_bounds():
    batch = build_batch([(b"k", b"v", [])], base_offset=9)
    assert read_header(batch).base_offset == 9
    assert read_header(b"xx" + batch, 2).base_offset == 9
    with pytest.raises(InvalidRecordError):
        read_header(batch[:60])
    with pytest.raises(InvalidRecordError):
        read_header(batch, len(batch) - 60)
    with pytest.raises(InvalidRecordError):
        read_header(batch, -1)


@fast
@given(sizes=st.lists(st.integers(1, 6), min_size=1, max_size=12), cut=st.integers(0, 200))
def test_iter_batch_headers(sizes, cut):
    batches, offset = [], 0
    for n in sizes:
        batches.append(build_batch([(None, b"x" * n, [])] * n, base_offset=offset))
        offset += n
    buf = b"".join(batches)
    seen = list(iter_batch_headers(buf))
    assert [h.base_offset for _, h in seen] == [read_header(b).base_offset for b in batches]
    positions = [sum(len(b) for b in batches[:i]) for i in range(len(batches))]
    assert [p for p, _ in seen] == positions
    # a partial trailing batch is not yielded
    truncated = buf[: max(0, len(buf) - 1 - cut)]
    assert len(list(iter_batch_headers(truncated))) == sum(
        1 for p, b in zip(positions, batches, strict=True) if p + len(b) <= len(truncated)
    )
    assert [p for p, _ in iter_batch_headers(buf, positions[-1])] == [positions[-1]]


def test_iter_batch_headers_rejects_impossible_length():
    batch = bytearray(build_batch([(b"k", b"v", [])]))
    struct.pack_into(">i", batch, 8, 0)
    with pytest.raises(InvalidRecordError) as info:
        list(iter_batch_headers(batch))
    assert info.value.error_code == CORRUPT_MESSAGE


# --- codecs ------------------------------------------------------------------------------------------

payload_st = st.binary(max_size=5000) | st.builds(
    lambda b, n: b * n, st.binary(min_size=1, max_size=50), st.integers(1, 3000)
)


@fast
@given(data=payload_st, codec=st.sampled_from(CODECS))
def test_codec_round_trip(data, codec):
    assert compression.decompress(codec, compression.compress(codec, data)) == data
    assert compression.decompress(codec, memoryview(compression.compress(codec, bytearray(data)))) == data


@fast
@given(data=payload_st)
def test_our_output_decodes_with_reference_libraries(data):
    assert gzip.decompress(compression.compress(compression.GZIP, data)) == data
    xerial = compression.compress(compression.SNAPPY, data)
    assert xerial.startswith(compression.XERIAL_MAGIC)
    assert kcodec.snappy_decode(xerial) == data
    assert lz4.frame.decompress(compression.compress(compression.LZ4, data)) == data
    zstd_out = compression.compress(compression.ZSTD, data)
    assert zstandard.ZstdDecompressor().decompressobj().decompress(zstd_out) == data


@fast
@given(data=payload_st)
def test_reference_libraries_output_decodes_with_ours(data):
    assert compression.decompress(compression.GZIP, gzip.compress(data)) == data
    assert compression.decompress(compression.SNAPPY, snappy.compress(data)) == data  # raw (librdkafka)
    assert (
        compression.decompress(compression.SNAPPY, kcodec.snappy_encode(data, xerial_compatible=True)) == data
    )
    assert compression.decompress(compression.SNAPPY, kcodec.snappy_encode(data, False)) == data
    for linked in (False, True):
        framed = lz4.frame.compress(data, block_linked=linked, content_checksum=linked)
        assert compression.decompress(compression.LZ4, framed) == data
    assert compression.decompress(compression.ZSTD, zstandard.ZstdCompressor().compress(data)) == data
    no_size = zstandard.ZstdCompressor(write_content_size=False).compress(data)
    assert compression.decompress(compression.ZSTD, no_size) == data


def test_xerial_with_small_blocks_and_little_endian_header():
    data = bytes(range(256)) * 500
    framed = kcodec.snappy_encode(data, xerial_compatible=True, xerial_blocksize=1000)
    assert compression.decompress(compression.SNAPPY, framed) == data
    # some producers write version/compat little endian; only the magic matters
    swapped = framed[:8] + struct.pack("<ii", 1, 1) + framed[16:]
    assert compression.decompress(compression.SNAPPY, swapped) == data
    assert compression.decompress(compression.SNAPPY, framed[:16]) == b""


def test_codec_errors():
    with pytest.raises(compression.CompressionError):
        compression.compress(5, b"x")
    with pytest.raises(compression.CompressionError):
        compression.decompress(9, b"x")
    overrunning_xerial = compression.XERIAL_MAGIC + struct.pack(">iii", 1, 1, 4096) + b"ab"
    for codec in CODECS[1:]:
        garbage = overrunning_xerial if codec == compression.SNAPPY else b"definitely not compressed"
        with pytest.raises(compression.CompressionError):
            compression.decompress(codec, garbage)
    xerial = compression.compress(compression.SNAPPY, b"hello" * 100)
    with pytest.raises(compression.CompressionError):
        compression.decompress(compression.SNAPPY, xerial[:18])


def test_header_size_constant():
    assert BATCH_HEADER_SIZE == 61 == DefaultRecordBatch.HEADER_STRUCT.size
