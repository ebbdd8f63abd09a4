"""Idempotent-producer state of one partition: what Kafka keeps to drop retried duplicates.

For each producer id: the current epoch and the last five batches
(first sequence, last sequence, base offset, last offset).  A retried batch
that matches one of them gets its original offsets back instead of being
written twice; a stale epoch is refused (INVALID_PRODUCER_EPOCH), a batch that
skips ahead is answered "retry" (see ``NOT_YET``), and an old sequence no longer
kept is OUT_OF_ORDER_SEQUENCE_NUMBER.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from protocol.errors import ErrorCode

KEPT_BATCHES = 5
MAX_SEQUENCE = 0x7FFFFFFF


@dataclass(slots=True)
class ProducerEntry:
    epoch: int
    batches: deque[tuple[int, int, int, int]] = field(default_factory=lambda: deque(maxlen=KEPT_BATCHES))

    @property
    def last_sequence(self) -> int:
        return self.batches[-1][1] if self.batches else -1


@dataclass(frozen=True, slots=True)
class SequenceCheck:
    error: ErrorCode = ErrorCode.NONE
    duplicate_of: tuple[int, int] | None = None  # (base offset, last offset) of the original batch


ACCEPT = SequenceCheck()
# A batch that skips sequence numbers is refused as "not written, retry": its predecessors are still on
# the way (pipelined requests that met a leadership change and were refused).  OUT_OF_ORDER_SEQUENCE_NUMBER
# here would make librdkafka bump the producer epoch and renumber every partition's pending retries from
# 0 -- duplicating any that were written but not acknowledged.  The client retries this batch after the
# earlier ones, with the same sequence numbers, and the broker deduplicates.
NOT_YET = SequenceCheck(ErrorCode.NOT_ENOUGH_REPLICAS)


class ProducerStateTable:
    def __init__(self) -> None:
        self.producers: dict[int, ProducerEntry] = {}

    def check(self, producer_id: int, epoch: int, first_seq: int, last_seq: int) -> SequenceCheck:
        if producer_id < 0:
            return ACCEPT
        entry = self.producers.get(producer_id)
        if entry is None:
            # As Kafka (KIP-360): a producer whose state is gone (e.g. removed with old segments)
            # may continue at any sequence.
            return ACCEPT
        if epoch < entry.epoch:
            return SequenceCheck(ErrorCode.INVALID_PRODUCER_EPOCH)
        if epoch > entry.epoch:
            return ACCEPT if first_seq == 0 else NOT_YET
        for b_first, b_last, b_base, b_end in entry.batches:
            if b_first == first_seq and b_last == last_seq:
                return SequenceCheck(duplicate_of=(b_base, b_end))
        expected = 0 if entry.last_sequence == MAX_SEQUENCE else entry.last_sequence + 1
        ahead = (first_seq - expected) % (MAX_SEQUENCE + 1)
        if ahead == 0:
            return ACCEPT
        if ahead <= MAX_SEQUENCE // 2:
            return NOT_YET
        return SequenceCheck(ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER)  # behind, and not a batch we still know

    def record(self, producer_id: int, epoch: int, first_seq: int, last_seq: int,
               base_offset: int, last_offset: int) -> None:
        if producer_id < 0:
            return
        entry = self.producers.get(producer_id)
        if entry is None or entry.epoch != epoch:
            entry = self.producers[producer_id] = ProducerEntry(epoch)
        entry.batches.append((first_seq, last_seq, base_offset, last_offset))

    def snapshot(self, upto_offset: int | None = None) -> dict[str, Any]:
        """The state as of ``upto_offset``: batches after it may not be durable yet (a new leader
        rebuilds them from the WAL), so a snapshot stored with a segment must not claim them."""
        out: dict[str, Any] = {}
        for pid, e in self.producers.items():
            batches = [list(b) for b in e.batches if upto_offset is None or b[3] <= upto_offset]
            if batches:
                out[str(pid)] = [e.epoch, batches]
        return out

    @classmethod
    def restore(cls, snapshot: dict[str, Any]) -> ProducerStateTable:
        table = cls()
        for pid, (epoch, batches) in snapshot.items():
            entry = table.producers[int(pid)] = ProducerEntry(epoch)
            for b in batches:
                entry.batches.append(tuple(b))  # type: ignore[arg-type]
        return table
