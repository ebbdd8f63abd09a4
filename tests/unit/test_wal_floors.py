"""A resigned partition pins the WAL until its new leader has replayed and committed it."""

from __future__ import annotations

import dataclasses

from broker.wal_floors import WalFloors
from metadata.store import Manifest, MetadataStore
from objectstore.memory import MemoryObjectStore

MY_WAL = {"engine": "object", "prefix": "wal/1/3"}
OTHER_WAL = {"engine": "object", "prefix": "wal/2/1"}


def led_by_me(partition: int, epoch: int = 4) -> Manifest:
    return Manifest(topic_id="t1", partition=partition, leader_epoch=epoch, leader=1, leader_incarnation=3,
                    leader_wal=MY_WAL)


def elected_elsewhere(mine: Manifest) -> Manifest:
    """What the controller writes: the next leader, and my WAL to replay."""
    return dataclasses.replace(mine, leader=2, leader_incarnation=1, leader_epoch=mine.leader_epoch + 1,
                               leader_wal=OTHER_WAL, replay_from=[[MY_WAL, mine.leader_epoch]])


async def commit(meta: MetadataStore, manifest: Manifest) -> None:
    _old, etag = await meta.load_manifest(manifest.topic_id, manifest.partition)
    await meta.commit_manifest(manifest, etag)


async def test_pin_is_held_until_the_takeover_clears_replay_from() -> None:
    meta = MetadataStore(MemoryObjectStore())
    mine = led_by_me(0)
    await commit(meta, mine)
    floors = WalFloors()
    floors.pin(mine, 120)
    floors.pin(mine, 150)  # a later resignation of the same epoch keeps the lower position
    assert floors.floor() == 120

    assert await floors.release_done(meta, force=True) == 0  # not re-elected yet
    elected = elected_elsewhere(mine)
    await commit(meta, elected)
    assert await floors.release_done(meta, force=True) == 0  # elected, not replayed yet
    assert floors.floor() == 120

    await commit(meta, dataclasses.replace(elected, replay_from=[]))  # the new leader committed the replay
    assert await floors.release_done(meta, force=True) == 1
    assert floors.floor() is None


async def test_a_second_election_before_the_replay_keeps_the_pin() -> None:
    meta = MetadataStore(MemoryObjectStore())
    mine = led_by_me(1)
    floors = WalFloors()
    floors.pin(mine, 7)
    first = elected_elsewhere(mine)
    # The next leader died before replaying: the controller appends its WAL; mine is still listed.
    second = dataclasses.replace(first, leader=3, leader_epoch=first.leader_epoch + 1,
                                 replay_from=[*first.replay_from, [OTHER_WAL, first.leader_epoch]])
    await commit(meta, second)
    assert await floors.release_done(meta, force=True) == 0
    await commit(meta, dataclasses.replace(second, replay_from=[]))
    assert await floors.release_done(meta, force=True) == 1


async def test_pins_of_other_partitions_and_deleted_topics_are_independent() -> None:
    meta = MetadataStore(MemoryObjectStore())
    kept, deleted = led_by_me(2), led_by_me(3)
    await commit(meta, elected_elsewhere(kept))
    floors = WalFloors()
    floors.pin(kept, 50)
    floors.pin(deleted, 10)  # its manifest no longer exists: nothing to replay it into
    assert floors.floor() == 10
    assert await floors.release_done(meta, force=True) == 1
    assert floors.floor() == 50
    floors.clear()
    assert floors.floor() is None and len(floors) == 0
