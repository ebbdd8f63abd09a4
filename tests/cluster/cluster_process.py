"""A cluster of ``keel serve`` processes over one shared object store, for multi-broker tests.

Brokers form a cluster when they share an object store: a local directory
(``--objects-dir``) or an S3 bucket and prefix.  ``Cluster`` starts N brokers
with distinct ids, ports and data directories on such a store, and lets a test
or the chaos runner do to each of them what happens to real servers: kill -9,
SIGTERM, SIGSTOP/SIGCONT, restart, or add a new one.  It also reads the
cluster's shared state (assignments, manifests, segment objects) straight from
the store, and asks any broker for Metadata on the raw protocol, so tests can
check who leads what at which epoch without a client library in between.

Every process it starts is SIGCONTed and SIGKILLed by :meth:`Cluster.close`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

_TESTS = Path(__file__).resolve().parents[1]
if str(_TESTS) not in sys.path:  # where pytest puts it; `python -m tests.chaos.run` needs it too
    sys.path.insert(0, str(_TESTS))

from integration.broker_process import HOST, BrokerProcess, _recv_exact  # noqa: E402
from objectstore.base import NotFound, ObjectStore  # noqa: E402
from protocol.framing import RequestHeader, encode_request  # noqa: E402
from protocol.schema import request_codec, response_codec  # noqa: E402

METADATA_KEY = 3
METADATA_VERSION = 12
FIRST_BROKER_ID = 1


# ---- the raw protocol ------------------------------------------------------------------------


class RawConnection:
    """One Kafka connection on which requests are sent and their responses read separately, so a test
    can queue a request at a frozen broker and read the answer after it resumes."""

    def __init__(self, address: tuple[str, int], timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(address, timeout=timeout)
        self._next_id = 100
        self._sent: list[tuple[int, int, int]] = []  # (correlation id, api key, version), in order

    def send(self, api_key: int, version: int, body: Mapping[str, Any]) -> int:
        request = request_codec(api_key, version)
        self._next_id += 1
        frame = encode_request(RequestHeader(api_key, version, self._next_id, "keel-cluster-tests"),
                               request.flexible, request.encode(dict(body)))
        self.sock.sendall(frame)
        self._sent.append((self._next_id, api_key, version))
        return self._next_id

    def receive(self, timeout: float | None = None) -> dict[str, Any]:
        """The response to the oldest request not yet answered."""
        correlation_id, api_key, version = self._sent.pop(0)
        if timeout is not None:
            self.sock.settimeout(timeout)
        (size,) = struct.unpack(">i", _recv_exact(self.sock, 4))
        payload = _recv_exact(self.sock, size)
        (got,) = struct.unpack_from(">i", payload)
        if got != correlation_id:
            raise ConnectionError(f"correlation id {got} != {correlation_id}")
        response = response_codec(api_key, version)
        pos = 4 + (1 if response.flexible else 0)  # flexible response header: one empty tagged-field byte
        return response.decode(memoryview(payload)[pos:])

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def kafka_call(address: tuple[str, int], api_key: int, version: int, body: Mapping[str, Any],
               timeout: float = 5.0) -> dict[str, Any]:
    """One request encoded with Keel's own schema codecs; returns the decoded response body."""
    with RawConnection(address, timeout) as conn:
        conn.send(api_key, version, body)
        return conn.receive()


PRODUCE_KEY = 0
PRODUCE_VERSION = 9


def produce_body(topic: str, partition: int, batch: bytes, acks: int = -1, timeout_ms: int = 10_000) -> dict[str, Any]:
    """A Produce (v9) request body carrying one record batch for one partition."""
    return {"transactional_id": None, "acks": acks, "timeout_ms": timeout_ms,
            "topic_data": [{"name": topic, "partition_data": [{"index": partition, "records": batch}]}]}


def produce_result(response: Mapping[str, Any]) -> tuple[int, int]:
    """(error code, base offset) of the single partition in a Produce response."""
    part = response["responses"][0]["partition_responses"][0]
    return part["error_code"], part["base_offset"]


@dataclass(frozen=True)
class PartitionLeader:
    leader: int
    epoch: int
    error_code: int


def metadata(address: tuple[str, int], topics: Sequence[str] | None = None) -> dict[str, Any]:
    """Metadata v12 (all topics when ``topics`` is None), never auto-creating anything."""
    body = {"topics": None if topics is None else [{"name": t, "topic_id": b"\0" * 16} for t in topics],
            "allow_auto_topic_creation": False, "include_topic_authorized_operations": False}
    return kafka_call(address, METADATA_KEY, METADATA_VERSION, body)


def partition_leaders(address: tuple[str, int], topic: str) -> dict[int, PartitionLeader]:
    """{partition: (leader, leader epoch, error)} as the broker at ``address`` sees it."""
    response = metadata(address, [topic])
    for t in response["topics"]:
        if t["name"] == topic:
            return {p["partition_index"]: PartitionLeader(p["leader_id"], p["leader_epoch"], p["error_code"])
                    for p in t["partitions"]}
    return {}


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.05,
               what: str = "condition") -> Any:
    """Polls ``predicate`` until it returns something truthy; raises TimeoutError after ``timeout`` s.
    Exceptions from the predicate count as "not yet"."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - a broker that is down or busy is "not yet"
            last = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not reached in {timeout:.1f} s (last error: {last!r})")
        time.sleep(interval)


# ---- the shared store ------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Target:
    """Where an S3 cluster lives, and how to reach it (``endpoint`` may be a fault proxy)."""

    endpoint: str
    bucket: str
    prefix: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_REGION": self.region, "AWS_DEFAULT_REGION": self.region}


class StoreView:
    """Read-only access to the cluster's objects, from the test process (one short event loop per call)."""

    def __init__(self, objects_dir: Path | None, s3: S3Target | None) -> None:
        self.objects_dir = objects_dir
        self.s3 = s3

    def _open(self) -> ObjectStore:
        if self.s3 is None:
            from objectstore.localfs import LocalFSObjectStore  # noqa: PLC0415

            assert self.objects_dir is not None
            return LocalFSObjectStore(self.objects_dir)
        from objectstore.s3 import S3ObjectStore  # noqa: PLC0415 - aiobotocore only for S3 clusters

        return S3ObjectStore(self.s3.bucket, endpoint_url=self.s3.endpoint, region=self.s3.region,
                             prefix=self.s3.prefix, access_key=self.s3.access_key,
                             secret_key=self.s3.secret_key, read_timeout=20)

    def _run(self, work: Callable[[ObjectStore], Any]) -> Any:
        async def go() -> Any:
            store = self._open()
            try:
                return await work(store)
            finally:
                await store.close()

        return asyncio.run(go())

    def list(self, prefix: str) -> dict[str, int]:
        """{key: size} of every object under ``prefix``."""
        async def work(store: ObjectStore) -> dict[str, int]:
            return {info.key: info.size for info in await store.list(prefix)}

        return self._run(work)

    def get_json(self, key: str) -> Any:
        """The decoded JSON object at ``key``; None when it does not exist."""
        async def work(store: ObjectStore) -> Any:
            try:
                return json.loads(await store.get(key))
            except NotFound:
                return None

        return self._run(work)

    def snapshot(self, prefix: str, keys: Iterable[str]) -> tuple[dict[str, int], dict[str, Any]]:
        """In one go: ({key: size} under ``prefix``, {key: decoded JSON or None} for ``keys``)."""
        async def work(store: ObjectStore) -> tuple[dict[str, int], dict[str, Any]]:
            listing = {info.key: info.size for info in await store.list(prefix)}
            documents: dict[str, Any] = {}
            for key in keys:
                try:
                    documents[key] = json.loads(await store.get(key))
                except NotFound:
                    documents[key] = None
            return listing, documents

        return self._run(work)

    def segments(self) -> dict[str, int]:
        """{key: size} of every segment object (``data/...``)."""
        return self.list("data/")

    def assignments(self) -> dict[str, Any]:
        return self.get_json("meta/assignments.json") or {"version": 0, "partitions": {}}

    def topic(self, name: str) -> dict[str, Any] | None:
        return self.get_json(f"meta/topics/{name}.json")

    def manifest(self, topic_id: str, partition: int) -> dict[str, Any] | None:
        return self.get_json(f"meta/partitions/{topic_id}/{partition}.json")


# ---- the cluster -----------------------------------------------------------------------------


@dataclass
class Member:
    broker_id: int
    process: BrokerProcess
    frozen: bool = False
    removed: bool = False  # stopped on purpose and not to be restarted

    @property
    def address(self) -> tuple[str, int]:
        return self.process.address


@dataclass
class Cluster:
    """N brokers (ids 1..N) on one shared store: a local directory, or an S3 bucket/prefix.

    ``wal`` is ``file`` (each broker's WAL in its data directory, which the
    others can read on this machine) or ``object`` (WAL objects in the store).
    """

    base_dir: Path
    s3: S3Target | None = None
    wal: str = "file"
    lease_ms: int = 1000
    extra_args: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    log_level: str = "INFO"
    members: dict[int, Member] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.base_dir = Path(self.base_dir)
        self.objects_dir = self.base_dir / "objects"
        self.store = StoreView(self.objects_dir if self.s3 is None else None, self.s3)

    # -- membership ----------------------------------------------------------------------

    def _new_process(self, broker_id: int) -> BrokerProcess:
        home = self.base_dir / f"broker{broker_id}"
        if self.s3 is None:
            storage = ["--objects-dir", str(self.objects_dir)]
        else:
            storage = ["--s3-endpoint", self.s3.endpoint, "--bucket", self.s3.bucket,
                       "--prefix", self.s3.prefix, "--region", self.s3.region]
        args = ["--broker-id", str(broker_id), *storage, "--wal", self.wal, "--lease-ms", str(self.lease_ms),
                "--log-level", self.log_level, *self.extra_args]
        env = dict(self.env)
        if self.s3 is not None:
            env.update(self.s3.env())
        return BrokerProcess(home / "data", extra_args=args, env=env, log_path=home / "broker.log",
                             start_timeout=60.0)

    def start(self, count: int) -> Cluster:
        """Starts brokers 1..count (in parallel) and waits until every one answers."""
        self.objects_dir.mkdir(parents=True, exist_ok=True)
        ids = [FIRST_BROKER_ID + i for i in range(count)]
        for broker_id in ids:
            self.members[broker_id] = Member(broker_id, self._new_process(broker_id))
        self._start_all([self.members[i] for i in ids])
        return self

    def _start_all(self, members: Iterable[Member]) -> None:
        members = list(members)
        with ThreadPoolExecutor(max_workers=max(1, len(members))) as pool:
            for future in [pool.submit(m.process.start) for m in members]:
                future.result()

    def add(self) -> Member:
        """Starts one more broker with the next unused id."""
        broker_id = max(self.members, default=FIRST_BROKER_ID - 1) + 1
        member = Member(broker_id, self._new_process(broker_id))
        self.members[broker_id] = member
        member.process.start()
        return member

    def __getitem__(self, broker_id: int) -> Member:
        return self.members[broker_id]

    def running(self) -> list[Member]:
        return [m for m in self.members.values() if m.process.is_running()]

    def serving(self) -> list[Member]:
        """Running and not frozen: brokers that can answer."""
        return [m for m in self.running() if not m.frozen]

    @property
    def bootstrap(self) -> str:
        """Every broker that is running, as a client's ``bootstrap.servers``."""
        members = self.serving() or list(self.members.values())
        return ",".join(m.process.bootstrap for m in members)

    # -- faults --------------------------------------------------------------------------

    def kill(self, broker_id: int) -> None:
        """kill -9."""
        member = self.members[broker_id]
        if member.frozen:
            self.sigcont(broker_id)
        member.process.kill()

    def stop(self, broker_id: int, timeout: float = 30.0) -> int | None:
        """SIGTERM (graceful: hands partitions over), SIGKILL after ``timeout`` s."""
        member = self.members[broker_id]
        if member.frozen:
            self.sigcont(broker_id)
        return member.process.stop(timeout)

    def remove(self, broker_id: int, timeout: float = 30.0) -> int | None:
        """Graceful stop of a broker that is not coming back."""
        self.members[broker_id].removed = True
        return self.stop(broker_id, timeout)

    def sigstop(self, broker_id: int) -> None:
        member = self.members[broker_id]
        assert member.process.pid is not None
        os.kill(member.process.pid, signal.SIGSTOP)
        member.frozen = True

    def sigcont(self, broker_id: int) -> None:
        member = self.members[broker_id]
        if member.process.pid is not None and member.process.is_running():
            os.kill(member.process.pid, signal.SIGCONT)
        member.frozen = False

    def restart(self, broker_id: int) -> Member:
        """Starts a stopped or killed broker again on its port and data directory (kill -9 first if needed)."""
        member = self.members[broker_id]
        if member.process.is_running():
            self.kill(broker_id)
        member.removed = False
        member.process.start()
        return member

    # -- observing -----------------------------------------------------------------------

    def any_address(self) -> tuple[str, int]:
        serving = self.serving()
        if not serving:
            raise RuntimeError("no broker is serving")
        return serving[0].address

    def leaders(self, topic: str, via: int | None = None) -> dict[int, PartitionLeader]:
        """{partition: leader} from Metadata, asked of broker ``via`` (default: any serving broker)."""
        address = self.members[via].address if via is not None else self.any_address()
        return partition_leaders(address, topic)

    def live_broker_ids(self, via: int | None = None) -> set[int]:
        address = self.members[via].address if via is not None else self.any_address()
        return {b["node_id"] for b in metadata(address, [])["brokers"]}

    def wait_for_brokers(self, ids: Iterable[int], timeout: float = 30.0) -> None:
        """Until Metadata from every serving broker lists exactly ``ids``."""
        want = set(ids)
        wait_until(lambda: all(self.live_broker_ids(m.broker_id) == want for m in self.serving()), timeout,
                   what=f"brokers {sorted(want)} registered")

    def wait_for_leaders(self, topic: str, partitions: int, timeout: float = 30.0,
                         allowed: Iterable[int] | None = None) -> dict[int, PartitionLeader]:
        """Until every partition has a leader among ``allowed`` (default: serving brokers), and every
        serving broker agrees; returns the leaders."""
        def settled() -> dict[int, PartitionLeader] | None:
            ok = set(allowed) if allowed is not None else {m.broker_id for m in self.serving()}
            seen = None
            for m in self.serving():
                leaders = self.leaders(topic, via=m.broker_id)
                if len(leaders) != partitions or any(p.error_code or p.leader not in ok for p in leaders.values()):
                    return None
                if seen is not None and leaders != seen:
                    return None
                seen = leaders
            return seen

        return wait_until(settled, timeout, what=f"leaders of {topic} settled")

    def log_tails(self, max_bytes: int = 6000) -> str:
        return "\n".join(m.process.log_tail(max_bytes) for m in self.members.values())

    # -- cleanup -------------------------------------------------------------------------

    def close(self) -> None:
        """SIGCONT and SIGKILL every broker this cluster started."""
        for member in self.members.values():
            with contextlib.suppress(OSError):
                if member.frozen:
                    self.sigcont(member.broker_id)
            member.process.kill()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


__all__ = ["HOST", "PRODUCE_KEY", "PRODUCE_VERSION", "Cluster", "Member", "PartitionLeader", "RawConnection",
           "S3Target", "StoreView", "kafka_call", "metadata", "partition_leaders", "produce_body", "produce_result",
           "wait_until"]
