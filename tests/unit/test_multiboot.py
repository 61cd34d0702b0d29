"""Multiboot v1 loader (Multiboot Specification 0.6.96 §3.1 header, §3.2 machine state, §3.3 info)."""

from __future__ import annotations

import struct

import pytest

from hv1.errors import LoaderError
from hv1.machine import multiboot as mb
from tests.fakes import FakeMemory


def header(flags: int = 0x3, addrs: tuple[int, ...] = ()) -> bytes:
    return struct.pack(
        "<III", mb.MB_HEADER_MAGIC, flags, (-(mb.MB_HEADER_MAGIC + flags)) & 0xFFFFFFFF
    ) + b"".join(struct.pack("<I", a) for a in addrs)


def elf32(entry: int, paddr: int, code: bytes, memsz: int | None = None) -> bytes:
    """A one-segment ELF32 executable with the Multiboot header at the start of its code."""
    ehdr_size, phdr_size = 52, 32
    off = ehdr_size + phdr_size
    memsz = memsz if memsz is not None else len(code)
    ehdr = struct.pack(
        "<4sBBBB8xHHIIIIIHHHHHH", b"\x7fELF", 1, 1, 1, 0, 2, 3, 1, entry, ehdr_size, 0, 0, ehdr_size,
        phdr_size, 1, 40, 0, 0,
    )  # fmt: skip
    phdr = struct.pack("<IIIIIIII", 1, off, paddr, paddr, len(code), memsz, 7, 0x1000)
    return ehdr + phdr + code


def test_header_search_finds_aligned_header_in_first_8k() -> None:
    data = bytes(4096) + header() + bytes(64)
    off, flags, _ = mb.find_header(data)
    assert off == 4096 and flags == 3


def test_header_beyond_8k_is_not_found() -> None:
    with pytest.raises(LoaderError, match="no Multiboot header"):
        mb.find_header(bytes(8192) + header())


def test_bad_checksum_is_not_a_header() -> None:
    bad = struct.pack("<III", mb.MB_HEADER_MAGIC, 3, 0)
    with pytest.raises(LoaderError):
        mb.find_header(bad + bytes(64))


def test_elf32_loaded_at_paddr_with_bss_zeroed_and_info_after_image() -> None:
    mem = FakeMemory(4 << 20)
    mem.write(0x100000, b"\xff" * 0x3000)  # garbage where .bss will be
    code = header() + b"\x90" * 20
    img = mb.load("kernel.elf", elf32(0x10000C, 0x100000, code, memsz=0x2000), mem, append="exit=3")
    assert img.entry == 0x10000C and img.eax == 0x2BADB002
    assert mem.read(0x100000, len(code)) == code
    assert mem.read(0x100000 + len(code), 0x2000 - len(code)) == bytes(0x2000 - len(code))
    assert img.mbi >= 0x102000 and img.mbi % 0x1000 == 0
    flags, mem_lower, mem_upper = struct.unpack_from("<III", mem.read(img.mbi, 12))
    assert flags & (mb.MBI_MEM | mb.MBI_CMDLINE | mb.MBI_MMAP | mb.MBI_MODS)
    assert mem_lower == 639 and mem_upper == (4 << 20) // 1024 - 1024
    cmd_addr = struct.unpack_from("<I", mem.read(img.mbi + 16, 4))[0]
    assert mem.read(cmd_addr, 15) == b"kernel.elf exit"  # QEMU's "<path> <append>"


def test_memory_map_describes_pc_layout() -> None:
    mem = FakeMemory(8 << 20)
    img = mb.load("k", elf32(0x100000, 0x100000, header()), mem)
    length, addr = struct.unpack_from("<II", mem.read(img.mbi + 44, 8))
    entries = [struct.unpack_from("<IQQI", mem.read(addr + i, 24)) for i in range(0, length, 24)]
    assert (20, 0, 0x9FC00, 1) in entries
    assert (20, 0x100000, (8 << 20) - 0x100000, 1) in entries


def test_modules_are_page_aligned_with_strings() -> None:
    mem = FakeMemory(8 << 20)
    mods = [(mb.Module("a.bin", "x=1"), b"AAAA"), (mb.Module("b.bin"), b"BBBBBBBB")]
    img = mb.load("k", elf32(0x100000, 0x100000, header()), mem, modules=mods)
    count, addr = struct.unpack_from("<II", mem.read(img.mbi + 20, 8))
    assert count == 2
    for i, (m, blob) in enumerate(mods):
        start, end, s, _ = struct.unpack_from("<IIII", mem.read(addr + 16 * i, 16))
        assert start % 0x1000 == 0 and mem.read(start, end - start) == blob
        want = f"{m.path} {m.args}" if m.args else m.path
        assert mem.read(s, len(want) + 1) == want.encode() + b"\0"


def test_aout_kludge_loads_by_header_addresses() -> None:
    mem = FakeMemory(4 << 20)
    load_addr = 0x200000
    hdr = header(flags=0x10003, addrs=(load_addr, load_addr, 0, load_addr + 0x3000, load_addr + 32))
    blob = hdr + b"\xcc" * 64
    img = mb.load("k.bin", blob, mem)
    assert img.entry == load_addr + 32
    assert mem.read(load_addr, len(blob)) == blob
    assert mem.read(load_addr + len(blob), 16) == bytes(16)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (b"hello world, not a kernel" * 10, "no Multiboot header"),
        (header(flags=0x8) + bytes(32), "requires features"),
        (header(flags=0x3) + bytes(32), "not an ELF image"),
        (b"\x7fELF" + bytes(60) + header(), "bad ELF|not x86|no loadable"),
    ],
)
def test_bad_images_get_one_clear_error(image: bytes, message: str) -> None:
    with pytest.raises(LoaderError, match=message):
        mb.load("k", image, FakeMemory(4 << 20))


def test_image_larger_than_memory_is_rejected() -> None:
    with pytest.raises(LoaderError, match="does not fit"):
        mb.load("k", elf32(0x100000, 0x100000, header(), memsz=8 << 20), FakeMemory(4 << 20))
