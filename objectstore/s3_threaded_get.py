"""Large GET bodies read in worker threads, straight from the socket into their buffer.

A cold catch-up reads segment blocks in GETs of 1-8 MiB.  Through aiohttp every
body is received on the event loop: uvloop allocates a bytes object for each
read, the HTTP parser passes it on, and it is copied into the block's buffer.
That cost the broker about 0.9 ms of CPU per MB, on the same thread that
answers the consumer's fetches, which then waited (docs/performance.md).  Here a
worker thread sends the signed request with ``http.client`` on a kept-alive
connection of its own and receives the body with ``recv_into`` into one
buffer of the announced length: one copy, made by the kernel while the GIL is
released.  Everything else (signing, retries, error mapping) stays with the
caller, which gets the same :class:`Reply` as from an aiohttp request.

The buffers are anonymous memory maps, not bytearrays.  A new bytearray is
zero-filled while the GIL is held, and each of its 4 KiB pages then faults on
first touch: 4-5 ms for 8 MiB, on the thread that answers fetches.  A map
made with ``MAP_POPULATE`` gets all its pages in one system call, in the
worker thread with the GIL released (about 2.7 ms for 8 MiB); a map handed
back (:meth:`ThreadedGets.recycle`) is resized in place for the next body of
about its size.
"""

from __future__ import annotations

import asyncio
import http.client
import mmap
import ssl
import threading
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

POOL_BYTES = 32 * 1024 * 1024  # bodies kept for reuse by default: fresh memory costs a page fault every 4 KiB
_POPULATED = getattr(mmap, "MAP_POPULATE", 0)  # Linux: every page of a new map at once


class ThreadedGets:
    """GETs against one endpoint, each run by one of ``workers`` threads with its own connection."""

    def __init__(self, base_url: str, *, connect_timeout: float, read_timeout: float, workers: int,
                 tls: ssl.SSLContext | None = None, pool_bytes: int = POOL_BYTES) -> None:
        parts = urllib.parse.urlsplit(base_url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if self._https else 80)
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._ssl = (tls or ssl.create_default_context()) if self._https else None
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="keel-s3-get")
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: set[http.client.HTTPConnection] = set()
        self._closed = False
        self._pool: list[mmap.mmap] = []  # bodies handed back, to be filled again
        self._pooled_bytes = 0
        self._pool_bytes = pool_bytes  # at most this much of them

    async def get(self, target: str, headers: dict[str, str]) -> tuple[int, CIMultiDictProxy[str], bytes | mmap.mmap]:
        """``GET target`` (path and query, already encoded): (status, headers, body) of any status.  A body
        of known length is a memory map (compare it as ``memoryview(body)``, never as the map itself)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._get_blocking, target, headers)

    def recycle(self, body: object) -> None:
        """Keeps ``body`` (which nothing may refer to any more) for a later GET of about its size."""
        if not isinstance(body, mmap.mmap) or body.closed:
            return
        with self._lock:
            if self._pooled_bytes + len(body) <= self._pool_bytes:
                self._pool.append(body)
                self._pooled_bytes += len(body)

    def _buffer(self, length: int) -> mmap.mmap:
        """A map of ``length`` bytes: a pooled one of between half and twice that size, resized (in place
        when it shrinks; segment reads vary by a few bytes), else a new one with every page in place."""
        with self._lock:
            fits = [b for b in self._pool if length <= 2 * len(b) and len(b) <= 2 * length]
            buffer = min(fits, key=lambda b: abs(len(b) - length)) if fits else None
            if buffer is not None:
                self._pool.remove(buffer)
                self._pooled_bytes -= len(buffer)
        if buffer is not None:
            try:
                buffer.resize(length)  # refused while any view of the map is alive, even at the same size
                return buffer
            except BufferError:
                pass  # handed back too early: left to that view
            except (OSError, SystemError):
                pass  # no mremap (macOS), or no memory for the larger size
        return mmap.mmap(-1, length, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _POPULATED)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, set()
        for conn in connections:
            conn.close()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # ---- in a worker thread ---------------------------------------------------

    def _get_blocking(self, target: str, headers: dict[str, str]) -> tuple[int, CIMultiDictProxy[str], bytes | mmap.mmap]:
        try:
            conn, reused = self._connection()
        except OSError as exc:
            raise _as_aiohttp(exc, target) from None
        try:
            try:
                conn.request("GET", target, headers=headers)
                resp = conn.getresponse()
            except (ConnectionError, http.client.BadStatusLine):
                if not reused:
                    raise
                # The server closed the kept-alive connection while it sat idle: a GET is safe to send again.
                self._drop(conn)
                conn, _ = self._connection()
                conn.request("GET", target, headers=headers)
                resp = conn.getresponse()
            body = self._read_body(resp)
            if resp.will_close:
                self._drop(conn)
            return resp.status, CIMultiDictProxy(CIMultiDict(resp.getheaders())), body
        except http.client.HTTPException as exc:  # a malformed or cut-short answer: the caller retries
            self._drop(conn)
            raise aiohttp.ClientPayloadError(f"GET {target}: {exc!r}") from None
        except OSError as exc:
            self._drop(conn)
            raise _as_aiohttp(exc, target) from None
        except BaseException:
            self._drop(conn)
            raise

    def _read_body(self, resp: http.client.HTTPResponse) -> bytes | mmap.mmap:
        length = resp.length
        if not length or resp.status >= 300:  # chunked, empty or an error document: read as it comes
            return resp.read()
        body = self._buffer(length)  # every byte of it is overwritten below, or it is not returned
        view, pos = memoryview(body), 0
        while pos < length:
            got = resp.readinto(view[pos:])
            if not got:
                raise http.client.IncompleteRead(bytes(0), length - pos)
            pos += got
        return body

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is not None and conn.sock is not None:
            return conn, True
        if self._https:
            conn = http.client.HTTPSConnection(self._host, self._port, timeout=self._connect_timeout,
                                               context=self._ssl)
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self._connect_timeout)
        conn.connect()
        assert conn.sock is not None
        conn.sock.settimeout(self._read_timeout)
        with self._lock:
            if self._closed:
                conn.close()
                raise RuntimeError("the S3 store is closed")  # not retried
            self._connections.add(conn)
        self._local.conn = conn
        return conn, False

    def _drop(self, conn: http.client.HTTPConnection) -> None:
        conn.close()
        with self._lock:
            self._connections.discard(conn)
        if getattr(self._local, "conn", None) is conn:
            self._local.conn = None


def _as_aiohttp(exc: OSError, target: str) -> OSError:
    """Resets and timeouts as they are (the engine retries them), certificate errors too (it does not),
    and any other socket error (an unreachable host, ...) as aiohttp reports it, which is retried."""
    if isinstance(exc, ConnectionError | TimeoutError | ssl.SSLError):
        return exc
    return aiohttp.ClientOSError(exc.errno, f"GET {target}: {exc}")
