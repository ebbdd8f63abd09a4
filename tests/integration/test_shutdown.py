"""SIGTERM ends a broker promptly even while consumers long-poll it.

A Fetch may wait up to 30 s for data.  Shutdown used to wait for every such poll before it handed
partitions over and released the lease; now the polls answer at once with what they have."""

from __future__ import annotations

import socket
import struct
import time

from confluent_kafka import Producer

from integration.broker_process import BrokerProcess, fetch_v4_body, request_frame

LONG_POLL_MS = 30_000


def _long_poll(broker: BrokerProcess, topic: str, offset: int) -> socket.socket:
    """Sends a Fetch v4 that waits up to 30 s for a byte past ``offset``; returns the open socket."""
    sock = socket.create_connection(broker.address, timeout=10.0)
    sock.sendall(request_frame(1, 4, fetch_v4_body(topic, 0, offset, 1 << 20, max_wait_ms=LONG_POLL_MS),
                               correlation_id=99))
    return sock


def _read_answer(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_sigterm_answers_a_long_poll_and_exits_without_waiting_it_out(broker: BrokerProcess) -> None:
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    producer.produce("shutdown-poll", b"one")
    assert producer.flush(10) == 0

    sock = _long_poll(broker, "shutdown-poll", offset=1)  # at the high watermark: waits for more
    time.sleep(0.5)
    assert broker.proc is not None
    began = time.monotonic()
    code = broker.stop(timeout=LONG_POLL_MS / 1000)
    took = time.monotonic() - began

    answer = _read_answer(sock)
    sock.close()
    assert code == 0
    assert took < 10, f"shutdown took {took:.1f} s behind a {LONG_POLL_MS} ms long poll"
    (size, correlation) = struct.unpack_from(">ii", answer)
    assert size == len(answer) - 4 and correlation == 99  # answered (empty), not dropped
    assert "did not finish in time" not in broker.log_tail()
