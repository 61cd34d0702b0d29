"""The hypercall page and HV_X64_MSR_HYPERCALL (hypercall-interface.md "Establishing the Hypercall
Interface (x86/x64)").

The page is an overlay (hv/overlay.py). Its code transfers to hv1 with a one-byte port write, which
KVM turns into an I/O exit (VMCALL cannot be used on this host: notes/host-kvm.md §0, and the
Requirements doc allows a page that "does not actually cause a hypervisor transition" in the usual
way):

    offset 0x00  F3 0F 1E FA   endbr64          64-bit stub (CALL offset 0, as the TLFS says)
           0x04  E6 90         out 0x90, al
           0x06  C3            ret
    offset 0x10  F3 0F 1E FB   endbr32          32-bit stub (same code, IBT marker for 32-bit)
           0x14  E6 90         out 0x90, al
           0x16  C3            ret
    rest         CC            int3

Both stubs work in either mode (ENDBR is a NOP without CET); a 32-bit guest may call offset 0 as well.
`out imm8, al` clobbers nothing (AL is part of RAX, which receives the result anyway).

A CPL 3 caller without I/O permission for the port gets #GP from the CPU itself, before any exit,
instead of the TLFS's #UD (caps.DEVIATIONS).

Backend contract: route a 1-byte `out` to HYPERCALL_PORT to `Partition.hypercall` while
`Partition.hypercall_page.enabled` (otherwise it is an ordinary unclaimed port: write discarded).
When the exit is reported, RIP already points past the `out`, at the `ret`. A rep hypercall that
yields before finishing (hypercall-interface.md "Hypercall Continuation") moves RIP back by
STUB_OUT_END to the stub start, so the guest re-executes the hypercall with the updated rep start
index; interrupts can be taken in between.

MSR semantics (tlfs-inventory.md §3.3, §7.5, §7.6):
- bits 63:12 GPFN, 11:2 RsvdP (stored, returned), 1 Locked, 0 Enable; partition-wide.
- Enable stays 0 while GUEST_OS_ID is 0 ("The enable bit will remain zero even when writing a one");
  the rest of the value is stored.
- Enabling (or moving) maps the overlay at GPFN, zeroed and filled with the code above; a GPFN that
  is not backed by guest RAM is answered with #GP (see caps.DEVIATIONS).
- Locked (only with CPUID 0x40000003.EDX[18] HypercallMsrLockAvailable): once set, every write #GPs
  until partition reset ("Once set, only a system reset can clear the bit"). Without the feature
  bit 1 is ignored and reads 0.
- Clearing GUEST_OS_ID disables the page (`guest_os_id_cleared`).
"""

from __future__ import annotations

from hv1.hv.interfaces import PAGE_SHIFT, PAGE_SIZE, gp
from hv1.hv.overlay import OverlayPage
from hv1.tlfs.hypercall_interface import (
    HYPERCALL_MSR_ENABLE,
    HYPERCALL_MSR_GPFN_SHIFT,
    HYPERCALL_MSR_LOCKED,
)

HYPERCALL_PORT = 0x90

ENDBR64 = b"\xf3\x0f\x1e\xfa"
ENDBR32 = b"\xf3\x0f\x1e\xfb"
OUT_AL = bytes((0xE6, HYPERCALL_PORT))
RET = b"\xc3"
INT3 = 0xCC

STUB64_OFFSET = 0x00
STUB32_OFFSET = 0x10
STUB_OUT_END = len(ENDBR64) + len(OUT_AL)  # RIP at the exit = stub start + 6 (the `ret`)


def build_page() -> bytes:
    """The 4 KiB hypercall page content."""
    page = bytearray([INT3]) * PAGE_SIZE
    stub64 = ENDBR64 + OUT_AL + RET
    stub32 = ENDBR32 + OUT_AL + RET
    page[STUB64_OFFSET : STUB64_OFFSET + len(stub64)] = stub64
    page[STUB32_OFFSET : STUB32_OFFSET + len(stub32)] = stub32
    return bytes(page)


PAGE_CONTENT = build_page()


class HypercallPage:
    """HV_X64_MSR_HYPERCALL state plus the overlay it controls."""

    def __init__(self, overlay: OverlayPage) -> None:
        self.overlay = overlay
        self.value = 0  # the MSR as the guest reads it

    @property
    def enabled(self) -> bool:
        return bool(self.value & HYPERCALL_MSR_ENABLE)

    @property
    def locked(self) -> bool:
        return bool(self.value & HYPERCALL_MSR_LOCKED)

    @property
    def gpfn(self) -> int:
        return self.value >> HYPERCALL_MSR_GPFN_SHIFT

    def shown_at(self) -> int | None:
        """The GPA where the page is visible in guest RAM now, or None: mapped over RAM and not
        covered by another overlay mapped later on the same GPA (PDF §5.2.1: of stacked overlays
        "only one of these overlays will be visible"; hv/overlay.py shows the most recent one)."""
        o = self.overlay
        if o.gpfn is None or not o.accessible or o.layer.visible(o.gpfn) is not o:
            return None
        return o.gpfn << PAGE_SHIFT

    def write_msr(self, value: int, guest_os_id: int, lock_available: bool) -> None:
        """WRMSR HV_X64_MSR_HYPERCALL; raises GuestException(#GP) where the TLFS says so."""
        if self.locked:
            raise gp()
        if not lock_available:
            value &= ~HYPERCALL_MSR_LOCKED
        if guest_os_id == 0:
            value &= ~HYPERCALL_MSR_ENABLE
        gpfn = value >> HYPERCALL_MSR_GPFN_SHIFT
        if value & HYPERCALL_MSR_ENABLE and not self.overlay.memory.contains(gpfn << PAGE_SHIFT, PAGE_SIZE):
            raise gp()
        was_enabled, old_gpfn = self.enabled, self.gpfn
        self.value = value
        if not self.enabled:
            self.overlay.unmap()
        elif not was_enabled or gpfn != old_gpfn:
            # "zeroed + filled on enable": the content is ours, whatever the guest scribbled on it.
            self.overlay.map(gpfn)
            self.overlay.fill(PAGE_CONTENT)

    def guest_os_id_cleared(self) -> None:
        """GUEST_OS_ID written with 0: "if the Guest OS identity is cleared to zero after the
        hypercall page has been enabled, it will become disabled" (even when Locked)."""
        if self.enabled:
            self.value &= ~HYPERCALL_MSR_ENABLE
            self.overlay.unmap()

    def reset(self) -> None:
        self.value = 0
        self.overlay.unmap()
        self.overlay.zero()
