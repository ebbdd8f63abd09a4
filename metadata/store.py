"""Cluster metadata kept as small JSON documents in the object store.

Topics, per-partition manifests (the list of segment objects and the log
start offset) and the producer-id counter all live under ``meta/`` in the same
bucket as the data, so no extra server is needed.  Every write is conditional:
create-only for new documents, compare-and-swap on the ETag that was read for
updates.  A writer whose CAS fails gets ``ConflictError`` and must re-read.
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.parse
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from objectstore.base import NotFound, ObjectStore, PreconditionFailed

FORMAT_VERSION = 1


class ConflictError(Exception):
    """A conditional write lost: somebody else changed the document first."""


class TopicExistsError(Exception):
    pass


@dataclass(slots=True)
class TopicRecord:
    name: str
    topic_id: str  # UUID hex string (32 chars, no dashes)
    partitions: int
    configs: dict[str, str] = field(default_factory=dict)
    created_ms: int = 0

    @property
    def topic_id_bytes(self) -> bytes:
        return bytes.fromhex(self.topic_id)


@dataclass(slots=True)
class SegmentRef:
    base_offset: int
    last_offset: int
    key: str
    size: int
    max_timestamp: int
    first_timestamp: int = -1


@dataclass(slots=True)
class Manifest:
    """The durable state of one partition: what is in object storage and where the log starts."""

    topic_id: str
    partition: int
    leader_epoch: int = 0
    log_start_offset: int = 0
    segments: list[SegmentRef] = field(default_factory=list)
    # Idempotent-producer state as of the last segment: {pid: [epoch, [[first_seq, last_seq, base, last], ...]]}
    producers: dict[str, Any] = field(default_factory=dict)
    # Leader epoch history: [epoch, first offset written in that epoch], oldest first.
    epochs: list[list[int]] = field(default_factory=list)
    # Leadership, written by the controller: the leader broker and incarnation, where its WAL is, and
    # the WALs (with the epoch written there) whose unflushed entries the leader must replay first.
    leader: int = -1
    leader_incarnation: int = 0
    leader_wal: dict[str, Any] | None = None
    replay_from: list[list[Any]] = field(default_factory=list)

    @property
    def next_offset(self) -> int:
        """The offset after the last flushed record (or the log start when nothing is flushed)."""
        if self.segments:
            return max(self.segments[-1].last_offset + 1, self.log_start_offset)
        return self.log_start_offset

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        raw = json.loads(data)
        raw["segments"] = [SegmentRef(**s) for s in raw.get("segments", [])]
        return cls(**raw)


class MetadataStore:
    """Reads and conditionally writes the ``meta/`` documents of one cluster."""

    def __init__(self, store: ObjectStore, prefix: str = "") -> None:
        self.store = store
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""

    def key(self, *parts: str) -> str:
        return self.prefix + "/".join(parts)

    async def conditional_put(self, key: str, data: bytes, etag: str | None) -> str:
        """Create-only when ``etag`` is None, else compare-and-swap; ConflictError when it loses."""
        try:
            if etag is None:
                return await self.store.put_if_absent(key, data)
            return await self.store.put_if_match(key, data, etag)
        except PreconditionFailed as exc:
            raise ConflictError(key) from exc

    # Cluster ---------------------------------------------------------------

    async def ensure_cluster(self) -> str:
        """The cluster id, created on first start."""
        key = self.key("meta", "cluster.json")
        doc = {"cluster_id": uuid.uuid4().hex[:22], "format_version": FORMAT_VERSION}
        with contextlib.suppress(PreconditionFailed):
            await self.store.put_if_absent(key, json.dumps(doc).encode())
        data = await self.store.get(key)
        return str(json.loads(data)["cluster_id"])

    # Topics ----------------------------------------------------------------

    def _topic_key(self, name: str) -> str:
        return self.key("meta", "topics", name + ".json")

    async def load_topics(self) -> dict[str, TopicRecord]:
        topics = {}
        prefix = self.key("meta", "topics") + "/"
        for info in await self.store.list(prefix):
            if not info.key.endswith(".json"):
                continue
            try:
                data = await self.store.get(info.key)
            except NotFound:
                continue
            record = TopicRecord(**json.loads(data))
            topics[record.name] = record
        return topics

    async def create_topic(self, name: str, partitions: int, configs: dict[str, str]) -> TopicRecord:
        record = TopicRecord(name=name, topic_id=uuid.uuid4().hex, partitions=partitions,
                             configs=dict(configs), created_ms=int(time.time() * 1000))
        try:
            await self.store.put_if_absent(self._topic_key(name), json.dumps(asdict(record)).encode())
        except PreconditionFailed as exc:
            raise TopicExistsError(name) from exc
        return record

    async def read_topic(self, name: str) -> tuple[TopicRecord, str]:
        data, etag = await self.store.get_with_etag(self._topic_key(name))
        return TopicRecord(**json.loads(data)), etag

    async def update_topic(self, record: TopicRecord, etag: str) -> str:
        return await self.conditional_put(self._topic_key(record.name), json.dumps(asdict(record)).encode(), etag)

    async def delete_topic(self, record: TopicRecord) -> None:
        """Removes the topic document, then its manifests and data objects."""
        await self.store.delete(self._topic_key(record.name))
        keys = [info.key for info in await self.store.list(self.key("meta", "partitions", record.topic_id) + "/")]
        keys += [info.key for info in await self.store.list(self.key("data", record.topic_id) + "/")]
        if keys:
            await self.store.delete_many(keys)

    # Partition manifests ---------------------------------------------------

    def _manifest_key(self, topic_id: str, partition: int) -> str:
        return self.key("meta", "partitions", topic_id, f"{partition}.json")

    async def load_manifest(self, topic_id: str, partition: int) -> tuple[Manifest, str | None]:
        """The manifest and its ETag; a fresh empty manifest with ETag None if none was written yet."""
        try:
            data, etag = await self.store.get_with_etag(self._manifest_key(topic_id, partition))
        except NotFound:
            return Manifest(topic_id=topic_id, partition=partition), None
        return Manifest.from_json(data), etag

    async def commit_manifest(self, manifest: Manifest, etag: str | None) -> str:
        return await self.conditional_put(self._manifest_key(manifest.topic_id, manifest.partition),
                                          manifest.to_json(), etag)

    def segment_key(self, topic_id: str, partition: int, base_offset: int, epoch: int) -> str:
        return self.key("data", topic_id, str(partition), f"{base_offset:020d}-{epoch}.seg")

    # Producer ids ----------------------------------------------------------

    async def allocate_producer_ids(self, count: int) -> int:
        """Reserves ``count`` producer ids durably; returns the first. Ids are never handed out twice."""
        key = self.key("meta", "producer-ids.json")
        while True:
            try:
                data, etag = await self.store.get_with_etag(key)
                next_id = int(json.loads(data)["next"])
            except NotFound:
                etag, next_id = None, 1000
            doc = json.dumps({"next": next_id + count}).encode()
            try:
                if etag is None:
                    await self.store.put_if_absent(key, doc)
                else:
                    await self.store.put_if_match(key, doc, etag)
                return next_id
            except PreconditionFailed:
                continue


def _group_key_part(group_id: str) -> str:
    """Group ids are arbitrary strings; object keys get them percent-encoded."""
    return urllib.parse.quote(group_id, safe="") or "%00"


class GroupOffsetsStore:
    """Committed offsets of consumer groups: one document per group under ``meta/groups/``."""

    def __init__(self, meta: MetadataStore) -> None:
        self.meta = meta

    def _key(self, group_id: str) -> str:
        return self.meta.key("meta", "groups", _group_key_part(group_id) + ".json")

    @staticmethod
    def _decode(data: bytes) -> tuple[str, dict[tuple[str, int], list[Any]]]:
        raw = json.loads(data)
        return raw["group_id"], {(t, int(p)): list(v) for t, p, *v in raw["offsets"]}

    async def list_ids(self) -> list[str]:
        prefix = self.meta.key("meta", "groups") + "/"
        return [urllib.parse.unquote(info.key[len(prefix):-len(".json")])
                for info in await self.meta.store.list(prefix) if info.key.endswith(".json")]

    async def read(self, group_id: str) -> tuple[dict[tuple[str, int], list[Any]], str | None]:
        try:
            data, etag = await self.meta.store.get_with_etag(self._key(group_id))
        except NotFound:
            return {}, None
        return self._decode(data)[1], etag

    async def write(self, group_id: str, offsets: dict[tuple[str, int], list[Any]], etag: str | None) -> str:
        doc = json.dumps({"group_id": group_id,
                          "offsets": [[t, p, *v] for (t, p), v in sorted(offsets.items())]},
                         separators=(",", ":")).encode()
        return await self.meta.conditional_put(self._key(group_id), doc, etag)

    async def delete(self, group_id: str) -> None:
        await self.meta.store.delete(self._key(group_id))
