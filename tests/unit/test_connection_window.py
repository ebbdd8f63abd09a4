"""One connection may have only ``connection_inflight_bytes`` of requests read and not yet answered.

The WAL acknowledges in the order it was given data, so without this bound one pipelining bulk producer
queues everything it has in flight ahead of every other client's writes (docs/performance.md)."""

from __future__ import annotations

import asyncio
import struct
from types import SimpleNamespace
from typing import Any

from broker.config import Settings
from broker.server import KafkaServer

FRAME = 20_000
WINDOW = 64 * 1024


async def _server(monkeypatch: Any) -> tuple[KafkaServer, list[bytes], asyncio.Event]:
    settings = Settings(host="127.0.0.1", port=0, connection_inflight_bytes=WINDOW)
    server = KafkaServer(SimpleNamespace(settings=settings))  # type: ignore[arg-type]
    handled: list[bytes] = []
    answer = asyncio.Event()

    async def handle(frame: memoryview, peer: str) -> None:
        handled.append(bytes(frame[:8]))
        await answer.wait()
        return None  # no response, like a produce with acks=0

    monkeypatch.setattr(server, "_handle", handle)
    await server.start()
    return server, handled, answer


def _frame(tag: int) -> bytes:
    return struct.pack(">i", FRAME) + struct.pack(">q", tag) + bytes(FRAME - 8)


async def _until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_a_connection_past_its_window_is_not_read_until_answers_free_it(monkeypatch: Any) -> None:
    server, handled, answer = await _server(monkeypatch)
    port = server._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    bulk_reader, bulk = await asyncio.open_connection("127.0.0.1", port)
    other_reader, other = await asyncio.open_connection("127.0.0.1", port)
    try:
        bulk.write(b"".join(_frame(i) for i in range(10)))
        await bulk.drain()
        within = -(-WINDOW // FRAME)  # read until the window is reached: 4 frames of 20,000 bytes
        await _until(lambda: len(handled) == within)
        await asyncio.sleep(0.2)
        assert len(handled) == within  # the other 6 wait in the socket

        other.write(_frame(100))  # another client is read meanwhile
        await _until(lambda: struct.pack(">q", 100) in handled)

        answer.set()  # answers go out: the rest of the bulk connection is read
        await _until(lambda: len(handled) == 11)
        assert sorted(struct.unpack(">q", h)[0] for h in handled) == [*range(10), 100]
    finally:
        bulk.close()
        other.close()
        await server.stop()
