"""Property tests for the compiled Kafka message codecs and the wire primitives.

The strategies are built from ``protocol.schema.message_spec`` -- the same
field specs the codec is compiled from -- so they follow every message's field
versions, nullability and tagged fields without per-message code.  For each
chosen message and every version it declares valid, a random message must
survive encode -> decode -> encode byte for byte, decode must give back what
was written, and any truncation or corruption must surface as ``DecodeError``.
"""

from __future__ import annotations

import contextlib
import time
import tracemalloc
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import framing, schema
from protocol import primitives as p
from protocol.primitives import DecodeError
from protocol.schema import FieldSpec

FAMILIES = [
    "Produce", "Fetch", "Metadata", "ApiVersions", "ListOffsets", "CreateTopics", "DeleteTopics",
    "InitProducerId", "FindCoordinator", "JoinGroup", "OffsetCommit", "OffsetFetch",
]
MESSAGES = [family + kind for family in FAMILIES for kind in ("Request", "Response")]


def _all_versions() -> list[tuple[str, int]]:
    cases = []
    for name in MESSAGES:
        valid = schema.message_spec(name).valid
        cases.extend((name, v) for v in range(valid.low, valid.high + 1))
    return cases


CASES = _all_versions()
CASE_IDS = [f"{name}-v{v}" for name, v in CASES]

PROPERTY_SETTINGS = settings(
    max_examples=15, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Strategy builder -------------------------------------------------------------------

_INT_BOUNDS = {
    "int8": (-(2**7), 2**7 - 1),
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
}
_MAX_ITEMS = 3


def _scalar(type_name: str) -> st.SearchStrategy[Any]:
    if type_name in _INT_BOUNDS:
        lo, hi = _INT_BOUNDS[type_name]
        return st.integers(lo, hi)
    if type_name == "bool":
        return st.booleans()
    if type_name == "float64":
        return st.floats(allow_nan=False)
    if type_name == "uuid":
        return st.binary(min_size=16, max_size=16)
    if type_name == "string":
        return st.text(max_size=12)
    if type_name in ("bytes", "records"):
        return st.binary(max_size=24)
    raise AssertionError(f"no strategy for {type_name}")


def _field_flexible(spec: FieldSpec, version: int, flexible: bool) -> bool:
    return version in spec.flexible_override if spec.flexible_override is not None else flexible


def _field_strategy(spec: FieldSpec, version: int, flexible: bool, depth: int) -> st.SearchStrategy[Any]:
    flexible = _field_flexible(spec, version, flexible)
    if spec.is_struct:
        element = struct_strategy(spec.fields, version, flexible, depth + 1)
    else:
        element = _scalar(spec.element_type)
    value = st.lists(element, max_size=_MAX_ITEMS if depth < 2 else 1) if spec.is_array else element
    if version in spec.nullable:
        value = st.none() | value
    return value


def _is_tagged(spec: FieldSpec, version: int, flexible: bool) -> bool:
    return flexible and version in spec.tagged


def struct_strategy(fields: list[FieldSpec], version: int, flexible: bool,
                    depth: int = 0) -> st.SearchStrategy[dict[str, Any]]:
    """Random dicts of the fields present at ``version``; tagged fields may be left out."""
    present = [spec for spec in fields if version in spec.versions]
    return st.fixed_dictionaries(
        {spec.name: _field_strategy(spec, version, flexible, depth)
         for spec in present if not _is_tagged(spec, version, flexible)},
        optional={spec.name: _field_strategy(spec, version, flexible, depth)
                  for spec in present if _is_tagged(spec, version, flexible)},
    )


def message_strategy(name: str, version: int) -> st.SearchStrategy[dict[str, Any]]:
    spec = schema.message_spec(name)
    return struct_strategy(spec.fields, version, version in spec.flexible)


def assert_decoded_matches(fields: list[FieldSpec], version: int, flexible: bool,
                           written: dict[str, Any], decoded: dict[str, Any]) -> None:
    """``decoded`` holds what was ``written``; every field not written holds its default."""
    for spec in fields:
        if version not in spec.versions:
            assert decoded[spec.name] == spec.default, spec.name
        elif spec.name not in written:  # a tagged field left out
            assert decoded[spec.name] == (None if spec.is_struct and not spec.is_array else spec.default)
        elif spec.is_struct and written[spec.name] is not None:
            inner = _field_flexible(spec, version, flexible)
            pairs = (zip(written[spec.name], decoded[spec.name], strict=True) if spec.is_array
                     else [(written[spec.name], decoded[spec.name])])
            for w, d in pairs:
                assert_decoded_matches(spec.fields, version, inner, w, d)
        else:
            assert decoded[spec.name] == written[spec.name], spec.name
    assert set(decoded) == {spec.name for spec in fields}


# Round trips over every version --------------------------------------------------------

def test_cases_cover_every_valid_version() -> None:
    assert ("ProduceRequest", 3) in CASES and ("ProduceRequest", 13) in CASES
    assert ("FetchResponse", 4) in CASES and ("FetchResponse", 18) in CASES
    assert ("ApiVersionsResponse", 0) in CASES and ("OffsetFetchRequest", 10) in CASES
    assert len({name for name, _ in CASES}) == 24


@pytest.mark.parametrize(("name", "version"), CASES, ids=CASE_IDS)
def test_round_trip(name: str, version: int) -> None:
    codec = schema.codec(name, version)
    fields = schema.message_spec(name).fields

    @PROPERTY_SETTINGS
    @given(message_strategy(name, version))
    def check(message: dict[str, Any]) -> None:
        wire = bytes(codec.encode(message))
        decoded = codec.decode(wire)
        assert_decoded_matches(fields, version, codec.flexible, message, decoded)
        assert bytes(codec.encode(decoded)) == wire

    check()


@pytest.mark.parametrize(("name", "version"), CASES, ids=CASE_IDS)
def test_truncation_raises_decode_error(name: str, version: int) -> None:
    codec = schema.codec(name, version)

    @settings(PROPERTY_SETTINGS, max_examples=5)
    @given(message_strategy(name, version))
    def check(message: dict[str, Any]) -> None:
        wire = bytes(codec.encode(message))
        for cut in range(len(wire)):
            with pytest.raises(DecodeError):
                codec.decode(wire[:cut])
        with pytest.raises(DecodeError):
            codec.decode(wire + b"\x00")

    check()


@pytest.mark.parametrize(("name", "version"), CASES, ids=CASE_IDS)
def test_corrupted_input_only_raises_decode_error(name: str, version: int) -> None:
    codec = schema.codec(name, version)

    @settings(PROPERTY_SETTINGS, max_examples=10)
    @given(message_strategy(name, version), st.data())
    def check(message: dict[str, Any], data: st.DataObject) -> None:
        wire = bytearray(codec.encode(message))
        if not wire:
            return  # e.g. ApiVersionsRequest v0 has no fields
        for _ in range(data.draw(st.integers(1, 4))):
            wire[data.draw(st.integers(0, len(wire) - 1))] = data.draw(st.integers(0, 255))
        with contextlib.suppress(DecodeError):
            codec.decode(bytes(wire))

    check()


@pytest.mark.parametrize("name", MESSAGES)
@settings(max_examples=60, deadline=None)
@given(garbage=st.binary(max_size=64), version_pick=st.integers(0, 64))
def test_random_bytes_only_raise_decode_error(name: str, garbage: bytes, version_pick: int) -> None:
    valid = schema.message_spec(name).valid
    version = valid.low + version_pick % (valid.high - valid.low + 1)
    with contextlib.suppress(DecodeError):
        schema.codec(name, version).decode(garbage)


def test_every_shipped_message_compiles_and_round_trips_defaults() -> None:
    names = [entry.name[: -len(".json")] for entry in schema._schema_dir().iterdir()
             if entry.name.endswith(("Request.json", "Response.json"))]
    assert len(names) >= 100
    compiled = 0
    for name in names:
        valid = schema.message_spec(name).valid
        for version in range(valid.low, valid.high + 1):
            codec = schema.codec(name, version)
            wire = bytes(codec.encode({}))
            assert bytes(codec.encode(codec.decode(wire))) == wire, (name, version)
            compiled += 1
    assert compiled > 400


@settings(max_examples=100, deadline=None)
@given(api_key=st.sampled_from(sorted(schema.api_names())), version=st.integers(0, 20),
       correlation_id=st.integers(-(2**31), 2**31 - 1), client_id=st.none() | st.text(max_size=20),
       flexible=st.booleans(), body=st.binary(max_size=16))
def test_request_header_round_trip(api_key: int, version: int, correlation_id: int, client_id: str | None,
                                   flexible: bool, body: bytes) -> None:
    header = framing.RequestHeader(api_key, version, correlation_id, client_id)
    framed = framing.encode_request(header, flexible, body)
    assert framing.SIZE.unpack_from(framed)[0] == len(framed) - 4
    frame = framed[4:]
    assert framing.peek_api(frame) == (api_key, version, correlation_id)
    parsed, pos = framing.read_request_header(frame, flexible)
    assert parsed == header
    assert frame[pos:] == body
    for cut in range(pos):
        with pytest.raises(DecodeError):
            framing.read_request_header(frame[:cut], flexible)


def test_response_framing() -> None:
    out = framing.start_response(7, flexible_header=True)
    out += b"body"
    assert bytes(framing.finish_response(out)) == b"\x00\x00\x00\x09\x00\x00\x00\x07\x00body"
    out = framing.start_response(7, flexible_header=False)
    assert bytes(framing.finish_response(out)) == b"\x00\x00\x00\x04\x00\x00\x00\x07"


# Hand-written shapes: defaults, tagged fields, nullable structs ---------------------------

def test_missing_keys_are_written_as_defaults() -> None:
    codec = schema.codec("MetadataRequest", 12)
    decoded = codec.decode(codec.encode({}))
    assert decoded["topics"] == []
    assert decoded["allow_auto_topic_creation"] is True
    assert decoded["include_topic_authorized_operations"] is False


def test_tagged_field_written_only_when_not_default() -> None:
    codec = schema.codec("ApiVersionsResponse", 3)
    plain = codec.encode({"error_code": 0, "api_keys": [], "throttle_time_ms": 0})
    assert plain[-1] == 0  # no tagged fields
    tagged = codec.encode({"error_code": 0, "api_keys": [], "throttle_time_ms": 0, "finalized_features_epoch": 7})
    assert tagged[len(plain) - 1] == 1  # one tagged field
    assert codec.decode(tagged)["finalized_features_epoch"] == 7
    assert codec.decode(plain)["finalized_features_epoch"] == -1


def test_unknown_tagged_fields_are_skipped() -> None:
    codec = schema.codec("InitProducerIdRequest", 4)
    body = codec.encode({"transactional_id": None, "transaction_timeout_ms": 1, "producer_id": 5,
                         "producer_epoch": 2})
    assert body[-1] == 0
    with_unknown = bytes(body[:-1]) + bytes([1, 100, 3]) + b"abc"
    decoded = codec.decode(with_unknown)
    assert decoded["producer_id"] == 5


def test_tagged_field_with_wrong_declared_size_is_rejected() -> None:
    codec = schema.codec("ApiVersionsResponse", 3)
    good = bytes(codec.encode({"finalized_features_epoch": 7}))
    # Tag 1 (finalized_features_epoch, int64) written with a declared size of 9 and one extra byte.
    tag_start = good.index(bytes([1, 1, 8]))
    bad = good[:tag_start] + bytes([1, 1, 9]) + good[tag_start + 3:] + b"\x00"
    with pytest.raises(DecodeError):
        codec.decode(bad)


def test_nullable_struct_round_trip() -> None:
    codec = schema.codec("DescribeTopicPartitionsRequest", 0)  # cursor: a nullable struct
    null = bytes(codec.encode({"topics": [], "response_partition_limit": 5, "cursor": None}))
    present = bytes(codec.encode({"topics": [], "response_partition_limit": 5,
                                  "cursor": {"topic_name": "t", "partition_index": 3}}))
    assert null == b"\x01\x00\x00\x00\x05\xff\x00"
    assert present == b"\x01\x00\x00\x00\x05\x01\x02t\x00\x00\x00\x03\x00\x00"
    assert codec.decode(null)["cursor"] is None
    assert codec.decode(present)["cursor"] == {"topic_name": "t", "partition_index": 3}


def test_nullable_array_differs_from_empty() -> None:
    codec = schema.codec("FetchResponse", 12)
    # FetchResponse v12 partitions carry nullable aborted_transactions; null and [] differ on the wire.
    null_tx = {"responses": [{"topic": "t", "partitions": [{"aborted_transactions": None}]}]}
    empty_tx = {"responses": [{"topic": "t", "partitions": [{"aborted_transactions": []}]}]}
    assert codec.encode(null_tx) != codec.encode(empty_tx)
    assert codec.decode(codec.encode(null_tx))["responses"][0]["partitions"][0]["aborted_transactions"] is None
    assert codec.decode(codec.encode(empty_tx))["responses"][0]["partitions"][0]["aborted_transactions"] == []


def test_records_accept_chunk_lists() -> None:
    codec = schema.codec("FetchResponse", 12)
    chunks = {"responses": [{"topic": "t", "partitions": [{"records": [b"ab", memoryview(b"cd"), b"e"]}]}]}
    joined = {"responses": [{"topic": "t", "partitions": [{"records": b"abcde"}]}]}
    assert codec.encode(chunks) == codec.encode(joined)


def test_unknown_version_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        schema.codec("ProduceRequest", 2)
    with pytest.raises(KeyError):
        schema.codec("ProduceRequest", 14)


def test_request_and_response_codec_by_api_key() -> None:
    assert schema.request_codec(0, 9).name == "ProduceRequest"
    assert schema.response_codec(1, 12).name == "FetchResponse"
    assert schema.is_flexible(0, 9) and not schema.is_flexible(0, 8)
    assert schema.is_flexible(18, 3) and not schema.is_flexible(18, 2)


def test_known_wire_bytes() -> None:
    # ApiVersions v0 request has no fields; v3 has two compact strings and an empty tag buffer.
    assert schema.codec("ApiVersionsRequest", 0).encode({}) == b""
    v3 = schema.codec("ApiVersionsRequest", 3).encode(
        {"client_software_name": "ab", "client_software_version": "1"})
    assert bytes(v3) == b"\x03ab\x021\x00"
    # FindCoordinator v0: a classic int16-length string.
    assert bytes(schema.codec("FindCoordinatorRequest", 0).encode({"key": "g"})) == b"\x00\x01g"


# Primitives -------------------------------------------------------------------------------

def _enc(writer: p.Writer, value: Any) -> bytes:
    out = bytearray()
    writer(out, value)
    return bytes(out)


@pytest.mark.parametrize(("value", "wire"), [
    (0, b"\x00"), (1, b"\x01"), (127, b"\x7f"), (128, b"\x80\x01"), (300, b"\xac\x02"),
    (16383, b"\xff\x7f"), (16384, b"\x80\x80\x01"), (2**32 - 1, b"\xff\xff\xff\xff\x0f"),
    (2**64 - 1, b"\xff" * 9 + b"\x01"),
])
def test_uvarint_known_encodings(value: int, wire: bytes) -> None:
    assert _enc(p.write_uvarint, value) == wire
    assert p.read_uvarint(wire, 0) == (value, len(wire))


@pytest.mark.parametrize(("value", "wire"), [
    (0, b"\x00"), (-1, b"\x01"), (1, b"\x02"), (-64, b"\x7f"), (63, b"\x7e"), (64, b"\x80\x01"),
    (-65, b"\x81\x01"), (2**31 - 1, b"\xfe\xff\xff\xff\x0f"), (-(2**31), b"\xff\xff\xff\xff\x0f"),
    (2**63 - 1, b"\xfe" + b"\xff" * 8 + b"\x01"), (-(2**63), b"\xff" * 9 + b"\x01"),
])
def test_varint_known_encodings(value: int, wire: bytes) -> None:
    assert _enc(p.write_varint, value) == wire
    assert p.read_varint(wire, 0) == (value, len(wire))


@given(st.integers(-(2**63), 2**63 - 1))
def test_varint_round_trip(value: int) -> None:
    wire = _enc(p.write_varint, value)
    assert p.read_varint(wire + b"\x99", 0) == (value, len(wire))
    for cut in range(len(wire)):
        with pytest.raises(DecodeError):
            p.read_varint(wire[:cut], 0)


@given(st.integers(0, 2**64 - 1))
def test_uvarint_round_trip(value: int) -> None:
    wire = _enc(p.write_uvarint, value)
    assert p.read_uvarint(wire, 0) == (value, len(wire))
    assert len(wire) == max(1, -(-value.bit_length() // 7))


def test_overlong_varint_is_rejected() -> None:
    with pytest.raises(DecodeError):
        p.read_uvarint(b"\x80" * 10 + b"\x01", 0)
    with pytest.raises(DecodeError):
        p.read_uvarint(b"\xff" * 1000, 0)


@pytest.mark.parametrize(("reader", "writer", "null_wire"), [
    (p.read_string, p.write_string, b"\xff\xff"),
    (p.read_compact_string, p.write_compact_string, b"\x00"),
    (p.read_bytes, p.write_bytes, b"\xff\xff\xff\xff"),
    (p.read_compact_bytes, p.write_compact_bytes, b"\x00"),
])
def test_null_strings_and_bytes(reader: p.Reader, writer: p.Writer, null_wire: bytes) -> None:
    assert _enc(writer, None) == null_wire
    assert reader(null_wire, 0) == (None, len(null_wire))


def test_empty_is_not_null() -> None:
    assert _enc(p.write_string, "") == b"\x00\x00"
    assert _enc(p.write_compact_string, "") == b"\x01"
    assert _enc(p.write_bytes, b"") == b"\x00\x00\x00\x00"
    assert _enc(p.write_compact_bytes, b"") == b"\x01"
    assert p.read_compact_string(b"\x01", 0) == ("", 1)
    assert p.read_compact_bytes(b"\x01", 0) == (b"", 1)


def test_null_arrays() -> None:
    classic = schema.codec("MetadataRequest", 4)
    assert bytes(classic.encode({"topics": None}))[:4] == b"\xff\xff\xff\xff"
    assert classic.decode(classic.encode({"topics": None}))["topics"] is None
    compact = schema.codec("MetadataRequest", 12)
    assert bytes(compact.encode({"topics": None}))[:1] == b"\x00"
    assert compact.decode(compact.encode({"topics": None}))["topics"] is None
    assert p.read_compact_array_length(b"\x00", 0) == (-1, 1)
    assert p.read_array_length(b"\xff\xff\xff\xff", 0) == (-1, 4)


@given(st.text(max_size=40))
def test_strings_round_trip_utf8(text: str) -> None:
    for reader, writer in ((p.read_string, p.write_string), (p.read_compact_string, p.write_compact_string)):
        wire = _enc(writer, text)
        assert reader(wire, 0) == (text, len(wire))


@pytest.mark.parametrize("wire", [
    b"\xff\xfe",          # string length -2
    b"\x80\x00",          # string length -32768
    b"\x00\x02\xc3",      # truncated body
    b"\x00\x01\xff",      # invalid UTF-8
])
def test_bad_classic_strings(wire: bytes) -> None:
    with pytest.raises(DecodeError):
        p.read_string(wire, 0)


def test_bad_bytes_lengths() -> None:
    with pytest.raises(DecodeError):
        p.read_bytes(b"\xff\xff\xff\xfe", 0)
    with pytest.raises(DecodeError):
        p.read_bytes(b"\x00\x00\x00\x05abcd", 0)
    with pytest.raises(DecodeError):
        p.read_compact_bytes(b"\x06abcd", 0)
    with pytest.raises(DecodeError):
        p.read_compact_string(b"\x02\xff", 0)


@pytest.mark.parametrize(("reader", "size"), [
    (p.read_int8, 1), (p.read_int16, 2), (p.read_uint16, 2), (p.read_int32, 4), (p.read_uint32, 4),
    (p.read_int64, 8), (p.read_float64, 8), (p.read_uuid, 16), (p.read_bool, 1),
])
def test_fixed_width_underrun(reader: p.Reader, size: int) -> None:
    for available in range(size):
        with pytest.raises(DecodeError):
            reader(b"\x01" * available, 0)
        with pytest.raises(DecodeError):
            reader(b"\x01" * (available + 3), 3)  # reading at an offset near the end


def test_uuid_writer() -> None:
    assert _enc(p.write_uuid, None) == bytes(16)
    with pytest.raises(ValueError):
        p.write_uuid(bytearray(), b"short")


# Absurd lengths: fail fast, allocate nothing ----------------------------------------------

def _fails_fast_and_small(fn: Any) -> None:
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(DecodeError):
            fn()
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 0.5  # walking 2**31 elements, or allocating for them, takes far longer
    assert peak < 64 * 1024


@pytest.mark.parametrize("wire", [
    b"\x7f\xff\xff\xff",                 # classic array, 2**31 - 1 elements
    b"\x7f\xff\xff\xff" + b"\x00" * 16,  # ... with a few bytes behind it
])
def test_absurd_classic_array_length(wire: bytes) -> None:
    codec = schema.codec("MetadataRequest", 4)  # topics: classic array of structs
    _fails_fast_and_small(lambda: codec.decode(wire + b"\x01"))


def test_absurd_compact_array_length() -> None:
    codec = schema.codec("MetadataRequest", 12)
    count = bytearray()
    p.write_uvarint(count, 2**31)
    _fails_fast_and_small(lambda: codec.decode(bytes(count) + b"\x00" * 8))
    huge = bytearray()
    p.write_uvarint(huge, 2**63)
    _fails_fast_and_small(lambda: codec.decode(bytes(huge) + b"\x00" * 8))


def test_absurd_array_of_scalars_length() -> None:
    codec = schema.codec("DeleteTopicsRequest", 1)  # topic_names: []string, then timeout
    _fails_fast_and_small(lambda: codec.decode(b"\x7f\xff\xff\xff\x00\x00"))


def test_absurd_bytes_and_string_lengths() -> None:
    _fails_fast_and_small(lambda: p.read_bytes(b"\x7f\xff\xff\xff\x00", 0))
    _fails_fast_and_small(lambda: p.read_string(b"\x7f\xff\x00", 0))
    big = bytearray()
    p.write_uvarint(big, 2**40)
    _fails_fast_and_small(lambda: p.read_compact_bytes(bytes(big) + b"\x00", 0))
    _fails_fast_and_small(lambda: p.read_compact_string(bytes(big) + b"\x00", 0))


def test_absurd_tagged_field_count_and_size() -> None:
    codec = schema.codec("ApiVersionsRequest", 3)
    prefix = b"\x01\x01"  # two empty compact strings
    count = bytearray()
    p.write_uvarint(count, 2**62)
    _fails_fast_and_small(lambda: codec.decode(prefix + bytes(count) + b"\x00\x00"))
    size = bytearray([1, 9])
    p.write_uvarint(size, 2**40)
    _fails_fast_and_small(lambda: codec.decode(prefix + bytes(size) + b"\x00"))
