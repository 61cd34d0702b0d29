"""The APIC access MSRs HV_X64_MSR_EOI / ICR / TPR (0x40000070-0x40000072).

TLFS virtual-interrupts.md "Local APIC MSR Accesses"; PDF §10.2.3; inventory §3.3, §6.4.
"Accelerated MSR access to high usage memory mapped APIC registers": they reach the same registers as
the xAPIC page, in xAPIC and x2APIC mode alike, with the x2APIC MSR rules:

- EOI: write-only, RDMSR #GP. Bits 31:0 ("EOI value") are ignored, like the xAPIC EOI register;
  RsvdZ bits 63:32 set -> #GP.
- ICR: reads ICR-high << 32 | ICR-low. A write is one atomic 64-bit ICR write that sends the IPI,
  `LocalApic.write_icr`: in x2APIC mode the x2APIC destination and reserved-bit #GP; in xAPIC mode
  the destination is bits 63:56 and it never faults.
- TPR: bits 7:0; RsvdZ bits 63:8 set -> #GP (the x2APIC TPR MSR rule).

Choices (inventory §7.7: the TLFS does not say what a set RsvdZ bit does): #GP, as the x2APIC MSRs
and KVM do for bits 63:32; for the TPR also 31:8, as the x2APIC TPR MSR. A self-IPI sent through the
ICR is in IRR when the WRMSR completes, and the run loop evaluates the APIC before re-entering, so it
is taken before the next instruction (inventory §6.4.2).

Gated by AccessIntrCtrlRegs (EAX[4]) plus hv1's `apic-msrs` feature. Implemented on hv1's APIC model
(`--apic user`) only: with KVM's in-kernel APIC, userspace cannot perform an EOI or an ICR write
exactly (KVM_SET_LAPIC neither sends IPIs nor broadcasts EOIs), so the feature is not offered in
kernel mode and the MSRs #GP there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from hv1.hv.caps import Gate
from hv1.hv.interfaces import gp
from hv1.hv.msrs import Scope
from hv1.tlfs import msrs as M
from hv1.tlfs.partition import PartitionPrivilege

if TYPE_CHECKING:
    from hv1.hv.apic import LocalApic
    from hv1.hv.msrs import MsrTable
    from hv1.hv.vp import Vp

APIC_MSRS_GATE = Gate(privileges=int(PartitionPrivilege.AccessIntrCtrlRegs), feature="apic-msrs")
EOI_RSVDZ = 0xFFFF_FFFF_0000_0000
TPR_RSVDZ = ~0xFF & ((1 << 64) - 1)

ApicLookup = Callable[[int], "LocalApic | None"]


def register_apic_msrs(table: MsrTable, apic_for: ApicLookup) -> None:
    """Register HV_X64_MSR_EOI/ICR/TPR. `apic_for(vp_index)` is the VP's LocalApic (None: no APIC
    model, kernel APIC mode: every access #GPs)."""

    def apic(vp: Vp) -> LocalApic:
        a = apic_for(vp.index)
        if a is None:
            raise gp()
        return a

    def write_eoi(vp: Vp, value: int) -> None:
        if value & EOI_RSVDZ:
            raise gp()
        apic(vp).eoi()  # ApicHooks.eoi (lazy-EOI bookkeeping, SynIC, I/O APIC) runs from here

    def read_icr(vp: Vp) -> int:
        return apic(vp).read_icr()

    def write_icr(vp: Vp, value: int) -> None:
        apic(vp).write_icr(value)

    def read_tpr(vp: Vp) -> int:
        return apic(vp).tpr

    def write_tpr(vp: Vp, value: int) -> None:
        if value & TPR_RSVDZ:
            raise gp()
        apic(vp).tpr = value

    table.register(
        M.HV_X64_MSR_EOI, "HV_X64_MSR_EOI", APIC_MSRS_GATE, read=None, write=write_eoi, scope=Scope.VP
    )
    table.register(
        M.HV_X64_MSR_ICR, "HV_X64_MSR_ICR", APIC_MSRS_GATE, read=read_icr, write=write_icr, scope=Scope.VP
    )
    table.register(
        M.HV_X64_MSR_TPR, "HV_X64_MSR_TPR", APIC_MSRS_GATE, read=read_tpr, write=write_tpr, scope=Scope.VP
    )
