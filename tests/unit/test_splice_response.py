"""Fetch responses carry large record data by reference: the pieces sent are the same bytes a copy would be."""

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.handlers import fetch as fetch_api
from protocol import framing
from protocol.primitives import SPLICE_MIN, SpliceBuffer
from protocol.schema import is_flexible, response_codec

VERSIONS = (4, 11, fetch_api.API.max_version)  # classic, classic with the last fields, flexible


def _body(chunks_per_partition: list[list[bytes | memoryview]]) -> dict[str, Any]:
    return {
        "throttle_time_ms": 0, "error_code": 0, "session_id": 0,
        "responses": [{
            "topic": "audit", "topic_id": b"\x01" * 16,
            "partitions": [{
                "partition_index": i, "error_code": 0, "high_watermark": 9, "last_stable_offset": 9,
                "log_start_offset": 0, "aborted_transactions": None, "preferred_read_replica": -1,
                "records": chunks,
            } for i, chunks in enumerate(chunks_per_partition)],
        }],
    }


def _encode(version: int, body: dict[str, Any], out: bytearray) -> Any:
    response_codec(fetch_api.KEY, version).write(out, body)
    return framing.finish_response(out)


sizes = st.one_of(st.integers(0, 300), st.integers(SPLICE_MIN, SPLICE_MIN + 300))


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(VERSIONS), st.lists(st.lists(sizes, max_size=4), min_size=1, max_size=3), st.booleans())
def test_spliced_pieces_are_the_bytes_a_copy_gives(version: int, layout: list[list[int]], as_views: bool) -> None:
    chunks: list[list[bytes | memoryview]] = [
        [memoryview(bytes([n % 251]) * size) if as_views else bytes([n % 251]) * size
         for n, size in enumerate(sizes_, start=10 * p)]
        for p, sizes_ in enumerate(layout)]
    flexible = is_flexible(fetch_api.KEY, version)

    copied = bytearray(framing.start_response(5, flexible))  # a plain bytearray: everything copied in
    expected = bytes(_encode(version, _body(chunks), copied))
    sent = _encode(version, _body(chunks), framing.start_response(5, flexible))

    large = [c for part in chunks for c in part if len(c) >= SPLICE_MIN]
    if not large:
        assert isinstance(sent, bytearray) and bytes(sent) == expected
        return
    assert isinstance(sent, list)
    assert b"".join(sent) == expected
    assert int.from_bytes(sent[0][:4], "big") == len(expected) - 4
    for chunk in large:  # by reference, not copied
        assert any(piece is chunk for piece in sent)


def test_small_chunks_are_copied_and_the_buffer_stays_one_piece() -> None:
    out = SpliceBuffer(b"head")
    out += b"x" * 10
    assert out.total_size() == 14 and out.pieces() == [] + [b"head" + b"x" * 10]
    big = b"y" * SPLICE_MIN
    out.splice(big)
    out += b"tail"
    assert out.pieces() == [b"head" + b"x" * 10, big, b"tail"]
    assert out.pieces()[1] is big
    assert out.total_size() == 14 + SPLICE_MIN + 4
