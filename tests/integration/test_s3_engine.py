"""The S3 engine against a real S3 server (SeaweedFS ``weed mini`` on loopback).

The whole object-store contract (tests/unit/test_objectstore_contract.py) runs
here against S3ObjectStore, each test under its own key prefix in one bucket.
The tests below it cover what only S3 has: retries, the ambiguity of a
conditional put whose reply was lost, credentials, multipart uploads, paging,
batching and the in-flight bound. Faults come from a small HTTP proxy in
front of SeaweedFS that fails, drops or delays chosen requests.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import inspect
import os
import re
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from objectstore import s3
from objectstore.base import NotFound, ObjectStoreError, PreconditionFailed, TransientError
from objectstore.s3 import STAMP_MAGIC, STAMP_SIZE, S3Error, S3ObjectStore
from objectstore.s3_direct import DirectS3
from objectstore.s3_threaded_get import ThreadedGets
from s3server import SeaweedFS

MiB = 1024 * 1024
BUCKET = "keel-test"


# ``s3_server`` (one SeaweedFS for the whole session) comes from tests/conftest.py.


def make_store(server: SeaweedFS, **kwargs: Any) -> S3ObjectStore:
    options: dict[str, Any] = {
        "endpoint_url": server.endpoint_url,
        "access_key": server.access_key,
        "secret_key": server.secret_key,
        "read_timeout": 20,  # SeaweedFS makes losing conditional writers wait seconds
    }
    options.update(kwargs)
    return S3ObjectStore(options.pop("bucket", BUCKET), **options)


def unique_prefix() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


# ---- the shared contract -------------------------------------------------------------

_UNIT_TESTS = Path(__file__).resolve().parents[1] / "unit"
if str(_UNIT_TESTS) not in sys.path:  # where pytest's default import mode puts it too
    sys.path.insert(0, str(_UNIT_TESTS))
contract = importlib.import_module("test_objectstore_contract")

# Every contract test that takes the generic ``store`` fixture runs here against S3.
for _name, _test in vars(contract).items():
    if _name.startswith("test_") and "store" in inspect.signature(_test).parameters:
        globals()[_name] = _test

RACE_ROUNDS_ON_S3 = 1  # SeaweedFS makes each losing conditional writer wait ~1 s steps


@pytest.fixture
async def store(request: pytest.FixtureRequest, s3_server: SeaweedFS) -> AsyncIterator[S3ObjectStore]:
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("round_", 0) >= RACE_ROUNDS_ON_S3:
        pytest.skip("one race round on S3: losers wait seconds on SeaweedFS (round 0 ran)")
    engine = make_store(s3_server, prefix=unique_prefix())
    try:
        yield engine
    finally:
        await engine.close()


# ---- a fault-injecting HTTP proxy in front of SeaweedFS -----------------------------------

Match = Callable[[web.Request], bool]


@dataclass
class Fault:
    """Act on the next ``times`` requests that ``match``.

    actions: "503" (SlowDown, not forwarded), "400" (InvalidArgument, not
    forwarded), "reset" (connection dropped, not forwarded), "landed-503" and
    "landed-reset" (forwarded to S3 first, then the reply is replaced), "cut-body"
    (forwarded, then the connection closes half-way through the announced body),
    "garbage-200" (forwarded, then answered 200 with a body that is not XML),
    "delete-errors:CODE" (not forwarded; a DeleteObjects answer that reports every key failed with CODE).
    """

    action: str
    match: Match = lambda request: True  # noqa: E731
    times: int = 1
    after_forward: Callable[[], Awaitable[None]] | None = None


@dataclass
class FaultProxy:
    upstream: str
    delay: float = 0.0
    faults: list[Fault] = field(default_factory=list)
    seen: list[tuple[str, str]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    url: str = ""
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None

    async def start(self) -> FaultProxy:
        app = web.Application(client_max_size=64 * MiB)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        self._session = aiohttp.ClientSession(auto_decompress=False)
        return self

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def count(self, method: str, query_has: str = "") -> int:
        return sum(1 for m, path in self.seen if m == method and query_has in path)

    def _take_fault(self, request: web.Request) -> Fault | None:
        for fault in self.faults:
            if fault.times > 0 and fault.match(request):
                fault.times -= 1
                return fault
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.method, request.path_qs))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            body = await request.read()
            if self.delay:
                await asyncio.sleep(self.delay)
            fault = self._take_fault(request)
            action = fault.action if fault else "forward"
            if action == "503":
                return _s3_error(503, "SlowDown", "Please reduce your request rate.")
            if action == "400":
                return _s3_error(400, "InvalidArgument", "injected")
            if action == "reset":
                return _drop(request)
            if action.startswith("delete-errors:"):
                return _delete_errors(body, action.split(":", 1)[1])
            response = await self._forward(request, body)
            if fault is not None and fault.after_forward is not None:
                await fault.after_forward()
            if action == "landed-503":
                return _s3_error(503, "ServiceUnavailable", "injected after the write landed")
            if action == "landed-reset":
                return _drop(request)
            if action == "cut-body":
                return await _cut_body(request, response)
            if action == "garbage-200":
                return web.Response(status=200, body=b"<ListBucketResult><Contents><Key>x", content_type="application/xml")
            return response
        finally:
            self.in_flight -= 1

    async def _forward(self, request: web.Request, body: bytes) -> web.Response:
        assert self._session is not None
        # Forward headers untouched (Host included): the SigV4 signature covers them.
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in ("content-length", "expect")]
        async with self._session.request(
            request.method, self.upstream + request.path_qs, headers=headers, data=body,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        ) as upstream:  # fmt: skip
            payload = await upstream.read()
            out = {k: v for k, v in upstream.headers.items()
                   if k.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server")}
            if request.method == "HEAD":
                out["Content-Length"] = upstream.headers.get("Content-Length", "0")
                return web.Response(status=upstream.status, headers=out)
            return web.Response(status=upstream.status, headers=out, body=payload)


def _s3_error(status: int, code: str, message: str) -> web.Response:
    xml = f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message></Error>'
    return web.Response(status=status, body=xml.encode(), content_type="application/xml")


async def _cut_body(request: web.Request, response: web.Response) -> web.StreamResponse:
    body = bytes(response.body)
    cut = web.StreamResponse(status=response.status, headers=response.headers)
    cut.content_length = len(body)
    await cut.prepare(request)
    await cut.write(body[: len(body) // 2])
    assert request.transport is not None
    request.transport.close()
    return cut


def _delete_errors(request_body: bytes, code: str) -> web.Response:
    keys = re.findall(rb"<Key>([^<]*)</Key>", request_body)
    errors = b"".join(b"<Error><Key>%s</Key><Code>%s</Code><Message>injected</Message></Error>" % (k, code.encode())
                      for k in keys)
    xml = (b'<?xml version="1.0" encoding="UTF-8"?>'
           b'<DeleteResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">%s</DeleteResult>' % errors)
    return web.Response(status=200, body=xml, content_type="application/xml")


def _drop(request: web.Request) -> web.Response:
    assert request.transport is not None
    request.transport.close()
    return web.Response(status=500)  # never reaches the client


def is_put(request: web.Request) -> bool:
    return request.method == "PUT" and not request.query


@pytest.fixture
async def proxy(s3_server: SeaweedFS) -> AsyncIterator[FaultProxy]:
    server = await FaultProxy(s3_server.endpoint_url).start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def shared(s3_server: SeaweedFS) -> AsyncIterator[S3ObjectStore]:
    """A direct (unproxied) store on a fresh prefix; tests use it to set up and to check."""
    engine = make_store(s3_server, prefix=unique_prefix())
    try:
        yield engine
    finally:
        await engine.close()


async def via(proxy: FaultProxy, s3_server: SeaweedFS, prefix: str, **kwargs: Any) -> S3ObjectStore:
    """A started store that talks through ``proxy``; the proxy's request log starts empty."""
    engine = make_store(s3_server, endpoint_url=proxy.url, prefix=prefix, retry_base_delay=0.01, **kwargs)
    await engine.start()
    proxy.seen.clear()
    return engine


# ---- retries and their limits ------------------------------------------------------------------


async def test_503_slowdown_is_retried_until_success(
    proxy: FaultProxy, s3_server: SeaweedFS, shared: S3ObjectStore
) -> None:
    engine = await via(proxy, s3_server, shared.prefix, max_attempts=6)
    async with engine:
        proxy.faults.append(Fault("503", is_put, times=4))
        etag = await engine.put("meta/cluster.json", b"{}")
        assert proxy.count("PUT") == 5
        assert await shared.get_with_etag("meta/cluster.json") == (b"{}", etag)

        proxy.faults.append(Fault("reset", lambda r: r.method == "GET", times=2))
        assert await engine.get("meta/cluster.json", 0, 1) == b"{"
        assert proxy.count("GET") >= 3  # aiohttp may add one retry of its own after a reset


async def test_retries_stop_after_max_attempts_with_transient_error(
    proxy: FaultProxy, s3_server: SeaweedFS, shared: S3ObjectStore
) -> None:
    engine = await via(proxy, s3_server, shared.prefix, max_attempts=3)
    async with engine:
        proxy.faults.append(Fault("503", times=100))
        started = time.monotonic()
        with pytest.raises(TransientError, match="3 attempts"):
            await engine.head("meta/x.json")
        assert proxy.count("HEAD") == 3
        assert time.monotonic() - started < 5


async def test_client_errors_are_not_retried(
    proxy: FaultProxy, s3_server: SeaweedFS, shared: S3ObjectStore
) -> None:
    engine = await via(proxy, s3_server, shared.prefix)
    async with engine:
        proxy.faults.append(Fault("400", is_put))
        with pytest.raises(S3Error) as info:
            await engine.put("meta/x.json", b"x")
        assert not isinstance(info.value, TransientError)
        assert (info.value.status, info.value.code) == (400, "InvalidArgument")
        assert proxy.count("PUT") == 1


async def test_wrong_secret_fails_at_once(proxy: FaultProxy, s3_server: SeaweedFS) -> None:
    engine = make_store(s3_server, endpoint_url=proxy.url, prefix=unique_prefix(), secret_key="not-the-secret")
    async with engine:
        started = time.monotonic()
        with pytest.raises(S3Error) as info:
            await engine.put("meta/x.json", b"x")
        assert info.value.status == 403
        assert not isinstance(info.value, TransientError)
        assert len(proxy.seen) == 1  # the CreateBucket at start, and no retry
        assert time.monotonic() - started < 2


async def test_stopped_server_gives_transient_error_in_bounded_time(tmp_path: Path) -> None:
    server = SeaweedFS(tmp_path / "weed").start()
    try:
        engine = make_store(server, bucket="short-lived", max_attempts=4, connect_timeout=1, read_timeout=2)
        async with engine:
            await engine.put("meta/x.json", b"x")  # leaves a pooled keep-alive connection
            server.stop()
            for op in (engine.put("meta/x.json", b"y"), engine.get("meta/x.json"), engine.list("")):
                started = time.monotonic()
                with pytest.raises(TransientError):
                    await op
                assert time.monotonic() - started < 10
    finally:
        server.stop()


# ---- a conditional put whose reply was lost ---------------------------------------------------------


@pytest.mark.parametrize("action", ["landed-503", "landed-reset"])
async def test_cas_that_landed_but_reply_was_lost_succeeds(
    proxy: FaultProxy, s3_server: SeaweedFS, shared: S3ObjectStore, action: str
) -> None:
    engine = await via(proxy, s3_server, shared.prefix)
    async with engine:
        old = await shared.put("meta/controller.json", b"v1")
        proxy.faults.append(Fault(action, is_put))
        new = await engine.put_if_match("meta/controller.json", b"v2", old)
        # The retry (ours, or aiohttp's own after a dropped connection) lost against our write.
        assert proxy.count("PUT") == 2
        assert await shared.get_with_etag("meta/controller.json") == (b"v2", new)

        proxy.faults.append(Fault(action, is_put))
        created = await engine.put_if_absent("meta/brokers/1.json", b"lease")
        assert await shared.get_with_etag("meta/brokers/1.json") == (b"lease", created)


async def test_cas_that_landed_and_was_overwritten_reports_failure(
    proxy: FaultProxy, s3_server: SeaweedFS, shared: S3ObjectStore
) -> None:
    engine = await via(proxy, s3_server, shared.prefix)
    async with engine:
        old = await shared.put("meta/controller.json", b"v1")

        async def someone_else_writes() -> None:
            await shared.put("meta/controller.json", b"v2")  # the same bytes, a different stamp

        proxy.faults.append(Fault("landed-503", is_put, after_forward=someone_else_writes))
        with pytest.raises(PreconditionFailed):
            await engine.put_if_match("meta/controller.json", b"v2", old)
        assert proxy.count("PUT") == 2


async def test_conditional_put_that_never_landed_and_lost_reports_failure(
    proxy: FaultProxy, s3_server: SeaweedFS, shared: S3ObjectStore
) -> None:
    engine = await via(proxy, s3_server, shared.prefix)
    async with engine:
        await shared.put("meta/topics/t.json", b"theirs")
        proxy.faults.append(Fault("503", is_put))
        with pytest.raises(PreconditionFailed):
            await engine.put_if_absent("meta/topics/t.json", b"mine")
        assert await shared.get("meta/topics/t.json") == b"theirs"


# ---- S3 specifics ---------------------------------------------------------------------------------------


async def test_etags_are_unquoted_and_if_match_takes_either_form(shared: S3ObjectStore) -> None:
    etag = await shared.put("meta/a.json", b"1")
    assert '"' not in etag
    etag = await shared.put_if_match("meta/a.json", b"2", f'"{etag}"')
    assert (await shared.head("meta/a.json")).etag == etag
    assert [i.etag for i in await shared.list("meta/")] == [etag]


async def test_stamp_is_hidden_and_raw_mode_stores_bytes_verbatim(
    s3_server: SeaweedFS, shared: S3ObjectStore
) -> None:
    await shared.put("data/a.seg", b"payload")
    raw = make_store(s3_server, prefix=shared.prefix, unique_etags=False)
    async with raw:
        stored = await raw.get("data/a.seg")
        assert len(stored) == 7 + STAMP_SIZE
        assert stored[:7] == b"payload" and stored[7:11] == STAMP_MAGIC
        assert (await raw.head("data/a.seg")).size == 7 + STAMP_SIZE

        # Raw mode: the ETag is the content MD5, so identical bytes repeat it (the reason for stamps).
        first = await raw.put("data/raw.seg", b"same")
        assert first == hashlib.md5(b"same").hexdigest() == await raw.put("data/raw.seg", b"same")
        assert await raw.get("data/raw.seg", 1, 3) == b"am"
        assert await raw.get("data/raw.seg", 2) == b"me"
        assert await raw.get("data/raw.seg", 9) == b""
        with pytest.raises(ObjectStoreError, match="not written by Keel"):
            await shared.get_with_etag("data/raw.seg")


async def test_a_large_put_is_hashed_in_a_worker_thread_and_signed_with_that_hash(
    shared: S3ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[tuple[bytes, str | None]] = []
    original_send = DirectS3.send

    async def spy_send(self: DirectS3, *args: Any, **kwargs: Any) -> Any:
        if args[0] == "PutObject":
            sent.append((kwargs["body"], kwargs.get("payload_sha256")))
        return await original_send(self, *args, **kwargs)

    monkeypatch.setattr(DirectS3, "send", spy_send)
    prepared_in: list[str] = []
    original_prepare = shared._prepare_now

    def spy_prepare(data: Any) -> Any:
        prepared_in.append(threading.current_thread().name)
        return original_prepare(data)

    monkeypatch.setattr(shared, "_prepare_now", spy_prepare)
    large = os.urandom(s3.HASH_OFF_LOOP_FROM + 1)
    await shared.put("data/large.seg", large)
    assert await shared.put_if_absent("wal/large", large)
    await shared.put("data/small.seg", b"small")

    assert prepared_in and all(name != threading.main_thread().name for name in prepared_in)
    assert len(prepared_in) == 2  # the small body is hashed by the signer, on the loop
    (first, first_hash), (second, second_hash), (small, small_hash) = sent
    for body, digest in ((first, first_hash), (second, second_hash)):
        assert body[: len(large)] == large and body[len(large) : len(large) + 4] == STAMP_MAGIC
        assert digest == hashlib.sha256(body).hexdigest()
    assert small_hash is None and small[:5] == b"small"
    assert await shared.get("data/large.seg") == large
    assert await shared.get("wal/large") == large


async def test_multipart_upload_of_a_large_object(s3_server: SeaweedFS) -> None:
    engine = make_store(s3_server, prefix=unique_prefix(), multipart_threshold=5 * MiB, part_size=5 * MiB)
    body = os.urandom(20 * MiB)
    async with engine:
        etag = await engine.put("data/t/0/big.seg", body)
        assert etag.endswith("-5")  # four full parts and one with the 16-byte stamp
        assert await engine.get_with_etag("data/t/0/big.seg") == (body, etag)
        assert (await engine.head("data/t/0/big.seg")).size == len(body)
        edge = 5 * MiB
        assert await engine.get("data/t/0/big.seg", edge - 10, edge + 10) == body[edge - 10 : edge + 10]
        assert await engine.get("data/t/0/big.seg", len(body) - 3) == body[-3:]
        again = await engine.put("data/t/0/big.seg", body)
        assert again != etag  # same bytes, new stamp, new ETag
        small = await engine.put_if_match("data/t/0/big.seg", b"small now", again)
        assert await engine.get_with_etag("data/t/0/big.seg") == (b"small now", small)


async def test_failed_multipart_upload_is_aborted(
    proxy: FaultProxy, s3_server: SeaweedFS, shared: S3ObjectStore
) -> None:
    engine = await via(proxy, s3_server, shared.prefix, multipart_threshold=5 * MiB, part_size=5 * MiB)
    async with engine:
        proxy.faults.append(Fault("400", lambda r: r.method == "PUT" and "partNumber=2" in r.path_qs))
        with pytest.raises(S3Error):
            await engine.put("data/big.seg", os.urandom(11 * MiB))
        assert proxy.count("DELETE", "uploadId=") == 1
        with pytest.raises(NotFound):
            await shared.head("data/big.seg")


async def test_list_pages_through_results(proxy: FaultProxy, s3_server: SeaweedFS, shared: S3ObjectStore) -> None:
    keys = [f"meta/groups/g{i:03d}.json" for i in range(25)]
    await asyncio.gather(*(shared.put(k, k.encode()) for k in keys), shared.put("meta/other.json", b"x"))
    engine = await via(proxy, s3_server, shared.prefix, list_page_size=7)
    async with engine:
        listed = await engine.list("meta/groups/")
        assert [i.key for i in listed] == keys
        assert all(i.size == len(i.key) for i in listed)
        assert proxy.count("GET", "list-type=2") == 4


async def test_list_returns_keys_with_characters_that_need_escaping(shared: S3ObjectStore) -> None:
    keys = sorted(f"meta/odd/{name}.json" for name in ("a b", "plus+sign", "amp&lt", "percent%41", "caf\u00e9", "x<y>"))
    await asyncio.gather(*(shared.put(k, k.encode()) for k in keys))
    listed = await shared.list("meta/odd/")
    assert [i.key for i in listed] == keys
    assert [i.size for i in listed] == [len(k.encode()) for k in keys]
    assert [await shared.get(i.key) for i in listed] == [k.encode() for k in keys]


async def test_a_large_get_cut_short_is_retried_and_returns_the_exact_bytes(
    proxy: FaultProxy, s3_server: SeaweedFS, shared: S3ObjectStore
) -> None:
    body = os.urandom(3 * MiB)
    await shared.put("data/t/0/cut.seg", body)
    engine = await via(proxy, s3_server, shared.prefix)
    async with engine:
        proxy.faults.append(Fault("cut-body", lambda r: r.method == "GET"))
        got = await engine.get("data/t/0/cut.seg", MiB, 3 * MiB)  # read into one preallocated buffer
        assert got == body[MiB:]
        assert proxy.count("GET") == 2


@pytest.mark.parametrize("action", ["503", "reset", "cut-body"])
async def test_a_large_range_get_is_received_in_a_worker_thread_and_retried_on_faults(
    proxy: FaultProxy, s3_server: SeaweedFS, shared: S3ObjectStore, monkeypatch: pytest.MonkeyPatch, action: str
) -> None:
    body = os.urandom(3 * MiB)
    await shared.put("data/t/0/big.seg", body)
    engine = await via(proxy, s3_server, shared.prefix)
    threads: list[threading.Thread] = []
    original = ThreadedGets._get_blocking

    def spy(self: ThreadedGets, *args: Any) -> Any:
        threads.append(threading.current_thread())
        return original(self, *args)

    monkeypatch.setattr(ThreadedGets, "_get_blocking", spy)
    async with engine:
        proxy.faults.append(Fault(action, lambda r: r.method == "GET"))
        assert await engine.get("data/t/0/big.seg", MiB // 2, 3 * MiB) == body[MiB // 2:]
        assert proxy.count("GET") == 2
        assert len(threads) == 2 and threading.main_thread() not in threads
        with pytest.raises(NotFound):
            await engine.get("data/t/0/missing.seg", 0, MiB)
        assert await engine.get("data/t/0/big.seg", 0, 64 * 1024) == body[: 64 * 1024]  # small: on the loop
        assert len(threads) == 3


async def test_a_malformed_listing_is_retried(proxy: FaultProxy, s3_server: SeaweedFS, shared: S3ObjectStore) -> None:
    keys = [f"meta/brokers/{n}.json" for n in range(3)]
    await asyncio.gather(*(shared.put(k, b"{}") for k in keys))
    engine = await via(proxy, s3_server, shared.prefix)
    async with engine:
        proxy.faults.append(Fault("garbage-200", lambda r: "list-type=2" in r.path_qs))
        assert [i.key for i in await engine.list("meta/brokers/")] == keys
        assert proxy.count("GET", "list-type=2") == 2


async def test_delete_many_sends_batches(
    proxy: FaultProxy, s3_server: SeaweedFS, shared: S3ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s3, "DELETE_BATCH", 4)
    keys = [f"data/t/0/{n:020d}-1.seg" for n in range(10)]
    await asyncio.gather(*(shared.put(k, b"seg") for k in [*keys, "data/t/1/keep.seg"]))
    engine = await via(proxy, s3_server, shared.prefix)
    async with engine:
        await engine.delete_many(iter([*keys, "data/t/0/missing.seg"]))
        assert proxy.count("POST", "delete") == 3
    assert [i.key for i in await shared.list("data/")] == ["data/t/1/keep.seg"]


async def test_keys_a_batch_delete_reports_failed_are_sent_again_while_the_error_is_transient(
    proxy: FaultProxy, s3_server: SeaweedFS, shared: S3ObjectStore
) -> None:
    keys = [f"wal/1/{n:020d}.wal" for n in range(5)]
    await asyncio.gather(*(shared.put(k, b"w") for k in keys))
    engine = await via(proxy, s3_server, shared.prefix)
    async with engine:
        proxy.faults.append(Fault("delete-errors:InternalError", lambda r: r.method == "POST"))
        await engine.delete_many(keys)
        assert proxy.count("POST", "delete") == 2
        assert await shared.list("wal/") == []
        await asyncio.gather(*(shared.put(k, b"w") for k in keys))
        proxy.faults.append(Fault("delete-errors:AccessDenied", lambda r: r.method == "POST"))
        with pytest.raises(ObjectStoreError, match="AccessDenied"):
            await engine.delete_many(keys)
        assert proxy.count("POST", "delete") == 3  # not retried
    assert len(await shared.list("wal/")) == 5


async def test_prefixes_isolate_stores_in_one_bucket(s3_server: SeaweedFS) -> None:
    base = unique_prefix()
    a = make_store(s3_server, prefix=f"{base}/a")
    ab = make_store(s3_server, prefix=f"{base}/ab/")  # slashes around a prefix are ignored
    root = make_store(s3_server)
    async with a, ab, root:
        etag_a = await a.put("meta/cluster.json", b"A")
        etag_ab = await ab.put("meta/cluster.json", b"AB")
        assert await a.get_with_etag("meta/cluster.json") == (b"A", etag_a)
        assert [i.key for i in await a.list("")] == ["meta/cluster.json"]
        assert [i.key for i in await ab.list("meta")] == ["meta/cluster.json"]
        assert [(i.key, i.etag) for i in await root.list(base)] == [
            (f"{base}/a/meta/cluster.json", etag_a),
            (f"{base}/ab/meta/cluster.json", etag_ab),
        ]
        await a.delete_many(["meta/cluster.json"])
        assert await ab.get("meta/cluster.json") == b"AB"
        with pytest.raises(NotFound):
            await root.head(f"{base}/a/meta/cluster.json")


async def test_in_flight_requests_are_bounded(
    proxy: FaultProxy, s3_server: SeaweedFS, shared: S3ObjectStore
) -> None:
    await shared.put("meta/x.json", b"x")
    proxy.delay = 0.05
    engine = await via(proxy, s3_server, shared.prefix, max_in_flight=3)
    async with engine:
        await asyncio.gather(*(engine.head("meta/x.json") for _ in range(24)))
    assert proxy.max_in_flight == 3


async def test_credentials_come_from_the_environment(
    s3_server: SeaweedFS, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    engine = S3ObjectStore(BUCKET, endpoint_url=s3_server.endpoint_url, prefix=unique_prefix())
    async with engine:
        etag = await engine.put("meta/x.json", b"x")
        assert await engine.get_with_etag("meta/x.json") == (b"x", etag)


@pytest.mark.parametrize("use_instance_metadata", [False, True])
async def test_metadata_services_are_asked_for_credentials_only_on_request(
    s3_server: SeaweedFS, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, use_instance_metadata: bool
) -> None:
    import aiobotocore.credentials as aio_credentials

    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # belt and braces: never leave loopback
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    asked: list[str] = []

    async def fake_load(provider: Any) -> None:
        asked.append(provider.METHOD)

    monkeypatch.setattr(aio_credentials.AioInstanceMetadataProvider, "load", fake_load)
    monkeypatch.setattr(aio_credentials.AioContainerProvider, "load", fake_load)
    engine = S3ObjectStore(BUCKET, endpoint_url=s3_server.endpoint_url, use_instance_metadata=use_instance_metadata)
    async with engine:
        with pytest.raises(S3Error, match="credentials"):
            await engine.head("meta/x.json")
    assert sorted(asked) == (["container-role", "iam-role"] if use_instance_metadata else [])


async def test_missing_bucket_without_create_is_a_clear_error(s3_server: SeaweedFS) -> None:
    engine = make_store(s3_server, bucket="never-created", create_bucket=False)
    async with engine:
        with pytest.raises(S3Error) as info:
            await engine.put("meta/x.json", b"x")
        assert info.value.code == "NoSuchBucket"
        with pytest.raises(S3Error):
            await engine.get("meta/x.json")


def test_bad_settings_are_rejected() -> None:
    with pytest.raises(ValueError):
        S3ObjectStore(BUCKET, part_size=1 * MiB)
    with pytest.raises(ValueError):
        S3ObjectStore(BUCKET, max_attempts=0)
    with pytest.raises(ValueError):
        S3ObjectStore(BUCKET, list_page_size=1001)
    with pytest.raises(ValueError):
        S3ObjectStore(BUCKET, prefix="a//b")
