"""Guest RAM: one anonymous mapping with an inaccessible guard page on each side.

The guard pages turn a VMM bug that runs off the end of guest RAM into an immediate SIGSEGV in
testing instead of silent corruption of a neighbouring allocation. Every access from Python goes
through the bounds checks below, so a guest-supplied GPA can never reach a guard page.
"""

from __future__ import annotations

import bisect
import ctypes
import mmap
import os

from hv1.hv.interfaces import GpaError

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]

GUARD = mmap.PAGESIZE
_MAP_FAILED = ctypes.c_void_p(-1).value
_MADV_DONTNEED = 4
_PROT_NONE = 0


class GuestRam:
    """Guest RAM backed by an anonymous mapping; GPA 0 is its first byte."""

    def __init__(self, size: int) -> None:
        if size <= 0 or size % mmap.PAGESIZE:
            raise ValueError("guest RAM size must be a positive multiple of the page size")
        self._size = size
        total = size + 2 * GUARD
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_NORESERVE", 0x4000)
        base = _libc.mmap(None, total, _PROT_NONE, flags, -1, 0)
        if base is None or base == _MAP_FAILED:
            err = ctypes.get_errno()
            raise OSError(err, f"cannot reserve {size} bytes of guest RAM: {os.strerror(err)}")
        self._base = int(base)
        self._total = total
        if _libc.mprotect(self._base + GUARD, size, mmap.PROT_READ | mmap.PROT_WRITE) != 0:
            err = ctypes.get_errno()
            _libc.munmap(self._base, total)
            raise OSError(err, os.strerror(err))
        self.host_address = self._base + GUARD
        array = (ctypes.c_char * size).from_address(self.host_address)
        self._mv = memoryview(array).cast("B")

    @property
    def size(self) -> int:
        return self._size

    def contains(self, gpa: int, length: int) -> bool:
        return gpa >= 0 and length >= 0 and gpa + length <= self._size

    def read(self, gpa: int, length: int) -> bytes:
        if not (gpa >= 0 and length >= 0 and gpa + length <= self._size):
            raise GpaError(gpa, length)
        return self._mv[gpa : gpa + length].tobytes()

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        n = len(data)
        if not (gpa >= 0 and gpa + n <= self._size):
            raise GpaError(gpa, n)
        self._mv[gpa : gpa + n] = data

    def view(self, gpa: int, length: int) -> memoryview:
        if not (gpa >= 0 and length >= 0 and gpa + length <= self._size):
            raise GpaError(gpa, length)
        return self._mv[gpa : gpa + length]

    def read_u32(self, gpa: int) -> int:
        return int.from_bytes(self.read(gpa, 4), "little")

    def read_u64(self, gpa: int) -> int:
        return int.from_bytes(self.read(gpa, 8), "little")

    def clear(self) -> None:
        """Give every page back to the kernel: guest RAM reads as zero again (partition reset)."""
        _libc.madvise(self.host_address, self._size, _MADV_DONTNEED)

    def is_zero(self, gpa: int, length: int) -> bool:
        return self.view(gpa, length) == bytes(length)

    def close(self) -> None:
        if self._base:
            self._mv.release()
            _libc.munmap(self._base, self._total)
            self._base = 0


class RegionMemory:
    """GuestMemory over a child partition's memory regions (hv1/backends/base.py MemoryRegion): the
    backend's own view of a GPA space whose pages live in the root's RAM, for the reads a backend
    makes on its own (page walks, exception delivery, instruction bytes). Bytes outside every region
    raise GpaError. The regions are (gpa, host_address, size) triples, sorted and disjoint."""

    def __init__(self, regions: list[tuple[int, int, int]]) -> None:
        self._regions = sorted(regions)
        self._starts = [r[0] for r in self._regions]
        self._size = max((g + n for g, _h, n in self._regions), default=0)

    @property
    def size(self) -> int:
        return self._size  # the end of the highest region (not the amount mapped)

    def _pieces(self, gpa: int, length: int) -> list[tuple[int, int]] | None:
        """(host address, length) pieces of [gpa, gpa+length), or None if a byte is unmapped."""
        out: list[tuple[int, int]] = []
        while length > 0:
            i = bisect.bisect_right(self._starts, gpa) - 1
            if i < 0:
                return None
            start, host, size = self._regions[i]
            if gpa >= start + size:
                return None
            n = min(length, start + size - gpa)
            out.append((host + gpa - start, n))
            gpa += n
            length -= n
        return out

    def contains(self, gpa: int, length: int) -> bool:
        return gpa >= 0 and length >= 0 and self._pieces(gpa, length) is not None

    def read(self, gpa: int, length: int) -> bytes:
        pieces = self._pieces(gpa, length) if gpa >= 0 and length >= 0 else None
        if pieces is None:
            raise GpaError(gpa, length)
        return b"".join(ctypes.string_at(h, n) for h, n in pieces)

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        data = bytes(data)
        pieces = self._pieces(gpa, len(data)) if gpa >= 0 else None
        if pieces is None:
            raise GpaError(gpa, len(data))
        pos = 0
        for h, n in pieces:
            ctypes.memmove(h, data[pos : pos + n], n)
            pos += n

    def view(self, gpa: int, length: int) -> memoryview:
        pieces = self._pieces(gpa, length) if gpa >= 0 and length >= 0 else None
        if pieces is None or len(pieces) > 1:
            raise GpaError(gpa, length)  # a zero-copy view cannot span two regions
        h, n = pieces[0] if pieces else (0, 0)
        return memoryview((ctypes.c_char * n).from_address(h)).cast("B") if n else memoryview(b"")
