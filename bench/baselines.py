"""The floors each broker figure is compared with, measured in the same run.

A latency or throughput number means little alone: it depends on the disk,
the CPU and the client library.  So every run also measures what the broker
cannot beat on this machine: how long the disk takes to make 1 KiB durable
(the file WAL pays this on every acknowledged produce), and what the same
client workload achieves against librdkafka's in-memory mock cluster (no
storage, no Python: the client-side ceiling).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from types import TracebackType

from confluent_kafka import KafkaException, Producer


def fsync_latencies(directory: Path, iterations: int, size: int = 1024) -> list[float]:
    """Seconds per ``write(size bytes) + fdatasync`` appended to a fresh file in ``directory``.

    Appending (rather than overwriting) matches what a WAL does, so the file
    size, and with it some file-system metadata, changes on every sync.
    """
    directory.mkdir(parents=True, exist_ok=True)
    fd, path = tempfile.mkstemp(prefix="fsync-probe-", dir=directory)
    sync = getattr(os, "fdatasync", os.fsync)
    block = os.urandom(size)
    samples = []
    try:
        for _ in range(iterations):
            start = time.perf_counter()
            os.write(fd, block)
            sync(fd)
            samples.append(time.perf_counter() - start)
    finally:
        os.close(fd)
        os.unlink(path)
    return samples


class MockUnavailable(RuntimeError):
    """librdkafka's mock cluster could not be started; the message says why."""


class MockCluster:
    """librdkafka's in-process mock cluster, reachable over TCP on 127.0.0.1.

    The cluster lives inside the client that created it (``test.mock.num.brokers``),
    so this object keeps that producer open; other clients connect to
    :attr:`bootstrap` like to any broker.  The mock does not implement
    CreateTopics: topics are auto-created on first metadata request with
    librdkafka's default partition count, and it keeps only the most recent
    few thousand records of each partition.
    """

    def __init__(self) -> None:
        try:
            self._owner = Producer({"test.mock.num.brokers": 1, "log_level": 3})
            metadata = self._owner.list_topics(timeout=10)
        except (KafkaException, ValueError, TypeError) as exc:
            raise MockUnavailable(f"librdkafka mock cluster did not start: {exc}") from exc
        if not metadata.brokers:
            raise MockUnavailable("librdkafka mock cluster reports no brokers")
        broker = next(iter(metadata.brokers.values()))
        self.bootstrap = f"{broker.host}:{broker.port}"

    def close(self) -> None:
        self._owner.flush(5)
        del self._owner

    def __enter__(self) -> MockCluster:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
