"""The byte format of one WAL entry, shared by every WAL engine.

    magic u8 | payload length u32 | position u64 | crc32c u32 | payload

(big endian; the CRC-32C covers magic, length, position and payload).  A
reader validates every entry and stops at the first one that is truncated,
out of sequence or fails its checksum.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import crc32c

from wal.base import Buffer, WalEntry

MAGIC = 0xA7
CHECKED = struct.Struct(">BIQ")  # magic, payload length, position: covered by the CRC
HEADER = struct.Struct(">BIQI")  # ... followed by the crc32c
HEADER_SIZE = HEADER.size
MAX_PAYLOAD = 0xFFFF_FFFF


def nbytes(buf: Buffer) -> int:
    return buf.nbytes if isinstance(buf, memoryview) else len(buf)


def entry_header(position: int, parts: Sequence[Buffer], length: int) -> bytes:
    checked = CHECKED.pack(MAGIC, length, position)
    crc = crc32c.crc32c(checked)
    for part in parts:
        crc = crc32c.crc32c(part, crc)
    return checked + struct.pack(">I", crc)


def encode_entry(position: int, parts: Sequence[Buffer]) -> bytes:
    length = sum(nbytes(p) for p in parts)
    return b"".join([entry_header(position, parts, length), *parts])


def scan_entries(data: bytes | memoryview, position: int, out: list[WalEntry]) -> tuple[int, int, str | None]:
    """Append the valid entries in ``data`` (which start at ``position``) to ``out``.

    Returns (byte offset where valid data ends, next position, why it ended
    early or None if all of ``data`` is valid).
    """
    view = memoryview(data)
    size = len(view)
    offset = 0
    while offset < size:
        if size - offset < HEADER_SIZE:
            return offset, position, "truncated header"
        magic, length, entry_position, crc = HEADER.unpack_from(view, offset)
        if magic != MAGIC:
            return offset, position, f"bad magic byte 0x{magic:02x}"
        if entry_position != position:
            return offset, position, f"position {entry_position} where {position} was expected"
        body = offset + HEADER_SIZE
        end = body + length
        if end > size:
            return offset, position, f"truncated payload ({size - body} of {length} bytes)"
        actual = crc32c.crc32c(view[body:end], crc32c.crc32c(view[offset: offset + CHECKED.size]))
        if actual != crc:
            return offset, position, "checksum mismatch"
        out.append(WalEntry(position, bytes(view[body:end])))
        position += 1
        offset = end
    return offset, position, None
