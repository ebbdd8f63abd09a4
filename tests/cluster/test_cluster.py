"""Several brokers on one shared store: leadership is spread, moves on kill -9, SIGSTOP, SIGTERM and
on a broker joining, and no acknowledged record is lost or duplicated on the way.

Most tests share a local directory between the brokers (``--objects-dir``: fast); one runs on
SeaweedFS with the object WAL.  Every test reads back everything its producers were told was
written and checks it with the chaos checker (``tests/chaos/checker.py``): each acknowledged value
is at exactly its acknowledged offset, once, and offsets are dense.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from chaos.checker import FinalRead, RecordingProducer, Send, Verdict, check, read_back
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from cluster.cluster_process import (
    PRODUCE_KEY,
    PRODUCE_VERSION,
    Cluster,
    PartitionLeader,
    RawConnection,
    S3Target,
    kafka_call,
    metadata,
    produce_body,
    produce_result,
    wait_until,
)
from integration.broker_process import fetch_v4
from protocol import records
from protocol.errors import ErrorCode
from s3server import SeaweedFS

LEASE_S = 1.0
PARTITIONS = 6


# ---- fixtures and helpers -------------------------------------------------------------------------


def _failed(node: pytest.Item) -> bool:
    return any(getattr(getattr(node, f"_keel_report_{when}", None), "failed", False) for when in ("setup", "call"))


@pytest.fixture
def make_cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """``make_cluster(n, **Cluster options)`` -> n started brokers; all killed at teardown."""
    clusters: list[Cluster] = []

    def make(count: int, **options: Any) -> Cluster:
        cluster = Cluster(tmp_path / f"cluster{len(clusters)}", **options)
        clusters.append(cluster)
        cluster.start(count)
        cluster.wait_for_brokers(cluster.members)
        return cluster

    try:
        yield make
    finally:
        for cluster in clusters:
            cluster.close()
            if _failed(request.node):
                print(cluster.log_tails())


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    with SeaweedFS(tmp_path_factory.mktemp("weed")) as server:
        yield server


def create_topic(cluster: Cluster, partitions: int = PARTITIONS) -> str:
    topic = f"t-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    admin.create_topics([NewTopic(topic, partitions)])[topic].result(30)
    cluster.wait_for_leaders(topic, partitions)
    return topic


class Traffic:
    """An idempotent producer (acks=all) sending to every partition from a thread, recording every ack."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, producer_id: int = 0,
                 interval: float = 0.002) -> None:
        self.producer = RecordingProducer(producer_id, bootstrap, topic, partitions)
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.producer.send()
            self.producer.poll(self.interval)

    def start(self) -> Traffic:
        self._thread.start()
        return self

    def acked_since(self, t0: float) -> Counter[int]:
        """Acknowledgements per partition after monotonic time ``t0``."""
        return Counter(s.ack_partition for s in list(self.producer.sends) if s.acked_at and s.acked_at > t0)

    def stop(self, timeout: float = 60.0) -> list[Send]:
        self._stop.set()
        self._thread.join(10)
        unanswered = self.producer.flush(timeout)
        assert unanswered == 0, f"{unanswered} records never answered"
        assert self.producer.fatal is None, f"producer failed: {self.producer.fatal}"
        return self.producer.sends


def assert_all_there(cluster: Cluster, topic: str, sends: list[Send], partitions: int = PARTITIONS,
                     min_acked: int = 100) -> tuple[Verdict, FinalRead]:
    """Reads every partition back and checks every acknowledged record is there once, at its offset."""
    final = read_back(cluster.bootstrap, topic, partitions, timeout=60)
    verdict = check(sends, final)
    problems = {k: getattr(verdict, k) for k in ("lost", "duplicated", "inconsistent", "out_of_order", "gaps")}
    assert not any(problems.values()), f"{problems}: {verdict.examples}"
    assert verdict.acked >= min_acked, f"only {verdict.acked} records acknowledged"
    return verdict, final


def leaders_of(cluster: Cluster, topic: str, via: int) -> dict[int, PartitionLeader]:
    return cluster.leaders(topic, via=via)


def moved_away(cluster: Cluster, topic: str, victim: int, before: dict[int, PartitionLeader],
               via: int) -> dict[int, PartitionLeader] | None:
    """The leaders as ``via`` sees them once none is ``victim`` and the victim's partitions have a
    higher epoch; None until then."""
    now = leaders_of(cluster, topic, via)
    if len(now) != len(before) or any(p.error_code or p.leader == victim for p in now.values()):
        return None
    if any(now[p].epoch <= before[p].epoch for p, old in before.items() if old.leader == victim):
        return None
    return now


def batch_of(value: bytes) -> bytes:
    return records.build_batch([(None, value)])


# ---- spreading and routing -------------------------------------------------------------------------


def test_metadata_lists_every_broker_and_spreads_leaders(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(3)
    topic = create_topic(cluster)
    for member in cluster.serving():
        response = metadata(member.address, [topic])
        assert sorted(b["node_id"] for b in response["brokers"]) == [1, 2, 3]
        assert {(b["host"], b["port"]) for b in response["brokers"]} == {m.address for m in cluster.serving()}
    leaders = cluster.wait_for_leaders(topic, PARTITIONS)
    assert sorted(Counter(p.leader for p in leaders.values()).values()) == [2, 2, 2]

    # A client bootstrapped from any one broker reaches every partition (routed by Metadata).
    for member in cluster.serving():
        producer = Producer({"bootstrap.servers": member.process.bootstrap, "acks": "all",
                             "enable.idempotence": True})
        for p in range(PARTITIONS):
            producer.produce(topic, f"via{member.broker_id}-{p}".encode(), partition=p)
        assert producer.flush(30) == 0
    consumer = Consumer({"bootstrap.servers": cluster.serving()[-1].process.bootstrap, "group.id": "g-read",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    seen: list[str] = []
    deadline = time.monotonic() + 30
    while len(seen) < 3 * PARTITIONS and time.monotonic() < deadline:
        seen += [m.value().decode() for m in consumer.consume(100, 0.5) if m.error() is None]
    consumer.close()
    assert sorted(seen) == sorted(f"via{b}-{p}" for b in (1, 2, 3) for p in range(PARTITIONS))


def test_non_leader_answers_not_leader_and_clients_follow_the_leader(
        make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(3)
    topic = create_topic(cluster)
    leaders = cluster.wait_for_leaders(topic, PARTITIONS)
    for p, leader in leaders.items():
        other = next(m for m in cluster.serving() if m.broker_id != leader.leader)
        error, _ = produce_result(kafka_call(other.address, PRODUCE_KEY, PRODUCE_VERSION,
                                             produce_body(topic, p, batch_of(b"stray"))))
        assert error == ErrorCode.NOT_LEADER_OR_FOLLOWER
        assert fetch_v4(other.address, topic, p, 0).error_code == ErrorCode.NOT_LEADER_OR_FOLLOWER
        error, offset = produce_result(kafka_call(cluster[leader.leader].address, PRODUCE_KEY, PRODUCE_VERSION,
                                                  produce_body(topic, p, batch_of(f"direct-{p}".encode()))))
        assert (error, offset) == (0, 0)

    # A client that knows only one broker finds the leaders, also while leadership moves under it.
    lonely = cluster[1].process.bootstrap
    traffic = Traffic(lonely, topic, PARTITIONS).start()
    time.sleep(1.0)
    new = cluster.add()
    wait_until(lambda: new.broker_id in {p.leader for p in cluster.wait_for_leaders(topic, PARTITIONS).values()},
               30, what="leadership moved to the new broker")
    time.sleep(1.5)
    sends = traffic.stop()
    direct = [Send(f"direct-{p}", 99, p, p, 0.0, 0.0, p, 0, p) for p in range(PARTITIONS)]
    assert_all_there(cluster, topic, sends + direct)


# ---- failover ----------------------------------------------------------------------------------------


def segment_snapshot(cluster: Cluster, topic_id: str) -> tuple[dict[str, int], dict[int, dict[str, Any]]]:
    """({segment key: size}, {partition: manifest}), read together."""
    keys = {p: f"meta/partitions/{topic_id}/{p}.json" for p in range(PARTITIONS)}
    objects, documents = cluster.store.snapshot("data/", keys.values())
    return objects, {p: documents[key] or {} for p, key in keys.items()}


def assert_no_segment_data_moved(before: tuple[dict[str, int], dict[int, dict[str, Any]]],
                                 after: tuple[dict[str, int], dict[int, dict[str, Any]]],
                                 moved: dict[int, int]) -> None:
    """Every segment object that existed is untouched, and a moved partition's new segments only hold
    offsets past what was already flushed (the replayed WAL tail and new writes): nothing was copied."""
    objects_before, manifests_before = before
    objects_after, manifests_after = after
    changed = {k: (size, objects_after.get(k)) for k, size in objects_before.items() if objects_after.get(k) != size}
    assert not changed, f"segment objects changed or vanished: {changed}"
    for p in moved:
        old = manifests_before[p].get("segments", [])
        new = manifests_after[p].get("segments", [])
        assert new[:len(old)] == old, f"partition {p}: flushed segments were rewritten"
        flushed_end = old[-1]["last_offset"] + 1 if old else 0
        for ref in new[len(old):]:
            assert ref["base_offset"] >= flushed_end, f"partition {p}: {ref} re-writes flushed offsets"
        assert manifests_after[p]["leader_epoch"] > moved[p]


def kill_leader_under_traffic(cluster: Cluster) -> None:
    topic = create_topic(cluster)
    before_leaders = cluster.wait_for_leaders(topic, PARTITIONS)
    traffic = Traffic(cluster.bootstrap, topic, PARTITIONS).start()
    time.sleep(3.0)  # long enough for some segments to be flushed and some data to sit in the WAL only
    victim = before_leaders[0].leader
    survivor = next(m.broker_id for m in cluster.serving() if m.broker_id != victim)
    record = cluster.store.topic(topic)
    assert record is not None
    cluster.kill(victim)
    killed_at = time.monotonic()
    before = segment_snapshot(cluster, record["topic_id"])  # the dead leader cannot change anything now
    after_leaders = wait_until(lambda: moved_away(cluster, topic, victim, before_leaders, survivor), 30,
                               what="partitions moved off the killed broker")
    moved = {p: leader.epoch for p, leader in before_leaders.items() if leader.leader == victim}
    assert moved and all(after_leaders[p].epoch > before_leaders[p].epoch for p in moved)
    # Writes resume on every moved partition.
    wait_until(lambda: all(traffic.acked_since(killed_at)[p] > 0 for p in moved), 30,
               what="acknowledgements on the moved partitions")
    after = segment_snapshot(cluster, record["topic_id"])
    time.sleep(0.5)
    sends = traffic.stop()
    assert_no_segment_data_moved(before, after, moved)
    assert_all_there(cluster, topic, sends)


def test_kill9_of_a_leader_moves_its_partitions_and_loses_nothing(make_cluster: Callable[..., Cluster]) -> None:
    kill_leader_under_traffic(make_cluster(3))


def test_kill9_on_s3_with_the_object_wal(make_cluster: Callable[..., Cluster], s3_server: SeaweedFS) -> None:
    s3 = S3Target(s3_server.endpoint_url, "keel-cluster", f"c-{uuid.uuid4().hex[:8]}", s3_server.access_key,
                  s3_server.secret_key)
    kill_leader_under_traffic(make_cluster(3, s3=s3, wal="object"))


def test_frozen_leader_acknowledges_nothing_the_new_leader_lacks(make_cluster: Callable[..., Cluster]) -> None:
    """SIGSTOP a leader past its lease: its partitions move.  Requests queued at it while frozen, and
    sent to it right after SIGCONT, are either refused or really in the log at the offset given."""
    cluster = make_cluster(3)
    topic = create_topic(cluster)
    before_leaders = cluster.wait_for_leaders(topic, PARTITIONS)
    victim = before_leaders[0].leader
    survivor = next(m.broker_id for m in cluster.serving() if m.broker_id != victim)
    mine = sorted(p for p, leader in before_leaders.items() if leader.leader == victim)
    traffic = Traffic(cluster.bootstrap, topic, PARTITIONS).start()
    raw: list[Send] = []

    def raw_send(conn: RawConnection, p: int) -> Send:
        s = Send(f"raw-{len(raw)}", 99, len(raw), p, time.monotonic())
        raw.append(s)
        conn.send(PRODUCE_KEY, PRODUCE_VERSION, produce_body(topic, p, batch_of(s.value.encode())))
        return s

    def raw_answer(conn: RawConnection, s: Send) -> None:
        error, offset = produce_result(conn.receive(timeout=20))
        if error == 0:
            s.acked_at, s.ack_partition, s.ack_offset, s.ack_index = time.monotonic(), s.partition, offset, s.seq
        else:
            # Refused before the write (NOT_LEADER) or after it, when it may be in the log (REQUEST_TIMED_OUT).
            assert error in (ErrorCode.NOT_LEADER_OR_FOLLOWER, ErrorCode.REQUEST_TIMED_OUT), f"unexpected error {error}"
            s.error = str(error)

    with RawConnection(cluster[victim].address, timeout=20) as conn:
        time.sleep(1.5)
        cluster.sigstop(victim)
        queued = [raw_send(conn, p) for p in mine]  # the kernel takes them; the broker sees them on SIGCONT
        time.sleep(LEASE_S + 1.0)
        wait_until(lambda: moved_away(cluster, topic, victim, before_leaders, survivor), 30,
                   what="partitions moved off the frozen broker")
        cluster.sigcont(victim)
        for s in queued:
            raw_answer(conn, s)
        # Right after resuming, the broker may briefly think it still leads: keep asking it.
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            raw_answer(conn, raw_send(conn, mine[len(raw) % len(mine)]))
    assert all(s.error is not None for s in queued), "a broker frozen past its lease acknowledged a write"
    time.sleep(1.0)
    sends = traffic.stop()
    assert_all_there(cluster, topic, sends + raw)


def test_a_new_broker_takes_over_some_leadership(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(3)
    topic = create_topic(cluster)
    traffic = Traffic(cluster.bootstrap, topic, PARTITIONS).start()
    time.sleep(1.0)
    new = cluster.add()

    def spread() -> dict[int, PartitionLeader] | None:
        leaders = cluster.wait_for_leaders(topic, PARTITIONS)
        counts = Counter(p.leader for p in leaders.values())
        return leaders if counts[new.broker_id] >= 1 and max(counts.values()) - min(counts.values()) <= 1 else None

    leaders = wait_until(spread, 30, what="leadership spread over four brokers")
    assert sorted(Counter(p.leader for p in leaders.values()).values()) == [1, 1, 2, 2]
    time.sleep(1.0)
    assert_all_there(cluster, topic, traffic.stop())


def test_sigterm_hands_partitions_over_before_the_lease_would_expire(
        make_cluster: Callable[..., Cluster]) -> None:
    lease_ms = 4000  # long, so that a hand-over is clearly faster than waiting for the lease to expire
    cluster = make_cluster(3, lease_ms=lease_ms)
    topic = create_topic(cluster)
    before_leaders = cluster.wait_for_leaders(topic, PARTITIONS)
    victim = before_leaders[0].leader
    survivor = next(m.broker_id for m in cluster.serving() if m.broker_id != victim)
    traffic = Traffic(cluster.bootstrap, topic, PARTITIONS).start()
    time.sleep(1.5)
    process = cluster[victim].process
    assert process.pid is not None
    started = time.monotonic()
    os.kill(process.pid, signal.SIGTERM)
    wait_until(lambda: moved_away(cluster, topic, victim, before_leaders, survivor), 30, interval=0.02,
               what="partitions handed over")
    handed_over_s = time.monotonic() - started
    assert process.proc is not None and process.proc.wait(30) == 0
    assert handed_over_s < lease_ms / 1000, f"hand-over took {handed_over_s:.2f} s, no faster than the lease"
    time.sleep(1.0)
    assert_all_there(cluster, topic, traffic.stop())


def test_wals_of_dead_incarnations_are_deleted_once_replayed(make_cluster: Callable[..., Cluster]) -> None:
    """A killed and restarted broker leaves its old WAL behind for the partitions' new leaders; once they
    have replayed it, nothing names it any more and the broker deletes it (but keeps its current WAL)."""
    cluster = make_cluster(2, extra_args=["--wal-sweep-interval-ms", "500"])
    topic = create_topic(cluster)
    before_leaders = cluster.wait_for_leaders(topic, PARTITIONS)
    victim = before_leaders[0].leader
    traffic = Traffic(cluster.bootstrap, topic, PARTITIONS).start()
    time.sleep(2.0)
    wal_root = cluster[victim].process.data_dir / "wal"
    first = sorted(p.name for p in wal_root.iterdir())
    assert len(first) == 1, first  # one incarnation so far
    cluster.kill(victim)
    cluster.restart(victim)
    wait_until(lambda: first[0] not in {p.name for p in wal_root.iterdir()}, 30,
               what="the dead incarnation's WAL deleted")
    assert len(list(wal_root.iterdir())) == 1, "the current incarnation's WAL must stay"
    time.sleep(0.5)
    assert_all_there(cluster, topic, traffic.stop())


# ---- consumer groups ---------------------------------------------------------------------------------


def find_coordinator(cluster: Cluster, group: str) -> int:
    response = kafka_call(cluster.any_address(), 10, 3, {"key": group, "key_type": 0})
    assert response["error_code"] == 0, response
    return int(response["node_id"])


def test_committed_offsets_survive_the_coordinators_death(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(3)
    partitions = 3
    topic = create_topic(cluster, partitions)
    producer = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all", "enable.idempotence": True})
    for i in range(300):
        producer.produce(topic, f"v{i}".encode(), partition=i % partitions)
    assert producer.flush(30) == 0
    group = f"g-{uuid.uuid4().hex[:8]}"
    config = {"bootstrap.servers": cluster.bootstrap, "group.id": group, "enable.auto.commit": False,
              "auto.offset.reset": "earliest", "session.timeout.ms": 6000}
    consumer = Consumer(config)
    consumer.subscribe([topic])
    taken: list[str] = []
    deadline = time.monotonic() + 30
    while len(taken) < 150 and time.monotonic() < deadline:
        taken += [m.value().decode() for m in consumer.consume(150 - len(taken), 0.5) if m.error() is None]
    consumer.commit(asynchronous=False)
    committed = {tp.partition: tp.offset for tp in consumer.committed(
        [TopicPartition(topic, p) for p in range(partitions)], timeout=10)}
    consumer.close()
    assert sum(max(0, offset) for offset in committed.values()) == len(taken) == 150  # -1001: none yet

    coordinator = find_coordinator(cluster, group)
    cluster.kill(coordinator)
    wait_until(lambda: find_coordinator(cluster, group) != coordinator, 30, what="a new coordinator")

    consumer = Consumer(config)
    again = {tp.partition: tp.offset for tp in consumer.committed(
        [TopicPartition(topic, p) for p in range(partitions)], timeout=30)}
    assert again == committed
    consumer.subscribe([topic])
    rest: list[str] = []
    deadline = time.monotonic() + 60
    while len(rest) < 150 and time.monotonic() < deadline:
        rest += [m.value().decode() for m in consumer.consume(150, 0.5) if m.error() is None]
    consumer.close()
    assert sorted(taken + rest, key=lambda v: int(v[1:])) == [f"v{i}" for i in range(300)]
