"""Bad input gets a Kafka error code or a clean disconnect; the broker and its other clients carry on.

Invariant 5 of the design: malformed frames, absurd lengths, unknown API keys
or versions and corrupt record batches must never crash the broker, hang it,
or make it allocate what a client merely claims to send.  Every case here
speaks raw bytes to a real ``keel serve`` process (crafted with
``protocol.schema`` and ``protocol.framing``) and checks three things: the
precise outcome (an error code, or the connection closed without a
response), that a connection opened *before* the bad input still works
afterwards, and that the broker process is alive and logged why it hung up.
"""

from __future__ import annotations

import os
import random
import socket
import struct
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from crc32c import crc32c
from hypothesis import given, settings
from hypothesis import strategies as st

from integration.broker_process import BrokerProcess, api_versions_v0
from protocol import primitives as p
from protocol import records
from protocol.errors import ErrorCode
from protocol.framing import SIZE, RequestHeader, encode_request
from protocol.primitives import DecodeError
from protocol.schema import FieldSpec, is_flexible, message_spec, request_codec, response_codec

MiB = 1024 * 1024
CLIENT_ID = "keel-bad-input"
CLOSE_WITHIN_S = 2.0
RSS_SLACK_BYTES = 50 * MiB
PRODUCE_V = 9  # flexible
FETCH_V = 12  # flexible, still addresses topics by name
METADATA_V = 9
CREATE_TOPICS_V = 5
API_VERSIONS_KEY = 18

Message = dict[str, Any]


# --- raw wire --------------------------------------------------------------------------------------


class Closed(Exception):
    """The broker closed the connection (EOF or reset)."""


class Wire:
    """One raw TCP connection to the broker, speaking Kafka frames built from the schema codecs."""

    def __init__(self, address: tuple[str, int], timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(address, timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._cid = 0

    @property
    def peer(self) -> str:
        """How the broker names this connection in its log."""
        host, port = self.sock.getsockname()[:2]
        return f"{host}:{port}"

    def next_cid(self) -> int:
        self._cid += 1
        return self._cid

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def frame(self, api_key: int, version: int, body: bytes, cid: int, *, flexible: bool | None = None) -> bytes:
        if flexible is None:
            flexible = is_flexible(api_key, version)
        return encode_request(RequestHeader(api_key, version, cid, CLIENT_ID), flexible, body)

    def send_message(self, api_key: int, version: int, message: Message) -> int:
        cid = self.next_cid()
        body = bytes(request_codec(api_key, version).encode(message))
        self.send(self.frame(api_key, version, body, cid))
        return cid

    def recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            try:
                chunk = self.sock.recv(n - len(buf))
            except ConnectionResetError as exc:
                raise Closed(f"reset after {len(buf)} of {n} bytes") from exc
            if not chunk:
                raise Closed(f"EOF after {len(buf)} of {n} bytes")
            buf += chunk
        return bytes(buf)

    def read_frame(self) -> tuple[int, bytes]:
        """(correlation id, bytes after it) of the next response."""
        (size,) = SIZE.unpack(self.recv_exact(4))
        assert 4 <= size < 64 * MiB, f"absurd response size {size}"
        frame = self.recv_exact(size)
        return struct.unpack_from(">i", frame)[0], frame[4:]

    def read_response(self, api_key: int, version: int, cid: int) -> Message:
        got_cid, rest = self.read_frame()
        assert got_cid == cid, f"correlation id {got_cid}, expected {cid}"
        pos = 0
        if is_flexible(api_key, version) and api_key != API_VERSIONS_KEY:
            count, pos = p.read_uvarint(rest, 0)
            assert count == 0, "unexpected tagged fields in the response header"
        return response_codec(api_key, version).decode(rest[pos:])

    def call(self, api_key: int, version: int, message: Message) -> Message:
        return self.read_response(api_key, version, self.send_message(api_key, version, message))

    def expect_closed(self, started: float | None = None, within: float = CLOSE_WITHIN_S) -> float:
        """Wait for EOF or reset, failing if the broker sends anything first; returns seconds taken."""
        started = time.monotonic() if started is None else started
        deadline = started + within
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"connection still open {within:.1f} s after the bad input")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                break
            except TimeoutError:
                continue
            if not data:
                break
            raise AssertionError(f"expected a disconnect, got {len(data)} bytes: {data[:64]!r}")
        return time.monotonic() - started

    def expect_silence(self, seconds: float) -> None:
        """Nothing arrives and the connection stays open for ``seconds``."""
        self.sock.settimeout(seconds)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return
        finally:
            self.sock.settimeout(5.0)
        raise AssertionError(f"expected silence, got {data[:64]!r}" if data else "connection was closed")

    def close(self, reset: bool = False) -> None:
        if reset:  # RST instead of FIN, as a crashed client would
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


def raw_frame(api_key: int, version: int, cid: int, body: bytes, *, flexible: bool = False) -> bytes:
    return encode_request(RequestHeader(api_key, version, cid, CLIENT_ID), flexible, body)


def parse_request(api_key: int, version: int, body: bytes) -> Message:
    """Decode a request body as the broker does: like Kafka, bytes after the last field are ignored."""
    return request_codec(api_key, version).read(body, 0)[0]


# --- broker process observations ------------------------------------------------------------------


def rss_bytes(broker: BrokerProcess) -> int:
    assert broker.pid is not None
    for line in Path(f"/proc/{broker.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line")


def open_fds(broker: BrokerProcess) -> int:
    return len(os.listdir(f"/proc/{broker.pid}/fd"))


def log_size(broker: BrokerProcess) -> int:
    try:
        return broker.log_path.stat().st_size
    except FileNotFoundError:
        return 0


def log_since(broker: BrokerProcess, offset: int) -> str:
    with open(broker.log_path, "rb") as fh:
        fh.seek(offset)
        return fh.read().decode(errors="replace")


def assert_logged(broker: BrokerProcess, since: int, *needles: str, timeout: float = 3.0) -> str:
    """A single log line written after ``since`` contains every needle; returns that line."""
    deadline = time.monotonic() + timeout
    while True:
        for line in log_since(broker, since).splitlines():
            if all(n in line for n in needles):
                return line
        if time.monotonic() > deadline:
            raise AssertionError(f"no log line with {needles!r}; log since the test began:\n"
                                 f"{log_since(broker, since)[-3000:]}")
        time.sleep(0.05)


class Bystander:
    """A well-behaved client that connected before the bad input and must not notice it."""

    def __init__(self, broker: BrokerProcess) -> None:
        self.broker = broker
        self.log_start = log_size(broker)
        self.wire = Wire(broker.address)
        self._check_wire()

    def _check_wire(self) -> None:
        versions = self.wire.call(API_VERSIONS_KEY, 3, {"client_software_name": "keel-tests",
                                                         "client_software_version": "1"})
        assert versions["error_code"] == ErrorCode.NONE
        assert {k["api_key"] for k in versions["api_keys"]} >= {0, 1, 3, 18, 19}
        metadata = self.wire.call(3, METADATA_V, {"topics": None})
        assert [(b["host"], b["port"]) for b in metadata["brokers"]] == [self.broker.address]

    def assert_unaffected(self) -> None:
        assert self.broker.is_running(), f"broker died\n{self.broker.log_tail()}"
        self._check_wire()
        assert api_versions_v0(self.broker.address, timeout=3.0)  # a connection opened afterwards works too
        text = log_since(self.broker, self.log_start)
        assert "Traceback" not in text, f"broker logged an exception:\n{text[-3000:]}"


@pytest.fixture
def bystander(module_broker: BrokerProcess) -> Iterator[Bystander]:
    b = Bystander(module_broker)
    try:
        yield b
    finally:
        b.wire.close()


@pytest.fixture
def wire(module_broker: BrokerProcess) -> Iterator[Wire]:
    w = Wire(module_broker.address)
    try:
        yield w
    finally:
        w.close()


# --- Kafka helpers ---------------------------------------------------------------------------------


def unique_topic(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def create_topics(w: Wire, topics: list[Message]) -> dict[str, Message]:
    for t in topics:
        t.setdefault("num_partitions", 1)
        t.setdefault("replication_factor", 1)
        t.setdefault("assignments", [])
        t.setdefault("configs", [])
    resp = w.call(19, CREATE_TOPICS_V, {"topics": topics, "timeout_ms": 10_000, "validate_only": False})
    return {t["name"]: t for t in resp["topics"]}


def create_topic(w: Wire, name: str, configs: dict[str, str] | None = None) -> None:
    result = create_topics(w, [{"name": name, "configs": [{"name": k, "value": v}
                                                          for k, v in (configs or {}).items()]}])
    assert result[name]["error_code"] == ErrorCode.NONE, result[name]


def produce_message(topic: str, records_bytes: bytes | None, *, partition: int = 0, acks: int = -1) -> Message:
    return {"transactional_id": None, "acks": acks, "timeout_ms": 10_000,
            "topic_data": [{"name": topic, "partition_data": [{"index": partition, "records": records_bytes}]}]}


def produce(w: Wire, topic: str, records_bytes: bytes | None, *, partition: int = 0, acks: int = -1,
            version: int = PRODUCE_V) -> Message:
    """The single partition result of a one-partition Produce."""
    resp = w.call(0, version, produce_message(topic, records_bytes, partition=partition, acks=acks))
    [topic_resp] = resp["responses"]
    assert topic_resp["name"] == topic
    [part] = topic_resp["partition_responses"]
    assert part["index"] == partition
    return part


def fetch(w: Wire, topic: str, offset: int, partition: int = 0, current_leader_epoch: int = -1) -> Message:
    resp = w.call(1, FETCH_V, {
        "replica_id": -1, "max_wait_ms": 0, "min_bytes": 1, "max_bytes": MiB, "isolation_level": 0,
        "session_id": 0, "session_epoch": -1,
        "topics": [{"topic": topic, "partitions": [{"partition": partition, "fetch_offset": offset,
                                                    "partition_max_bytes": MiB,
                                                    "current_leader_epoch": current_leader_epoch}]}],
        "forgotten_topics_data": [], "rack_id": "",
    })
    assert resp["error_code"] == ErrorCode.NONE
    [topic_resp] = resp["responses"]
    [part] = topic_resp["partitions"]
    assert part["partition_index"] == partition
    return part


def good_batch(value: bytes = b"value", count: int = 1) -> bytes:
    return records.build_batch([(b"key", value)] * count)


def confluent_round_trip(bootstrap: str) -> None:
    """A librdkafka producer and consumer, as a real application would use them, still work."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    topic = unique_topic("bystander")
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0,
                         "message.timeout.ms": 20_000})
    delivered: list[tuple[Any, int]] = []
    producer.produce(topic, value=b"still-working", key=b"k",
                     on_delivery=lambda err, msg: delivered.append((err, msg.offset())))
    assert producer.flush(20) == 0
    assert len(delivered) == 1 and delivered[0][0] is None, delivered
    offset = delivered[0][1]
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"keel-bad-input-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "fetch.wait.max.ms": 100})
    try:
        consumer.assign([TopicPartition(topic, 0, offset)])
        deadline = time.monotonic() + 20
        while True:
            assert time.monotonic() < deadline, "consumer got nothing back"
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            assert (msg.offset(), msg.key(), msg.value()) == (offset, b"k", b"still-working")
            return
    finally:
        consumer.close()


# --- 1, 2: absurd size prefixes --------------------------------------------------------------------


@pytest.mark.parametrize("size", [2**31 - 1, 200 * MiB, 100 * MiB + 1], ids=["2GiB", "200MiB", "limit+1"])
def test_oversized_frame_is_closed_without_allocating(module_broker: BrokerProcess, bystander: Bystander,
                                                      size: int) -> None:
    rss_before = rss_bytes(module_broker)
    w = Wire(module_broker.address)
    started = time.monotonic()
    w.send(SIZE.pack(size))
    # Keep streaming as a real sender of a huge frame would: a broker that buffered the frame
    # would keep reading, and its RSS would show it.
    chunk = b"\xab" * MiB
    streamed = 0
    w.sock.settimeout(0.5)
    try:
        while streamed < 64 * MiB:
            streamed += w.sock.send(chunk)
    except (BrokenPipeError, ConnectionResetError, TimeoutError):
        pass
    assert w.expect_closed(started) < CLOSE_WITHIN_S
    assert streamed < 64 * MiB, "the broker kept reading the body of an oversized frame"
    assert rss_bytes(module_broker) - rss_before < RSS_SLACK_BYTES
    assert_logged(module_broker, bystander.log_start, f"closing {w.peer}:", f"request frame of {size} bytes")
    w.close()
    bystander.assert_unaffected()


@pytest.mark.parametrize("size", [-1, -(2**31), 0, 3, 7])
def test_negative_or_headerless_size_prefix_is_closed(module_broker: BrokerProcess, bystander: Bystander,
                                                      size: int) -> None:
    w = Wire(module_broker.address)
    w.send(SIZE.pack(size) + b"\x00\x12\x00"[: max(size, 0)])
    w.expect_closed()
    assert_logged(module_broker, bystander.log_start, f"closing {w.peer}:", f"request frame of {size} bytes")
    w.close()
    bystander.assert_unaffected()


@pytest.mark.parametrize("api_key, version", [(18, 0), (3, 9)], ids=["ApiVersions-v0", "Metadata-v9"])
def test_frame_ending_inside_the_request_header_is_closed(module_broker: BrokerProcess, bystander: Bystander,
                                                          api_key: int, version: int) -> None:
    # 8 bytes: api key, version and correlation id, but no client id.
    w = Wire(module_broker.address)
    w.send(SIZE.pack(8) + struct.pack(">hhi", api_key, version, 5))
    w.expect_closed()
    assert_logged(module_broker, bystander.log_start, f"closing {w.peer}:", "malformed", f"v{version}")
    w.close()
    bystander.assert_unaffected()


# --- 3: truncated requests -------------------------------------------------------------------------


def test_truncated_request_then_close(module_broker: BrokerProcess, bystander: Bystander) -> None:
    w = Wire(module_broker.address)
    w.send(SIZE.pack(100) + bytes(range(50)))
    w.close()
    w = Wire(module_broker.address)
    w.send(SIZE.pack(100) + bytes(range(50)))
    w.close(reset=True)
    bystander.assert_unaffected()


def test_stalled_request_does_not_block_others_and_completes_later(module_broker: BrokerProcess,
                                                                    bystander: Bystander) -> None:
    # ApiVersions v0 whose client id pads the frame to exactly 100 bytes.
    frame = encode_request(RequestHeader(API_VERSIONS_KEY, 0, 77, "x" * 90), False, b"")
    assert SIZE.unpack_from(frame)[0] == 100
    w = Wire(module_broker.address)
    w.send(frame[:54])  # the size prefix and 50 of the 100 bytes
    w.expect_silence(0.3)
    bystander.assert_unaffected()  # while the other connection sits mid-frame
    confluent_round_trip(module_broker.bootstrap)
    w.send(frame[54:])
    cid, body = w.read_frame()
    assert cid == 77
    assert response_codec(API_VERSIONS_KEY, 0).decode(body)["error_code"] == ErrorCode.NONE
    w.close()


def test_huge_declared_frame_sent_slowly_stays_bounded(module_broker: BrokerProcess,
                                                       bystander: Bystander) -> None:
    """A frame under the limit that never completes costs only what was really sent."""
    rss_before = rss_bytes(module_broker)
    w = Wire(module_broker.address)
    w.send(SIZE.pack(99 * MiB) + b"\x00" * MiB)
    w.expect_silence(0.3)
    bystander.assert_unaffected()
    assert rss_bytes(module_broker) - rss_before < RSS_SLACK_BYTES
    w.close(reset=True)
    bystander.assert_unaffected()


def test_declared_but_unsent_frames_do_not_starve_other_clients(module_broker: BrokerProcess,
                                                                bystander: Bystander) -> None:
    """Size prefixes alone cost a client 4 bytes each; they must not use up a budget others need.

    Ten frames of 100 MiB, then sizes halving from 64 MiB down to 16 bytes, fill any server-wide
    budget of declared-but-unread bytes up to 1 GiB to within 16 bytes.
    """
    sizes = [100 * MiB] * 10 + [1 << k for k in range(26, 3, -1)]
    stalled = [Wire(module_broker.address) for _ in sizes]
    try:
        for w, size in zip(stalled, sizes, strict=True):
            w.send(SIZE.pack(size))
        time.sleep(0.2)
        bystander.wire.sock.settimeout(3.0)
        bystander.assert_unaffected()
    finally:
        for w in stalled:
            w.close(reset=True)
    bystander.wire.sock.settimeout(5.0)
    bystander.assert_unaffected()


# --- 4: garbled bodies -----------------------------------------------------------------------------


def _garbage_rejected_by(api_key: int, version: int, seed: int, length: int = 64) -> bytes:
    """Seeded random bytes that this message's codec is known to reject."""
    rng = random.Random(seed)
    while True:
        body = bytes(rng.getrandbits(8) for _ in range(length))
        try:
            parse_request(api_key, version, body)
        except DecodeError:
            return body


def test_garbled_metadata_body_is_closed(module_broker: BrokerProcess, bystander: Bystander) -> None:
    w = Wire(module_broker.address)
    w.send(w.frame(3, METADATA_V, _garbage_rejected_by(3, METADATA_V, seed=1), cid=41))
    w.expect_closed()
    assert_logged(module_broker, bystander.log_start, f"closing {w.peer}:", "malformed Metadata v9",
                  "correlation 41")
    w.close()
    bystander.assert_unaffected()


def test_requests_before_a_garbled_one_are_still_answered(module_broker: BrokerProcess,
                                                          bystander: Bystander) -> None:
    w = Wire(module_broker.address)
    good = w.frame(API_VERSIONS_KEY, 0, b"", cid=1)
    bad = w.frame(3, METADATA_V, _garbage_rejected_by(3, METADATA_V, seed=2), cid=2)
    w.send(good + bad)
    assert w.read_response(API_VERSIONS_KEY, 0, 1)["error_code"] == ErrorCode.NONE
    w.expect_closed()
    w.close()
    bystander.assert_unaffected()


HUGE_COUNTS = {
    # Metadata v4: topics array of 2**31-1 names, then the allow_auto_topic_creation bool.
    "metadata-v4-array": (3, 4, struct.pack(">i", 2**31 - 1) + b"\x01"),
    # Metadata v9: compact array whose varint length is 2**35.
    "metadata-v9-compact-array": (3, 9, b"\x80\x80\x80\x80\x80\x01" + b"\x01\x00\x00\x00"),
    # Metadata v1: one topic whose name claims 32767 bytes.
    "metadata-v1-string": (3, 1, struct.pack(">ih", 1, 32767) + b"abc"),
    # Produce v3: null transactional id, acks, timeout, then 2**31-1 topics.
    "produce-v3-array": (0, 3, struct.pack(">hhii", -1, 1, 1000, 2**31 - 1)),
    # Produce v3: one topic, one partition, records claiming 2**31-1 bytes.
    "produce-v3-records": (0, 3, struct.pack(">hhii", -1, 1, 1000, 1) + struct.pack(">h", 1) + b"t"
                           + struct.pack(">iii", 1, 0, 2**31 - 1) + b"\x00" * 8),
    # CreateTopics v5: compact array of about 2**28 topics.
    "create-topics-v5-array": (19, 5, b"\xff\xff\xff\x7f" + b"\x00" * 4),
    # Fetch v4: 2**31-1 partitions in the one topic.
    "fetch-v4-partitions": (1, 4, struct.pack(">iiiib", -1, 0, 1, MiB, 0) + struct.pack(">ih", 1, 1) + b"t"
                            + struct.pack(">i", 2**31 - 1)),
}


@pytest.mark.parametrize("case", list(HUGE_COUNTS))
def test_huge_count_in_tiny_body_is_closed_quickly(module_broker: BrokerProcess, bystander: Bystander,
                                                   case: str) -> None:
    api_key, version, body = HUGE_COUNTS[case]
    with pytest.raises(DecodeError):
        parse_request(api_key, version, body)
    rss_before = rss_bytes(module_broker)
    w = Wire(module_broker.address)
    started = time.monotonic()
    w.send(w.frame(api_key, version, body, cid=9))
    assert w.expect_closed(started) < 1.0
    assert rss_bytes(module_broker) - rss_before < RSS_SLACK_BYTES
    assert_logged(module_broker, bystander.log_start, f"closing {w.peer}:", "malformed", f"v{version}")
    w.close()
    bystander.assert_unaffected()


NULL_ARRAYS = {
    # Kafka reads a negative length for a non-nullable array as a malformed request.
    "list-offsets-v1-topics": (2, 1, "ListOffsets", struct.pack(">ii", 0, -1)),
    "produce-v3-topic-data": (0, 3, "Produce", struct.pack(">hhii", -1, 1, 1000, -1)),
    "produce-v3-partition-data": (0, 3, "Produce", struct.pack(">hhiih", -1, 1, 1000, 1, 1) + b"t"
                                  + struct.pack(">i", -1)),
    "fetch-v4-topics": (1, 4, "Fetch", struct.pack(">iiiibi", -1, 0, 1, MiB, 0, -(2**31))),
    "create-topics-v2-topics": (19, 2, "CreateTopics", struct.pack(">iib", -1, 1000, 0)),
}


@pytest.mark.parametrize("case", list(NULL_ARRAYS))
def test_null_for_a_non_nullable_array_is_malformed(module_broker: BrokerProcess, bystander: Bystander,
                                                     case: str) -> None:
    api_key, version, name, body = NULL_ARRAYS[case]
    w = Wire(module_broker.address)
    w.send(w.frame(api_key, version, body, cid=12))
    w.expect_closed()
    assert_logged(module_broker, bystander.log_start, f"closing {w.peer}:", f"malformed {name} v{version}")
    assert f"request from {w.peer} failed" not in log_since(module_broker, bystander.log_start)
    w.close()
    bystander.assert_unaffected()


def _nulls_where_not_allowed(fields: list[FieldSpec], value: Message, version: int, flexible: bool) -> list[str]:
    """Names of fields that decoded to null although this version declares them non-nullable."""
    found = []
    for spec in fields:
        if version not in spec.versions or (flexible and version in spec.tagged):
            continue
        item = value.get(spec.name)
        if item is None:
            if version not in spec.nullable:
                found.append(spec.name)
        elif spec.is_struct:
            for element in item if spec.is_array else [item]:
                found += _nulls_where_not_allowed(spec.fields, element, version, flexible)
    return found


FUZZ_TARGETS = [(3, 1), (3, 9), (18, 3), (0, 3), (0, 9), (2, 1), (2, 7)]


@settings(max_examples=80, deadline=None)
@given(target=st.sampled_from(FUZZ_TARGETS), body=st.binary(max_size=48))
def test_fuzzed_bodies_get_an_answer_or_a_clean_close(module_broker: BrokerProcess,
                                                      target: tuple[int, int], body: bytes) -> None:
    """The schema is the oracle: a valid body is answered, an undecodable one closes the connection.

    A body that decodes only because the codec reads null where the schema forbids it may get
    either an answer or a close; what it may never get is an internal error.
    """
    api_key, version = target
    codec = request_codec(api_key, version)
    try:
        request: Message | None = parse_request(api_key, version, body)
    except DecodeError:
        request = None
    spec = message_spec(codec.name)
    strictly_valid = request is not None and not _nulls_where_not_allowed(spec.fields, request, version,
                                                                           codec.flexible)
    log_start = log_size(module_broker)
    w = Wire(module_broker.address)
    try:
        # The fuzzed request, then an ApiVersions on the same connection to see it survived.
        w.send(w.frame(api_key, version, body, cid=7) + w.frame(API_VERSIONS_KEY, 0, b"", cid=8))
        if request is None:
            w.expect_closed()
        elif strictly_valid:
            if not (api_key == 0 and request["acks"] == 0):
                w.read_response(api_key, version, 7)
            assert w.read_response(API_VERSIONS_KEY, 0, 8)["error_code"] == ErrorCode.NONE
        else:
            try:
                if not (api_key == 0 and request["acks"] == 0):
                    w.read_response(api_key, version, 7)
                w.read_response(API_VERSIONS_KEY, 0, 8)
            except Closed:
                pass
        peer = w.peer
    finally:
        w.close()
    assert module_broker.is_running()
    time.sleep(0.01)  # let the broker finish logging this connection
    log_text = log_since(module_broker, log_start)
    assert f"request from {peer} failed" not in log_text, log_text[-3000:]


# --- 5: unknown APIs and versions ------------------------------------------------------------------


@pytest.mark.parametrize("api_key, version, reason", [
    (999, 0, "unknown API key 999"),
    (-1, 0, "unknown API key -1"),
    (1, 1, "Fetch v1 is not supported"),
    (1, 3, "Fetch v3 is not supported"),
    (3, 99, "Metadata v99 is not supported"),
    (3, -1, "Metadata v-1 is not supported"),
    (0, -1, "Produce v-1 is not supported"),
    (18, -1, "ApiVersions v-1 is not supported"),
])
def test_unknown_api_or_version_is_closed(module_broker: BrokerProcess, bystander: Bystander,
                                          api_key: int, version: int, reason: str) -> None:
    w = Wire(module_broker.address)
    w.send(raw_frame(api_key, version, 3, b"\x00" * 16))
    w.expect_closed()
    assert_logged(module_broker, bystander.log_start, f"closing {w.peer}:", reason)
    w.close()
    bystander.assert_unaffected()


def test_api_versions_too_new_gets_unsupported_version_in_v0(module_broker: BrokerProcess,
                                                             bystander: Bystander, wire: Wire) -> None:
    # A future client sends its newest version with a flexible header and a body we cannot know.
    wire.send(raw_frame(API_VERSIONS_KEY, 99, 1234, b"\x07future\x02\x01\x00\x00", flexible=True))
    resp = wire.read_response(API_VERSIONS_KEY, 0, 1234)
    assert resp["error_code"] == ErrorCode.UNSUPPORTED_VERSION
    ranges = {k["api_key"]: (k["min_version"], k["max_version"]) for k in resp["api_keys"]}
    assert ranges[API_VERSIONS_KEY] == (0, 4)
    assert {0, 1, 3} <= set(ranges)
    # The client retries with a version from the list, on the same connection.
    assert wire.call(API_VERSIONS_KEY, 3, {"client_software_name": "x", "client_software_version": "1"}
                     )["error_code"] == ErrorCode.NONE
    bystander.assert_unaffected()


def _legacy_produce_body(acks: int, topics: dict[str, list[int]]) -> bytes:
    body = struct.pack(">hii", acks, 1000, len(topics))
    for name, partitions in topics.items():
        body += struct.pack(">h", len(name)) + name.encode() + struct.pack(">i", len(partitions))
        for index in partitions:
            batch = good_batch()
            body += struct.pack(">ii", index, len(batch)) + batch
    return body


@pytest.mark.parametrize("version", [0, 1, 2])
def test_legacy_produce_gets_unsupported_version_per_partition(module_broker: BrokerProcess,
                                                               bystander: Bystander, wire: Wire,
                                                               version: int) -> None:
    topics = {unique_topic("legacy-a"): [0, 3], unique_topic("legacy-b"): [1]}
    wire.send(raw_frame(0, version, 55, _legacy_produce_body(1, topics)))
    cid, body = wire.read_frame()
    assert cid == 55
    # v0: [topic, [partition i32, error i16, base_offset i64]]; v1 adds throttle i32 at the end,
    # v2 adds log_append_time i64 per partition.
    pos = 0
    (n_topics,) = struct.unpack_from(">i", body, pos)
    pos += 4
    seen: dict[str, list[tuple[int, int, int]]] = {}
    for _ in range(n_topics):
        (name_len,) = struct.unpack_from(">h", body, pos)
        name = body[pos + 2:pos + 2 + name_len].decode()
        pos += 2 + name_len
        (n_parts,) = struct.unpack_from(">i", body, pos)
        pos += 4
        for _ in range(n_parts):
            index, error, base_offset = struct.unpack_from(">ihq", body, pos)
            pos += 14
            if version >= 2:
                (append_time,) = struct.unpack_from(">q", body, pos)
                pos += 8
                assert append_time == -1
            seen.setdefault(name, []).append((index, error, base_offset))
    if version >= 1:
        (throttle,) = struct.unpack_from(">i", body, pos)
        pos += 4
        assert throttle == 0
    assert pos == len(body), "trailing bytes in the legacy Produce response"
    assert seen == {name: [(i, ErrorCode.UNSUPPORTED_VERSION, -1) for i in parts] for name, parts in topics.items()}
    # Nothing was auto-created or appended, and the connection keeps working.
    md = wire.call(3, METADATA_V, {"topics": [{"name": n} for n in topics], "allow_auto_topic_creation": False})
    assert {t["name"]: t["error_code"] for t in md["topics"]} == dict.fromkeys(
        topics, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION)
    bystander.assert_unaffected()


def test_legacy_produce_with_acks_0_gets_no_response(module_broker: BrokerProcess, wire: Wire) -> None:
    wire.send(raw_frame(0, 2, 56, _legacy_produce_body(0, {unique_topic("legacy-c"): [0]})))
    assert wire.call(API_VERSIONS_KEY, 0, {})["error_code"] == ErrorCode.NONE  # the next answer is this one


# --- 6: produce errors are error codes, not disconnects ---------------------------------------------


def _patch(batch: bytes, pos: int, fmt: str, value: int, *, fix_crc: bool = True) -> bytes:
    out = bytearray(batch)
    struct.pack_into(fmt, out, pos, value)
    if fix_crc:
        struct.pack_into(">I", out, records.CRC_POS, crc32c(bytes(out[records.ATTRIBUTES_POS:])))
    return bytes(out)


def _flip(batch: bytes, pos: int) -> bytes:
    out = bytearray(batch)
    out[pos] ^= 0x40
    return bytes(out)


BATCH = good_batch(b"v" * 40, count=3)
BAD_BATCHES: dict[str, tuple[bytes | None, ErrorCode]] = {
    "crc-records-byte-flipped": (_flip(BATCH, records.BATCH_HEADER_SIZE + 5), ErrorCode.CORRUPT_MESSAGE),
    "crc-header-field-flipped": (_flip(BATCH, 30), ErrorCode.CORRUPT_MESSAGE),
    "crc-value-wrong": (_flip(BATCH, records.CRC_POS), ErrorCode.CORRUPT_MESSAGE),
    "magic-1": (_patch(BATCH, records.MAGIC_POS, ">b", 1, fix_crc=False), ErrorCode.INVALID_RECORD),
    "magic-0": (_patch(BATCH, records.MAGIC_POS, ">b", 0, fix_crc=False), ErrorCode.INVALID_RECORD),
    "batch-length-beyond-data": (_patch(BATCH, 8, ">i", len(BATCH) + 100, fix_crc=False), ErrorCode.CORRUPT_MESSAGE),
    "batch-length-below-header": (_patch(BATCH, 8, ">i", 10, fix_crc=False), ErrorCode.CORRUPT_MESSAGE),
    "trailing-bytes": (BATCH + b"\x00" * 5, ErrorCode.CORRUPT_MESSAGE),
    "two-batches": (BATCH + good_batch(), ErrorCode.INVALID_RECORD),
    "record-count-0": (_patch(BATCH, 57, ">i", 0), ErrorCode.INVALID_RECORD),
    "record-count-beyond-bytes": (_patch(BATCH, 57, ">i", 10_000), ErrorCode.INVALID_RECORD),
    "last-offset-delta-too-small": (_patch(BATCH, 23, ">i", 0), ErrorCode.INVALID_RECORD),
    "unknown-codec-7": (_patch(BATCH, records.ATTRIBUTES_POS, ">h", 7), ErrorCode.INVALID_RECORD),
    "control-batch": (_patch(BATCH, records.ATTRIBUTES_POS, ">h", records.CONTROL_MASK), ErrorCode.INVALID_RECORD),
    "transactional-batch": (_patch(BATCH, records.ATTRIBUTES_POS, ">h", records.TRANSACTIONAL_MASK),
                            ErrorCode.INVALID_RECORD),
    "shorter-than-a-header": (BATCH[:10], ErrorCode.CORRUPT_MESSAGE),
    "empty-records": (b"", ErrorCode.INVALID_RECORD),
    "null-records": (None, ErrorCode.INVALID_RECORD),
}


def _assert_nothing_appended_and_usable(w: Wire, topic: str) -> None:
    """The rejected input took no offset: a good batch on the same connection lands at offset 0."""
    ok = produce(w, topic, good_batch(b"after"))
    assert (ok["error_code"], ok["base_offset"]) == (ErrorCode.NONE, 0)
    part = fetch(w, topic, 0)
    assert part["error_code"] == ErrorCode.NONE and part["high_watermark"] == 1
    assert [r.value for r in records.decode_records(part["records"])] == [b"after"]


@pytest.mark.parametrize("case", list(BAD_BATCHES))
def test_bad_batch_gets_its_error_code(module_broker: BrokerProcess, bystander: Bystander, wire: Wire,
                                       case: str) -> None:
    data, expected = BAD_BATCHES[case]
    topic = unique_topic("bad-batch")
    create_topic(wire, topic)
    part = produce(wire, topic, data)
    assert part["error_code"] == expected, part
    assert part["base_offset"] == -1
    assert part["error_message"], "a rejected batch should say why"
    _assert_nothing_appended_and_usable(wire, topic)
    bystander.assert_unaffected()


def test_corrupt_batch_in_classic_produce_version(module_broker: BrokerProcess, wire: Wire) -> None:
    topic = unique_topic("bad-batch-v3")
    create_topic(wire, topic)
    part = produce(wire, topic, BAD_BATCHES["crc-records-byte-flipped"][0], version=3)
    assert part["error_code"] == ErrorCode.CORRUPT_MESSAGE
    _assert_nothing_appended_and_usable(wire, topic)


def test_corrupt_batch_with_acks_0_is_dropped_silently(module_broker: BrokerProcess, wire: Wire) -> None:
    topic = unique_topic("bad-batch-acks0")
    create_topic(wire, topic)
    wire.send_message(0, PRODUCE_V, produce_message(topic, BAD_BATCHES["crc-value-wrong"][0], acks=0))
    _assert_nothing_appended_and_usable(wire, topic)


def test_produce_to_missing_partition(module_broker: BrokerProcess, bystander: Bystander, wire: Wire) -> None:
    topic = unique_topic("one-partition")
    create_topic(wire, topic)
    part = produce(wire, topic, good_batch(), partition=99)
    assert part["error_code"] == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    part = produce(wire, topic, good_batch(), partition=-1)
    assert part["error_code"] == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    _assert_nothing_appended_and_usable(wire, topic)
    bystander.assert_unaffected()


@pytest.mark.parametrize("acks", [5, -2, 2, 32767])
def test_invalid_acks(module_broker: BrokerProcess, bystander: Bystander, wire: Wire, acks: int) -> None:
    topic = unique_topic("acks")
    create_topic(wire, topic)
    part = produce(wire, topic, good_batch(), acks=acks)
    assert part["error_code"] == ErrorCode.INVALID_REQUIRED_ACKS
    _assert_nothing_appended_and_usable(wire, topic)
    bystander.assert_unaffected()


def test_batch_larger_than_max_message_bytes(module_broker: BrokerProcess, bystander: Bystander,
                                             wire: Wire) -> None:
    topic = unique_topic("small-messages")
    create_topic(wire, topic, {"max.message.bytes": "1024"})
    big = good_batch(b"x" * 2048)
    part = produce(wire, topic, big)
    assert part["error_code"] == ErrorCode.MESSAGE_TOO_LARGE
    assert produce(wire, topic, good_batch(b"x" * 900))["error_code"] == ErrorCode.NONE
    assert fetch(wire, topic, 0)["high_watermark"] == 1
    bystander.assert_unaffected()


# --- 7: many abandoned connections -----------------------------------------------------------------


def test_many_connections_abandoned_mid_frame(module_broker: BrokerProcess, bystander: Bystander) -> None:
    fds_before = open_fds(module_broker)
    rss_before = rss_bytes(module_broker)
    abandoned = []
    for i in range(200):
        w = Wire(module_broker.address)
        # Mid size-prefix, mid-header, or mid-body of a frame that would be valid.
        frame = w.frame(3, 1, struct.pack(">i", 0), cid=i)
        w.send(frame[: (2, 7, len(frame) - 1)[i % 3]])
        abandoned.append(w)
    bystander.assert_unaffected()
    confluent_round_trip(module_broker.bootstrap)
    assert rss_bytes(module_broker) - rss_before < RSS_SLACK_BYTES
    for i, w in enumerate(abandoned):
        w.close(reset=i % 2 == 0)
    # The broker lets go of every abandoned socket.
    deadline = time.monotonic() + 5
    while open_fds(module_broker) > fds_before + 5:
        assert time.monotonic() < deadline, f"broker holds {open_fds(module_broker)} fds, had {fds_before}"
        time.sleep(0.05)
    bystander.assert_unaffected()


# --- 8: fetch and admin errors -----------------------------------------------------------------------


def test_fetch_outside_the_log_is_offset_out_of_range(module_broker: BrokerProcess, bystander: Bystander,
                                                      wire: Wire) -> None:
    topic = unique_topic("fetch-range")
    create_topic(wire, topic)
    assert produce(wire, topic, good_batch(count=2))["error_code"] == ErrorCode.NONE
    for offset in (3, 1000, 2**62, -1, -2):
        part = fetch(wire, topic, offset)
        assert (part["error_code"], part["high_watermark"]) == (ErrorCode.OFFSET_OUT_OF_RANGE, 2), offset
        assert not part["records"]
    at_end = fetch(wire, topic, 2)
    assert (at_end["error_code"], at_end["records"] or b"") == (ErrorCode.NONE, b"")
    assert fetch(wire, topic, 0, partition=7)["error_code"] == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    bystander.assert_unaffected()


def test_a_leader_epoch_other_than_the_brokers_is_refused(module_broker: BrokerProcess, bystander: Bystander,
                                                           wire: Wire) -> None:
    """KIP-320: a client that knows a newer leader epoch than the broker's gets UNKNOWN_LEADER_EPOCH, one that
    knows an older one FENCED_LEADER_EPOCH (it refreshes its metadata); it never gets records, nor an
    OFFSET_OUT_OF_RANGE that would reset its position.  Fetch, ListOffsets and OffsetForLeaderEpoch alike."""
    topic = unique_topic("leader-epoch")
    create_topic(wire, topic)
    assert produce(wire, topic, good_batch(count=2))["error_code"] == ErrorCode.NONE

    def list_latest(current_leader_epoch: int) -> Message:
        resp = wire.call(2, 7, {"replica_id": -1, "isolation_level": 0, "topics": [{"name": topic, "partitions": [
            {"partition_index": 0, "current_leader_epoch": current_leader_epoch, "timestamp": -1}]}]})
        return resp["topics"][0]["partitions"][0]

    def end_of_epoch(current_leader_epoch: int, epoch: int) -> Message:
        resp = wire.call(23, 4, {"replica_id": -1, "topics": [{"topic": topic, "partitions": [
            {"partition": 0, "current_leader_epoch": current_leader_epoch, "leader_epoch": epoch}]}]})
        return resp["topics"][0]["partitions"][0]

    epoch = list_latest(-1)["leader_epoch"]
    assert epoch >= 1
    for offset in (0, 5):  # inside the log, and beyond it (where the new leader may already be)
        part = fetch(wire, topic, offset, current_leader_epoch=epoch + 1)
        assert (part["error_code"], part["records"] or b"") == (ErrorCode.UNKNOWN_LEADER_EPOCH, b""), offset
        assert fetch(wire, topic, offset, current_leader_epoch=epoch - 1)["error_code"] == \
            ErrorCode.FENCED_LEADER_EPOCH, offset
    assert fetch(wire, topic, 0, current_leader_epoch=epoch)["records"]
    assert fetch(wire, topic, 0)["records"]  # -1: the client does not say
    assert list_latest(epoch + 1)["error_code"] == ErrorCode.UNKNOWN_LEADER_EPOCH
    assert list_latest(epoch - 1)["error_code"] == ErrorCode.FENCED_LEADER_EPOCH
    assert (list_latest(epoch)["error_code"], list_latest(epoch)["offset"]) == (ErrorCode.NONE, 2)
    assert end_of_epoch(epoch + 1, epoch)["error_code"] == ErrorCode.UNKNOWN_LEADER_EPOCH
    assert (end_of_epoch(epoch, epoch)["error_code"], end_of_epoch(epoch, epoch)["end_offset"]) == (ErrorCode.NONE, 2)
    bystander.assert_unaffected()


def test_create_topics_errors(module_broker: BrokerProcess, bystander: Bystander, wire: Wire) -> None:
    existing = unique_topic("exists")
    create_topic(wire, existing)
    base = unique_topic("ct")
    cases: dict[str, tuple[Message, ErrorCode]] = {
        "bad/name": ({}, ErrorCode.INVALID_TOPIC_EXCEPTION),
        "..": ({}, ErrorCode.INVALID_TOPIC_EXCEPTION),
        ".": ({}, ErrorCode.INVALID_TOPIC_EXCEPTION),
        "": ({}, ErrorCode.INVALID_TOPIC_EXCEPTION),
        "with space": ({}, ErrorCode.INVALID_TOPIC_EXCEPTION),
        "x" * 250: ({}, ErrorCode.INVALID_TOPIC_EXCEPTION),
        f"{base}-zero": ({"num_partitions": 0}, ErrorCode.INVALID_PARTITIONS),
        f"{base}-negative": ({"num_partitions": -5}, ErrorCode.INVALID_PARTITIONS),
        f"{base}-rf0": ({"replication_factor": 0}, ErrorCode.INVALID_REPLICATION_FACTOR),
        f"{base}-config": ({"configs": [{"name": "no.such.config", "value": "1"}]}, ErrorCode.INVALID_CONFIG),
        f"{base}-config-value": ({"configs": [{"name": "retention.ms", "value": "soon"}]},
                                 ErrorCode.INVALID_CONFIG),
        existing: ({}, ErrorCode.TOPIC_ALREADY_EXISTS),
    }
    results = create_topics(wire, [{"name": name, **fields} for name, (fields, _) in cases.items()])
    assert {name: r["error_code"] for name, r in results.items()} == {n: c for n, (_, c) in cases.items()}
    assert all(r["error_message"] for r in results.values())
    # None of them was created.
    created = [n for n in cases if n != existing]
    md = wire.call(3, METADATA_V, {"topics": [{"name": n} for n in created], "allow_auto_topic_creation": False})
    assert all(t["error_code"] != ErrorCode.NONE for t in md["topics"]), md["topics"]
    bystander.assert_unaffected()
