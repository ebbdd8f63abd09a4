"""The controller elects a new leader only on a fresh read showing the old leader's lease is over.

Found by the chaos suite: a registration read at the start of a controller round can be older than a
renewal that landed since.  Electing on it gave a partition two leaders that both acknowledged writes
at the same offsets (docs/chaos.md).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from broker.config import Settings
from broker.controller import AUDIT_CYCLE_ROUNDS, Controller, LeaderStillLive
from broker.membership import wall_ms
from metadata.cluster import (
    Assignments,
    BrokerRegistration,
    ClusterStore,
    ControllerLease,
    PartitionAssignment,
)
from metadata.store import Manifest, MetadataStore, TopicRecord
from objectstore.memory import MemoryObjectStore

TOPIC = TopicRecord(name="audit", topic_id="ab" * 16, partitions=1)
OLD_WAL = {"engine": "object", "prefix": "wal/3/5"}


def registration(broker_id: int, incarnation: int, expiry_ms: int) -> BrokerRegistration:
    return BrokerRegistration(broker_id=broker_id, host="127.0.0.1", port=9000 + broker_id,
                              incarnation=incarnation, lease_expiry_ms=expiry_ms,
                              wal={"engine": "object", "base": f"wal/{broker_id}"})


async def setup() -> tuple[Controller, ClusterStore, MetadataStore]:
    meta = MetadataStore(MemoryObjectStore())
    cluster = ClusterStore(meta)
    controller = Controller(SimpleNamespace(cluster=cluster, meta=meta))  # type: ignore[arg-type]
    await meta.commit_manifest(Manifest(topic_id=TOPIC.topic_id, partition=0, leader_epoch=9, leader=3,
                                        leader_incarnation=5, leader_wal=OLD_WAL), None)
    return controller, cluster, meta


async def test_no_election_while_a_fresh_read_shows_the_leader_renewed() -> None:
    controller, cluster, meta = await setup()
    # The round's cached view said "expired", but the renewal that landed since says otherwise.
    await cluster.write_broker(registration(3, 5, wall_ms() + 1000), None)
    target = registration(1, 8, wall_ms() + 1000)
    with pytest.raises(LeaderStillLive):
        await controller._elect(TOPIC, 0, target, {})
    manifest, _etag = await meta.load_manifest(TOPIC.topic_id, 0)
    assert (manifest.leader, manifest.leader_epoch, manifest.replay_from) == (3, 9, [])


async def test_election_after_the_lease_ran_out_fences_and_lists_the_old_wal() -> None:
    controller, cluster, meta = await setup()
    await cluster.write_broker(registration(3, 5, wall_ms() - 1), None)
    target = registration(1, 8, wall_ms() + 1000)
    assert await controller._elect(TOPIC, 0, target, {}) == 10
    manifest, _etag = await meta.load_manifest(TOPIC.topic_id, 0)
    assert (manifest.leader, manifest.leader_incarnation, manifest.leader_epoch) == (1, 8, 10)
    assert manifest.replay_from == [[OLD_WAL, 9]]


async def test_a_newer_incarnation_means_the_old_one_is_over() -> None:
    controller, cluster, _meta = await setup()
    # Registering incarnation 6 waits out incarnation 5's lease first, whatever 6's own expiry is.
    await cluster.write_broker(registration(3, 6, wall_ms() + 1000), None)
    assert await controller._elect(TOPIC, 0, registration(3, 6, wall_ms() + 1000), {}) == 10


async def test_a_live_leader_the_assignment_does_not_name_is_published() -> None:
    """Seen in a long chaos run: a controller elected broker 3 in the manifest, then lost its lease
    before publishing the assignment.  The next controller, on a stale view of the registrations,
    kept trying to elect and kept finding broker 3 alive, and the partition had no serving leader
    for 33 s.  It now publishes the manifest's live leader."""
    controller, cluster, meta = await setup()
    await cluster.write_broker(registration(3, 5, wall_ms() + 1000), None)  # alive and renewing
    stale = registration(3, 5, wall_ms() - 1)  # what this round read a moment ago
    me = registration(1, 8, wall_ms() + 1000)
    key = Assignments.key(TOPIC.topic_id, 0)
    await cluster.write_assignments(Assignments(1, 0, {key: PartitionAssignment(2, 8, 4)}), None)
    published: list[Assignments] = []
    broker = SimpleNamespace(
        cluster=cluster, meta=meta, cluster_brokers={1: me, 3: stale}, topics={TOPIC.name: TOPIC},
        leaving=False, membership=SimpleNamespace(incarnation=8, lease_valid=lambda: True),
        settings=SimpleNamespace(broker_id=1, lease_ms=1000, lease_renew_ms=200, lease_margin_ms=200),
        on_assignments=published.append)
    controller = Controller(broker)  # type: ignore[arg-type]

    await controller.tick()

    stored, _etag = await cluster.read_assignments()
    assert stored.partitions[key] == PartitionAssignment(3, 9, 5)
    manifest, _etag = await meta.load_manifest(TOPIC.topic_id, 0)
    assert (manifest.leader, manifest.leader_epoch) == (3, 9)  # nobody was elected over it


async def test_an_assignment_behind_the_manifest_is_corrected() -> None:
    """Seen in a long chaos run: two controllers overlapped; one published "broker 1 at epoch 8" after
    the other had written epoch 9 (broker 3) into the manifest.  Broker 1's takeover found the manifest
    ahead and gave up, broker 3 was not told to serve, and the partition stayed without a leader."""
    controller, cluster, meta = await setup()  # the manifest: broker 3 incarnation 5 at epoch 9
    me = registration(1, 8, wall_ms() + 1000)
    leader = registration(3, 5, wall_ms() + 1000)
    await cluster.write_broker(leader, None)
    key = Assignments.key(TOPIC.topic_id, 0)
    await cluster.write_assignments(Assignments(1, 0, {key: PartitionAssignment(1, 8, 8)}), None)
    broker = SimpleNamespace(
        cluster=cluster, meta=meta, cluster_brokers={1: me, 3: leader}, topics={TOPIC.name: TOPIC},
        leaving=False, membership=SimpleNamespace(incarnation=8, lease_valid=lambda: True),
        settings=SimpleNamespace(broker_id=1, lease_ms=1000, lease_renew_ms=200, lease_margin_ms=200),
        on_assignments=lambda _a: None)
    controller = Controller(broker)  # type: ignore[arg-type]

    await controller.tick()

    stored, _etag = await cluster.read_assignments()
    assert stored.partitions[key] == PartitionAssignment(3, 9, 5)
    manifest, _etag = await meta.load_manifest(TOPIC.topic_id, 0)
    assert (manifest.leader, manifest.leader_epoch) == (3, 9)


async def test_a_stale_view_of_the_holder_does_not_depose_a_live_controller() -> None:
    """Chaos run 2026-12-04 04:27 (seed 120412027): broker 2 resumed from a 3.2 s SIGSTOP, rejoined, and
    took the controller lease from broker 3, which was renewing it, because the registrations its round
    had read before the freeze showed broker 3 expired.  A second broker then deposed broker 2 the same
    way (its view still named broker 2's previous incarnation): three controllers in 130 ms."""
    cluster = ClusterStore(MetadataStore(MemoryObjectStore()))
    holder_etag = await cluster.write_broker(registration(3, 1, wall_ms() + 1000), None)
    await cluster.write_controller(ControllerLease(broker_id=3, incarnation=1, epoch=2, expiry_ms=wall_ms() + 1000),
                                   None)
    me = SimpleNamespace(incarnation=3, lease_valid=lambda: True)
    controller = Controller(SimpleNamespace(cluster=cluster, settings=Settings(broker_id=2), membership=me,
                                            leaving=False))  # type: ignore[arg-type]
    stale = {3: registration(3, 1, wall_ms() - 2000), 2: registration(2, 3, wall_ms() + 1000)}
    assert await controller._take_lease(stale, wall_ms()) is False
    current, _etag = await cluster.read_controller()
    assert current is not None and (current.broker_id, current.epoch) == (3, 2)
    # Once a fresh read shows the holder gone, the lease is taken at once, without waiting for it to run out.
    await cluster.write_broker(registration(3, 1, wall_ms() - 1), holder_etag)
    assert await controller._take_lease(stale, wall_ms()) is True
    current, _etag = await cluster.read_controller()
    assert current is not None and (current.broker_id, current.incarnation, current.epoch) == (2, 3, 3)


async def test_the_lease_as_last_read_is_reused_only_while_its_holder_shows_alive() -> None:
    """A broker that is not the controller reuses the lease it read while more than half of it is left
    and the holder's registration shows it alive; once the holder leaves, it reads afresh and takes over."""
    cluster = ClusterStore(MetadataStore(MemoryObjectStore()))
    await cluster.write_controller(ControllerLease(broker_id=3, incarnation=1, epoch=2, expiry_ms=wall_ms() + 1000),
                                   None)
    reads = 0
    read_controller = cluster.read_controller

    async def counting() -> tuple[ControllerLease | None, str | None]:
        nonlocal reads
        reads += 1
        return await read_controller()

    cluster.read_controller = counting  # type: ignore[method-assign]
    me = SimpleNamespace(incarnation=3, lease_valid=lambda: True)
    controller = Controller(SimpleNamespace(cluster=cluster, settings=Settings(broker_id=2), membership=me,
                                            leaving=False))  # type: ignore[arg-type]
    holder = registration(3, 1, wall_ms() + 1000)
    view = {3: holder, 2: registration(2, 3, wall_ms() + 1000)}
    for _round in range(3):
        assert await controller._take_lease(view, wall_ms()) is False
    assert reads == 1
    holder.leaving = True  # SIGTERM: it hands over, then gives the lease up
    await cluster.write_controller(ControllerLease(broker_id=3, incarnation=1, epoch=2, expiry_ms=0),
                                   (await read_controller())[1])
    assert await controller._take_lease(view, wall_ms()) is True
    assert reads == 2
    current, _etag = await read_controller()
    assert current is not None and (current.broker_id, current.epoch) == (2, 3)


async def test_the_audit_reads_each_manifest_about_once_a_second_and_publishes_the_manifests_leader() -> None:
    """Two controllers that overlapped can leave an assignment naming an older leader than the manifest
    does (seen in a chaos run).  The audit finds it within a cycle of ``AUDIT_CYCLE_ROUNDS`` rounds, and
    reads no more manifests than that needs: every round read every manifest of a small cluster before."""
    controller, _cluster, meta = await setup()
    topic = TopicRecord(name="audit", topic_id="ab" * 16, partitions=3)
    for partition in (1, 2):
        await meta.commit_manifest(Manifest(topic_id=topic.topic_id, partition=partition, leader_epoch=9,
                                            leader=3, leader_incarnation=5, leader_wal=OLD_WAL), None)
    key = f"{topic.topic_id}/{{}}"
    wanted = {key.format(p): (topic, p) for p in range(3)}
    assignments = Assignments(partitions={k: PartitionAssignment(3, 9, 5) for k in wanted})
    assignments.partitions[key.format(2)] = PartitionAssignment(1, 8, 2)  # behind the manifest
    reads = 0
    load_manifest = meta.load_manifest

    async def counting(topic_id: str, partition: int) -> tuple[Manifest, str | None]:
        nonlocal reads
        reads += 1
        return await load_manifest(topic_id, partition)

    meta.load_manifest = counting  # type: ignore[method-assign]
    changed = [await controller._audit(assignments, wanted) for _round in range(AUDIT_CYCLE_ROUNDS)]
    assert assignments.partitions[key.format(2)] == PartitionAssignment(3, 9, 5)
    assert changed.count(True) == 1
    assert reads == AUDIT_CYCLE_ROUNDS  # one a round: 3 partitions, each read three or four times
