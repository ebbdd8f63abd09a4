"""Capture golden request frames from real Kafka clients against a tiny fake broker.

The unit tests in ``tests/unit/test_golden.py`` decode and re-encode the
frames that real clients (confluent-kafka/librdkafka, kafka-python, aiokafka)
put on the wire, so that the codec is checked against the bytes clients
really send, not only against its own output.  This script produces those
frames: it runs a single fake broker on 127.0.0.1 that answers just enough of
the protocol (ApiVersions, Metadata, Produce, ListOffsets, Fetch,
InitProducerId, FindCoordinator, OffsetFetch) for each client to produce one
keyed record with a header and to fetch it back with ``assign()``, and it
writes the first request of every (client, API, version) it sees to
``tests/golden/<client>-<api>-v<version>.bin`` (size prefix included).

    .venv/bin/python tools/capture_golden.py [--out DIR] [--clean] [CLIENT ...]

CLIENT is any of confluent, confluent-idempotent, kafka-python, aiokafka
(default: all).  The client id each one sends is its name, which is how the
broker tells them apart.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from protocol import framing, schema  # noqa: E402
from protocol.primitives import DecodeError  # noqa: E402

TOPIC = "golden"
TOPIC_ID = bytes.fromhex("6b65656c676f6c64656e746f70696321")  # "keelgoldentopic!"
NODE_ID = 0
CLUSTER_ID = "keel-golden"
UNSUPPORTED_VERSION = 35

# (api key, min, max) advertised in ApiVersions.  Produce starts at 3: Kafka 4
# definitions (and so protocol.schema) no longer describe versions 0-2.
ADVERTISED = {
    18: (0, 4),    # ApiVersions
    3: (0, 12),    # Metadata
    0: (3, 12),    # Produce
    1: (4, 17),    # Fetch
    2: (1, 10),    # ListOffsets
    19: (2, 7),    # CreateTopics
    20: (1, 6),    # DeleteTopics
    22: (0, 5),    # InitProducerId
    10: (0, 6),    # FindCoordinator
    11: (0, 9),    # JoinGroup
    14: (0, 5),    # SyncGroup
    12: (0, 4),    # Heartbeat
    13: (0, 5),    # LeaveGroup
    8: (2, 9),     # OffsetCommit
    9: (1, 9),     # OffsetFetch
}

Body = dict[str, Any]


class FakeBroker:
    """Answers one client connection at a time, in order, and records request frames."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.port = 0
        self.captured: dict[tuple[str, int, int], Path] = {}
        self.next_offset = 0
        self.next_producer_id = 1000
        self.handlers: dict[int, Callable[[Body, int], Body | None]] = {
            18: self.api_versions, 3: self.metadata, 0: self.produce, 2: self.list_offsets,
            22: self.init_producer_id, 10: self.find_coordinator, 9: self.offset_fetch,
        }

    async def serve(self, started: threading.Event) -> None:
        server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        started.set()
        async with server:
            await server.serve_forever()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                size = framing.SIZE.unpack(await reader.readexactly(4))[0]
                frame = await reader.readexactly(size)
                response = await self._handle(framing.SIZE.pack(size) + frame)
                if response is not None:
                    writer.write(response)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, DecodeError, KeyError) as exc:
            if not isinstance(exc, asyncio.IncompleteReadError | ConnectionError):
                print(f"  broker: closing connection: {exc!r}", file=sys.stderr)
        finally:
            writer.close()

    async def _handle(self, framed: bytes) -> bytes | None:
        frame = framed[4:]
        api_key, version, correlation_id = framing.peek_api(frame)
        if api_key not in ADVERTISED:
            raise KeyError(f"api {api_key} not advertised")
        flexible = schema.is_flexible(api_key, version)
        header, pos = framing.read_request_header(frame, flexible)
        self._record(header, framed)
        if api_key == 18 and version > ADVERTISED[18][1]:
            return self._respond(18, 0, correlation_id, {
                "error_code": UNSUPPORTED_VERSION, "api_keys": self._api_keys()})
        request = schema.request_codec(api_key, version).decode(frame, pos)
        if api_key == 1:
            await asyncio.sleep(min(request["max_wait_ms"], 200) / 1000)
            body = self.fetch(request, version)
        elif api_key in self.handlers:
            body = self.handlers[api_key](request, version)
        else:
            raise KeyError(f"no handler for api {api_key}")
        if body is None:
            return None
        return self._respond(api_key, version, correlation_id, body)

    def _record(self, header: framing.RequestHeader, framed: bytes) -> None:
        client = (header.client_id or "unknown").replace("/", "_")
        key = (client, header.api_key, header.api_version)
        if key in self.captured:
            return
        api = schema.api_names()[header.api_key].lower()
        path = self.out_dir / f"{client}-{api}-v{header.api_version}.bin"
        path.write_bytes(framed)
        self.captured[key] = path

    @staticmethod
    def _respond(api_key: int, version: int, correlation_id: int, body: Body) -> bytes:
        flexible_header = schema.is_flexible(api_key, version) and api_key != framing.API_VERSIONS_KEY
        out = framing.start_response(correlation_id, flexible_header)
        schema.response_codec(api_key, version).write(out, body)
        return bytes(framing.finish_response(out))

    # Handlers ------------------------------------------------------------------------

    @staticmethod
    def _api_keys() -> list[Body]:
        return [{"api_key": k, "min_version": lo, "max_version": hi} for k, (lo, hi) in sorted(ADVERTISED.items())]

    def api_versions(self, request: Body, version: int) -> Body:
        return {"error_code": 0, "api_keys": self._api_keys(), "throttle_time_ms": 0}

    def _topic(self, name: str) -> Body:
        partition = {"error_code": 0, "partition_index": 0, "leader_id": NODE_ID, "leader_epoch": 0,
                     "replica_nodes": [NODE_ID], "isr_nodes": [NODE_ID], "offline_replicas": []}
        return {"error_code": 0, "name": name, "topic_id": TOPIC_ID, "is_internal": False,
                "partitions": [partition]}

    def metadata(self, request: Body, version: int) -> Body:
        requested = request["topics"]
        names = [TOPIC] if requested is None else [t["name"] or TOPIC for t in requested]
        return {
            "throttle_time_ms": 0,
            "brokers": [{"node_id": NODE_ID, "host": "127.0.0.1", "port": self.port, "rack": None}],
            "cluster_id": CLUSTER_ID,
            "controller_id": NODE_ID,
            "topics": [self._topic(name) for name in names],
        }

    def produce(self, request: Body, version: int) -> Body | None:
        responses = []
        for topic in request["topic_data"]:
            partitions = []
            for part in topic["partition_data"]:
                partitions.append({"index": part["index"], "error_code": 0, "base_offset": self.next_offset,
                                   "log_append_time_ms": -1, "log_start_offset": 0})
                self.next_offset += 1
            responses.append({"name": topic["name"], "partition_responses": partitions})
        if request["acks"] == 0:
            return None
        return {"responses": responses, "throttle_time_ms": 0}

    def list_offsets(self, request: Body, version: int) -> Body:
        topics = [{"name": t["name"], "partitions": [
            {"partition_index": p["partition_index"], "error_code": 0, "timestamp": -1, "offset": 0,
             "leader_epoch": 0} for p in t["partitions"]]} for t in request["topics"]]
        return {"throttle_time_ms": 0, "topics": topics}

    def fetch(self, request: Body, version: int) -> Body:
        responses = [{"topic": t["topic"], "topic_id": t["topic_id"], "partitions": [
            {"partition_index": p["partition"], "error_code": 0, "high_watermark": 0, "last_stable_offset": 0,
             "log_start_offset": 0, "aborted_transactions": [], "preferred_read_replica": -1, "records": b""}
            for p in t["partitions"]]} for t in request["topics"]]
        return {"throttle_time_ms": 0, "error_code": 0, "session_id": 0, "responses": responses}

    def init_producer_id(self, request: Body, version: int) -> Body:
        self.next_producer_id += 1
        return {"throttle_time_ms": 0, "error_code": 0, "producer_id": self.next_producer_id,
                "producer_epoch": 0}

    def find_coordinator(self, request: Body, version: int) -> Body:
        me = {"node_id": NODE_ID, "host": "127.0.0.1", "port": self.port}
        if version < 4:
            return {"throttle_time_ms": 0, "error_code": 0, "error_message": None, **me}
        return {"throttle_time_ms": 0, "coordinators": [
            {"key": key, "error_code": 0, "error_message": None, **me} for key in request["coordinator_keys"]]}

    def offset_fetch(self, request: Body, version: int) -> Body:
        def partitions(topic: Body) -> list[Body]:
            return [{"partition_index": i, "committed_offset": -1, "metadata": "", "error_code": 0}
                    for i in topic["partition_indexes"]]
        if version < 8:
            return {"throttle_time_ms": 0, "error_code": 0, "topics": [
                {"name": t["name"], "partitions": partitions(t)} for t in request["topics"] or []]}
        return {"throttle_time_ms": 0, "groups": [
            {"group_id": g["group_id"], "error_code": 0, "topics": [
                {"name": t["name"], "partitions": partitions(t)} for t in g["topics"] or []]}
            for g in request["groups"]]}


# Clients -------------------------------------------------------------------------------

KEY, VALUE, HEADERS = b"golden-key", b"golden-value", [("golden-header", b"h")]
POLL_SECONDS = 1.5


def run_confluent(bootstrap: str, client_id: str, idempotent: bool) -> str:
    import confluent_kafka as ck

    common = {"bootstrap.servers": bootstrap, "client.id": client_id, "broker.address.family": "v4"}
    producer = ck.Producer({**common, "enable.idempotence": idempotent, "linger.ms": 0})
    errors: list[Any] = []
    producer.produce(TOPIC, VALUE, KEY, headers=HEADERS, on_delivery=lambda err, _msg: errors.append(err))
    remaining = producer.flush(10)
    if remaining or errors != [None]:
        raise RuntimeError(f"produce failed: remaining={remaining} errors={errors}")
    consumer = ck.Consumer({**common, "group.id": f"{client_id}-group", "enable.auto.commit": False,
                            "fetch.wait.max.ms": 100})
    consumer.assign([ck.TopicPartition(TOPIC, 0, ck.OFFSET_BEGINNING)])
    deadline = time.monotonic() + POLL_SECONDS
    while time.monotonic() < deadline:
        consumer.poll(0.2)
    consumer.close()
    return f"confluent-kafka {ck.__version__} / librdkafka {ck.libversion()[0]}"


def run_kafka_python(bootstrap: str, client_id: str) -> str:
    import kafka

    producer = kafka.KafkaProducer(bootstrap_servers=bootstrap, client_id=client_id)
    producer.send(TOPIC, VALUE, key=KEY, headers=HEADERS).get(timeout=10)
    producer.close(timeout=5)
    consumer = kafka.KafkaConsumer(bootstrap_servers=bootstrap, client_id=client_id, group_id=None,
                                   enable_auto_commit=False, fetch_max_wait_ms=100)
    consumer.assign([kafka.TopicPartition(TOPIC, 0)])
    consumer.seek_to_beginning()
    deadline = time.monotonic() + POLL_SECONDS
    while time.monotonic() < deadline:
        consumer.poll(timeout_ms=200)
    consumer.close()
    return f"kafka-python {kafka.__version__}"


def run_aiokafka(bootstrap: str, client_id: str) -> str:
    import aiokafka
    from aiokafka.structs import TopicPartition

    async def main() -> None:
        producer = aiokafka.AIOKafkaProducer(bootstrap_servers=bootstrap, client_id=client_id)
        await producer.start()
        try:
            await producer.send_and_wait(TOPIC, VALUE, key=KEY, headers=HEADERS)
        finally:
            await producer.stop()
        consumer = aiokafka.AIOKafkaConsumer(bootstrap_servers=bootstrap, client_id=client_id, group_id=None,
                                             enable_auto_commit=False, fetch_max_wait_ms=100)
        await consumer.start()
        try:
            partition = TopicPartition(TOPIC, 0)
            consumer.assign([partition])
            await consumer.seek_to_beginning(partition)
            deadline = time.monotonic() + POLL_SECONDS
            while time.monotonic() < deadline:
                await consumer.getmany(timeout_ms=200)
        finally:
            await consumer.stop()

    asyncio.run(asyncio.wait_for(main(), 30))
    return f"aiokafka {aiokafka.__version__}"


CLIENTS: dict[str, Callable[[str], str]] = {
    "confluent": lambda bootstrap: run_confluent(bootstrap, "confluent", idempotent=False),
    "confluent-idempotent": lambda bootstrap: run_confluent(bootstrap, "confluent-idempotent", idempotent=True),
    "kafka-python": lambda bootstrap: run_kafka_python(bootstrap, "kafka-python"),
    "aiokafka": lambda bootstrap: run_aiokafka(bootstrap, "aiokafka"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("clients", nargs="*", metavar="CLIENT", help=", ".join(CLIENTS))
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "golden")
    parser.add_argument("--clean", action="store_true", help="delete the chosen clients' old .bin files first")
    args = parser.parse_args(argv)
    chosen = args.clients or list(CLIENTS)
    unknown = set(chosen) - set(CLIENTS)
    if unknown:
        parser.error(f"unknown client(s): {', '.join(sorted(unknown))}")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.clean:
        for name in chosen:
            for old in args.out.glob(f"{name}-*.bin"):
                if old.name[len(name) + 1:].split("-")[0] in {n.lower() for n in schema.api_names().values()}:
                    old.unlink()

    broker = FakeBroker(args.out)
    started = threading.Event()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=lambda: loop.run_until_complete(broker.serve(started)), daemon=True)
    thread.start()
    if not started.wait(5):
        print("fake broker did not start", file=sys.stderr)
        return 1
    bootstrap = f"127.0.0.1:{broker.port}"
    failed = False
    for name in chosen:
        before = set(broker.captured)
        try:
            version = CLIENTS[name](bootstrap)
        except Exception as exc:  # report and carry on with the other clients
            print(f"{name}: FAILED: {exc!r}", file=sys.stderr)
            failed = True
            continue
        new = sorted(p.name for k, p in broker.captured.items() if k not in before)
        print(f"{name} ({version}): {len(new)} frames")
        for file_name in new:
            print(f"  {file_name}")
    return 1 if failed else 0  # the broker thread is a daemon: it ends with the process


if __name__ == "__main__":
    sys.exit(main())
