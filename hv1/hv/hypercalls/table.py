"""The declarative hypercall table: one `HypercallDef` per call code.

The dispatcher (dispatch.py) owns the whole ABI: control word, register conventions, memory and
register (fast/XMM) parameter blocks, rep iteration and continuation. Handlers never parse a control
word or touch registers; they get a `HypercallContext` with the input bytes and an output buffer.

- SIMPLE / VARIABLE calls: `handler(ctx) -> status`; `ctx.input` is the header (fixed part plus
  `ctx.var_header_qwords` * 8 bytes for VARIABLE), `ctx.output` a zeroed bytearray of `output_size`
  bytes, copied to the guest on HV_STATUS_SUCCESS only.
- REP / VARIABLE_REP calls: `handler(ctx) -> status` (optional) checks the header once per exit;
  then `element(ctx, index, elem_in, elem_out) -> status` runs for each rep from the rep start
  index. A failing element stops the call with reps completed = its index (hypercall-interface.md
  "Hypercall Classes"). The dispatcher may yield between elements (continuation).
  A REP call may also have `batch(ctx, first, count, elems_in, elems_out) -> (status, done)`: the
  same per-element semantics over a slice of the lists (`count` elements from index `first`), in
  order, stopping at the first failing element (done = elements completed, status its status, or
  SUCCESS with done == count). The dispatcher uses it instead of `element` (issue 13: a per-element
  Python call costs about as much as the element's work); `element` stays the definition and the
  tests check the two agree.

Handlers run under the partition lock. Work that may block (machine hooks: yield, flush, reset) goes
into `ctx.vp.defer(fn)`; it runs after the lock is released, before the VP re-enters the guest.
`ctx.scratch` is free for a rep call's per-exit state (the header handler runs once per exit).

Adding a hypercall (SynIC, flush, IPI, ...): build a `HypercallDef` and `partition.hypercalls.register`
it when the subsystem is attached (or add it to `CORE_HYPERCALLS` in hypercalls/__init__.py).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hv1.hv.caps import ALWAYS, Caps, Gate
from hv1.tlfs.status import HvStatus

if TYPE_CHECKING:
    from hv1.hv.hypercalls.dispatch import Plan
    from hv1.hv.partition import Partition
    from hv1.hv.vp import Vp


class Kind(enum.Enum):
    SIMPLE = "simple"
    REP = "rep"
    VARIABLE = "variable"
    VARIABLE_REP = "variable-rep"

    @property
    def is_rep(self) -> bool:
        return self in (Kind.REP, Kind.VARIABLE_REP)

    @property
    def is_variable(self) -> bool:
        return self in (Kind.VARIABLE, Kind.VARIABLE_REP)


@dataclass(slots=True)
class HypercallContext:
    partition: Partition
    vp: Vp
    code: int
    input: memoryview  # the header: fixed part + variable header
    output: bytearray  # the fixed output part (SIMPLE/VARIABLE)
    var_header_qwords: int = 0
    rep_start: int = 0
    rep_count: int = 0
    fast: bool = False
    output_gpa: int | None = None  # memory-based calls: where the output block goes
    scratch: dict[str, Any] = field(default_factory=dict)  # per-call state for rep handlers


Handler = Callable[[HypercallContext], int]
ElementHandler = Callable[[HypercallContext, int, memoryview, memoryview], int]
BatchHandler = Callable[[HypercallContext, int, int, memoryview, memoryview], tuple[int, int]]


@dataclass(frozen=True)
class HypercallDef:
    code: int
    name: str
    kind: Kind
    handler: Handler | None  # SIMPLE/VARIABLE: the call; REP: optional header check
    element: ElementHandler | None = None  # REP only
    input_size: int = 0  # fixed input header, bytes
    output_size: int = 0  # fixed output, bytes
    rep_input_size: int = 0  # bytes per input list element
    rep_output_size: int = 0  # bytes per output list element
    gate: Gate = ALWAYS
    # Status when `gate` is not granted: ACCESS_DENIED where the TLFS names a privilege for the call,
    # INVALID_HYPERCALL_CODE for calls that are simply not advertised (extended hypercalls).
    denied_status: int = HvStatus.ACCESS_DENIED
    fast: bool = True  # may be called with Fast = 1 (register-based)
    xmm: bool = True  # the fast form may use XMM registers (input > 16 bytes or any output)
    doc: str = ""
    batch: BatchHandler | None = None  # REP only: `element` over a slice of the lists (above)
    # Derived (hot-path shortcuts for the dispatcher).
    rep: bool = field(init=False, repr=False)
    variable: bool = field(init=False, repr=False)
    counter_key: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rep", self.kind.is_rep)
        object.__setattr__(self, "variable", self.kind.is_variable)
        object.__setattr__(self, "counter_key", "hypercalls." + self.name)
        if self.kind.is_rep != (self.element is not None):
            raise ValueError(
                f"{self.name}: rep calls need an element handler, simple calls must not have one"
            )
        if not self.kind.is_rep and self.handler is None:
            raise ValueError(f"{self.name}: simple calls need a handler")
        if self.batch is not None and not self.kind.is_rep:
            raise ValueError(f"{self.name}: only rep calls have a batch handler")
        if not self.kind.is_rep and (self.rep_input_size or self.rep_output_size):
            raise ValueError(f"{self.name}: simple calls have no rep elements")


class HypercallTable:
    def __init__(self, defs: Iterable[HypercallDef] = ()) -> None:
        self.defs: dict[int, HypercallDef] = {}
        # The dispatcher's per-control-word plans (dispatch.Plan), valid for `plan_caps` and the
        # current `defs`: register/replace drop them.
        self.plans: dict[int, Plan] = {}
        self.plan_caps: Caps | None = None
        for d in defs:
            self.register(d)

    def register(self, d: HypercallDef) -> None:
        if d.code in self.defs:
            raise ValueError(f"hypercall {d.code:#06x} ({self.defs[d.code].name}) is already registered")
        self.defs[d.code] = d
        self.plans.clear()

    def replace(self, d: HypercallDef) -> None:
        """Put `d` in place of the registered call with its code (a subsystem that extends a call)."""
        if d.code not in self.defs:
            raise ValueError(f"hypercall {d.code:#06x} is not registered")
        self.defs[d.code] = d
        self.plans.clear()

    def get(self, code: int) -> HypercallDef | None:
        return self.defs.get(code)

    def __iter__(self) -> Iterator[HypercallDef]:
        return iter(sorted(self.defs.values(), key=lambda d: d.code))


def format_table(table: HypercallTable, caps: Caps | None = None) -> str:
    """The hypercall table as text (`hv1 info --hypercalls`); with `caps`, whether each call is
    available to a partition with those capabilities."""
    head = (
        f"{'code':<6} {'name':<32} {'kind':<12} {'in':>5} {'out':>5} {'rep in/out':>10} "
        f"{'fast':<5} {'xmm':<5} gate"
    )
    if caps is not None:
        head += " / available"
    lines = [head]
    for d in table:
        reps = f"{d.rep_input_size}/{d.rep_output_size}" if d.kind.is_rep else "-"
        gate = d.gate.describe()
        if d.gate is not ALWAYS:
            gate += (
                " (else INVALID_CODE)"
                if d.denied_status == HvStatus.INVALID_HYPERCALL_CODE
                else " (else DENIED)"
            )
        line = (
            f"{d.code:#06x} {d.name:<32} {d.kind.value:<12} {d.input_size:>5} {d.output_size:>5} {reps:>10} "
            f"{'yes' if d.fast else 'no':<5} {'yes' if d.xmm else 'no':<5} {gate}"
        )
        if caps is not None:
            line += " / " + ("yes" if d.gate.allows(caps) else "no")
        lines.append(line)
    return "\n".join(lines)
