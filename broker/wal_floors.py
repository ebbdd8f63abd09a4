"""Which WAL entries a broker must keep because another broker may still have to replay them.

A broker that resigns a partition with unflushed batches (its lease moved
on, or the controller gave the partition to another broker) leaves those
batches in its WAL: the new leader reads them from there.  Each such
resignation pins the WAL at the position of the oldest unflushed batch.  A
pin is released once the partition's manifest shows the new leader is done
with this WAL: it no longer names this broker as leader at that epoch, and
its ``replay_from`` no longer lists this WAL at that epoch (a takeover clears
``replay_from`` only after committing the replayed batches to a segment).

Releasing pins is what lets the WAL be trimmed again after a resignation;
without it the WAL grows for the rest of the incarnation and every takeover
of this broker's partitions reads all of it.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from metadata.store import Manifest, MetadataStore

log = logging.getLogger("keel.wal_floors")
CHECK_INTERVAL_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class _Pin:
    topic_id: str
    partition: int
    epoch: int
    leader: int
    incarnation: int
    wal: str  # the WAL location as canonical JSON (hashable)


class WalFloors:
    def __init__(self) -> None:
        self._pins: dict[_Pin, int] = {}
        self._next_check = 0.0

    def __len__(self) -> int:
        return len(self._pins)

    def pin(self, manifest: Manifest, position: int) -> None:
        """Keeps WAL entries from ``position`` on until ``manifest``'s partition no longer needs them."""
        key = _Pin(manifest.topic_id, manifest.partition, manifest.leader_epoch, manifest.leader,
                   manifest.leader_incarnation, _canonical(manifest.leader_wal))
        self._pins[key] = min(position, self._pins.get(key, position))

    def clear(self) -> None:
        self._pins.clear()

    def floor(self) -> int | None:
        return min(self._pins.values(), default=None)

    async def release_done(self, meta: MetadataStore, force: bool = False) -> int:
        """Drops the pins whose partitions were taken over and committed; returns how many."""
        now = time.monotonic()
        if not self._pins or (not force and now < self._next_check):
            return 0
        self._next_check = now + CHECK_INTERVAL_SECONDS
        released = 0
        for pin in list(self._pins):
            manifest, _etag = await meta.load_manifest(pin.topic_id, pin.partition)
            if not still_needed(pin, manifest) and self._pins.pop(pin, None) is not None:
                released += 1  # (clear() may have run while the manifest was loading)
        if released:
            log.debug("released %d WAL pin(s); %d left", released, len(self._pins))
        return released


def still_needed(pin: _Pin, manifest: Manifest) -> bool:
    if (manifest.leader, manifest.leader_incarnation, manifest.leader_epoch) == (
            pin.leader, pin.incarnation, pin.epoch):
        return True  # not re-elected yet: the next election will list this WAL in replay_from
    return any(epoch == pin.epoch and _canonical(location) == pin.wal for location, epoch in manifest.replay_from)


def _canonical(location: dict[str, Any] | None) -> str:
    return json.dumps(location, sort_keys=True)
