"""Past ``request_queue_bytes`` of requests read and not yet answered, over all connections, a connection
that already awaits an answer has its next large request left unread; one that awaits nothing is always read.

The WAL acknowledges in the order it was given data, so without this bound pipelining bulk producers
queue everything they have in flight ahead of every other client's writes (docs/performance.md)."""

from __future__ import annotations

import asyncio
import struct
from types import SimpleNamespace
from typing import Any

from broker.config import Settings
from broker.server import CONNECTION_SMALL_BYTES, SMALL_REQUEST_BYTES, KafkaServer

FRAME = 100_000
SMALL_FRAME = 20_000
QUEUE = 256 * 1024
assert SMALL_FRAME < SMALL_REQUEST_BYTES <= FRAME


async def _server(monkeypatch: Any) -> tuple[KafkaServer, list[int], asyncio.Event, int]:
    settings = Settings(host="127.0.0.1", port=0, request_queue_bytes=QUEUE)
    server = KafkaServer(SimpleNamespace(settings=settings, end_long_polls=lambda: None))  # type: ignore[arg-type]
    handled: list[int] = []
    answer = asyncio.Event()

    async def handle(frame: memoryview, peer: str) -> None:
        handled.append(struct.unpack_from(">q", frame)[0])
        await answer.wait()
        return None  # no response, like a produce with acks=0

    monkeypatch.setattr(server, "_handle", handle)
    await server.start()
    port = server._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return server, handled, answer, port


def _frame(tag: int, size: int = FRAME) -> bytes:
    return struct.pack(">i", size) + struct.pack(">q", tag) + bytes(size - 8)


async def _until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def _connect(port: int) -> asyncio.StreamWriter:
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    return writer


async def test_a_connection_past_the_queue_bound_is_not_read_until_answers_free_it(monkeypatch: Any) -> None:
    server, handled, answer, port = await _server(monkeypatch)
    bulk, other = await _connect(port), await _connect(port)
    try:
        bulk.write(b"".join(_frame(i) for i in range(10)))
        within = -(-QUEUE // FRAME)  # read until the bound is reached: 3 frames of 100,000 bytes
        await _until(lambda: len(handled) == within)
        await asyncio.sleep(0.2)
        assert len(handled) == within  # the other 7 wait in the socket

        other.write(_frame(100))  # a client awaiting nothing is read meanwhile, large request or not
        await _until(lambda: 100 in handled)

        answer.set()  # answers go out: the rest of the bulk connection is read
        await _until(lambda: len(handled) == 11)
        assert sorted(handled) == [*range(10), 100]
    finally:
        answer.set()
        bulk.close()
        other.close()
        await server.stop()


async def test_bulk_connections_share_one_bound_and_small_requests_pass(monkeypatch: Any) -> None:
    server, handled, answer, port = await _server(monkeypatch)
    first, second, paced = await _connect(port), await _connect(port), await _connect(port)
    try:
        first.write(b"".join(_frame(i) for i in range(10)))
        await _until(lambda: len(handled) == 3)
        second.write(b"".join(_frame(10 + i) for i in range(10)))
        await _until(lambda: 10 in handled)  # awaiting nothing: its first request is read
        await asyncio.sleep(0.2)
        # One bound for all: a per-connection window would have let the second read 3 frames too.
        assert sorted(handled) == [0, 1, 2, 10]

        paced.write(_frame(20, SMALL_FRAME))
        await _until(lambda: 20 in handled)
        paced.write(_frame(21, SMALL_FRAME))  # awaits an answer, but a small request is never held back
        await _until(lambda: 21 in handled)
        paced.write(_frame(22))  # a large one is, while the bound is exceeded
        await asyncio.sleep(0.2)
        assert 22 not in handled

        answer.set()
        await _until(lambda: len(handled) == 23)
        assert sorted(handled) == [*range(23)]
    finally:
        answer.set()
        for writer in (first, second, paced):
            writer.close()
        await server.stop()


async def test_one_record_a_request_is_read_far_past_32_requests_in_flight(monkeypatch: Any) -> None:
    # librdkafka without idempotence sends every record as a request of its own; against a WAL write of
    # 25 ms, 2,000 records/s need 50 in flight on one connection. With 32, its acks fell seconds behind.
    server, handled, answer, port = await _server(monkeypatch)
    producer = await _connect(port)
    try:
        producer.write(b"".join(_frame(i, 1_100) for i in range(200)))
        await _until(lambda: len(handled) == 200)
        answer.set()
    finally:
        answer.set()
        producer.close()
        await server.stop()


async def test_small_requests_of_one_connection_stop_at_its_byte_window(monkeypatch: Any) -> None:
    server, handled, answer, port = await _server(monkeypatch)
    producer, other = await _connect(port), await _connect(port)
    try:
        producer.write(b"".join(_frame(i, SMALL_FRAME) for i in range(150)))
        within = -(-CONNECTION_SMALL_BYTES // SMALL_FRAME)  # read until the window is full: 105 of 20,000 bytes
        await _until(lambda: len(handled) == within)
        await asyncio.sleep(0.2)
        assert len(handled) == within

        other.write(_frame(1000, SMALL_FRAME))  # the window is per connection: another one is read
        await _until(lambda: 1000 in handled)

        answer.set()
        await _until(lambda: len(handled) == 151)
        assert sorted(handled) == [*range(150), 1000]
    finally:
        answer.set()
        producer.close()
        other.close()
        await server.stop()
