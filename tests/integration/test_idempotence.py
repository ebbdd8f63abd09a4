"""Idempotent producers: no duplicates and no reordering, even when the broker is killed mid-stream.

Two layers. With real clients (confluent-kafka with ``enable.idempotence``,
kafka-python's default producer, aiokafka with ``enable_idempotence``) the
broker gets ``kill -9`` while requests are in flight and comes back on the
same port and data directory; the clients retry whatever was not
acknowledged, and the whole log, read back from offset 0, must hold every
value exactly once, at the offset the client was told, in send order per
partition. Whether a retried batch had already reached the WAL before the
kill is up to timing, so a second layer drives the wire protocol directly: the
same batch (producer id, epoch, sequence) is sent twice, then again after a
``kill -9`` (dedup state rebuilt from the WAL) and after a graceful restart
(dedup state from the manifest snapshot), and sequence gaps and stale epochs
must be refused with the right error codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from integration.broker_process import BrokerProcess
from protocol import primitives as prim
from protocol import records
from protocol.errors import ErrorCode
from protocol.framing import RequestHeader, encode_request
from protocol.schema import request_codec, response_codec

VALUES = 3000
PARTITIONS = 3
KILL_AFTER_ACKS = VALUES // 4
WAIT_S = 60.0
RETRY_S = 10.0
# Errors a client retries: the partition's leader is not (yet) serving it.
RETRIABLE = {ErrorCode.NOT_LEADER_OR_FOLLOWER, ErrorCode.LEADER_NOT_AVAILABLE, ErrorCode.REQUEST_TIMED_OUT}


# --- a minimal wire client ---------------------------------------------------------------


class RawClient:
    """One connection; requests encoded with the broker's own schema codecs."""

    PRODUCE, FETCH, INIT_PRODUCER_ID = 0, 1, 22
    VERSIONS = {PRODUCE: 9, FETCH: 12, INIT_PRODUCER_ID: 4}

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=10)
        self.correlation_id = 0

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def _recv(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("broker closed the connection")
            buf += chunk
        return bytes(buf)

    def call(self, api_key: int, body: dict[str, Any]) -> dict[str, Any]:
        version = self.VERSIONS[api_key]
        req = request_codec(api_key, version)
        self.correlation_id += 1
        header = RequestHeader(api_key, version, self.correlation_id, "keel-idempotence-test")
        self.sock.sendall(encode_request(header, req.flexible, req.encode(body)))
        (size,) = struct.unpack(">i", self._recv(4))
        frame = self._recv(size)
        (correlation_id,) = struct.unpack_from(">i", frame)
        assert correlation_id == self.correlation_id
        pos = 4
        if req.flexible:  # response header v1: tagged fields
            count, pos = prim.read_uvarint(frame, pos)
            for _ in range(count):
                _tag, pos = prim.read_uvarint(frame, pos)
                length, pos = prim.read_uvarint(frame, pos)
                pos += length
        return response_codec(api_key, version).decode(memoryview(frame), pos)

    def init_producer_id(self) -> tuple[int, int]:
        resp = self.call(self.INIT_PRODUCER_ID, {"transactional_id": None, "transaction_timeout_ms": -1,
                                                 "producer_id": -1, "producer_epoch": -1})
        assert resp["error_code"] == ErrorCode.NONE, resp
        return resp["producer_id"], resp["producer_epoch"]

    def produce(self, topic: str, partition: int, batch: bytes) -> tuple[int, int]:
        """(error code, base offset) of one batch sent with acks=all.

        Like a real client, it retries while a freshly started broker is still taking over
        its partitions; every retry resends the very same bytes.
        """
        deadline = time.monotonic() + RETRY_S
        while True:
            resp = self.call(self.PRODUCE, {"transactional_id": None, "acks": -1, "timeout_ms": 10000,
                                            "topic_data": [{"name": topic, "partition_data": [
                                                {"index": partition, "records": batch}]}]})
            part = resp["responses"][0]["partition_responses"][0]
            if part["error_code"] not in RETRIABLE or time.monotonic() > deadline:
                return part["error_code"], part["base_offset"]
            time.sleep(0.05)

    def read_log(self, topic: str, partition: int) -> list[tuple[records.BatchHeader, records.Record]]:
        """Every record from offset 0 to the high watermark, with the header of its batch."""
        out: list[tuple[records.BatchHeader, records.Record]] = []
        offset, high_watermark = 0, None
        deadline = time.monotonic() + RETRY_S
        while high_watermark is None or offset < high_watermark:
            resp = self.call(self.FETCH, {
                "replica_id": -1, "max_wait_ms": 0, "min_bytes": 0, "max_bytes": 8 << 20,
                "isolation_level": 0, "session_id": 0, "session_epoch": -1,
                "topics": [{"topic": topic, "partitions": [
                    {"partition": partition, "fetch_offset": offset, "partition_max_bytes": 8 << 20}]}],
                "forgotten_topics_data": [], "rack_id": ""})
            part = resp["responses"][0]["partitions"][0]
            if part["error_code"] in RETRIABLE and time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            assert part["error_code"] == ErrorCode.NONE, part
            high_watermark = part["high_watermark"]
            data = bytes(part["records"] or b"")
            if offset < high_watermark and not data:
                raise AssertionError(f"empty fetch at {offset} below the high watermark {high_watermark}")
            for pos, header in records.iter_batch_headers(data):
                for rec in records.decode_records(data[pos:pos + header.size]):
                    if rec.offset >= offset:
                        out.append((header, rec))
                offset = max(offset, header.next_offset)
        return out


def create_topic(bootstrap: str, partitions: int) -> str:
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = f"idem-{uuid.uuid4().hex[:10]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])[topic].result(WAIT_S)
    return topic


# --- real clients through a broker kill -9 ------------------------------------------------


@dataclass
class Outcome:
    """What the producer reported: acknowledged (partition, offset) and failures, by value index."""

    acked: dict[int, tuple[int, int]] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)
    unacked_at_kill: int = -1


class ResponseDroppingProxy:
    """A TCP relay in front of the broker that can swallow the broker's answers.

    The broker advertises the relay's address (another loopback address, same
    port), so clients reach it only through here. While ``dropping`` is set,
    requests still reach the broker, which writes and acknowledges them, but
    the acknowledgements are lost: exactly the records an idempotent producer
    must retry without duplicating.
    """

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.target = target
        self.dropping = threading.Event()
        self.server = socket.create_server(listen)
        self.lock = threading.Lock()
        self.sockets: list[socket.socket] = []
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=2)
                upstream.settimeout(None)
            except OSError:
                client.close()  # the broker is down: the client reconnects later
                continue
            with self.lock:
                self.sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, responses: bool) -> None:
        try:
            while data := src.recv(65536):
                if not (responses and self.dropping.is_set()):
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Break every relayed connection, as the death of the broker host would."""
        with self.lock:
            sockets, self.sockets = self.sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self.closed = True
        self.server.close()
        self.cut()


PROXY_HOST = "127.0.0.2"


@pytest.fixture
def proxied_broker(broker_factory: Callable[..., BrokerProcess]) -> Iterator[tuple[BrokerProcess, ResponseDroppingProxy]]:
    broker = broker_factory(name="proxied", start=False, extra_args=["--advertised-host", PROXY_HOST])
    proxy = ResponseDroppingProxy((PROXY_HOST, broker.port), broker.address)
    try:
        broker.start()
        yield broker, proxy
    finally:
        proxy.close()


class Killer:
    """Once enough values are acknowledged: lose the broker's answers for a moment (so some
    batches are durable but unacknowledged), then SIGKILL the broker and restart it."""

    def __init__(self, broker: BrokerProcess, proxy: ResponseDroppingProxy, outcome: Outcome) -> None:
        self.broker = broker
        self.proxy = proxy
        self.outcome = outcome
        self.done = False

    def maybe_kill(self, sent: int) -> None:
        if self.done or len(self.outcome.acked) < KILL_AFTER_ACKS:
            return
        self.done = True
        self.proxy.dropping.set()
        time.sleep(0.3)  # the clients' queued requests reach the broker; the answers do not come back
        self.outcome.unacked_at_kill = sent - len(self.outcome.acked) - len(self.outcome.failed)
        self.broker.kill()
        self.proxy.cut()
        self.proxy.dropping.clear()
        time.sleep(0.2)  # clients notice the dead connections and start retrying
        self.broker.start()


def value_of(i: int) -> bytes:
    return f"value-{i:06d}".encode()


def index_of(value: bytes) -> int:
    return int(value.decode().split("-")[1])


def pace(i: int) -> bool:
    """Spread sending over ~1 s so that acknowledgements and new sends overlap."""
    return i % 100 == 99


def produce_confluent(broker: BrokerProcess, proxy: ResponseDroppingProxy, topic: str) -> Outcome:
    from confluent_kafka import Producer

    outcome = Outcome()
    killer = Killer(broker, proxy, outcome)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": True,
                         "linger.ms": 2, "reconnect.backoff.ms": 50, "reconnect.backoff.max.ms": 500,
                         "message.timeout.ms": int(WAIT_S * 1000)})

    def report(i: int) -> Callable[[Any, Any], None]:
        def on_delivery(err: Any, msg: Any) -> None:
            if err is None:
                outcome.acked[i] = (msg.partition(), msg.offset())
            else:
                outcome.failed[i] = str(err)
        return on_delivery

    for i in range(VALUES):
        producer.produce(topic, value=value_of(i), partition=i % PARTITIONS, on_delivery=report(i))
        producer.poll(0)
        killer.maybe_kill(i + 1)
        if pace(i):
            producer.poll(0.03)
    assert producer.flush(WAIT_S) == 0, "the producer still holds undelivered records"
    assert killer.done, "the broker was never killed"
    return outcome


def produce_kafka_python(broker: BrokerProcess, proxy: ResponseDroppingProxy, topic: str) -> Outcome:
    from kafka import KafkaProducer

    outcome = Outcome()
    killer = Killer(broker, proxy, outcome)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=2, reconnect_backoff_ms=50,
                             reconnect_backoff_max_ms=500, delivery_timeout_ms=int(WAIT_S * 1000))
    assert producer.config["enable_idempotence"], "kafka-python should default to an idempotent producer"
    try:
        for i in range(VALUES):
            future = producer.send(topic, value=value_of(i), partition=i % PARTITIONS)
            future.add_callback(lambda md, i=i: outcome.acked.__setitem__(i, (md.partition, md.offset)))
            future.add_errback(lambda exc, i=i: outcome.failed.__setitem__(i, repr(exc)))
            killer.maybe_kill(i + 1)
            if pace(i):
                time.sleep(0.03)
        producer.flush(WAIT_S)
    finally:
        producer.close(timeout=5)
    assert killer.done, "the broker was never killed"
    return outcome


def produce_aiokafka(broker: BrokerProcess, proxy: ResponseDroppingProxy, topic: str) -> Outcome:
    from aiokafka import AIOKafkaProducer

    async def run() -> Outcome:
        outcome = Outcome()
        killer = Killer(broker, proxy, outcome)
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, enable_idempotence=True, linger_ms=2,
                                    request_timeout_ms=int(WAIT_S * 1000))
        await producer.start()
        pending = []
        try:
            for i in range(VALUES):
                future = await producer.send(topic, value=value_of(i), partition=i % PARTITIONS)

                def on_done(f: asyncio.Future[Any], i: int = i) -> None:
                    if f.exception() is None:
                        outcome.acked[i] = (f.result().partition, f.result().offset)
                    else:
                        outcome.failed[i] = repr(f.exception())
                future.add_done_callback(on_done)
                pending.append(future)
                if not killer.done and len(outcome.acked) >= KILL_AFTER_ACKS:
                    await asyncio.to_thread(killer.maybe_kill, i + 1)
                if pace(i):
                    await asyncio.sleep(0.03)
            await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), WAIT_S)
        finally:
            await producer.stop()
        assert killer.done, "the broker was never killed"
        return outcome

    return asyncio.run(run())


PRODUCERS = {"confluent": produce_confluent, "kafka-python": produce_kafka_python, "aiokafka": produce_aiokafka}


@pytest.mark.parametrize("client", list(PRODUCERS))
def test_no_duplicates_across_broker_kill(proxied_broker: tuple[BrokerProcess, ResponseDroppingProxy],
                                          client: str) -> None:
    broker, proxy = proxied_broker
    topic = create_topic(broker.bootstrap, PARTITIONS)
    outcome = PRODUCERS[client](broker, proxy, topic)
    assert outcome.unacked_at_kill > 0, "nothing was in flight when the broker died"

    with RawClient(broker.address) as conn:
        logs = {p: conn.read_log(topic, p) for p in range(PARTITIONS)}
    where: dict[int, list[tuple[int, int]]] = {}
    for p, entries in logs.items():
        assert [rec.offset for _, rec in entries] == list(range(len(entries))), f"partition {p}: offsets not dense"
        assert all(h.producer_id >= 0 and h.base_sequence >= 0 for h, _ in entries), \
            f"partition {p}: a batch without producer id/sequence: the client was not idempotent"
        for _, rec in entries:
            where.setdefault(index_of(rec.value), []).append((p, rec.offset))

    duplicates = {i: places for i, places in where.items() if len(places) > 1}
    assert not duplicates, f"{len(duplicates)} values written twice, e.g. {list(duplicates.items())[:5]}"
    missing = sorted(set(outcome.acked) - set(where))
    assert not missing, f"{len(missing)} acknowledged values lost, e.g. {missing[:5]}"
    misplaced = {i: (ack, where[i][0]) for i, ack in outcome.acked.items() if where[i][0] != ack}
    assert not misplaced, f"acknowledged offsets differ from the log, e.g. {list(misplaced.items())[:5]}"
    for p, entries in logs.items():
        indexes = [index_of(rec.value) for _, rec in entries]
        assert all(i % PARTITIONS == p for i in indexes), f"partition {p}: foreign values"
        assert indexes == sorted(indexes), f"partition {p}: values out of send order"
    # An idempotent producer retries until the record is in: nothing may be given up on.
    assert not outcome.failed, f"{len(outcome.failed)} failed, e.g. {list(outcome.failed.items())[:3]}"
    assert len(outcome.acked) == VALUES
    assert sum(len(entries) for entries in logs.values()) == VALUES


# --- the wire protocol: the same batch twice, across restarts --------------------------------


def segment_files(data_dir: Path) -> list[Path]:
    return sorted(data_dir.rglob("*.seg"))


@dataclass
class RawProducer:
    """Builds idempotent batches by hand: one producer id, explicit epoch and sequence."""

    topic: str
    producer_id: int
    batches: dict[str, bytes] = field(default_factory=dict)

    def batch(self, name: str, count: int, *, sequence: int, epoch: int = 0) -> bytes:
        values = [(None, f"{name}{k}".encode()) for k in range(count)]
        self.batches[name] = records.build_batch(values, producer_id=self.producer_id, producer_epoch=epoch,
                                                 base_sequence=sequence)
        return self.batches[name]


def values_in(client: RawClient, topic: str) -> list[str]:
    entries = client.read_log(topic, 0)
    assert [rec.offset for _, rec in entries] == list(range(len(entries)))
    return [rec.value.decode() for _, rec in entries]


@pytest.fixture
def slow_flush_broker(broker_factory: Callable[..., BrokerProcess]) -> BrokerProcess:
    """Flushes only on shutdown, so a kill -9 leaves the dedup state to be rebuilt from the WAL."""
    return broker_factory(name="slow-flush", extra_args=["--flush-interval-ms", "600000"])


def test_raw_duplicate_batch_keeps_its_offset_across_restarts(slow_flush_broker: BrokerProcess) -> None:
    broker = slow_flush_broker
    topic = create_topic(broker.bootstrap, 1)
    with RawClient(broker.address) as c:
        ids_before = {c.init_producer_id() for _ in range(3)}
        assert len(ids_before) == 3 and all(epoch == 0 for _, epoch in ids_before)
        pid = min(i for i, _ in ids_before)
        p = RawProducer(topic, pid)
        assert c.produce(topic, 0, p.batch("a", 3, sequence=0)) == (ErrorCode.NONE, 0)
        assert c.produce(topic, 0, p.batches["a"]) == (ErrorCode.NONE, 0), "a retried batch got a new offset"
        assert c.produce(topic, 0, p.batch("b", 2, sequence=3)) == (ErrorCode.NONE, 3)
        assert c.produce(topic, 0, p.batches["a"]) == (ErrorCode.NONE, 0), "an older retry got a new offset"
        assert values_in(c, topic) == ["a0", "a1", "a2", "b0", "b1"]
    assert not segment_files(broker.data_dir), "data was flushed: the kill below would not test WAL replay"

    broker.restart()  # SIGKILL: the dedup state must come back from the WAL
    with RawClient(broker.address) as c:
        assert c.produce(topic, 0, p.batches["a"]) == (ErrorCode.NONE, 0)
        assert c.produce(topic, 0, p.batches["b"]) == (ErrorCode.NONE, 3)
        assert c.produce(topic, 0, p.batch("c", 1, sequence=5)) == (ErrorCode.NONE, 5)
        ids_after_kill = {c.init_producer_id() for _ in range(3)}
        assert values_in(c, topic) == ["a0", "a1", "a2", "b0", "b1", "c0"]
    assert not ids_after_kill & ids_before, "a producer id was handed out twice across a kill -9"

    broker.stop()  # SIGTERM: flushes everything; the dedup state now comes from the manifest snapshot
    assert segment_files(broker.data_dir), "a graceful stop should have flushed the partition"
    broker.start()
    with RawClient(broker.address) as c:
        assert c.produce(topic, 0, p.batches["c"]) == (ErrorCode.NONE, 5)
        assert c.produce(topic, 0, p.batches["a"]) == (ErrorCode.NONE, 0)
        ids_after_stop = {c.init_producer_id() for _ in range(3)}
        assert values_in(c, topic) == ["a0", "a1", "a2", "b0", "b1", "c0"]
    assert not ids_after_stop & (ids_before | ids_after_kill), "a producer id was handed out twice"


def test_raw_sequence_gap_and_stale_epoch_are_refused(broker: BrokerProcess) -> None:
    topic = create_topic(broker.bootstrap, 1)
    with RawClient(broker.address) as c:
        pid, epoch = c.init_producer_id()
        p = RawProducer(topic, pid)
        assert c.produce(topic, 0, p.batch("a", 2, sequence=0, epoch=epoch)) == (ErrorCode.NONE, 0)
        gap_error, _ = c.produce(topic, 0, p.batch("gap", 1, sequence=3, epoch=epoch))  # 2 is next
        assert gap_error == ErrorCode.NOT_ENOUGH_REPLICAS == 19  # retriable: "not written, send it again"
        assert c.produce(topic, 0, p.batch("b", 1, sequence=2, epoch=epoch)) == (ErrorCode.NONE, 2)
        # A bumped epoch starts again at sequence 0; the old epoch is fenced from then on.
        assert c.produce(topic, 0, p.batch("c", 1, sequence=0, epoch=epoch + 1)) == (ErrorCode.NONE, 3)
        stale_error, _ = c.produce(topic, 0, p.batch("stale", 1, sequence=3, epoch=epoch))
        assert stale_error == ErrorCode.INVALID_PRODUCER_EPOCH == 47
        assert values_in(c, topic) == ["a0", "a1", "b0", "c0"]

    broker.restart()  # the fencing survives a kill -9 too
    with RawClient(broker.address) as c:
        stale_error, _ = c.produce(topic, 0, p.batches["stale"])
        assert stale_error == ErrorCode.INVALID_PRODUCER_EPOCH
        gap_error, _ = c.produce(topic, 0, p.batch("gap2", 1, sequence=5, epoch=epoch + 1))
        assert gap_error == ErrorCode.NOT_ENOUGH_REPLICAS
        assert c.produce(topic, 0, p.batch("d", 1, sequence=1, epoch=epoch + 1)) == (ErrorCode.NONE, 4)
        assert values_in(c, topic) == ["a0", "a1", "b0", "c0", "d0"]

