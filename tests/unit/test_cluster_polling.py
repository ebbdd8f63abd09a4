"""The cluster round reads the known brokers' registrations every round, but lists them only every
``LIST_EVERY_ROUNDS`` rounds: AWS prices a LIST like a PUT, and an idle broker used to list ten times a
second (docs/performance.md, "What an idle broker asks of the store")."""

from __future__ import annotations

from pathlib import Path

from broker.config import Settings
from broker.core import LIST_EVERY_ROUNDS, Broker
from metadata.cluster import BrokerRegistration, ClusterStore
from metadata.store import MetadataStore
from objectstore.base import ObjectInfo
from objectstore.memory import MemoryObjectStore


class CountingStore(MemoryObjectStore):
    def __init__(self) -> None:
        super().__init__()
        self.lists: list[str] = []
        self.gets: list[str] = []

    async def list(self, prefix: str) -> list[ObjectInfo]:
        self.lists.append(prefix)
        return await super().list(prefix)

    async def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        self.gets.append(key)
        return await super().get(key, start, end)


def registration(broker_id: int, expiry_ms: int = 10**13) -> BrokerRegistration:
    return BrokerRegistration(broker_id=broker_id, host="127.0.0.1", port=9092 + broker_id, incarnation=1,
                              lease_expiry_ms=expiry_ms)


async def test_known_registrations_are_read_without_a_list() -> None:
    store = CountingStore()
    cluster = ClusterStore(MetadataStore(store))
    for broker_id in (1, 2, 3):
        await cluster.write_broker(registration(broker_id), None)

    assert sorted(await cluster.read_brokers()) == [1, 2, 3]
    assert len(store.lists) == 1

    await cluster.write_broker(registration(4), None)  # a newcomer: seen by the next listing only
    _old, etag = await cluster.read_broker(2)
    await cluster.write_broker(registration(2, expiry_ms=5), etag)  # a known broker's lease changes
    await store.delete(cluster._broker_key(3))  # a known broker leaves
    known = await cluster.read_brokers([1, 2, 3])
    assert len(store.lists) == 1
    assert sorted(known) == [1, 2]
    assert known[2].lease_expiry_ms == 5

    assert sorted(await cluster.read_brokers()) == [1, 2, 4]
    assert len(store.lists) == 2


async def test_the_cluster_round_lists_registrations_every_tenth_round(tmp_path: Path) -> None:
    broker = Broker(Settings(data_dir=str(tmp_path), controller_interval_ms=1), store=MemoryObjectStore())
    await broker.cluster.write_broker(registration(7), None)
    calls: list[list[int] | None] = []
    read_brokers = broker.cluster.read_brokers
    rounds = 2 * LIST_EVERY_ROUNDS + 1

    async def counting(known: list[int] | None = None) -> dict[int, BrokerRegistration]:
        calls.append(None if known is None else sorted(known))
        broker.stopping = len(calls) >= rounds
        return await read_brokers(known)

    broker.cluster.read_brokers = counting  # type: ignore[method-assign]
    await broker._cluster_loop()  # the broker never started: it registers in the first round
    assert len(calls) == rounds
    listed = [i for i, known in enumerate(calls) if known is None]
    assert listed == [0, LIST_EVERY_ROUNDS, 2 * LIST_EVERY_ROUNDS]
    assert all(known is not None and 7 in known for i, known in enumerate(calls) if i not in listed)
