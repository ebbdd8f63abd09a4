"""What every benchmark suite of ``python -m bench`` hands back to the harness.

A suite (local, s3, failover) measures its own figures and baselines; the
harness only concatenates them into one table and one JSON file.  This
module holds that common shape and the small helpers the suites share.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.report import Figure, percentile

KiB = 1024
MiB = 1024 * KiB


@dataclass
class SuiteResult:
    """Figures of one suite, its metadata, and its failures; ``skipped`` says why it did not run."""

    name: str
    figures: list[Figure] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    skipped: str = ""


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pct_ms(samples: Sequence[float] | None, pct: float) -> float | None:
    """Nearest-rank percentile of samples in seconds, in milliseconds (None without samples)."""
    return percentile(samples, pct) * 1000.0 if samples else None


def sample_note(count: int, wanted: int = 10_000) -> str:
    return f"< {wanted:,} samples" if count < wanted else ""


def join_notes(*notes: str) -> str:
    return "; ".join(n for n in notes if n)
