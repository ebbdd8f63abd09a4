"""Write-ahead log: produce batches of all partitions are made durable here before they are acknowledged."""

from wal.base import WalEntry, WalError, WriteAheadLog
from wal.file import FileWriteAheadLog

__all__ = ["FileWriteAheadLog", "WalEntry", "WalError", "WriteAheadLog"]
