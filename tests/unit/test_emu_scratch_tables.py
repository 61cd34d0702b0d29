"""The private page tables the emulator backend loads segments through when a start context has
paging on (hv1/backends/emu/vcpu.py `_scratch_tables`): in each paging mode a context can select
(4-level with EFER.LMA, PAE, 32-bit; Intel SDM Vol. 3A §4.5, §4.4, §4.3) they map the scratch GDT's
linear page to itself, with Accessed/Dirty preset and PAE PDPTEs holding P only. The end-to-end
case (a child started in paged long mode, which used to kill the VMM): test_emu_paged_context.py."""

from __future__ import annotations

from typing import cast

import pytest

pytest.importorskip("unicorn", reason="unicorn not installed (pip install '.[emu]')")

from hv1.backends.emu.vcpu import MMIO_END, _scratch_tables  # noqa: E402
from hv1.hv.interfaces import GuestMemory  # noqa: E402
from hv1.machine import paging  # noqa: E402

GDT = MMIO_END - 0x1000
CR0_PG_PE = 0x80000001
EFER_LME_LMA = 0x500


class Pages:
    """Physical memory holding only the pages given (reads elsewhere fail the test)."""

    def __init__(self, pages: list[tuple[int, bytes]]) -> None:
        self.pages = dict(pages)

    def read(self, gpa: int, n: int) -> bytes:
        base = gpa & ~0xFFF
        assert base in self.pages, f"walk read {gpa:#x}, outside the scratch pages"
        return self.pages[base][gpa - base : gpa - base + n]

    def contains(self, gpa: int, n: int) -> bool:
        return (gpa & ~0xFFF) in self.pages


@pytest.mark.parametrize(
    ("pae", "lma", "cr4", "efer", "levels"),
    [(False, True, 0x20, EFER_LME_LMA, 4), (True, False, 0x20, 0, 3), (False, False, 0, 0, 2)],
    ids=["4-level", "pae", "32-bit"],
)
def test_scratch_tables_map_the_gdt_page_to_itself(
    pae: bool, lma: bool, cr4: int, efer: int, levels: int
) -> None:
    cr3, pages = _scratch_tables(GDT, pae, lma)
    assert len(pages) == levels and cr3 == pages[0][0]
    assert all(GDT - 0x1000 * levels <= addr < GDT for addr, _ in pages)  # below the GDT page, in the hole
    mem = cast(GuestMemory, Pages(pages))  # read and contains: all the walk uses
    for off in (0, 8, 0xFF8):
        assert paging.translate(mem, GDT + off, CR0_PG_PE, cr3, cr4, efer) == GDT + off


def test_pae_pdptes_set_only_the_present_bit() -> None:
    _, pages = _scratch_tables(GDT, pae=True, lma=False)
    pdpt = pages[0][1]
    entries = [int.from_bytes(pdpt[i : i + 8], "little") for i in range(0, 32, 8)]
    assert [e & 0xFFF for e in entries] == [0, 0, 0, 1]  # PDPTE 3 covers 0xC0000000-0xFFFFFFFF
