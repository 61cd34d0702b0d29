from __future__ import annotations

from hv1.machine.paging import CR0_PG, CR4_PAE, EFER_LMA, read_virtual, translate
from tests.fakes import FakeMemory

P, RW, PS = 1, 2, 0x80


def test_long_mode_4k_and_2m_pages() -> None:
    m = FakeMemory(8 << 20)
    m.write_u64(0x1000, 0x2000 | P | RW)  # PML4[0]
    m.write_u64(0x2000, 0x3000 | P | RW)  # PDPT[0]
    m.write_u64(0x3000, 0x200000 | P | RW | PS)  # PD[0]: 2 MiB at 0x200000
    m.write_u64(0x3008, 0x4000 | P | RW)  # PD[1] -> PT
    m.write_u64(0x4000 + 5 * 8, 0x7000 | P)  # PT[5]
    regs = (CR0_PG | 1, 0x1000, CR4_PAE, EFER_LMA)
    assert translate(m, 0x1234, *regs) == 0x201234
    assert translate(m, 0x200000 + 5 * 0x1000 + 0x10, *regs) == 0x7010
    assert translate(m, 0x200000 + 6 * 0x1000, *regs) is None
    assert translate(m, 1 << 39, *regs) is None


def test_garbage_tables_never_raise() -> None:
    m = FakeMemory(1 << 20)
    m.write_u64(0x1000, 0xFFFF_FFFF_FFFF_F001)
    assert translate(m, 0, CR0_PG | 1, 0x1000, CR4_PAE, EFER_LMA) is None
    assert read_virtual(m, 0x2FFF, 4, 0, 0, 0, 0) == bytes(4)
    assert read_virtual(m, (1 << 20) - 2, 4, 0, 0, 0, 0) is None
