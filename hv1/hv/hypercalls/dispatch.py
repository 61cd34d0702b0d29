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
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from hv1.hv.hypercall_page import STUB_OUT_END
from hv1.hv.hypercalls.abi import (
    MASK32,
    MASK64,
    Control,
    chunks,
    read_fast_block,
    read_fast_chunks,
    read_inputs,
    result_value,
    write_control,
    write_fast_chunks,
    write_result,
)
from hv1.hv.hypercalls.table import HypercallContext, HypercallDef
from hv1.hv.interfaces import PAGE_SIZE, CpuMode, GpaError, GuestException, GuestMemory, VpRegisters, ud
from hv1.tlfs.feature_discovery import FeaturesEdx
from hv1.tlfs.hypercall_interface import FAST_CHUNK_SIZE, GPR_FAST_INPUT_MAX, XMM_FAST_BLOCK_MAX
from hv1.tlfs.hypercalls import hypercall_name
from hv1.tlfs.status import STATUS_NAMES, HvStatus

if TYPE_CHECKING:
    from hv1.hv.partition import Partition
    from hv1.hv.vp import Vp

S = HvStatus
SUCCESS = int(HvStatus.SUCCESS)
_XMM_IN = int(FeaturesEdx.XmmRegistersForFastHypercallAvailable)
_REG_OUT = int(FeaturesEdx.FastHypercallOutputAvailable)
_TRACE_STATUS = {v: name[len("HV_STATUS_") :] for v, name in STATUS_NAMES.items()}


def _align8(n: int) -> int:
    return (n + 7) & ~7


def block_ok(memory: GuestMemory, gpa: int, size: int) -> bool:
    """A memory parameter block is usable: 8-byte aligned, within one page, backed by guest RAM."""
    return gpa & 7 == 0 and (gpa & (PAGE_SIZE - 1)) + size <= PAGE_SIZE and memory.contains(gpa, size)


class _Outcome:
    """How the call ended: status and reps completed, or `yielded` (continuation)."""

    __slots__ = ("status", "reps", "xmm", "yielded")

    def __init__(self) -> None:
        self.status = SUCCESS
        self.reps = 0
        self.xmm = False
        self.yielded = False


def dispatch(partition: Partition, vp: Vp, regs: VpRegisters) -> None:
    """Execute the hypercall `vp` made, reading and writing `regs`. Raises GuestException (#UD) where
    the TLFS says so; every other outcome is a status in RAX / EDX:EAX. Call under the partition lock."""
    t0 = time.perf_counter_ns()
    mode = regs.mode()
    long_mode = mode is CpuMode.LONG
    tracer = partition.tracer
    if mode is CpuMode.REAL or regs.cpl() != 0:
        partition.counters["hypercall_ud"] += 1
        tracer.emit("hypercalls", vp.index, "#UD", reason="real mode" if mode is CpuMode.REAL else "CPL>0")
        raise ud()
    raw, p1, p2 = read_inputs(regs, long_mode)
    ctl = Control.parse(raw)
    d = partition.hypercalls.defs.get(ctl.code)
    out = _Outcome()
    try:
        _execute(partition, vp, regs, long_mode, ctl, p1, p2, d, out, t0)
    except GuestException:
        partition.counters["hypercall_ud"] += 1
        ns = time.perf_counter_ns() - t0
        tracer.emit(
            "hypercalls", vp.index, d.name if d is not None else hypercall_name(ctl.code), code=ctl.code,
            fast=ctl.fast, xmm=out.xmm, status="#UD", us=ns // 1000, ns=ns,
        )  # fmt: skip
        raise
    if out.yielded:
        rip = regs.get("rip") - STUB_OUT_END
        regs.set("rip", rip & (MASK64 if long_mode else MASK32))
        write_control(regs, long_mode, ctl.with_rep_start(out.reps))
        partition.counters["hypercall_continuations"] += 1
        status_text = "CONTINUE"
    else:
        write_result(regs, long_mode, result_value(out.status, out.reps))
        partition.counters[d.counter_key if d is not None else "hypercalls.unknown"] += 1
        status_text = _TRACE_STATUS.get(out.status) or f"{out.status:#x}"
    ns = time.perf_counter_ns() - t0  # duration: a timeline draws [end - ns, end] (hv1/timeline.py)
    tracer.emit(
        "hypercalls", vp.index, d.name if d is not None else hypercall_name(ctl.code), code=ctl.code,
        fast=ctl.fast, xmm=out.xmm, rep_start=ctl.rep_start, rep_count=ctl.rep_count, status=status_text,
        reps=out.reps, us=ns // 1000, ns=ns,
    )  # fmt: skip


def _execute(
    p: Partition,
    vp: Vp,
    regs: VpRegisters,
    long_mode: bool,
    ctl: Control,
    in_gpa: int,
    out_gpa: int,
    d: HypercallDef | None,
    out: _Outcome,
    t0: int,
) -> None:
    caps = p.caps
    if d is None:
        out.status = S.INVALID_HYPERCALL_CODE
        return
    if not d.gate.allows(caps):
        out.status = d.denied_status
        return
    if ctl.reserved or ctl.nested:
        out.status = S.INVALID_HYPERCALL_INPUT
        return
    rep = d.rep
    if rep:
        if ctl.rep_count == 0 or ctl.rep_start >= ctl.rep_count:
            out.status = S.INVALID_HYPERCALL_INPUT
            return
    elif ctl.rep_count or ctl.rep_start:
        out.status = S.INVALID_HYPERCALL_INPUT
        return
    if ctl.var_header_qwords and not d.variable:
        out.status = S.INVALID_HYPERCALL_INPUT
        return
    out.reps = ctl.rep_start

    # Block geometry: header (fixed + variable) then the 8-aligned rep input list; the fixed output
    # then the 8-aligned rep output list ("Variable Sized Hypercall Input Headers").
    header = d.input_size + 8 * ctl.var_header_qwords
    rep_in_off = _align8(header)
    in_total = rep_in_off + ctl.rep_count * d.rep_input_size if rep and d.rep_input_size else header
    rep_out_off = _align8(d.output_size)
    out_total = (
        rep_out_off + ctl.rep_count * d.rep_output_size if rep and d.rep_output_size else d.output_size
    )

    out_chunk = 0
    if ctl.fast:
        if not d.fast:
            out.status = S.INVALID_HYPERCALL_INPUT
            return
        xmm_in = in_total > GPR_FAST_INPUT_MAX
        reg_out = out_total > 0
        out_chunk = chunks(in_total)
        out.xmm = xmm_in or (reg_out and out_chunk * FAST_CHUNK_SIZE + out_total > GPR_FAST_INPUT_MAX)
        if xmm_in and not caps.features_edx & _XMM_IN:
            raise ud()
        if reg_out and (not long_mode or not caps.features_edx & _REG_OUT):
            raise ud()
        if (xmm_in or reg_out) and not d.xmm:
            out.status = S.INVALID_HYPERCALL_INPUT
            return
        if in_total > XMM_FAST_BLOCK_MAX or (
            reg_out and out_chunk * FAST_CHUNK_SIZE + out_total > XMM_FAST_BLOCK_MAX
        ):
            out.status = S.INVALID_HYPERCALL_INPUT
            return
        block: bytes | bytearray = read_fast_block(regs, in_gpa, out_gpa, in_total)
    else:
        if in_total and not block_ok(p.memory, in_gpa, in_total):
            out.status = S.INVALID_ALIGNMENT
            return
        if out_total and not (
            block_ok(p.memory, out_gpa, out_total) and p.overlays.guest_writable(out_gpa, out_total)
        ):
            # An output block the guest cannot write itself (on the hypercall page) fails the same
            # validation as one outside RAM ("the specified GPA is mapped and the GPA is marked
            # writable", hypercall-interface.md "Alignment Requirements"; hv1 has no
            # parent to send the memory intercept to, so it answers with that check's status).
            out.status = S.INVALID_ALIGNMENT
            return
        block = p.memory.read(in_gpa, in_total) if in_total else b""

    inj = p.inject
    if inj is not None:
        # Fault injection (hv/inject.py): after every ABI check, instead of the handler.
        injected = inj.hypercall_status(vp.index, ctl.code)
        if injected is not None:
            out.status = injected
            return

    ctx = HypercallContext(
        p,
        vp,
        ctl.code,
        memoryview(block)[:header],
        bytearray(d.output_size),
        ctl.var_header_qwords,
        ctl.rep_start,
        ctl.rep_count,
        ctl.fast,
        None if ctl.fast else out_gpa,
    )
    try:
        if not rep:
            assert d.handler is not None
            out.status = d.handler(ctx)
            if out.status == SUCCESS and d.output_size:
                _write_output(p, regs, ctl.fast, out_gpa, out_chunk, 0, ctx.output)
            return
        _run_reps(
            p, vp, regs, ctl, d, ctx, out, block, rep_in_off, rep_out_off, out_total, out_gpa, out_chunk, t0
        )
    except GpaError:
        # A handler followed a guest pointer that is not backed by RAM: a bad parameter, never a
        # host error (GPAs of the parameter blocks themselves were checked above).
        out.status = S.INVALID_PARAMETER


def _run_reps(
    p: Partition,
    vp: Vp,
    regs: VpRegisters,
    ctl: Control,
    d: HypercallDef,
    ctx: HypercallContext,
    out: _Outcome,
    block: bytes | bytearray,
    rep_in_off: int,
    rep_out_off: int,
    out_total: int,
    out_gpa: int,
    out_chunk: int,
    t0: int,
) -> None:
    element = d.element
    assert element is not None
    status = d.handler(ctx) if d.handler is not None else SUCCESS
    if status != SUCCESS:
        out.status = status
        return
    if out_total and ctl.fast:
        # Keep what earlier exits of this call already returned in the output registers.
        out_buf = read_fast_chunks(regs, out_chunk, chunks(out_total))
    else:
        out_buf = bytearray(out_total)
    view_in, view_out = memoryview(block), memoryview(out_buf)
    isz, osz = d.rep_input_size, d.rep_output_size
    deadline = t0 + p.rep_budget_ns
    max_reps = p.rep_budget_reps
    done = ctl.rep_start
    for i in range(ctl.rep_start, ctl.rep_count):
        ein = view_in[rep_in_off + i * isz : rep_in_off + (i + 1) * isz]
        eout = view_out[rep_out_off + i * osz : rep_out_off + (i + 1) * osz]
        status = element(ctx, i, ein, eout)
        if status != SUCCESS:
            break
        done = i + 1
        if done < ctl.rep_count and (
            vp.preempt_requested
            or (max_reps is not None and done - ctl.rep_start >= max_reps)
            or time.perf_counter_ns() >= deadline
        ):
            vp.preempt_requested = False
            out.yielded = True
            break
    del view_in, view_out
    out.status, out.reps = status, done
    if status == SUCCESS and not out.yielded and d.output_size:
        out_buf[: d.output_size] = ctx.output
        _write_output(p, regs, ctl.fast, out_gpa, out_chunk, 0, out_buf[: d.output_size])
    if osz and done > ctl.rep_start:
        lo, hi = rep_out_off + ctl.rep_start * osz, rep_out_off + done * osz
        if ctl.fast:
            _write_output(p, regs, True, out_gpa, out_chunk, 0, out_buf)
        else:
            _write_output(p, regs, False, out_gpa, out_chunk, lo, out_buf[lo:hi])


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
        # write zeros."
        padded = bytes(data) + bytes(-len(data) % FAST_CHUNK_SIZE)
        write_fast_chunks(regs, out_chunk, padded)
    else:
        p.memory.write(out_gpa + offset, data)
