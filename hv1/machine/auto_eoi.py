"""SynIC AutoEOI with KVM's in-kernel local APIC (`--apic kernel`).

TLFS inter-partition-communication.md "SINTx Registers": with AutoEOI set, "an implicit EOI" follows
the delivery of the SINT's interrupt; the guest must not EOI it. hv1's SynIC raises a SINT with
KVM_SIGNAL_MSI, and the in-kernel APIC moves the vector from IRR to ISR when the vCPU takes it, inside
KVM_RUN, with no exit to hv1. Left in service, it blocks its own and every lower priority class until
an EOI the guest never writes: a guest relying on AutoEOI hangs.

Userspace cannot clear that ISR bit exactly: KVM_GET_LAPIC/KVM_SET_LAPIC rewrite the whole register
page, so an IPI from another vCPU or an LVT timer expiry that lands between the two ioctls would be
lost (KVM_SET_LAPIC also clears the posted-interrupt descriptor), and the vector may already be
covered by a nested interrupt in ISR when hv1 gets to look.

KVM's own Hyper-V SynIC has the exact mechanism: a per-vCPU bitmap of AutoEOI vectors, consulted at
the moment the CPU acknowledges an interrupt (kvm_get_apic_interrupt: IRR cleared, ISR not set, PPR
re-evaluated; KVM inhibits APIC virtualization while any vCPU uses it, because hardware delivery
would bypass the bitmap). So hv1 activates KVM's SynIC on every vCPU (KVM_CAP_HYPERV_SYNIC2) for that
bitmap alone, and mirrors each SINT's vector and AutoEOI bit into KVM's SINTx with a host-initiated
KVM_SET_MSRS on the VP's own thread before it next enters the guest (`KernelAutoEoi.sync`). An
interrupt is acknowledged only inside KVM_RUN, so the bitmap is always current when KVM consults it.

Nothing else of KVM's SynIC is used: guest accesses to the synthetic MSRs still exit to hv1 (the MSR
filter), its SIMP/SIEFP stay disabled, no SINT is routed to a GSI and no KVM synthetic timer is armed,
so an EOI of a mirrored vector (kvm_hv_synic_send_eoi) finds nothing to do. Only AutoEOI SINTs are
mirrored with their vector; every other SINT reads "masked" in KVM, which then tracks no vector for it.

Deviation (KVM's bitmap is per vector, hv1's APIC model is per delivery): any interrupt on a vector
that an AutoEOI SINT of this VP uses is auto-EOI'd, e.g. a direct-mode synthetic timer or an IPI the
guest sends on the same vector. The TLFS leaves sharing a vector between sources to the guest.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from hv1.tlfs import msrs as M
from hv1.tlfs.synic import (
    HV_SYNIC_FIRST_VALID_VECTOR,
    SINT_AUTO_EOI,
    SINT_COUNT,
    SINT_MASKED,
    SINT_VECTOR_MASK,
)


def kvm_sint_value(raw: int) -> int:
    """KVM's SINTx for hv1's SINTx value `raw`: vector | AutoEOI for an AutoEOI SINT with a valid
    vector, plain "masked" for every other SINT. A masked (or polling) AutoEOI SINT is mirrored
    unmasked: KVM ignores the AutoEOI bit of a masked SINT, but an interrupt already in flight when
    the guest masks it must still be auto-EOI'd, as hv1's own APIC decides per delivery. KVM's SynIC
    never raises a SINT by itself, so "unmasked" there makes no interrupt."""
    vector = raw & SINT_VECTOR_MASK
    if not raw & SINT_AUTO_EOI or vector < HV_SYNIC_FIRST_VALID_VECTOR:
        return SINT_MASKED
    return vector | SINT_AUTO_EOI


class KernelAutoEoi:
    """One VP's mirror of its SINTs into KVM's SynIC. `write_msr(index, value)` is a host-initiated
    KVM_SET_MSRS on the VP's vCPU (raises OSError if KVM refuses)."""

    def __init__(self, write_msr: Callable[[int, int], None]) -> None:
        self._write_msr = write_msr
        self._mirrored: list[int | None] = [None] * SINT_COUNT  # None: KVM's value unknown
        self.refused = 0  # KVM_SET_MSRS failures (the SINT is retried at its next change)

    def sync(self, sints: Sequence[int]) -> None:
        """Make KVM's SINTs match `sints` (hv1's, for this VP); writes only those that changed."""
        for i, raw in enumerate(sints[:SINT_COUNT]):
            value = kvm_sint_value(raw)
            if value == self._mirrored[i]:
                continue
            try:
                self._write_msr(M.HV_X64_MSR_SINT0 + i, value)
            except OSError:
                self.refused += 1
                self._mirrored[i] = None
                continue
            self._mirrored[i] = value

    def forget(self) -> None:
        """KVM's state is unknown again (a partition reset): the next sync writes every SINT."""
        self._mirrored = [None] * SINT_COUNT
