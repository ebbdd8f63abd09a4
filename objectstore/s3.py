"""S3 engine of the object-store interface (AWS S3, MinIO, SeaweedFS), on aiobotocore.

Choices that the interface forces or that a reader would otherwise have to guess:

* **Single-object PUT, GET, HEAD and DELETE, listings and batch deletes skip
  botocore's request pipeline**: botocore signs them and aiohttp sends them
  (``objectstore/s3_direct.py``), at a third of the CPU per request.  Ranged GETs
  of 256 KiB or more (segment blocks) are received in worker threads instead
  (``objectstore/s3_threaded_get.py``), off the event loop.  Multipart
  uploads and bucket creation go through the aiobotocore client.

* **ETags never repeat.** S3's ETag of a plain PUT is the MD5 of the bytes, so writing the
  same bytes twice repeats it and If-Match would suffer ABA. With
  ``unique_etags=True`` (the default) every stored object is the caller's
  bytes followed by a 16-byte *stamp*: ``b"KEEL"`` and 12 random bytes drawn
  once per put. Reads, sizes and listings hide the stamp, so callers never see
  it; only tools that read the bucket directly do. ``unique_etags=False``
  stores the bytes verbatim (ETag = content MD5, ABA possible for identical
  bytes).
* **Retries are ours.** botocore's retries are off; every request is tried up
  to ``max_attempts`` times on 5xx, throttling (SlowDown, 429), S3's
  RequestTimeout, timeouts and broken connections, sleeping a jittered
  exponential backoff in between, and then raises :class:`TransientError`.
  Other 4xx (bad credentials, missing bucket, ...) raise :class:`S3Error` at once.
* **Ambiguous conditional puts.** A conditional put whose reply was lost
  (timeout, dropped connection, 5xx) may still have landed; its retry then
  loses the condition against our own write. So whenever a conditional put
  gets "precondition failed", the engine reads the object: if it holds
  exactly our bytes (stamp included, so nobody else can have written them),
  our write won and its ETag is returned. This costs losers one small GET.
  (It is done after every loss, not only after our own retries, because
  aiohttp re-sends a PUT by itself when a kept-alive connection drops.) If
  someone overwrote our landed write before we looked, we report
  PreconditionFailed: the caller re-reads and re-decides from newer state,
  which is safe. Without stamps there is no such check. (A timed-out attempt
  still running on the server can also land after we reported failure: as
  after any lost CAS, callers must re-read, never assume the old state.)
* "Precondition failed" is 412 PreconditionFailed, 409
  ConditionalRequestConflict, and (AWS, If-Match on a missing key) 404.
* ETags are returned without quotes; If-Match sends them quoted.
* Keys live under ``prefix + "/"`` when a prefix is set; ``list`` strips it.
  That prefix (or the whole bucket) belongs to Keel: an object without a
  stamp found there is reported as an error.
* Credentials: the ``access_key``/``secret_key`` given, else botocore's chain
  (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, shared config files). The
  EC2/ECS metadata services are asked only with ``use_instance_metadata=True``
  (instance roles on AWS), so that nothing probes them elsewhere.
* At most ``max_in_flight`` requests run at once; large plain puts use
  multipart upload (conditional puts never do: they are small documents).
* No flexible checksums (``when_required``): S3-compatible servers differ in
  their support for them, and every request still goes over TCP checksums.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import random
import re
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AsyncExitStack
from typing import Any, TypeVar

import aiohttp
import botocore.exceptions as boto_exc
from aiobotocore.session import get_session
from botocore.config import Config
from botocore.credentials import Credentials

from objectstore.base import (
    Data,
    NotFound,
    ObjectInfo,
    ObjectStore,
    ObjectStoreError,
    PreconditionFailed,
    TransientError,
    check_key,
    check_range,
)
from objectstore.s3_direct import PREALLOCATE_FROM, DirectS3
from objectstore.s3_threaded_get import POOL_BYTES

_T = TypeVar("_T")

MiB = 1024 * 1024
STAMP_MAGIC = b"KEEL"
STAMP_SIZE = 16
MIN_PART_SIZE = 5 * MiB  # S3's minimum for every part but the last
DELETE_BATCH = 1000  # S3's limit per DeleteObjects request
PARALLEL_PARTS = 4  # parts of one multipart upload in flight at once
# Bodies this large (segments; WAL objects under load) are stamped and hashed (Content-MD5, and the SHA-256
# that SigV4 signs) in a worker thread: for an 8 MiB segment that is ~20 ms the event loop would be held.
HASH_OFF_LOOP_FROM = 256 * 1024

_RETRIABLE_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests",
    "TooManyRequestsException", "RequestThrottled", "RequestTimeout", "RequestTimeoutException",
    "InternalError", "ServiceUnavailable", "OperationAborted",
})  # fmt: skip
_PRECONDITION_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
_NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    boto_exc.HTTPClientError,  # read timeouts, closed connections, broken response streams
    boto_exc.ConnectionError,  # connection refused, connect timeouts
    boto_exc.IncompleteReadError,
    aiohttp.ClientError,
    asyncio.TimeoutError,
    ConnectionError,
)
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


class S3Error(ObjectStoreError):
    """A request S3 refused for good (access denied, missing bucket, bad request): retrying cannot help."""

    def __init__(self, message: str, code: str = "", status: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


def _error_code(exc: boto_exc.ClientError) -> tuple[str, int]:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def _is_retriable(exc: BaseException) -> bool:
    if isinstance(exc, boto_exc.ClientError):
        code, status = _error_code(exc)
        return status >= 500 or status in (408, 429) or code in _RETRIABLE_CODES
    return isinstance(exc, _NETWORK_ERRORS) and not isinstance(exc, boto_exc.SSLError | aiohttp.ClientSSLError)


def _is_not_found(exc: boto_exc.ClientError) -> bool:
    code, status = _error_code(exc)
    return code != "NoSuchBucket" and (code in _NOT_FOUND_CODES or status == 404)


def _is_precondition_failure(exc: boto_exc.ClientError, *, cas: bool) -> bool:
    code, status = _error_code(exc)
    return code in _PRECONDITION_CODES or status == 412 or (cas and _is_not_found(exc))


def _unquote(etag: str) -> str:
    return etag.strip().strip('"')


class S3ObjectStore(ObjectStore):
    """The ObjectStore contract on one S3 bucket (optionally under a key prefix); see the module docstring."""

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        prefix: str = "",
        access_key: str | None = None,
        secret_key: str | None = None,
        path_style: bool = True,
        max_in_flight: int = 64,
        connect_timeout: float = 5,
        read_timeout: float = 30,
        max_attempts: int = 6,
        retry_base_delay: float = 0.1,
        retry_max_delay: float = 5.0,
        multipart_threshold: int = 16 * MiB,
        part_size: int = 8 * MiB,
        list_page_size: int = 1000,
        create_bucket: bool = True,
        unique_etags: bool = True,
        use_instance_metadata: bool = False,
        get_buffer_pool_bytes: int = POOL_BYTES,
    ) -> None:
        if max_attempts < 1 or max_in_flight < 1:
            raise ValueError("max_attempts and max_in_flight must be >= 1")
        if part_size < MIN_PART_SIZE or multipart_threshold < part_size:
            raise ValueError(f"need {MIN_PART_SIZE} <= part_size <= multipart_threshold")
        if not 1 <= list_page_size <= 1000:
            raise ValueError("list_page_size must be in 1..1000")
        prefix = prefix.strip("/")
        if prefix:
            check_key(prefix)
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self.region = region
        self.prefix = prefix
        self.max_attempts = max_attempts
        self.retry_base_delay = retry_base_delay
        self.retry_max_delay = retry_max_delay
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        self.list_page_size = list_page_size
        self.create_bucket = create_bucket
        self._root = f"{prefix}/" if prefix else ""
        self._stamp_size = STAMP_SIZE if unique_etags else 0
        self.use_instance_metadata = use_instance_metadata
        self._buffer_pool_bytes = get_buffer_pool_bytes  # large-GET buffers kept for reuse (recycle)
        self._credentials = {
            k: v for k, v in (("aws_access_key_id", access_key), ("aws_secret_access_key", secret_key)) if v
        }
        self._config = Config(
            region_name=region,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_pool_connections=max_in_flight,
            retries={"total_max_attempts": 1, "mode": "standard"},
            s3={"addressing_style": "path" if path_style else "virtual"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self._sem = asyncio.Semaphore(max_in_flight)
        self._start_lock = asyncio.Lock()
        self._stack: AsyncExitStack | None = None
        self._client: Any = None
        self._direct: DirectS3 | None = None

    # ---- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Open the client and create the bucket (if asked to). Operations call this on first use."""
        async with self._start_lock:
            if self._client is not None:
                return
            session = get_session()
            if not self.use_instance_metadata:
                resolver = session.get_component("credential_provider")
                for method in ("iam-role", "container-role"):
                    resolver.remove(method)
            stack = AsyncExitStack()
            try:
                client = await stack.enter_async_context(
                    session.create_client(
                        "s3", endpoint_url=self.endpoint_url, config=self._config, **self._credentials
                    )
                )
                if self.create_bucket:
                    await self._ensure_bucket(client)
                if self._credentials:
                    credentials: Any = Credentials(self._credentials.get("aws_access_key_id"),
                                                   self._credentials.get("aws_secret_access_key"))
                else:
                    credentials = await session.get_credentials()
                direct = DirectS3(
                    endpoint_url=self.endpoint_url, bucket=self.bucket, region=self.region,
                    path_style=self._config.s3["addressing_style"] == "path", credentials=credentials,
                    connect_timeout=self._config.connect_timeout, read_timeout=self._config.read_timeout,
                    max_connections=self._config.max_pool_connections,
                    # The CA bundle botocore verifies the endpoint with (AWS_CA_BUNDLE, ca_bundle in the
                    # AWS config file): a store with a private CA is trusted by every request or by none.
                    ca_bundle=session.get_config_variable("ca_bundle"),
                    get_buffer_pool_bytes=self._buffer_pool_bytes,
                )
                stack.push_async_callback(direct.close)
            except BaseException:
                await stack.aclose()
                raise
            self._stack, self._client, self._direct = stack, client, direct

    async def _ensure_bucket(self, client: Any) -> None:
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if self.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            await self._retrying(f"create bucket {self.bucket}", lambda: client.create_bucket(**kwargs))
        except boto_exc.ClientError as exc:
            code, _ = _error_code(exc)
            if code == "BucketAlreadyOwnedByYou":
                return
            if code != "BucketAlreadyExists":
                raise self._fatal(exc, f"create bucket {self.bucket}") from None
            # Exists, perhaps owned by someone else: fine if we may use it.
            try:
                await self._retrying(f"head bucket {self.bucket}", lambda: client.head_bucket(Bucket=self.bucket))
            except boto_exc.ClientError as head_exc:
                raise self._fatal(head_exc, f"bucket {self.bucket} exists but is not usable") from None

    async def close(self) -> None:
        stack, self._stack, self._client, self._direct = self._stack, None, None, None
        if stack is not None:
            await stack.aclose()

    async def _c(self) -> Any:
        if self._client is None:
            await self.start()
        return self._client

    async def _d(self) -> DirectS3:
        """The direct path for single-object PUT, GET and HEAD (objectstore/s3_direct.py)."""
        if self._direct is None:
            await self.start()
        assert self._direct is not None
        return self._direct

    # ---- retry machinery -----------------------------------------------------

    def _backoff(self, failures: int) -> float:
        ceiling = min(self.retry_max_delay, self.retry_base_delay * 2 ** (failures - 1))
        return random.uniform(ceiling / 2, ceiling)

    async def _retrying(self, what: str, attempt: Callable[[], Awaitable[_T]]) -> _T:
        """Run ``attempt`` under the in-flight bound, retrying transient failures.

        Non-retriable ClientErrors propagate unchanged for the caller to map.
        """
        for failures in range(1, self.max_attempts + 1):
            try:
                async with self._sem:
                    return await attempt()
            except Exception as exc:
                if not _is_retriable(exc):
                    if isinstance(exc, boto_exc.BotoCoreError):  # no credentials, bad endpoint, ...
                        raise S3Error(f"{what}: {exc}") from exc
                    raise
                if failures == self.max_attempts:
                    raise TransientError(f"{what}: gave up after {failures} attempts: {exc!r}") from exc
            await asyncio.sleep(self._backoff(failures))
        raise AssertionError("unreachable")

    def _fatal(self, exc: boto_exc.ClientError, what: str) -> S3Error:
        code, status = _error_code(exc)
        return S3Error(f"{what}: {status} {code}: {exc}", code, status)

    # ---- key and stamp helpers ----------------------------------------------------

    def _k(self, key: str) -> str:
        check_key(key)
        return self._root + key

    def _stamped(self, data: Data) -> bytes:
        if not self._stamp_size:
            return bytes(data)
        return b"".join((data, STAMP_MAGIC, os.urandom(self._stamp_size - len(STAMP_MAGIC))))

    async def _prepared(self, data: Data) -> tuple[bytes, str, str | None]:
        """The stamped body, its Content-MD5, and its SHA-256 (hex) if it was computed here; a large body
        is prepared in a worker thread (hashlib releases the GIL), a small one at once."""
        if len(data) < HASH_OFF_LOOP_FROM:
            body = self._stamped(data)
            return body, _content_md5(body), None  # the signer hashes it: cheaper than a thread hop
        return await asyncio.to_thread(self._prepare_now, data)

    def _prepare_now(self, data: Data) -> tuple[bytes, str, str]:
        body = self._stamped(data)
        return body, _content_md5(body), hashlib.sha256(body).hexdigest()

    def _size(self, key: str, stored_size: int) -> int:
        if stored_size < self._stamp_size:
            raise S3Error(f"{key}: object of {stored_size} bytes was not written by Keel (no stamp)")
        return stored_size - self._stamp_size

    def _unstamp(self, key: str, stored: bytes) -> bytes:
        if not self._stamp_size:
            return stored
        size = self._size(key, len(stored))
        if stored[size : size + len(STAMP_MAGIC)] != STAMP_MAGIC:
            raise S3Error(f"{key}: object was not written by Keel (no stamp)")
        return stored[:size]

    # ---- writes --------------------------------------------------------------------------

    async def put(self, key: str, data: Data) -> str:
        full = self._k(key)
        if len(data) + self._stamp_size > self.multipart_threshold:
            return await self._put_multipart(await self._c(), key, full, self._stamped(data))
        direct = await self._d()
        body, content_md5, payload_sha256 = await self._prepared(data)
        headers = {"Content-MD5": content_md5}

        async def once() -> str:
            reply = await direct.send("PutObject", "PUT", full, body=body, headers=headers,
                                      payload_sha256=payload_sha256)
            return _unquote(reply.headers["ETag"])

        try:
            return await self._retrying(f"put {key}", once)
        except boto_exc.ClientError as exc:
            raise self._fatal(exc, f"put {key}") from None

    async def put_if_absent(self, key: str, data: Data) -> str:
        return await self._conditional_put(key, data, {"If-None-Match": "*"})

    async def put_if_match(self, key: str, data: Data, etag: str) -> str:
        return await self._conditional_put(key, data, {"If-Match": f'"{_unquote(etag)}"'})

    async def _conditional_put(self, key: str, data: Data, condition: dict[str, str]) -> str:
        full = self._k(key)
        direct = await self._d()
        # One stamp for all attempts: a landed attempt is recognisable.
        body, content_md5, payload_sha256 = await self._prepared(data)
        headers = {"Content-MD5": content_md5, **condition}

        async def once() -> str:
            reply = await direct.send("PutObject", "PUT", full, body=body, headers=headers,
                                      payload_sha256=payload_sha256)
            return _unquote(reply.headers["ETag"])

        what = f"conditional put {key}"
        try:
            return await self._retrying(what, once)
        except boto_exc.ClientError as exc:
            if not _is_precondition_failure(exc, cas="If-Match" in condition):
                raise self._fatal(exc, what) from None
        # Always look, not only after our own retries: aiohttp silently re-sends a PUT
        # once when a kept-alive connection drops, so a lost reply may hide anywhere.
        if self._stamp_size:
            landed = await self._holds(key, full, body)
            if landed is not None:
                return landed
        raise PreconditionFailed(f"{key}: condition {condition} does not hold")

    async def _holds(self, key: str, full: str, body: bytes) -> str | None:
        """The ETag of ``key`` if it holds exactly ``body`` (stamp included), else None."""
        try:
            stored, etag = await self._get_stored(key, full)
        except NotFound:
            return None
        return etag if stored == body else None

    async def _put_multipart(self, client: Any, key: str, full: str, body: bytes) -> str:
        what = f"multipart put {key}"
        try:
            created = await self._retrying(
                what, lambda: client.create_multipart_upload(Bucket=self.bucket, Key=full)
            )
        except boto_exc.ClientError as exc:
            raise self._fatal(exc, what) from None
        upload_id = created["UploadId"]
        view = memoryview(body)
        parts_sem = asyncio.Semaphore(PARALLEL_PARTS)

        async def upload(number: int, offset: int) -> dict[str, Any]:
            chunk = bytes(view[offset : offset + self.part_size])
            async with parts_sem:
                resp = await self._retrying(
                    f"{what} part {number}",
                    lambda: client.upload_part(
                        Bucket=self.bucket, Key=full, UploadId=upload_id, PartNumber=number, Body=chunk
                    ),
                )
            return {"PartNumber": number, "ETag": resp["ETag"]}

        tasks = [
            asyncio.ensure_future(upload(n, off))
            for n, off in enumerate(range(0, len(body), self.part_size), start=1)
        ]
        try:
            parts = await asyncio.gather(*tasks)
            resp = await self._retrying(
                what,
                lambda: client.complete_multipart_upload(
                    Bucket=self.bucket, Key=full, UploadId=upload_id, MultipartUpload={"Parts": parts}
                ),
            )
        except BaseException as exc:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._abort_multipart(client, full, upload_id)
            if isinstance(exc, boto_exc.ClientError):
                raise self._fatal(exc, what) from None
            raise
        return _unquote(resp["ETag"])

    async def _abort_multipart(self, client: Any, full: str, upload_id: str) -> None:
        try:
            async with self._sem:
                await client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)
        except Exception:  # best effort: a bucket lifecycle rule cleans up what is left
            pass

    # ---- reads ---------------------------------------------------------------------------

    async def _get_stored(self, key: str, full: str) -> tuple[bytes, str]:
        """The whole stored object (stamp included) and its ETag."""
        direct = await self._d()

        async def once() -> tuple[bytes, str]:
            reply = await direct.send("GetObject", "GET", full)
            return reply.body, _unquote(reply.headers["ETag"])

        try:
            return await self._retrying(f"get {key}", once)
        except boto_exc.ClientError as exc:
            if _is_not_found(exc):
                raise NotFound(key) from None
            raise self._fatal(exc, f"get {key}") from None

    async def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        full = self._k(key)
        check_range(start, end)
        if start == 0 and end is None:
            return (await self.get_with_etag(key))[0]
        if end == start:
            await self.head(key)  # raises NotFound for a missing key, as the contract asks
            return b""
        direct = await self._d()
        headers = {"Range": f"bytes={start}-" if end is None else f"bytes={start}-{end - 1}"}

        large = end is not None and end - start >= PREALLOCATE_FROM

        async def once() -> tuple[bytes, int]:
            if large:
                reply = await direct.get_large(full, headers)
            else:
                reply = await direct.send("GetObject", "GET", full, headers=headers)
            chunk = reply.body
            match = _CONTENT_RANGE.fullmatch(reply.headers.get("Content-Range", ""))
            if match is None:  # the server ignored Range and sent everything
                return chunk[start:], len(chunk)
            return chunk, int(match.group(3))

        try:
            chunk, stored_size = await self._retrying(f"get {key} [{start}:{end}]", once)
        except boto_exc.ClientError as exc:
            if _is_not_found(exc):
                raise NotFound(key) from None
            if _error_code(exc)[1] == 416:  # start at or past the stored size
                return b""
            raise self._fatal(exc, f"get {key}") from None
        size = self._size(key, stored_size)
        stop = size if end is None else min(end, size)
        wanted = max(0, stop - start)
        return chunk if len(chunk) == wanted else chunk[:wanted]  # a slice of a large body would copy it

    @property
    def buffer_pool_bytes(self) -> int:
        return self._buffer_pool_bytes

    def recycle(self, data: object) -> None:
        if self._direct is not None:
            self._direct.recycle(data)

    async def get_with_etag(self, key: str) -> tuple[bytes, str]:
        stored, etag = await self._get_stored(key, self._k(key))
        return self._unstamp(key, stored), etag

    async def head(self, key: str) -> ObjectInfo:
        full = self._k(key)
        direct = await self._d()
        try:
            reply = await self._retrying(f"head {key}", lambda: direct.send("HeadObject", "HEAD", full))
        except boto_exc.ClientError as exc:
            if _is_not_found(exc):
                raise NotFound(key) from None
            raise self._fatal(exc, f"head {key}") from None
        return ObjectInfo(key, self._size(key, int(reply.headers["Content-Length"])), _unquote(reply.headers["ETag"]))

    async def list(self, prefix: str) -> list[ObjectInfo]:
        direct = await self._d()
        found: list[ObjectInfo] = []
        token: str | None = None
        while True:
            try:
                page, token = await self._retrying(
                    f"list {prefix!r}",
                    lambda t=token: direct.list_page(self._root + prefix, self.list_page_size, t))
            except boto_exc.ClientError as exc:
                raise self._fatal(exc, f"list {prefix!r}") from None
            for item in page:
                # A PUT torn by a crash can leave an object shorter than the stamp: list it as empty,
                # and let a read of it report the damage.
                found.append(ObjectInfo(item.key[len(self._root):], max(0, item.size - self._stamp_size),
                                        _unquote(item.etag)))
            if token is None:
                break
        found.sort(key=lambda info: info.key)
        return found

    # ---- deletes ---------------------------------------------------------------------------

    async def delete(self, key: str) -> None:
        full = self._k(key)
        direct = await self._d()
        try:
            await self._retrying(f"delete {key}", lambda: direct.send("DeleteObject", "DELETE", full))
        except boto_exc.ClientError as exc:
            if not _is_not_found(exc):
                raise self._fatal(exc, f"delete {key}") from None

    async def delete_many(self, keys: Iterable[str]) -> None:
        fulls = [self._k(key) for key in keys]  # validate every key before deleting any
        if not fulls:
            return
        direct = await self._d()
        for first in range(0, len(fulls), DELETE_BATCH):
            await self._delete_batch(direct, fulls[first : first + DELETE_BATCH])

    async def _delete_batch(self, direct: DirectS3, fulls: list[str]) -> None:
        """DeleteObjects, re-sending the keys S3 reports as failed while their errors are transient."""
        pending = fulls

        async def once() -> None:
            nonlocal pending
            errors = [e for e in await direct.delete_objects(pending) if e[1] not in _NOT_FOUND_CODES]
            if not errors:
                return
            pending = [key for key, _code, _message in errors]
            _key, code, message = errors[0]
            raise boto_exc.ClientError(
                {"Error": {"Code": code, "Message": message},
                 "ResponseMetadata": {"HTTPStatusCode": 500 if code in _RETRIABLE_CODES else 400}},
                "DeleteObjects",
            )  # fmt: skip

        try:
            await self._retrying(f"delete {len(fulls)} keys", once)
        except boto_exc.ClientError as exc:
            raise self._fatal(exc, f"delete {len(pending)} keys, e.g. {pending[0]!r}") from None


def _content_md5(body: bytes) -> str:
    """Content-MD5 makes the server reject a PUT whose body was cut short (a crashed writer), instead
    of storing the truncated (on SeaweedFS: empty) object."""
    return base64.b64encode(hashlib.md5(body).digest()).decode()  # noqa: S324 - integrity, not security
