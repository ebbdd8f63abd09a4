"""Reads a broker must not answer: a leader epoch other than its own (KIP-320), or its lease run out.

A broker resumed from a freeze keeps its partitions until its next cluster round resigns them; a Fetch
beyond its copy of the log would get OFFSET_OUT_OF_RANGE, and the consumer would reset its position."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

from broker.config import Settings
from broker.core import Broker
from objectstore.memory import MemoryObjectStore
from protocol.errors import ErrorCode


async def test_a_broker_past_its_lease_or_behind_the_clients_epoch_serves_no_read(tmp_path: Path) -> None:
    broker = Broker(Settings(data_dir=str(tmp_path), broker_id=1), store=MemoryObjectStore())
    await broker.membership.register()
    plog = SimpleNamespace(manifest=SimpleNamespace(leader_epoch=3), resigned=False)
    serving = broker.serving_error
    assert [serving(plog, e) for e in (-1, 3, 2, 4)] == [  # type: ignore[arg-type]
        ErrorCode.NONE, ErrorCode.NONE, ErrorCode.FENCED_LEADER_EPOCH, ErrorCode.UNKNOWN_LEADER_EPOCH]

    plog.resigned = True
    assert serving(plog) == ErrorCode.NOT_LEADER_OR_FOLLOWER  # type: ignore[arg-type]
    plog.resigned = False
    broker.membership._valid_until = time.monotonic() - 0.001  # frozen past the lease
    assert serving(plog, -1) == ErrorCode.NOT_LEADER_OR_FOLLOWER  # type: ignore[arg-type]
    assert serving(plog, 3) == ErrorCode.NOT_LEADER_OR_FOLLOWER  # type: ignore[arg-type]
