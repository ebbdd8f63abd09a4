"""Large S3 GETs run in worker threads on kept-alive connections of their own
(objectstore/s3_threaded_get.py): a connection the server closed while it sat idle is
replaced at once, and a body cut short is an error the engine retries, never short data."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import mmap
import os
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest

from broker.config import Settings
from broker.storage import build_object_store
from objectstore.s3 import S3ObjectStore
from objectstore.s3_threaded_get import POOL_BYTES, ThreadedGets

Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _server(serve: Serve) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/bucket/"


@contextlib.asynccontextmanager
async def _gets(serve: Serve, workers: int = 1, pool_bytes: int = POOL_BYTES) -> AsyncIterator[ThreadedGets]:
    """ThreadedGets against a server on loopback that answers with ``serve``."""
    server, base = await _server(serve)
    gets = ThreadedGets(base, connect_timeout=2, read_timeout=2, workers=workers, pool_bytes=pool_bytes)
    try:
        yield gets
    finally:
        gets.close()
        server.close()
        await server.wait_closed()


def _answering(bodies: list[bytes]) -> Serve:
    """A server that answers its requests, kept alive, with ``bodies`` in turn."""
    answers = iter(bodies)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            body = next(answers)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()

    return serve


async def test_a_kept_alive_connection_the_server_closed_is_replaced_without_an_error() -> None:
    requests: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        await writer.drain()
        writer.close()  # without "Connection: close": the client still holds the connection as kept alive

    async with _gets(serve, workers=1) as gets:
        for _ in range(3):
            status, headers, body = await gets.get("/bucket/k", {"Range": "bytes=0-4"})
            assert (status, bytes(body), headers.get("content-length")) == (200, b"hello", "5")
        assert len(requests) == 3  # each on a new connection, none of them failed
        assert all(r.startswith(b"GET /bucket/k HTTP/1.1\r\n") and b"Range: bytes=0-4" in r for r in requests)


async def test_a_body_cut_short_raises_a_payload_error() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + bytes(1000))
        await writer.drain()
        writer.close()

    async with _gets(serve, workers=2) as gets:
        with pytest.raises(aiohttp.ClientPayloadError):
            await gets.get("/bucket/k", {})


async def test_an_error_answer_comes_back_with_its_status_and_document() -> None:
    document = b"<Error><Code>NoSuchKey</Code></Error>"

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: %d\r\n\r\n%s" % (len(document), document))
        await writer.drain()

    async with _gets(serve, workers=1) as gets:
        status, _headers, body = await gets.get("/bucket/k", {})
        assert (status, bytes(body)) == (404, document)


async def test_a_body_handed_back_is_filled_again_by_a_get_of_about_its_size() -> None:
    bodies = [os.urandom(1000), os.urandom(990), os.urandom(5000), os.urandom(9000)]
    async with _gets(_answering(bodies), workers=1) as gets:
        _status, _headers, first = await gets.get("/bucket/a", {})
        assert isinstance(first, mmap.mmap) and bytes(first) == bodies[0]
        address = ctypes.addressof(ctypes.c_char.from_buffer(first))
        gets.recycle(first)
        _status, _headers, second = await gets.get("/bucket/b", {})
        assert second is first and bytes(second) == bodies[1]  # shrunk to its length, every byte new
        assert ctypes.addressof(ctypes.c_char.from_buffer(second)) == address  # in place
        gets.recycle(second)
        _status, _headers, third = await gets.get("/bucket/c", {})  # over twice its size: a new buffer
        assert third is not second and bytes(third) == bodies[2]
        gets.recycle(third)
        _status, _headers, fourth = await gets.get("/bucket/d", {})  # under twice its size: grown
        assert fourth is third and bytes(fourth) == bodies[3]


async def test_a_body_handed_back_while_a_view_of_it_lives_is_not_filled_again() -> None:
    bodies = [os.urandom(1000), os.urandom(1000)]
    async with _gets(_answering(bodies), workers=1) as gets:
        _status, _headers, first = await gets.get("/bucket/a", {})
        view = memoryview(first)[10:20]  # a Fetch answer still being written
        gets.recycle(first)  # too early
        _status, _headers, second = await gets.get("/bucket/b", {})
        assert second is not first and bytes(second) == bodies[1]
        assert bytes(view) == bodies[0][10:20]


async def test_no_more_bodies_are_kept_than_the_pool_holds() -> None:
    bodies = [os.urandom(1000) for _ in range(4)]
    async with _gets(_answering(bodies), workers=1, pool_bytes=1500) as gets:
        _status, _headers, first = await gets.get("/bucket/a", {})
        _status, _headers, second = await gets.get("/bucket/b", {})
        gets.recycle(first)
        gets.recycle(second)  # 2,000 bytes would be over the bound: dropped
        _status, _headers, third = await gets.get("/bucket/c", {})
        _status, _headers, fourth = await gets.get("/bucket/d", {})
        assert third is first and fourth is not second
        assert (bytes(third), bytes(fourth)) == (bodies[2], bodies[3])


def test_a_broker_keeps_no_more_get_buffers_than_half_its_block_cache() -> None:
    def pool(**cache: int) -> int:
        store = build_object_store(Settings(s3_endpoint="http://127.0.0.1:9", bucket="b", **cache))
        assert isinstance(store, S3ObjectStore)
        return store.buffer_pool_bytes

    assert pool() == POOL_BYTES  # the default 64 MiB cache: 32 MiB of blocks, 32 MiB of buffers
    assert pool(block_cache_bytes=8 << 20) == 4 << 20
    assert pool(block_cache_bytes=4 << 20) == 0  # too small to spare any: all of it holds blocks


async def test_a_refused_connection_is_a_connection_error_the_engine_retries() -> None:
    server, base = await _server(lambda _r, _w: asyncio.sleep(0))
    server.close()
    await server.wait_closed()  # nothing listens on that port any more
    gets = ThreadedGets(base, connect_timeout=2, read_timeout=2, workers=1)
    try:
        with pytest.raises(ConnectionError):
            await gets.get("/bucket/k", {})
    finally:
        gets.close()
