"""The per-exit cost breakdown (`hv1 run --profile`, bench/profile.py; issue 13): deterministic phase
timing with `time.perf_counter_ns` at phase boundaries. Off by default, and then free: every hook is
`prof = profiler.ACTIVE` and a test for None.

Each thread that handles exits (a VP thread, or bench/profile.py's fakes harness) owns a `PhaseClock`,
a stopwatch that never stops: `lap(phase)` charges the time since the previous lap to `phase`, and
`end(kind)` closes the current exit, whose phase times become one sample of `kind` (the exit kind, or
what a handler labelled it with: "hypercall HvExtCallQueryCapabilities", "rdmsr 0x40000002"). Every
nanosecond of a VP thread's loop therefore belongs to one phase of one exit, and the phases of an
exit add up to its whole round trip, guest time ("run") included. The phases (PHASES) are where the
issue asks the time to be split.

Instrumented: the backends' run loops (hv1/backends/kvm/vcpu.py, hv1/backends/emu/vcpu.py: run,
decode, regsync, deferred = the machine's before_entry), Partition.hypercall (route, lock,
deferred) and the dispatcher (dispatch, handler, trace). The cost of profiling itself (one lap is
two perf_counter_ns-sized operations) is measured and reported beside the breakdown (`lap_ns`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

PHASES = (
    "run",  # inside the backend's run call (KVM_RUN / emu_start): the guest, and the switch to it
    "decode",  # reading the exit (reason, operands) and the exit bookkeeping (count_exit)
    "regsync",  # register state: the emulator's context save/restore, KVM's FPU (XMM) get/set
    "route",  # the machine routing the exit to its handler (Vp.io_out -> Partition.hypercall)
    "lock",  # taking and releasing the partition lock
    "dispatch",  # the hypercall dispatcher's own work: control word, ABI checks, blocks, result
    "handler",  # the handler: the hypercall's, the MSR's or the device's
    "trace",  # trace events (the ring buffer, and the sinks when a category is on)
    "deferred",  # after the handler: the VP's deferred actions and the machine's before_entry
)
_INDEX = {name: i for i, name in enumerate(PHASES)}
# Samples kept per kind (for medians); counts and sums cover every exit.
MAX_SAMPLES = 200_000

_perf_ns = time.perf_counter_ns


class PhaseClock:
    """One thread's stopwatch (see the module docstring). Not thread-safe: one per thread."""

    __slots__ = ("_last", "_acc", "label", "samples", "counts", "sums")

    def __init__(self) -> None:
        self._last = _perf_ns()
        self._acc = [0] * len(PHASES)
        self.label: str | None = None  # set by a handler: the kind this exit is recorded under
        self.samples: dict[str, list[tuple[int, ...]]] = {}
        self.counts: dict[str, int] = {}
        self.sums: dict[str, list[int]] = {}

    def restart(self) -> None:
        """Forget the time since the last lap (a thread that starts its loop now)."""
        self._last = _perf_ns()
        self._acc = [0] * len(PHASES)
        self.label = None

    def lap(self, phase: str) -> None:
        now = _perf_ns()
        self._acc[_INDEX[phase]] += now - self._last
        self._last = now

    def end(self, kind: str) -> None:
        """Close the current exit: record it under `label` if a handler set one, else `kind`."""
        key = self.label or kind
        acc = tuple(self._acc)
        self._acc = [0] * len(PHASES)
        self.label = None
        n = self.counts.get(key, 0)
        self.counts[key] = n + 1
        sums = self.sums.get(key)
        if sums is None:
            self.sums[key] = list(acc)
            self.samples[key] = [acc]
            return
        for i, v in enumerate(acc):
            sums[i] += v
        if n < MAX_SAMPLES:
            self.samples[key].append(acc)


class Profiler:
    """All threads' clocks. Install with `profiling()` (or set ACTIVE) before the VPs run."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._clocks: list[PhaseClock] = []
        self._lock = threading.Lock()

    def clock(self) -> PhaseClock:
        """This thread's clock (created on first use)."""
        c: PhaseClock | None = getattr(self._local, "clock", None)
        if c is None:
            c = self._local.clock = PhaseClock()
            with self._lock:
                self._clocks.append(c)
        return c

    def merged(self) -> tuple[dict[str, int], dict[str, list[int]], dict[str, list[tuple[int, ...]]]]:
        """(counts, sums, samples) by kind over every thread. Call when the VPs are stopped."""
        counts: dict[str, int] = {}
        sums: dict[str, list[int]] = {}
        samples: dict[str, list[tuple[int, ...]]] = {}
        with self._lock:
            clocks = list(self._clocks)
        for c in clocks:
            for key, n in c.counts.items():
                counts[key] = counts.get(key, 0) + n
                s = sums.setdefault(key, [0] * len(PHASES))
                for i, v in enumerate(c.sums[key]):
                    s[i] += v
                samples.setdefault(key, []).extend(c.samples[key])
        return counts, sums, samples

    def summary(self) -> dict[str, Any]:
        """JSON-able breakdown: per kind the count, the total per exit (median, p10, p90, mean, in
        ns) and per phase its median and mean (means add up to the mean total; medians do not)."""
        counts, sums, samples = self.merged()
        kinds: dict[str, Any] = {}
        for key in sorted(counts, key=lambda k: -counts[k]):
            n = counts[key]
            rows = samples[key]
            totals = sorted(sum(r) for r in rows)
            phases = {}
            for i, name in enumerate(PHASES):
                if sums[key][i] == 0:
                    continue
                vals = sorted(r[i] for r in rows)
                phases[name] = {"median": _rank(vals, 0.5), "mean": round(sums[key][i] / n, 1)}
            kinds[key] = {
                "count": n,
                "total": {
                    "median": _rank(totals, 0.5),
                    "p10": _rank(totals, 0.1),
                    "p90": _rank(totals, 0.9),
                    "mean": round(sum(sums[key]) / n, 1),
                },
                "phases": phases,
            }
        return {"unit": "ns", "phases": list(PHASES), "lap_ns": lap_cost_ns(), "kinds": kinds}


def _rank(sorted_vals: list[int], q: float) -> int:
    """Nearest-rank percentile (the rule bench/run.py and kvm_floor.c use)."""
    return sorted_vals[int(q * (len(sorted_vals) - 1) + 0.5)] if sorted_vals else 0


def lap_cost_ns(n: int = 20_000) -> float:
    """What one lap costs on this host now (the instrumentation's own share of a breakdown)."""
    c = PhaseClock()
    t0 = _perf_ns()
    for _ in range(n):
        c.lap("handler")
    return round((_perf_ns() - t0) / n, 1)


def format_summary(summary: dict[str, Any], limit: int = 20) -> str:
    """The breakdown as a text table, µs per exit: one line per kind, phases as columns (median;
    the mean in parentheses where it differs from it by more than 10 %)."""
    phases = [p for p in summary["phases"] if any(p in k["phases"] for k in summary["kinds"].values())]
    head = f"{'exit kind':<44} {'count':>7} {'p50 µs':>8} {'p10':>7} {'p90':>7} " + " ".join(
        f"{p:>14}" for p in phases
    )
    lines = [head]
    for key, k in list(summary["kinds"].items())[:limit]:
        t = k["total"]
        cells = []
        for p in phases:
            ph = k["phases"].get(p)
            if ph is None:
                cells.append(f"{'-':>14}")
                continue
            med, mean = ph["median"] / 1000, ph["mean"] / 1000
            text = f"{med:.2f}" if abs(mean - med) <= 0.1 * max(med, 0.01) else f"{med:.2f} ({mean:.1f})"
            cells.append(f"{text:>14}")
        lines.append(
            f"{key[:44]:<44} {k['count']:>7} {t['median'] / 1000:>8.2f} {t['p10'] / 1000:>7.2f} "
            f"{t['p90'] / 1000:>7.2f} " + " ".join(cells)
        )
    lines.append(
        f"(phase columns: median µs per exit, mean in parentheses; one lap costs {summary['lap_ns']} ns)"
    )
    return "\n".join(lines)


# The profiler every hook reports to; None (the default): profiling is off.
ACTIVE: Profiler | None = None


@contextmanager
def profiling() -> Iterator[Profiler]:
    """Install a fresh Profiler for the duration of the block (then put the previous one back)."""
    global ACTIVE
    prof = Profiler()
    prev, ACTIVE = ACTIVE, prof
    try:
        yield prof
    finally:
        ACTIVE = prev
