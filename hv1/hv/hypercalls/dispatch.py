"""The one hypercall dispatcher (hypercall-interface.md; rules in tlfs-inventory.md §4).

Order of checks (the TLFS leaves it open but wants ACCESS_DENIED to win over state-revealing errors,
"Ordering of Error Conditions"; this is KVM's order, inventory §4.9):

1. CPL > 0 or real mode -> #UD ("Legal Hypercall Environments"). v8086 runs at CPL 3.
2. Unknown code, or a call that is not advertised -> HV_STATUS_INVALID_HYPERCALL_CODE (quietly:
   Windows probes some); a call whose privilege is missing -> HV_STATUS_ACCESS_DENIED.
3. RsvdZ bits 30:27, 47:44, 63:60, or Is Nested (bit 31; hv1 is not nested) ->
   HV_STATUS_INVALID_HYPERCALL_INPUT.
4. Rep count 0 on a rep call, non-zero on a simple call, rep start >= rep count (or non-zero on a
   simple call), a variable header on a call without one -> HV_STATUS_INVALID_HYPERCALL_INPUT.
5. Fast calls: Fast on a call that cannot be fast -> INVALID_HYPERCALL_INPUT (inventory §7.18);
   input beyond 16 bytes without CPUID 0x40000003.EDX[4], or register output without EDX[15] (or
   from a 32-bit caller) -> #UD; a block larger than the 112 bytes of RDX, R8, XMM0-5 ->
   INVALID_HYPERCALL_INPUT.
6. Memory calls: an input or output block whose GPA is not 8-byte aligned, that crosses a page, or
   that is outside guest RAM -> HV_STATUS_INVALID_ALIGNMENT ("Common Hypercall Status Codes"); so is
   an output block on a page the guest may not write (the read/execute-only hypercall page: the
   output GPA must be "mapped and marked writable"), checked before the call runs, so hv1 never
   writes through an overlay the guest cannot write. GPA registers are ignored when the call has no
   input / no output. (Input or output on an overlay the guest can write is "undefined" in the TLFS:
   hv1 reads and writes what the guest would see there.)
7. The handler: statuses of the call itself; rep elements in order with partial completion. (Fault
   injection, hv/inject.py, answers its status here instead of running the handler.)

Result: RAX (x64) or EDX:EAX (x86) = status | reps completed << 32 (reps completed is the absolute
count, "not relative to the rep start index"). Outputs are written on success (simple calls) or for
the completed elements (rep calls) only.

Continuation ("Hypercall Continuation"): a rep call that has run longer than
`partition.rep_budget_ns` (or `rep_budget_reps` elements, or whose VP has `preempt_requested`) with
elements left returns to the guest *without completing*: RIP goes back to the hypercall stub start
and the control word register (RCX, or EDX:EAX) gets the new rep start index, so the guest
re-executes the call and other VPs, timers and interrupts get their turn. At least one element is
processed per exit ("guaranteed to attempt at least one rep").

Fast path (issue 13): everything that follows from the control word alone (steps 2-5 and the block
geometry) is a `Plan`, computed once per control word and calling convention and kept in the
partition's table (dropped when the table or the caps change). A call then reads only the registers
its plan uses, builds no per-call objects beyond the handler's context and output buffer, and
records its trace event without building a dict unless a trace sink wants it (Tracer.record). A rep
call whose definition has a `batch` handler runs its elements in slices of up to REP_BATCH (one
call per slice, over the input list read from guest memory in one piece, into an output list
written back in one piece); the budget and a preempt request are checked between slices. (A call
with fewer than REP_BATCH_MIN elements left uses `element`: there the batch set-up costs more.)
"""

from __future__ import annotations

import struct
import time
from typing import TYPE_CHECKING

from hv1 import profiler as _profiler
from hv1.hv.hypercall_page import STUB_OUT_END
from hv1.hv.hypercalls.abi import (
    MASK32,
    MASK64,
    Control,
    chunks,
    read_fast_block,
    read_fast_chunks,
    read_inputs,
    write_control,
    write_fast_chunks,
    write_result,
)
from hv1.hv.hypercalls.table import HypercallContext, HypercallDef, HypercallTable
from hv1.hv.interfaces import PAGE_SIZE, CpuMode, GpaError, GuestException, GuestMemory, VpRegisters, ud
from hv1.tlfs.feature_discovery import FeaturesEdx
from hv1.tlfs.hypercall_interface import (
    FAST_CHUNK_SIZE,
    GPR_FAST_INPUT_MAX,
    RESULT_REPS_COMPLETED_MASK,
    RESULT_REPS_COMPLETED_SHIFT,
    RESULT_STATUS_MASK,
    XMM_FAST_BLOCK_MAX,
)
from hv1.tlfs.hypercalls import hypercall_name
from hv1.tlfs.status import STATUS_NAMES, HvStatus

if TYPE_CHECKING:
    from hv1.hv.caps import Caps
    from hv1.hv.partition import Partition
    from hv1.hv.vp import Vp
    from hv1.profiler import PhaseClock

S = HvStatus
SUCCESS = int(HvStatus.SUCCESS)
_XMM_IN = int(FeaturesEdx.XmmRegistersForFastHypercallAvailable)
_REG_OUT = int(FeaturesEdx.FastHypercallOutputAvailable)
_TRACE_STATUS = {v: name[len("HV_STATUS_") :] for v, name in STATUS_NAMES.items()}
_TRACE_KEYS = ("code", "fast", "xmm", "rep_start", "rep_count", "status", "reps", "us", "ns")
_TRACE_UD_KEYS = ("code", "fast", "xmm", "status", "us", "ns")
# Events nobody writes (the ring buffer only) carry no duration: the two clock reads would cost more
# than the null call's handler (a clock read is ~0.2 µs here).
_RING_KEYS = _TRACE_KEYS[:-2]
_RING_UD_KEYS = _TRACE_UD_KEYS[:-2]
_EMPTY = memoryview(b"")
_perf_ns = time.perf_counter_ns
# Enum attribute lookups cost ~0.35 µs each in CPython 3.11: the hot path compares with these.
_LONG, _REAL = CpuMode.LONG, CpuMode.REAL
_QQ = struct.Struct("<QQ")
_Q = struct.Struct("<Q")

# Plans kept per table: a guest cycling through random control words must not grow it without bound.
PLANS_MAX = 1024
# Plan key bit for the 32-bit calling convention (a control word is 64 bits).
_X86_KEY = 1 << 64
# Elements per call of a batch handler: the continuation checks (budget, preempt request) run
# between slices, so a slice is short next to the budget (DEFAULT_REP_BUDGET_NS, hv/partition.py).
REP_BATCH = 64
# Fewer elements than this go through `element`: a batch call's set-up (list building, format
# strings) costs more than one element call (bench/profile.py: rep1 twice as long in the handler).
REP_BATCH_MIN = 2


def _align8(n: int) -> int:
    return (n + 7) & ~7


def block_ok(memory: GuestMemory, gpa: int, size: int) -> bool:
    """A memory parameter block is usable: 8-byte aligned, within one page, backed by guest RAM."""
    return gpa & 7 == 0 and (gpa & (PAGE_SIZE - 1)) + size <= PAGE_SIZE and memory.contains(gpa, size)


class Plan:
    """What one control word means for one calling convention, this table and these caps: the
    outcome of checks 2-5 (`status`, or `ud`) when they fail, else the block geometry and which
    parameter registers the call reads. Immutable once built."""

    __slots__ = (
        "ctl", "d", "name", "label", "counter_key", "status", "ud", "reps", "xmm", "fast", "rep",
        "header", "rep_in_off", "in_total", "rep_out_off", "out_total", "out_chunk", "reads_p1",
        "reads_p2",
    )  # fmt: skip

    def __init__(self, ctl: Control, d: HypercallDef | None) -> None:
        self.ctl = ctl
        self.d = d
        self.name = d.name if d is not None else hypercall_name(ctl.code)
        self.label = "hypercall " + self.name  # the profile's kind (hv1/profiler.py)
        # An undefined code is counted under its hex name, as it is traced (hv1 run --stats shows it).
        self.counter_key = d.counter_key if d is not None else "hypercalls." + self.name
        self.status: int | None = None  # a failed check's status: the call is answered with it
        self.ud = False  # a failed check that is #UD
        self.reps = 0  # reps completed reported with `status` (the rep start once checks 2-4 pass)
        self.xmm = False
        self.fast = ctl.fast
        self.rep = d is not None and d.rep
        self.header = self.rep_in_off = self.in_total = 0
        self.rep_out_off = self.out_total = self.out_chunk = 0
        self.reads_p1 = self.reads_p2 = False


def make_plan(d: HypercallDef | None, caps: Caps, ctl: Control, long_mode: bool) -> Plan:
    """Checks 2-5 of the module docstring, in that order, for a control word."""
    pl = Plan(ctl, d)
    if d is None:
        pl.status = S.INVALID_HYPERCALL_CODE
        return pl
    if not d.gate.allows(caps):
        pl.status = d.denied_status
        return pl
    if ctl.reserved or ctl.nested:
        pl.status = S.INVALID_HYPERCALL_INPUT
        return pl
    if d.rep:
        if ctl.rep_count == 0 or ctl.rep_start >= ctl.rep_count:
            pl.status = S.INVALID_HYPERCALL_INPUT
            return pl
    elif ctl.rep_count or ctl.rep_start:
        pl.status = S.INVALID_HYPERCALL_INPUT
        return pl
    if ctl.var_header_qwords and not d.variable:
        pl.status = S.INVALID_HYPERCALL_INPUT
        return pl
    pl.reps = ctl.rep_start

    # Block geometry: header (fixed + variable) then the 8-aligned rep input list; the fixed output
    # then the 8-aligned rep output list ("Variable Sized Hypercall Input Headers").
    header = d.input_size + 8 * ctl.var_header_qwords
    pl.header = header
    pl.rep_in_off = _align8(header)
    pl.in_total = pl.rep_in_off + ctl.rep_count * d.rep_input_size if d.rep and d.rep_input_size else header
    pl.rep_out_off = _align8(d.output_size)
    pl.out_total = (
        pl.rep_out_off + ctl.rep_count * d.rep_output_size if d.rep and d.rep_output_size else d.output_size
    )
    if not ctl.fast:
        pl.reads_p1, pl.reads_p2 = pl.in_total > 0, pl.out_total > 0  # the block GPAs
        return pl
    # Fast: the input block starts in RDX:R8; the output follows the input's chunks.
    pl.reads_p1, pl.reads_p2 = pl.in_total > 0, pl.in_total > 8
    if not d.fast:
        pl.status = S.INVALID_HYPERCALL_INPUT
        return pl
    in_total, out_total = pl.in_total, pl.out_total
    xmm_in = in_total > GPR_FAST_INPUT_MAX
    reg_out = out_total > 0
    pl.out_chunk = chunks(in_total)
    out_end = pl.out_chunk * FAST_CHUNK_SIZE + out_total
    pl.xmm = xmm_in or (reg_out and out_end > GPR_FAST_INPUT_MAX)
    # #UD: XMM input or register output that CPUID does not advertise (or from a 32-bit caller).
    ud_in = xmm_in and not caps.features_edx & _XMM_IN
    ud_out = reg_out and (not long_mode or not caps.features_edx & _REG_OUT)
    # Then INVALID_HYPERCALL_INPUT: XMM use by a call that may not, or a block beyond 112 bytes.
    no_xmm = (xmm_in or reg_out) and not d.xmm
    too_big = in_total > XMM_FAST_BLOCK_MAX or (reg_out and out_end > XMM_FAST_BLOCK_MAX)
    if ud_in or ud_out:
        pl.ud = True
    elif no_xmm or too_big:
        pl.status = S.INVALID_HYPERCALL_INPUT
    return pl


def plan_for(table: HypercallTable, caps: Caps, raw: int, long_mode: bool) -> Plan:
    """The plan of control word `raw` (cached in `table`; rebuilt when `caps` is another object)."""
    if table.plan_caps is not caps:
        table.plans.clear()
        table.plan_caps = caps
    key = raw if long_mode else raw | _X86_KEY
    plan = table.plans.get(key)
    if plan is None:
        ctl = Control.parse(raw)
        plan = make_plan(table.defs.get(ctl.code), caps, ctl, long_mode)
        if len(table.plans) >= PLANS_MAX:
            table.plans.clear()
        table.plans[key] = plan
    return plan


def dispatch(partition: Partition, vp: Vp, regs: VpRegisters) -> None:
    """Execute the hypercall `vp` made, reading and writing `regs`. Raises GuestException (#UD) where
    the TLFS says so; every other outcome is a status in RAX / EDX:EAX. Call under the partition lock."""
    prof = _profiler.ACTIVE
    clk = prof.clock() if prof is not None else None
    tracer = partition.tracer
    timed = tracer.wants("hypercalls")  # a sink records the duration (hv1 stats, timelines)
    t0 = _perf_ns() if timed else 0
    mode = regs.mode()
    long_mode = mode is _LONG
    if mode is _REAL or regs.cpl() != 0:
        partition.counters["hypercall_ud"] += 1
        tracer.emit("hypercalls", vp.index, "#UD", reason="real mode" if mode is _REAL else "CPL>0")
        raise ud()
    if long_mode:
        raw = regs.get("rcx") & MASK64
        plan = plan_for(partition.hypercalls, partition.caps, raw, True)
        # Only the parameter registers the call uses (x64: RDX, R8).
        p1 = regs.get("rdx") & MASK64 if plan.reads_p1 else 0
        p2 = regs.get("r8") & MASK64 if plan.reads_p2 else 0
    else:
        raw, p1, p2 = read_inputs(regs, False)
        plan = plan_for(partition.hypercalls, partition.caps, raw, False)
    ctl = plan.ctl
    status = plan.status
    reps = plan.reps
    yielded = False
    try:
        if plan.ud:
            raise ud()
        if status is None:
            status, reps, yielded = _execute(partition, vp, regs, plan, p1, p2, t0, clk)
    except GuestException:
        partition.counters["hypercall_ud"] += 1
        if timed:
            ns = _perf_ns() - t0
            tracer.record("hypercalls", vp.index, plan.name, _TRACE_UD_KEYS,
                          (ctl.code, ctl.fast, plan.xmm, "#UD", ns // 1000, ns))  # fmt: skip
        else:
            tracer.record(
                "hypercalls", vp.index, plan.name, _RING_UD_KEYS, (ctl.code, ctl.fast, plan.xmm, "#UD")
            )
        raise
    if yielded:
        rip = regs.get("rip") - STUB_OUT_END
        regs.set("rip", rip & (MASK64 if long_mode else MASK32))
        write_control(regs, long_mode, ctl.with_rep_start(reps))
        partition.counters["hypercall_continuations"] += 1
        status_text = "CONTINUE"
    else:
        result = (status & RESULT_STATUS_MASK) | (
            (reps & RESULT_REPS_COMPLETED_MASK) << RESULT_REPS_COMPLETED_SHIFT
        )
        if long_mode:
            regs.set("rax", result)
        else:
            write_result(regs, False, result)
        partition.counters[plan.counter_key] += 1
        status_text = _TRACE_STATUS.get(status) or f"{status:#x}"
    if clk is not None:
        clk.lap("dispatch")
        clk.label = plan.label
    if timed:
        ns = _perf_ns() - t0  # duration: a timeline draws [end - ns, end] (hv1/timeline.py)
        tracer.record(
            "hypercalls", vp.index, plan.name, _TRACE_KEYS,
            (ctl.code, ctl.fast, plan.xmm, ctl.rep_start, ctl.rep_count, status_text, reps, ns // 1000, ns),
        )  # fmt: skip
    else:
        tracer.record(
            "hypercalls", vp.index, plan.name, _RING_KEYS,
            (ctl.code, ctl.fast, plan.xmm, ctl.rep_start, ctl.rep_count, status_text, reps),
        )  # fmt: skip
    if clk is not None:
        clk.lap("trace")


def _execute(
    p: Partition,
    vp: Vp,
    regs: VpRegisters,
    plan: Plan,
    in_gpa: int,
    out_gpa: int,
    t0: int,
    clk: PhaseClock | None,
) -> tuple[int, int, bool]:
    """Run a call that passed checks 2-5: (status, reps completed, yielded)."""
    d = plan.d
    assert d is not None
    ctl = plan.ctl
    in_total = plan.in_total
    block: bytes | bytearray
    if ctl.fast:
        if in_total == 0:
            block = b""
        elif in_total <= GPR_FAST_INPUT_MAX:
            block = _QQ.pack(in_gpa, out_gpa)
        else:
            block = read_fast_block(regs, in_gpa, out_gpa, in_total)
    else:
        mem = p.memory
        if in_total and not block_ok(mem, in_gpa, in_total):
            return S.INVALID_ALIGNMENT, plan.reps, False
        out_total = plan.out_total
        if out_total and not (
            block_ok(mem, out_gpa, out_total) and p.overlays.guest_writable(out_gpa, out_total)
        ):
            # An output block the guest cannot write itself (on the hypercall page) fails the same
            # validation as one outside RAM ("the specified GPA is mapped and the GPA is marked
            # writable", hypercall-interface.md "Alignment Requirements"; hv1 has no
            # parent to send the memory intercept to, so it answers with that check's status).
            return S.INVALID_ALIGNMENT, plan.reps, False
        block = mem.read(in_gpa, in_total) if in_total else b""  # the whole block: one read

    inj = p.inject
    if inj is not None:
        # Fault injection (hv/inject.py): after every ABI check, instead of the handler.
        injected = inj.hypercall_status(vp.index, ctl.code)
        if injected is not None:
            return injected, plan.reps, False

    ctx = HypercallContext(
        p,
        vp,
        ctl.code,
        memoryview(block)[: plan.header] if plan.header else _EMPTY,
        bytearray(d.output_size),
        ctl.var_header_qwords,
        ctl.rep_start,
        ctl.rep_count,
        ctl.fast,
        None if ctl.fast else out_gpa,
    )
    try:
        if not plan.rep:
            assert d.handler is not None
            if clk is not None:
                clk.lap("dispatch")
            status = d.handler(ctx)
            if clk is not None:
                clk.lap("handler")
            if status == SUCCESS and d.output_size:
                _write_output(p, regs, ctl.fast, out_gpa, plan.out_chunk, 0, ctx.output)
            return status, plan.reps, False
        return _run_reps(p, vp, regs, plan, d, ctx, block, out_gpa, t0, clk)
    except GpaError:
        # A handler followed a guest pointer that is not backed by RAM: a bad parameter, never a
        # host error (GPAs of the parameter blocks themselves were checked above).
        return S.INVALID_PARAMETER, plan.reps, False


def _run_reps(
    p: Partition,
    vp: Vp,
    regs: VpRegisters,
    plan: Plan,
    d: HypercallDef,
    ctx: HypercallContext,
    block: bytes | bytearray,
    out_gpa: int,
    t0: int,
    clk: PhaseClock | None,
) -> tuple[int, int, bool]:
    ctl = plan.ctl
    if clk is not None:
        clk.lap("dispatch")
    status = d.handler(ctx) if d.handler is not None else SUCCESS
    if status != SUCCESS:
        return status, ctl.rep_start, False
    out_total, out_chunk = plan.out_total, plan.out_chunk
    if out_total and ctl.fast:
        # Keep what earlier exits of this call already returned in the output registers.
        out_buf = read_fast_chunks(regs, out_chunk, chunks(out_total))
    else:
        out_buf = bytearray(out_total)
    view_in, view_out = memoryview(block), memoryview(out_buf)
    isz, osz = d.rep_input_size, d.rep_output_size
    rin, rout = plan.rep_in_off, plan.rep_out_off
    deadline = (t0 or _perf_ns()) + p.rep_budget_ns
    max_reps = p.rep_budget_reps
    start, count = ctl.rep_start, ctl.rep_count
    done = start
    yielded = False
    batch = d.batch
    if batch is not None and count - start >= REP_BATCH_MIN:
        # Slices of the element lists, each one call (the lists were read in one piece).
        while True:
            n = min(count - done, REP_BATCH)
            if max_reps is not None:
                n = max(1, min(n, max_reps - (done - start)))
            status, k = batch(
                ctx,
                done,
                n,
                view_in[rin + done * isz : rin + (done + n) * isz],
                view_out[rout + done * osz : rout + (done + n) * osz],
            )
            done += k
            if status != SUCCESS or done >= count:
                break
            if (
                vp.preempt_requested
                or (max_reps is not None and done - start >= max_reps)
                or _perf_ns() >= deadline
            ):
                vp.preempt_requested = False
                yielded = True
                break
    else:
        element = d.element
        assert element is not None
        for i in range(start, count):
            ein = view_in[rin + i * isz : rin + (i + 1) * isz]
            eout = view_out[rout + i * osz : rout + (i + 1) * osz]
            status = element(ctx, i, ein, eout)
            if status != SUCCESS:
                break
            done = i + 1
            if done < count and (
                vp.preempt_requested
                or (max_reps is not None and done - start >= max_reps)
                or _perf_ns() >= deadline
            ):
                vp.preempt_requested = False
                yielded = True
                break
    del view_in, view_out
    if clk is not None:
        clk.lap("handler")
    if status == SUCCESS and not yielded and d.output_size:
        out_buf[: d.output_size] = ctx.output
        _write_output(p, regs, ctl.fast, out_gpa, out_chunk, 0, out_buf[: d.output_size])
    if osz and done > start:
        # The completed elements' outputs: one write (fast: the output registers from its chunk).
        lo, hi = rout + start * osz, rout + done * osz
        if ctl.fast:
            _write_output(p, regs, True, out_gpa, out_chunk, 0, out_buf)
        else:
            _write_output(p, regs, False, out_gpa, out_chunk, lo, out_buf[lo:hi])
    return status, done, yielded


def _write_output(
    p: Partition,
    regs: VpRegisters,
    fast: bool,
    out_gpa: int,
    out_chunk: int,
    offset: int,
    data: bytes | bytearray,
) -> None:
    if fast:
        # Registers from the first chunk after the input; "If it overwrites padding regions, it will
        # write zeros" (write_fast_chunks writes whole chunks).
        if out_chunk == 0 and len(data) == 8:
            # The commonest shape (one qword out of a call without input, e.g. the null call): RDX,
            # and R8 as its chunk's zero padding, without the general loop.
            regs.set("rdx", _Q.unpack_from(data)[0])
            regs.set("r8", 0)
            return
        write_fast_chunks(regs, out_chunk, data)
    else:
        p.memory.write(out_gpa + offset, data)
