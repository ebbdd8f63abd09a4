"""What every API handler module declares: its key, the versions it serves, and one handler."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from protocol.framing import RequestHeader

if TYPE_CHECKING:
    from broker.core import Broker

Message = dict[str, Any]


@dataclass(frozen=True, slots=True)
class RequestContext:
    broker: Broker
    header: RequestHeader
    peer: str

    @property
    def version(self) -> int:
        return self.header.api_version


Handler = Callable[[RequestContext, Message], Awaitable[Message | None]]


@dataclass(frozen=True, slots=True)
class Api:
    key: int
    name: str
    min_version: int
    max_version: int
    handle: Handler
    # Advertised minimum when it differs from what is served (Produce: librdkafka
    # enables compression only if the broker advertises Produce from v0).
    advertised_min: int | None = None
    # Answers a version that is advertised but not served, given (version, correlation id).
    unsupported: Callable[[int, memoryview], bytes | None] | None = None

    @property
    def advertised_range(self) -> tuple[int, int]:
        low = self.min_version if self.advertised_min is None else self.advertised_min
        return low, self.max_version
