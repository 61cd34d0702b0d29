"""`hv1 stats TRACE.jsonl`: per-hypercall and per-MSR counts, statuses and latency percentiles from a
`--trace-json` file, and optionally a latency histogram (`--histogram PNG`, matplotlib: the `plot`
extra).

Latency is what hv1 measured itself: a hypercall's `ns` (dispatcher entry to result written, the
Python side of the exit; older traces only have `us`) and a synthetic MSR access's `ns` (the
partition's rdmsr/wrmsr). The guest-visible round trip adds the KVM exit (bench/README.md). Tracing
is part of what is measured: the events a call emits while it runs (SynIC deliveries, injections) are
written inside its window, so a --trace-json run is slower than an untraced one; compare runs traced
alike.
Percentiles are nearest-rank: p50 of 1..10 is 5, p90 is 9, p99 is 10 (always a measured value).
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

PERCENTILES = (50, 90, 99)
HISTOGRAM_SERIES = 6  # the most frequent series drawn in a histogram


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed (the `plot` extra)."""


@dataclass
class Series:
    kind: str  # "hypercall", "rdmsr", "wrmsr"
    name: str
    count: int = 0
    latencies_ns: list[int] = field(default_factory=list)
    statuses: collections.Counter[str] = field(default_factory=collections.Counter)

    @property
    def label(self) -> str:
        return f"{self.kind} {self.name}"


def percentile(sorted_values: Sequence[int], p: float) -> int:
    """Nearest-rank percentile of an ascending, non-empty sequence."""
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def collect(records: Iterable[dict[str, Any]]) -> tuple[dict[str, Series], collections.Counter[str]]:
    """Series keyed by label, and the injected events by kind (category "inject")."""
    series: dict[str, Series] = {}
    injected: collections.Counter[str] = collections.Counter()

    def get(kind: str, name: str) -> Series:
        key = f"{kind} {name}"
        s = series.get(key)
        if s is None:
            s = series[key] = Series(kind, name)
        return s

    for rec in records:
        cat, event = rec.get("cat"), str(rec.get("event", ""))
        if cat == "hypercalls":
            if "code" not in rec:
                continue  # the "#UD before decoding" line (CPL > 0, real mode): no call to attribute
            s = get("hypercall", event)
            ns = rec.get("ns")
            if not isinstance(ns, int):
                us = rec.get("us")
                ns = us * 1000 if isinstance(us, int) else None
            status = str(rec.get("status", "?"))
        elif cat == "msrs" and event in ("rdmsr", "wrmsr", "rdmsr-unknown", "wrmsr-unknown"):
            kind = event.removesuffix("-unknown")
            msr = rec.get("msr", "?")
            s = get(kind, f"{msr:#x}" if isinstance(msr, int) else str(msr))
            ns = rec.get("ns") if isinstance(rec.get("ns"), int) and rec.get("ns") else None
            status = "#GP" if rec.get("gp") or rec.get("result") == "#GP" else "ok"
        elif cat == "inject":
            injected[event] += 1
            continue
        else:
            continue
        s.count += 1
        s.statuses[status] += 1
        if ns is not None:
            s.latencies_ns.append(ns)
    return series, injected


def format_stats(series: dict[str, Series], injected: collections.Counter[str] | None = None) -> str:
    rows = sorted(series.values(), key=lambda s: (s.kind != "hypercall", -s.count, s.label))
    head = f"{'kind':<9} {'name':<40} {'count':>7}" + "".join(f" {f'p{p} us':>9}" for p in PERCENTILES)
    lines = [head + f" {'max us':>9}  statuses"]
    for s in rows:
        lat = sorted(s.latencies_ns)
        if lat:
            cols = (
                "".join(f" {percentile(lat, p) / 1000:>9.1f}" for p in PERCENTILES)
                + f" {lat[-1] / 1000:>9.1f}"
            )
        else:
            cols = "".join(f" {'-':>9}" for _ in (*PERCENTILES, 0))
        statuses = " ".join(f"{k}={v}" for k, v in s.statuses.most_common())
        lines.append(f"{s.kind:<9} {s.name:<40} {s.count:>7}{cols}  {statuses}")
    if len(lines) == 1:
        lines.append("(no hypercall or synthetic MSR events in this trace: record with --trace-json)")
    if injected:
        lines.append("injected: " + ", ".join(f"{k}={v}" for k, v in sorted(injected.items())))
    return "\n".join(lines)


def histogram(series: dict[str, Series], path: str) -> None:
    """Draw latency histograms of the most frequent series into a PNG at `path`."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display: files only
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotUnavailable("--histogram needs matplotlib: pip install 'hv1[plot]'") from None
    top = sorted((s for s in series.values() if s.latencies_ns), key=lambda s: -s.count)[:HISTOGRAM_SERIES]
    fig, ax = plt.subplots(figsize=(9, 5))
    try:
        for s in top:
            ax.hist(
                [ns / 1000 for ns in s.latencies_ns], bins=50, alpha=0.55, label=f"{s.label} (n={s.count})"
            )
        ax.set_xlabel("latency (us, hv1's side of the exit)")
        ax.set_ylabel("count")
        ax.set_title("hv1 hypercall / MSR latency")
        if top:
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, "no timed events in this trace", ha="center", transform=ax.transAxes)
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
