"""Kafka's record-batch compression codecs, keyed by the id in a batch's attributes.

The broker never decompresses batches on its hot path (they are stored as
received); this module exists for tools, tests, benchmarks and for building
batches. Every codec is backed by cramjam so that ``protocol/`` needs no other
native dependency.

Wire formats, as Kafka clients write them:

* 1 gzip: an RFC 1952 gzip stream.
* 2 snappy: the Java client writes the *xerial* framing (``b"\\x82SNAPPY\\x00"``,
  then two big-endian i32s, version and minimum compatible version, then chunks of
  ``[i32 length][raw snappy block]``); librdkafka may write a bare raw snappy
  block. Both are accepted on decode; encode writes the xerial framing, like Java.
* 3 lz4: the LZ4 frame format with independent blocks.
* 4 zstd: a zstd frame.
"""

from __future__ import annotations

import struct

import cramjam

NONE = 0
GZIP = 1
SNAPPY = 2
LZ4 = 3
ZSTD = 4

CODEC_NAMES = {NONE: "none", GZIP: "gzip", SNAPPY: "snappy", LZ4: "lz4", ZSTD: "zstd"}

XERIAL_MAGIC = b"\x82SNAPPY\x00"
_XERIAL_HEADER = XERIAL_MAGIC + struct.pack(">ii", 1, 1)
_XERIAL_BLOCK = 32 * 1024  # uncompressed bytes per chunk, as the xerial library does
_I32 = struct.Struct(">i")


class CompressionError(ValueError):
    """Unknown codec id, or data that the codec cannot decode."""


def compress(codec: int, data: bytes | bytearray | memoryview) -> bytes:
    """Compress ``data`` the way a Kafka producer does for codec id ``codec``."""
    if codec == NONE:
        return bytes(data)
    if codec == GZIP:
        return bytes(cramjam.gzip.compress(data))
    if codec == SNAPPY:
        return _xerial_encode(data)
    if codec == LZ4:
        return bytes(cramjam.lz4.compress(data))
    if codec == ZSTD:
        return bytes(cramjam.zstd.compress(data, level=3))
    raise CompressionError(f"unknown compression codec id {codec}")


def decompress(codec: int, data: bytes | bytearray | memoryview) -> bytes:
    """Inverse of :func:`compress`; also accepts every framing real clients write."""
    try:
        if codec == NONE:
            return bytes(data)
        if codec == GZIP:
            return bytes(cramjam.gzip.decompress(data))
        if codec == SNAPPY:
            return _snappy_decode(data)
        if codec == LZ4:
            return bytes(cramjam.lz4.decompress(data))
        if codec == ZSTD:
            return bytes(cramjam.zstd.decompress(data))
    except cramjam.DecompressionError as exc:
        raise CompressionError(f"{CODEC_NAMES[codec]}: {exc}") from exc
    raise CompressionError(f"unknown compression codec id {codec}")


def _xerial_encode(data: bytes | bytearray | memoryview) -> bytes:
    view = memoryview(data).cast("B")
    parts = [_XERIAL_HEADER]
    # at least one chunk: some readers (librdkafka, kafka-python) take a bare header for raw snappy
    for start in range(0, max(len(view), 1), _XERIAL_BLOCK):
        block = bytes(cramjam.snappy.compress_raw(view[start : start + _XERIAL_BLOCK]))
        parts.append(_I32.pack(len(block)))
        parts.append(block)
    return b"".join(parts)


def _snappy_decode(data: bytes | bytearray | memoryview) -> bytes:
    view = memoryview(data).cast("B")
    if len(view) < len(_XERIAL_HEADER) or view[: len(XERIAL_MAGIC)] != XERIAL_MAGIC:
        return bytes(cramjam.snappy.decompress_raw(view))
    out = []
    pos = len(_XERIAL_HEADER)
    end = len(view)
    while pos < end:
        if end - pos < 4:
            raise CompressionError("snappy: truncated xerial chunk length")
        (length,) = _I32.unpack_from(view, pos)
        pos += 4
        if length < 0 or length > end - pos:
            raise CompressionError("snappy: xerial chunk overruns the data")
        out.append(bytes(cramjam.snappy.decompress_raw(view[pos : pos + length])))
        pos += length
    return b"".join(out)
