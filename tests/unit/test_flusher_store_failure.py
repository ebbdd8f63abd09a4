"""A flush round that the store refuses through every retry (TransientError, e.g. 503 SlowDown) is
expected under a slow store: one warning line, the round retried, the data still in the WAL. Anything
else stays an ERROR with its traceback."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from broker import flusher as flusher_module
from broker.flusher import Flusher
from objectstore.base import TransientError


async def _round_failing_with(exc: Exception, caplog: pytest.LogCaptureFixture,
                              monkeypatch: pytest.MonkeyPatch) -> Flusher:
    monkeypatch.setattr(flusher_module, "RETRY_SECONDS", 0)
    flusher = Flusher(SimpleNamespace())  # type: ignore[arg-type]

    async def refuse(force: bool = False) -> None:
        raise exc

    monkeypatch.setattr(flusher, "flush_due", refuse)
    with caplog.at_level(logging.WARNING, logger="keel.flusher"):
        await flusher._round(force=False)
    return flusher


async def test_a_store_that_stays_unavailable_is_a_one_line_warning(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    flusher = await _round_failing_with(TransientError("put data/x.seg: gave up after 6 attempts: SlowDown"),
                                        caplog, monkeypatch)
    assert flusher.stats["errors"] == 1
    [record] = caplog.records
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert "SlowDown" in record.getMessage() and "stays in the WAL" in record.getMessage()


async def test_any_other_failure_is_an_error_with_its_traceback(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    flusher = await _round_failing_with(ValueError("a bug"), caplog, monkeypatch)
    assert flusher.stats["errors"] == 1
    [record] = caplog.records
    assert record.levelno == logging.ERROR and record.exc_info is not None
