"""The zero page (`struct boot_params`, Documentation/arch/x86/zero-page.rst) and the e820 memory map
hv1 reports to Linux.

Only the fields a 64-bit boot-protocol loader fills are written: the setup header (copied from the
image and then edited), the e820 table, the ACPI RSDP address and the upper halves of the command-line
and initrd addresses. Everything else stays zero, which the kernel reads as "not provided" (no VGA
console, no EDID, no EFI).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hv1.machine.linux import setup_header as sh

BOOT_PARAMS_SIZE = 0x1000
# zero-page.rst offsets
ACPI_RSDP_ADDR = 0x070  # u64 (protocol 2.14)
EXT_RAMDISK_IMAGE = 0x0C0  # u32: bits 63:32 of ramdisk_image
EXT_RAMDISK_SIZE = 0x0C4
EXT_CMD_LINE_PTR = 0x0C8
E820_ENTRIES = 0x1E8  # u8
SENTINEL = 0x1EF  # u8: a loader that copies the header must leave it 0
E820_TABLE = 0x2D0  # 128 x {u64 addr, u64 size, u32 type}
E820_MAX_ENTRIES = 128
E820_ENTRY = struct.Struct("<QQI")

# e820 types (ACPI "Address Range Types", as Linux's arch/x86/include/uapi/asm/e820.h names them)
E820_RAM = 1
E820_RESERVED = 2
E820_ACPI = 3
E820_NVS = 4

LOW_RAM_END = 0x9FC00  # conventional memory as a PC reports it (the EBDA's KiB above it reserved)
EBDA_END = 0xA0000
BIOS_AREA = (0xE0000, 0x100000)  # hv1's ACPI tables live at 0xE0000, where Linux's RSDP scan looks
HIGH_RAM_START = 0x100000


@dataclass(frozen=True)
class E820Entry:
    addr: int
    size: int
    type: int


def e820_map(ram_size: int) -> list[E820Entry]:
    """A PC memory map over RAM from GPA 0: conventional memory, the EBDA and BIOS area reserved
    (hv1's ACPI tables are in the latter), and the rest usable. hv1's RAM ends below 3 GiB, so there
    is no PCI hole to report."""
    entries = [
        E820Entry(0, LOW_RAM_END, E820_RAM),
        E820Entry(LOW_RAM_END, EBDA_END - LOW_RAM_END, E820_RESERVED),
        E820Entry(BIOS_AREA[0], BIOS_AREA[1] - BIOS_AREA[0], E820_RESERVED),
    ]
    if ram_size > HIGH_RAM_START:
        entries.append(E820Entry(HIGH_RAM_START, ram_size - HIGH_RAM_START, E820_RAM))
    return entries


def build(
    hdr: sh.SetupHeader,
    *,
    e820: list[E820Entry],
    cmdline_addr: int,
    initrd: tuple[int, int] | None,
    rsdp_addr: int | None,
) -> bytes:
    """The zero page for a 64-bit boot-protocol entry (boot.rst "64-bit Boot Protocol": the loader
    fills boot_params, including the setup header as in the image with the loader's fields set)."""
    bp = bytearray(BOOT_PARAMS_SIZE)
    bp[sh.SETUP_HEADER_START : hdr.end] = hdr.raw
    bp[SENTINEL] = 0

    def put(name: str, value: int) -> None:
        off = sh.OFFSET[name]
        code = next(c for n, _, c in sh.FIELDS if n == name)
        struct.pack_into("<" + code, bp, off, value)

    put("vid_mode", 0xFFFF)  # "normal" video mode: hv1 has no display
    put("type_of_loader", sh.TYPE_OF_LOADER_UNDEFINED)
    loadflags = (hdr["loadflags"] | sh.CAN_USE_HEAP) & ~(sh.QUIET_FLAG | sh.KEEP_SEGMENTS)
    put("loadflags", loadflags)
    put("heap_end_ptr", 0xFE00)  # boot.rst: setup's heap end; unused by the 64-bit entry but sane
    put("cmd_line_ptr", cmdline_addr & 0xFFFFFFFF)
    struct.pack_into("<I", bp, EXT_CMD_LINE_PTR, cmdline_addr >> 32)
    if initrd is not None:
        addr, size = initrd
        put("ramdisk_image", addr & 0xFFFFFFFF)
        put("ramdisk_size", size & 0xFFFFFFFF)
        struct.pack_into("<II", bp, EXT_RAMDISK_IMAGE, addr >> 32, size >> 32)
    if rsdp_addr is not None and hdr.version >= 0x020E:
        struct.pack_into("<Q", bp, ACPI_RSDP_ADDR, rsdp_addr)
    if len(e820) > E820_MAX_ENTRIES:
        raise ValueError("too many e820 entries")
    bp[E820_ENTRIES] = len(e820)
    for i, e in enumerate(e820):
        E820_ENTRY.pack_into(bp, E820_TABLE + i * E820_ENTRY.size, e.addr, e.size, e.type)
    return bytes(bp)


def read_e820(bp: bytes) -> list[E820Entry]:
    """The e820 table of a zero page (for tests and diagnostics)."""
    n = bp[E820_ENTRIES]
    return [
        E820Entry(*E820_ENTRY.unpack_from(bp, E820_TABLE + i * E820_ENTRY.size)) for i in range(min(n, 128))
    ]
