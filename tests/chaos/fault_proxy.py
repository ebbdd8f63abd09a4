"""An HTTP proxy in front of an S3 server that adds latency and answers 503 SlowDown on demand.

The chaos runner points every broker's ``--s3-endpoint`` at this proxy, so it
can make the object store slow or throttling for a few seconds at a time, as
a real S3 does under load.  It forwards requests byte for byte (the Host
header included, which SigV4 signs).  Faults, set over a control path that
no S3 bucket name can collide with (``/_chaos/...``, underscores are not
allowed in bucket names):

* ``latency_ms`` (+ random ``jitter_ms``) before forwarding each request;
* ``error_rate``: that share of requests is answered ``503 SlowDown`` without
  reaching S3;
* ``landed_error_rate``: that share is forwarded, then answered
  ``503 ServiceUnavailable`` anyway: the write happened but its writer cannot
  know (the S3 engine must recognise its own landed conditional writes);
* ``duration_s``: the faults clear themselves after that many seconds.

Run it as a process (``python tests/chaos/fault_proxy.py --upstream URL``; it
prints ``listening on PORT``) and drive it with :class:`FaultProxyProcess`.
It depends only on the standard library and aiohttp.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import ClientSession, ClientTimeout, TCPConnector, web

CONTROL = "/_chaos/"
MAX_BODY = 64 * 1024 * 1024
_HOP_BY_HOP = {"content-length", "transfer-encoding", "connection", "date", "server", "keep-alive"}


@dataclass
class Faults:
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    error_rate: float = 0.0
    landed_error_rate: float = 0.0
    until: float = 0.0  # monotonic time at which the faults end; 0 = until cleared

    def active(self) -> bool:
        return self.until == 0.0 or time.monotonic() < self.until


@dataclass
class Stats:
    requests: int = 0
    delayed: int = 0
    slowdowns: int = 0
    landed_errors: int = 0
    upstream_errors: int = 0


class FaultProxy:
    def __init__(self, upstream: str, seed: int | None = None) -> None:
        self.upstream = upstream.rstrip("/")
        self.faults = Faults()
        self.stats = Stats()
        self.rng = random.Random(seed)
        self._session: ClientSession | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        app.on_startup.append(self._open)
        app.on_cleanup.append(self._close)
        return app

    async def _open(self, _app: web.Application) -> None:
        self._session = ClientSession(auto_decompress=False, timeout=ClientTimeout(total=120),
                                      connector=TCPConnector(limit=512))

    async def _close(self, _app: web.Application) -> None:
        if self._session is not None:
            await self._session.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path.startswith(CONTROL):
            return await self._control(request)
        self.stats.requests += 1
        body = await request.read()
        faults = self.faults if self.faults.active() else None
        if faults is not None and (faults.latency_ms or faults.jitter_ms):
            self.stats.delayed += 1
            await asyncio.sleep((faults.latency_ms + self.rng.random() * faults.jitter_ms) / 1000)
        if faults is not None and self.rng.random() < faults.error_rate:
            self.stats.slowdowns += 1
            return _s3_error(503, "SlowDown", "Please reduce your request rate.")
        response = await self._forward(request, body)
        if faults is not None and self.rng.random() < faults.landed_error_rate:
            self.stats.landed_errors += 1
            return _s3_error(503, "ServiceUnavailable", "injected after the request reached S3")
        return response

    async def _forward(self, request: web.Request, body: bytes) -> web.Response:
        assert self._session is not None
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in ("content-length", "expect")]
        try:
            async with self._session.request(
                request.method, self.upstream + request.path_qs, headers=headers, data=body,
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            ) as upstream:  # fmt: skip
                payload = await upstream.read()
                out = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP}
                if request.method == "HEAD":
                    out["Content-Length"] = upstream.headers.get("Content-Length", "0")
                    return web.Response(status=upstream.status, headers=out)
                return web.Response(status=upstream.status, headers=out, body=payload)
        except (TimeoutError, OSError) as exc:
            self.stats.upstream_errors += 1
            return _s3_error(502, "BadGateway", f"upstream: {exc!r}")

    async def _control(self, request: web.Request) -> web.Response:
        action = request.path[len(CONTROL):]
        if action == "faults" and request.method == "POST":
            spec = await request.json()
            duration = float(spec.pop("duration_s", 0) or 0)
            self.faults = Faults(**spec, until=time.monotonic() + duration if duration else 0.0)
        elif action == "faults" and request.method == "DELETE":
            self.faults = Faults()
        elif action != "stats":
            return web.Response(status=404, text="unknown control action")
        return web.json_response({"faults": asdict(self.faults), "active": self.faults.active() and
                                  self.faults != Faults(), "stats": asdict(self.stats)})


def _s3_error(status: int, code: str, message: str) -> web.Response:
    xml = f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message></Error>'
    return web.Response(status=status, body=xml.encode(), content_type="application/xml")


async def serve(upstream: str, port: int, seed: int | None) -> None:
    runner = web.AppRunner(FaultProxy(upstream, seed).app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    print(f"listening on {runner.addresses[0][1]}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="S3 endpoint URL to forward to")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        import uvloop  # noqa: PLC0415

        uvloop.run(serve(args.upstream, args.port, args.seed))
    except ImportError:
        asyncio.run(serve(args.upstream, args.port, args.seed))
    except KeyboardInterrupt:
        pass
    return 0


# ---- driving it from another process -------------------------------------------------------------


class FaultProxyProcess:
    """Starts the proxy as a child process and sets its faults over HTTP."""

    def __init__(self, upstream: str, log_path: Path, seed: int | None = None) -> None:
        self.upstream = upstream
        self.log_path = log_path
        self.seed = seed
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> FaultProxyProcess:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--upstream", self.upstream]
        if self.seed is not None:
            cmd += ["--seed", str(self.seed)]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("a")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, text=True)
        log.close()
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = ""
        while time.monotonic() < deadline and not line.startswith("listening on "):
            line = self.proc.stdout.readline()
            if not line and self.proc.poll() is not None:
                raise RuntimeError(f"fault proxy exited with {self.proc.returncode}; see {self.log_path}")
        if not line.startswith("listening on "):
            self.stop()
            raise TimeoutError("fault proxy did not start")
        self.port = int(line.split()[-1])
        return self

    def _call(self, method: str, action: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        data = json.dumps(payload).encode() if payload is not None else None
        request = urllib.request.Request(self.url + CONTROL + action, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def set_faults(self, *, latency_ms: float = 0, jitter_ms: float = 0, error_rate: float = 0,
                   landed_error_rate: float = 0, duration_s: float = 0) -> dict[str, Any]:
        return self._call("POST", "faults", {"latency_ms": latency_ms, "jitter_ms": jitter_ms,
                                             "error_rate": error_rate, "landed_error_rate": landed_error_rate,
                                             "duration_s": duration_s})

    def clear(self) -> dict[str, Any]:
        return self._call("DELETE", "faults")

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "stats")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> FaultProxyProcess:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


if __name__ == "__main__":
    sys.exit(main())
