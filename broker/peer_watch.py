"""Notices at once when another broker's process is gone, so Metadata stops naming it as a leader.

A broker that dies (``kill -9``, a crash) keeps its lease until it expires, and
only then does the controller move its partitions (DESIGN.md, fencing).  Until
the new leader serves, clients wait, and *how* they wait matters: librdkafka
re-asks for metadata every 100 ms (backing off) while a partition has no
leader, but only once a second while Metadata still names the dead broker.

Each broker therefore holds one idle TCP connection to every other broker's
Kafka port.  When the peer's process ends, its kernel closes the connection at
once; from then until that incarnation is replaced, this broker's Metadata
answers LEADER_NOT_AVAILABLE for the partitions it led.  This is only a hint to
clients: leadership itself still moves only after the lease has expired (a
closed port proves nothing about a process that is merely frozen or cut off).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from metadata.cluster import BrokerRegistration

log = logging.getLogger("keel.peer_watch")
RECONNECT_SECONDS = 0.2


class PeerWatch:
    def __init__(self, my_id: int) -> None:
        self.my_id = my_id
        self.gone: dict[int, int] = {}  # broker id -> incarnation whose connection closed
        self._watches: dict[int, tuple[int, asyncio.Task[None]]] = {}

    def is_gone(self, broker_id: int, incarnation: int) -> bool:
        return self.gone.get(broker_id) == incarnation

    def update(self, registrations: dict[int, BrokerRegistration]) -> None:
        """Watches every other registered broker's current incarnation."""
        for broker_id, (incarnation, task) in list(self._watches.items()):
            current = registrations.get(broker_id)
            if current is None or current.incarnation != incarnation:
                task.cancel()
                del self._watches[broker_id]
        for broker_id, registration in registrations.items():
            if broker_id == self.my_id or broker_id in self._watches or registration.leaving:
                continue
            task = asyncio.create_task(self._watch(registration), name=f"keel-peer-watch-{broker_id}")
            self._watches[broker_id] = (registration.incarnation, task)
        for broker_id in [b for b, inc in self.gone.items()
                          if b not in registrations or registrations[b].incarnation != inc]:
            del self.gone[broker_id]

    async def _watch(self, registration: BrokerRegistration) -> None:
        broker_id, incarnation = registration.broker_id, registration.incarnation
        connected_once = False
        while True:
            try:
                reader, writer = await asyncio.open_connection(registration.host, registration.port)
            except OSError:
                if connected_once:
                    self._mark_gone(broker_id, incarnation)
                await asyncio.sleep(RECONNECT_SECONDS)
                continue
            connected_once = True
            if self.gone.get(broker_id) == incarnation:
                del self.gone[broker_id]
            try:
                await reader.read(1)  # nothing is ever sent: this returns when the peer closes
            except OSError:
                pass
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
            self._mark_gone(broker_id, incarnation)

    def _mark_gone(self, broker_id: int, incarnation: int) -> None:
        if self.gone.get(broker_id) != incarnation:
            log.info("broker %d incarnation %d closed its port; Metadata names no leader for its partitions",
                     broker_id, incarnation)
            self.gone[broker_id] = incarnation

    async def stop(self) -> None:
        tasks = [task for _inc, task in self._watches.values()]
        self._watches.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
