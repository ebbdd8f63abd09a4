"""kcat and kafkajs against a real broker: two clients that are not Python and not tested elsewhere.

kcat carries its own (older) librdkafka and uses consumer groups only through
auto-commit; kafkajs speaks older API versions, offers only its round-robin
assigner, and commits with OffsetCommit v5. Each is run as the user would run
it (a ``kcat`` command line; ``node tests/js/*.mjs``) and what it printed is
checked against what the broker stored, read back with confluent-kafka.

The tools are installed by ``tools/install-test-deps.sh``. Without them the
tests skip on a developer machine, but fail in CI (``CI`` set), where a
missing tool means a broken install step, not an optional feature.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from integration.broker_process import BrokerProcess, fetch_v4

JS_DIR = Path(__file__).resolve().parents[1] / "js"
PARTITIONS = 3
TOOL_TIMEOUT_S = 60
WAIT_S = 30.0


def _require(present: bool, what: str) -> None:
    if present:
        return
    hint = f"{what}; run tools/install-test-deps.sh"
    if os.environ.get("CI"):
        pytest.fail(f"{hint} (CI is set: the test dependencies must be installed)")
    pytest.skip(hint)


@pytest.fixture(scope="module")
def kcat() -> str:
    path = shutil.which("kcat")
    _require(path is not None, "kcat is not installed")
    assert path is not None
    return path


@pytest.fixture(scope="module")
def node() -> str:
    path = shutil.which("node")
    _require(path is not None, "node is not installed")
    _require((JS_DIR / "node_modules" / "kafkajs" / "package.json").is_file(),
             "kafkajs is not installed in tests/js")
    assert path is not None
    return path


def run(cmd: list[str], stdin: str | None = None, cwd: Path | None = None) -> str:
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, cwd=cwd)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}\nstdout: {proc.stdout[-3000:]}\n" \
                                 f"stderr: {proc.stderr[-3000:]}"
    return proc.stdout


def create_topic(bootstrap: str, prefix: str) -> str:
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = f"{prefix}-{uuid.uuid4().hex[:10]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])[topic].result(WAIT_S)
    return topic


def high_watermarks(bootstrap: str, topic: str) -> dict[int, int]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "keel-watermarks"})
    try:
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=WAIT_S)[1]
                for p in range(PARTITIONS)}
    finally:
        consumer.close()


def committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        parts = consumer.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=WAIT_S)
        return {tp.partition: tp.offset for tp in parts}
    finally:
        consumer.close()


def read_all(bootstrap: str, topic: str) -> list[Any]:
    """Every record of the topic through confluent-kafka, from offset 0 to the high watermark."""
    from confluent_kafka import Consumer, TopicPartition

    ends = high_watermarks(bootstrap, topic)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "keel-read-all", "enable.auto.commit": False})
    got: list[Any] = []
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        deadline = time.monotonic() + WAIT_S
        while len(got) < sum(ends.values()):
            assert time.monotonic() < deadline, f"read {len(got)} of {sum(ends.values())} records, then nothing"
            for msg in consumer.consume(num_messages=1000, timeout=0.2):
                assert msg.error() is None, msg.error()
                got.append(msg)
    finally:
        consumer.close()
    return got


# --- kcat ---------------------------------------------------------------------------------------


def test_kcat_metadata_produce_consume_and_group(module_broker: BrokerProcess, kcat: str) -> None:
    bootstrap = module_broker.bootstrap
    topic = create_topic(bootstrap, "kcat")

    meta = json.loads(run([kcat, "-b", bootstrap, "-L", "-J", "-t", topic]))
    [listed] = [t for t in meta["topics"] if t["topic"] == topic]
    assert sorted(p["partition"] for p in listed["partitions"]) == list(range(PARTITIONS))
    assert all(p["leader"] == b["id"] for p in listed["partitions"] for b in meta["brokers"])
    plain = run([kcat, "-b", bootstrap, "-L"])
    assert f'topic "{topic}" with {PARTITIONS} partitions:' in plain
    assert all(f"partition {p}, leader" in plain for p in range(PARTITIONS))

    lines = [(f"key-{i % 8}", f"kcat-value-{i}") for i in range(32)]
    run([kcat, "-b", bootstrap, "-P", "-t", topic, "-K", ":"], stdin="".join(f"{k}:{v}\n" for k, v in lines))

    out = run([kcat, "-b", bootstrap, "-C", "-t", topic, "-e", "-o", "beginning", "-J", "-q"])
    consumed = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert sorted((m["key"], m["payload"]) for m in consumed) == sorted(lines)
    partition_of: dict[str, set[int]] = {}
    for m in consumed:
        partition_of.setdefault(m["key"], set()).add(m["partition"])
    assert all(len(parts) == 1 for parts in partition_of.values()), f"a key spans partitions: {partition_of}"
    for p in range(PARTITIONS):  # per partition: dense offsets in the order kcat sent the lines
        in_p = [m for m in consumed if m["partition"] == p]
        assert [m["offset"] for m in in_p] == list(range(len(in_p)))
        assert [m["payload"] for m in in_p] == [v for k, v in lines if partition_of[k] == {p}]

    group = f"kcat-group-{uuid.uuid4().hex[:8]}"
    out = run([kcat, "-b", bootstrap, "-X", "auto.offset.reset=earliest", "-X", "auto.commit.interval.ms=200",
               "-X", "session.timeout.ms=6000", "-X", "heartbeat.interval.ms=1000", "-e", "-J", "-q",
               "-G", group, topic])
    in_group = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert sorted((m["key"], m["payload"]) for m in in_group) == sorted(lines)
    # kcat never commits explicitly: these offsets come from librdkafka's auto-commit
    # (a partition it read nothing from has no committed offset).
    ends = {p: end for p, end in high_watermarks(bootstrap, topic).items() if end > 0}
    assert len(ends) >= 2, f"the keys should spread over the partitions: {ends}"
    assert {p: o for p, o in committed(bootstrap, group, topic).items() if o >= 0} == ends


# --- kafkajs ----------------------------------------------------------------------------------


def test_kafkajs_produce_and_group_consume(module_broker: BrokerProcess, node: str) -> None:
    bootstrap = module_broker.bootstrap
    topic = create_topic(bootstrap, "kafkajs")
    count = 30

    produced = json.loads(run([node, "producer.mjs", bootstrap, topic, str(count)], cwd=JS_DIR))
    assert produced["acks"] and all(ack["errorCode"] == 0 for ack in produced["acks"]), produced["acks"]

    stored = read_all(bootstrap, topic)
    assert sorted(m.value().decode() for m in stored) == sorted(r["value"] for r in produced["sent"])
    by_value = {r["value"]: r for r in produced["sent"]}
    for m in stored:
        sent = by_value[m.value().decode()]
        assert m.key().decode() == sent["key"]
        assert {k: v.decode() for k, v in m.headers()} == sent["headers"]
    for p in {m.partition() for m in stored}:  # kafkajs asked for gzip: the batches are gzip
        batches = fetch_v4(module_broker.address, topic, p, 0).batches
        assert batches and all(b.compression == 1 for b in batches), batches

    group = f"kafkajs-group-{uuid.uuid4().hex[:8]}"
    out = json.loads(run([node, "consumer.mjs", bootstrap, topic, group, str(count)], cwd=JS_DIR))
    assert out["joined"]["groupProtocol"] == "RoundRobinAssigner"
    assert sorted(out["joined"]["memberAssignment"][topic]) == list(range(PARTITIONS))
    got = out["records"]
    assert sorted(r["value"] for r in got) == sorted(by_value)
    for r in got:
        assert r["key"] == by_value[r["value"]]["key"]
        assert r["headers"] == by_value[r["value"]]["headers"]
    for p in range(PARTITIONS):
        offsets = [r["offset"] for r in got if r["partition"] == p]
        assert offsets == list(range(len(offsets))), f"partition {p}: {offsets}"

    ends = high_watermarks(bootstrap, topic)
    assert committed(bootstrap, group, topic) == ends
    [fetched] = [t for t in out["committed"] if t["topic"] == topic]
    assert {int(x["partition"]): int(x["offset"]) for x in fetched["partitions"]} == ends
