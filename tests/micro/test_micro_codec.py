"""Micro benchmarks of the Kafka codec on the broker's request path.

Each benchmark runs the same calls as ``broker/server.py``: a request frame
(without its size prefix) is parsed with ``peek_api``, ``read_request_header``
and the compiled request reader; a response is written with
``start_response``, the compiled response writer and ``finish_response``.
Versions are the highest the broker serves, taken from its handler modules.
Every result is decoded back and compared with what went in.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest

from broker.handlers import fetch as fetch_api
from broker.handlers import metadata as metadata_api
from broker.handlers import produce as produce_api
from protocol.framing import (
    SIZE,
    RequestHeader,
    encode_request,
    finish_response,
    peek_api,
    read_request_header,
    start_response,
)
from protocol.records import iter_batch_headers
from protocol.schema import is_flexible, message_spec, request_codec, response_codec

pytestmark = pytest.mark.benchmark(group="codec")
BatchFactory = Callable[..., bytes]

TOPIC = "bench-topic"
TOPIC_ID = uuid.UUID("6f1c1a52-63a4-4d3e-9a54-0b5f5b7c2e11").bytes
CORRELATION_ID = 4242
API_VERSIONS_KEY = 18


def on_wire(message: str, version: int, *path: str) -> bool:
    """Whether the field at ``path`` (snake_case names, outermost first) exists in ``version``."""
    fields = message_spec(message).fields
    for name in path:
        spec = next(f for f in fields if f.name == name)
        if version not in spec.versions:
            return False
        fields = spec.fields
    return True


def check_topic(decoded: dict[str, Any], message: str, version: int, path: tuple[str, ...], name_field: str) -> None:
    """The decoded topic is identified as sent: by name, by id, or both, as the version carries them."""
    carried = [field for field in (name_field, "topic_id") if on_wire(message, version, *path, field)]
    assert carried
    for field in carried:
        assert decoded[field] == (TOPIC if field == name_field else TOPIC_ID)


def decode_request(frame: memoryview) -> tuple[RequestHeader, dict[str, Any], int]:
    """What the server does with a frame: (header, body, end position)."""
    api_key, version, _correlation = peek_api(frame)
    header, pos = read_request_header(frame, is_flexible(api_key, version))
    body, end = request_codec(api_key, version).read(frame, pos)
    return header, body, end


def encode_response(api_key: int, version: int, correlation_id: int,
                    body: dict[str, Any]) -> bytearray | list[bytes | bytearray | memoryview]:
    """What the server does with a handler's response: the framed bytes to send."""
    out = start_response(correlation_id, is_flexible(api_key, version) and api_key != API_VERSIONS_KEY)
    response_codec(api_key, version).write(out, body)
    return finish_response(out)


def parse_response(api_key: int, version: int, wire: bytes | bytearray | list[Any]) -> dict[str, Any]:
    """Check the size prefix and correlation id of a framed response; decode its body."""
    if isinstance(wire, list):  # pieces, large record data spliced in by reference
        wire = b"".join(wire)
    (size,) = SIZE.unpack_from(wire, 0)
    assert size == len(wire) - 4
    assert int.from_bytes(wire[4:8], "big") == CORRELATION_ID
    pos = 8
    if is_flexible(api_key, version):
        assert wire[pos] == 0  # no tagged fields in the header
        pos += 1
    return response_codec(api_key, version).decode(memoryview(wire)[pos:])


def _produce_frame(partitions: int, batch: bytes) -> tuple[memoryview, dict[str, Any]]:
    version = produce_api.API.max_version
    body = {
        "transactional_id": None,
        "acks": -1,
        "timeout_ms": 30_000,
        "topic_data": [{
            "name": TOPIC,
            "topic_id": TOPIC_ID,
            "partition_data": [{"index": i, "records": batch} for i in range(partitions)],
        }],
    }
    header = RequestHeader(produce_api.KEY, version, CORRELATION_ID, "bench-producer")
    wire = encode_request(header, is_flexible(produce_api.KEY, version),
                          request_codec(produce_api.KEY, version).encode(body))
    return memoryview(wire)[4:], body  # the server hands handlers the frame after the size prefix


@pytest.mark.parametrize("partitions", [1, 16])
def test_decode_produce_request(benchmark: Any, make_batch: BatchFactory, partitions: int) -> None:
    """ProduceRequest at the newest served version: 1 topic, one batch of one 1 KiB record per partition."""
    batch = make_batch(1)
    frame, sent = _produce_frame(partitions, batch)

    header, body, end = benchmark(decode_request, frame)

    assert end == len(frame)
    assert (header.api_key, header.api_version) == (produce_api.KEY, produce_api.API.max_version)
    assert (header.correlation_id, header.client_id) == (CORRELATION_ID, "bench-producer")
    assert (body["acks"], body["timeout_ms"], body["transactional_id"]) == (-1, 30_000, None)
    [topic] = body["topic_data"]
    check_topic(topic, "ProduceRequest", header.api_version, ("topic_data",), "name")
    decoded = [(pd["index"], bytes(pd["records"])) for pd in topic["partition_data"]]
    assert decoded == [(pd["index"], batch) for pd in sent["topic_data"][0]["partition_data"]]


@pytest.mark.parametrize("partitions", [1, 16])
def test_encode_produce_response(benchmark: Any, partitions: int) -> None:
    """ProduceResponse at the newest served version for 1 topic and ``partitions`` partitions."""
    version = produce_api.API.max_version
    body = {
        "responses": [{
            "name": TOPIC,
            "topic_id": TOPIC_ID,
            "partition_responses": [{
                "index": i, "error_code": 0, "base_offset": 1_000_000 + 17 * i, "log_append_time_ms": -1,
                "log_start_offset": 0, "record_errors": [], "error_message": None,
            } for i in range(partitions)],
        }],
        "throttle_time_ms": 0,
    }

    wire = benchmark(encode_response, produce_api.KEY, version, CORRELATION_ID, body)

    decoded = parse_response(produce_api.KEY, version, wire)
    [topic] = decoded["responses"]
    check_topic(topic, "ProduceResponse", version, ("responses",), "name")
    got = [(p["index"], p["error_code"], p["base_offset"], p["log_start_offset"])
           for p in topic["partition_responses"]]
    assert got == [(i, 0, 1_000_000 + 17 * i, 0) for i in range(partitions)]


def test_encode_fetch_response(benchmark: Any, make_batch: BatchFactory) -> None:
    """FetchResponse at the newest served version: 1 topic, 4 partitions, 16 batches of 4 x 1 KiB each."""
    version = fetch_api.API.max_version
    partitions = 4
    chunks = []
    for _ in range(partitions):
        batches = [make_batch(4, base_offset=4 * b) for b in range(16)]
        chunks.append([memoryview(b"".join(batches))])  # as the segment reader returns them
    body = {
        "throttle_time_ms": 0,
        "error_code": 0,
        "session_id": 0,
        "responses": [{
            "topic": TOPIC,
            "topic_id": TOPIC_ID,
            "partitions": [{
                "partition_index": i, "error_code": 0, "high_watermark": 64, "last_stable_offset": 64,
                "log_start_offset": 0, "aborted_transactions": None, "preferred_read_replica": -1,
                "records": chunks[i],
            } for i in range(partitions)],
        }],
    }

    wire = benchmark(encode_response, fetch_api.KEY, version, CORRELATION_ID, body)

    decoded = parse_response(fetch_api.KEY, version, wire)
    [topic] = decoded["responses"]
    check_topic(topic, "FetchResponse", version, ("responses",), "topic")
    assert [p["partition_index"] for p in topic["partitions"]] == list(range(partitions))
    for part, sent in zip(topic["partitions"], chunks, strict=True):
        records = bytes(part["records"])
        assert records == bytes(sent[0])
        assert [h.base_offset for _pos, h in iter_batch_headers(records)] == [4 * b for b in range(16)]
        assert part["high_watermark"] == 64


def test_encode_metadata_response(benchmark: Any) -> None:
    """MetadataResponse at the newest served version: 3 brokers, 8 topics of 16 partitions."""
    version = metadata_api.API.max_version
    brokers = [{"node_id": n, "host": f"broker-{n}.local", "port": 9092 + n, "rack": None} for n in range(3)]
    topics = [{
        "error_code": 0, "name": f"topic-{t}", "topic_id": uuid.UUID(int=t + 1).bytes, "is_internal": False,
        "partitions": [{
            "error_code": 0, "partition_index": p, "leader_id": (t + p) % 3, "leader_epoch": 5,
            "replica_nodes": [(t + p) % 3], "isr_nodes": [(t + p) % 3], "offline_replicas": [],
        } for p in range(16)],
    } for t in range(8)]
    body = {"throttle_time_ms": 0, "brokers": brokers, "cluster_id": "keel-bench-cluster", "controller_id": 0,
            "topics": topics}

    wire = benchmark(encode_response, metadata_api.API.key, version, CORRELATION_ID, body)

    decoded = parse_response(metadata_api.API.key, version, wire)
    assert [(b["node_id"], b["host"], b["port"]) for b in decoded["brokers"]] == [
        (n, f"broker-{n}.local", 9092 + n) for n in range(3)]
    assert decoded["cluster_id"] == "keel-bench-cluster"
    assert [(t["name"], len(t["partitions"])) for t in decoded["topics"]] == [(f"topic-{t}", 16) for t in range(8)]
    leaders = [(p["partition_index"], p["leader_id"], p["isr_nodes"]) for p in decoded["topics"][5]["partitions"]]
    assert leaders == [(p, (5 + p) % 3, [(5 + p) % 3]) for p in range(16)]
