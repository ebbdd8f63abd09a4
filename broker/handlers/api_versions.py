"""ApiVersions (key 18): which APIs and versions this broker serves.

The set advertised is the one a single Kafka release (4.0) would advertise for
these APIs, so that clients that guess the broker's release from the maxima
(kafka-python) guess a coherent one.
"""

from __future__ import annotations

from broker.handlers.base import Api, Message, RequestContext
from protocol.errors import ErrorCode
from protocol.framing import finish_response, start_response
from protocol.schema import response_codec

KEY = 18


def _api_keys() -> list[Message]:
    from broker.handlers import APIS  # noqa: PLC0415 - the registry imports this module

    return [{"api_key": api.key, "min_version": api.advertised_range[0], "max_version": api.advertised_range[1]}
            for api in sorted(APIS.values(), key=lambda a: a.key)]


async def handle(ctx: RequestContext, request: Message) -> Message:
    return {"error_code": ErrorCode.NONE, "api_keys": _api_keys(), "throttle_time_ms": 0}


def unsupported_version(version: int, frame: memoryview) -> bytes:
    """A too-new ApiVersions request gets UNSUPPORTED_VERSION in v0 encoding with the supported ranges."""
    correlation_id = int.from_bytes(frame[4:8], "big", signed=True)
    out = start_response(correlation_id, flexible_header=False)
    response_codec(KEY, 0).write(out, {"error_code": ErrorCode.UNSUPPORTED_VERSION, "api_keys": _api_keys()})
    return bytes(finish_response(out))


API = Api(KEY, "ApiVersions", 0, 4, handle, unsupported=unsupported_version)
