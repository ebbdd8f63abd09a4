"""Consumer groups and committed offsets, driven by confluent-kafka, kafka-python and aiokafka.

Every group member runs in its own child process (this module run as a
script: ``python -m integration.test_groups_clients member ...``), so a member
can really die: SIGKILL stops its heartbeats without a LeaveGroup, exactly as
a crashed consumer does. A member reports its rebalance callbacks and the
records it receives as JSON lines on stdout and obeys ``commit``/``close``
commands on stdin. The tests then check what Kafka guarantees: partitions are
split without overlap, a departed or dead member's partitions move to the
survivors, committed offsets survive a consumer restart and a broker
``kill -9``, and -- for librdkafka -- cooperative rebalancing, static
membership, the range and roundrobin assignors and the group admin APIs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

SESSION_TIMEOUT_MS = 6000
HEARTBEAT_MS = 1000
MAX_POLL_MS = 15000  # also the rebalance timeout: how long a rebalance waits for stragglers
PARTITIONS = 6
ALL = frozenset(range(PARTITIONS))
TESTS_DIR = Path(__file__).resolve().parents[1]
WAIT_S = 30.0
PYTHON_CLIENTS = ["confluent", "kafka-python", "aiokafka"]


# --- the member process -----------------------------------------------------------------


def _emit(**event: Any) -> None:
    print(json.dumps(event), flush=True)


def _commands() -> queue.Queue[str]:
    """Lines from stdin, read by a thread so the consumer loop never blocks on them."""
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in sys.stdin:
            lines.put(line.strip())
        lines.put("close")  # the test process went away: leave cleanly

    threading.Thread(target=read, daemon=True).start()
    return lines


def _next_command(lines: queue.Queue[str]) -> tuple[str, Any] | None:
    try:
        line = lines.get_nowait()
    except queue.Empty:
        return None
    name, _, arg = line.partition(" ")
    return name, json.loads(arg) if arg else None


def _run_confluent(args: argparse.Namespace) -> None:
    from confluent_kafka import Consumer, TopicPartition

    config: dict[str, Any] = {
        "bootstrap.servers": args.bootstrap, "group.id": args.group, "client.id": args.name,
        "session.timeout.ms": SESSION_TIMEOUT_MS, "heartbeat.interval.ms": HEARTBEAT_MS,
        "max.poll.interval.ms": MAX_POLL_MS, "enable.auto.commit": False,
        "auto.offset.reset": "earliest", "fetch.wait.max.ms": 100,
        "reconnect.backoff.max.ms": 500,
    }
    if args.strategy:
        config["partition.assignment.strategy"] = args.strategy
    if args.instance:
        config["group.instance.id"] = args.instance
    consumer = Consumer(config)
    owned: set[int] = set()

    # Eager callbacks carry the whole assignment, cooperative ones only the change.
    cooperative = (args.strategy or "").startswith("cooperative")

    def on_assign(c: Any, parts: list[Any]) -> None:
        added = {tp.partition for tp in parts}
        if not cooperative:
            owned.clear()
        owned.update(added)
        _emit(ev="assign", parts=sorted(added), owned=sorted(owned))

    def on_revoke(c: Any, parts: list[Any]) -> None:
        removed = {tp.partition for tp in parts}
        if cooperative:
            owned.difference_update(removed)
        else:
            owned.clear()
        _emit(ev="revoke", parts=sorted(removed), owned=sorted(owned))

    consumer.subscribe([args.topic], on_assign=on_assign, on_revoke=on_revoke, on_lost=on_revoke)
    lines = _commands()
    _emit(ev="ready")
    while True:
        for msg in consumer.consume(num_messages=500, timeout=0.1):
            if msg.error() is None:
                _emit(ev="msg", p=msg.partition(), o=msg.offset(), v=msg.value().decode())
        command = _next_command(lines)
        if command is None:
            continue
        name, arg = command
        if name == "commit":
            result = consumer.commit(offsets=[TopicPartition(args.topic, int(p), o) for p, o in arg.items()],
                                     asynchronous=False)
            errors = [str(tp.error) for tp in result if tp.error is not None]
            _emit(ev="committed", ok=not errors, errors=errors)
        elif name == "close":
            consumer.close()
            _emit(ev="closed")
            return


def _run_kafka_python(args: argparse.Namespace) -> None:
    from kafka import KafkaConsumer, TopicPartition
    from kafka.consumer.subscription_state import ConsumerRebalanceListener
    from kafka.structs import OffsetAndMetadata

    consumer = KafkaConsumer(
        bootstrap_servers=args.bootstrap, group_id=args.group, client_id=args.name,
        session_timeout_ms=SESSION_TIMEOUT_MS, heartbeat_interval_ms=HEARTBEAT_MS,
        max_poll_interval_ms=MAX_POLL_MS, enable_auto_commit=False, auto_offset_reset="earliest",
        fetch_max_wait_ms=100, reconnect_backoff_max_ms=500)
    owned: set[int] = set()

    class Listener(ConsumerRebalanceListener):
        def on_partitions_revoked(self, revoked: Iterable[Any]) -> None:
            owned.clear()
            _emit(ev="revoke", parts=sorted(tp.partition for tp in revoked), owned=[])

        def on_partitions_assigned(self, assigned: Iterable[Any]) -> None:
            owned.clear()
            owned.update(tp.partition for tp in assigned)
            _emit(ev="assign", parts=sorted(owned), owned=sorted(owned))

    consumer.subscribe([args.topic], listener=Listener())
    lines = _commands()
    _emit(ev="ready")
    while True:
        for tp, msgs in consumer.poll(timeout_ms=100).items():
            for msg in msgs:
                _emit(ev="msg", p=tp.partition, o=msg.offset, v=msg.value.decode())
        command = _next_command(lines)
        if command is None:
            continue
        name, arg = command
        if name == "commit":
            try:
                consumer.commit({TopicPartition(args.topic, int(p)): OffsetAndMetadata(o, "", -1)
                                 for p, o in arg.items()})
                _emit(ev="committed", ok=True, errors=[])
            except Exception as exc:  # noqa: BLE001 - reported to the test, which fails on it
                _emit(ev="committed", ok=False, errors=[repr(exc)])
        elif name == "close":
            consumer.close(autocommit=False)
            _emit(ev="closed")
            return


async def _run_aiokafka(args: argparse.Namespace) -> None:
    from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=args.bootstrap, group_id=args.group, client_id=args.name,
        session_timeout_ms=SESSION_TIMEOUT_MS, heartbeat_interval_ms=HEARTBEAT_MS,
        max_poll_interval_ms=MAX_POLL_MS, rebalance_timeout_ms=MAX_POLL_MS, enable_auto_commit=False,
        auto_offset_reset="earliest", fetch_max_wait_ms=100)
    owned: set[int] = set()

    class Listener(ConsumerRebalanceListener):
        async def on_partitions_revoked(self, revoked: Iterable[Any]) -> None:
            owned.clear()
            _emit(ev="revoke", parts=sorted(tp.partition for tp in revoked), owned=[])

        async def on_partitions_assigned(self, assigned: Iterable[Any]) -> None:
            owned.clear()
            owned.update(tp.partition for tp in assigned)
            _emit(ev="assign", parts=sorted(owned), owned=sorted(owned))

    await consumer.start()
    consumer.subscribe([args.topic], listener=Listener())
    lines = _commands()
    _emit(ev="ready")
    while True:
        for tp, msgs in (await consumer.getmany(timeout_ms=100)).items():
            for msg in msgs:
                _emit(ev="msg", p=tp.partition, o=msg.offset, v=msg.value.decode())
        command = _next_command(lines)
        if command is None:
            continue
        name, arg = command
        if name == "commit":
            try:
                await consumer.commit({TopicPartition(args.topic, int(p)): o for p, o in arg.items()})
                _emit(ev="committed", ok=True, errors=[])
            except Exception as exc:  # noqa: BLE001 - reported to the test, which fails on it
                _emit(ev="committed", ok=False, errors=[repr(exc)])
        elif name == "close":
            await consumer.stop()
            _emit(ev="closed")
            return


def member_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="member")
    parser.add_argument("--client", choices=PYTHON_CLIENTS, required=True)
    for option in ("--bootstrap", "--topic", "--group", "--name"):
        parser.add_argument(option, required=True)
    parser.add_argument("--strategy")
    parser.add_argument("--instance")
    args = parser.parse_args(argv)
    if args.client == "confluent":
        _run_confluent(args)
    elif args.client == "kafka-python":
        _run_kafka_python(args)
    else:
        asyncio.run(_run_aiokafka(args))


# --- the test side -------------------------------------------------------------------------


class Member:
    """One group member in a child process, seen through the events it prints."""

    def __init__(self, client: str, bootstrap: str, topic: str, group: str, *, name: str,
                 strategy: str | None = None, instance: str | None = None) -> None:
        self.client = client
        self.name = name
        cmd = [sys.executable, "-m", "integration.test_groups_clients", "member", "--client", client,
               "--bootstrap", bootstrap, "--topic", topic, "--group", group, "--name", name]
        if strategy:
            cmd += ["--strategy", strategy]
        if instance:
            cmd += ["--instance", instance]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(cmd, cwd=TESTS_DIR, env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lock = threading.Lock()
        self.events: list[dict[str, Any]] = []
        self.stderr: list[str] = []
        self.owned: frozenset[int] = frozenset()
        self.ending = False  # set once the test closes or kills it: exiting is expected then
        self.readers = [threading.Thread(target=self._read_events, daemon=True),
                        threading.Thread(target=self._read_stderr, daemon=True)]
        for reader in self.readers:
            reader.start()

    def _read_events(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                event = {"ev": "noise", "line": line.rstrip()}
            event["t"] = time.monotonic()
            with self.lock:
                self.events.append(event)
                if "owned" in event:
                    self.owned = frozenset(event["owned"])

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self.lock:
                self.stderr.append(line.rstrip())

    def of_kind(self, kind: str, since: float = 0.0) -> list[dict[str, Any]]:
        with self.lock:
            return [e for e in self.events if e["ev"] == kind and e["t"] >= since]

    def first_offsets(self) -> dict[int, int]:
        first: dict[int, int] = {}
        for e in self.of_kind("msg"):
            first.setdefault(e["p"], e["o"])
        return first

    def describe(self) -> str:
        with self.lock:
            events = [{k: v for k, v in e.items() if k != "t"} for e in self.events if e["ev"] != "msg"]
            msgs = sum(1 for e in self.events if e["ev"] == "msg")
            return (f"{self.name} ({self.client}, exit {self.proc.poll()}): owned {sorted(self.owned)}, "
                    f"{msgs} records, events {events[-12:]}, stderr tail {self.stderr[-15:]}")

    def send(self, command: str, arg: Any = None) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + (" " + json.dumps(arg) if arg is not None else "") + "\n")
        self.proc.stdin.flush()

    def commit(self, offsets: dict[int, int]) -> None:
        before = len(self.of_kind("committed"))
        self.send("commit", {str(p): o for p, o in offsets.items()})
        wait_for(lambda: len(self.of_kind("committed")) > before, f"{self.name} to commit", [self])
        result = self.of_kind("committed")[-1]
        assert result["ok"], f"{self.name}: commit failed: {result['errors']}"

    def close(self) -> None:
        """Leave the group the polite way (the client's close())."""
        self.ending = True
        if self.proc.poll() is None:
            self.send("close")
            wait_for(lambda: self.proc.poll() is not None, f"{self.name} to close", [self])
        assert self.proc.returncode == 0, self.describe()

    def kill(self) -> None:
        """SIGKILL: no LeaveGroup, the heartbeats just stop."""
        self.ending = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def reap(self) -> None:
        self.kill()
        for reader in self.readers:  # they end at EOF, now that the process is gone
            reader.join(timeout=5)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def wait_for(condition: Callable[[], bool], what: str, members: Iterable[Member],
             timeout: float = WAIT_S) -> float:
    """Poll ``condition`` until true; returns the seconds it took, fails with every member's story."""
    members = list(members)
    start = time.monotonic()
    while not condition():
        crashed = [m for m in members if not m.ending and m.proc.poll() is not None]
        if crashed or time.monotonic() - start > timeout:
            story = "\n".join(m.describe() for m in members)
            reason = f"{crashed[0].name} exited" if crashed else f"timed out after {timeout:.0f} s"
            raise AssertionError(f"{reason} waiting for {what}\n{story}")
        time.sleep(0.05)
    return time.monotonic() - start


def is_split(*members: Member) -> bool:
    """The members own disjoint, non-empty partition sets that together cover the topic."""
    sets = [m.owned for m in members]
    return (all(sets) and frozenset().union(*sets) == ALL
            and sum(len(s) for s in sets) == PARTITIONS)


@pytest.fixture
def spawn() -> Iterator[Callable[..., Member]]:
    """Starts members; kills every one of them at teardown whatever happened."""
    started: list[Member] = []

    def start(*args: Any, **kwargs: Any) -> Member:
        member = Member(*args, **kwargs)
        started.append(member)
        return member

    yield start
    for member in started:
        member.reap()


def create_topic(bootstrap: str, partitions: int = PARTITIONS, prefix: str = "groups") -> str:
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = f"{prefix}-{uuid.uuid4().hex[:10]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])[topic].result(WAIT_S)
    return topic


def produce(bootstrap: str, topic: str, per_partition: int) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for p in range(PARTITIONS):
        for i in range(per_partition):
            producer.produce(topic, value=f"p{p}-{i}".encode(), partition=p)
    assert producer.flush(WAIT_S) == 0


def new_group() -> str:
    return f"group-{uuid.uuid4().hex[:10]}"


# --- membership: split, leave, death ------------------------------------------------------


def _split_leave_and_kill(spawn: Callable[..., Member], bootstrap: str, client: str,
                          strategy: str | None = None) -> tuple[frozenset[int], frozenset[int]]:
    topic, group = create_topic(bootstrap), new_group()
    a = spawn(client, bootstrap, topic, group, name="a", strategy=strategy)
    b = spawn(client, bootstrap, topic, group, name="b", strategy=strategy)
    wait_for(lambda: is_split(a, b), "a and b to split the 6 partitions", [a, b])
    split = (a.owned, b.owned)

    b.close()
    wait_for(lambda: a.owned == ALL, "a to own all partitions after b left", [a, b])

    c = spawn(client, bootstrap, topic, group, name="c", strategy=strategy)
    wait_for(lambda: is_split(a, c), "a and c to split the 6 partitions", [a, c])
    c.kill()
    waited = wait_for(lambda: a.owned == ALL, "a to own all partitions after c was killed", [a, c])
    # Nobody told the broker: only the expired session can have moved c's partitions.
    assert waited >= SESSION_TIMEOUT_MS / 1000 / 2, f"took over after {waited:.1f} s"
    a.close()
    return split


@pytest.mark.parametrize("client", ["kafka-python", "aiokafka"])
def test_python_clients_split_leave_and_kill(module_broker: Any, spawn: Callable[..., Member],
                                             client: str) -> None:
    a_parts, b_parts = _split_leave_and_kill(spawn, module_broker.bootstrap, client)
    if client == "kafka-python":  # default assignors [range, roundrobin]: range is picked
        assert {a_parts, b_parts} == {frozenset({0, 1, 2}), frozenset({3, 4, 5})}
    else:  # aiokafka offers only roundrobin
        assert {a_parts, b_parts} == {frozenset({0, 2, 4}), frozenset({1, 3, 5})}


def test_confluent_range_split_leave_and_kill(module_broker: Any, spawn: Callable[..., Member]) -> None:
    a_parts, b_parts = _split_leave_and_kill(spawn, module_broker.bootstrap, "confluent", "range")
    assert {a_parts, b_parts} == {frozenset({0, 1, 2}), frozenset({3, 4, 5})}


def test_confluent_roundrobin_split_and_leave(module_broker: Any, spawn: Callable[..., Member]) -> None:
    bootstrap = module_broker.bootstrap
    topic, group = create_topic(bootstrap), new_group()
    a = spawn("confluent", bootstrap, topic, group, name="a", strategy="roundrobin")
    b = spawn("confluent", bootstrap, topic, group, name="b", strategy="roundrobin")
    wait_for(lambda: is_split(a, b), "a and b to split the 6 partitions", [a, b])
    assert {a.owned, b.owned} == {frozenset({0, 2, 4}), frozenset({1, 3, 5})}
    a.close()
    wait_for(lambda: b.owned == ALL, "b to own all partitions after a left", [a, b])
    b.close()


def test_confluent_cooperative_sticky_incremental(module_broker: Any, spawn: Callable[..., Member]) -> None:
    bootstrap = module_broker.bootstrap
    topic, group = create_topic(bootstrap), new_group()
    strategy = "cooperative-sticky"
    a = spawn("confluent", bootstrap, topic, group, name="a", strategy=strategy)
    wait_for(lambda: a.owned == ALL, "a to own all partitions", [a])
    joined = time.monotonic()

    b = spawn("confluent", bootstrap, topic, group, name="b", strategy=strategy)
    wait_for(lambda: is_split(a, b), "a and b to split the 6 partitions", [a, b])
    revoked = {p for e in a.of_kind("revoke", since=joined) for p in e["parts"]}
    # Incremental: a gave up exactly what b got and never stopped owning the rest.
    assert revoked == b.owned, a.describe()
    assert all(e["owned"] for e in a.of_kind("revoke", since=joined)), a.describe()
    # (librdkafka calls on_assign with an empty list when a cooperative round adds nothing.)
    assert not [e for e in a.of_kind("assign", since=joined) if e["parts"]], a.describe()

    left = time.monotonic()
    b.close()
    wait_for(lambda: a.owned == ALL, "a to own all partitions after b left", [a, b])
    assert not a.of_kind("revoke", since=left), a.describe()
    a.close()


def test_confluent_static_membership_rejoin_without_rebalance(module_broker: Any,
                                                              spawn: Callable[..., Member]) -> None:
    bootstrap = module_broker.bootstrap
    topic, group = create_topic(bootstrap), new_group()
    # Eager range: any rebalance would revoke a's partitions, so a quiet a proves there was none.
    # b starts first so that it is the group leader: the restarted leader must not reassign.
    b = spawn("confluent", bootstrap, topic, group, name="b", strategy="range", instance="static-b")
    wait_for(lambda: b.owned == ALL, "b to own all partitions", [b])
    a = spawn("confluent", bootstrap, topic, group, name="a", strategy="range", instance="static-a")
    wait_for(lambda: is_split(a, b), "a and b to split the 6 partitions", [a, b])
    a_parts, b_parts = a.owned, b.owned
    time.sleep(2 * HEARTBEAT_MS / 1000)  # let any follow-up rebalance of the first join settle
    settled = time.monotonic()

    b.kill()
    b2 = spawn("confluent", bootstrap, topic, group, name="b2", strategy="range", instance="static-b")
    waited = wait_for(lambda: bool(b2.owned), "b2 (b restarted) to get partitions", [a, b2])
    assert waited < SESSION_TIMEOUT_MS / 1000, "b2 got partitions only after b's session expired"
    assert b2.owned == b_parts
    time.sleep(3 * HEARTBEAT_MS / 1000)  # a would learn of a rebalance on its next heartbeat
    assert not a.of_kind("revoke", since=settled), f"a was rebalanced: {a.describe()}"
    assert not a.of_kind("assign", since=settled), f"a was rebalanced: {a.describe()}"
    assert a.owned == a_parts

    # The group still works with the replaced member: b2 now leads and takes everything once a
    # is gone (a static member's close sends no LeaveGroup, so after a's session times out).
    a.close()
    wait_for(lambda: b2.owned == ALL, "b2 to own all partitions after a left", [a, b2])


# --- the admin API --------------------------------------------------------------------------


def test_confluent_admin_group_apis(module_broker: Any, spawn: Callable[..., Member]) -> None:
    from confluent_kafka import ConsumerGroupState, ConsumerGroupTopicPartitions, KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient

    bootstrap = module_broker.bootstrap
    topic, group = create_topic(bootstrap), new_group()
    admin = AdminClient({"bootstrap.servers": bootstrap})
    a = spawn("confluent", bootstrap, topic, group, name="a", strategy="range")
    b = spawn("confluent", bootstrap, topic, group, name="b", strategy="range")
    wait_for(lambda: is_split(a, b), "a and b to split the 6 partitions", [a, b])

    listed = {g.group_id: g for g in admin.list_consumer_groups().result(WAIT_S).valid}
    assert group in listed
    assert listed[group].state == ConsumerGroupState.STABLE
    assert not listed[group].is_simple_consumer_group

    desc = admin.describe_consumer_groups([group])[group].result(WAIT_S)
    assert desc.state == ConsumerGroupState.STABLE
    assert desc.partition_assignor == "range"
    assert sorted(m.client_id for m in desc.members) == ["a", "b"]
    assigned = {m.client_id: frozenset(tp.partition for tp in m.assignment.topic_partitions)
                for m in desc.members}
    assert assigned == {"a": a.owned, "b": b.owned}

    committed = {p: 10 + p for p in a.owned}
    a.commit(committed)
    result = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result(WAIT_S)
    assert {tp.partition: tp.offset for tp in result.topic_partitions if tp.topic == topic} == committed

    with pytest.raises(KafkaException) as excinfo:
        admin.delete_consumer_groups([group])[group].result(WAIT_S)
    assert excinfo.value.args[0].code() == KafkaError.NON_EMPTY_GROUP

    a.close()
    b.close()
    desc = admin.describe_consumer_groups([group])[group].result(WAIT_S)
    assert desc.state == ConsumerGroupState.EMPTY
    assert desc.members == []
    admin.delete_consumer_groups([group])[group].result(WAIT_S)
    assert group not in {g.group_id for g in admin.list_consumer_groups().result(WAIT_S).valid}
    result = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result(WAIT_S)
    assert [tp for tp in result.topic_partitions if tp.offset >= 0] == []


# --- committed offsets across a consumer restart and a broker kill -9 -----------------------


@pytest.mark.parametrize("client", PYTHON_CLIENTS)
def test_resume_at_committed_offset_after_broker_kill(broker: Any, spawn: Callable[..., Member],
                                                      client: str) -> None:
    from confluent_kafka import Consumer, TopicPartition

    per_partition = 10
    topic, group = create_topic(broker.bootstrap), new_group()
    produce(broker.bootstrap, topic, per_partition)
    first = spawn(client, broker.bootstrap, topic, group, name="first")
    wait_for(lambda: len(first.of_kind("msg")) >= PARTITIONS * per_partition, "first to read everything",
             [first])
    committed = {p: 2 + p for p in range(PARTITIONS)}  # distinct, and neither 0 nor the end
    first.commit(committed)
    first.close()

    broker.restart()  # SIGKILL, then the same port and data directory

    probe = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group})
    try:
        seen = probe.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=WAIT_S)
    finally:
        probe.close()
    assert {tp.partition: tp.offset for tp in seen} == committed

    second = spawn(client, broker.bootstrap, topic, group, name="second")
    expected = sum(per_partition - o for o in committed.values())
    wait_for(lambda: len(second.of_kind("msg")) >= expected, "second to read from the committed offsets",
             [second])
    assert second.first_offsets() == committed
    got = sorted((e["p"], e["o"]) for e in second.of_kind("msg"))
    assert got == [(p, o) for p in range(PARTITIONS) for o in range(committed[p], per_partition)]
    second.close()


if __name__ == "__main__" and sys.argv[1:2] == ["member"]:
    member_main(sys.argv[2:])
