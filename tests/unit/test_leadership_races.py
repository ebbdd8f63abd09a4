"""A leadership change that loses the manifest race is fenced, not failed: a warning, and the next round retries."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from broker.config import Settings
from broker.core import Broker
from metadata.store import ConflictError
from objectstore.memory import MemoryObjectStore


async def test_a_lost_manifest_race_is_logged_as_a_warning_and_frees_the_partition(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broker = Broker(Settings(data_dir=str(tmp_path)), store=MemoryObjectStore())

    async def take_over_fenced() -> None:
        raise ConflictError("meta/partitions/ab/3.json")

    with caplog.at_level(logging.INFO, logger="keel.leadership"):
        broker.leadership._spawn("ab/3", take_over_fenced())
        await broker.leadership.wait_idle()
    records = [r for r in caplog.records if r.name == "keel.leadership"]
    assert [r.levelno for r in records] == [logging.WARNING]
    assert "lost a race" in records[0].getMessage() and records[0].exc_info is None
    assert "ab/3" not in broker.leadership._busy  # the next reconcile may try again
