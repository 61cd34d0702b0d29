"""Event delivery through a long-mode IDT, done by the emulator backend itself.

Unicorn reports a CPU exception (and `int n`) to a hook and does not deliver it; neither can it
deliver an external interrupt. So the backend delivers every event as the processor would (Intel
SDM vol. 3A §6.14 "Exception and Interrupt Handling in 64-bit Mode", §6.12.1 for the gate checks,
§6.15 for the error codes, Table 6-5 for double faults): read the 16-byte gate, check it, pick the
stack (same privilege: the current RSP; to a more privileged level: TSS.RSPn; IST: TSS.ISTn),
align it to 16 bytes, push SS, RSP, RFLAGS, CS, RIP and the error code, clear TF/NT/RF (and IF
for an interrupt gate), and enter the handler.

This module is pure: it reads and writes guest linear memory through `LinearMemory` and returns
the registers to load (`Entry`), so it is unit-tested on a fake memory (tests/unit/test_emu_idt.py).
A fault while delivering is delivered in turn, or becomes #DF by the SDM's double-fault table; a
fault while delivering #DF is a triple fault.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

DE, DB, NMI, BP, OF, BR, UD, NM, DF = 0, 1, 2, 3, 4, 5, 6, 7, 8
TS, NP, SS_FAULT, GP, PF, AC = 10, 11, 12, 13, 14, 17
# Exceptions that push an error code (SDM Table 6-1): #DF, #TS, #NP, #SS, #GP, #PF, #AC, #CP.
ERROR_CODE_VECTORS = frozenset({DF, TS, NP, SS_FAULT, GP, PF, AC, 21})

GATE_INTERRUPT = 0xE  # 64-bit interrupt gate: IF cleared on entry
GATE_TRAP = 0xF  # 64-bit trap gate: IF unchanged
RFLAGS_TF = 1 << 8
RFLAGS_IF = 1 << 9
RFLAGS_NT = 1 << 14
RFLAGS_RF = 1 << 16
RFLAGS_VM = 1 << 17
DESC_L = 1 << 53  # code segment descriptor: 64-bit
DESC_P = 1 << 47
DESC_S = 1 << 44
DESC_CODE = 1 << 43
TSS_RSP0 = 4  # offsets in the 64-bit TSS (SDM Figure 8-11)
TSS_IST1 = 0x24
_U64 = (1 << 64) - 1


class LinearMemory(Protocol):
    """Guest linear (virtual) memory as the CPU at supervisor level sees it."""

    def read(self, la: int, n: int) -> bytes | None: ...  # None: not mapped

    def write(self, la: int, data: bytes) -> bool: ...  # False: not mapped


@dataclass
class LongModeState:
    """What delivery reads: the interrupted context and the descriptor-table registers."""

    rip: int  # the return address the frame gets (faults: the faulting instruction)
    rsp: int
    rflags: int
    cs: int  # selectors
    ss: int
    cpl: int
    idt_base: int
    idt_limit: int
    gdt_base: int
    gdt_limit: int
    tr_base: int
    tr_limit: int


@dataclass(frozen=True)
class Entry:
    """The registers after delivery: the handler's first instruction with the frame pushed."""

    rip: int
    rsp: int
    rflags: int
    cs: int
    ss: int
    cpl: int


class DeliveryFault(Exception):
    """An exception raised by the delivery itself (SDM §6.12.1.1, §6.14.4)."""

    def __init__(self, vector: int, error_code: int) -> None:
        super().__init__(f"vector {vector} error code {error_code:#x} during event delivery")
        self.vector = vector
        self.error_code = error_code


class TripleFault(Exception):
    """A fault while delivering #DF: the processor shuts down (SDM §6.15, interrupt 8)."""


def _u64(mem: LinearMemory, la: int, fault: DeliveryFault) -> int:
    b = mem.read(la & _U64, 8)
    if b is None:
        raise fault
    return int.from_bytes(b, "little")


def deliver_long_mode(
    st: LongModeState, mem: LinearMemory, vector: int, error_code: int | None, software: bool
) -> Entry:
    """Deliver `vector` through the long-mode IDT. `software`: INT n / INT3 / INTO (the gate's DPL
    must allow the current CPL; the frame's RIP is the next instruction, as the caller passes it).
    `error_code` is pushed when not None. Raises DeliveryFault for a fault on the way."""
    ext = 0 if software else 1  # EXT bit of an error code caused while delivering (SDM §6.13)
    idt_err = vector * 8 + 2 + ext  # IDT bit set: the error code names an IDT entry
    if vector * 16 + 15 > st.idt_limit:
        raise DeliveryFault(GP, idt_err)
    lo = _u64(mem, st.idt_base + vector * 16, DeliveryFault(PF, 0))
    hi = _u64(mem, st.idt_base + vector * 16 + 8, DeliveryFault(PF, 0))
    gate_type = (lo >> 40) & 0xF
    gate_dpl = (lo >> 45) & 3
    if gate_type not in (GATE_INTERRUPT, GATE_TRAP):
        raise DeliveryFault(GP, idt_err)
    if software and gate_dpl < st.cpl:
        raise DeliveryFault(GP, vector * 8 + 2)
    if not lo & DESC_P:
        raise DeliveryFault(NP, idt_err)
    selector = (lo >> 16) & 0xFFFF
    offset = (lo & 0xFFFF) | ((lo >> 32) & 0xFFFF0000) | ((hi & 0xFFFFFFFF) << 32)
    ist = (lo >> 32) & 7

    # The handler's code segment: a present 64-bit code segment in the GDT (SDM §6.14.1).
    sel_err = (selector & 0xFFFC) | ext
    if selector & 0xFFFC == 0 or selector & 4 or (selector | 7) > st.gdt_limit:
        raise DeliveryFault(GP, sel_err)
    desc = _u64(mem, st.gdt_base + (selector & ~7), DeliveryFault(PF, 0))
    if not desc & DESC_S or not desc & DESC_CODE or not desc & DESC_L:
        raise DeliveryFault(GP, sel_err)
    if not desc & DESC_P:
        raise DeliveryFault(NP, sel_err)
    dpl = (desc >> 45) & 3
    conforming = bool(desc & (1 << 42))
    new_cpl = st.cpl if conforming else dpl
    if new_cpl > st.cpl:
        raise DeliveryFault(GP, sel_err)

    # The stack (SDM §6.14.2 and §6.14.5): IST if the gate names one, else TSS.RSPn on a privilege
    # change, else the current stack; then aligned down to 16 bytes.
    tss_fault = DeliveryFault(TS, 0)
    if ist:
        if TSS_IST1 + 8 * ist + 7 > st.tr_limit:
            raise tss_fault
        rsp = _u64(mem, st.tr_base + TSS_IST1 + 8 * (ist - 1), tss_fault)
    elif new_cpl < st.cpl:
        if TSS_RSP0 + 8 * new_cpl + 7 > st.tr_limit:
            raise tss_fault
        rsp = _u64(mem, st.tr_base + TSS_RSP0 + 8 * new_cpl, tss_fault)
    else:
        rsp = st.rsp
    new_ss = new_cpl if new_cpl < st.cpl else st.ss  # a privilege change loads a null SS, RPL = CPL
    rsp &= ~0xF & _U64
    frame = [st.ss, st.rsp, st.rflags, st.cs, st.rip]
    if error_code is not None:
        frame.append(error_code & 0xFFFFFFFF)
    rsp = (rsp - 8 * len(frame)) & _U64
    data = b"".join((v & _U64).to_bytes(8, "little") for v in reversed(frame))
    if not mem.write(rsp, data):
        raise DeliveryFault(PF if new_cpl == st.cpl and not ist else SS_FAULT, 0)
    rflags = st.rflags & ~(RFLAGS_TF | RFLAGS_NT | RFLAGS_RF | RFLAGS_VM)
    if gate_type == GATE_INTERRUPT:
        rflags &= ~RFLAGS_IF
    return Entry(rip=offset, rsp=rsp, rflags=rflags, cs=(selector & ~3) | new_cpl, ss=new_ss, cpl=new_cpl)


CONTRIBUTORY = frozenset({DE, TS, NP, SS_FAULT, GP})


def _double_fault(first: int, second: int) -> bool:
    """SDM Table 6-5: contributory then contributory, or #PF then contributory or #PF, is #DF;
    every other pair delivers the second exception normally."""
    if first in CONTRIBUTORY:
        return second in CONTRIBUTORY
    if first == PF:
        return second in CONTRIBUTORY or second == PF
    return False


def deliver(
    st: LongModeState, mem: LinearMemory, vector: int, error_code: int | None, software: bool = False
) -> Entry:
    """Deliver an event. A fault raised while delivering it is delivered instead, or #DF(0) when
    the pair is a double fault (SDM Table 6-5); a fault while delivering #DF raises TripleFault.
    `vector` counts as an exception class only for a CPU exception (not INT n, not an interrupt:
    the caller passes software=True or error_code=None and a vector >= 32 for those)."""
    first: int | None = vector if vector < 32 and not software else None
    try:
        return deliver_long_mode(st, mem, vector, error_code, software)
    except DeliveryFault as f:
        if vector == DF:
            raise TripleFault() from None
        fault = f
    for _ in range(2):
        if first is not None and _double_fault(first, fault.vector):
            try:
                return deliver_long_mode(st, mem, DF, 0, False)
            except DeliveryFault:
                raise TripleFault() from None
        try:
            return deliver_long_mode(st, mem, fault.vector, fault.error_code, False)
        except DeliveryFault as f2:
            first, fault = fault.vector, f2
    raise TripleFault()
