"""Run a real ``keel`` broker as a child process for integration tests.

Integration tests must exercise the broker exactly as users run it: a separate
process, a TCP port, a data directory on disk, and signals (SIGKILL, SIGTERM)
that really end it. This module starts such a process, waits until it answers
the Kafka protocol, and offers a few raw-wire probes (ApiVersions, Fetch) that
let tests check what is on the wire without going through a client library.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


# --- raw Kafka wire helpers (request header v1, non-flexible versions only) ---


def _kstring(value: str) -> bytes:
    raw = value.encode()
    return struct.pack(">h", len(raw)) + raw


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def request_frame(api_key: int, version: int, body: bytes, correlation_id: int = 1) -> bytes:
    """A size-prefixed request with header v1 (client id "keel-tests")."""
    payload = struct.pack(">hhi", api_key, version, correlation_id) + _kstring("keel-tests") + body
    return struct.pack(">i", len(payload)) + payload


def kafka_request(address: tuple[str, int], api_key: int, version: int, body: bytes,
                  correlation_id: int = 1, timeout: float = 5.0) -> bytes:
    """Send one request and return the response body (after the correlation id)."""
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(request_frame(api_key, version, body, correlation_id))
        (size,) = struct.unpack(">i", _recv_exact(sock, 4))
        if size < 4:
            raise ConnectionError(f"response frame too short: {size}")
        frame = _recv_exact(sock, size)
    (got_cid,) = struct.unpack_from(">i", frame)
    if got_cid != correlation_id:
        raise ConnectionError(f"correlation id {got_cid} != {correlation_id}")
    return frame[4:]


def api_versions_v0(address: tuple[str, int], timeout: float = 2.0) -> dict[int, tuple[int, int]]:
    """ApiVersions v0: {api_key: (min_version, max_version)}; raises on a non-zero error code."""
    body = kafka_request(address, 18, 0, b"", correlation_id=0x4B45454C, timeout=timeout)
    error_code, count = struct.unpack_from(">hi", body)
    if error_code != 0:
        raise ConnectionError(f"ApiVersions v0 error code {error_code}")
    ranges = {}
    for i in range(count):
        key, lo, hi = struct.unpack_from(">hhh", body, 6 + 6 * i)
        ranges[key] = (lo, hi)
    return ranges


@dataclass(frozen=True)
class BatchInfo:
    """The header fields of one RecordBatch as the broker returned it."""

    base_offset: int
    last_offset_delta: int
    magic: int
    attributes: int
    producer_id: int
    record_count: int

    @property
    def compression(self) -> int:
        """0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd."""
        return self.attributes & 0x7


@dataclass(frozen=True)
class FetchedPartition:
    error_code: int
    high_watermark: int
    batches: list[BatchInfo]


def _parse_batches(records: bytes) -> list[BatchInfo]:
    out = []
    pos = 0
    while pos + 61 <= len(records):
        base_offset, batch_length = struct.unpack_from(">qi", records, pos)
        end = pos + 12 + batch_length
        if end > len(records):
            break  # a trailing partial batch is allowed by the protocol
        magic = records[pos + 16]
        attributes, last_offset_delta = struct.unpack_from(">hi", records, pos + 21)
        (producer_id,) = struct.unpack_from(">q", records, pos + 43)
        (record_count,) = struct.unpack_from(">i", records, pos + 57)
        out.append(BatchInfo(base_offset, last_offset_delta, magic, attributes, producer_id, record_count))
        pos = end
    return out


def fetch_v4_body(topic: str, partition: int, offset: int, max_bytes: int = 8 * 1024 * 1024,
                  max_wait_ms: int = 100) -> bytes:
    """The body of a Fetch v4 for one partition (replica -1, min_bytes 1, read uncommitted)."""
    body = struct.pack(">iiiib", -1, max_wait_ms, 1, max_bytes, 0)
    body += struct.pack(">i", 1) + _kstring(topic)
    return body + struct.pack(">i", 1) + struct.pack(">iqi", partition, offset, max_bytes)


def fetch_v4(address: tuple[str, int], topic: str, partition: int, offset: int,
             max_bytes: int = 8 * 1024 * 1024) -> FetchedPartition:
    """One Fetch v4 for one partition; returns batch headers without decoding records."""
    body = fetch_v4_body(topic, partition, offset, max_bytes)
    resp = kafka_request(address, 1, 4, body, correlation_id=7, timeout=10.0)
    pos = 4  # throttle_time_ms
    (n_topics,) = struct.unpack_from(">i", resp, pos)
    pos += 4
    for _ in range(n_topics):
        (name_len,) = struct.unpack_from(">h", resp, pos)
        name = resp[pos + 2:pos + 2 + name_len].decode()
        pos += 2 + name_len
        (n_parts,) = struct.unpack_from(">i", resp, pos)
        pos += 4
        for _ in range(n_parts):
            p, err, hw, _lso = struct.unpack_from(">ihqq", resp, pos)
            pos += 22
            (n_aborted,) = struct.unpack_from(">i", resp, pos)
            pos += 4 + max(n_aborted, 0) * 16
            (rec_len,) = struct.unpack_from(">i", resp, pos)
            pos += 4
            records = resp[pos:pos + max(rec_len, 0)]
            pos += max(rec_len, 0)
            if name == topic and p == partition:
                return FetchedPartition(err, hw, _parse_batches(records))
    raise AssertionError(f"Fetch v4 response has no {topic}/{partition}")


# --- the process ---


class BrokerProcess:
    """One ``keel serve`` child process bound to a fixed port and data directory.

    The port and data directory stay the same across :meth:`restart`, so a
    restarted broker is "the same broker coming back" to clients.
    """

    def __init__(self, data_dir: str | os.PathLike[str], *, port: int | None = None,
                 extra_args: Sequence[str] = (), env: Mapping[str, str] | None = None,
                 log_path: str | os.PathLike[str] | None = None,
                 start_timeout: float = START_TIMEOUT_S) -> None:
        self.data_dir = Path(data_dir)
        self.port = port if port is not None else free_port()
        self.extra_args = list(extra_args)
        self.extra_env = dict(env or {})
        self.start_timeout = start_timeout
        self.log_path = Path(log_path) if log_path else self.data_dir.parent / f"broker-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def address(self) -> tuple[str, int]:
        return (HOST, self.port)

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "broker.cli", "serve", "--host", HOST, "--port", str(self.port),
                "--data-dir", str(self.data_dir), *self.extra_args]

    def _environment(self) -> dict[str, str]:
        # Settings leaking from the developer's shell would make runs differ.
        env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
        env.update(self.extra_env)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def start(self) -> BrokerProcess:
        if self.is_running():
            raise RuntimeError(f"broker already running (pid {self.pid})")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== start #{self.starts}: {' '.join(self.command())}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(self.command(), cwd=REPO_ROOT, env=self._environment(),
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        try:
            self.wait_ready()
        except BaseException:
            self.kill()
            raise
        return self

    def wait_ready(self) -> None:
        """Block until the port accepts connections and ApiVersions v0 answers."""
        deadline = time.monotonic() + self.start_timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            assert self.proc is not None
            code = self.proc.poll()
            if code is not None:
                raise RuntimeError(f"broker exited with code {code} during start-up\n{self.log_tail()}")
            try:
                api_versions_v0(self.address, timeout=1.0)
                return
            except (OSError, ConnectionError, struct.error) as exc:
                last_error = exc
                time.sleep(0.05)
        raise TimeoutError(f"broker on {self.bootstrap} not ready after {self.start_timeout:.0f} s "
                           f"(last error: {last_error!r})\n{self.log_tail()}")

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to flush or clean up."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited after ``timeout`` seconds."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def restart(self, *, graceful: bool = False) -> BrokerProcess:
        """Stop (SIGTERM if ``graceful`` else SIGKILL) and start on the same port and data dir."""
        if graceful:
            self.stop()
        else:
            self.kill()
        return self.start()

    def log_tail(self, max_bytes: int = 8000) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return f"(no broker log at {self.log_path})"
        text = data[-max_bytes:].decode(errors="replace")
        return f"--- tail of {self.log_path} ---\n{text}"

    def __enter__(self) -> BrokerProcess:
        if not self.is_running():
            self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.kill()
