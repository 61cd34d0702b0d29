"""The VP assist page (HV_X64_MSR_VP_ASSIST_PAGE) and the EOI assist ("lazy EOI") protocol.

TLFS vp-properties.md "Virtual Processor Assist Page", datatypes/hv_vp_assist_page.md,
virtual-interrupts.md "EOI Assist"; inventory §3.3, §6.4.3, §7.4, §7.21, §7.33.

MSR 0x40000073 (per VP): bit 0 Enable, 11:1 RsvdP (stored, read back), 63:12 PFN. Gated by
AccessIntrCtrlRegs (EAX[4], PDF App. C; inventory §7.21) plus hv1's `vp-assist` feature. Enabling lays
a per-VP overlay page (hv/overlay.py) over the PFN; a PFN beyond guest RAM is accepted and the page
is then "not accessible" (no fault). The page is zeroed when it goes from disabled to enabled
(inventory §7.4: Xen zeroes the whole page, KVM the first dword); moving an enabled page keeps its
content, which follows the overlay; disabling restores the RAM underneath.

EOI assist (offset 0, bit 0 NoEoiRequired). The guest EOIs with `btr [assist], 0; jc done; wrmsr EOI`.
hv1 implements it on its own APIC model (`--apic user`); the in-kernel APIC cannot expose IRR/ISR
changes to userspace, so in kernel mode the bit is never set (inventory §7.33; conforming, the guest
then always EOIs). The protocol, entirely on the VP's own thread while it is out of guest mode (the
guest cannot race with us: it is stopped):

- `interrupt_injected(v)` (right after the run loop acknowledged `v`): the hypervisor "sets the No EOI
  required bit when it injects a virtual interrupt if ... the virtual interrupt is edge-triggered, and
  there are no lower priority interrupts pending": `LocalApic.eoi_can_be_lazy(v)` (also requires `v`
  to be the highest in-service vector). Otherwise a set bit is cleared, so the guest's EOI for `v`
  traps. AutoEOI vectors never enter ISR and leave the bit alone.
- `after_exit()` (the run loop calls it before it looks at the APIC, i.e. before acknowledging
  anything and before sleeping): if the guest cleared the bit, it EOI'd without trapping: perform
  that EOI now ("At a later instant, the hypervisor can derive the state of the local APIC depending
  on the current value of the NoEoiRequired bit"). If the bit is still set but the interrupt may no
  longer be EOI'd lazily (a lower-priority interrupt arrived: the sender kicked this VP, so we run),
  clear it: "If, at a later time, a lower priority interrupt is requested, the hypervisor clears the
  No EOI required bit such that a subsequent EOI causes an intercept."
- `apic_eoi(vector, level)` (from the APIC's `ApicHooks.eoi`, for every EOI: MMIO, x2APIC MSR,
  HV_X64_MSR_EOI): a conventional EOI while the bit was armed. Bit still set: that EOI retired the
  lazily-EOI-able vector itself (conventional EOIs stay valid, "Enabling and disabling ... any time"),
  so disarm. Bit clear: the guest had already EOI'd the armed vector lazily and this EOI was meant
  for the next in-service vector, so one more EOI is due.

Invariant: while armed, the armed vector is the highest in-service vector (only an injection adds to
ISR, and every injection re-evaluates the bit), so the lazy EOI always retires it ("the EOI intercept
is avoided only for the highest priority interrupt"). Counters (partition.counters): `lazy_eoi.armed`,
`lazy_eoi.completed` (EOI exits saved), `lazy_eoi.withdrawn`, `lazy_eoi.conventional`.
"""

from __future__ import annotations

import struct
from collections import Counter
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from hv1.hv.caps import Gate
from hv1.hv.interfaces import TraceSink
from hv1.hv.msrs import Scope
from hv1.hv.overlay import OverlayPage
from hv1.hv.vp import missing_state
from hv1.tlfs import msrs as M
from hv1.tlfs.partition import PartitionPrivilege

if TYPE_CHECKING:
    from hv1.hv.apic import LocalApic
    from hv1.hv.msrs import MsrTable
    from hv1.hv.vp import Vp

# HV_X64_MSR_VP_ASSIST_PAGE (vp-properties.md)
VP_ASSIST_ENABLE = 1 << 0
VP_ASSIST_RSVDP = 0xFFE  # 11:1
VP_ASSIST_PFN_SHIFT = 12

# HV_VP_ASSIST_PAGE (datatypes/hv_vp_assist_page.md; inventory App. B.1)
APIC_ASSIST_OFFSET = 0x000  # HV_VIRTUAL_APIC_ASSIST, u32
NO_EOI_REQUIRED = 1 << 0  # bit 0; 31:1 RsvdZ
_U32 = struct.Struct("<I")


# Same privilege as the APIC MSRs (App. C "AccessApicMsrs"), plus hv1's feature grant.
VP_ASSIST_GATE = Gate(privileges=int(PartitionPrivilege.AccessIntrCtrlRegs), feature="vp-assist")


class VpAssist:
    """One VP's assist page and its EOI assist state. Thread-safety: every method takes `lock` (the
    partition lock, an RLock); `after_exit` and `interrupt_injected` have a lock-free fast path."""

    def __init__(
        self,
        vp_index: int,
        page: OverlayPage,
        lock: AbstractContextManager[Any],
        *,
        apic: LocalApic | None = None,
        lazy_eoi: bool = True,
        counters: Counter[str] | None = None,
        tracer: TraceSink | None = None,
    ) -> None:
        """`apic`: this VP's LocalApic in user APIC mode (None: kernel APIC, no EOI assist).
        `lazy_eoi`: set NoEoiRequired at all (off: the page exists but the bit stays 0)."""
        self.vp_index = vp_index
        self.page = page
        self._lock = lock
        self.apic = apic
        self.lazy_eoi = lazy_eoi and apic is not None
        self.counters: Counter[str] = counters if counters is not None else Counter()
        self._tracer = tracer
        self.value = 0  # the MSR
        self.armed: int | None = None  # vector whose NoEoiRequired bit we set, if still set by us

    # --- the MSR ------------------------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        return bool(self.value & VP_ASSIST_ENABLE)

    def read_msr(self) -> int:
        return self.value

    def write_msr(self, value: int) -> None:
        """Any value is accepted: RsvdP bits are stored, a PFN outside RAM leaves the page mapped but
        not accessible (vp-properties.md; inventory §3.1)."""
        value &= (1 << 64) - 1
        with self._lock:
            self._settle(keep=False)  # a lazy EOI the guest already did is performed first
            was_enabled = self.enabled
            self.value = value
            if value & VP_ASSIST_ENABLE:
                self.page.map(value >> VP_ASSIST_PFN_SHIFT)
                if not was_enabled:
                    self.page.zero()
            else:
                self.page.unmap()
        self._trace("vp-assist", value=value, accessible=self.page.accessible)

    def reset(self) -> None:
        with self._lock:
            self.value = 0
            self.armed = None
            self.page.unmap()
            self.page.zero()

    # --- EOI assist ---------------------------------------------------------------------------------
    def _usable(self) -> bool:
        return self.lazy_eoi and self.enabled and self.page.accessible

    def _bit(self) -> bool:
        return bool(_U32.unpack_from(self.page.data(), APIC_ASSIST_OFFSET)[0] & NO_EOI_REQUIRED)

    def _set_bit(self, on: bool) -> None:
        data = self.page.data()
        (word,) = _U32.unpack_from(data, APIC_ASSIST_OFFSET)
        _U32.pack_into(
            data, APIC_ASSIST_OFFSET, (word | NO_EOI_REQUIRED) if on else (word & ~NO_EOI_REQUIRED)
        )

    def after_exit(self) -> None:
        """Call on the VP's thread after every exit, before the APIC is evaluated or acknowledged
        (start of the run loop's before-entry step, and before sleeping on HLT/guest idle)."""
        if self.armed is None:
            return
        with self._lock:
            self._settle(keep=True)

    def _settle(self, keep: bool) -> None:
        """Resolve an armed bit: the guest cleared it -> do its EOI; else disarm unless `keep` and the
        armed vector may still be EOI'd lazily."""
        vector = self.armed
        if vector is None:
            return
        apic = self.apic
        assert apic is not None
        if not self._bit():
            self.armed = None
            self.counters["lazy_eoi.completed"] += 1
            self._trace("lazy-eoi-completed", vector=vector)
            apic.eoi()
        elif not keep or not apic.eoi_can_be_lazy(vector):
            self.armed = None
            self._set_bit(False)
            self.counters["lazy_eoi.withdrawn"] += 1
            self._trace("lazy-eoi-withdrawn", vector=vector)

    def interrupt_injected(self, vector: int) -> None:
        """The run loop injected `vector` and acknowledged it (IRR -> ISR) in the APIC."""
        if not self.lazy_eoi or (self.armed is None and not self.enabled):
            return
        apic = self.apic
        assert apic is not None
        with self._lock:
            if not (apic.isr >> vector) & 1:
                return  # AutoEOI: nothing in service to EOI; an armed earlier vector stays valid
            if self._usable() and apic.eoi_can_be_lazy(vector):
                self._set_bit(True)
                self.armed = vector
                self.counters["lazy_eoi.armed"] += 1
            elif self.armed is not None:
                self.armed = None
                if self.page.accessible:
                    self._set_bit(False)
                self.counters["lazy_eoi.withdrawn"] += 1

    def apic_eoi(self, vector: int, level: bool) -> None:
        """The APIC retired `vector` by a conventional EOI (ApicHooks.eoi; VP thread)."""
        if self.armed is None:
            return
        apic = self.apic
        assert apic is not None
        with self._lock:
            armed = self.armed
            if armed is None:
                return
            self.armed = None
            self.counters["lazy_eoi.conventional"] += 1
            if self._bit():
                self._set_bit(False)  # that EOI was for the armed vector itself
            else:
                self.counters["lazy_eoi.completed"] += 1
                self._trace("lazy-eoi-completed", vector=armed, late=True)
                apic.eoi()  # the armed one was EOI'd lazily before; this EOI retired it instead

    def _trace(self, event: str, **fields: Any) -> None:
        tracer = self._tracer
        if tracer is not None and tracer.wants("apic"):
            tracer.emit("apic", self.vp_index, event, **fields)


def vp_assist_of(vp: Vp) -> VpAssist:
    """The VpAssist of `vp` (attached by hv/enlightenments.attach as `vp.state.assist`)."""
    assist = vp.state.assist
    if assist is None:
        raise missing_state(vp, "VP assist page")
    return assist


def _read(vp: Vp) -> int:
    return vp_assist_of(vp).read_msr()


def _write(vp: Vp, value: int) -> None:
    vp_assist_of(vp).write_msr(value)


def register_vp_assist_msr(table: MsrTable) -> None:
    """HV_X64_MSR_VP_ASSIST_PAGE. Every VP of the table's partition must have a VpAssist in
    `vp.state.assist` (enlightenments.attach does both)."""
    table.register(
        M.HV_X64_MSR_VP_ASSIST_PAGE,
        "HV_X64_MSR_VP_ASSIST_PAGE",
        VP_ASSIST_GATE,
        read=_read,
        write=_write,
        scope=Scope.VP,
    )
