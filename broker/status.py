"""``keel cluster``: what the stored cluster state says, for operators.

Reads the registrations, the controller lease, the published assignment and
the topics straight from the object store -- no broker needs to be up.
"""

from __future__ import annotations

from broker.config import Settings
from broker.membership import wall_ms
from broker.storage import build_object_store
from metadata.cluster import Assignments, ClusterStore
from metadata.store import MetadataStore


async def print_cluster(settings: Settings) -> int:
    store = build_object_store(settings)
    try:
        meta = MetadataStore(store)
        cluster = ClusterStore(meta)
        now = wall_ms()
        brokers = await cluster.read_brokers()
        controller, _ = await cluster.read_controller()
        assignments, _ = await cluster.read_assignments()
        topics = await meta.load_topics()
        print(f"{'broker':>6}  {'address':<22} {'incarnation':>11}  state")
        for b in sorted(brokers.values(), key=lambda b: b.broker_id):
            state = ("live, lease %.1f s" % ((b.lease_expiry_ms - now) / 1000) if b.live(now)
                     else "leaving" if b.leaving and b.lease_expiry_ms > now else "dead")
            print(f"{b.broker_id:>6}  {b.host + ':' + str(b.port):<22} {b.incarnation:>11}  {state}")
        if controller is not None and controller.expiry_ms > now:
            print(f"controller: broker {controller.broker_id} (epoch {controller.epoch})")
        else:
            print("controller: none")
        print(f"\n{'topic':<30} {'partition':>9} {'leader':>6} {'epoch':>6}  moving to")
        for name in sorted(topics):
            record = topics[name]
            for p in range(record.partitions):
                a = assignments.partitions.get(Assignments.key(record.topic_id, p))
                leader = str(a.leader) if a else "-"
                epoch = str(a.epoch) if a else "-"
                moving = str(a.moving_to) if a and a.moving_to >= 0 else ""
                print(f"{name:<30} {p:>9} {leader:>6} {epoch:>6}  {moving}")
        return 0
    finally:
        await store.close()
