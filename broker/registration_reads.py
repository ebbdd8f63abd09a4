"""Which broker registrations a cluster round reads again, and when a broker counts as responsive.

Every broker used to read every other broker's registration every round (ten times a second), so the
reads grew with the square of the number of brokers: about 1,000 GETs a second for ten of them.  A
copy is now read again only when it would soon make this broker judge the other one unresponsive:
when the lease it shows ends within two rounds of the responsiveness cutoff.  A broker that renews on
time is read every two to four rounds; one that stopped renewing is read every round from then on, so
the copy it is judged on is at most a round old, as before.

The controller reads every registration every round: it elects leaders and hands partitions over, and
must see a broker start leaving at once.  A broker never reads its own registration; it wrote it.
"""

from __future__ import annotations

from collections.abc import Iterable

from broker.config import Settings
from metadata.cluster import BrokerRegistration

ROUNDS_OF_SLACK = 2


def responsive_cutoff_ms(settings: Settings, now_ms: int) -> int:
    """A broker whose lease ends after this renewed recently (``Broker.responsive_brokers``)."""
    return now_ms + settings.lease_ms - max(3 * settings.lease_renew_ms, settings.lease_ms // 2)


def due_for_reading(copies: dict[int, BrokerRegistration], settings: Settings, now_ms: int, *, me: int,
                    every: bool, listed: Iterable[int] | None = None) -> set[int]:
    """The brokers whose registrations this round reads: all but this one's with ``every``; otherwise
    those leaving, those whose copy nears the cutoff, and those newly ``listed``."""
    horizon = responsive_cutoff_ms(settings, now_ms) + ROUNDS_OF_SLACK * settings.controller_interval_ms
    due = {broker_id for broker_id, copy in copies.items()
           if every or copy.leaving or copy.lease_expiry_ms <= horizon}
    if listed is not None:
        due.update(broker_id for broker_id in listed if broker_id not in copies)
    due.discard(me)
    return due
