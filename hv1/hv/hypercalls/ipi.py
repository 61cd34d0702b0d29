"""Synthetic cluster IPIs: HvCallSendSyntheticClusterIpi (0x000B) and HvCallSendSyntheticClusterIpiEx
(0x0015). TLFS virtual-interrupts.md "Synthetic Cluster IPI", hypercalls/HvCallSendSyntheticClusterIpi*.md;
inventory §6.4.4.

Input (0x000B, simple, 16 bytes; fast form: RDX = Vector | TargetVtl << 32, R8 = ProcessorMask):
    Vector u32 @0, TargetVtl HV_INPUT_VTL u8 @4, padding[3] @5, ProcessorMask u64 @8
Input (0x0015, simple with variable header; XMM fast form possible):
    Vector u32 @0, TargetVtl u8 @4, padding[3] @5, HV_VP_SET @8 (Format, ValidBanksMask fixed;
    BankContents = the variable header)

Statuses (the TLFS lists none for these calls; the generic rules of hypercall-interface.md apply):
- Vector outside 0x10..0xFF ("Must be between >= 0x10 and <= 0xFF") -> HV_STATUS_INVALID_PARAMETER.
- TargetVtl: HV_INPUT_VTL ReservedZ bits 7:5 set, or UseTargetVtl with a VTL other than 0 (hv1 has
  VTL 0 only) -> HV_STATUS_INVALID_PARAMETER. Padding is ignored ("padding ignored on input").
- HV_VP_SET: VarHeaderSize != popcount(ValidBanksMask) -> HV_STATUS_INVALID_HYPERCALL_INPUT; unknown
  Format -> HV_STATUS_INVALID_PARAMETER (hv/vpset.py). Bits for VP indexes no VP has are ignored; an
  empty set sends nothing and succeeds.
- Rep count / control-word / block errors: the dispatcher.

Delivery: a fixed, edge-triggered interrupt (no NMI) through the partition's InterruptSink to every
target, the sender included. The sink sets IRR and kicks the target; for the sender the run loop
evaluates its APIC before re-entering, so a self-IPI is taken before the caller's next instruction
(inventory §6.4.2). A target whose APIC is software-disabled drops it (APIC rules). The sink does not
call back into the partition, so delivering under the partition lock is fine.

Availability: both calls are always implemented, in both APIC modes (kernel mode delivers through
KVM_SIGNAL_MSI). Whether the guest is told to use them is the caps features `cluster-ipi`
(0x40000004.EAX[10]) and `ex-processor-masks` (EAX[11], also the availability hint for the Ex calls).

Trace: category `ipi`, event `send`: code, vector, set, targets (the resolved VP indexes).
"""

from __future__ import annotations

import struct

from hv1.hv.hypercalls.table import HypercallContext, HypercallDef, Kind
from hv1.hv.vpset import VP_SET_HEADER, VpSet, VpSetError, parse_vp_set, processor_mask_set
from hv1.tlfs.hypercalls import HypercallCode
from hv1.tlfs.status import HvStatus
from hv1.tlfs.vp import INPUT_VTL_RSVDZ, INPUT_VTL_TARGET_MASK, INPUT_VTL_USE_TARGET

SEND_IPI_INPUT = struct.Struct("<IB3xQ")  # Vector, TargetVtl, padding, ProcessorMask
SEND_IPI_EX_FIXED = struct.Struct("<IB3x")  # Vector, TargetVtl, padding; HV_VP_SET follows at 8
SEND_IPI_EX_VP_SET_OFFSET = SEND_IPI_EX_FIXED.size
SEND_IPI_EX_INPUT_SIZE = SEND_IPI_EX_FIXED.size + VP_SET_HEADER.size  # 24: the fixed header

IPI_VECTOR_MIN = 0x10
IPI_VECTOR_MAX = 0xFF


def input_vtl_ok(raw: int) -> bool:
    """HV_INPUT_VTL naming VTL 0 (explicitly, or the caller's VTL, which is 0 in hv1)."""
    if raw & INPUT_VTL_RSVDZ:
        return False
    return not (raw & INPUT_VTL_USE_TARGET and raw & INPUT_VTL_TARGET_MASK)


def _send(ctx: HypercallContext, vector: int, target_vtl: int, vp_set: VpSet) -> int:
    if not input_vtl_ok(target_vtl):
        return HvStatus.INVALID_PARAMETER
    if not IPI_VECTOR_MIN <= vector <= IPI_VECTOR_MAX:
        return HvStatus.INVALID_PARAMETER
    p = ctx.partition
    targets = vp_set.resolve({vp.index for vp in p.vps})
    for t in sorted(targets):
        p.irq.request_interrupt(t, vector)
    p.counters["ipi.sent"] += 1
    p.counters["ipi.targets"] += len(targets)
    tracer = p.tracer
    if tracer.wants("ipi"):
        tracer.emit(
            "ipi",
            ctx.vp.index,
            "send",
            code=ctx.code,
            vector=vector,
            set=vp_set.describe(),
            targets=sorted(targets),
        )
    return HvStatus.SUCCESS


def send_synthetic_cluster_ipi(ctx: HypercallContext) -> int:
    vector, target_vtl, mask = SEND_IPI_INPUT.unpack_from(ctx.input)
    return _send(ctx, vector, target_vtl, processor_mask_set(mask))


def send_synthetic_cluster_ipi_ex(ctx: HypercallContext) -> int:
    vector, target_vtl = SEND_IPI_EX_FIXED.unpack_from(ctx.input)
    try:
        vp_set = parse_vp_set(ctx.input[SEND_IPI_EX_VP_SET_OFFSET:], ctx.var_header_qwords)
    except VpSetError as e:
        return e.status
    return _send(ctx, vector, target_vtl, vp_set)


DEFS = (
    HypercallDef(
        code=HypercallCode.HvCallSendSyntheticClusterIpi,
        name="HvCallSendSyntheticClusterIpi",
        kind=Kind.SIMPLE,
        handler=send_synthetic_cluster_ipi,
        input_size=SEND_IPI_INPUT.size,
        xmm=False,
        doc="fixed interrupt to the VPs of a 64-bit mask",
    ),
    HypercallDef(
        code=HypercallCode.HvCallSendSyntheticClusterIpiEx,
        name="HvCallSendSyntheticClusterIpiEx",
        kind=Kind.VARIABLE,
        handler=send_synthetic_cluster_ipi_ex,
        input_size=SEND_IPI_EX_INPUT_SIZE,
        doc="fixed interrupt to the VPs of an HV_VP_SET",
    ),
)
