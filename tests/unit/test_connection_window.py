"""Past ``request_queue_bytes`` of requests read and not yet answered, over all connections, a connection
that already awaits an answer has its next large request left unread; one that awaits nothing is always read.

The WAL acknowledges in the order it was given data, so without this bound pipelining bulk producers
queue everything they have in flight ahead of every other client's writes (docs/performance.md)."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from broker.config import Settings
from broker.server import CONNECTION_SMALL_BYTES, SMALL_REQUEST_BYTES, KafkaServer

FRAME = 100_000
SMALL_FRAME = 20_000
QUEUE = 256 * 1024
assert SMALL_FRAME < SMALL_REQUEST_BYTES <= FRAME


@dataclass
class _Serving:
    """A server whose handler records each request's tag and answers once ``answer`` is set."""

    port: int = 0
    handled: list[int] = field(default_factory=list)
    answer: asyncio.Event = field(default_factory=asyncio.Event)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def connect(self) -> asyncio.StreamWriter:
        _reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writers.append(writer)
        return writer


@contextlib.asynccontextmanager
async def _serving(monkeypatch: Any) -> AsyncIterator[_Serving]:
    settings = Settings(host="127.0.0.1", port=0, request_queue_bytes=QUEUE)
    server = KafkaServer(SimpleNamespace(settings=settings, end_long_polls=lambda: None))  # type: ignore[arg-type]
    serving = _Serving()

    async def handle(frame: memoryview, peer: str) -> None:
        serving.handled.append(struct.unpack_from(">q", frame)[0])
        await serving.answer.wait()
        return None  # no response, like a produce with acks=0

    monkeypatch.setattr(server, "_handle", handle)
    await server.start()
    serving.port = server._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield serving
    finally:
        serving.answer.set()
        for writer in serving.writers:
            writer.close()
        await server.stop()


def _frame(tag: int, size: int = FRAME) -> bytes:
    return struct.pack(">i", size) + struct.pack(">q", tag) + bytes(size - 8)


async def _until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_a_connection_past_the_queue_bound_is_not_read_until_answers_free_it(monkeypatch: Any) -> None:
    async with _serving(monkeypatch) as s:
        bulk, other = await s.connect(), await s.connect()
        bulk.write(b"".join(_frame(i) for i in range(10)))
        within = -(-QUEUE // FRAME)  # read until the bound is reached: 3 frames of 100,000 bytes
        await _until(lambda: len(s.handled) == within)
        await asyncio.sleep(0.2)
        assert len(s.handled) == within  # the other 7 wait in the socket

        other.write(_frame(100))  # a client awaiting nothing is read meanwhile, large request or not
        await _until(lambda: 100 in s.handled)

        s.answer.set()  # answers go out: the rest of the bulk connection is read
        await _until(lambda: len(s.handled) == 11)
        assert sorted(s.handled) == [*range(10), 100]


async def test_bulk_connections_share_one_bound_and_small_requests_pass(monkeypatch: Any) -> None:
    async with _serving(monkeypatch) as s:
        first, second, paced = await s.connect(), await s.connect(), await s.connect()
        first.write(b"".join(_frame(i) for i in range(10)))
        await _until(lambda: len(s.handled) == 3)
        second.write(b"".join(_frame(10 + i) for i in range(10)))
        await _until(lambda: 10 in s.handled)  # awaiting nothing: its first request is read
        await asyncio.sleep(0.2)
        # One bound for all: a per-connection window would have let the second read 3 frames too.
        assert sorted(s.handled) == [0, 1, 2, 10]

        paced.write(_frame(20, SMALL_FRAME))
        await _until(lambda: 20 in s.handled)
        paced.write(_frame(21, SMALL_FRAME))  # awaits an answer, but a small request is never held back
        await _until(lambda: 21 in s.handled)
        paced.write(_frame(22))  # a large one is, while the bound is exceeded
        await asyncio.sleep(0.2)
        assert 22 not in s.handled

        s.answer.set()
        await _until(lambda: len(s.handled) == 23)
        assert sorted(s.handled) == [*range(23)]


async def test_one_record_a_request_is_read_far_past_32_requests_in_flight(monkeypatch: Any) -> None:
    # librdkafka without idempotence sends every record as a request of its own; against a WAL write of
    # 25 ms, 2,000 records/s need 50 in flight on one connection. With 32, its acks fell seconds behind.
    async with _serving(monkeypatch) as s:
        producer = await s.connect()
        producer.write(b"".join(_frame(i, 1_100) for i in range(200)))
        await _until(lambda: len(s.handled) == 200)


async def test_small_requests_of_one_connection_stop_at_its_byte_window(monkeypatch: Any) -> None:
    async with _serving(monkeypatch) as s:
        producer, other = await s.connect(), await s.connect()
        producer.write(b"".join(_frame(i, SMALL_FRAME) for i in range(150)))
        within = -(-CONNECTION_SMALL_BYTES // SMALL_FRAME)  # read until the window is full: 105 of 20,000 bytes
        await _until(lambda: len(s.handled) == within)
        await asyncio.sleep(0.2)
        assert len(s.handled) == within

        other.write(_frame(1000, SMALL_FRAME))  # the window is per connection: another one is read
        await _until(lambda: 1000 in s.handled)

        s.answer.set()
        await _until(lambda: len(s.handled) == 151)
        assert sorted(s.handled) == [*range(150), 1000]
