"""The codec against request frames captured from real Kafka clients.

``tests/golden/*.bin`` are whole request frames (size prefix included) that
confluent-kafka, kafka-python and aiokafka sent to the fake broker in
``tools/capture_golden.py`` (see ``tests/golden/README.md``).  Every frame
must parse with ``protocol.framing`` + ``protocol.schema`` with nothing left
over, re-encode to the very same bytes, and hold what the client was asked to
send.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from protocol import framing, records, schema
from protocol.primitives import DecodeError

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
FILES = sorted(GOLDEN.glob("*.bin"))
NAME = re.compile(r"^(?P<client>.+)-(?P<api>[a-z]+)-v(?P<version>\d+)\.bin$")
CLIENTS = ("confluent", "confluent-idempotent", "kafka-python", "aiokafka")
TOPIC = "golden"
TOPIC_ID = bytes.fromhex("6b65656c676f6c64656e746f70696321")
IDEMPOTENT = {"confluent-idempotent", "kafka-python"}


def _parse(path: Path) -> tuple[str, framing.RequestHeader, bool, dict[str, Any], bytes]:
    framed = path.read_bytes()
    client = _name_parts(path)[0]
    assert framing.SIZE.unpack_from(framed)[0] == len(framed) - 4
    frame = framed[4:]
    api_key, version, _ = framing.peek_api(frame)
    flexible = schema.is_flexible(api_key, version)
    header, pos = framing.read_request_header(frame, flexible)
    body = schema.request_codec(api_key, version).decode(frame, pos)  # raises on trailing bytes
    return client, header, flexible, body, framed


def _name_parts(path: Path) -> tuple[str, str, int]:
    """(client, api, version) from ``<client>-<api>-v<version>.bin``."""
    match = NAME.match(path.name)
    assert match is not None, path.name
    return match["client"], match["api"], int(match["version"])


def _by_kind(api: str) -> list[Path]:
    return [f for f in FILES if _name_parts(f)[1] == api]


def test_golden_set_is_complete() -> None:
    names = {f.name for f in FILES}
    for client in CLIENTS:
        for api in ("apiversions", "metadata", "produce", "fetch", "listoffsets"):
            assert any(n.startswith(f"{client}-{api}-v") for n in names), (client, api)
    for client in IDEMPOTENT:
        assert any(n.startswith(f"{client}-initproducerid-v") for n in names), client
    produce_versions = {_name_parts(f)[2] for f in _by_kind("produce")}
    assert min(produce_versions) < 9 <= max(produce_versions), "need classic and flexible produce frames"
    assert sum(f.stat().st_size for f in FILES) < 200 * 1024


@pytest.mark.parametrize("path", FILES, ids=[f.name for f in FILES])
def test_golden_frame_round_trips(path: Path) -> None:
    client, header, flexible, body, framed = _parse(path)
    _, api, version = _name_parts(path)
    assert header.client_id == client
    assert schema.api_names()[header.api_key].lower() == api
    assert header.api_version == version
    codec = schema.request_codec(header.api_key, header.api_version)
    assert framing.encode_request(header, flexible, codec.encode(body)) == framed


@pytest.mark.parametrize("path", FILES, ids=[f.name for f in FILES])
def test_golden_frame_truncated_anywhere_raises(path: Path) -> None:
    _, header, flexible, _, framed = _parse(path)
    frame = framed[4:]
    codec = schema.request_codec(header.api_key, header.api_version)
    for cut in range(len(frame)):
        with pytest.raises(DecodeError):
            prefix = frame[:cut]
            _, pos = framing.read_request_header(prefix, flexible)
            codec.decode(prefix, pos)


@pytest.mark.parametrize("path", _by_kind("produce"), ids=lambda p: p.name)
def test_golden_produce_carries_the_record(path: Path) -> None:
    client, _, _, body, _ = _parse(path)
    assert body["acks"] in (-1, 1)
    assert body["transactional_id"] is None
    (topic,) = body["topic_data"]
    assert topic["name"] == TOPIC
    (partition,) = topic["partition_data"]
    assert partition["index"] == 0
    blob = bytes(partition["records"])
    assert blob[16] == records.MAGIC  # a v2 batch: magic byte at offset 16
    header = records.validate_single_batch(blob)
    assert header.record_count == 1
    if client in IDEMPOTENT:
        assert header.producer_id >= 0 and header.base_sequence == 0
    else:
        assert header.producer_id == -1
    (record,) = records.decode_records(blob)
    assert (record.key, record.value) == (b"golden-key", b"golden-value")
    assert [(k, bytes(v)) for k, v in record.headers] == [("golden-header", b"h")]


@pytest.mark.parametrize("path", _by_kind("fetch"), ids=lambda p: p.name)
def test_golden_fetch_asks_for_the_topic(path: Path) -> None:
    _, header, _, body, _ = _parse(path)
    (topic,) = body["topics"]
    if header.api_version >= 13:
        assert topic["topic_id"] == TOPIC_ID
    else:
        assert topic["topic"] == TOPIC
    (partition,) = topic["partitions"]
    assert partition["partition"] == 0 and partition["fetch_offset"] == 0
    assert body["max_wait_ms"] >= 0 and body["max_bytes"] > 0


@pytest.mark.parametrize("path", _by_kind("listoffsets"), ids=lambda p: p.name)
def test_golden_list_offsets_asks_for_earliest(path: Path) -> None:
    _, _, _, body, _ = _parse(path)
    (topic,) = body["topics"]
    assert topic["name"] == TOPIC
    (partition,) = topic["partitions"]
    assert partition["partition_index"] == 0
    assert partition["timestamp"] == -2  # EARLIEST: every client seeks to the beginning


@pytest.mark.parametrize("path", _by_kind("metadata"), ids=lambda p: p.name)
def test_golden_metadata_names_the_topic_or_all(path: Path) -> None:
    _, _, _, body, _ = _parse(path)
    topics = body["topics"]
    assert topics is None or [t["name"] for t in topics] in ([], [TOPIC])


@pytest.mark.parametrize("path", _by_kind("apiversions"), ids=lambda p: p.name)
def test_golden_api_versions(path: Path) -> None:
    _, header, _, body, _ = _parse(path)
    if header.api_version >= 3:
        assert body["client_software_name"] and body["client_software_version"]


@pytest.mark.parametrize("path", _by_kind("initproducerid"), ids=lambda p: p.name)
def test_golden_init_producer_id(path: Path) -> None:
    _, _, _, body, _ = _parse(path)
    assert body["transactional_id"] is None
    assert body["producer_id"] == -1 and body["producer_epoch"] == -1
