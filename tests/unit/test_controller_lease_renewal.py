"""The controller lease is renewed on its own schedule, not only between cluster rounds.

Renewed by the cluster round alone, it lapsed whenever a round (registrations, topics, elections)
took longer than the lease less its margin: on a store answering in 100-200 ms, 44-74 % of the time
there was no controller, and among three brokers the controller changed 4-8 times in 10 s
(docs/chaos.md).  Two brokers share one slow store here; the lease must hold and stay with one of them.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from broker.config import Settings
from broker.core import Broker
from objectstore.faults import FaultInjectingStore
from objectstore.memory import MemoryObjectStore

LATENCY_S = 0.15  # per store request; a cluster round then takes well over the 0.8 s a lease is trusted
WATCH_S = 3.0


async def test_the_controller_lease_holds_while_cluster_rounds_are_slow(tmp_path: Path) -> None:
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
