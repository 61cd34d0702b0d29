"""A partition's GPA space as `GuestMemory`: what the hypervisor reads and writes on a child's behalf
(hypercall parameters, overlay pages, messages) goes through the child's GPA map onto the root's RAM.

The hypervisor's own accesses are held to the map like the guest's (PDF §5.1: a page is readable
only if mapped readable, writable only if mapped writable): an access to an unmapped page, or a write
to a read-only or special page, raises GpaError, which the callers already turn into the TLFS answer
(HV_STATUS_INVALID_ALIGNMENT for hypercall parameter GPAs "outside the partition's GPA space", a #GP
for an overlay MSR naming such a page). A zero-copy `view` exists for a range inside one page, the
unit every overlay and parameter page is.
"""

from __future__ import annotations

from hv1.hv.gpa_map import BACKING_ONES, BACKING_ZERO, Access, GpaAccessFault, GpaMap
from hv1.hv.interfaces import GpaError, GuestMemory
from hv1.tlfs.virtualization_host import PAGE_SHIFT, PAGE_SIZE


class PartitionMemory:
    """GuestMemory for a partition whose pages are mapped from `ram` (the root's RAM) by `gpa_map`.
    `size` is the top of the partition's GPA space (the highest mapped page + 1, in bytes)."""

    def __init__(self, gpa_map: GpaMap, ram: GuestMemory) -> None:
        self.map = gpa_map
        self.ram = ram

    @property
    def size(self) -> int:
        top = max((page for page, _ in self.map.items()), default=-1)
        return (top + 1) << PAGE_SHIFT

    def contains(self, gpa: int, length: int) -> bool:
        if gpa < 0 or length < 0:
            return False
        try:
            self.map.check(gpa, length, Access.READ)
        except GpaAccessFault:
            return False
        return True

    def _pieces(self, gpa: int, length: int, access: Access) -> list[tuple[int, int, int]]:
        """(backing, offset in page, length) for each page of the range, checked as a whole first."""
        if gpa < 0 or length < 0:
            raise GpaError(gpa, length)
        try:
            mappings = self.map.check(gpa, length, access)
        except GpaAccessFault:
            raise GpaError(gpa, length) from None
        out = []
        pos, left = gpa, length
        for m in mappings:
            off = pos & (PAGE_SIZE - 1)
            n = min(left, PAGE_SIZE - off)
            out.append((m.backing, off, n))
            pos += n
            left -= n
        return out

    def read(self, gpa: int, length: int) -> bytes:
        out = bytearray()
        for backing, off, n in self._pieces(gpa, length, Access.READ):
            if backing == BACKING_ZERO:
                out += bytes(n)
            elif backing == BACKING_ONES:
                out += b"\xff" * n
            else:
                out += self.ram.read((backing << PAGE_SHIFT) + off, n)
        return bytes(out)

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        data = bytes(data)
        pieces = self._pieces(gpa, len(data), Access.WRITE)  # all checked before any byte is written
        pos = 0
        for backing, off, n in pieces:
            self.ram.write((backing << PAGE_SHIFT) + off, data[pos : pos + n])
            pos += n

    def view(self, gpa: int, length: int) -> memoryview:
        pieces = self._pieces(gpa, length, Access.READ | Access.WRITE)
        if len(pieces) > 1 or (pieces and pieces[0][0] < 0):
            raise GpaError(gpa, length)  # not contiguous in the root's RAM, or a special page
        if not pieces:
            return memoryview(b"")
        backing, off, n = pieces[0]
        return self.ram.view((backing << PAGE_SHIFT) + off, n)

    def read_u64(self, gpa: int) -> int:
        return int.from_bytes(self.read(gpa, 8), "little")

    def write_u64(self, gpa: int, value: int) -> None:
        self.write(gpa, value.to_bytes(8, "little"))
