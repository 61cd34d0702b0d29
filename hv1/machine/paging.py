"""x86 page-table walk (4-level long mode, PAE and 32-bit non-PAE paging), read-only.

Used for diagnostics (the instruction bytes at a faulting RIP) and anywhere hv1 must see guest
virtual memory. Returns None for an address that is not mapped; never raises on guest data.
"""

from __future__ import annotations

from hv1.hv.interfaces import GpaError, GuestMemory

CR0_PG = 1 << 31
CR4_PSE = 1 << 4
CR4_PAE = 1 << 5
EFER_LMA = 1 << 10
_PRESENT = 1
_PS = 1 << 7
_ADDR = 0x000F_FFFF_FFFF_F000


def translate(mem: GuestMemory, gva: int, cr0: int, cr3: int, cr4: int, efer: int) -> int | None:
    try:
        if not cr0 & CR0_PG:
            return gva & 0xFFFF_FFFF
        if efer & EFER_LMA:
            table = cr3 & _ADDR
            for level, shift in ((4, 39), (3, 30), (2, 21), (1, 12)):
                e = int.from_bytes(mem.read(table + ((gva >> shift) & 0x1FF) * 8, 8), "little")
                if not e & _PRESENT:
                    return None
                if level in (3, 2) and e & _PS:
                    base = e & _ADDR & ~((1 << shift) - 1)
                    return base | (gva & ((1 << shift) - 1))
                table = e & _ADDR
            return table | (gva & 0xFFF)
        gva &= 0xFFFF_FFFF
        if cr4 & CR4_PAE:
            pdpte = int.from_bytes(mem.read((cr3 & ~0x1F) + ((gva >> 30) & 3) * 8, 8), "little")
            if not pdpte & _PRESENT:
                return None
            pde = int.from_bytes(mem.read((pdpte & _ADDR) + ((gva >> 21) & 0x1FF) * 8, 8), "little")
            if not pde & _PRESENT:
                return None
            if pde & _PS:
                return (pde & _ADDR & ~0x1FFFFF) | (gva & 0x1FFFFF)
            pte = int.from_bytes(mem.read((pde & _ADDR) + ((gva >> 12) & 0x1FF) * 8, 8), "little")
            return (pte & _ADDR) | (gva & 0xFFF) if pte & _PRESENT else None
        pde = int.from_bytes(mem.read((cr3 & 0xFFFFF000) + (gva >> 22) * 4, 4), "little")
        if not pde & _PRESENT:
            return None
        if pde & _PS and cr4 & CR4_PSE:
            return (pde & 0xFFC00000) | (gva & 0x3FFFFF)
        pte = int.from_bytes(mem.read((pde & 0xFFFFF000) + ((gva >> 12) & 0x3FF) * 4, 4), "little")
        return (pte & 0xFFFFF000) | (gva & 0xFFF) if pte & _PRESENT else None
    except GpaError:
        return None


def read_virtual(
    mem: GuestMemory, gva: int, length: int, cr0: int, cr3: int, cr4: int, efer: int
) -> bytes | None:
    """`length` bytes at `gva` (may cross pages), or None if any byte is unmapped."""
    out = bytearray()
    while length > 0:
        gpa = translate(mem, gva, cr0, cr3, cr4, efer)
        n = min(length, 0x1000 - (gva & 0xFFF))
        if gpa is None or not mem.contains(gpa, n):
            return None
        out += mem.read(gpa, n)
        gva += n
        length -= n
    return bytes(out)
