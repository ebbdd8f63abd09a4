"""A broker with the object WAL on a given store that leads some partitions of one topic, each holding one
durable record: where the flusher's unit tests start."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from broker.config import Settings
from broker.core import Broker
from broker.flusher import Flusher
from broker.partition_log import PartitionLog
from broker.topic_configs import TopicConfig
from metadata.store import Manifest, TopicRecord
from objectstore.base import ObjectStore
from protocol.records import build_batch
from wal.object import ObjectWriteAheadLog


async def leading_broker(tmp_path: Path, store: ObjectStore, topic: TopicRecord, partitions: list[int],
                         **settings: Any) -> tuple[Broker, dict[int, PartitionLog]]:
    wal = ObjectWriteAheadLog(store, "wal/0/1")
    await wal.open()
    config = Settings(data_dir=str(tmp_path), **settings)
    broker = Broker(config, store=store, wal=wal)
    broker.membership.lease_valid = lambda: True  # type: ignore[method-assign]
    broker.topic_configs[topic.name] = TopicConfig.from_configs({}, config)
    logs = {}
    for p in partitions:
        manifest = Manifest(topic_id=topic.topic_id, partition=p, leader_epoch=1, leader=0, leader_incarnation=1)
        plog = PartitionLog.from_manifest(topic, p, manifest, await broker.meta.commit_manifest(manifest, None))
        broker.serve_partition(plog)
        reply = broker.append(plog, build_batch([(None, b"record %d" % p)]))
        assert isinstance(reply, asyncio.Future)
        await reply
        logs[p] = plog
    broker.flusher = Flusher(broker)
    return broker, logs
