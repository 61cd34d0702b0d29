"""Timelines: trace events as a Chrome JSON trace (the Trace Event Format), which ui.perfetto.dev and
Perfetto's trace processor open (`hv1 run --trace-perfetto FILE`, or `hv1 timeline TRACE.jsonl OUT`
for a `--trace-json` file).

The layout:
- one process per partition (pid = the partition ID, named "partition N"), one thread per VP
  (tid = VP index + 1, named "vpN"; tid 0 is avoided, importers treat it as the idle task), and a
  "host" thread for hv1's own events (VP -1: resets, the scheduler);
- hypercalls and synthetic MSR intercepts are complete slices ("X"): they end when the event was
  traced and last `ns` (the dispatcher's and the MSR path's measured duration), with their
  arguments (code, status, reps, rep_start, rep_count, fast; msr, value, gp) - one VP runs one at a
  time, so a VP's slices never overlap;
- everything else is an instant on its VP's thread: exits, I/O, MMIO, interrupts, APIC and SynIC
  events, timer arm/fire/deliver (named "STIMERx fire"), IPIs, flushes, VP lifecycle, injections;
- message queues are counters: every SynIC event that reports a queue depth (`queued`) sets the
  counter "vpN sintM queue" (the importer names its track "vpN sintM queue depth").

Timestamps are microseconds since the tracer started (the JSON lines' `t`, in seconds).
`Timeline` streams: each record is converted as it comes and written at once, so a long run needs
no memory for it; `close()` finishes the JSON document.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, TextIO

DEFAULT_PID = 1  # hv/partition.PARTITION_ID (not imported: this module is used without a partition)
HOST_TID = 0x7FFF_0000  # the host thread: far from the VP threads (tid = VP index + 1)
_SLICE_CATS = {"hypercalls": "hypercall", "msrs": "msr"}
# Fields shown as hex strings in the UI (the JSON lines keep plain integers).
_HEX_FIELDS = frozenset({"code", "value", "rip", "gpa", "addr", "port", "vector", "type", "msr"})
_RECORD_KEYS = frozenset({"t", "cat", "vp", "event"})


def vp_tid(vp: int) -> int:
    return HOST_TID if vp < 0 else vp + 1


def _args(rec: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in rec.items():
        if k in _RECORD_KEYS:
            continue
        out[k] = f"{v:#x}" if k in _HEX_FIELDS and isinstance(v, int) and not isinstance(v, bool) else v
    return out


def chrome_events(rec: dict[str, Any], pid: int = DEFAULT_PID) -> list[dict[str, Any]]:
    """The trace events for one trace record (a `--trace-json` line as a dict)."""
    cat, vp, event = str(rec.get("cat", "")), int(rec.get("vp", -1)), str(rec.get("event", ""))
    end_us = float(rec.get("t", 0.0)) * 1e6
    tid = vp_tid(vp)
    slice_cat = _SLICE_CATS.get(cat)
    ns = rec.get("ns")
    if slice_cat is not None and isinstance(ns, int) and ns > 0:
        dur = ns / 1000
        name = event if cat == "hypercalls" else f"{event} {rec.get('msr', '?')}"
        return [
            {"name": name, "cat": slice_cat, "ph": "X", "ts": end_us - dur, "dur": dur, "pid": pid,
             "tid": tid, "args": _args(rec)}
        ]  # fmt: skip
    if cat == "timers" and "timer" in rec:
        name = f"STIMER{rec['timer']} {event}"
    elif cat == "inject":
        name = f"inject {event}"
    else:
        name = event
    out = [{"name": name, "cat": cat, "ph": "i", "s": "t", "ts": end_us, "pid": pid, "tid": tid,
            "args": _args(rec)}]  # fmt: skip
    if cat == "synic" and isinstance(rec.get("queued"), int) and "sint" in rec:
        out.append(
            {"name": f"vp{vp} sint{rec['sint']} queue", "cat": "synic", "ph": "C", "ts": end_us, "pid": pid,
             "tid": tid, "args": {"depth": rec["queued"]}}
        )  # fmt: skip
    return out


class Timeline:
    """A Chrome JSON trace written as records arrive (Tracer calls `add` under its lock)."""

    def __init__(self, out: TextIO, pid: int = DEFAULT_PID) -> None:
        self._out = out
        self._pid = pid
        self._threads: set[int] = set()
        self._slice_end: dict[int, float] = {}
        self._first = True
        self.events = 0
        out.write('{"displayTimeUnit": "ns", "traceEvents": [\n')
        # Metadata on the host thread: an importer makes a thread of every (pid, tid) it sees.
        self._put({"name": "process_name", "ph": "M", "pid": pid, "tid": HOST_TID,
                   "args": {"name": f"partition {pid}"}})  # fmt: skip
        self._thread(-1)

    def _put(self, ev: dict[str, Any]) -> None:
        self._out.write(("" if self._first else ",\n") + json.dumps(ev))
        self._first = False
        self.events += 1

    def _thread(self, vp: int) -> None:
        tid = vp_tid(vp)
        if tid in self._threads:
            return
        self._threads.add(tid)
        name = "host" if vp < 0 else f"vp{vp}"
        self._put({"name": "thread_name", "ph": "M", "pid": self._pid, "tid": tid, "args": {"name": name}})
        sort = -1 if vp < 0 else vp
        self._put({"name": "thread_sort_index", "ph": "M", "pid": self._pid, "tid": tid,
                   "args": {"sort_index": sort}})  # fmt: skip

    def add(self, rec: dict[str, Any]) -> None:
        self._thread(int(rec.get("vp", -1)))
        for ev in chrome_events(rec, self._pid):
            if ev["ph"] == "X":
                # A slice starts no earlier than the previous one on its VP ended: `t` is rounded to
                # 0.1 us in the records, and an importer nests or drops slices that overlap.
                last = self._slice_end.get(ev["tid"], 0.0)
                if ev["ts"] < last:
                    ev["dur"] = max(0.0, ev["dur"] - (last - ev["ts"]))
                    ev["ts"] = last
                self._slice_end[ev["tid"]] = ev["ts"] + ev["dur"]
            self._put(ev)

    def close(self) -> None:
        self._out.write("\n]}\n")
        self._out.flush()


def convert(records: Iterable[dict[str, Any]], out: TextIO, pid: int = DEFAULT_PID) -> int:
    """Write a whole Chrome JSON trace for `records`; returns the number of trace events."""
    tl = Timeline(out, pid)
    for rec in records:
        tl.add(rec)
    tl.close()
    return tl.events


def read_trace_json(f: TextIO) -> Iterable[dict[str, Any]]:
    """The records of a `--trace-json` file (one JSON object a line; blank lines skipped). A line that
    is not a JSON object raises ValueError with its line number."""
    for n, line in enumerate(f, 1):
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"line {n}: not JSON ({e.msg})") from None
        if not isinstance(rec, dict):
            raise ValueError(f"line {n}: not a trace record")
        yield rec
