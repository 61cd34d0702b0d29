"""Virtual TLB flush hypercalls: HvCallFlushVirtualAddressSpace (0x0002), HvCallFlushVirtualAddressList
(0x0003, rep), HvCallFlushVirtualAddressSpaceEx (0x0013) and HvCallFlushVirtualAddressListEx (0x0014,
rep). TLFS virtual-mmu.md "Virtual TLB Enhancements", hypercalls/HvCallFlushVirtualAddress*.md;
inventory §6.3.2-6.3.5, §7.10-7.12.

Inputs (fixed header; the Ex calls carry the HV_VP_SET bank masks as the variable header, the List
calls a rep list of u64 GVA ranges after the header):
    0x0002 / 0x0003: AddressSpace u64 @0, Flags u64 @8, ProcessorMask u64 @16
    0x0013 / 0x0014: AddressSpace u64 @0, Flags u64 @8, HV_VP_SET @16 (Format, ValidBanksMask, banks)

Flags (HV_FLUSH_FLAGS): bit 0 ALL_PROCESSORS (mask / set ignored), bit 1 ALL_VIRTUAL_ADDRESS_SPACES,
bit 2 NON_GLOBAL_MAPPINGS_ONLY. Everything else, including bit 3 USE_EXTENDED_RANGE_FORMAT (needs
0x40000003.EDX[14], not offered) and the cross-VTL bits, is reserved -> HV_STATUS_INVALID_PARAMETER.

What hv1 does: it over-flushes, which the TLFS allows ("Global entries may be (but are not required
to be) left unflushed"; inventory §6.3.5): every target VP's whole TLB, global entries included,
whatever the address space, flags or GVA ranges. Hence (inventory §7):
- §7.12: AddressSpace is not validated (it cannot matter when everything is flushed).
- §7.11: NON_GLOBAL_MAPPINGS_ONLY is accepted on the List calls too (real NT sets it; the TLFS calls
  it "invalid" there).
- §7.10: a ProcessorMask of 0 without ALL_PROCESSORS flushes every VP (Windows Server 2012 relies on
  it; as KVM). An empty *Ex* set flushes nothing.
- GVA range elements are never invalid ("Invalid GVAs ... are ignored"): every rep succeeds, so
  reps completed = rep count.
- VP indexes no VP has are ignored.

"This call guarantees that by the time control returns back to the caller, the observable effects of
all flushes on the specified virtual processors have occurred": the handler validates under the
partition lock and defers `hooks.flush_tlb(src_vp, targets)` with `Vp.defer`; the partition runs
deferred actions after releasing the lock and before the VP re-enters the guest, so the machine can
block (kick the targets, wait for each to flush before its next entry) without holding the lock, and
the caller sees the result only after every target is flushed. A rep call that the dispatcher splits
across exits (continuation) flushes once per exit: more flushing, never less.

Availability: always implemented, in both APIC modes (the machine's flush works on any vCPU). The
recommendation to use them (`remote-flush`, 0x40000004.EAX[2]; `ex-processor-masks`, EAX[11]) is a
performance statement: see the bench note in `flush_tlb`'s docstring in hv/enlightenments.py.
`local-flush` (EAX[1], "faster than INVLPG / MOV CR3") is never true for a userspace VMM: not offered.

Trace: category `flush`, event `flush`: code, flags, set, targets, us (time to completion, measured
around the machine's flush).
"""

from __future__ import annotations

import struct
import time
from typing import TYPE_CHECKING, cast

from hv1.hv.hypercalls.table import HypercallContext, HypercallDef, Kind
from hv1.hv.vpset import ALL_VPS, VP_SET_HEADER, VpSet, VpSetError, parse_vp_set, processor_mask_set
from hv1.tlfs.hypercalls import HypercallCode
from hv1.tlfs.status import HvStatus

if TYPE_CHECKING:
    from hv1.hv.enlightenments import EnlightenmentHooks

# HV_FLUSH_FLAGS (inventory §6.3.2)
HV_FLUSH_ALL_PROCESSORS = 1 << 0
HV_FLUSH_ALL_VIRTUAL_ADDRESS_SPACES = 1 << 1
HV_FLUSH_NON_GLOBAL_MAPPINGS_ONLY = 1 << 2
HV_FLUSH_USE_EXTENDED_RANGE_FORMAT = 1 << 3  # needs EDX[14]; not offered by hv1 -> reserved here
HV_FLUSH_SUPPORTED = (
    HV_FLUSH_ALL_PROCESSORS | HV_FLUSH_ALL_VIRTUAL_ADDRESS_SPACES | HV_FLUSH_NON_GLOBAL_MAPPINGS_ONLY
)

FLUSH_INPUT = struct.Struct("<QQQ")  # AddressSpace, Flags, ProcessorMask
FLUSH_EX_FIXED = struct.Struct("<QQ")  # AddressSpace, Flags; HV_VP_SET follows at 16
FLUSH_EX_VP_SET_OFFSET = FLUSH_EX_FIXED.size
FLUSH_EX_INPUT_SIZE = FLUSH_EX_FIXED.size + VP_SET_HEADER.size  # 32: the fixed header
GVA_RANGE_SIZE = 8  # u64: 63:12 GVA page, 11:0 additional pages (inventory §6.3.3)


def _flush(ctx: HypercallContext, flags: int, vp_set: VpSet) -> int:
    if flags & ~HV_FLUSH_SUPPORTED:
        return HvStatus.INVALID_PARAMETER
    if flags & HV_FLUSH_ALL_PROCESSORS:
        vp_set = ALL_VPS
    p = ctx.partition
    targets = sorted(vp_set.resolve({vp.index for vp in p.vps}))
    p.counters["flush.calls"] += 1
    if not targets:
        return HvStatus.SUCCESS
    p.counters["flush.targets"] += len(targets)
    hooks = cast("EnlightenmentHooks", p.hooks)
    src = ctx.vp.index
    code = ctx.code
    tracer = p.tracer
    set_text = vp_set.describe()

    def run() -> None:
        t0 = time.perf_counter_ns()
        hooks.flush_tlb(src, targets)
        if tracer.wants("flush"):
            us = (time.perf_counter_ns() - t0) / 1000
            tracer.emit(
                "flush", src, "flush", code=code, flags=flags, set=set_text, targets=targets, us=round(us, 1)
            )

    ctx.vp.defer(run)
    return HvStatus.SUCCESS


def flush_virtual_address_space(ctx: HypercallContext) -> int:
    """0x0002, and the header check of 0x0003 (same fixed header)."""
    _space, flags, mask = FLUSH_INPUT.unpack_from(ctx.input)
    # inventory §7.10: mask 0 without ALL_PROCESSORS means every VP.
    vp_set = processor_mask_set(mask) if mask else ALL_VPS
    return _flush(ctx, flags, vp_set)


def flush_virtual_address_space_ex(ctx: HypercallContext) -> int:
    """0x0013, and the header check of 0x0014."""
    _space, flags = FLUSH_EX_FIXED.unpack_from(ctx.input)
    try:
        vp_set = parse_vp_set(ctx.input[FLUSH_EX_VP_SET_OFFSET:], ctx.var_header_qwords)
    except VpSetError as e:
        return e.status
    return _flush(ctx, flags, vp_set)


def gva_range(ctx: HypercallContext, index: int, elem_in: memoryview, elem_out: memoryview) -> int:
    """A GVA range list element: never invalid, and already covered by the whole-TLB flush."""
    return HvStatus.SUCCESS


DEFS = (
    HypercallDef(
        code=HypercallCode.HvCallFlushVirtualAddressSpace,
        name="HvCallFlushVirtualAddressSpace",
        kind=Kind.SIMPLE,
        handler=flush_virtual_address_space,
        input_size=FLUSH_INPUT.size,
        doc="flush the TLB of the VPs of a 64-bit mask (0 = all); waits for completion",
    ),
    HypercallDef(
        code=HypercallCode.HvCallFlushVirtualAddressList,
        name="HvCallFlushVirtualAddressList",
        kind=Kind.REP,
        handler=flush_virtual_address_space,
        element=gva_range,
        input_size=FLUSH_INPUT.size,
        rep_input_size=GVA_RANGE_SIZE,
        doc="flush GVA ranges (whole TLB) on the VPs of a 64-bit mask; waits for completion",
    ),
    HypercallDef(
        code=HypercallCode.HvCallFlushVirtualAddressSpaceEx,
        name="HvCallFlushVirtualAddressSpaceEx",
        kind=Kind.VARIABLE,
        handler=flush_virtual_address_space_ex,
        input_size=FLUSH_EX_INPUT_SIZE,
        doc="flush the TLB of the VPs of an HV_VP_SET; waits for completion",
    ),
    HypercallDef(
        code=HypercallCode.HvCallFlushVirtualAddressListEx,
        name="HvCallFlushVirtualAddressListEx",
        kind=Kind.VARIABLE_REP,
        handler=flush_virtual_address_space_ex,
        element=gva_range,
        input_size=FLUSH_EX_INPUT_SIZE,
        rep_input_size=GVA_RANGE_SIZE,
        doc="flush GVA ranges (whole TLB) on the VPs of an HV_VP_SET; waits for completion",
    ),
)
