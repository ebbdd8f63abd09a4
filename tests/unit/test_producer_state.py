"""Idempotent-producer bookkeeping: duplicates, gaps, epochs, and the snapshot kept in manifests."""

from hypothesis import given
from hypothesis import strategies as st

from broker.producer_state import KEPT_BATCHES, MAX_SEQUENCE, ProducerStateTable
from protocol.errors import ErrorCode


def test_unknown_producer_is_accepted_at_any_sequence_then_checked() -> None:
    table = ProducerStateTable()
    assert table.check(7, 0, 5, 9).error == ErrorCode.NONE
    table.record(7, 0, 5, 9, 0, 4)
    assert table.check(7, 0, 11, 12).error == ErrorCode.NOT_ENOUGH_REPLICAS  # 10 first: retry later


def test_retry_of_any_of_the_last_five_batches_returns_its_offsets() -> None:
    table = ProducerStateTable()
    for n in range(KEPT_BATCHES + 2):
        first = n * 10
        assert table.check(1, 0, first, first + 9).error == ErrorCode.NONE
        table.record(1, 0, first, first + 9, 100 + first, 109 + first)
    for n in range(2, KEPT_BATCHES + 2):
        check = table.check(1, 0, n * 10, n * 10 + 9)
        assert check.duplicate_of == (100 + n * 10, 109 + n * 10)
    # Older than the five kept batches: no longer recognised, and out of sequence.
    assert table.check(1, 0, 0, 9).error == ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER


def test_gap_is_retried_stale_epoch_refused_and_new_epoch_restarts_at_zero() -> None:
    table = ProducerStateTable()
    table.record(3, 2, 0, 4, 0, 4)
    # Skipping ahead: the batch before it is still on the way, so "not written, retry" (never OUT_OF_ORDER,
    # on which librdkafka renumbers all pending retries under a new epoch and duplicates written ones).
    assert table.check(3, 2, 6, 8).error == ErrorCode.NOT_ENOUGH_REPLICAS
    assert table.check(3, 1, 5, 8).error == ErrorCode.INVALID_PRODUCER_EPOCH
    assert table.check(3, 3, 5, 8).error == ErrorCode.NOT_ENOUGH_REPLICAS
    assert table.check(3, 3, 0, 3).error == ErrorCode.NONE
    assert table.check(3, 2, 5, 8).error == ErrorCode.NONE


def test_sequence_wraps_after_int32_max() -> None:
    table = ProducerStateTable()
    table.record(9, 0, MAX_SEQUENCE - 4, MAX_SEQUENCE, 0, 4)
    assert table.check(9, 0, 0, 3).error == ErrorCode.NONE
    assert table.check(9, 0, 1, 3).error == ErrorCode.NOT_ENOUGH_REPLICAS  # ahead across the wrap
    assert table.check(9, 0, MAX_SEQUENCE - 9, MAX_SEQUENCE - 5).error == ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER


def test_non_idempotent_batches_are_not_tracked() -> None:
    table = ProducerStateTable()
    assert table.check(-1, -1, -1, -1).error == ErrorCode.NONE
    table.record(-1, -1, -1, -1, 0, 0)
    assert table.producers == {}


@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 3), st.integers(1, 20)), max_size=30))
def test_snapshot_restores_identical_decisions(ops: list[tuple[int, int, int]]) -> None:
    table = ProducerStateTable()
    next_seq: dict[int, int] = {}
    offset = 0
    for pid, epoch, count in ops:
        first = next_seq.get(pid, 0)
        if table.check(pid, epoch, first, first + count - 1).error == ErrorCode.NONE:
            table.record(pid, epoch, first, first + count - 1, offset, offset + count - 1)
            next_seq[pid] = first + count
            offset += count
    restored = ProducerStateTable.restore(table.snapshot())
    for pid, epoch, count in ops:
        for first in (0, next_seq.get(pid, 0)):
            assert restored.check(pid, epoch, first, first + count - 1) == table.check(pid, epoch, first,
                                                                                       first + count - 1)


def test_snapshot_for_a_segment_leaves_out_batches_after_it() -> None:
    """Batches after the flushed segment may never become durable: a new leader must not believe in them."""
    table = ProducerStateTable()
    table.record(5, 0, 0, 4, 0, 4)  # flushed
    table.record(5, 0, 5, 9, 5, 9)  # accepted, maybe not durable
    restored = ProducerStateTable.restore(table.snapshot(upto_offset=4))
    assert restored.check(5, 0, 5, 9).duplicate_of is None  # a retry is written, not answered from thin air
    assert restored.check(5, 0, 5, 9).error == ErrorCode.NONE
    assert restored.check(5, 0, 0, 4).duplicate_of == (0, 4)
