"""A lease renewal that lands after the broker gave up on it does not fence the broker.

Found by the chaos suite (2026-12-02 13:07, "landed" 503s and slow PUTs): a renewal timed out locally but
landed later, so the stored registration's ETag was one this process never saw.  The next renewal lost its
condition against the broker's own write, and the broker fenced itself for good ("registration replaced by
another process").  A registration of the same incarnation is this process's own: renew on its ETag.  A
higher incarnation is another process, and still fences.
"""

from __future__ import annotations

import dataclasses

from broker.config import Settings
from broker.membership import Membership
from metadata.cluster import ClusterStore
from metadata.store import MetadataStore
from objectstore.memory import MemoryObjectStore


async def registered() -> tuple[Membership, ClusterStore]:
    cluster = ClusterStore(MetadataStore(MemoryObjectStore()))
    membership = Membership(cluster, Settings(broker_id=3, lease_ms=5000), {"engine": "object", "prefix": "wal/3"})
    await membership.register()
    return membership, cluster


async def land_late(cluster: ClusterStore, **changes: object) -> None:
    """Writes the stored registration again, as a renewal that landed after its sender stopped waiting."""
    stored, etag = await cluster.read_broker(3)
    assert stored is not None
    await cluster.write_broker(dataclasses.replace(stored, lease_expiry_ms=stored.lease_expiry_ms + 1, **changes),
                               etag)


async def test_a_late_landing_renewal_of_this_incarnation_is_not_another_process() -> None:
    membership, cluster = await registered()
    await land_late(cluster)
    await membership.renew()
    assert not membership.fenced and membership.lease_valid()
    await membership.renew()  # and the renewals chain on from there
    assert not membership.fenced
    stored, _ = await cluster.read_broker(3)
    assert stored is not None and stored.incarnation == membership.incarnation


async def test_a_registration_of_a_newer_incarnation_fences() -> None:
    membership, cluster = await registered()
    await land_late(cluster, incarnation=membership.incarnation + 1)
    await membership.renew()
    assert membership.fenced and not membership.lease_valid()
