"""VP state pages (HvCallMapVpStatePage / HvCallUnmapVpStatePage; datatypes/hv_vp_state_page_type.md).

What the page is: a page of the *caller's* (the parent's) GPA space through which it sees one VP of a
child without a GetVpRegisters call per register. The TLFS names three types:

- HvVpStatePageRegisters (0): the VP's register state. The md pages do not give the layout; hv1
  writes the part that Microsoft's published headers agree on (Linux include/hyperv/hvhdk.h
  `hv_vp_register_page`): Version u16 = 1 @0, IsValid u8 @2, RsvdZ u8 @3, Dirty u32 @4, then RAX RCX
  RDX RBX RSP RBP RSI RDI R8-R15 RIP RFLAGS as u64 from @8 (the register classes General, IP and
  Flags). Later header versions disagree on what follows (XMM, segments, control registers), so hv1
  leaves the rest of the page zero. IsValid is 1 while the VP is stopped (then the register file is
  its state; the running layer rewrites the page when the VP stops, `Hypervisor.sync_vp_state_page`).
  The parent may write registers back: it sets the class bits in Dirty (0 general, 1 IP, 4 flags) and
  they are loaded into the VP before it runs again (`Hypervisor.load_vp_state_page`, the running
  layer's call).
- HvVpStatePageInterceptMessage (1): the last intercept message of the VP (an HV_MESSAGE, 256 bytes
  @0), for partitions created with INTERCEPT_MESSAGE_PAGE_ENABLED; the running layer writes it
  (`Hypervisor.write_intercept_message_page`).
- HvVpVtlStatePageGhcb (2): AMD SEV-SNP only: INVALID_PARAMETER (hv1 has no isolated partitions).

Where the page is (the md page's Flags.MapLocationProvided): a layered host names one of its own RAM
pages (RequestedMapLocation), which then cannot be deposited or show another state or stats page
while it is mapped (its root RAM page is reference-counted like a GPA mapping); without the flag the
hypervisor supplies the page from the child's memory pool, as Linux's mshv_root expects (it deposits
and retries on INSUFFICIENT_MEMORY), and MapLocation is that page's number in its depositor's GPA
space. A second map of the same (VP, type) is OBJECT_IN_USE; deleting the VP or finalizing the
partition unmaps its pages (a pool page goes back to the pool).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hv1.hv.interfaces import GuestMemory
from hv1.hv.vp_registers import CONTEXT_SCALARS, GPRS, VpRegisterFile
from hv1.tlfs.messages import HV_MESSAGE_SIZE
from hv1.tlfs.virtualization_host import PAGE_SHIFT

REGISTER_PAGE_VERSION = 1
REGISTER_PAGE_HEADER = struct.Struct("<HBBI")  # Version, IsValid, RsvdZ, Dirty
REGISTER_PAGE_GPRS = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
                      "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")  # fmt: skip
REGISTER_PAGE_VALUES = struct.Struct("<18Q")  # the 16 GPRs, RIP, RFLAGS
CLASS_GENERAL, CLASS_IP, CLASS_FLAGS = 1 << 0, 1 << 1, 1 << 4


def _values(regs: VpRegisterFile) -> list[int]:
    out = [regs.ctx.rsp if name == "rsp" else regs.gprs[name] for name in REGISTER_PAGE_GPRS]
    return [*out, regs.ctx.rip, regs.ctx.rflags]


def write_register_page(mem: GuestMemory, backing: int, regs: VpRegisterFile, valid: bool) -> None:
    """Show `regs` in the page at root RAM page `backing` (Dirty cleared)."""
    base = backing << PAGE_SHIFT
    mem.write(base, REGISTER_PAGE_HEADER.pack(REGISTER_PAGE_VERSION, int(valid), 0, 0))
    mem.write(base + REGISTER_PAGE_HEADER.size, REGISTER_PAGE_VALUES.pack(*_values(regs)))


def load_dirty(mem: GuestMemory, backing: int, regs: VpRegisterFile) -> int:
    """Take the register classes the parent marked dirty into `regs`; returns the Dirty mask it found
    (and clears it in the page)."""

    base = backing << PAGE_SHIFT
    _, _, _, dirty = REGISTER_PAGE_HEADER.unpack(mem.read(base, REGISTER_PAGE_HEADER.size))
    if not dirty:
        return 0
    vals = REGISTER_PAGE_VALUES.unpack(mem.read(base + REGISTER_PAGE_HEADER.size, REGISTER_PAGE_VALUES.size))
    names = {v: k for k, v in GPRS.items()} | {v: k for k, v in CONTEXT_SCALARS.items()}
    if dirty & CLASS_GENERAL:
        for gpr, value in zip(REGISTER_PAGE_GPRS, vals[:16], strict=True):
            regs.set(names[gpr], value)
    if dirty & CLASS_IP:
        regs.set(names["rip"], vals[16])
    if dirty & CLASS_FLAGS:
        regs.set(names["rflags"], vals[17])
    mem.write(base + 4, b"\0\0\0\0")
    return int(dirty)


def write_message_page(mem: GuestMemory, backing: int, message: bytes) -> None:
    mem.write(backing << PAGE_SHIFT, message[:HV_MESSAGE_SIZE].ljust(HV_MESSAGE_SIZE, b"\0"))


@dataclass(frozen=True)
class VpStatePageMapping:
    """A mapped state page: the caller that mapped it, where in its GPA space, over which root RAM page."""

    caller: int
    gpa_page: int
    backing: int
