"""Multiboot v1 loader: what `qemu-system-x86_64 -kernel` does with a Multiboot kernel.

Multiboot Specification 0.6.96: the header lies in the first 8192 bytes, 32-bit aligned. The kernel
is entered in 32-bit flat protected mode with paging off, EAX = 0x2BADB002, EBX = the physical
address of the Multiboot information structure. ELF32 and ELF64 images are loaded by their PT_LOAD
program headers (physical addresses); other images need the header's address fields (flag 16).

The command line and module strings are formed as QEMU forms them ("<kernel path> <append>"), so
a test kernel prints the same thing under both.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from hv1.errors import LoaderError
from hv1.hv.interfaces import GuestMemory

MB_HEADER_MAGIC = 0x1BADB002
MB_BOOTLOADER_MAGIC = 0x2BADB002
MB_SEARCH = 8192

MB_FLAG_PAGE_ALIGN = 1 << 0
MB_FLAG_MEMORY_INFO = 1 << 1
MB_FLAG_VIDEO_MODE = 1 << 2
MB_FLAG_AOUT_KLUDGE = 1 << 16
_UNDERSTOOD_REQUIRED = MB_FLAG_PAGE_ALIGN | MB_FLAG_MEMORY_INFO | MB_FLAG_VIDEO_MODE

# multiboot_info.flags
MBI_MEM = 1 << 0
MBI_CMDLINE = 1 << 2
MBI_MODS = 1 << 3
MBI_MMAP = 1 << 6
MBI_LOADER_NAME = 1 << 9

LOW_MEM_END = 0x9FC00  # top of conventional memory (639 KiB), as a PC BIOS reports it
HIGH_MEM_START = 0x100000
BIOS_AREA = (0xF0000, 0x100000)
MMAP_AVAILABLE = 1
MMAP_RESERVED = 2
PAGE = 0x1000

# Pages the guest test library uses below the kernel (AP trampoline) must stay free; the info
# structure goes after the image, as QEMU puts it.


@dataclass
class Module:
    path: str
    args: str = ""


@dataclass
class BootImage:
    entry: int
    mbi: int
    eax: int = MB_BOOTLOADER_MAGIC
    loaded: list[tuple[int, int]] = field(default_factory=list)  # (gpa, length) ranges written
    end: int = 0  # first free byte after everything the loader placed


def find_header(data: bytes) -> tuple[int, int, tuple[int, ...]]:
    """(offset, flags, address fields) of the Multiboot header, or LoaderError."""
    limit = min(len(data), MB_SEARCH) - 12
    for off in range(0, limit + 1, 4):
        magic, flags, checksum = struct.unpack_from("<III", data, off)
        if magic == MB_HEADER_MAGIC and (magic + flags + checksum) & 0xFFFFFFFF == 0:
            addrs: tuple[int, ...] = ()
            if flags & MB_FLAG_AOUT_KLUDGE:
                if off + 32 > len(data):
                    raise LoaderError("Multiboot header is truncated")
                addrs = struct.unpack_from("<IIIII", data, off + 12)
            return off, flags, addrs
    raise LoaderError("no Multiboot header in the first 8 KiB of the image (not a Multiboot kernel)")


def _load_elf(data: bytes, mem: GuestMemory, loaded: list[tuple[int, int]]) -> tuple[int, int]:
    try:
        elf = ELFFile(io.BytesIO(data))
        segments = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
    except (ELFError, struct.error, ValueError) as e:
        raise LoaderError(f"bad ELF image: {e}") from None
    if elf["e_machine"] not in ("EM_386", "EM_X86_64"):
        raise LoaderError(f"ELF image is for {elf['e_machine']}, not x86")
    if not segments:
        raise LoaderError("ELF image has no loadable segments")
    entry = int(elf["e_entry"])
    end = 0
    for seg in segments:
        paddr, memsz, filesz = int(seg["p_paddr"]), int(seg["p_memsz"]), int(seg["p_filesz"])
        if filesz > memsz:
            raise LoaderError("ELF segment file size exceeds its memory size")
        if not mem.contains(paddr, memsz):
            raise LoaderError(
                f"kernel segment {paddr:#x}+{memsz:#x} does not fit in guest memory "
                f"({mem.size >> 20} MiB): raise --memory"
            )
        body = seg.data()
        mem.write(paddr, body)
        mem.write(paddr + filesz, bytes(memsz - filesz))
        loaded.append((paddr, memsz))
        end = max(end, paddr + memsz)
        vaddr = int(seg["p_vaddr"])
        if vaddr != paddr and vaddr <= entry < vaddr + memsz:
            entry = entry - vaddr + paddr  # a higher-half kernel: enter at the physical alias
    return entry, end


def _load_aout(
    data: bytes, hdr_off: int, addrs: tuple[int, ...], mem: GuestMemory, loaded: list[tuple[int, int]]
) -> tuple[int, int]:
    header_addr, load_addr, load_end, bss_end, entry = addrs
    if load_addr > header_addr:
        raise LoaderError("Multiboot header: load_addr is above header_addr")
    start = hdr_off - (header_addr - load_addr)
    if start < 0:
        raise LoaderError("Multiboot header: load_addr points before the image")
    size = (load_end - load_addr) if load_end else len(data) - start
    if size < 0 or start + size > len(data):
        raise LoaderError("Multiboot header: load_end_addr is outside the image")
    end = max(load_addr + size, bss_end)
    if not mem.contains(load_addr, end - load_addr):
        raise LoaderError(f"kernel {load_addr:#x}-{end:#x} does not fit in guest memory: raise --memory")
    mem.write(load_addr, data[start : start + size])
    if bss_end > load_addr + size:
        mem.write(load_addr + size, bytes(bss_end - load_addr - size))
    loaded.append((load_addr, end - load_addr))
    return entry, end


def _align(x: int, a: int = PAGE) -> int:
    return (x + a - 1) & ~(a - 1)


def memory_map(ram_size: int) -> list[tuple[int, int, int]]:
    """(base, length, type) entries of the Multiboot memory map: a PC layout over `ram_size`."""
    entries = [(0, LOW_MEM_END, MMAP_AVAILABLE), (LOW_MEM_END, 0xA0000 - LOW_MEM_END, MMAP_RESERVED)]
    entries.append((BIOS_AREA[0], BIOS_AREA[1] - BIOS_AREA[0], MMAP_RESERVED))
    if ram_size > HIGH_MEM_START:
        entries.append((HIGH_MEM_START, ram_size - HIGH_MEM_START, MMAP_AVAILABLE))
    return entries


def load(
    kernel_path: str,
    data: bytes,
    mem: GuestMemory,
    append: str = "",
    modules: list[tuple[Module, bytes]] | None = None,
) -> BootImage:
    """Load a Multiboot kernel and its modules into `mem`; return where and how to enter it."""
    modules = modules or []
    hdr_off, flags, addrs = find_header(data)
    unknown = flags & 0xFFFF & ~_UNDERSTOOD_REQUIRED
    if unknown:
        raise LoaderError(f"Multiboot header requires features hv1 does not know (flags {unknown:#x})")
    loaded: list[tuple[int, int]] = []
    if data[:4] == b"\x7fELF" and not flags & MB_FLAG_AOUT_KLUDGE:
        entry, end = _load_elf(data, mem, loaded)
    elif flags & MB_FLAG_AOUT_KLUDGE:
        entry, end = _load_aout(data, hdr_off, addrs, mem, loaded)
    else:
        raise LoaderError("not an ELF image, and the Multiboot header has no load addresses (flag 16)")

    # The information structure, strings and memory map go on the page after the image, modules
    # after that (page-aligned when the kernel asks, and always here: it costs nothing).
    cursor = _align(end)
    mbi = cursor
    cursor += 128
    strings = bytearray()

    def add_string(s: str) -> int:
        addr = cursor + len(strings)
        strings.extend(s.encode() + b"\0")
        return addr

    cmdline_addr = add_string(f"{kernel_path} {append}")
    loader_name = add_string("hv1")
    mod_strings = [add_string(f"{m.path} {m.args}" if m.args else m.path) for m, _ in modules]
    cursor += len(strings)
    cursor = _align(cursor, 8)
    mmap_entries = memory_map(mem.size)
    mmap_addr = cursor
    mmap_blob = b"".join(struct.pack("<IQQI", 20, b, n, t) for b, n, t in mmap_entries)
    cursor += len(mmap_blob)
    mods_addr = _align(cursor, 16)
    cursor = mods_addr + 16 * len(modules)
    placed = []
    for (m, blob), s in zip(modules, mod_strings, strict=True):
        start = _align(cursor)
        if not mem.contains(start, len(blob)):
            raise LoaderError(f"module {m.path} does not fit in guest memory: raise --memory")
        placed.append((start, start + len(blob), s))
        cursor = start + len(blob)
    if not mem.contains(mbi, cursor - mbi):
        raise LoaderError("the Multiboot information does not fit in guest memory: raise --memory")

    info_flags = MBI_MEM | MBI_CMDLINE | MBI_MODS | MBI_MMAP | MBI_LOADER_NAME
    mem_upper = max(0, min(mem.size, 0xFFFFFFFF) - HIGH_MEM_START) // 1024
    info = bytearray(128)
    struct.pack_into("<III", info, 0, info_flags, LOW_MEM_END // 1024, mem_upper)
    struct.pack_into("<IIII", info, 12, 0xFFFFFFFF, cmdline_addr, len(modules), mods_addr)
    struct.pack_into("<II", info, 44, len(mmap_blob), mmap_addr)
    struct.pack_into("<I", info, 64, loader_name)
    mem.write(mbi, info)
    mem.write(mbi + 128, strings)
    mem.write(mmap_addr, mmap_blob)
    for i, (start, stop, s) in enumerate(placed):
        mem.write(mods_addr + 16 * i, struct.pack("<IIII", start, stop, s, 0))
    for (start, _stop, _s), (_m, blob) in zip(placed, modules, strict=True):
        mem.write(start, blob)
    loaded.append((mbi, cursor - mbi))
    return BootImage(entry=entry, mbi=mbi, loaded=loaded, end=cursor)
