"""Shutting the server down answers the requests already read, but does not wait forever for them.

A produce can wait on a store that stopped answering; the broker's shutdown must still go on to hand its
partitions over and release its lease, so a request unanswered after the drain time is cancelled and its
connection closed.  Long polls are ended at once rather than waited out."""

from __future__ import annotations

import asyncio
import struct
import time
from types import SimpleNamespace
from typing import Any

from broker.config import Settings
from broker.server import KafkaServer


async def _server(monkeypatch: Any, handle: Any) -> tuple[KafkaServer, int, list[str]]:
    events: list[str] = []
    broker = SimpleNamespace(settings=Settings(host="127.0.0.1", port=0),
                             end_long_polls=lambda: events.append("long polls ended"))
    server = KafkaServer(broker)  # type: ignore[arg-type]
    monkeypatch.setattr(server, "_handle", handle)
    await server.start()
    return server, server._server.sockets[0].getsockname()[1], events  # type: ignore[union-attr]


def _frame(tag: int) -> bytes:
    return struct.pack(">iq", 8, tag)


async def test_requests_read_before_shutdown_are_answered_then_the_connection_closes(monkeypatch: Any) -> None:
    async def handle(frame: memoryview, peer: str) -> bytes:
        await asyncio.sleep(0.2)  # a produce waiting for its WAL write
        return b"answer-%d;" % struct.unpack_from(">q", frame)[0]

    server, port, events = await _server(monkeypatch, handle)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_frame(1) + _frame(2))
    await writer.drain()
    await asyncio.sleep(0.05)  # both read, neither answered
    await server.stop(drain_seconds=5.0)
    assert await asyncio.wait_for(reader.read(), 2.0) == b"answer-1;answer-2;"  # then EOF
    assert events == ["long polls ended"]
    writer.close()


async def test_a_request_stuck_past_the_drain_time_is_cancelled_and_its_connection_closed(monkeypatch: Any) -> None:
    cancelled: list[int] = []
    answered = asyncio.Event()

    async def handle(frame: memoryview, peer: str) -> bytes:
        tag = struct.unpack_from(">q", frame)[0]
        if tag == 1:
            answered.set()
            return b"quick;"
        try:
            await asyncio.Event().wait()  # a store that never answers
        except asyncio.CancelledError:
            cancelled.append(tag)
            raise
        return b"never"

    server, port, _events = await _server(monkeypatch, handle)
    quick_reader, quick_writer = await asyncio.open_connection("127.0.0.1", port)
    stuck_reader, stuck_writer = await asyncio.open_connection("127.0.0.1", port)
    stuck_writer.write(_frame(2))
    quick_writer.write(_frame(1))
    await asyncio.wait_for(answered.wait(), 2.0)
    await asyncio.sleep(0.05)
    began = time.monotonic()
    await asyncio.wait_for(server.stop(drain_seconds=0.3), 5.0)
    assert 0.3 <= time.monotonic() - began < 3.0
    assert cancelled == [2]
    assert await asyncio.wait_for(quick_reader.read(), 2.0) == b"quick;"
    assert await asyncio.wait_for(stuck_reader.read(), 2.0) == b""  # closed unanswered
    quick_writer.close()
    stuck_writer.close()
