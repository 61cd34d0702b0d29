"""Load Linux the way `qemu-system-x86_64 -kernel` does, for a bzImage or an uncompressed vmlinux.

Three paths (all set up the same platform: e820 map, command line, initrd and hv1's ACPI tables):

- **PVH** (an ELF vmlinux with XEN_ELFNOTE_PHYS32_ENTRY): segments loaded at their physical
  addresses, `hvm_start_info` (command line, initrd as module 0, memory map, RSDP) and entry in 32-bit
  flat protected mode with EBX pointing at it (pvh.py).
- **bzImage, payload extracted** (default): the compressed vmlinux inside the bzImage is decompressed
  on the host (payload.py) and booted through PVH; the in-guest decompressor (and KASLR, which only it
  does) is skipped. The setup header's limits (cmdline_size, initrd_addr_max) still apply. A payload
  Python cannot decode (zstd, LZO) or a kernel without CONFIG_PVH falls back to the next path.
- **bzImage, 64-bit boot protocol** (`entry="64bit"`, boot.rst "64-bit Boot Protocol"): the
  protected-mode kernel at its preferred address, boot_params (the zero page), and entry at
  load address + 0x200 (startup_64) in 64-bit mode with RSI = boot_params, paging on with an identity
  map of the first 4 GiB, a GDT with flat __BOOT_CS (0x10) and __BOOT_DS (0x18), interrupts off.

Low-memory layout (below 1 MiB, which Linux reserves for itself and never hands to its allocator):
the GDT at 0x1000, the zero page or start info at 0x7000 (module list and memory map after it), page
tables at 0x9000-0xEFFF, the command line at 0x20000 and the ACPI tables at 0xE0000. The initrd goes
at the top of RAM below the kernel's initrd_addr_max, as QEMU places it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

from hv1.errors import LoaderError
from hv1.hv.interfaces import GuestMemory
from hv1.machine import acpi
from hv1.machine.entry_state import EntryMode, EntryState
from hv1.machine.linux import boot_params as bp
from hv1.machine.linux import payload, pvh
from hv1.machine.linux import setup_header as sh

GDT_ADDR = 0x1000
ZERO_PAGE_ADDR = 0x7000
START_INFO_ADDR = 0x7000
MODLIST_ADDR = 0x7100
MEMMAP_ADDR = 0x7200
PML4_ADDR = 0x9000
PDPT_ADDR = 0xA000
PD_ADDR = 0xB000  # 4 pages: 4 GiB in 2 MiB pages
CMDLINE_ADDR = 0x20000
CMDLINE_REGION = 0x10000
ACPI_ADDR = acpi.DEFAULT_BASE
PAGE = 0x1000
DEFAULT_LOAD_ADDR = 0x100000  # protocol < 2.10: the protected-mode kernel at 1 MiB
PVH_CMDLINE_MAX = 2047  # x86 COMMAND_LINE_SIZE - 1: what the PVH path can take without a header

# boot.rst "64-bit Boot Protocol": __BOOT_CS at 0x10, __BOOT_DS at 0x18, both flat.
BOOT_CS, BOOT_DS = 0x10, 0x18
GDT_ENTRIES = (0, 0, 0x00AF9B000000FFFF, 0x00CF93000000FFFF)  # null, null, 64-bit code, data
PTE_P, PTE_RW, PTE_PS = 1, 2, 0x80

ENTRIES = ("pvh", "64bit")


@dataclass
class LinuxBoot:
    entry: EntryState
    kind: str  # "vmlinux-pvh" | "bzimage-pvh" | "bzimage-64bit"
    loaded: list[tuple[int, int]] = field(default_factory=list)  # (gpa, length) ranges written
    cmdline: bytes = b""
    initrd: tuple[int, int] | None = None  # (gpa, size)
    kernel_range: tuple[int, int] = (0, 0)  # [start, end) the kernel occupies (incl. init_size)
    rsdp: int = 0
    header: sh.SetupHeader | None = None
    note: str = ""  # why the loader chose this path, when it was not the one asked for


def is_linux(data: bytes) -> bool:
    """A bzImage, or an ELF64 with a PVH entry note (Multiboot is detected before this)."""
    if sh.is_bzimage(data):
        return True
    if data[:4] == b"\x7fELF" and len(data) > 5 and data[4] == 2:
        try:
            return pvh.parse_vmlinux(data).entry32 is not None
        except LoaderError:
            return False
    return False


def _align_up(x: int, a: int) -> int:
    return (x + a - 1) & ~(a - 1)


def _write(mem: GuestMemory, loaded: list[tuple[int, int]], gpa: int, blob: bytes) -> None:
    if not mem.contains(gpa, len(blob)):
        raise LoaderError(f"{len(blob)} bytes at {gpa:#x} do not fit in guest memory: raise --memory")
    mem.write(gpa, blob)
    loaded.append((gpa, len(blob)))


def place_initrd(size: int, ram_size: int, kernel_end: int, addr_max: int) -> int:
    """The initrd's address: page-aligned, as high as RAM and the kernel's initrd_addr_max allow
    (boot.rst: the initrd must lie below initrd_addr_max), and above everything the kernel uses."""
    top = min(addr_max + 1, ram_size)
    addr = (top - size) & ~(PAGE - 1)
    if size > top or addr < _align_up(kernel_end, PAGE):
        raise LoaderError(
            f"the initrd ({size >> 10} KiB) does not fit between the kernel (ends at {kernel_end:#x}) and "
            f"{top:#x}: raise --memory"
        )
    return addr


def identity_page_tables() -> list[tuple[int, bytes]]:
    """PML4, PDPT and four page directories mapping the first 4 GiB 1:1 with 2 MiB pages."""
    pml4 = struct.pack("<Q", PDPT_ADDR | PTE_P | PTE_RW) + bytes(PAGE - 8)
    pdpt = b"".join(struct.pack("<Q", (PD_ADDR + i * PAGE) | PTE_P | PTE_RW) for i in range(4)) + bytes(
        PAGE - 32
    )
    pds = b"".join(struct.pack("<Q", (i << 21) | PTE_P | PTE_RW | PTE_PS) for i in range(4 * 512))
    return [(PML4_ADDR, pml4), (PDPT_ADDR, pdpt), (PD_ADDR, pds)]


def _cmdline(cmdline: str, limit: int) -> bytes:
    raw = cmdline.encode()
    if b"\0" in raw:
        raise LoaderError("the kernel command line contains a NUL byte")
    if len(raw) > limit:
        raise LoaderError(f"the kernel command line is {len(raw)} bytes; this kernel takes at most {limit}")
    return raw + b"\0"


def _load_elf_segments(
    data: bytes, elf: pvh.VmlinuxElf, mem: GuestMemory, loaded: list[tuple[int, int]]
) -> None:
    for s in elf.segments:
        if not mem.contains(s.paddr, s.memsz):
            raise LoaderError(
                f"kernel segment {s.paddr:#x}+{s.memsz:#x} does not fit in guest memory "
                f"({mem.size >> 20} MiB): raise --memory"
            )
        mem.write(s.paddr, data[s.offset : s.offset + s.filesz])
        if s.memsz > s.filesz:
            mem.write(s.paddr + s.filesz, bytes(s.memsz - s.filesz))
        loaded.append((s.paddr, s.memsz))


def _platform(mem: GuestMemory, loaded: list[tuple[int, int]], apic_ids: list[int]) -> int:
    tables = acpi.build(ACPI_ADDR, apic_ids)
    _write(mem, loaded, ACPI_ADDR, tables.blob)
    return tables.rsdp


def load_pvh(
    data: bytes,
    mem: GuestMemory,
    *,
    cmdline: str,
    initrd: bytes | None,
    apic_ids: list[int],
    cmdline_max: int = PVH_CMDLINE_MAX,
    initrd_addr_max: int = 0xFFFFFFFF,
    kind: str = "vmlinux-pvh",
) -> LinuxBoot:
    elf = pvh.parse_vmlinux(data)
    if elf.entry32 is None:
        raise LoaderError(
            "the ELF kernel has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY): build it with CONFIG_PVH"
        )
    loaded: list[tuple[int, int]] = []
    _load_elf_segments(data, elf, mem, loaded)
    rsdp = _platform(mem, loaded, apic_ids)
    line = _cmdline(cmdline, cmdline_max)
    _write(mem, loaded, CMDLINE_ADDR, line)
    e820 = bp.e820_map(mem.size)
    nr_modules = 0
    placed = None
    if initrd is not None:
        addr = place_initrd(len(initrd), mem.size, elf.end, initrd_addr_max)
        _write(mem, loaded, addr, initrd)
        _write(mem, loaded, MODLIST_ADDR, pvh.MODLIST_ENTRY.pack(addr, len(initrd), 0, 0))
        nr_modules, placed = 1, (addr, len(initrd))
    _write(mem, loaded, MEMMAP_ADDR, pvh.memmap(e820))
    info = pvh.start_info(
        cmdline_addr=CMDLINE_ADDR, rsdp_addr=rsdp, modlist_addr=MODLIST_ADDR, nr_modules=nr_modules,
        memmap_addr=MEMMAP_ADDR, memmap_entries=len(e820),
    )  # fmt: skip
    _write(mem, loaded, START_INFO_ADDR, info)
    entry = EntryState(EntryMode.PROTECTED32, elf.entry32, {"rbx": START_INFO_ADDR}, tss=True)
    return LinuxBoot(entry, kind, loaded, line, placed, (elf.start, elf.end), rsdp)


def load_bzimage_64(
    data: bytes,
    hdr: sh.SetupHeader,
    mem: GuestMemory,
    *,
    cmdline: str,
    initrd: bytes | None,
    apic_ids: list[int],
) -> LinuxBoot:
    if hdr.version < 0x020C or not hdr["xloadflags"] & sh.XLF_KERNEL_64:
        raise LoaderError(
            f"boot protocol {hdr.version >> 8}.{hdr.version & 0xFF} kernel without the 64-bit entry "
            "(2.12+ with XLF_KERNEL_64 needed)"
        )
    if not hdr["loadflags"] & sh.LOADED_HIGH:
        raise LoaderError("a zImage (loaded low) is not supported: build a bzImage")
    kernel = data[hdr.setup_size :]
    align = hdr["kernel_alignment"] or 0x200000
    load = hdr["pref_address"] if hdr.version >= 0x020A else DEFAULT_LOAD_ADDR
    if hdr["relocatable_kernel"] and load % align:
        load = _align_up(load, align)
    init_size = max(hdr["init_size"], len(kernel))
    if not mem.contains(load, init_size):
        raise LoaderError(
            f"the kernel needs {init_size >> 20} MiB from {load:#x} (init_size): raise --memory "
            f"(have {mem.size >> 20} MiB)"
        )
    loaded: list[tuple[int, int]] = []
    _write(mem, loaded, load, kernel)
    rsdp = _platform(mem, loaded, apic_ids)
    limit = hdr["cmdline_size"] if hdr.version >= 0x0206 else 255
    line = _cmdline(cmdline, min(limit, CMDLINE_REGION - 1))
    _write(mem, loaded, CMDLINE_ADDR, line)
    placed = None
    if initrd is not None:
        addr = place_initrd(len(initrd), mem.size, load + init_size, hdr["initrd_addr_max"] or 0x37FFFFFF)
        _write(mem, loaded, addr, initrd)
        placed = (addr, len(initrd))
    zero = bp.build(hdr, e820=bp.e820_map(mem.size), cmdline_addr=CMDLINE_ADDR, initrd=placed, rsdp_addr=rsdp)
    _write(mem, loaded, ZERO_PAGE_ADDR, zero)
    _write(mem, loaded, GDT_ADDR, struct.pack("<4Q", *GDT_ENTRIES))
    for gpa, blob in identity_page_tables():
        _write(mem, loaded, gpa, blob)
    entry = EntryState(
        EntryMode.LONG64, load + 0x200, {"rsi": ZERO_PAGE_ADDR}, code_selector=BOOT_CS, data_selector=BOOT_DS,
        cr3=PML4_ADDR, gdt=(GDT_ADDR, 8 * len(GDT_ENTRIES) - 1),
    )  # fmt: skip
    return LinuxBoot(entry, "bzimage-64bit", loaded, line, placed, (load, load + init_size), rsdp, hdr)


def load(
    data: bytes,
    mem: GuestMemory,
    *,
    cmdline: str = "",
    initrd: bytes | None = None,
    apic_ids: list[int] | None = None,
    entry: str = "pvh",
    cache_dir: Path | None = None,
) -> LinuxBoot:
    """Load a Linux kernel image (bzImage or PVH vmlinux) and the platform it expects into `mem`."""
    if entry not in ENTRIES:
        raise LoaderError(f"unknown Linux entry {entry!r} (one of {', '.join(ENTRIES)})")
    ids = apic_ids if apic_ids is not None else [0]
    if not sh.is_bzimage(data):
        return load_pvh(data, mem, cmdline=cmdline, initrd=initrd, apic_ids=ids)
    hdr = sh.parse(data)
    if entry == "64bit":
        return load_bzimage_64(data, hdr, mem, cmdline=cmdline, initrd=initrd, apic_ids=ids)
    try:
        vmlinux = payload.extract_vmlinux(data, hdr, cache_dir)
        if pvh.parse_vmlinux(vmlinux).entry32 is None:
            raise payload.PayloadUnsupported(
                "the kernel inside the bzImage has no PVH entry note (CONFIG_PVH)"
            )
    except payload.PayloadUnsupported as e:
        # Still bootable, through its own decompressor: the 64-bit boot protocol.
        boot64 = load_bzimage_64(data, hdr, mem, cmdline=cmdline, initrd=initrd, apic_ids=ids)
        boot64.note = f"{e}; booted through the 64-bit boot protocol instead"
        return boot64
    limit = min(hdr["cmdline_size"] if hdr.version >= 0x0206 else 255, CMDLINE_REGION - 1)
    boot = load_pvh(
        vmlinux, mem, cmdline=cmdline, initrd=initrd, apic_ids=ids, cmdline_max=limit,
        initrd_addr_max=hdr["initrd_addr_max"] or 0x37FFFFFF, kind="bzimage-pvh",
    )  # fmt: skip
    boot.header = hdr
    return boot
