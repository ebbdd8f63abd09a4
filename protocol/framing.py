"""Kafka request/response framing: the size prefix and the request and response headers.

A request frame is ``int32 size`` followed by the header and the body.  The
header is v1 (api key, api version, correlation id, client id) for classic
request versions and v2 (the same plus tagged fields) for flexible ones.  The
response header is v0 (correlation id) or, for flexible versions, v1 (plus
tagged fields) -- except ApiVersions, whose response always uses v0 so that a
client can read it before it knows what the broker supports (KIP-511).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from protocol import primitives as p
from protocol.primitives import DecodeError

SIZE = struct.Struct(">i")
_HEADER_FIXED = struct.Struct(">hhi")
_RESPONSE_PREFIX = struct.Struct(">ii")
API_VERSIONS_KEY = 18


@dataclass(frozen=True, slots=True)
class RequestHeader:
    api_key: int
    api_version: int
    correlation_id: int
    client_id: str | None


def read_request_header(frame: Any, flexible: bool | None) -> tuple[RequestHeader, int]:
    """Parse the header; ``flexible`` None means "unknown API/version": tagged fields are not read."""
    if len(frame) < _HEADER_FIXED.size:
        raise DecodeError("request shorter than its header")
    api_key, api_version, correlation_id = _HEADER_FIXED.unpack_from(frame, 0)
    client_id, pos = p.read_string(frame, _HEADER_FIXED.size)
    if flexible:
        count, pos = p.read_uvarint(frame, pos)
        for _ in range(count):
            _tag, pos = p.read_uvarint(frame, pos)
            size, pos = p.read_uvarint(frame, pos)
            pos += size
            if pos > len(frame):
                raise DecodeError("request header tagged field exceeds frame")
    return RequestHeader(api_key, api_version, correlation_id, client_id), pos


def peek_api(frame: Any) -> tuple[int, int, int]:
    """(api_key, api_version, correlation_id) without parsing the rest."""
    if len(frame) < _HEADER_FIXED.size:
        raise DecodeError("request shorter than its header")
    return _HEADER_FIXED.unpack_from(frame, 0)


def start_response(correlation_id: int, flexible_header: bool) -> p.SpliceBuffer:
    """A response buffer holding the size placeholder and the header; the body is appended to it."""
    out = p.SpliceBuffer(_RESPONSE_PREFIX.pack(0, correlation_id))
    if flexible_header:
        out.append(0)  # no tagged fields
    return out


def finish_response(out: bytearray) -> bytearray | list[bytes | bytearray | memoryview]:
    """The response with its size filled in: one buffer, or, when large record data was spliced in
    rather than copied, the list of pieces to write back to back."""
    if not isinstance(out, p.SpliceBuffer) or not out.parts:
        SIZE.pack_into(out, 0, len(out) - 4)
        return out
    pieces = out.pieces()
    first = bytearray(pieces[0])
    SIZE.pack_into(first, 0, out.total_size() - 4)
    pieces[0] = first
    return pieces


def encode_request(header: RequestHeader, flexible: bool, body: bytes | bytearray) -> bytes:
    """Client side framing (tests, benchmarks, tools)."""
    out = bytearray(4)
    out += _HEADER_FIXED.pack(header.api_key, header.api_version, header.correlation_id)
    p.write_string(out, header.client_id)
    if flexible:
        out.append(0)
    out += body
    SIZE.pack_into(out, 0, len(out) - 4)
    return bytes(out)
