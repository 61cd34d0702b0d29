"""The PVH direct-boot ABI, as QEMU and Firecracker use it to boot an uncompressed vmlinux: the ELF
note XEN_ELFNOTE_PHYS32_ENTRY names a 32-bit entry point, and the kernel is entered there in 32-bit
flat protected mode with paging off and EBX = the physical address of an `hvm_start_info`.

Sources: Xen's docs/misc/pvh.pandoc (entry state) and xen/include/public/arch-x86/hvm/start_info.h
(structures, version 1 with the memory map); Linux reads them in arch/x86/platform/pvh/
(head.S pvh_start_xen, enlighten.c init_pvh_bootparams: module 0 is the initrd, the memory map is
required, rsdp_paddr is the ACPI root pointer).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hv1.errors import LoaderError
from hv1.machine.linux.boot_params import E820Entry

XEN_ELFNOTE_PHYS32_ENTRY = 18
HVM_START_MAGIC = 0x336EC578
HVM_START_VERSION = 1  # version 1 adds memmap_paddr/memmap_entries
START_INFO = struct.Struct("<IIIIQQQQII")  # magic, version, flags, nr_modules, modlist, cmdline, rsdp,
#                                             memmap_paddr, memmap_entries, reserved: 56 bytes
MODLIST_ENTRY = struct.Struct("<QQQQ")  # paddr, size, cmdline_paddr, reserved
MEMMAP_ENTRY = struct.Struct("<QQII")  # addr, size, type (e820 values), reserved

PT_LOAD = 1
PT_NOTE = 4
EM_X86_64 = 62
_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")


@dataclass(frozen=True)
class Segment:
    paddr: int
    offset: int
    filesz: int
    memsz: int


@dataclass(frozen=True)
class VmlinuxElf:
    entry32: int | None  # XEN_ELFNOTE_PHYS32_ENTRY, None if the kernel has no PVH note
    segments: tuple[Segment, ...]

    @property
    def end(self) -> int:
        return max(s.paddr + s.memsz for s in self.segments)

    @property
    def start(self) -> int:
        return min(s.paddr for s in self.segments)


def _notes(blob: bytes) -> list[tuple[bytes, int, bytes]]:
    """(name, type, desc) of each ELF note in a PT_NOTE segment (4-byte aligned fields)."""
    out = []
    i = 0
    while i + 12 <= len(blob):
        namesz, descsz, ntype = struct.unpack_from("<III", blob, i)
        i += 12
        name = blob[i : i + namesz].rstrip(b"\0")
        i += (namesz + 3) & ~3
        desc = blob[i : i + descsz]
        i += (descsz + 3) & ~3
        if i > len(blob):
            break
        out.append((name, ntype, desc))
    return out


def parse_vmlinux(data: bytes) -> VmlinuxElf:
    """The loadable segments and PVH entry of an x86-64 ELF kernel (by physical address)."""
    if len(data) < _EHDR.size or data[:4] != b"\x7fELF":
        raise LoaderError("not an ELF image")
    ident, _type, machine, _ver, _entry, phoff, _shoff, _flags, _ehsz, phentsize, phnum = _EHDR.unpack_from(
        data
    )[:11]
    if ident[4] != 2 or ident[5] != 1:
        raise LoaderError("not a little-endian ELF64 image (Linux's vmlinux for x86-64 is)")
    if machine != EM_X86_64:
        raise LoaderError(f"ELF machine {machine} is not x86-64")
    if phentsize < _PHDR.size or phoff + phnum * phentsize > len(data):
        raise LoaderError("ELF program headers are truncated")
    segments = []
    entry32 = None
    for n in range(phnum):
        fields = _PHDR.unpack_from(data, phoff + n * phentsize)
        p_type, _pf, off, _vaddr, paddr, filesz, memsz, _align = fields
        if off + filesz > len(data) or filesz > memsz:
            raise LoaderError("an ELF segment lies outside the image or is larger on file than in memory")
        if p_type == PT_LOAD and memsz:
            segments.append(Segment(paddr, off, filesz, memsz))
        elif p_type == PT_NOTE:
            for name, ntype, desc in _notes(data[off : off + filesz]):
                if name == b"Xen" and ntype == XEN_ELFNOTE_PHYS32_ENTRY and len(desc) in (4, 8):
                    entry32 = int.from_bytes(desc, "little") & 0xFFFFFFFF
    if not segments:
        raise LoaderError("the ELF image has no loadable segments")
    return VmlinuxElf(entry32, tuple(segments))


def start_info(
    *,
    cmdline_addr: int,
    rsdp_addr: int,
    modlist_addr: int,
    nr_modules: int,
    memmap_addr: int,
    memmap_entries: int,
) -> bytes:
    return START_INFO.pack(
        HVM_START_MAGIC, HVM_START_VERSION, 0, nr_modules, modlist_addr if nr_modules else 0,
        cmdline_addr, rsdp_addr, memmap_addr, memmap_entries, 0,
    )  # fmt: skip


def memmap(entries: list[E820Entry]) -> bytes:
    return b"".join(MEMMAP_ENTRY.pack(e.addr, e.size, e.type, 0) for e in entries)
