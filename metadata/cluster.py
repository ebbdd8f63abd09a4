"""Cluster membership documents: broker registrations with leases, the controller lease, and the
partition assignment that the controller publishes.

    meta/brokers/<id>.json     one per broker: address, incarnation, lease expiry, where its WAL lives
    meta/controller.json       which broker is controller, until when, and the controller epoch
    meta/assignments.json      partition -> (leader, leader epoch): what every broker polls

Each broker writes only its own registration, so renewals never contend; only
the controller writes the assignment document.  Every write is conditional.
Lease expiries are wall-clock milliseconds; readers allow for clock skew
by the margin the settings give.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from metadata.store import MetadataStore
from objectstore.base import NotFound


@dataclass(slots=True)
class BrokerRegistration:
    broker_id: int
    host: str
    port: int
    incarnation: int
    lease_expiry_ms: int
    wal: dict[str, Any] = field(default_factory=dict)  # {"engine": "file", "path": ...} or {"engine": "object", "prefix": ...}
    rack: str | None = None
    leaving: bool = False  # graceful shutdown: hand my partitions over now

    def live(self, now_ms: int) -> bool:
        return not self.leaving and self.lease_expiry_ms > now_ms


@dataclass(slots=True)
class ControllerLease:
    broker_id: int
    incarnation: int
    epoch: int
    expiry_ms: int


@dataclass(slots=True)
class PartitionAssignment:
    leader: int
    epoch: int
    incarnation: int
    moving_to: int = -1  # a live handover in progress: the leader flushes, then hands over


@dataclass(slots=True)
class Assignments:
    version: int = 0
    controller_epoch: int = 0
    partitions: dict[str, PartitionAssignment] = field(default_factory=dict)  # "<topic-id>/<p>" -> assignment

    @staticmethod
    def key(topic_id: str, partition: int) -> str:
        return f"{topic_id}/{partition}"


class ClusterStore:
    def __init__(self, meta: MetadataStore) -> None:
        self.meta = meta
        self.store = meta.store

    def _broker_key(self, broker_id: int) -> str:
        return self.meta.key("meta", "brokers", f"{broker_id}.json")

    async def read_broker(self, broker_id: int) -> tuple[BrokerRegistration | None, str | None]:
        try:
            data, etag = await self.store.get_with_etag(self._broker_key(broker_id))
        except NotFound:  # never registered, or left
            return None, None
        return BrokerRegistration(**json.loads(data)), etag

    async def write_broker(self, registration: BrokerRegistration, etag: str | None) -> str:
        return await self.meta.conditional_put(self._broker_key(registration.broker_id),
                                               json.dumps(asdict(registration)).encode(), etag)

    async def list_brokers(self) -> list[int]:
        """The ids of every registered broker (one LIST; AWS prices it like a PUT, 12.5 times a GET)."""
        prefix = self.meta.key("meta", "brokers") + "/"
        names = [info.key[len(prefix):] for info in await self.store.list(prefix)]
        return sorted(int(name[:-5]) for name in names if name.endswith(".json") and name[:-5].isdigit())

    async def read_brokers(self, known: Iterable[int] | None = None) -> dict[int, BrokerRegistration]:
        """Every registration: one LIST, then a GET each.  With ``known``, only those brokers' registrations,
        without the LIST; a broker missing from the answer has left."""
        ids = await self.list_brokers() if known is None else known
        read = await asyncio.gather(*(self.read_broker(broker_id) for broker_id in ids))
        return {registration.broker_id: registration for registration, _etag in read if registration is not None}

    async def read_controller(self) -> tuple[ControllerLease | None, str | None]:
        try:
            data, etag = await self.store.get_with_etag(self.meta.key("meta", "controller.json"))
        except NotFound:
            return None, None
        return ControllerLease(**json.loads(data)), etag

    async def write_controller(self, lease: ControllerLease, etag: str | None) -> str:
        return await self.meta.conditional_put(self.meta.key("meta", "controller.json"),
                                               json.dumps(asdict(lease)).encode(), etag)

    async def read_assignments(self) -> tuple[Assignments, str | None]:
        try:
            data, etag = await self.store.get_with_etag(self.meta.key("meta", "assignments.json"))
        except NotFound:
            return Assignments(), None
        raw = json.loads(data)
        return Assignments(raw["version"], raw["controller_epoch"],
                           {k: PartitionAssignment(*v) for k, v in raw["partitions"].items()}), etag

    async def write_assignments(self, assignments: Assignments, etag: str | None) -> str:
        data = json.dumps({"version": assignments.version, "controller_epoch": assignments.controller_epoch,
                           "partitions": {k: [a.leader, a.epoch, a.incarnation, a.moving_to]
                                          for k, a in sorted(assignments.partitions.items())}},
                          separators=(",", ":")).encode()
        return await self.meta.conditional_put(self.meta.key("meta", "assignments.json"), data, etag)
