"""An OffsetCommit whose write the store refuses through every retry: a retriable error for the client
and a one-line warning, not an ERROR with a traceback (chaos 2026-12-03 23:20, injected 503s)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from broker.config import Settings
from broker.core import Broker
from broker.handlers import offsets
from broker.handlers.base import RequestContext
from objectstore.base import TransientError
from objectstore.memory import MemoryObjectStore
from protocol.errors import ErrorCode
from protocol.framing import RequestHeader


async def test_a_commit_the_store_keeps_refusing_answers_coordinator_not_available(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = Broker(Settings(data_dir=str(tmp_path)), store=MemoryObjectStore())

    async def coordinated_here(_ctx: RequestContext, _group: str) -> None:
        return None

    async def commit_refused(_group: str, _offsets: Any) -> None:
        raise TransientError("put meta/groups/g.json: gave up after 5 attempts: SlowDown")

    monkeypatch.setattr(offsets, "coordinated", coordinated_here)
    monkeypatch.setattr(broker.groups, "validate_commit", lambda *_args: ErrorCode.NONE)
    monkeypatch.setattr(broker.groups, "commit", commit_refused)
    monkeypatch.setattr(broker, "partition_exists", lambda _name, _index: True)
    request = {"group_id": "g", "generation_id_or_member_epoch": -1, "member_id": "", "topics": [
        {"name": "audit", "partitions": [{"partition_index": 0, "committed_offset": 42}]}]}
    ctx = RequestContext(broker, RequestHeader(8, 8, 1, "test"), "127.0.0.1:1")
    with caplog.at_level(logging.INFO, logger="keel.offsets"):
        response = await offsets.offset_commit(ctx, request)
    assert response["topics"][0]["partitions"] == [
        {"partition_index": 0, "error_code": ErrorCode.COORDINATOR_NOT_AVAILABLE}]
    records = [r for r in caplog.records if r.name == "keel.offsets"]
    assert [r.levelno for r in records] == [logging.WARNING]
    assert "SlowDown" in records[0].getMessage() and records[0].exc_info is None
