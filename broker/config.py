"""Broker settings: one source of truth for CLI flags, ``KEEL_*`` environment variables and TOML.

Each setting is a dataclass field; its name gives the flag (``--data-dir``),
the environment variable (``KEEL_DATA_DIR``) and the TOML key (``data_dir``).
Precedence, lowest first: defaults, TOML file (``--config``), environment,
command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

MiB = 1024 * 1024


@dataclass(slots=True)
class Settings:
    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on"})
    port: int = field(default=9092, metadata={"help": "port to listen on"})
    advertised_host: str = field(default="", metadata={"help": "host clients should use (default: --host)"})
    broker_id: int = field(default=0, metadata={"help": "this broker's node id"})
    data_dir: str = field(default="./keel-data", metadata={"help": "local directory for the WAL and the embedded object store"})
    auto_create_topics: bool = field(default=True, metadata={"help": "create unknown topics on Metadata/Produce"})
    default_partitions: int = field(default=1, metadata={"help": "partitions of auto-created topics"})
    max_request_bytes: int = field(default=100 * MiB, metadata={"help": "largest request frame accepted"})
    request_queue_bytes: int = field(default=8 * MiB, metadata={"help": "request bytes all connections together may have read and not yet answered before a connection that already awaits an answer has its next large request (64 KiB or more) left unread; a connection awaiting nothing is always read (keeps bulk producers from queueing tens of MB ahead of everyone else's writes)"})
    max_message_bytes: int = field(default=8 * MiB, metadata={"help": "largest record batch accepted (topic default)"})
    wal_segment_bytes: int = field(default=64 * MiB, metadata={"help": "size at which the file WAL rolls to a new file"})
    wal_fsync: bool = field(default=True, metadata={"help": "fsync the WAL before acknowledging (never turn off in production)"})
    flush_interval_ms: int = field(default=2000, metadata={"help": "longest time a batch stays only in the WAL"})
    flush_concurrency: int = field(default=0, metadata={"help": "partitions flushed to segments at once (each flush is a segment PUT and a manifest write); 0 = 8 on S3, 1 on the local-filesystem store (one disk gains nothing from more)"})
    segment_bytes: int = field(default=8 * MiB, metadata={"help": "target size of a segment object"})
    tail_cache_bytes: int = field(default=64 * MiB, metadata={"help": "memory for recent batches served without object-store reads"})
    max_unflushed_bytes: int = field(default=256 * MiB, metadata={"help": "produce waits when this much is not yet in segments"})
    objects_dir: str = field(default="", metadata={"help": "directory of the local-filesystem object store (default: DATA_DIR/objects); brokers sharing it form one cluster"})
    s3_endpoint: str = field(default="", metadata={"help": "S3 endpoint URL (MinIO, SeaweedFS, AWS); empty = local filesystem store under --data-dir"})
    bucket: str = field(default="keel", metadata={"help": "S3 bucket (created if missing)"})
    prefix: str = field(default="", metadata={"help": "key prefix of this cluster inside the bucket"})
    region: str = field(default="us-east-1", metadata={"help": "S3 region"})
    wal: str = field(default="file", metadata={"help": "WAL engine: file (fsync group commit) or object (one PUT per group commit, no local state)"})
    wal_inline_bytes: int = field(default=64 * 1024, metadata={"help": "file WAL: commit groups up to this many bytes are written and synced on the event loop's thread instead of the writer thread (lower latency at low rates)"})
    wal_object_linger_ms: int = field(default=5, metadata={"help": "object WAL: longest wait of an append for a WAL PUT to start (it waits only while PUTs are in flight)"})
    wal_object_eager_puts: int = field(default=2, metadata={"help": "object WAL: an append that finds no WAL PUT in flight is written at once; while appends come further apart than half a PUT, so is one that finds fewer than this many in flight. Others wait for a PUT to finish (up to the linger). 0 = always wait the linger"})
    wal_object_max_in_flight: int = field(default=32, metadata={"help": "object WAL: most WAL PUTs in flight at once; a store slower than about this many lingers per PUT queues appends behind it"})
    wal_object_max_bytes: int = field(default=4 * MiB, metadata={"help": "object WAL: WAL object size that triggers a PUT at once"})
    retention_check_interval_ms: int = field(default=5000, metadata={"help": "how often retention.ms/retention.bytes are applied"})
    block_cache_bytes: int = field(default=64 * MiB, metadata={"help": "memory for cold reads: cached segment blocks and, on S3, buffers kept for the next GETs (half of it, 32 MiB at most; none below 8 MiB)"})
    read_ahead_blocks: int = field(default=16, metadata={"help": "blocks (1 MiB) read ahead of a sequential cold reader, in GETs of up to 8 blocks (shrunk when several readers stream, so that all fit in half of block_cache_bytes)"})
    lease_ms: int = field(default=1000, metadata={"help": "broker lease: partitions move this long after a broker stops renewing"})
    lease_renew_ms: int = field(default=200, metadata={"help": "how often a broker renews its lease"})
    lease_margin_ms: int = field(default=200, metadata={"help": "safety margin for clock-rate drift: stop acknowledging this long before the lease expires"})
    controller_interval_ms: int = field(default=100, metadata={"help": "how often the controller and the assignment watcher look for changes"})
    wal_sweep_interval_ms: int = field(default=30_000, metadata={"help": "how often a broker deletes the WALs of its earlier incarnations that no partition needs any more"})
    shutdown_timeout_ms: int = field(default=10_000, metadata={"help": "graceful shutdown: longest wait for partitions to move to other brokers"})
    log_level: str = field(default="INFO", metadata={"help": "logging level"})

    @property
    def client_host(self) -> str:
        return self.advertised_host or self.host


def _env_name(name: str) -> str:
    return "KEEL_" + name.upper()


def _coerce(kind: Any, value: Any) -> Any:
    if kind in (bool, "bool"):
        if isinstance(value, bool):
            return value
        return str(value).strip().lower() in ("1", "true", "yes", "on")
    if kind in (int, "int"):
        return int(value)
    return str(value)


def _fields() -> list[dataclasses.Field[Any]]:
    return list(dataclasses.fields(Settings))


def build_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--config", help="TOML file with settings (keys as in the flags, with underscores)")
    for f in _fields():
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata.get('help', '')} (env {_env_name(f.name)}; default {f.default!r})"
        if f.type in (bool, "bool"):
            parser.add_argument(flag, dest=f.name, default=None, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, default=None, help=help_text)
    return parser


def load_settings(args: argparse.Namespace | None = None, env: Mapping[str, str] | None = None,
                  config_path: str | None = None) -> Settings:
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    path = config_path or (getattr(args, "config", None) if args else None) or env.get("KEEL_CONFIG")
    if path:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
        known = {f.name for f in _fields()}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"unknown settings in {path}: {sorted(unknown)}")
        values.update(raw)
    for f in _fields():
        if _env_name(f.name) in env:
            values[f.name] = env[_env_name(f.name)]
    if args is not None:
        for f in _fields():
            value = getattr(args, f.name, None)
            if value is not None:
                values[f.name] = value
    kinds = {f.name: f.type for f in _fields()}
    return Settings(**{name: _coerce(kinds[name], value) for name, value in values.items()})


def parse_cli(argv: Sequence[str]) -> Settings:
    return load_settings(build_parser(argparse.ArgumentParser()).parse_args(list(argv)))
