"""Trace events: one readable line per event (`--trace CATS`), JSON lines (`--trace-json FILE`) and a
Chrome JSON timeline for Perfetto (`--trace-perfetto FILE`, hv1/timeline.py).

Every event also goes into a small ring buffer, whatever is enabled, so that a fatal stop can print
the last events that led to it. Callers on hot paths test `tracer.wants(cat)` before building fields,
or use `record` (constant field names, a tuple of values): with the category off it is one ring-buffer
append, and the fields become a dict only when the event is written or the ring is read (issue 13:
"tracing that costs nothing when off").
"""

from __future__ import annotations

import collections
import json
import sys
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from hv1.timeline import Timeline

# Categories a user can name with --trace. "all" enables every one.
CATEGORIES = (
    "exits",  # every VM exit by kind
    "io",  # port I/O reaching a device (or nobody)
    "mmio",  # MMIO accesses
    "msrs",  # synthetic and APIC MSR reads/writes, decoded
    "hypercalls",  # one line per hypercall
    "synic",  # messages posted/queued/delivered/EOM, event flags, SINT interrupts
    "timers",  # synthetic timer arm/fire/deliver/cancel
    "apic",  # APIC model: IPIs, EOI, LVT timer
    "irq",  # interrupt injection
    "ipi",  # IPI hypercalls
    "flush",  # TLB flush hypercalls
    "vp",  # VP lifecycle: start, INIT/SIPI, halt, stop
    "crash",  # guest crash notifications
    "inject",  # fault injection: every injected failure or delay (hv/inject.py)
    # partition engine (hv1/hv/hypervisor.py): create/initialize/finalize/delete, deposit/withdraw,
    # map/modify/unmap, intercept-install, vp-create/delete/resume/suspend; and the child runtime
    # (hv1/machine/child.py): child-running, memory-layout, intercept, failures
    "partitions",
)

RING_SIZE = 64


class TraceError(ValueError):
    pass


def parse_categories(spec: str) -> frozenset[str]:
    cats: set[str] = set()
    for raw in spec.split(","):
        name = raw.strip()
        if not name:
            continue
        if name == "all":
            cats.update(CATEGORIES)
        elif name in CATEGORIES:
            cats.add(name)
        else:
            raise TraceError(f"unknown trace category {name!r} (choose from: all, {', '.join(CATEGORIES)})")
    return frozenset(cats)


class Tracer:
    """Thread-safe event sink. `emit` is cheap when the category is off (ring buffer append only)."""

    def __init__(
        self,
        categories: Iterable[str] = (),
        text: TextIO | None = None,
        json_out: TextIO | None = None,
        timeline: Timeline | None = None,
    ) -> None:
        self.categories = frozenset(categories)
        self._text = text if text is not None else sys.stderr
        self._json = json_out
        self._timeline = timeline
        # A sink that records every category (JSON lines, timeline): then every event is written.
        self._record_all = json_out is not None or timeline is not None
        self._ring: collections.deque[tuple[float, str, int, str, _Fields]] = collections.deque(
            maxlen=RING_SIZE
        )
        self._lock = threading.Lock()
        self._t0 = time.monotonic()
        self.counts: collections.Counter[str] = collections.Counter()

    def wants(self, cat: str) -> bool:
        return cat in self.categories or self._record_all

    def emit(self, cat: str, vp: int, event: str, **fields: Any) -> None:
        t = time.monotonic() - self._t0
        self._ring.append((t, cat, vp, event, fields))
        if cat in self.categories or self._record_all:
            self._write(t, cat, vp, event, fields)

    def record(self, cat: str, vp: int, event: str, keys: tuple[str, ...], values: tuple[Any, ...]) -> None:
        """`emit(cat, vp, event, **dict(zip(keys, values)))` for hot paths (the hypercall dispatcher):
        `keys` is a constant tuple, and no dict is built while `cat` is not written anywhere."""
        t = time.monotonic() - self._t0
        if cat in self.categories or self._record_all:
            fields = dict(zip(keys, values, strict=True))
            self._ring.append((t, cat, vp, event, fields))
            self._write(t, cat, vp, event, fields)
        else:
            self._ring.append((t, cat, vp, event, (keys, values)))

    def _write(self, t: float, cat: str, vp: int, event: str, fields: dict[str, Any]) -> None:
        with self._lock:
            if cat in self.categories:
                self._text.write(format_line(t, cat, vp, event, fields) + "\n")
                self._text.flush()
            if self._record_all:
                rec = {"t": round(t, 7), "cat": cat, "vp": vp, "event": event}
                rec.update({k: _jsonable(v) for k, v in fields.items()})
                if self._json is not None:
                    self._json.write(json.dumps(rec) + "\n")
                if self._timeline is not None:
                    self._timeline.add(rec)  # the same record a --trace-json line holds

    def last_events(self) -> list[str]:
        return [format_line(t, cat, vp, event, _as_dict(f)) for t, cat, vp, event, f in list(self._ring)]

    def close(self) -> None:
        with self._lock:
            if self._json is not None:
                self._json.flush()
            if self._timeline is not None:
                self._timeline.close()
                self._timeline = None


# A ring entry's fields: a dict (emit), or the (keys, values) pair `record` keeps until it is read.
_Fields = dict[str, Any] | tuple[tuple[str, ...], tuple[Any, ...]]


def _as_dict(fields: _Fields) -> dict[str, Any]:
    return fields if isinstance(fields, dict) else dict(zip(*fields, strict=True))


def _jsonable(v: Any) -> Any:
    if isinstance(v, (int, float, str, bool)) or v is None:
        return v
    if isinstance(v, (bytes, bytearray)):
        return v.hex()
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return str(v)


# Fields that are amounts, not addresses, codes or register values: printed in decimal.
_DECIMAL_FIELDS = frozenset({"reps", "rep_start", "rep_count", "count", "n", "targets_n", "timer", "sint"})
_DECIMAL_SUFFIXES = ("us", "ns", "ms", "_s")


def _fmt(v: Any, key: str = "") -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        if key in _DECIMAL_FIELDS or key.endswith(_DECIMAL_SUFFIXES):
            return str(v)
        return f"{v:#x}" if v > 9 else str(v)
    if isinstance(v, (bytes, bytearray)):
        return v.hex()
    return str(v)


def format_line(t: float, cat: str, vp: int, event: str, fields: dict[str, Any]) -> str:
    parts = " ".join(f"{k}={_fmt(v, k)}" for k, v in fields.items())
    vps = f"vp{vp}" if vp >= 0 else "host"
    return f"[{t:12.6f}] {cat:<10} {vps:<5} {event}" + (f" {parts}" if parts else "")


NULL_TRACER = Tracer()
