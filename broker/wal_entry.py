"""The broker's header inside each WAL entry: which partition, at which leader epoch, a batch belongs to.

    version u8 (2) | topic id 16 bytes | partition i32 | leader epoch i32 | record batch

The leader epoch lets a new leader pick out exactly the entries the previous
leader wrote during its term, and skip older terms that were already flushed.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

HEADER = struct.Struct(">B16sii")
VERSION = 2


class EntryHeader(NamedTuple):
    topic_id: bytes
    partition: int
    leader_epoch: int


def encode_header(topic_id: bytes, partition: int, leader_epoch: int) -> bytes:
    return HEADER.pack(VERSION, topic_id, partition, leader_epoch)


def decode(payload: bytes | memoryview) -> tuple[EntryHeader, memoryview]:
    view = memoryview(payload)
    version, topic_id, partition, epoch = HEADER.unpack_from(view, 0)
    if version != VERSION:
        raise ValueError(f"unknown WAL entry version {version}")
    return EntryHeader(topic_id, partition, epoch), view[HEADER.size:]
