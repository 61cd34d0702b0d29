"""gdb write watchpoints without debug registers: the watched bytes' pages are read-only for the guest.

Where KVM does not deliver data breakpoints (this development host emulates guest ring-0 code and its
emulator checks DR7 for instruction fetches only: ../shared/notes/host-kvm.md), the gdb stub watches
a store another way. Every 4 KiB page that holds a watched byte becomes a read-only memory slot (the
machine's read-only page layout, which the hypercall page uses too). The guest still reads and
executes the page at full speed; a store to it leaves KVM as an MMIO write that carries the address,
the length and the data, with RIP already past the instruction. hv1 performs the store in RAM, and if
it overlaps a watched range, reports the watchpoint to gdb: a stop after the write, which is what gdb
expects of an x86 watchpoint (it prints Old value / New value, and continues by itself when the value
did not change).

Limits (also in the README): the watch follows the guest-physical bytes that the virtual address
mapped to when gdb set it; a read-modify-write (`lock inc`, `lock cmpxchg`, `xchg`) to a protected
page is KVM's read then a separate MMIO write, so it is not atomic against other VPs while the
watchpoint is set; page tables, descriptor tables and anything else the CPU itself writes should
not share the watched page. Only writes: a read watchpoint would need the page unmapped, and then
code on that page could not run.
"""

from __future__ import annotations

from dataclasses import dataclass

PAGE = 0x1000


@dataclass(frozen=True)
class WriteWatch:
    """One gdb watchpoint: `length` bytes at guest virtual `addr`, held at the guest-physical
    `pieces` (gpa, length) that the VP's page tables gave when it was set (one per page)."""

    addr: int
    length: int
    pieces: tuple[tuple[int, int], ...]

    def overlaps(self, gpa: int, length: int) -> bool:
        return any(p < gpa + length and gpa < p + n for p, n in self.pieces)


def split_pages(addr: int, length: int) -> list[tuple[int, int]]:
    """(address, length) per 4 KiB page of the range [addr, addr + length)."""
    out = []
    while length > 0:
        n = min(length, PAGE - (addr & (PAGE - 1)))
        out.append((addr, n))
        addr, length = addr + n, length - n
    return out


class WriteWatchpoints:
    """The watchpoints served by page write-protection, and the pages they protect. Changed by the
    gdb thread, read by VP threads at their MMIO exits: the set is an immutable tuple replaced
    whole, so a reader sees the old set or the new one."""

    def __init__(self) -> None:
        self._watches: tuple[WriteWatch, ...] = ()

    def insert(self, w: WriteWatch) -> None:
        self._watches = (*self._watches, w)  # gdb may set the same one twice; each z2 removes one

    def remove(self, addr: int, length: int) -> bool:
        for i, w in enumerate(self._watches):
            if (w.addr, w.length) == (addr, length):
                self._watches = self._watches[:i] + self._watches[i + 1 :]
                return True
        return False

    def clear(self) -> None:
        self._watches = ()

    def __len__(self) -> int:
        return len(self._watches)

    def pages(self) -> frozenset[int]:
        """Page-aligned GPAs that must be read-only for the guest."""
        return frozenset(p & ~(PAGE - 1) for w in self._watches for p, _ in w.pieces)

    def hit(self, gpa: int, length: int) -> WriteWatch | None:
        """The first watchpoint a store of `length` bytes at `gpa` writes into."""
        return next((w for w in self._watches if w.overlaps(gpa, length)), None)
