"""One stable bootstrap address in front of a cluster whose brokers come and go.

Real deployments give clients a bootstrap address that outlives any broker: a DNS
name or a Kubernetes Service.  The chaos runner removes brokers for good and adds
new ones on new ports, so after a while none of the brokers a client was started
with is left.  librdkafka then re-bootstraps (KIP-899: when every broker it knows
is down it goes back to ``bootstrap.servers``) into dead addresses and never
recovers, which a long run saw as every producer stalling at once.  This proxy is
the stand-in for that Service: each connection is forwarded, byte for byte, to a
broker that is serving at that moment.  Clients then learn the real brokers from
Metadata and talk to them directly, as they would behind a real Service.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from collections.abc import Callable

CONNECT_TIMEOUT_S = 1.0
CHUNK = 64 * 1024


class BootstrapProxy:
    """``address`` forwards each connection to one of ``targets()`` (host, port), tried in random order."""

    def __init__(self, targets: Callable[[], list[tuple[str, int]]]) -> None:
        self._targets = targets
        self._last_targets: list[tuple[str, int]] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-bootstrap-proxy", daemon=True)
        self._server: asyncio.AbstractServer | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> BootstrapProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("bootstrap proxy did not start")
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._forward, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._server.close()
            self._loop.close()

    def _candidates(self) -> list[tuple[str, int]]:
        with contextlib.suppress(RuntimeError):  # the runner changes the cluster from its own thread
            self._last_targets = list(self._targets())
        return random.sample(self._last_targets, len(self._last_targets))

    async def _forward(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        for host, port in self._candidates():
            with contextlib.suppress(OSError, TimeoutError):
                upstream = await asyncio.wait_for(asyncio.open_connection(host, port), CONNECT_TIMEOUT_S)
                break
        if upstream is None:
            client_writer.close()
            return
        broker_reader, broker_writer = upstream
        await asyncio.gather(_pipe(client_reader, broker_writer), _pipe(broker_reader, client_writer))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()
