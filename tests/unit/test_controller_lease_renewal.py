"""The controller lease: renewed on its own schedule, and never brought back after it was given up.

Renewed by the cluster round alone, it lapsed whenever a round (registrations, topics, elections)
took longer than the lease less its margin: on a store answering in 100-200 ms, 44-74 % of the time
there was no controller, and among three brokers the controller changed 4-8 times in 10 s
(docs/chaos.md).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace

from broker.config import Settings
from broker.controller import Controller
from broker.core import Broker
from broker.membership import wall_ms
from metadata.cluster import ClusterStore, ControllerLease
from metadata.store import MetadataStore
from objectstore.faults import FaultInjectingStore
from objectstore.memory import MemoryObjectStore

LATENCY_S = 0.15  # per store request; a cluster round then takes well over the 0.8 s a lease is trusted
WATCH_S = 3.0


async def test_the_controller_lease_holds_while_cluster_rounds_are_slow(tmp_path: Path) -> None:
    """Two brokers share one slow store; the lease must hold and stay with one of them."""
    shared = MemoryObjectStore()
    stores = [FaultInjectingStore(shared, seed=i) for i in range(2)]
    brokers = [Broker(Settings(data_dir=str(tmp_path / str(i)), wal="object", broker_id=i, port=0), store=store)
               for i, store in enumerate(stores)]
    for broker in brokers:
        await broker.start()
    try:
        await brokers[0].create_topic("audit", 4, {})
        before, _etag = await brokers[0].cluster.read_controller()
        for store in stores:
            store.set_latency(LATENCY_S, LATENCY_S / 3)
        lapses, samples, without = 0, 0, 0
        was_active = [b.controller.active for b in brokers]
        deadline = time.monotonic() + WATCH_S
        while time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            active = [b.controller.active for b in brokers]
            lapses += sum(1 for was, now in zip(was_active, active, strict=True) if was and not now)
            samples += 1
            without += not any(active)
            was_active = active
        after, _etag = await brokers[0].cluster.read_controller()
        for store in stores:
            store.clear()
    finally:
        for broker in brokers:
            await broker.stop()
    assert before is not None and after is not None
    assert lapses == 0, f"the controller lease lapsed {lapses} times in {WATCH_S:g} s"
    assert without / samples < 0.05
    assert (after.broker_id, after.epoch) == (before.broker_id, before.epoch)


async def test_a_renewal_that_lands_after_the_lease_was_given_up_does_not_bring_it_back() -> None:
    """The broker's own lease lapsed while a controller renewal was on its way: the broker rejoins as a
    new incarnation and drops the controller lease.  The renewal landing afterwards must not restore a
    lease naming the old incarnation."""
    cluster = ClusterStore(MetadataStore(MemoryObjectStore()))
    controller = Controller(SimpleNamespace(cluster=cluster, settings=Settings()))  # type: ignore[arg-type]
    lease = ControllerLease(broker_id=1, incarnation=4, epoch=7, expiry_ms=wall_ms() + 1000)
    controller._lease_etag = await cluster.write_controller(lease, None)
    controller.lease, controller._lease_valid_until = lease, time.monotonic() + 0.8
    landed = asyncio.Event()
    write = cluster.write_controller

    async def slow_write(new: ControllerLease, etag: str | None) -> str:
        await landed.wait()
        return await write(new, etag)

    cluster.write_controller = slow_write  # type: ignore[method-assign]
    renewal = asyncio.create_task(controller._renew())
    await asyncio.sleep(0)
    controller.lease = None  # what Broker._reincarnate does
    landed.set()
    assert await renewal is False
    assert controller.lease is None and not controller.active
