"""Software breakpoints: an `int3` (0xCC) planted in guest RAM, the original byte kept aside.

gdb's Z0 packet leaves the insertion to the stub (GDB manual, "Packets": `Z0,addr,kind`, kind 1 on
x86 = the length of int3). The byte is planted at the physical address the VP's page tables give
at insertion time, and every debugger read of that physical byte shows the original (so `x/i` and
disassembly look right); a debugger write there updates the saved byte and keeps the int3.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

INT3 = 0xCC


@dataclass
class _Planted:
    gpa: int
    original: int
    refs: int = 1  # two gdb breakpoints at the same address share the byte


class SoftwareBreakpoints:
    def __init__(
        self, read_phys: Callable[[int, int], bytes], write_phys: Callable[[int, bytes], None]
    ) -> None:
        self._read = read_phys
        self._write = write_phys
        self._by_gpa: dict[int, _Planted] = {}
        self._by_addr: dict[int, int] = {}  # virtual address -> gpa

    def insert(self, addr: int, gpa: int) -> bool:
        if addr in self._by_addr:
            self._by_gpa[self._by_addr[addr]].refs += 1
            return True
        p = self._by_gpa.get(gpa)
        if p is None:
            old = self._read(gpa, 1)
            if len(old) != 1:
                return False
            self._write(gpa, bytes((INT3,)))
            self._by_gpa[gpa] = _Planted(gpa, old[0])
        else:
            p.refs += 1
        self._by_addr[addr] = gpa
        return True

    def remove(self, addr: int) -> bool:
        gpa = self._by_addr.pop(addr, None)
        if gpa is None:
            return False
        p = self._by_gpa[gpa]
        p.refs -= 1
        if p.refs == 0:
            del self._by_gpa[gpa]
            self._write(gpa, bytes((p.original,)))
        return True

    def remove_all(self) -> None:
        for addr in list(self._by_addr):
            while addr in self._by_addr and self.remove(addr):
                pass

    def any_planted(self) -> bool:
        return bool(self._by_addr)

    def replant(self) -> None:
        """RAM was reloaded under the breakpoints (a partition reset): save the new bytes and plant
        the int3s again."""
        for p in self._by_gpa.values():
            old = self._read(p.gpa, 1)
            if len(old) == 1 and old[0] != INT3:
                p.original = old[0]
            self._write(p.gpa, bytes((INT3,)))

    def planted_at(self, addr: int) -> bool:
        """A breakpoint gdb inserted at virtual `addr` (the stop at an int3 there is ours)."""
        return addr in self._by_addr

    def mask(self, gpa: int, data: bytes) -> bytes:
        """`data` read from RAM at `gpa`, with the original bytes where int3s are planted."""
        if not self._by_gpa:
            return data
        out = bytearray(data)
        for p in self._by_gpa.values():
            if gpa <= p.gpa < gpa + len(out):
                out[p.gpa - gpa] = p.original
        return bytes(out)

    def write_through(self, gpa: int, data: bytes) -> bytes:
        """What to store for a debugger write of `data` at `gpa`: planted bytes take the new value
        as their saved original and stay int3 in RAM."""
        if not self._by_gpa:
            return data
        out = bytearray(data)
        for p in self._by_gpa.values():
            if gpa <= p.gpa < gpa + len(out):
                p.original = out[p.gpa - gpa]
                out[p.gpa - gpa] = INT3
        return bytes(out)
