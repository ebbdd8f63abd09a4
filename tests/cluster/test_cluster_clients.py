"""The standard clients against a three-broker cluster: the single-broker client tests, on a cluster.

Each client produces compressed, keyed records with headers to partitions led by different brokers,
consumes them back and looks up offsets, all through a bootstrap list of the three brokers.  The topic
is created first and every broker waited for: a broker learns of a topic made through another one at
its next topic refresh, and kafka-python's admin client describes a new topic at once, perhaps on a
broker that does not know it yet.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from cluster.cluster_process import Cluster
from integration.test_clients_produce_consume import (
    CLIENTS,
    PARTITIONS,
    counts_of,
    make_records,
    new_topic,
    placed_by_partition,
    verify_consumed,
    verify_list_offsets,
)

RECORDS = 200
CODEC_OF = {"confluent": "lz4", "kafka-python": "gzip", "aiokafka": "zstd"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = Cluster(Path(tmp_path_factory.mktemp("clients-cluster")))
    try:
        cluster.start(3)
        cluster.wait_for_brokers(cluster.members)
        yield cluster
    finally:
        cluster.close()


@pytest.mark.parametrize("client_name", list(CLIENTS))
def test_a_client_produces_and_consumes_across_three_brokers(cluster: Cluster, client_name: str) -> None:
    client = CLIENTS[client_name]
    bootstrap = cluster.bootstrap
    topic = new_topic(f"cluster-{client_name}")
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, PARTITIONS)])[topic].result(30)
    leaders = cluster.wait_for_leaders(topic, PARTITIONS)
    assert len({leader.leader for leader in leaders.values()}) > 1, f"leaders not spread: {leaders}"

    records = make_records(f"cluster-{client_name}", RECORDS)
    placed = placed_by_partition(records, client.produce(bootstrap, topic, records, CODEC_OF[client_name]))
    assert len(placed) > 1
    verify_consumed(placed, client.consume(bootstrap, topic, counts_of(placed)))
    verify_list_offsets(client, bootstrap, topic, placed)
