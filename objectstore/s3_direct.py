"""Signed S3 requests without botocore's request pipeline, for the small, frequent ones.

Every object-WAL write, manifest CAS, lease renewal and segment read is one PUT, GET or
HEAD, and every cluster round lists the broker registrations.  Through an aiobotocore
client each costs about 3 ms of CPU (parameter validation, serialisation, the event
hooks, response parsing), which on a 2-core machine is what bounds the object-WAL's
produce latency; botocore's SigV4 signer on an aiohttp request
costs about 1 ms (docs/performance.md).  So these three verbs, ListObjectsV2 and
DeleteObjects (every flush round deletes the WAL objects it made redundant: hundreds of
keys, about 4 ms of CPU through botocore, which showed in the object WAL's produce p99)
go out here: botocore still signs them (``S3SigV4Auth``) and supplies the credentials,
aiohttp carries them, and the standard library writes and parses the XML.  Large GETs,
signed here too, are received in worker threads (``objectstore/s3_threaded_get.py``).  Multipart
upload and bucket creation stay on aiobotocore.

An error answer is raised as botocore's ``ClientError`` with the S3 error code and HTTP
status, so the engine maps and retries it exactly as it does botocore's own.
"""

from __future__ import annotations

import base64
import hashlib
import inspect
import re
import ssl
import urllib.parse
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape

import aiohttp
import botocore.exceptions as boto_exc
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from multidict import CIMultiDictProxy
from yarl import URL

from objectstore.s3_threaded_get import POOL_BYTES, ThreadedGets

_ERROR_CODE = re.compile(rb"<Code>([^<]*)</Code>")
_ERROR_MESSAGE = re.compile(rb"<Message>([^<]*)</Message>")


_S3_XML = "{http://s3.amazonaws.com/doc/2006-03-01/}"


@dataclass(slots=True)
class ListedObject:
    key: str
    size: int
    etag: str


PREALLOCATE_FROM = 256 * 1024  # bodies this large (segment blocks) are read into one buffer
THREADED_GET_WORKERS = 8  # threads (each with its own connection) for large GETs: read-ahead keeps a few busy


@dataclass(slots=True)
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes | bytearray | memoryview  # large bodies arrive in a buffer of their own: read-only all the same


class DirectS3:
    """PUT, GET and HEAD of keys in one bucket, signed with SigV4 and sent over one aiohttp session."""

    def __init__(self, *, endpoint_url: str | None, bucket: str, region: str, path_style: bool,
                 credentials: Any, connect_timeout: float, read_timeout: float, max_connections: int,
                 ca_bundle: str | None = None, get_buffer_pool_bytes: int = POOL_BYTES) -> None:
        endpoint = urllib.parse.urlsplit(endpoint_url or f"https://s3.{region}.amazonaws.com")
        # Certificates are verified against the system's CAs, or only against ``ca_bundle`` if given.
        tls = ssl.create_default_context(cafile=ca_bundle) if endpoint.scheme == "https" else None
        if path_style:
            self._base = f"{endpoint.scheme}://{endpoint.netloc}{endpoint.path.rstrip('/')}/{_quote(bucket)}/"
        else:
            self._base = f"{endpoint.scheme}://{bucket}.{endpoint.netloc}{endpoint.path.rstrip('/')}/"
        self._region = region
        self._credentials = credentials
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max_connections, ssl=tls if tls is not None else True),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=read_timeout),
            auto_decompress=False,
            # As aiobotocore does: bytes exactly as stored (no transfer compression), no invented type.
            headers={"Accept-Encoding": "identity"},
            skip_auto_headers=("Content-Type",),
        )
        self._threaded = ThreadedGets(self._base, connect_timeout=connect_timeout, read_timeout=read_timeout,
                                      workers=min(max_connections, THREADED_GET_WORKERS), tls=tls,
                                      pool_bytes=get_buffer_pool_bytes)
        self._path = urllib.parse.urlsplit(self._base).path

    async def close(self) -> None:
        self._threaded.close()
        await self._session.close()

    async def _signed_headers(self, method: str, url: str, body: bytes, headers: dict[str, str],
                              payload_sha256: str | None = None) -> dict[str, str]:
        if self._credentials is None:
            raise boto_exc.NoCredentialsError()
        frozen = self._credentials.get_frozen_credentials()
        if inspect.isawaitable(frozen):  # aiobotocore's refreshable credentials
            frozen = await frozen
        if frozen is None or not frozen.access_key:
            raise boto_exc.NoCredentialsError()
        request = AWSRequest(method=method, url=url, data=body, headers=headers)
        if payload_sha256 is None:
            S3SigV4Auth(frozen, "s3", self._region).add_auth(request)
        else:
            _KnownPayloadAuth(frozen, "s3", self._region, payload_sha256).add_auth(request)
        return dict(request.headers.items())

    async def list_page(self, prefix: str, max_keys: int,
                        token: str | None = None) -> tuple[list[ListedObject], str | None]:
        """One ListObjectsV2 page of keys under ``prefix``: (objects, the token of the next page or None)."""
        params = {"list-type": "2", "prefix": prefix, "max-keys": str(max_keys), "encoding-type": "url"}
        if token is not None:
            params["continuation-token"] = token
        # SigV4 signs the query with its names and values sorted and encoded exactly like this.
        query = "&".join(f"{_quote_param(k)}={_quote_param(v)}" for k, v in sorted(params.items()))
        reply = await self.send("ListObjectsV2", "GET", "", query=query)
        try:
            root = ET.fromstring(reply.body)
            objects = [ListedObject(urllib.parse.unquote_plus(_text(item, "Key")), int(_text(item, "Size")),
                                    _text(item, "ETag"))
                       for item in root.iterfind(f"{_S3_XML}Contents")]
            truncated = _text(root, "IsTruncated").lower() == "true"
        except (ET.ParseError, ValueError) as exc:  # cut short on the way, most likely: worth another try
            raise aiohttp.ClientPayloadError(f"malformed ListObjectsV2 answer: {exc}") from None
        next_token = root.findtext(f"{_S3_XML}NextContinuationToken")
        return objects, next_token if truncated and next_token else None

    async def delete_objects(self, keys: list[str]) -> list[tuple[str, str, str]]:
        """One DeleteObjects request in quiet mode: the (key, code, message) of each key S3 failed to delete."""
        body = "".join(["<Delete><Quiet>true</Quiet>",
                        *(f"<Object><Key>{escape(key)}</Key></Object>" for key in keys), "</Delete>"]).encode()
        md5 = base64.b64encode(hashlib.md5(body).digest()).decode()  # noqa: S324 - S3 requires it here
        reply = await self.send("DeleteObjects", "POST", "", body=body, query="delete=",
                                headers={"Content-MD5": md5, "Content-Type": "application/xml"})
        try:
            root = ET.fromstring(reply.body)
        except ET.ParseError as exc:  # cut short on the way: sending the same keys again is harmless
            raise aiohttp.ClientPayloadError(f"malformed DeleteObjects answer: {exc}") from None
        return [(error.findtext(f"{_S3_XML}Key", ""), error.findtext(f"{_S3_XML}Code", ""),
                 error.findtext(f"{_S3_XML}Message", ""))
                for error in root.iterfind(f"{_S3_XML}Error")]

    async def send(self, operation: str, method: str, key: str, *, body: bytes = b"",
                   headers: dict[str, str] | None = None, query: str = "", payload_sha256: str | None = None) -> Reply:
        """One attempt; a non-2xx answer raises ClientError (``operation`` names it, as botocore would).

        ``payload_sha256``: the body's SHA-256 (hex), if the caller computed it already (off the event loop)."""
        url = self._base + _quote(key) + (f"?{query}" if query else "")
        signed = await self._signed_headers(method, url, body, headers or {}, payload_sha256)
        async with self._session.request(method, URL(url, encoded=True), data=body or None,
                                         headers=signed, allow_redirects=False) as resp:
            if resp.status >= 300:
                raise _client_error(operation, resp.status, await resp.read())
            if method == "GET" and resp.content_length is not None and resp.content_length >= PREALLOCATE_FROM:
                return Reply(resp.status, resp.headers, await _read_into_one_buffer(resp, resp.content_length))
            return Reply(resp.status, resp.headers, await resp.read())

    def recycle(self, body: object) -> None:
        """A large GET's buffer that nothing refers to any more: the next one of its size may reuse it."""
        self._threaded.recycle(body)

    async def get_large(self, key: str, headers: dict[str, str]) -> Reply:
        """One GET attempt whose answer is expected to be large (a range of PREALLOCATE_FROM bytes or more),
        received in a worker thread (objectstore/s3_threaded_get.py); errors as from :meth:`send`."""
        quoted = _quote(key)
        signed = await self._signed_headers("GET", self._base + quoted, b"", headers)
        status, reply_headers, body = await self._threaded.get(self._path + quoted, signed)
        if status >= 300:
            raise _client_error("GetObject", status, bytes(body))
        # A view, which compares and slices as bytes do (a map compares by identity); whoever keeps the
        # data can hand back the map it shows (``view.obj``) with :meth:`recycle`.
        return Reply(status, reply_headers, memoryview(body))


class _KnownPayloadAuth(S3SigV4Auth):
    """botocore's S3 SigV4 signer, given the body's SHA-256 instead of hashing the body itself."""

    def __init__(self, credentials: Any, service_name: str, region_name: str, payload_sha256: str) -> None:
        super().__init__(credentials, service_name, region_name)
        self._payload_sha256 = payload_sha256

    def payload(self, request: AWSRequest) -> str:
        if not self._should_sha256_sign_payload(request):
            return super().payload(request)  # UNSIGNED-PAYLOAD, as botocore decides
        return self._payload_sha256


async def _read_into_one_buffer(resp: aiohttp.ClientResponse, length: int) -> bytearray:
    """The body, copied once from the parser's pieces into a buffer of its announced size (aiohttp's own
    ``read`` joins the pieces twice)."""
    body = bytearray(length)
    view, pos = memoryview(body), 0
    while True:
        piece, _end_of_chunk = await resp.content.readchunk()
        if not piece:
            break
        if pos + len(piece) > length:
            raise aiohttp.ClientPayloadError(f"response body longer than its Content-Length {length}")
        view[pos: pos + len(piece)] = piece
        pos += len(piece)
    if pos != length:
        raise aiohttp.ClientPayloadError(f"response body cut short: {pos} of {length} bytes")
    return body


def _quote(key: str) -> str:
    return urllib.parse.quote(key, safe="/~")


def _quote_param(value: str) -> str:
    return urllib.parse.quote(value, safe="-_.~")


def _text(element: ET.Element, name: str) -> str:
    found = element.findtext(f"{_S3_XML}{name}")
    if found is None:
        raise ET.ParseError(f"S3 listing: no <{name}>")
    return found


def _client_error(operation: str, status: int, body: bytes) -> boto_exc.ClientError:
    code = _ERROR_CODE.search(body)
    message = _ERROR_MESSAGE.search(body)
    return boto_exc.ClientError(
        {"Error": {"Code": code.group(1).decode(errors="replace") if code else str(status),
                   "Message": message.group(1).decode(errors="replace") if message else ""},
         "ResponseMetadata": {"HTTPStatusCode": status}},
        operation,
    )
