"""This broker's registration and lease: the basis of fencing.

On start the broker waits until any previous incarnation's lease has expired
(that process might only be frozen), then registers a new incarnation.  It
renews the lease every ``lease_renew_ms``.  ``lease_valid()`` answers whether
the broker may still acknowledge writes: only while the lease it last renewed
is certain not to have expired, measured on the local monotonic clock from
the moment the renewal was *sent*, minus a margin for clock-rate drift.  The
controller reassigns a broker's partitions only after that lease expired, so
a broker never acknowledges anything a new leader cannot see.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from broker.config import Settings
from metadata.cluster import BrokerRegistration, ClusterStore
from metadata.store import ConflictError
from objectstore.base import ObjectStoreError

log = logging.getLogger("keel.membership")


def wall_ms() -> int:
    return int(time.time() * 1000)


async def renew_every(interval: float, renew: Callable[[], Awaitable[None]],
                      go_on: Callable[[], bool] = lambda: True) -> None:
    """Calls ``renew`` every ``interval`` seconds while ``go_on()``, counted from the last start, not the last
    finish: a slow renewal is followed at once by the next one instead of costing the lease a further interval."""
    next_start = time.monotonic() + interval
    while go_on():
        await asyncio.sleep(max(0.0, next_start - time.monotonic()))
        next_start = time.monotonic() + interval
        await renew()


class Membership:
    def __init__(self, cluster: ClusterStore, settings: Settings, wal_base: dict[str, Any]) -> None:
        self.cluster = cluster
        self.settings = settings
        self.wal_base = wal_base  # {"engine": ..., "base": ...}
        self.incarnation = 0
        self.registration: BrokerRegistration | None = None
        self._etag: str | None = None
        self._valid_until = 0.0
        self.fenced = False
        self._lapsed = False
        self._task: asyncio.Task[None] | None = None
        self._write_lock = asyncio.Lock()  # one registration write at a time: they chain on the ETag

    @property
    def lease_seconds(self) -> float:
        return self.settings.lease_ms / 1000

    @property
    def margin_seconds(self) -> float:
        return self.settings.lease_margin_ms / 1000

    def lease_valid(self) -> bool:
        """True while this incarnation may act.  A lapse is final: the controller may already have
        moved the partitions, so a later renewal must not bring this incarnation back."""
        if self.fenced or self._lapsed:
            return False
        if time.monotonic() >= self._valid_until:
            self._lapsed = True
            return False
        return True

    async def register(self) -> int:
        """Waits out an earlier incarnation's lease, then registers a new one; returns its number."""
        async with self._write_lock:
            return await self._register()

    async def _register(self) -> int:
        settings = self.settings
        while True:
            current, etag = await self.cluster.read_broker(settings.broker_id)
            now = wall_ms()
            if current is not None and not current.leaving and current.lease_expiry_ms + settings.lease_margin_ms > now:
                wait = (current.lease_expiry_ms + settings.lease_margin_ms - now) / 1000
                log.info("broker %d: incarnation %d's lease runs %.1f s more; waiting", settings.broker_id,
                         current.incarnation, wait)
                await asyncio.sleep(min(wait, 1.0) + 0.01)
                continue
            incarnation = (current.incarnation if current else 0) + 1
            registration = BrokerRegistration(
                broker_id=settings.broker_id, host=settings.client_host, port=settings.port,
                incarnation=incarnation, lease_expiry_ms=0, wal=self.wal_base)
            sent = time.monotonic()
            registration.lease_expiry_ms = wall_ms() + settings.lease_ms
            try:
                self._etag = await self.cluster.write_broker(registration, etag)
            except ConflictError:
                continue
            self._valid_until = sent + self.lease_seconds - self.margin_seconds
            self._lapsed = False
            self.registration = registration
            self.incarnation = incarnation
            log.info("broker %d registered as incarnation %d at %s:%d", settings.broker_id, incarnation,
                     registration.host, registration.port)
            return incarnation

    def start(self) -> None:
        self._task = asyncio.create_task(self._renew_loop(), name="keel-lease")

    async def _renew_loop(self) -> None:
        await renew_every(self.settings.lease_renew_ms / 1000, self.renew, lambda: not self.fenced)

    async def renew(self, leaving: bool | None = None) -> None:
        async with self._write_lock:
            await self._renew(leaving)

    async def _renew(self, leaving: bool | None) -> None:
        registration = self.registration
        if registration is None or self.fenced:
            return
        sent = time.monotonic()
        if leaving is not None:
            registration.leaving = leaving
        if not self.lease_valid():
            return  # lapsed: this incarnation is over; the broker rejoins as a new one
        registration.lease_expiry_ms = wall_ms() + self.settings.lease_ms
        try:
            # Useless once the lease has run out (the broker then rejoins as a new incarnation, which
            # reads the registration afresh), so a renewal never waits on the store longer than that.
            self._etag = await asyncio.wait_for(self._write(registration),
                                                max(0.05, self._valid_until - time.monotonic()))
            # Extend only if the renewal landed while the previous lease was still good: otherwise the
            # stored lease may have looked expired to the controller for a while, and it may have acted.
            if self.lease_valid():
                self._valid_until = sent + self.lease_seconds - self.margin_seconds
        except ConflictError:
            log.critical("broker %d incarnation %d: registration replaced by another process; fenced",
                         registration.broker_id, registration.incarnation)
            self.fenced = True
        except (ObjectStoreError, TimeoutError) as exc:
            log.warning("lease renewal failed (%r); valid for %.2f s more", exc,
                        max(0.0, self._valid_until - time.monotonic()))

    async def _write(self, registration: BrokerRegistration) -> str:
        """Writes the renewal; returns the new ETag.

        A renewal given up on above (its timeout) may still land later, leaving the stored ETag one
        this process never saw; the next renewal then loses its condition against its own write.
        A registration of this incarnation can only have been written by this process (another
        one registers a higher incarnation), so its ETag is taken and the renewal written again."""
        try:
            return await self.cluster.write_broker(registration, self._etag)
        except ConflictError:
            stored, etag = await self.cluster.read_broker(registration.broker_id)
            if stored is None or etag is None or stored.incarnation != registration.incarnation:
                raise
            log.info("broker %d incarnation %d: an earlier renewal landed late; renewing on its ETag",
                     registration.broker_id, registration.incarnation)
            self._etag = etag
            return await self.cluster.write_broker(registration, etag)

    async def leave(self) -> None:
        """Graceful shutdown: tell the controller to hand this broker's partitions over now."""
        await self.renew(leaving=True)

    async def stop(self, expire: bool = True) -> None:
        if self._task is not None:
            self._task.cancel()
        registration = self.registration
        if expire and registration is not None and not self.fenced:
            async with self._write_lock:
                registration.leaving = True
                registration.lease_expiry_ms = 0
                try:
                    await self.cluster.write_broker(registration, self._etag)
                except (ConflictError, ObjectStoreError) as exc:
                    log.warning("could not release the lease: %s", exc)
                self._valid_until = 0.0
