"""What a broker costs at rest: its memory with many partitions that hold a record each and see no traffic.

Issue 6 sets a budget (RSS ≤ 200 MB with 1,000 idle partitions).  A fresh
broker (its own data directory, so the other phases' caches do not count)
gets ``topics`` topics of ``partitions // topics`` partitions, one record in
each, then sits for a few seconds (past the flush interval, so the data is in
segments and the WAL is trimmed) before its RSS is read.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from bench.broker_proc import BrokerProcess, read_memory_kib
from bench.workload import CLIENT_LOG_LEVEL, producer_config

SETTLE_SECONDS = 4.0  # > the default flush interval (2 s): everything flushed, the WAL trimmed
TOPIC_TIMEOUT_S = 60


@dataclass(frozen=True)
class IdleRss:
    partitions: int
    rss_kib: int
    rss_at_start_kib: int


def measure_idle_rss(data_dir: Path, partitions: int, topics: int, broker_args: list[str]) -> IdleRss:
    per_topic = max(1, partitions // topics)
    broker = BrokerProcess(data_dir, data_dir.with_name(data_dir.name + ".broker.log"), broker_args)
    broker.start()
    try:
        start_kib = read_memory_kib(broker.pid)[0]
        admin = AdminClient({"bootstrap.servers": broker.bootstrap, "log_level": CLIENT_LOG_LEVEL})
        names = [f"idle-{i:04d}" for i in range(topics)]
        for future in admin.create_topics([NewTopic(n, per_topic, 1) for n in names],
                                          operation_timeout=TOPIC_TIMEOUT_S).values():
            future.result(timeout=TOPIC_TIMEOUT_S)
        producer = Producer(producer_config(broker.bootstrap, 5))
        errors: list[object] = []
        for name in names:
            for p in range(per_topic):
                producer.produce(name, b"idle", partition=p,
                                 on_delivery=lambda err, _msg: errors.append(err) if err else None)
            producer.poll(0)
        if producer.flush(TOPIC_TIMEOUT_S) or errors:
            raise RuntimeError(f"idle-partition records not acknowledged: {len(errors)} errors")
        time.sleep(SETTLE_SECONDS)
        return IdleRss(per_topic * topics, read_memory_kib(broker.pid)[0], start_kib)
    finally:
        broker.stop()
