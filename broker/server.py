"""The network edge: accept connections, read size-prefixed frames, dispatch, answer in order.

Requests on one connection are handled concurrently (a produce may wait for
the WAL while the next one is sequenced) but answered strictly in arrival
order, as Kafka clients require.  At most ``MAX_IN_FLIGHT`` requests per
connection, and ``MAX_INFLIGHT_BYTES`` of request frames over all
connections, are in progress; beyond that sockets are not read, which pushes
back on clients and bounds memory.  Softer bounds keep the WAL queue short:
past ``request_queue_bytes`` in progress, a connection that already awaits an
answer has its next large request left unread, and its next small one once
it has ``CONNECTION_SMALL_BYTES`` in progress; one awaiting nothing is always
read.  The count is generous because a producer that sends every record as a
request of its own (librdkafka's defaults without idempotence) needs as many
in flight as it sends in one WAL write's time: 25 ms PUTs at 2,000 records/s
are 50.  A frame larger than ``max_request_bytes``, a
header or body that does not decode, or an unknown API key closes the
connection; nothing a client sends can take the broker down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Any

from broker.core import Broker
from broker.handlers import APIS
from broker.handlers.base import RequestContext
from protocol.framing import SIZE, finish_response, peek_api, read_request_header, start_response
from protocol.primitives import DecodeError
from protocol.schema import is_flexible, request_codec, response_codec

log = logging.getLogger("keel.server")
MAX_IN_FLIGHT = 256
MAX_INFLIGHT_BYTES = 256 * 1024 * 1024
SMALL_REQUEST_BYTES = 64 * 1024  # never held back by request_queue_bytes: metadata, fetches, heartbeats, single records
CONNECTION_SMALL_BYTES = 2 * 1024 * 1024  # small requests of one connection that awaits answers: as 32 of 64 KiB
READ_CHUNK = 1024 * 1024
CLOSE = object()  # a handler's verdict: close this connection
API_VERSIONS_KEY = 18
DRAIN_SECONDS = 5.0  # on shutdown, longest wait for the requests already read to be answered


class KafkaServer:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.settings = broker.settings
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        # Bytes of requests read but not yet answered, over all connections: bounds memory and the WAL queue.
        self._inflight_bytes = 0
        self._inflight_limit = max(self.settings.max_request_bytes, MAX_INFLIGHT_BYTES)
        self._inflight_freed = asyncio.Event()
        self._queue_limit = self.settings.request_queue_bytes

    async def _reserve(self, size: int) -> None:
        while self._inflight_bytes and self._inflight_bytes + size > self._inflight_limit:
            self._inflight_freed.clear()
            await self._inflight_freed.wait()
        self._inflight_bytes += size

    async def _admit(self, awaiting: _Awaiting, size: int) -> None:
        """Holds back a large request of a connection that already awaits answers while ``request_queue_bytes``
        are in progress, and a small one while that connection has ``CONNECTION_SMALL_BYTES`` in progress.
        The WAL acknowledges in the order it was given data, so everything read is queued ahead of the next
        client's write: this bounds that queue however many bulk producers pipeline."""
        while awaiting.bytes and (
                awaiting.bytes >= CONNECTION_SMALL_BYTES if size < SMALL_REQUEST_BYTES
                else self._inflight_bytes >= self._queue_limit):
            self._inflight_freed.clear()
            await self._inflight_freed.wait()

    async def _read_frame(self, reader: asyncio.StreamReader, size: int) -> bytes:
        """Reads a frame, reserving memory only for bytes that actually arrive: a client that declares
        a large frame and sends little holds little."""
        chunks = []
        reserved = 0
        try:
            while reserved < size:
                n = min(READ_CHUNK, size - reserved)
                await self._reserve(n)
                reserved += n
                chunks.append(await reader.readexactly(n))
        except BaseException:
            self._release(reserved)
            raise
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _release(self, size: int) -> None:
        self._inflight_bytes -= size
        self._inflight_freed.set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.settings.host, self.settings.port,
                                                  reuse_address=True, limit=1 << 16)
        for sock in self._server.sockets:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        log.info("listening on %s:%d", self.settings.host, self.settings.port)

    async def stop(self, drain_seconds: float = DRAIN_SECONDS) -> None:
        """Stops accepting, ends the long polls, answers the requests already read, and closes every
        connection.  A request still unanswered after ``drain_seconds`` (a produce stuck on an unreachable
        store) is cancelled and its connection closed unanswered: the client retries elsewhere."""
        if self._server is not None:
            self._server.close()
        self.broker.end_long_polls()
        connections = list(self._connections)
        for task in connections:
            task.cancel()  # each connection drains: its sender answers what was read, then it closes
        if not connections:
            return
        _done, stuck = await asyncio.wait(connections, timeout=drain_seconds)
        if stuck:
            log.warning("%d connection(s) still awaited answers %.1f s after shutdown began; closing them",
                        len(stuck), drain_seconds)
            for task in stuck:
                task.cancel()  # lands in the drain: cancels the sender and the handler it awaits
            await asyncio.gather(*stuck, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        host, port = (writer.get_extra_info("peername") or ("?", "?"))[:2]
        peer = f"{host}:{port}"
        try:
            await self._serve(reader, writer, peer)
        except asyncio.CancelledError:
            pass  # the server is stopping
        finally:
            self._connections.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        queue: asyncio.Queue[asyncio.Task[Any] | None] = asyncio.Queue(MAX_IN_FLIGHT)
        sender = asyncio.create_task(self._send_loop(queue, writer, peer))
        limit = self.settings.max_request_bytes
        awaiting = _Awaiting()
        try:
            while not sender.done():
                size_bytes = await reader.readexactly(4)
                (size,) = SIZE.unpack(size_bytes)
                if size < 8 or size > limit:
                    log.warning("closing %s: request frame of %d bytes (allowed 8..%d)", peer, size, limit)
                    break
                await self._admit(awaiting, size)
                frame = await self._read_frame(reader, size)
                task = asyncio.create_task(self._handle(memoryview(frame), peer))
                awaiting.bytes += size
                task.add_done_callback(lambda _t, n=size: (self._release(n), awaiting.release(n)))
                await queue.put(task)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            if not sender.done():
                try:
                    queue.put_nowait(None)
                except asyncio.QueueFull:
                    sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
            while not queue.empty():
                item = queue.get_nowait()
                if item is not None:
                    item.cancel()
            writer.close()

    async def _send_loop(self, queue: asyncio.Queue[asyncio.Task[Any] | None], writer: asyncio.StreamWriter,
                         peer: str) -> None:
        while True:
            task = await queue.get()
            if task is None:
                return
            try:
                response = await task
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("request from %s failed", peer)
                response = CLOSE
            if response is CLOSE:
                writer.close()
                return
            if response is not None:
                if writer.is_closing():
                    return  # the client went away while its request was handled
                try:
                    if isinstance(response, list):  # pieces, record data among them by reference
                        writer.writelines(response)
                    else:
                        writer.write(response)
                    await writer.drain()
                except (ConnectionError, RuntimeError):  # uvloop: RuntimeError on a transport closed meanwhile
                    return

    async def _handle(self, frame: memoryview, peer: str) -> Any:
        try:
            api_key, version, correlation_id = peek_api(frame)
        except DecodeError:
            log.warning("closing %s: frame too short for a request header", peer)
            return CLOSE
        api = APIS.get(api_key)
        if api is None:
            log.warning("closing %s: unknown API key %d (version %d, correlation %d)", peer, api_key, version,
                        correlation_id)
            return CLOSE
        if not api.min_version <= version <= api.max_version:
            advertised_low, _ = api.advertised_range
            if api.unsupported is not None and version >= 0 and (api_key == API_VERSIONS_KEY or advertised_low <= version):
                try:
                    return api.unsupported(version, frame)
                except DecodeError as exc:
                    log.warning("closing %s: malformed %s v%d request: %s", peer, api.name, version, exc)
                    return CLOSE
            log.warning("closing %s: %s v%d is not supported (%d-%d)", peer, api.name, version,
                        api.min_version, api.max_version)
            return CLOSE
        flexible = is_flexible(api_key, version)
        try:
            header, pos = read_request_header(frame, flexible)
            # Like Kafka, ignore bytes after the last field (librdkafka sends some with Metadata v12).
            request, _end = request_codec(api_key, version).read(frame, pos)
        except DecodeError as exc:
            log.warning("closing %s: malformed %s v%d request (correlation %d): %s", peer, api.name, version,
                        correlation_id, exc)
            return CLOSE
        response = await api.handle(RequestContext(self.broker, header, peer), request)
        if response is None:
            return None
        out = start_response(correlation_id, flexible and api_key != API_VERSIONS_KEY)
        response_codec(api_key, version).write(out, response)
        return finish_response(out)


class _Awaiting:
    """Bytes of one connection's requests that were read and are not answered yet."""

    __slots__ = ("bytes",)

    def __init__(self) -> None:
        self.bytes = 0

    def release(self, size: int) -> None:
        self.bytes -= size
