"""Hardware breakpoints and watchpoints in the x86 debug registers, backend-neutral.

Intel SDM Vol. 3B, 18.2 "Debug Registers": DR0-DR3 hold linear addresses; DR7 enables each (L0-L3,
bits 0, 2, 4, 6), selects its condition R/Wn (bits 16+4n: 00 execute, 01 write, 11 read/write; 10
is I/O, unused) and its length LENn (bits 18+4n: 00 one byte, 01 two, 11 four, 10 eight). A data
breakpoint must be aligned to its length and an execute breakpoint has length 1 (LEN 00). DR6
bits B0-B3 say which condition was met and BS (bit 14) marks a single-step trap.

The backend loads these through its own mechanism (KVM_SET_GUEST_DEBUG on KVM).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

SLOTS = 4
DR6_BS = 1 << 14
_RW = {"exec": 0b00, "write": 0b01, "access": 0b11}
_LEN = {1: 0b00, 2: 0b01, 4: 0b11, 8: 0b10}


class Condition(enum.Enum):
    EXEC = "exec"
    WRITE = "write"
    ACCESS = "access"  # x86 has no read-only data breakpoint: a read watchpoint uses this


@dataclass(frozen=True)
class HwBreakpoint:
    addr: int
    cond: Condition
    length: int  # 1, 2, 4 or 8; 1 for EXEC


def valid(bp: HwBreakpoint) -> bool:
    if bp.length not in _LEN or bp.addr < 0 or bp.addr >= 1 << 64:
        return False
    if bp.cond is Condition.EXEC:
        return bp.length == 1
    return bp.addr % bp.length == 0


@dataclass(frozen=True)
class GuestDebug:
    """Everything a backend needs to arm: the four slots (None = free) and single step."""

    slots: tuple[HwBreakpoint | None, ...] = (None,) * SLOTS
    single_step: bool = False
    sw_breakpoints: bool = False  # int3 exits to the debugger instead of going to the guest

    @property
    def enabled(self) -> bool:
        return self.single_step or self.sw_breakpoints or any(s is not None for s in self.slots)

    def debugregs(self) -> tuple[int, int, int, int, int]:
        """(DR0, DR1, DR2, DR3, DR7). DR7 bit 10 reads as 1 (SDM 18.2.4); GE (bit 9) asks for exact
        data breakpoints, as the SDM recommends."""
        addrs = [0] * SLOTS
        dr7 = 1 << 10
        for n, bp in enumerate(self.slots):
            if bp is None:
                continue
            addrs[n] = bp.addr
            dr7 |= (1 << (2 * n)) | (1 << 9)
            dr7 |= _RW[bp.cond.value] << (16 + 4 * n)
            dr7 |= _LEN[bp.length] << (18 + 4 * n)
        return addrs[0], addrs[1], addrs[2], addrs[3], dr7


@dataclass(frozen=True)
class HwDebugSupport:
    """Per condition: does the backend deliver a debug-register breakpoint of that kind? Not every
    KVM that takes KVM_GUESTDBG_USE_HW_BP does (hv1/backends/kvm/guest_debug_probe.py finds out)."""

    exec: bool = True
    write: bool = True
    access: bool = True

    def works(self, cond: Condition) -> bool:
        return {Condition.EXEC: self.exec, Condition.WRITE: self.write, Condition.ACCESS: self.access}[cond]

    def describe(self) -> str:
        def yn(b: bool) -> str:
            return "yes" if b else "no"

        return f"execute {yn(self.exec)}, write {yn(self.write)}, read/write {yn(self.access)}"


class DebugRegisters:
    """The four slots as gdb fills them (Z1-Z4 insert, z1-z4 remove)."""

    def __init__(self) -> None:
        self.slots: list[HwBreakpoint | None] = [None] * SLOTS

    def insert(self, bp: HwBreakpoint) -> bool:
        if not valid(bp) or None not in self.slots:
            return False
        self.slots[self.slots.index(None)] = bp
        return True

    def remove(self, bp: HwBreakpoint) -> bool:
        if bp not in self.slots:
            return False
        self.slots[self.slots.index(bp)] = None
        return True

    def clear(self) -> None:
        self.slots = [None] * SLOTS

    def hit(self, dr6: int) -> HwBreakpoint | None:
        """The armed slot whose B bit is set in `dr6`."""
        for n, bp in enumerate(self.slots):
            if bp is not None and dr6 & (1 << n):
                return bp
        return None

    def matching(self, cond: Condition, addr: int, length: int) -> HwBreakpoint | None:
        """The armed data breakpoint an access of `length` bytes at `addr` meets (for targets that
        watch stores themselves, like the tests' fake CPU)."""
        for bp in self.slots:
            if bp is None or bp.cond is Condition.EXEC:
                continue
            meets = cond is Condition.WRITE or bp.cond is Condition.ACCESS
            if meets and addr < bp.addr + bp.length and bp.addr < addr + length:
                return bp
        return None

    def config(self, single_step: bool, sw_breakpoints: bool) -> GuestDebug:
        return GuestDebug(tuple(self.slots), single_step, sw_breakpoints)
