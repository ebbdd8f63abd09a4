"""What an idle cluster round reads (docs/performance.md, "What an idle cluster asks of the store").

It lists the registrations only every ``LIST_EVERY_ROUNDS`` rounds (AWS prices a LIST like a PUT), and
reads another broker's registration again only when its copy nears the responsiveness cutoff; every
broker used to read every registration every round, which grew with the square of the brokers."""

from __future__ import annotations

from pathlib import Path

from broker.config import Settings
from broker.core import LIST_EVERY_ROUNDS, Broker
from broker.membership import wall_ms
from broker.registration_reads import due_for_reading, responsive_cutoff_ms
from metadata.cluster import BrokerRegistration, ClusterStore, ControllerLease
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

    async def get_with_etag(self, key: str) -> tuple[bytes, str]:
        self.gets.append(key)
        return await super().get_with_etag(key)


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


async def test_the_cluster_round_lists_every_tenth_round_and_rereads_only_nearly_stale_copies(
        tmp_path: Path) -> None:
    store = CountingStore()
    settings = Settings(data_dir=str(tmp_path), controller_interval_ms=1, lease_ms=60_000, lease_renew_ms=1_000)
    broker = Broker(settings, store=store)
    await broker.cluster.write_broker(registration(7, expiry_ms=wall_ms() + settings.lease_ms), None)  # renewed
    await broker.cluster.write_broker(registration(8, expiry_ms=wall_ms() - 1), None)  # stopped renewing
    await broker.cluster.write_controller(ControllerLease(7, 1, 1, wall_ms() + settings.lease_ms), None)
    rounds = 2 * LIST_EVERY_ROUNDS + 1
    list_rounds: list[int] = []
    list_brokers, read_brokers = broker.cluster.list_brokers, broker.cluster.read_brokers

    async def listing() -> list[int]:
        list_rounds.append(broker.controller.stats["ticks"])
        return await list_brokers()

    async def reading(known: list[int] | None = None) -> dict[int, BrokerRegistration]:
        broker.stopping = broker.controller.stats["ticks"] >= rounds - 1
        return await read_brokers(known)

    broker.cluster.list_brokers = listing  # type: ignore[method-assign]
    broker.cluster.read_brokers = reading  # type: ignore[method-assign]
    await broker._cluster_loop()  # the broker never started: it registers in the first round
    assert broker.controller.stats["ticks"] == rounds
    assert list_rounds == [0, LIST_EVERY_ROUNDS, 2 * LIST_EVERY_ROUNDS]
    brokers_prefix = broker.meta.key("meta", "brokers") + "/"
    reads = [key.rsplit("/", 1)[1] for key in store.gets if key.startswith(brokers_prefix)]
    assert reads.count("7.json") == 1  # found by the first listing; its lease is far from the cutoff
    assert reads.count("8.json") == rounds  # near (past) the cutoff: read every round
    assert sorted(broker.cluster_brokers) == [0, 7, 8]
    assert not broker.controller.active
    # The controller lease, held by broker 7 for most of a minute, was read once, not every round.
    assert store.gets.count(broker.meta.key("meta", "controller.json")) == 1


def test_a_copy_is_due_two_rounds_before_it_would_look_unresponsive() -> None:
    settings = Settings(lease_ms=1000, lease_renew_ms=200, controller_interval_ms=100)
    now = 1_000_000
    cutoff = responsive_cutoff_ms(settings, now)
    assert cutoff == now + 400
    copies = {1: registration(1, expiry_ms=now + 900), 2: registration(2, expiry_ms=cutoff + 200),
              3: registration(3, expiry_ms=cutoff + 201), 4: registration(4, expiry_ms=now - 5),
              5: registration(5, expiry_ms=now + 900)}
    copies[5].leaving = True
    assert due_for_reading(copies, settings, now, me=1, every=False) == {2, 4, 5}
    assert due_for_reading(copies, settings, now, me=1, every=True) == {2, 3, 4, 5}  # the controller
    assert due_for_reading(copies, settings, now, me=1, every=False, listed=[1, 3, 6]) == {2, 4, 5, 6}
