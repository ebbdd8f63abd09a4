"""Turn raw samples into figures, and figures into the table, the JSON file and the plot.

A figure is one number with its unit, printed beside the baseline measured in
the same run and the ratio value ÷ baseline; ``bench/results/latest.json``
keeps the same rows plus the run's metadata, so runs can be compared later.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

PERCENTILES = (50.0, 99.0, 99.9)


def percentile(samples: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile: the smallest sample with at least ``pct``% of samples at or below it."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    rank = max(1, math.ceil(round(pct * len(ordered) / 100.0, 9)))  # round: 99.9 * 1000 / 100 > 999
    return ordered[rank - 1]


def pct_label(pct: float) -> str:
    return f"p{pct:g}"


@dataclass
class Figure:
    name: str
    value: float | None
    unit: str
    baseline_name: str | None = None
    baseline_value: float | None = None
    ratio: float | None = None
    samples: int | None = None
    note: str = ""

    def __post_init__(self) -> None:
        if self.ratio is None and self.value is not None and self.baseline_value:
            self.ratio = self.value / self.baseline_value


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    if value == 0 or abs(value) >= 10 ** digits:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def format_table(figures: Sequence[Figure]) -> str:
    headers = ("figure", "value", "unit", "baseline", "baseline value", "ratio", "note")
    rows = [(f.name, _fmt(f.value), f.unit, f.baseline_name or "-", _fmt(f.baseline_value),
             "-" if f.ratio is None else f"{f.ratio:.3g}x", f.note) for f in figures]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    numeric = {1, 4, 5}

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i in numeric else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out.extend(line(r) for r in rows)
    return "\n".join(out)


def write_json(path: Path, figures: Sequence[Figure], meta: dict[str, Any],
               timeseries: dict[str, Any] | None = None) -> None:
    """``{"meta", "figures"}``, plus ``"timeseries"`` (throughput over time) when given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {"meta": meta, "figures": [asdict(f) for f in figures]}
    if timeseries is not None:
        doc["timeseries"] = timeseries
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def _pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend; ImportError if matplotlib is missing."""
    import matplotlib  # noqa: PLC0415 - optional dependency

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def write_plot(path: Path, series: dict[str, Sequence[float]]) -> str | None:
    """Bar chart of latency percentiles (ms) per series; returns why not if matplotlib is missing."""
    try:
        plt = _pyplot()
    except ImportError as exc:
        return f"matplotlib not available ({exc})"
    labels = [pct_label(p) for p in PERCENTILES]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        xs = [j + i * width for j in range(len(labels))]
        ax.bar(xs, values, width=width, label=name)
    ax.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(labels))], labels)
    ax.set_yscale("log")
    ax.set_ylabel("latency (ms, log scale)")
    ax.set_title("Keel latency percentiles vs baselines")
    ax.legend(fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None


def write_throughput_plot(path: Path, phases: Sequence[dict[str, Any]]) -> str | None:
    """Records/s over time, one panel per phase kind: produced (acknowledged) and consumed, Keel and baseline.

    ``phases`` are the entries of the JSON's ``timeseries.phases``.  Returns
    why no plot was written (matplotlib missing, or no phase has samples).
    """
    drawn = [p for p in phases if p["t_s"]]
    if not drawn:
        return "no throughput samples"
    try:
        plt = _pyplot()
    except ImportError as exc:
        return f"matplotlib not available ({exc})"
    kinds = list(dict.fromkeys(p["phase"] for p in drawn))
    fig, axes = plt.subplots(len(kinds), 1, figsize=(9, 2.8 * len(kinds)), squeeze=False)
    for ax, kind in zip(axes[:, 0], kinds, strict=True):
        for p in (p for p in drawn if p["phase"] == kind):
            style = "-" if p["target"] == "keel" else "--"
            target = "Keel" if p["target"] == "keel" else p["target"]
            # produced drawn wider, so it still shows where consumed runs on top of it
            for what, color, width in (("produced", "tab:blue", 3.0), ("consumed", "tab:orange", 1.5)):
                ys = p[f"{what}_records_per_s"]
                if any(ys):  # each value holds over the interval that ends at its t
                    ax.step([0.0, *p["t_s"]], [ys[0], *ys], where="pre", linestyle=style, color=color,
                            linewidth=width, label=f"{target} {what}")
        first = next(p for p in drawn if p["phase"] == kind)
        ax.set_title(first.get("title", kind), fontsize="medium")
        ax.set_ylabel("records/s")
        ax.set_ylim(0, ax.get_ylim()[1] * 1.1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="best")
    axes[-1, 0].set_xlabel("seconds since the phase's measured start")
    fig.suptitle("Throughput over time (per interval)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None
