"""Segment object format: layout, index lookups by offset and timestamp, corruption detection."""

from __future__ import annotations

import struct

import pytest
from crc32c import crc32c
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.segment import (
    FOOTER_SIZE,
    INDEX_ENTRY_SIZE,
    BatchSpan,
    CorruptSegmentError,
    SegmentFooter,
    SegmentIndex,
    build_segment,
    find_batches,
    open_segment,
    parse_footer,
    verify_body,
)
from protocol.records import assign_offsets, build_batch, iter_batch_headers, read_header

fast = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# (record count, value size, max timestamp) per batch
batch_spec_st = st.tuples(st.integers(1, 4), st.integers(0, 600), st.integers(-1, 10_000))
segment_st = st.fixed_dictionaries(
    {
        "specs": st.lists(batch_spec_st, min_size=1, max_size=30),
        "base": st.integers(0, 2**50),
        "interval": st.sampled_from([1, 150, 700, 4096, 65536]),
    }
)


def make_batches(specs, base):
    batches, offset = [], base
    for count, size, ts in specs:
        # the first record is the oldest, so a batch's base and max timestamps differ
        timestamps = [ts - 3 * (count - 1 - j) for j in range(count)]
        b = bytearray(build_batch([(None, b"v" * size, [])] * count, timestamps=timestamps))
        assign_offsets(b, offset)
        batches.append(bytes(b))
        offset += count
    return batches


def make_segment(specs, base=0, interval=65536):
    batches = make_batches(specs, base)
    parts, footer = build_segment(batches, index_interval_bytes=interval)
    return batches, b"".join(parts), footer


def positions_of(batches):
    out, pos = [], 0
    for b in batches:
        out.append(pos)
        pos += len(b)
    return out


@fast
@given(seg=segment_st)
def test_layout_and_footer(seg):
    batches, obj, footer = make_segment(seg["specs"], seg["base"], seg["interval"])
    body = b"".join(batches)
    assert obj.startswith(body)
    assert footer.object_size == len(obj)
    assert parse_footer(obj[-FOOTER_SIZE:]) == footer
    assert parse_footer(obj, object_size=len(obj)) == footer
    assert footer.base_offset == seg["base"]
    assert footer.last_offset == seg["base"] + sum(c for c, _, _ in seg["specs"]) - 1
    assert footer.max_timestamp == max(ts for _, _, ts in seg["specs"])
    assert footer.batch_count == len(batches)
    assert footer.record_count == sum(c for c, _, _ in seg["specs"])
    assert footer.body_length == len(body) and footer.body_crc == crc32c(body)
    index_bytes = obj[footer.index_start : footer.index_start + footer.index_length]
    assert footer.index_crc == crc32c(index_bytes)
    assert obj[-FOOTER_SIZE:].startswith(b"KEELSEG1")
    got_footer, index, got_body = open_segment(obj)
    assert got_footer == footer and bytes(got_body) == body
    # the index holds the first batch, then the first batch at least `interval` bytes past the last entry
    expected_positions, last = [], None
    for p in positions_of(batches):
        if last is None or p - last >= seg["interval"]:
            expected_positions.append(p)
            last = p
    assert index.positions == expected_positions
    assert len(index) * INDEX_ENTRY_SIZE == footer.index_length


@fast
@given(seg=segment_st)
def test_every_offset_is_located(seg):
    batches, obj, footer = make_segment(seg["specs"], seg["base"], seg["interval"])
    _, index, body = open_segment(obj)
    positions = positions_of(batches)
    headers = [read_header(b) for b in batches]
    for offset in range(footer.base_offset, footer.last_offset + 1):
        target = next(i for i, h in enumerate(headers) if h.base_offset <= offset <= h.last_offset)
        start = index.position_for_offset(offset)
        # exactly the closest indexed batch at or before the target
        assert start == max(p for p in index.positions if p <= positions[target])
        lo, hi = index.position_range_for_offset(offset)
        assert lo == start and lo <= positions[target] < hi
        found = next(h for _, h in iter_batch_headers(body, start) if h.last_offset >= offset)
        assert found == headers[target]
    assert index.position_for_offset(0 if footer.base_offset else -1) == 0


@fast
@given(seg=segment_st, extra=st.lists(st.integers(-5, 10_010), max_size=10))
def test_timestamp_lookup(seg, extra):
    batches, obj, footer = make_segment(seg["specs"], seg["base"], seg["interval"])
    _, index, body = open_segment(obj)
    positions = positions_of(batches)
    headers = [read_header(b) for b in batches]
    probes = {ts + d for _, _, ts in seg["specs"] for d in (-1, 0, 1)} | set(extra)
    for ts in probes:
        expected = next((i for i, h in enumerate(headers) if h.max_timestamp >= ts), None)
        start = index.position_for_timestamp(ts)
        scanned = next((p for p, h in iter_batch_headers(body, start) if h.max_timestamp >= ts), None)
        if expected is None:
            assert scanned is None and ts > footer.max_timestamp
        else:
            assert start <= positions[expected]
            assert scanned == positions[expected]


def _expected_span(batches, offset, max_bytes, min_one):
    positions = positions_of(batches)
    first = next((i for i, b in enumerate(batches) if read_header(b).last_offset >= offset), None)
    if first is None:
        return None
    end = positions[first]
    total = 0
    for b in batches[first:]:
        if total + len(b) > max_bytes and (total or not min_one):
            break
        total += len(b)
        end += len(b)
    return positions[first], end


@fast
@given(seg=segment_st, data=st.data())
def test_find_batches(seg, data):
    batches, obj, footer = make_segment(seg["specs"], seg["base"], seg["interval"])
    _, index, body = open_segment(obj)
    offset = data.draw(st.integers(footer.base_offset - 2, footer.last_offset + 2))
    max_bytes = data.draw(st.integers(0, 5000))
    min_one = data.draw(st.booleans())
    start = index.position_for_offset(offset)
    span = find_batches(body[start:], offset, max_bytes, chunk_pos=start, min_one=min_one)
    expected = _expected_span(batches, offset, max_bytes, min_one)
    if expected is None:
        assert span == BatchSpan(len(body), len(body), 61)
    else:
        assert (span.start, span.end, span.need) == (*expected, 0)
        served = list(iter_batch_headers(body[span.start : span.end]))
        assert sum(h.size for _, h in served) == span.end - span.start
        if served:
            assert served[0][1].base_offset <= max(offset, footer.base_offset) <= served[0][1].last_offset
    # a chunk cut inside the first needed batch asks for that whole batch
    if expected is not None and expected[1] > expected[0]:
        first_size = read_header(body, expected[0]).size
        cut = data.draw(st.integers(expected[0] - start, expected[0] - start + first_size - 1))
        short = find_batches(body[start : start + cut], offset, max_bytes, chunk_pos=start)
        assert short.start == short.end
        assert short.need > 0 and short.start <= expected[0]
        if cut >= expected[0] - start + 61:
            assert short == BatchSpan(expected[0], expected[0], first_size)


def test_find_batches_min_one_and_limits():
    batches = make_batches([(1, 1000, 0), (1, 10, 0), (1, 10, 0)], 0)
    body = b"".join(batches)
    sizes = [len(b) for b in batches]
    assert find_batches(body, 0, 1) == BatchSpan(0, sizes[0], 0)  # KIP-74: one batch even if too big
    assert find_batches(body, 0, 1, min_one=False) == BatchSpan(0, 0, 0)
    assert find_batches(body, 1, sizes[1] + sizes[2]) == BatchSpan(sizes[0], len(body), 0)
    assert find_batches(body, 1, sizes[1] + sizes[2] - 1) == BatchSpan(sizes[0], sizes[0] + sizes[1], 0)
    assert find_batches(body, 3, 10_000) == BatchSpan(len(body), len(body), 61)
    assert find_batches(body[:10], 0, 10_000) == BatchSpan(0, 0, 61)
    bad = bytearray(body)
    struct.pack_into(">i", bad, 8, 3)
    with pytest.raises(CorruptSegmentError):
        find_batches(bad, 0, 100)


# --- corruption -------------------------------------------------------------------------------------


@fast
@given(seg=segment_st, data=st.data())
def test_any_flipped_byte_is_detected(seg, data):
    _, obj, footer = make_segment(seg["specs"], seg["base"], seg["interval"])
    i = data.draw(st.integers(0, len(obj) - 1))
    bad = bytearray(obj)
    bad[i] ^= data.draw(st.integers(1, 255))
    with pytest.raises(CorruptSegmentError):
        open_segment(bad)
    # the piece that holds the byte is the one that complains
    if i < footer.body_length:
        with pytest.raises(CorruptSegmentError):
            verify_body(bad[: footer.body_length], footer)
    elif i < footer.body_length + footer.index_length:
        with pytest.raises(CorruptSegmentError):
            SegmentIndex.parse(bad[footer.body_length : footer.body_length + footer.index_length], footer)
    else:
        with pytest.raises(CorruptSegmentError):
            parse_footer(bad[-FOOTER_SIZE:])


def test_truncated_or_foreign_objects():
    _, obj, footer = make_segment([(2, 100, 5)] * 5)
    for cut in (1, FOOTER_SIZE, len(obj) - 1):
        with pytest.raises(CorruptSegmentError):
            open_segment(obj[:-cut])
        with pytest.raises(CorruptSegmentError):
            open_segment(obj[cut:])
    with pytest.raises(CorruptSegmentError):
        parse_footer(obj[-FOOTER_SIZE + 1 :])
    with pytest.raises(CorruptSegmentError):
        parse_footer(b"\x00" * FOOTER_SIZE)
    with pytest.raises(CorruptSegmentError):
        parse_footer(obj, object_size=len(obj) + 1)
    with pytest.raises(CorruptSegmentError):
        verify_body(obj[: footer.body_length - 1], footer)


def _forge_footer(footer: SegmentFooter, **changes) -> SegmentFooter:
    fields = {k: getattr(footer, k) for k in SegmentFooter.__dataclass_fields__}
    fields.update(changes)
    return SegmentFooter(**fields)


def test_inconsistent_footer_with_valid_crc_is_rejected():
    _, obj, footer = make_segment([(1, 10, 0)] * 3)
    for changes in (
        {"last_offset": footer.base_offset - 1},
        {"batch_count": 0},
        {"index_length": 25},
        {"index_length": 0},
        {"body_length": 60},
        {"record_count": -1},
    ):
        with pytest.raises(CorruptSegmentError):
            parse_footer(_forge_footer(footer, **changes).to_bytes())
    future = bytearray(footer.to_bytes())
    struct.pack_into(">H", future, 8, 2)
    struct.pack_into(">I", future, FOOTER_SIZE - 4, crc32c(bytes(future[:-4])))
    with pytest.raises(CorruptSegmentError, match="version"):
        parse_footer(future)


def test_index_out_of_order_with_valid_crc_is_rejected():
    batches, obj, footer = make_segment([(1, 10, 0)] * 6, interval=1)
    index = obj[footer.body_length : footer.body_length + footer.index_length]
    entries = [index[i : i + INDEX_ENTRY_SIZE] for i in range(0, len(index), INDEX_ENTRY_SIZE)]
    swapped = b"".join([entries[0], entries[2], entries[1], *entries[3:]])
    forged = _forge_footer(footer, index_crc=crc32c(swapped))
    with pytest.raises(CorruptSegmentError):
        SegmentIndex.parse(swapped, forged)
    with pytest.raises(CorruptSegmentError):
        SegmentIndex.parse(index[:-1], footer)


# --- building -----------------------------------------------------------------------------------------


def test_build_rejects_bad_input():
    a, b, c = make_batches([(2, 5, 0), (1, 5, 0), (1, 5, 0)], 10)
    with pytest.raises(ValueError):
        build_segment([])
    with pytest.raises(ValueError):
        build_segment([a, c])  # gap
    with pytest.raises(ValueError):
        build_segment([a, a])  # overlap
    with pytest.raises(ValueError):
        build_segment([a, b[:-1]])  # partial batch
    with pytest.raises(ValueError):
        build_segment([a + b])  # two batches in one part
    with pytest.raises(ValueError):
        build_segment([a], index_interval_bytes=0)
    with pytest.raises(ValueError):
        build_segment([a, a], require_contiguous=False)  # still must ascend
    parts, footer = build_segment([a, c], require_contiguous=False)
    assert (footer.base_offset, footer.last_offset, footer.record_count) == (10, 13, 3)
    _, index, body = open_segment(b"".join(parts))
    assert index.position_for_offset(12) == 0


def test_build_accepts_bytearray_and_memoryview_parts():
    batches = make_batches([(1, 50, 3), (2, 50, 4)], 7)
    parts, footer = build_segment([bytearray(batches[0]), memoryview(batches[1])])
    obj = b"".join(bytes(p) for p in parts)
    got, _, body = open_segment(obj)
    assert got == footer and bytes(body) == b"".join(batches)


def test_all_batches_without_timestamps():
    _, obj, footer = make_segment([(1, 1, -1)] * 3, interval=1)
    assert footer.max_timestamp == -1
    _, index, _ = open_segment(obj)
    assert index.position_for_timestamp(-1) == 0
    assert index.position_for_timestamp(0) == index.positions[-1]
