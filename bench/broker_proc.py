"""Run the Keel broker under test as a child process, exactly as users start it.

A benchmark must measure the broker a user would run: its own process, a TCP
port, a data directory on disk.  This module starts ``python -m broker.cli
serve`` on a free port, waits until it answers the Kafka protocol, reads its
memory use from ``/proc`` and stops it.
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
from pathlib import Path
from types import TracebackType

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parents[1]
START_ATTEMPTS = 3


def free_port() -> int:
    """A port on 127.0.0.1 nobody listens on right now (another process may still take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def api_versions_ok(address: tuple[str, int], timeout: float = 1.0) -> bool:
    """True when ``address`` answers an ApiVersions v0 request with error code 0.

    A bare TCP connect is not enough: on an ephemeral port a connect can
    succeed without a listener (TCP self-connect).
    """
    correlation_id = 0x4B45454C
    client_id = b"keel-bench"
    request = struct.pack(">hhih", 18, 0, correlation_id, len(client_id)) + client_id
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(struct.pack(">i", len(request)) + request)
        frame = b""
        while len(frame) < 4 + 6:
            chunk = sock.recv(4096)
            if not chunk:
                return False
            frame += chunk
    _size, got_id, error_code = struct.unpack_from(">iih", frame)
    return got_id == correlation_id and error_code == 0


def read_memory_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a live process in KiB, from /proc/<pid>/status."""
    values = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    return values["VmRSS"], values["VmHWM"]


def read_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a live process has used, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


class BrokerProcess:
    """One ``keel serve`` child with its log in ``log_path``."""

    def __init__(self, data_dir: Path, log_path: Path, extra_args: Sequence[str] = (),
                 env: Mapping[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.extra_args = list(extra_args)
        self.extra_env = dict(env or {})
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "broker not started"
        return self.proc.pid

    def command(self) -> list[str]:
        return [sys.executable, "-m", "broker.cli", "serve", "--host", HOST, "--port", str(self.port),
                "--data-dir", str(self.data_dir), *self.extra_args]

    def start(self, timeout: float = 30.0) -> None:
        """Start on a free port; a port lost to a race is retried on another one."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.extra_env)
        for attempt in range(1, START_ATTEMPTS + 1):
            self.port = free_port()
            with open(self.log_path, "ab") as log:
                log.write(f"=== {' '.join(self.command())}\n".encode())
                log.flush()
                self.proc = subprocess.Popen(self.command(), cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
                                             stdout=log, stderr=subprocess.STDOUT)
            try:
                self._wait_ready(timeout)
                return
            except RuntimeError as exc:
                if attempt == START_ATTEMPTS or "address already in use" not in str(exc).lower():
                    raise
            except BaseException:
                self.stop()
                raise

    def _wait_ready(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                raise RuntimeError(f"broker exited with code {code} during start-up\n{self.log_tail()}")
            try:
                if api_versions_ok((HOST, self.port)):
                    return
            except (OSError, struct.error):
                pass
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"broker on {self.bootstrap} not ready after {timeout:.0f} s\n{self.log_tail()}")

    def memory_kib(self) -> tuple[int, int]:
        return read_memory_kib(self.pid)

    def stop(self, timeout: float = 15.0) -> int | None:
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

    def kill(self) -> None:
        """SIGKILL at once, as a crash would; no shutdown work runs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, max_bytes: int = 4000) -> str:
        try:
            text = self.log_path.read_bytes()[-max_bytes:].decode(errors="replace")
        except OSError:
            return f"(no broker log at {self.log_path})"
        return f"--- tail of {self.log_path} ---\n{text}"

    def __enter__(self) -> BrokerProcess:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
