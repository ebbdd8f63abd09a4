"""The controller: one broker at a time (by lease) decides which broker leads which partition.

Every broker runs this loop; only the holder of ``meta/controller.json``
acts.  It reads the registrations, and

* gives every partition without a live leader a new one -- the least loaded
  live broker -- only after the old leader's lease has expired: the manifest
  is rewritten (conditional PUT) with the new leader, the epoch + 1, and the
  old leader's WAL added to ``replay_from``; that write also fences the old
  leader, whose own next manifest write now fails;
* moves partitions away from brokers that are leaving, and towards brokers
  that have fewer than their share, by asking the current leader to hand
  over (``moving_to``): the leader stops accepting writes for it, flushes it,
  and rewrites the manifest itself, so nothing acknowledged is left behind;
* publishes the result in ``meta/assignments.json``, which every broker polls.

No partition data is copied by any of this: a move rewrites one small
manifest, and a new leader reads only the unflushed tail of the old leader's
WAL.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import Counter
from typing import TYPE_CHECKING

from broker.membership import renew_every, wall_ms
from metadata.cluster import Assignments, BrokerRegistration, ControllerLease, PartitionAssignment
from metadata.store import ConflictError, TopicRecord
from objectstore.base import ObjectStoreError
from wal.reader import wal_location

if TYPE_CHECKING:
    from broker.core import Broker

log = logging.getLogger("keel.controller")
MAX_MOVES_PER_ROUND = 8
# Manifests compared with the published assignment per controller round, in turn over all partitions:
# a tenth of them, so that each is read about once a second, but at least one and at most AUDITS_PER_ROUND.
AUDITS_PER_ROUND = 4
AUDIT_CYCLE_ROUNDS = 10


class LeaderStillLive(Exception):
    """The partition's current leader was seen live by a fresh read; electing now could make two leaders."""

    def __init__(self, broker_id: int, incarnation: int, epoch: int) -> None:
        super().__init__(f"broker {broker_id} incarnation {incarnation} may still hold its lease")
        self.broker_id, self.incarnation, self.epoch = broker_id, incarnation, epoch


def _holds(registration: BrokerRegistration | None, lease: ControllerLease, now_ms: int) -> bool:
    """Whether the broker incarnation named by the controller lease is still alive."""
    return registration is not None and registration.incarnation == lease.incarnation and registration.live(now_ms)


def registration_wal(registration: BrokerRegistration) -> dict[str, object]:
    wal = registration.wal
    return wal_location(str(wal.get("engine")), str(wal.get("base")), registration.incarnation)


class Controller:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.cluster = broker.cluster
        self.lease: ControllerLease | None = None
        self._lease_etag: str | None = None
        self._lease_seen: tuple[ControllerLease, str | None] | None = None  # another broker's, as last read
        self._lease_valid_until = 0.0
        self._renewed_at = 0.0
        self._lease_lock = asyncio.Lock()
        self._renewer: asyncio.Task[None] | None = None
        self.assignments: Assignments | None = None
        self._assignments_etag: str | None = None
        self.wakeup = asyncio.Event()
        self._audit_cursor = 0
        self.stats = {"elections": 0, "handovers_requested": 0, "ticks": 0}

    @property
    def active(self) -> bool:
        return self.lease is not None and time.monotonic() < self._lease_valid_until

    def start(self) -> None:
        """Renews the controller lease on its own schedule, as the membership renews the broker's.

        Renewed only by the cluster round, the lease lapsed whenever a round took longer than the lease
        less its margin: with 100 ms per store request, about a third of the time."""
        self._renewer = asyncio.create_task(self._renew_loop(), name="keel-controller-lease")

    async def _renew_loop(self) -> None:
        await renew_every(self.broker.settings.lease_renew_ms / 1000, self._renew_if_held)

    async def _renew_if_held(self) -> None:
        if not self._may_renew():
            return  # none held, or it lapsed: the cluster round takes it (back) or lets it go
        async with self._lease_lock:
            if not self._may_renew():
                return
            try:
                await self._renew()
            except ObjectStoreError as exc:
                log.warning("controller lease renewal failed (%r); valid for %.2f s more", exc,
                            max(0.0, self._lease_valid_until - time.monotonic()))
            except Exception:  # noqa: BLE001 - a bug must not stop the renewals; the next one tries again
                log.exception("controller lease renewal failed")

    def _may_renew(self) -> bool:
        broker = self.broker
        return self.active and broker.membership.lease_valid() and not broker.leaving

    async def release(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None
        if self.lease is not None and self.active:
            self.lease.expiry_ms = 0
            with contextlib.suppress(ObjectStoreError, ConflictError):  # it expires by itself anyway
                await self.cluster.write_controller(self.lease, self._lease_etag)
        self.lease = None

    async def _hold_lease(self, brokers: dict[int, BrokerRegistration], now: int) -> bool:
        broker = self.broker
        if not broker.membership.lease_valid() or broker.leaving:
            self.lease = None
            return False
        renewing = self._renewer is not None and not self._renewer.done()
        if self.lease is not None and self.active and (
                renewing or time.monotonic() - self._renewed_at < broker.settings.lease_renew_ms / 1000):
            return True
        async with self._lease_lock:
            return await self._take_lease(brokers, now)

    async def _take_lease(self, brokers: dict[int, BrokerRegistration], now: int) -> bool:
        """Renews the lease (no renewer runs), or takes it: back, or over from a holder whose lease ran out."""
        broker = self.broker
        me = broker.settings.broker_id
        incarnation = broker.membership.incarnation
        if self.lease is not None and self.active:
            return await self._renew()
        current, etag = await self._read_lease(brokers, now)
        mine = current is not None and current.broker_id == me and current.incarnation == incarnation
        holder_live = False
        if current is not None and current.expiry_ms > now and not mine:
            holder_live = _holds(brokers.get(current.broker_id), current, now)
            if not holder_live:
                # The round's registrations may be seconds old (this broker was frozen, or the store slow):
                # taking a lease that has not run out on them deposed a live controller.  Read afresh.
                fresh, _etag = await self.cluster.read_broker(current.broker_id)
                holder_live = _holds(fresh, current, wall_ms())
        if holder_live and not mine:
            self.lease = None
            return False
        epoch = (current.epoch if current else 0) + (0 if mine else 1)
        lease = ControllerLease(me, incarnation, epoch, wall_ms() + broker.settings.lease_ms)  # as it is sent
        sent = time.monotonic()
        try:
            self._lease_etag = await self.cluster.write_controller(lease, etag)
        except ConflictError:
            self.lease = None
            return False
        self._lease_valid_until = sent + (broker.settings.lease_ms - broker.settings.lease_margin_ms) / 1000
        self._renewed_at = sent
        if not mine or self.lease is None:
            log.info("broker %d is controller (epoch %d)", me, epoch)
            self.assignments, self._assignments_etag = await self.cluster.read_assignments()
        self.lease = lease
        return True

    async def _read_lease(self, brokers: dict[int, BrokerRegistration],
                          now: int) -> tuple[ControllerLease | None, str | None]:
        """The controller lease as last read, while that copy still has more than half of the lease to
        run and its holder's registration shows it alive; otherwise read afresh.  The copy only ever
        leads to "the holder is alive, leave it", which that registration says anyway; a broker that
        is not the controller thus reads the lease about twice a second instead of every round."""
        seen = self._lease_seen
        if seen is not None:
            lease = seen[0]
            fresh_enough = lease.expiry_ms - now > self.broker.settings.lease_ms // 2
            if fresh_enough and lease.broker_id != self.broker.settings.broker_id \
                    and _holds(brokers.get(lease.broker_id), lease, now):
                return seen
        current, etag = await self.cluster.read_controller()
        self._lease_seen = (current, etag) if current is not None else None
        return current, etag

    async def _renew(self) -> bool:
        """Extends the lease this broker holds, without reading it first (the ETag chains the writes)."""
        held = self.lease
        assert held is not None
        settings = self.broker.settings
        lease = dataclasses.replace(held, expiry_ms=wall_ms() + settings.lease_ms)
        sent = time.monotonic()
        try:
            self._lease_etag = await self.cluster.write_controller(lease, self._lease_etag)
        except ConflictError:
            log.warning("controller lease lost")
            self.lease = None
            return False
        if self.lease is not held:
            return False  # given up while the write was on its way (the broker rejoined as a new incarnation)
        self.lease = lease
        self._renewed_at = sent
        self._lease_valid_until = sent + (settings.lease_ms - settings.lease_margin_ms) / 1000
        return True

    async def tick(self) -> None:
        broker = self.broker
        self.stats["ticks"] += 1
        now = wall_ms()
        brokers = broker.cluster_brokers
        if not await self._hold_lease(brokers, now):
            return
        assert self.assignments is not None
        assignments = self.assignments
        live = {b.broker_id: b for b in brokers.values() if b.live(now)}
        # A broker that is leaving but still holds its lease hands its partitions over itself.
        draining = {b.broker_id: b for b in brokers.values() if b.leaving and b.lease_expiry_ms > now}
        topics = {t.topic_id: t for t in broker.topics.values()}
        wanted = {Assignments.key(t.topic_id, p): (t, p) for t in topics.values() for p in range(t.partitions)}
        changed = False
        for key in [k for k in assignments.partitions if k not in wanted]:
            del assignments.partitions[key]
            changed = True

        def holder_ok(a: PartitionAssignment, pool: dict[int, BrokerRegistration]) -> bool:
            reg = pool.get(a.leader)
            return reg is not None and reg.incarnation == a.incarnation

        load: Counter[int] = Counter({b: 0 for b in live})
        for a in assignments.partitions.values():
            if holder_ok(a, live):
                load[a.leader] += 1

        changed |= await self._audit(assignments, wanted)
        elections = []
        for key, (topic, p) in wanted.items():
            a = assignments.partitions.get(key)
            if a is not None and (holder_ok(a, live) or holder_ok(a, draining)):
                continue
            if not live:
                break
            target = min(live, key=lambda b: (load[b], b))
            load[target] += 1
            elections.append((key, topic, p, live[target]))
        if elections:
            lease_checks: dict[tuple[int, int], asyncio.Future[bool]] = {}
            results = await asyncio.gather(*(self._elect(t, p, reg, lease_checks) for _, t, p, reg in elections),
                                           return_exceptions=True)
            for (key, _t, _p, reg), result in zip(elections, results, strict=True):
                if isinstance(result, LeaderStillLive):
                    # The manifest names a leader that is alive, which the assignment does not name (an
                    # earlier controller elected it and lost its lease before publishing): publish it, so
                    # that it serves, instead of waiting for a lease that is being renewed.
                    adopted = PartitionAssignment(result.broker_id, result.epoch, result.incarnation)
                    if assignments.partitions.get(key) != adopted:
                        log.info("%s: the manifest's leader, %s, is alive; publishing it", key, result)
                        assignments.partitions[key] = adopted
                        changed = True
                    continue
                if isinstance(result, BaseException):
                    log.warning("electing a leader for %s failed: %s", key, result)
                    continue
                assignments.partitions[key] = PartitionAssignment(reg.broker_id, result, reg.incarnation)
                changed = True

        changed |= await self._progress_moves(assignments, live, wanted)
        changed |= self._plan_moves(assignments, live, draining, load)
        if changed:
            assignments.version += 1
            assignments.controller_epoch = self.lease.epoch if self.lease else 0
            try:
                self._assignments_etag = await self.cluster.write_assignments(assignments, self._assignments_etag)
            except ConflictError:
                log.warning("assignments changed under the controller; re-reading")
                self.assignments, self._assignments_etag = await self.cluster.read_assignments()
                return
            broker.on_assignments(assignments)

    async def _audit(self, assignments: Assignments, wanted: dict[str, tuple[TopicRecord, int]]) -> bool:
        """Publishes the manifest's leader where the assignment names another.

        The manifest is the truth; the assignment only tells brokers what to serve.  They disagree when
        two controllers overlapped (seen in a chaos run: one published "broker 14 at epoch 99" while
        the other had already written epoch 100 into the manifest, and nobody served the partition).
        A partition that is being handed over is left to the hand-over."""
        keys = sorted(wanted)
        if not keys:
            return False
        changed = False
        audits = min(AUDITS_PER_ROUND, -(-len(keys) // AUDIT_CYCLE_ROUNDS))
        for i in range(audits):
            key = keys[(self._audit_cursor + i) % len(keys)]
            a = assignments.partitions.get(key)
            if a is None or a.moving_to >= 0:
                continue
            topic, p = wanted[key]
            manifest, _etag = await self.broker.meta.load_manifest(topic.topic_id, p)
            stored = PartitionAssignment(manifest.leader, manifest.leader_epoch, manifest.leader_incarnation)
            if manifest.leader >= 0 and manifest.leader_epoch > a.epoch and stored != a:
                log.info("%s: the assignment names broker %d at epoch %d, the manifest broker %d at epoch %d; "
                         "publishing the manifest's", key, a.leader, a.epoch, manifest.leader, manifest.leader_epoch)
                assignments.partitions[key] = stored
                changed = True
        self._audit_cursor = (self._audit_cursor + audits) % len(keys)
        return changed

    async def _lease_over(self, broker_id: int, incarnation: int) -> bool:
        """Whether incarnation ``incarnation`` of ``broker_id`` can no longer acknowledge anything.

        Decided on a registration read *now*: the one the round started with may be older than a
        renewal that landed since (under a slow store, by hundreds of ms), and electing on it would
        give the partition a second leader while the first still, rightly, believes its lease holds.
        A renewal that lands after the expiry read here does not revive the incarnation: the broker
        extends its lease only by renewals that landed before its lease ran out."""
        asked_at = wall_ms()
        registration, _etag = await self.cluster.read_broker(broker_id)
        return (registration is None or registration.incarnation != incarnation
                or registration.lease_expiry_ms <= asked_at)

    async def _elect(self, topic: TopicRecord, partition: int, target: BrokerRegistration,
                     lease_checks: dict[tuple[int, int], asyncio.Future[bool]]) -> int:
        """Makes ``target`` the leader in the manifest (fencing the old one); returns the new epoch.

        Raises LeaderStillLive when the manifest's leader may still hold its lease."""
        meta = self.broker.meta

        def change(manifest: object) -> object:
            replay = list(manifest.replay_from)  # type: ignore[attr-defined]
            if manifest.leader >= 0 and manifest.leader_wal:  # type: ignore[attr-defined]
                replay.append([manifest.leader_wal, manifest.leader_epoch])  # type: ignore[attr-defined]
            return dataclasses.replace(
                manifest, leader=target.broker_id, leader_incarnation=target.incarnation,  # type: ignore[type-var]
                leader_epoch=manifest.leader_epoch + 1, leader_wal=registration_wal(target),  # type: ignore[attr-defined]
                replay_from=replay)

        while True:
            manifest, etag = await meta.load_manifest(topic.topic_id, partition)
            holder = (manifest.leader, manifest.leader_incarnation)
            if manifest.leader >= 0 and holder != (target.broker_id, target.incarnation):
                check = lease_checks.get(holder)
                if check is None:
                    check = lease_checks[holder] = asyncio.ensure_future(self._lease_over(*holder))
                if not await asyncio.shield(check):
                    raise LeaderStillLive(holder[0], holder[1], manifest.leader_epoch)
            updated = change(manifest)
            try:
                await meta.commit_manifest(updated, etag)  # type: ignore[arg-type]
            except ConflictError:
                continue
            self.stats["elections"] += 1
            log.info("%s-%d: leader %d (incarnation %d), epoch %d", topic.name, partition, target.broker_id,
                     target.incarnation, updated.leader_epoch)  # type: ignore[attr-defined]
            return int(updated.leader_epoch)  # type: ignore[attr-defined]

    async def _progress_moves(self, assignments: Assignments, live: dict[int, BrokerRegistration],
                              wanted: dict[str, tuple[TopicRecord, int]]) -> bool:
        changed = False
        for key, a in list(assignments.partitions.items()):
            if a.moving_to < 0:
                continue
            target = live.get(a.moving_to)
            if target is None:
                a.moving_to = -1
                changed = True
                continue
            topic, p = wanted[key]
            manifest, _etag = await self.broker.meta.load_manifest(topic.topic_id, p)
            if manifest.leader == target.broker_id and manifest.leader_incarnation == target.incarnation:
                assignments.partitions[key] = PartitionAssignment(target.broker_id, manifest.leader_epoch,
                                                                  target.incarnation)
                changed = True
        return changed

    def _plan_moves(self, assignments: Assignments, live: dict[int, BrokerRegistration],
                    draining: dict[int, BrokerRegistration], load: Counter[int]) -> bool:
        if not live:
            return False
        changed = False
        moving = sum(1 for a in assignments.partitions.values() if a.moving_to >= 0)
        for a in assignments.partitions.values():  # leaving brokers first
            if moving >= MAX_MOVES_PER_ROUND:
                return changed
            if a.moving_to < 0 and a.leader in draining and a.leader not in live:
                target = min(live, key=lambda b: (load[b], b))
                load[target] += 1
                a.moving_to = target
                moving += 1
                changed = True
                self.stats["handovers_requested"] += 1
        if moving:
            return changed
        counts = Counter({b: 0 for b in live})
        for a in assignments.partitions.values():
            if a.leader in live and live[a.leader].incarnation == a.incarnation:
                counts[a.leader] += 1
        busiest = max(counts, key=lambda b: (counts[b], -b))
        idlest = min(counts, key=lambda b: (counts[b], b))
        if counts[busiest] - counts[idlest] > 1:
            for a in sorted(assignments.partitions.values(), key=lambda a: -a.epoch):
                if a.leader == busiest and a.moving_to < 0:
                    a.moving_to = idlest
                    self.stats["handovers_requested"] += 1
                    return True
        return changed
