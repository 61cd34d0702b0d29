"""Event delivery through a long-mode IDT (hv1/backends/emu/idt.py), on a fake linear memory:
the gate checks, the stack choice, the frame, the flags, and the double/triple-fault rules
(Intel SDM vol. 3A §6.12-§6.15, Table 6-5)."""

from __future__ import annotations

import struct

import pytest

from hv1.backends.emu import idt

IDT, GDT, TSS = 0x10000, 0x20000, 0x30000
KCODE, KDATA, UCODE = 0x08, 0x10, 0x1B
HANDLER = 0x401000
STACK, RSP0, IST1 = 0x80008, 0x90000, 0xA0000


class FakeLinear:
    """1 MiB of identity-mapped linear memory; pages in `holes` are not mapped."""

    def __init__(self) -> None:
        self.buf = bytearray(1 << 20)
        self.holes: set[int] = set()

    def _ok(self, la: int, n: int) -> bool:
        return la + n <= len(self.buf) and not any(
            p in self.holes for p in range(la >> 12, (la + n - 1 >> 12) + 1)
        )

    def read(self, la: int, n: int) -> bytes | None:
        return bytes(self.buf[la : la + n]) if self._ok(la, n) else None

    def write(self, la: int, data: bytes) -> bool:
        if not self._ok(la, len(data)):
            return False
        self.buf[la : la + len(data)] = data
        return True

    def u64(self, la: int) -> int:
        return int(struct.unpack_from("<Q", self.buf, la)[0])


def gate(mem: FakeLinear, vector: int, offset: int = HANDLER, *, typ: int = idt.GATE_INTERRUPT,
         dpl: int = 0, present: bool = True, ist: int = 0, selector: int = KCODE) -> None:  # fmt: skip
    lo = (offset & 0xFFFF) | (selector << 16) | (ist << 32) | (typ << 40) | (dpl << 45)
    lo |= (int(present) << 47) | (((offset >> 16) & 0xFFFF) << 48)
    struct.pack_into("<QQ", mem.buf, IDT + 16 * vector, lo, offset >> 32)


def machine() -> tuple[FakeLinear, idt.LongModeState]:
    mem = FakeLinear()
    struct.pack_into("<QQQQ", mem.buf, GDT, 0, 0x00AF9B000000FFFF, 0x00CF93000000FFFF, 0x00AFFB000000FFFF)
    struct.pack_into("<Q", mem.buf, TSS + idt.TSS_RSP0, RSP0)
    struct.pack_into("<Q", mem.buf, TSS + idt.TSS_IST1, IST1)
    for v in range(256):
        gate(mem, v, HANDLER + 16 * v)
    st = idt.LongModeState(
        rip=0x123456, rsp=STACK, rflags=0x202 | idt.RFLAGS_TF, cs=KCODE, ss=KDATA, cpl=0,
        idt_base=IDT, idt_limit=256 * 16 - 1, gdt_base=GDT, gdt_limit=0x1F, tr_base=TSS, tr_limit=0x67,
    )  # fmt: skip
    return mem, st


def frame(mem: FakeLinear, rsp: int, n: int) -> list[int]:
    return [mem.u64(rsp + 8 * i) for i in range(n)]


def test_sdm_6_14_same_privilege_interrupt_gate_pushes_the_frame_and_clears_if_tf() -> None:
    mem, st = machine()
    e = idt.deliver(st, mem, idt.GP, 0x18)
    assert e.rip == HANDLER + 16 * idt.GP and e.cs == KCODE and e.ss == KDATA and e.cpl == 0
    # RSP aligned down to 16 (0x80008 -> 0x80000), then SS, RSP, RFLAGS, CS, RIP, error code.
    assert e.rsp == 0x80000 - 48
    assert frame(mem, e.rsp, 6) == [0x18, 0x123456, KCODE, 0x202 | idt.RFLAGS_TF, STACK, KDATA]
    assert not e.rflags & (idt.RFLAGS_IF | idt.RFLAGS_TF)


def test_sdm_6_14_trap_gate_keeps_if_and_no_error_code_for_an_interrupt() -> None:
    mem, st = machine()
    gate(mem, 0x40, typ=idt.GATE_TRAP)
    e = idt.deliver(st, mem, 0x40, None)
    assert e.rip == HANDLER and e.rflags & idt.RFLAGS_IF and e.rsp == 0x80000 - 40
    assert frame(mem, e.rsp, 1) == [0x123456]


def test_sdm_6_14_2_cpl3_to_cpl0_switches_to_tss_rsp0_with_a_null_ss() -> None:
    mem, st = machine()
    st.cpl, st.cs, st.ss, st.rsp = 3, UCODE, 0x23, 0x7777
    e = idt.deliver(st, mem, idt.PF, 0x5)
    assert e.cpl == 0 and e.cs == KCODE and e.ss == 0 and e.rsp == RSP0 - 48
    assert frame(mem, e.rsp, 6) == [0x5, 0x123456, UCODE, st.rflags, 0x7777, 0x23]


def test_sdm_6_14_5_ist_stack_is_used_when_the_gate_names_one() -> None:
    mem, st = machine()
    gate(mem, idt.NMI, ist=1)
    e = idt.deliver(st, mem, idt.NMI, None)
    assert e.rsp == IST1 - 40


def test_sdm_6_12_software_int_through_a_dpl0_gate_from_cpl3_is_gp_with_the_idt_error_code() -> None:
    mem, st = machine()
    st.cpl, st.cs, st.ss = 3, UCODE, 0x23
    e = idt.deliver(st, mem, 0x80, None, software=True)
    assert e.rip == HANDLER + 16 * idt.GP
    assert frame(mem, e.rsp, 1) == [0x80 * 8 + 2]  # IDT bit set, EXT clear (software)


def test_table_6_5_not_present_gate_for_an_interrupt_is_np_not_df() -> None:
    mem, st = machine()
    gate(mem, 0x41, present=False)
    e = idt.deliver(st, mem, 0x41, None)
    assert e.rip == HANDLER + 16 * idt.NP
    assert frame(mem, e.rsp, 1) == [0x41 * 8 + 3]  # IDT + EXT


def test_table_6_5_contributory_during_a_contributory_exception_is_df() -> None:
    mem, st = machine()
    gate(mem, idt.GP, present=False)  # #GP's gate missing: #NP while delivering #GP
    e = idt.deliver(st, mem, idt.GP, 0)
    assert e.rip == HANDLER + 16 * idt.DF
    assert frame(mem, e.rsp, 1) == [0]


def test_table_6_5_page_fault_on_the_stack_while_delivering_pf_is_df() -> None:
    mem, st = machine()
    gate(mem, idt.DF, ist=1)  # #DF on its own stack, as OSes do
    mem.holes.add((STACK - 0x10) >> 12)
    e = idt.deliver(st, mem, idt.PF, 2)
    assert e.rip == HANDLER and e.rsp == IST1 - 48  # the #DF gate (offset HANDLER), error code 0
    assert frame(mem, e.rsp, 1) == [0]


def test_sdm_interrupt_8_a_fault_while_delivering_df_is_a_triple_fault() -> None:
    mem, st = machine()
    gate(mem, idt.GP, present=False)
    gate(mem, idt.DF, present=False)
    with pytest.raises(idt.TripleFault):
        idt.deliver(st, mem, idt.GP, 0)


def test_sdm_6_12_vector_beyond_the_idt_limit_is_gp_then_df() -> None:
    mem, st = machine()
    st.idt_limit = idt.GP * 16 + 14  # #GP's gate is cut off, #DF's is inside
    e = idt.deliver(st, mem, idt.GP, 0)
    assert e.rip == HANDLER + 16 * idt.DF


def test_sdm_6_12_empty_idt_is_a_triple_fault() -> None:
    mem, st = machine()
    st.idt_limit = 0
    with pytest.raises(idt.TripleFault):
        idt.deliver(st, mem, 0x30, None)


def test_sdm_6_14_1_gate_to_a_non_64_bit_code_segment_is_gp() -> None:
    mem, st = machine()
    gate(mem, 0x42, selector=KDATA)
    e = idt.deliver(st, mem, 0x42, None)
    assert e.rip == HANDLER + 16 * idt.GP
    assert frame(mem, e.rsp, 1) == [KDATA | 1]
