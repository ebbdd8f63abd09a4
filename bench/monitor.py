"""What a benchmark phase shows while it runs and leaves behind: a progress bar and throughput over time.

A sampler thread reads the phase's record counters (:class:`bench.workload.Meters`)
every ``interval`` seconds, which gives the throughput-over-time series for the
JSON file and the plot without any timing work in the clients' per-record
loops.  When the stream (stderr) is a terminal, a rich progress bar shows
records done / expected, or seconds elapsed / planned for phases bounded by
time; in CI logs and under pytest nothing is drawn.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any

from bench.workload import Meter, Meters

PROGRESS_REFRESH_S = 0.25


@dataclass
class Timeline:
    """Records/s produced (acknowledged) and consumed per interval, timed from the phase's measured start.

    ``t_s[i]`` is the end of interval ``i``; the last interval may be shorter
    (the phase ended inside it), its rate is over its own length.  The
    ``*_records`` lists hold the exact counts per interval.
    """

    t_s: list[float] = field(default_factory=list)
    produced_records_per_s: list[float] = field(default_factory=list)
    consumed_records_per_s: list[float] = field(default_factory=list)
    produced_records: list[int] = field(default_factory=list)
    consumed_records: list[int] = field(default_factory=list)
    started_at: float | None = None  # perf_counter() of the measured start, None if it never started


class Sampler(threading.Thread):
    """Reads the totals of ``meters`` every ``interval`` seconds from the phase's :meth:`Meters.begin` on."""

    def __init__(self, meters: Meters, interval: float) -> None:
        super().__init__(name="bench-sampler", daemon=True)
        self.meters, self.interval = meters, interval
        self._halt = threading.Event()
        self._samples: list[tuple[float, int, int]] = []

    def _take(self) -> None:
        self._samples.append((time.perf_counter() - self.meters.t0, self.meters.produced.total(),
                              self.meters.consumed.total()))

    def run(self) -> None:
        while not self.meters.started.wait(0.05):
            if self._halt.is_set():
                return
        self._samples.append((0.0, 0, 0))
        k = 1
        while not self._halt.wait(max(0.0, self.meters.t0 + k * self.interval - time.perf_counter())):
            self._take()
            k += 1

    def finish(self) -> Timeline:
        self._halt.set()
        self.join()
        if not self.meters.started.is_set():
            return Timeline()
        if not self._samples:  # the phase began and ended between two looks of the thread
            self._samples.append((0.0, 0, 0))
        self._take()
        samples = self._samples
        # A last interval much shorter than the others would give a noisy rate: fold it into the one before.
        if len(samples) > 2 and samples[-1][0] - samples[-2][0] < 0.2 * self.interval:
            del samples[-2]
        out = Timeline(started_at=self.meters.t0)
        for (t0, p0, c0), (t1, p1, c1) in zip(samples, samples[1:], strict=False):
            dt = max(t1 - t0, 1e-9)
            out.t_s.append(round(t1, 4))
            out.produced_records.append(p1 - p0)
            out.consumed_records.append(c1 - c0)
            out.produced_records_per_s.append(round((p1 - p0) / dt, 1))
            out.consumed_records_per_s.append(round((c1 - c0) / dt, 1))
        return out


class _Bar:
    """A rich progress bar refreshed from a thread of its own; records done / expected, or seconds."""

    def __init__(self, label: str, meter: Meter, meters: Meters, seconds: float | None, stream: IO[str]) -> None:
        from rich.console import Console  # noqa: PLC0415 - only when drawing
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: PLC0415

        self.meter, self.meters, self.seconds = meter, meters, seconds
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[done]}"),
                                 TimeElapsedColumn(), console=Console(file=stream, force_terminal=True),
                                 refresh_per_second=1 / PROGRESS_REFRESH_S)
        self.task = self.progress.add_task(label, total=None, done="starting")
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-progress", daemon=True)

    def _update(self) -> None:
        done, expected = self.meter.total(), self.meter.expected
        if expected:
            self.progress.update(self.task, completed=min(done, expected), total=expected,
                                 done=f"{done:,}/{expected:,} records")
        elif self.seconds and self.meters.started.is_set():
            elapsed = min(time.perf_counter() - self.meters.t0, self.seconds)
            self.progress.update(self.task, completed=elapsed, total=self.seconds,
                                 done=f"{elapsed:.0f}/{self.seconds:g} s, {done:,} records")
        else:
            self.progress.update(self.task, done=f"{done:,} records")

    def _loop(self) -> None:
        while not self._halt.wait(PROGRESS_REFRESH_S):
            self._update()

    def __enter__(self) -> _Bar:
        self.progress.start()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._halt.set()
        self._thread.join()
        self._update()
        self.progress.stop()


def _drawable(stream: IO[str]) -> bool:
    try:
        import rich  # noqa: F401, PLC0415 - optional (bench extra)
    except ImportError:
        return False
    isatty: Callable[[], bool] | None = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


@contextmanager
def observe(label: str, meters: Meters, interval: float, watch: str = "produced", seconds: float | None = None,
            stream: IO[str] | None = None) -> Iterator[list[Timeline]]:
    """Sample ``meters`` while the block runs; a progress bar if ``stream`` (stderr) is a terminal.

    ``watch`` names the meter the bar follows (``produced`` or ``consumed``);
    ``seconds`` is the planned length of a phase bounded by time.  The
    yielded list holds the :class:`Timeline` once the block has ended.
    """
    stream = stream if stream is not None else sys.stderr
    sampler = Sampler(meters, interval)
    out: list[Timeline] = []
    sampler.start()
    bar: Any = _Bar(label, getattr(meters, watch), meters, seconds, stream) if _drawable(stream) else None
    try:
        if bar is None:
            yield out
        else:
            with bar:
                yield out
    finally:
        out.append(sampler.finish())
