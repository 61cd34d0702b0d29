"""set_entry_state (hv1/backends/kvm/cpustate.py) on a fake vCPU with KVM's own register structures: the
Multiboot state unchanged, the PVH entry state (Xen pvh.pandoc) and the Linux 64-bit boot protocol
state (boot.rst "64-bit Boot Protocol")."""

from __future__ import annotations

from typing import Any

from hv1.backends.kvm import cpustate
from hv1.backends.kvm import ioctls as k
from hv1.machine.entry_state import EntryMode, EntryState


class FakeKvmVcpu:
    def __init__(self) -> None:
        self.sregs = k.kvm_sregs()
        self.sregs.cs.l = 1  # left over from a previous life: must be cleared for 32-bit states
        self.sregs.efer = 0x500
        self.regs = k.kvm_regs()

    def get_sregs(self) -> k.kvm_sregs:
        return k.kvm_sregs.from_buffer_copy(self.sregs)

    def set_sregs(self, s: k.kvm_sregs) -> None:
        self.sregs = k.kvm_sregs.from_buffer_copy(s)

    def set_regs(self, r: k.kvm_regs) -> None:
        self.regs = k.kvm_regs.from_buffer_copy(r)


def apply(st: EntryState) -> FakeKvmVcpu:
    v = FakeKvmVcpu()
    cpustate.set_entry_state(v, st)  # type: ignore[arg-type]
    return v


def seg(s: Any) -> tuple[int, ...]:
    return (s.selector, s.base, s.limit, s.type, s.present, s.db, s.s, s.l, s.g)


def test_multiboot_state_is_the_unchanged_path() -> None:
    v = apply(EntryState.multiboot(0x100000, 0x2BADB002, 0x9000))
    assert (v.regs.rip, v.regs.rax, v.regs.rbx, v.regs.rflags) == (0x100000, 0x2BADB002, 0x9000, 2)
    assert v.sregs.cr0 == 0x11 and v.sregs.efer == 0 and v.sregs.cs.l == 0


def test_pvh_state_flat_32bit_paging_off_ebx_and_a_tss() -> None:
    v = apply(EntryState(EntryMode.PROTECTED32, 0x1000040, {"rbx": 0x7000}, tss=True))
    s = v.sregs
    assert seg(s.cs) == (0x08, 0, 0xFFFFFFFF, 0xB, 1, 1, 1, 0, 1)  # 32-bit execute/read, flat
    for d in (s.ds, s.es, s.ss):
        assert seg(d) == (0x10, 0, 0xFFFFFFFF, 0x3, 1, 1, 1, 0, 1)  # 32-bit read/write, flat
    assert (s.tr.type, s.tr.base, s.tr.limit, s.tr.s, s.tr.present) == (0xB, 0, 0x67, 0, 1)  # busy 32-bit TSS
    assert s.cr0 & 0x80000001 == 1 and s.efer == 0 and s.cr4 == 0
    assert (v.regs.rip, v.regs.rbx, v.regs.rflags) == (0x1000040, 0x7000, 2)  # IF = 0


def test_linux_64bit_state() -> None:
    st = EntryState(EntryMode.LONG64, 0x1000200, {"rsi": 0x7000}, code_selector=0x10, data_selector=0x18,
                    cr3=0x9000, gdt=(0x1000, 31))  # fmt: skip
    v = apply(st)
    s = v.sregs
    assert (s.cs.selector, s.cs.l, s.cs.db, s.cs.type) == (0x10, 1, 0, 0xB)  # __BOOT_CS, 64-bit code
    assert all(d.selector == 0x18 and d.type == 0x3 for d in (s.ds, s.es, s.ss))  # __BOOT_DS
    assert s.cr0 & 0x80000001 == 0x80000001 and s.cr4 & 0x20 and s.efer & 0x500 == 0x500 and s.cr3 == 0x9000
    assert (s.gdt.base, s.gdt.limit) == (0x1000, 31)
    assert (v.regs.rip, v.regs.rsi, v.regs.rflags) == (0x1000200, 0x7000, 2)
