"""S3 over TLS: the requests Keel sends itself (objectstore/s3_direct.py, and the large GETs it
receives in worker threads) verify the endpoint's certificate against the CA bundle botocore
would use (AWS_CA_BUNDLE), so a store with a private CA works for every request, and a
certificate nothing vouches for fails every request instead of being trusted by some."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import trustme
from botocore.credentials import Credentials

from objectstore.s3 import S3ObjectStore
from objectstore.s3_direct import PREALLOCATE_FROM, DirectS3
from objectstore.s3_threaded_get import ThreadedGets

LARGE = os.urandom(PREALLOCATE_FROM + 12_345)  # received in a worker thread, into a map
SMALL = b"manifest"


@contextlib.asynccontextmanager
async def _tls_store(tmp_path: Path) -> AsyncIterator[tuple[str, str]]:
    """A server on loopback with a certificate from a CA of its own that answers every GET of a key
    ending in ``large`` with LARGE, others with SMALL: (endpoint URL, path of the CA's bundle)."""
    ca = trustme.CA()
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(served)
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            while True:
                request = await reader.readuntil(b"\r\n\r\n")
                body = LARGE if request.split(b" ", 2)[1].endswith(b"large") else SMALL
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=served)
    try:
        yield f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}", str(bundle)
    finally:
        server.close()
        await server.wait_closed()


def _direct(endpoint: str, ca_bundle: str | None) -> DirectS3:
    return DirectS3(endpoint_url=endpoint, bucket="b", region="us-east-1", path_style=True,
                    credentials=Credentials("key", "secret"), connect_timeout=2, read_timeout=2,
                    max_connections=4, ca_bundle=ca_bundle)


async def test_a_threaded_get_over_tls_receives_the_whole_body(tmp_path: Path) -> None:
    async with _tls_store(tmp_path) as (endpoint, bundle):
        gets = ThreadedGets(endpoint + "/b/", connect_timeout=2, read_timeout=2, workers=2,
                            tls=ssl.create_default_context(cafile=bundle))
        try:
            for _ in range(2):  # the second on the kept-alive TLS connection
                status, _headers, body = await gets.get("/b/large", {})
                assert (status, bytes(body)) == (200, LARGE)
        finally:
            gets.close()


async def test_the_engine_trusts_the_ca_bundle_for_small_and_large_requests(tmp_path: Path) -> None:
    async with _tls_store(tmp_path) as (endpoint, bundle):
        direct = _direct(endpoint, bundle)
        try:
            assert (await direct.send("GetObject", "GET", "manifest")).body == SMALL  # aiohttp
            assert (await direct.get_large("large", {})).body == LARGE  # a worker thread
        finally:
            await direct.close()


async def test_without_the_ca_bundle_every_request_fails_verification(tmp_path: Path) -> None:
    async with _tls_store(tmp_path) as (endpoint, _bundle):
        direct = _direct(endpoint, None)  # the system's CAs know nothing of this one
        try:
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await direct.send("GetObject", "GET", "manifest")
            with pytest.raises(ssl.SSLCertVerificationError):
                await direct.get_large("large", {})
        finally:
            await direct.close()


async def test_the_engine_takes_the_ca_bundle_from_aws_ca_bundle(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    async with _tls_store(tmp_path) as (endpoint, bundle):
        monkeypatch.setenv("AWS_CA_BUNDLE", bundle)
        store = S3ObjectStore("b", endpoint_url=endpoint, access_key="key", secret_key="secret",
                              create_bucket=False, unique_etags=False, max_attempts=1)
        try:
            assert await store.get("large", 0, len(LARGE)) == LARGE
        finally:
            await store.close()
