"""Guest RAM: one anonymous mapping with an inaccessible guard page on each side.

The guard pages turn a VMM bug that runs off the end of guest RAM into an immediate SIGSEGV in
testing instead of silent corruption of a neighbouring allocation. Every access from Python goes
through the bounds checks below, so a guest-supplied GPA can never reach a guard page.
"""

from __future__ import annotations

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
