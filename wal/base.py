"""The write-ahead log contract shared by every WAL backend.

The broker acknowledges a produce only once its batch is durable in the WAL, so
the broker codes against this interface and never against one backend (file with
fsync group commit, or object storage).  Payloads are opaque bytes here: the
broker frames its own header and the Kafka record batch inside them.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

Buffer = bytes | bytearray | memoryview


@dataclass(frozen=True, slots=True)
class WalEntry:
    """One replayed entry.

    ``position`` is the log sequence number: dense, strictly increasing from
    where the log starts, never reused for an acknowledged entry, and stable
    across restarts.
    """

    position: int
    payload: bytes


class WalError(Exception):
    """The log can no longer make writes durable (e.g. a disk error).

    Once raised by ``append`` the log is dead: every later append fails too.
    The broker treats it as fatal.
    """


class WriteAheadLog(abc.ABC):
    """An append-only, group-committed log of opaque payloads."""

    #: Counters such as ``appends``, ``commits`` and ``bytes_written`` so tests
    #: and benchmarks can show how well appends are batched.
    stats: dict[str, int]

    @abc.abstractmethod
    async def open(self) -> list[WalEntry]:
        """Open or recover the log; return every retained intact entry in position order.

        A torn or corrupt tail (a crash mid-write) is cut off with a warning.
        Must be called exactly once, before ``append``.
        """

    @abc.abstractmethod
    async def append(self, parts: Sequence[Buffer]) -> int:
        """Append one entry whose payload is the concatenation of ``parts``.

        The position is assigned before the coroutine first suspends, so
        appends started in some order get positions in that order.  Returns the
        position once the entry is durable.  Raises :class:`WalError` if the log
        cannot make it durable.  The caller must not mutate ``parts`` until the
        call returns.
        """

    @abc.abstractmethod
    def submit(self, parts: Sequence[Buffer]) -> asyncio.Future[int]:
        """``append`` without the await: queue the entry now, get a future of its durable position.

        Positions follow the order of ``submit`` calls; the broker relies on this
        to append from synchronous code that has just assigned offsets.
        """

    @abc.abstractmethod
    async def trim(self, before_position: int) -> None:
        """Declare entries with ``position < before_position`` no longer needed.

        The log may then delete storage that only holds such entries.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Complete every pending append, then release the log's resources."""

    @property
    @abc.abstractmethod
    def next_position(self) -> int:
        """The position the next append will get."""
