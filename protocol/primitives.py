"""Readers and writers for the Kafka wire protocol's primitive types.

Every reader has the shape ``read(buf, pos) -> (value, new_pos)`` and every
writer ``write(out: bytearray, value) -> None`` so that the schema compiler in
``protocol.schema`` can compose them into whole-message codecs.  Short or
malformed input raises ``DecodeError``; nothing here allocates more than the
input buffer can justify.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

Reader = Callable[[Any, int], tuple[Any, int]]
Writer = Callable[[bytearray, Any], None]


class DecodeError(ValueError):
    """The bytes do not form a valid message of the expected type."""


_I8 = struct.Struct(">b")
_I16 = struct.Struct(">h")
_U16 = struct.Struct(">H")
_I32 = struct.Struct(">i")
_U32 = struct.Struct(">I")
_I64 = struct.Struct(">q")
_F64 = struct.Struct(">d")


def _fixed(codec: struct.Struct) -> tuple[Reader, Writer]:
    size = codec.size
    unpack_from = codec.unpack_from
    pack = codec.pack

    def read(buf: Any, pos: int) -> tuple[Any, int]:
        end = pos + size
        if end > len(buf):
            raise DecodeError("buffer underrun")
        return unpack_from(buf, pos)[0], end

    def write(out: bytearray, value: Any) -> None:
        out += pack(value)

    return read, write


read_int8, write_int8 = _fixed(_I8)
read_int16, write_int16 = _fixed(_I16)
read_uint16, write_uint16 = _fixed(_U16)
read_int32, write_int32 = _fixed(_I32)
read_uint32, write_uint32 = _fixed(_U32)
read_int64, write_int64 = _fixed(_I64)
read_float64, write_float64 = _fixed(_F64)


def read_bool(buf: Any, pos: int) -> tuple[bool, int]:
    if pos >= len(buf):
        raise DecodeError("buffer underrun")
    return buf[pos] != 0, pos + 1


def write_bool(out: bytearray, value: bool) -> None:
    out.append(1 if value else 0)


def read_uvarint(buf: Any, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    n = len(buf)
    while True:
        if pos >= n:
            raise DecodeError("buffer underrun in varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise DecodeError("varint too long")


def write_uvarint(out: bytearray, value: int) -> None:
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def read_varint(buf: Any, pos: int) -> tuple[int, int]:
    raw, pos = read_uvarint(buf, pos)
    return (raw >> 1) ^ -(raw & 1), pos


def write_varint(out: bytearray, value: int) -> None:
    write_uvarint(out, (value << 1) ^ (value >> 63))


def _take(buf: Any, pos: int, length: int) -> tuple[Any, int]:
    end = pos + length
    if length < 0 or end > len(buf):
        raise DecodeError("length exceeds buffer")
    return buf[pos:end], end


# Strings ---------------------------------------------------------------

def read_string(buf: Any, pos: int) -> tuple[str | None, int]:
    length, pos = read_int16(buf, pos)
    if length == -1:
        return None, pos
    raw, pos = _take(buf, pos, length)
    return _utf8(raw), pos


def read_compact_string(buf: Any, pos: int) -> tuple[str | None, int]:
    length, pos = read_uvarint(buf, pos)
    if length == 0:
        return None, pos
    raw, pos = _take(buf, pos, length - 1)
    return _utf8(raw), pos


def _utf8(raw: Any) -> str:
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError("invalid UTF-8 in string") from exc


def write_string(out: bytearray, value: str | None) -> None:
    if value is None:
        out += b"\xff\xff"
        return
    data = value.encode("utf-8")
    out += _I16.pack(len(data))
    out += data


def write_compact_string(out: bytearray, value: str | None) -> None:
    if value is None:
        out.append(0)
        return
    data = value.encode("utf-8")
    write_uvarint(out, len(data) + 1)
    out += data


# Bytes (and record sets, which are bytes on the wire) ------------------

def read_bytes(buf: Any, pos: int) -> tuple[Any, int]:
    length, pos = read_int32(buf, pos)
    if length == -1:
        return None, pos
    return _take(buf, pos, length)


def read_compact_bytes(buf: Any, pos: int) -> tuple[Any, int]:
    length, pos = read_uvarint(buf, pos)
    if length == 0:
        return None, pos
    return _take(buf, pos, length - 1)


def _bytes_length(value: Any) -> int:
    if isinstance(value, list | tuple):
        return sum(len(part) for part in value)
    return len(value)


SPLICE_MIN = 64 * 1024  # chunks this large are sent from where they lie, not copied into the response


class SpliceBuffer(bytearray):
    """An output buffer that takes large chunks (fetched record data) by reference instead of copying them.

    What has been written is ``parts`` (sealed pieces, in order) followed by the bytearray itself;
    ``pieces()`` gives them all, ready for a gathering socket write.  Written through anything but
    ``write_bytes`` / ``write_compact_bytes`` it is a plain bytearray."""

    def __init__(self, initial: bytes | bytearray = b"") -> None:
        super().__init__(initial)
        self.parts: list[bytes | bytearray | memoryview] = []
        self.parts_size = 0

    def splice(self, chunk: bytes | bytearray | memoryview) -> None:
        if self:
            self.parts.append(bytes(self))
            self.parts_size += len(self)
            del self[:]
        self.parts.append(chunk)
        self.parts_size += len(chunk)

    def total_size(self) -> int:
        return self.parts_size + len(self)

    def pieces(self) -> list[bytes | bytearray | memoryview]:
        return [*self.parts, bytes(self)] if self else list(self.parts)


def _write_body(out: bytearray, value: Any) -> None:
    for part in value if isinstance(value, list | tuple) else (value,):
        if len(part) >= SPLICE_MIN and type(out) is SpliceBuffer:
            out.splice(part)
        else:
            out += part


def write_bytes(out: bytearray, value: Any) -> None:
    """Bytes, a memoryview, or a list of chunks written back to back (fetch)."""
    if value is None:
        out += b"\xff\xff\xff\xff"
        return
    out += _I32.pack(_bytes_length(value))
    _write_body(out, value)


def write_compact_bytes(out: bytearray, value: Any) -> None:
    if value is None:
        out.append(0)
        return
    write_uvarint(out, _bytes_length(value) + 1)
    _write_body(out, value)


# UUID -------------------------------------------------------------------

ZERO_UUID = bytes(16)


def read_uuid(buf: Any, pos: int) -> tuple[bytes, int]:
    raw, pos = _take(buf, pos, 16)
    return bytes(raw), pos


def write_uuid(out: bytearray, value: bytes | None) -> None:
    if value is None:
        value = ZERO_UUID
    if len(value) != 16:
        raise ValueError("uuid must be 16 bytes")
    out += value


# Array lengths -----------------------------------------------------------

def read_array_length(buf: Any, pos: int) -> tuple[int, int]:
    """Classic array: int32 count, -1 for null."""
    return read_int32(buf, pos)


def read_compact_array_length(buf: Any, pos: int) -> tuple[int, int]:
    """Compact array: uvarint count+1, 0 for null; returns -1 for null."""
    n, pos = read_uvarint(buf, pos)
    return n - 1, pos


def write_array_length(out: bytearray, count: int) -> None:
    out += _I32.pack(count)


def write_compact_array_length(out: bytearray, count: int) -> None:
    write_uvarint(out, count + 1)
