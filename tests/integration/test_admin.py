"""Admin APIs through real clients against a real broker process.

CreatePartitions, DescribeConfigs, AlterConfigs, IncrementalAlterConfigs and
DescribeCluster are driven through confluent-kafka's AdminClient (librdkafka)
and kafka-python's KafkaAdminClient, and their effects are checked where a
user would notice them: records produced to a new partition come back, a
topic switched to LogAppendTime stamps new records with the broker's clock,
and a ``kill -9`` restart keeps partition counts and configs.
"""

from __future__ import annotations

import socket
import struct
import time
import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka import (
    TIMESTAMP_CREATE_TIME,
    TIMESTAMP_LOG_APPEND_TIME,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    NewPartitions,
    NewTopic,
    ResourceType,
)

from broker.handlers import APIS
from integration.broker_process import BrokerProcess
from protocol.schema import request_codec, response_codec

DEADLINE_S = 20.0
OLD_TIMESTAMP_MS = 1_000_000_000_000  # September 2001
DAY_MS = 7 * 24 * 3600 * 1000


def _topic(prefix: str) -> str:
    return f"admin-{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def admin(module_broker: BrokerProcess) -> Iterator[AdminClient]:
    yield AdminClient({"bootstrap.servers": module_broker.bootstrap})


def _create(admin: AdminClient, topic: str, partitions: int, config: dict[str, str] | None = None) -> None:
    futures = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1,
                                            config=config or {})], operation_timeout=10)
    futures[topic].result(timeout=DEADLINE_S)


def _partition_count(admin: AdminClient, topic: str) -> int:
    return len(admin.list_topics(topic, timeout=10).topics[topic].partitions)


def _error_code(exc: KafkaException) -> int:
    err = exc.args[0]
    assert isinstance(err, KafkaError), exc
    return err.code()


def _produce(bootstrap: str, topic: str, partition: int, value: bytes,
             timestamp: int | None = None) -> tuple[int, int]:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0})
    delivered: list[tuple[int, int]] = []
    errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            errors.append(err)
        else:
            delivered.append((msg.partition(), msg.offset()))

    kwargs = {"timestamp": timestamp} if timestamp is not None else {}
    producer.produce(topic, value=value, partition=partition, on_delivery=on_delivery, **kwargs)
    assert producer.flush(DEADLINE_S) == 0
    assert not errors, errors
    return delivered[0]


def _consume(bootstrap: str, topic: str, partition: int, offset: int) -> Message:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"keel-admin-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "fetch.wait.max.ms": 100})
    try:
        consumer.assign([TopicPartition(topic, partition, offset)])
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            return msg
        raise AssertionError(f"nothing consumed from {topic}-{partition} at offset {offset}")
    finally:
        consumer.close()


def _describe(admin: AdminClient, rtype: ResourceType, name: str) -> dict[str, ConfigEntry]:
    futures = admin.describe_configs([ConfigResource(rtype, name)], request_timeout=10)
    (future,) = futures.values()
    return future.result(timeout=DEADLINE_S)


def _assert_log_append_time(bootstrap: str, topic: str) -> None:
    """A record produced with an old CreateTime comes back stamped with the broker's clock."""
    before = int(time.time() * 1000)
    partition, offset = _produce(bootstrap, topic, 0, b"stamped", timestamp=OLD_TIMESTAMP_MS)
    msg = _consume(bootstrap, topic, partition, offset)
    ts_type, ts = msg.timestamp()
    assert msg.value() == b"stamped"
    assert ts_type == TIMESTAMP_LOG_APPEND_TIME
    assert before - 5000 <= ts <= int(time.time() * 1000) + 5000


def _assert_create_time(bootstrap: str, topic: str) -> None:
    partition, offset = _produce(bootstrap, topic, 0, b"as-sent", timestamp=OLD_TIMESTAMP_MS)
    msg = _consume(bootstrap, topic, partition, offset)
    assert msg.timestamp() == (TIMESTAMP_CREATE_TIME, OLD_TIMESTAMP_MS)


# --- registry ---------------------------------------------------------------


def test_admin_apis_are_registered_with_their_version_ranges() -> None:
    ranges = {key: (APIS[key].name, APIS[key].advertised_range) for key in (32, 33, 37, 44, 60)}
    assert ranges == {
        32: ("DescribeConfigs", (1, 4)),
        33: ("AlterConfigs", (0, 2)),
        37: ("CreatePartitions", (0, 3)),
        44: ("IncrementalAlterConfigs", (0, 1)),
        60: ("DescribeCluster", (0, 1)),
    }


# --- confluent-kafka ------------------------------------------------------------


def test_create_partitions_then_produce_and_consume_the_new_one(module_broker: BrokerProcess,
                                                              admin: AdminClient) -> None:
    topic = _topic("grow")
    _create(admin, topic, 4)
    admin.create_partitions([NewPartitions(topic, 6)], operation_timeout=10)[topic].result(timeout=DEADLINE_S)
    assert _partition_count(admin, topic) == 6

    partition, offset = _produce(module_broker.bootstrap, topic, 5, b"in the new partition")
    assert (partition, offset) == (5, 0)
    assert _consume(module_broker.bootstrap, topic, 5, 0).value() == b"in the new partition"

    # validate_only changes nothing
    admin.create_partitions([NewPartitions(topic, 8)], validate_only=True)[topic].result(timeout=DEADLINE_S)
    assert _partition_count(admin, topic) == 6


@pytest.mark.parametrize(("count", "message"), [
    (3, "Topic currently has 6 partitions, which is higher than the requested 3."),
    (6, "Topic already has 6 partitions."),
])
def test_create_partitions_never_shrinks(admin: AdminClient, count: int, message: str) -> None:
    topic = _topic("shrink")
    _create(admin, topic, 6)
    with pytest.raises(KafkaException) as raised:
        admin.create_partitions([NewPartitions(topic, count)])[topic].result(timeout=DEADLINE_S)
    assert _error_code(raised.value) == KafkaError.INVALID_PARTITIONS
    assert message in raised.value.args[0].str()
    assert _partition_count(admin, topic) == 6


def test_create_partitions_of_unknown_topic(admin: AdminClient) -> None:
    topic = _topic("missing")
    with pytest.raises(KafkaException) as raised:
        admin.create_partitions([NewPartitions(topic, 3)])[topic].result(timeout=DEADLINE_S)
    assert _error_code(raised.value) == KafkaError.UNKNOWN_TOPIC_OR_PART


def test_describe_topic_configs(admin: AdminClient) -> None:
    topic = _topic("describe")
    _create(admin, topic, 1, {"retention.ms": "3600000"})
    configs = _describe(admin, ResourceType.TOPIC, topic)
    assert configs["retention.ms"].value == "3600000"
    assert configs["retention.ms"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert configs["retention.bytes"].value == "-1"
    assert configs["retention.bytes"].source == ConfigSource.DEFAULT_CONFIG.value
    assert configs["retention.bytes"].is_default
    assert configs["message.timestamp.type"].value == "CreateTime"
    assert not any(c.is_read_only or c.is_sensitive for c in configs.values())

    with pytest.raises(KafkaException) as raised:
        _describe(admin, ResourceType.TOPIC, _topic("nowhere"))
    assert _error_code(raised.value) == KafkaError.UNKNOWN_TOPIC_OR_PART


def test_describe_broker_configs(admin: AdminClient) -> None:
    configs = _describe(admin, ResourceType.BROKER, "0")
    assert configs["auto.create.topics.enable"].value == "true"
    assert configs["num.partitions"].value == "1"
    assert configs["log.retention.ms"].value == "604800000"
    assert int(configs["message.max.bytes"].value) > 0
    assert all(c.is_read_only for c in configs.values())


def test_alter_configs_replaces_the_whole_set(module_broker: BrokerProcess, admin: AdminClient) -> None:
    topic = _topic("alter")
    _create(admin, topic, 1, {"retention.ms": "3600000"})
    resource = ConfigResource(ResourceType.TOPIC, topic, set_config={"message.timestamp.type": "LogAppendTime"})
    with pytest.warns(DeprecationWarning):
        admin.alter_configs([resource])[resource].result(timeout=DEADLINE_S)

    configs = _describe(admin, ResourceType.TOPIC, topic)
    assert configs["message.timestamp.type"].value == "LogAppendTime"
    assert configs["retention.ms"].value == "604800000"  # not listed: back to the default
    assert configs["retention.ms"].source == ConfigSource.DEFAULT_CONFIG.value
    _assert_log_append_time(module_broker.bootstrap, topic)


def test_incremental_alter_configs(module_broker: BrokerProcess, admin: AdminClient) -> None:
    topic = _topic("incremental")
    _create(admin, topic, 1, {"retention.ms": "3600000"})

    def alter(*entries: ConfigEntry) -> None:
        resource = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=list(entries))
        admin.incremental_alter_configs([resource])[resource].result(timeout=DEADLINE_S)

    alter(ConfigEntry("message.timestamp.type", "LogAppendTime", incremental_operation=AlterConfigOpType.SET))
    configs = _describe(admin, ResourceType.TOPIC, topic)
    assert configs["message.timestamp.type"].value == "LogAppendTime"
    assert configs["retention.ms"].value == "3600000"  # untouched
    _assert_log_append_time(module_broker.bootstrap, topic)

    alter(ConfigEntry("message.timestamp.type", None, incremental_operation=AlterConfigOpType.DELETE))
    assert _describe(admin, ResourceType.TOPIC, topic)["message.timestamp.type"].value == "CreateTime"
    _assert_create_time(module_broker.bootstrap, topic)

    # APPEND of a value already in the list changes nothing
    alter(ConfigEntry("cleanup.policy", "delete", incremental_operation=AlterConfigOpType.APPEND))
    assert _describe(admin, ResourceType.TOPIC, topic)["cleanup.policy"].value == "delete"

    with pytest.raises(KafkaException) as raised:
        alter(ConfigEntry("retention.ms", "5", incremental_operation=AlterConfigOpType.APPEND))
    assert _error_code(raised.value) == KafkaError.INVALID_CONFIG


def test_unknown_config_is_invalid_config(admin: AdminClient) -> None:
    topic = _topic("unknown-config")
    _create(admin, topic, 1)
    incremental = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[
        ConfigEntry("no.such.config", "1", incremental_operation=AlterConfigOpType.SET)])
    with pytest.raises(KafkaException) as raised:
        admin.incremental_alter_configs([incremental])[incremental].result(timeout=DEADLINE_S)
    assert _error_code(raised.value) == KafkaError.INVALID_CONFIG
    assert "no.such.config" in raised.value.args[0].str()

    replace = ConfigResource(ResourceType.TOPIC, topic, set_config={"no.such.config": "1"})
    with pytest.warns(DeprecationWarning), pytest.raises(KafkaException) as raised:
        admin.alter_configs([replace])[replace].result(timeout=DEADLINE_S)
    assert _error_code(raised.value) == KafkaError.INVALID_CONFIG

    broker = ConfigResource(ResourceType.BROKER, "0", incremental_configs=[
        ConfigEntry("num.partitions", "3", incremental_operation=AlterConfigOpType.SET)])
    with pytest.raises(KafkaException) as raised:
        admin.incremental_alter_configs([broker])[broker].result(timeout=DEADLINE_S)
    assert _error_code(raised.value) == KafkaError.INVALID_REQUEST
    assert _describe(admin, ResourceType.TOPIC, topic)["retention.ms"].value == "604800000"


def test_describe_cluster(module_broker: BrokerProcess, admin: AdminClient) -> None:
    # librdkafka answers describe_cluster from a Metadata request; kafka-python (below) sends DescribeCluster.
    described = admin.describe_cluster(request_timeout=10).result(timeout=DEADLINE_S)
    topic = _topic("cluster")
    _create(admin, topic, 1)
    metadata = admin.list_topics(topic, timeout=10)
    assert described.cluster_id == metadata.cluster_id
    assert described.cluster_id
    assert described.controller.id == 0
    assert [(n.id, n.host, n.port) for n in described.nodes] == [(0, "127.0.0.1", module_broker.port)]


def _describe_cluster_raw(address: tuple[str, int], version: int, endpoint_type: int = 1) -> dict:
    """DescribeCluster on the wire (flexible: request header v2, response header v1)."""
    client_id = b"keel-tests"
    header = struct.pack(">hhih", 60, version, 99, len(client_id)) + client_id + b"\x00"
    body = request_codec(60, version).encode({"include_cluster_authorized_operations": False,
                                              "endpoint_type": endpoint_type})
    payload = header + bytes(body)
    with socket.create_connection(address, timeout=5) as sock:
        sock.sendall(struct.pack(">i", len(payload)) + payload)
        frame = b""
        while len(frame) < 4 or len(frame) < 4 + struct.unpack_from(">i", frame)[0]:
            chunk = sock.recv(65536)
            assert chunk, "connection closed"
            frame += chunk
    assert struct.unpack_from(">i", frame, 4)[0] == 99 and frame[8] == 0  # correlation id, no tagged fields
    return response_codec(60, version).decode(frame[9:])


@pytest.mark.parametrize("version", [0, 1])
def test_describe_cluster_on_the_wire(module_broker: BrokerProcess, version: int) -> None:
    response = _describe_cluster_raw(module_broker.address, version)
    assert response["error_code"] == 0
    assert response["controller_id"] == 0
    assert response["cluster_id"]
    assert [(b["broker_id"], b["host"], b["port"]) for b in response["brokers"]] == [
        (0, "127.0.0.1", module_broker.port)]
    if version >= 1:
        assert response["endpoint_type"] == 1
        controllers = _describe_cluster_raw(module_broker.address, version, endpoint_type=2)
        assert controllers["error_code"] == KafkaError.MISMATCHED_ENDPOINT_TYPE
        assert controllers["brokers"] == []


# --- kafka-python -----------------------------------------------------------------


def test_kafka_python_admin(module_broker: BrokerProcess) -> None:
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource as KPConfigResource
    from kafka.admin import ConfigResourceType

    topic = _topic("kafka-python")
    client = KafkaAdminClient(bootstrap_servers=module_broker.bootstrap)
    try:
        client.create_topics({topic: {"num_partitions": 2, "replication_factor": 1}}, timeout_ms=10_000)

        described = client.describe_configs([KPConfigResource(ConfigResourceType.TOPIC, topic)],
                                            include_synonyms=True, config_filter="all")
        retention = described["topic"][topic]["retention.ms"]
        assert retention["value"] == "604800000"
        assert retention["config_source"] == "DEFAULT_CONFIG"
        assert retention["config_type"] == "LONG"
        assert retention["documentation"] is None
        assert [(s["name"], s["source"]) for s in retention["synonyms"]] == [("log.retention.ms", "DEFAULT_CONFIG")]
        assert described["topic"][topic]["cleanup.policy"]["config_type"] == "LIST"

        brokers = client.describe_configs([KPConfigResource(ConfigResourceType.BROKER, "0")], config_filter="all")
        assert brokers["broker"]["0"]["auto.create.topics.enable"]["config_type"] == "BOOLEAN"

        client.create_partitions({topic: 5})
        (meta,) = client.describe_topics([topic])
        assert len(meta["partitions"]) == 5

        for incremental, value in ((False, "1000"), (True, "2000")):
            result = client.alter_configs([KPConfigResource(ConfigResourceType.TOPIC, topic,
                                                            configs={"retention.ms": value})],
                                          incremental=incremental)
            assert result == {"topic": {topic: "OK"}}
            modified = client.describe_configs([KPConfigResource(ConfigResourceType.TOPIC, topic)])
            assert modified["topic"][topic]["retention.ms"]["value"] == value
            assert modified["topic"][topic]["retention.ms"]["config_source"] == "DYNAMIC_TOPIC_CONFIG"

        cluster = client.describe_cluster()
        assert cluster["controller_id"] == 0
        assert cluster["cluster_id"]
        assert [(b["broker_id"], b["port"]) for b in cluster["brokers"]] == [(0, module_broker.port)]
    finally:
        client.close()


# --- persistence ----------------------------------------------------------------------


def test_partitions_and_configs_survive_kill_9(broker: BrokerProcess) -> None:
    topic = _topic("durable")
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    _create(admin, topic, 2)
    admin.create_partitions([NewPartitions(topic, 5)])[topic].result(timeout=DEADLINE_S)
    resource = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[
        ConfigEntry("retention.ms", "12345", incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("message.timestamp.type", "LogAppendTime", incremental_operation=AlterConfigOpType.SET)])
    admin.incremental_alter_configs([resource])[resource].result(timeout=DEADLINE_S)
    assert _produce(broker.bootstrap, topic, 4, b"before the crash") == (4, 0)
    del admin

    broker.restart()  # SIGKILL, then start on the same data directory

    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    assert _partition_count(admin, topic) == 5
    configs = _describe(admin, ResourceType.TOPIC, topic)
    assert configs["retention.ms"].value == "12345"
    assert configs["message.timestamp.type"].value == "LogAppendTime"
    assert _consume(broker.bootstrap, topic, 4, 0).value() == b"before the crash"
    _assert_log_append_time(broker.bootstrap, topic)
