"""Fault-injecting wrapper around any object store, for chaos and retry tests.

Invariant 1 says an acknowledged record survives object-store errors and
latency; this wrapper produces those on demand. It adds latency (with
jitter), raises retriable errors at a given rate, optionally *after* the inner
operation took effect (a PUT that landed while the client saw a timeout: the
case that makes retries and CAS interesting), or makes the whole store
unavailable. Settings change at runtime; ``stats`` counts calls and injected
faults per operation so a test can check the faults really happened. Given a
``seed`` and the same sequence of calls, the same faults are injected.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Literal, TypeVar

from objectstore.base import Data, ObjectInfo, ObjectStore, TransientError

FaultKind = Literal["slowdown", "timeout", "reset"]
OPS = (
    "put",
    "put_if_absent",
    "put_if_match",
    "get",
    "get_with_etag",
    "head",
    "list",
    "delete",
    "delete_many",
)
_KINDS = ("slowdown", "timeout", "reset")

_T = TypeVar("_T")


class InjectedFault(TransientError):
    """A fault this wrapper made up. ``landed`` is True when the inner operation did take effect."""

    def __init__(self, op: str, kind: str, landed: bool) -> None:
        when = "after the operation took effect" if landed else "before the operation ran"
        super().__init__(f"injected {kind} on {op}, {when}")
        self.op = op
        self.kind = kind
        self.landed = landed


@dataclass
class OpStats:
    calls: int = 0
    faults: int = 0  # injected errors of any kind, unavailability included
    faults_after: int = 0  # of those, raised after the inner operation took effect


class FaultInjectingStore(ObjectStore):
    def __init__(self, inner: ObjectStore, *, seed: int | None = None) -> None:
        self.inner = inner
        self._rng = random.Random(seed)
        self.stats: dict[str, OpStats] = {op: OpStats() for op in OPS}
        self.clear()

    # ---- configuration ---------------------------------------------------

    def set_latency(self, seconds: float, jitter: float = 0.0) -> None:
        """Delay every operation by ``seconds`` plus a uniform random ``[0, jitter)``."""
        if seconds < 0 or jitter < 0:
            raise ValueError("latency and jitter must be >= 0")
        self._latency = seconds
        self._jitter = jitter

    def set_error_rate(
        self,
        rate: float,
        kind: FaultKind = "slowdown",
        ops: set[str] | None = None,
        *,
        after_fraction: float = 0.0,
    ) -> None:
        """Fail a ``rate`` fraction of calls to ``ops`` (default: all) with an InjectedFault of ``kind``.

        ``after_fraction`` of those faults are raised after the inner operation
        completed, so a write lands although the caller sees an error.
        """
        if not 0.0 <= rate <= 1.0 or not 0.0 <= after_fraction <= 1.0:
            raise ValueError("rate and after_fraction must be within [0, 1]")
        if kind not in _KINDS:
            raise ValueError(f"unknown fault kind {kind!r}, expected one of {_KINDS}")
        selected = frozenset(OPS if ops is None else ops)
        if unknown := selected - set(OPS):
            raise ValueError(f"unknown operations {sorted(unknown)}, expected some of {OPS}")
        self._error_rate = rate
        self._error_kind: str = kind
        self._error_ops = selected
        self._after_fraction = after_fraction

    def set_unavailable(self, unavailable: bool = True) -> None:
        """While set, every operation fails at once with an InjectedFault of kind 'unavailable'."""
        self._unavailable = unavailable

    def clear(self) -> None:
        """Remove all faults and latency (the counters in ``stats`` are kept)."""
        self.set_latency(0.0)
        self.set_error_rate(0.0)
        self.set_unavailable(False)

    def reset_stats(self) -> None:
        self.stats = {op: OpStats() for op in OPS}

    # ---- the wrapped operations -----------------------------------------

    async def _call(self, op: str, action: Callable[[], Awaitable[_T]]) -> _T:
        stats = self.stats[op]
        stats.calls += 1
        if self._unavailable:
            stats.faults += 1
            raise InjectedFault(op, "unavailable", landed=False)
        # Draw everything before the first await so concurrent calls draw in call order.
        delay = self._latency + (self._rng.uniform(0.0, self._jitter) if self._jitter else 0.0)
        fault = op in self._error_ops and self._rng.random() < self._error_rate
        after = fault and self._rng.random() < self._after_fraction
        if delay:
            await asyncio.sleep(delay)
        if fault and not after:
            stats.faults += 1
            raise InjectedFault(op, self._error_kind, landed=False)
        result = await action()
        if after:
            stats.faults += 1
            stats.faults_after += 1
            raise InjectedFault(op, self._error_kind, landed=True)
        return result

    async def put(self, key: str, data: Data) -> str:
        return await self._call("put", lambda: self.inner.put(key, data))

    async def put_if_absent(self, key: str, data: Data) -> str:
        return await self._call("put_if_absent", lambda: self.inner.put_if_absent(key, data))

    async def put_if_match(self, key: str, data: Data, etag: str) -> str:
        return await self._call("put_if_match", lambda: self.inner.put_if_match(key, data, etag))

    @property
    def buffer_pool_bytes(self) -> int:
        return self.inner.buffer_pool_bytes

    def recycle(self, data: object) -> None:
        self.inner.recycle(data)

    async def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        return await self._call("get", lambda: self.inner.get(key, start, end))

    async def get_with_etag(self, key: str) -> tuple[bytes, str]:
        return await self._call("get_with_etag", lambda: self.inner.get_with_etag(key))

    async def head(self, key: str) -> ObjectInfo:
        return await self._call("head", lambda: self.inner.head(key))

    async def list(self, prefix: str) -> list[ObjectInfo]:
        return await self._call("list", lambda: self.inner.list(prefix))

    async def delete(self, key: str) -> None:
        await self._call("delete", lambda: self.inner.delete(key))

    async def delete_many(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        await self._call("delete_many", lambda: self.inner.delete_many(keys))

    async def close(self) -> None:
        await self.inner.close()
