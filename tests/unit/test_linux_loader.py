"""The Linux loader (Documentation/arch/x86/boot.rst: setup header, 64-bit boot protocol,
zero-page.rst; Xen's PVH ABI, pvh.pandoc / start_info.h), on synthetic images and on Debian 12's real
cloud kernel (fetched by .ci/run; skipped with the reason when it is not there). All on fake memory."""

from __future__ import annotations

import bz2
import contextlib
import gzip
import lzma
import random
import struct
from pathlib import Path

import pytest

from hv1.errors import LoaderError
from hv1.machine import boot, paging
from hv1.machine.entry_state import EntryMode
from hv1.machine.linux import boot_params as bp
from hv1.machine.linux import loader, lz4, payload, pvh
from hv1.machine.linux import setup_header as sh
from tests.fakes import FakeMemory
from tests.linux_artifacts import KERNEL_SKIP, debian_kernel

MiB = 1 << 20
ENTRY32 = 0x1000040


# ---- synthetic images -------------------------------------------------------------------------------


def tiny_vmlinux(entry32: int | None = ENTRY32, paddr: int = 0x1000000, code: bytes = b"\x90" * 64,
                 bss: int = 0x1000) -> bytes:  # fmt: skip
    """An ELF64 x86-64 kernel: one PT_LOAD (code + bss) and a PT_NOTE with the PVH entry."""
    note = b""
    if entry32 is not None:
        note = struct.pack("<III", 4, 4, pvh.XEN_ELFNOTE_PHYS32_ENTRY) + b"Xen\0" + struct.pack("<I", entry32)
    phoff, phnum = 64, 2
    code_off = phoff + 56 * phnum
    note_off = code_off + len(code)
    ehdr = struct.pack("<4sBBBB8xHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, 2, 62, 1, 0xFFFFFFFF81000000,
                       phoff, 0, 0, 64, 56, phnum, 64, 0, 0)  # fmt: skip
    load = struct.pack(
        "<IIQQQQQQ", 1, 5, code_off, 0xFFFFFFFF81000000, paddr, len(code), len(code) + bss, 0x1000
    )
    pnote = struct.pack("<IIQQQQQQ", 4, 4, note_off, 0, 0, len(note), len(note), 4)
    return ehdr + load + pnote + code + note


def tiny_bzimage(pay: bytes, *, version: int = 0x020F, setup_sects: int = 4, pref: int = 0x1000000,
                 init_size: int = 0x400000, initrd_max: int = 0x7FFFFFFF, cmdline_size: int = 2047,
                 xlf: int = sh.XLF_KERNEL_64 | sh.XLF_CAN_BE_LOADED_ABOVE_4G) -> bytes:  # fmt: skip
    setup = bytearray((setup_sects + 1) * 512)
    end = 0x26C

    def put(name: str, value: int | bytes) -> None:
        code = next(c for n, _, c in sh.FIELDS if n == name)
        struct.pack_into("<" + code, setup, sh.OFFSET[name], value)

    put("setup_sects", setup_sects)
    put("boot_flag", sh.BOOT_FLAG)
    put("jump", 0xEB | ((end - 0x202) << 8))
    put("header", sh.HDRS_MAGIC)
    put("version", version)
    put("loadflags", sh.LOADED_HIGH)
    put("initrd_addr_max", initrd_max)
    put("kernel_alignment", 0x200000)
    put("relocatable_kernel", 1)
    put("xloadflags", xlf)
    put("cmdline_size", cmdline_size)
    put("payload_offset", 0x300)
    put("payload_length", len(pay))
    put("pref_address", pref)
    put("init_size", init_size)
    pm = b"\xcc" * 0x300 + pay
    return bytes(setup) + pm


def lz4_legacy(*blocks: bytes, size: int | None = None) -> bytes:
    out = struct.pack("<I", lz4.LEGACY_MAGIC) + b"".join(struct.pack("<I", len(b)) + b for b in blocks)
    return out + (struct.pack("<I", size) if size is not None else b"")


def lz4_literals(data: bytes) -> bytes:
    """An LZ4 block that is one literal run (the format's last sequence)."""
    n = len(data)
    if n < 15:
        return bytes([n << 4]) + data
    rest, ext = n - 15, bytearray()
    while rest >= 255:
        ext.append(255)
        rest -= 255
    ext.append(rest)
    return bytes([0xF0]) + bytes(ext) + data


# ---- LZ4 (lz4 project doc/lz4_Block_format.md; the legacy frame of lib/decompress_unlz4.c) -----------


def test_lz4_overlapping_match_repeats_the_last_bytes() -> None:
    # "abc", then a match of 9 at offset 3 (overlapping: abcabcabc), then the literals "xyz".
    block = bytes([0x35]) + b"abc" + b"\x03\x00" + bytes([0x30]) + b"xyz"
    assert lz4.decompress_legacy(lz4_legacy(block, size=15)) == b"abcabcabcabcxyz"


def test_lz4_extended_lengths() -> None:
    lit = bytes(range(20))  # literal length 15 + 5
    # match length 4 + 15 + 255 + 26 = 300 at offset 1 (a run of the last byte)
    block = bytes([0xFF, 5]) + lit + b"\x01\x00" + bytes([255, 26]) + bytes([0x10]) + b"!"
    out = lz4.decompress_legacy(lz4_legacy(block))
    assert out == lit + bytes([19]) * 300 + b"!"


def test_lz4_multiple_blocks_and_trailing_size() -> None:
    a, b = b"A" * 100, b"B" * 7
    assert lz4.decompress_legacy(lz4_legacy(lz4_literals(a), lz4_literals(b), size=107)) == a + b


@pytest.mark.parametrize(
    ("stream", "message"),
    [
        (b"\x00\x00\x00\x00", "not an LZ4 legacy"),
        (lz4_legacy(bytes([0x14]) + b"a" + b"\x00\x00" + bytes([0x00])), "offset"),  # offset 0
        (lz4_legacy(bytes([0x14]) + b"a" + b"\x05\x00" + bytes([0x00])), "offset"),  # before the start
        (lz4_legacy(bytes([0x50]) + b"ab"), "literals run past"),
        (lz4_legacy(lz4_literals(b"xyz"), size=4), "trailing size"),
        (struct.pack("<II", lz4.LEGACY_MAGIC, 1000) + b"short", "runs past the end"),
    ],
)
def test_lz4_rejects_bad_streams(stream: bytes, message: str) -> None:
    with pytest.raises(lz4.Lz4Error, match=message):
        lz4.decompress_legacy(stream)


# ---- setup header and payload -----------------------------------------------------------------------


def test_setup_header_fields_at_their_boot_rst_offsets() -> None:
    img = tiny_bzimage(gzip.compress(tiny_vmlinux()), setup_sects=4)
    hdr = sh.parse(img)
    assert hdr.version == 0x020F and hdr["setup_sects"] == 4 and hdr.setup_size == 5 * 512
    assert hdr["pref_address"] == 0x1000000 and hdr["init_size"] == 0x400000
    assert hdr["xloadflags"] & sh.XLF_KERNEL_64 and hdr.end == 0x26C and hdr.raw == img[0x1F1:0x26C]


def test_setup_sects_zero_means_four() -> None:
    img = bytearray(tiny_bzimage(gzip.compress(tiny_vmlinux()), setup_sects=4))
    img[0x1F1] = 0
    assert sh.parse(bytes(img)).setup_size == 5 * 512


def test_not_a_bzimage() -> None:
    assert not sh.is_bzimage(b"\0" * 4096)
    with pytest.raises(LoaderError, match="HdrS"):
        sh.parse(b"\0" * 4096)


@pytest.mark.parametrize(
    ("compress", "fmt"),
    [
        (gzip.compress, "gzip"),
        (lambda d: lzma.compress(d, format=lzma.FORMAT_XZ), "xz"),
        (lambda d: lzma.compress(d, format=lzma.FORMAT_ALONE), "lzma"),
        (bz2.compress, "bzip2"),
        (lambda d: lz4_legacy(lz4_literals(d), size=len(d)), "lz4"),
    ],
)
def test_payload_extracted_in_every_stdlib_format(compress: object, fmt: str) -> None:
    elf = tiny_vmlinux()
    blob = compress(elf)  # type: ignore[operator]
    # The kernel build appends the uncompressed size to most formats (scripts/Makefile.lib size_append).
    if fmt in ("xz", "lzma", "bzip2"):
        blob += struct.pack("<I", len(elf))
    img = tiny_bzimage(blob)
    hdr = sh.parse(img)
    assert payload.format_of(payload.payload_of(img, hdr)) == fmt
    assert payload.extract_vmlinux(img, hdr) == elf


def test_zstd_payload_falls_back_to_the_decompressor() -> None:
    img = tiny_bzimage(b"\x28\xb5\x2f\xfd" + bytes(32))
    with pytest.raises(payload.PayloadUnsupported, match="--linux-entry 64bit"):
        payload.extract_vmlinux(img, sh.parse(img))
    b = loader.load(img, FakeMemory(64 * MiB), cmdline="")
    assert b.kind == "bzimage-64bit" and "zstd" in b.note and b.entry.rip == 0x1000200


def test_payload_without_pvh_note_falls_back_to_the_decompressor() -> None:
    b = loader.load(tiny_bzimage(gzip.compress(tiny_vmlinux(entry32=None))), FakeMemory(64 * MiB), cmdline="")
    assert b.kind == "bzimage-64bit" and "PVH" in b.note


def test_payload_outside_the_image() -> None:
    img = bytearray(tiny_bzimage(gzip.compress(tiny_vmlinux())))
    struct.pack_into("<I", img, 0x24C, 1 << 30)
    with pytest.raises(LoaderError, match="outside the image"):
        payload.payload_of(bytes(img), sh.parse(bytes(img)))


def test_extraction_is_cached_by_payload_hash(tmp_path: Path) -> None:
    elf = tiny_vmlinux()
    img = tiny_bzimage(gzip.compress(elf))
    assert payload.extract_vmlinux(img, sh.parse(img), tmp_path) == elf
    (cached,) = tmp_path.iterdir()
    assert cached.read_bytes() == elf
    cached.write_bytes(b"\x7fELF cached copy")  # a second extraction reads the cache, not the payload
    assert payload.extract_vmlinux(img, sh.parse(img), tmp_path) == b"\x7fELF cached copy"


# ---- PVH ---------------------------------------------------------------------------------------------


def _start_info(mem: FakeMemory, addr: int) -> tuple[int, ...]:
    return pvh.START_INFO.unpack(mem.read(addr, pvh.START_INFO.size))


def test_pvh_entry_state_and_start_info() -> None:
    mem = FakeMemory(64 * MiB)
    initrd = b"INITRD" * 1000
    b = loader.load(tiny_vmlinux(), mem, cmdline="console=ttyS0 quiet", initrd=initrd, apic_ids=[0, 1])
    assert b.kind == "vmlinux-pvh"
    # pvh.pandoc: 32-bit flat protected mode, paging off, EBX = start info, TR a 32-bit TSS.
    assert b.entry.mode is EntryMode.PROTECTED32 and b.entry.rip == ENTRY32 and b.entry.tss
    assert b.entry.gprs == {"rbx": loader.START_INFO_ADDR}
    magic, version, flags, nmods, modlist, cmdline, rsdp, memmap, nmem, _ = _start_info(
        mem, loader.START_INFO_ADDR
    )
    assert (magic, version, flags, nmods) == (pvh.HVM_START_MAGIC, 1, 0, 1)
    assert mem.read(cmdline, 20) == b"console=ttyS0 quiet\0"
    assert rsdp == loader.ACPI_ADDR and mem.read(rsdp, 8) == b"RSD PTR "
    addr, size, _c, _r = pvh.MODLIST_ENTRY.unpack(mem.read(modlist, 32))
    assert size == len(initrd) and mem.read(addr, size) == initrd
    assert addr % 0x1000 == 0 and addr + size <= mem.size and addr + size > mem.size - 0x1000  # top of RAM
    entries = [pvh.MEMMAP_ENTRY.unpack(mem.read(memmap + 24 * i, 24)) for i in range(nmem)]
    assert [(a, s, t) for a, s, t, _ in entries] == [(e.addr, e.size, e.type) for e in bp.e820_map(mem.size)]
    # the kernel at its physical address, bss zeroed
    assert mem.read(0x1000000, 64) == b"\x90" * 64 and mem.read(0x1000040, 0x1000) == bytes(0x1000)


def test_pvh_without_initrd_has_no_modules() -> None:
    mem = FakeMemory(64 * MiB)
    loader.load(tiny_vmlinux(), mem, cmdline="")
    _m, _v, _f, nmods, modlist, *_ = _start_info(mem, loader.START_INFO_ADDR)
    assert nmods == 0 and modlist == 0


def test_elf_without_pvh_note_is_not_linux() -> None:
    assert not loader.is_linux(tiny_vmlinux(entry32=None))
    with pytest.raises(LoaderError, match="PVH entry note"):
        loader.load_pvh(
            tiny_vmlinux(entry32=None), FakeMemory(64 * MiB), cmdline="", initrd=None, apic_ids=[0]
        )


def test_kernel_that_does_not_fit_says_raise_memory() -> None:
    with pytest.raises(LoaderError, match="raise --memory"):
        loader.load(tiny_vmlinux(), FakeMemory(8 * MiB), cmdline="")


def test_initrd_that_does_not_fit_says_raise_memory() -> None:
    with pytest.raises(LoaderError, match="raise --memory"):
        loader.load(tiny_vmlinux(), FakeMemory(20 * MiB), cmdline="", initrd=bytes(8 * MiB))


def test_place_initrd_respects_initrd_addr_max() -> None:
    addr = loader.place_initrd(0x3000, ram_size=512 * MiB, kernel_end=0x2000000, addr_max=0x0FFFFFFF)
    assert addr == 0x10000000 - 0x3000
    assert loader.place_initrd(100, 512 * MiB, 0x2000000, 0xFFFFFFFF) == 512 * MiB - 0x1000


# ---- bzImage: payload path and 64-bit boot protocol -------------------------------------------------


def test_bzimage_default_is_extracted_payload_through_pvh() -> None:
    mem = FakeMemory(64 * MiB)
    b = loader.load(tiny_bzimage(gzip.compress(tiny_vmlinux())), mem, cmdline="x")
    assert b.kind == "bzimage-pvh" and b.entry.rip == ENTRY32 and b.header is not None


def test_bzimage_cmdline_limit_is_the_headers_cmdline_size() -> None:
    img = tiny_bzimage(gzip.compress(tiny_vmlinux()), cmdline_size=16)
    with pytest.raises(LoaderError, match="at most 16"):
        loader.load(img, FakeMemory(64 * MiB), cmdline="x" * 17)
    with pytest.raises(LoaderError, match="at most 16"):
        loader.load(img, FakeMemory(64 * MiB), cmdline="x" * 17, entry="64bit")


def test_64bit_boot_protocol_zero_page_page_tables_and_entry() -> None:
    mem = FakeMemory(96 * MiB)
    img = tiny_bzimage(gzip.compress(tiny_vmlinux()), initrd_max=0x3FFFFFF)
    initrd = bytes(range(256)) * 64
    b = loader.load(img, mem, cmdline="console=ttyS0", initrd=initrd, apic_ids=[0, 1, 2], entry="64bit")
    hdr = sh.parse(img)
    assert b.kind == "bzimage-64bit"
    # the protected-mode kernel at pref_address, entered at startup_64 (+0x200) with RSI = boot_params
    assert mem.read(0x1000000, 0x300) == img[hdr.setup_size : hdr.setup_size + 0x300]
    st = b.entry
    assert st.mode is EntryMode.LONG64 and st.rip == 0x1000200 and st.gprs == {"rsi": loader.ZERO_PAGE_ADDR}
    assert (st.code_selector, st.data_selector) == (0x10, 0x18) and st.gdt == (loader.GDT_ADDR, 31)
    gdt = struct.unpack("<4Q", mem.read(loader.GDT_ADDR, 32))
    assert gdt[2] >> 53 & 1 == 1 and gdt[2] >> 47 & 1 == 1  # __BOOT_CS: L=1, present
    assert gdt[3] >> 41 & 1 == 1 and gdt[3] >> 47 & 1 == 1  # __BOOT_DS: writable, present
    # identity map: the kernel, the zero page, the command line and the initrd translate 1:1
    cr0, cr4, efer = paging.CR0_PG | 1, paging.CR4_PAE, paging.EFER_LMA
    for va in (0x1000200, loader.ZERO_PAGE_ADDR, loader.CMDLINE_ADDR, 0x3FFF000, 0xFEC00000, 0xFFFFF000):
        assert paging.translate(mem, va, cr0, st.cr3, cr4, efer) == va
    zp = mem.read(loader.ZERO_PAGE_ADDR, 4096)
    assert zp[0x1F1:0x1FA] == img[0x1F1:0x1FA] and zp[0x202:0x210] == img[0x202:0x210]  # header copied...
    assert zp[0x210] == sh.TYPE_OF_LOADER_UNDEFINED  # ...and the loader's fields set
    assert zp[0x211] & sh.CAN_USE_HEAP and zp[0x211] & sh.LOADED_HIGH
    (cmd_ptr,) = struct.unpack_from("<I", zp, 0x228)
    assert cmd_ptr == loader.CMDLINE_ADDR and mem.read(cmd_ptr, 14) == b"console=ttyS0\0"
    image, size = struct.unpack_from("<II", zp, 0x218)
    assert size == len(initrd) and mem.read(image, size) == initrd
    assert image + size <= 0x4000000 and image % 0x1000 == 0  # below initrd_addr_max, page-aligned
    assert image >= 0x1000000 + 0x400000  # above the kernel's init_size
    assert struct.unpack_from("<Q", zp, bp.ACPI_RSDP_ADDR)[0] == loader.ACPI_ADDR
    assert bp.read_e820(zp) == bp.e820_map(mem.size)
    assert zp[bp.SENTINEL] == 0 and struct.unpack_from("<H", zp, 0x1FA)[0] == 0xFFFF


def test_64bit_boot_protocol_needs_a_64bit_entry() -> None:
    img = tiny_bzimage(gzip.compress(tiny_vmlinux()), xlf=0)
    with pytest.raises(LoaderError, match="64-bit entry"):
        loader.load(img, FakeMemory(64 * MiB), cmdline="", entry="64bit")
    img = tiny_bzimage(gzip.compress(tiny_vmlinux()), version=0x020B)
    with pytest.raises(LoaderError, match="2.12"):
        loader.load(img, FakeMemory(64 * MiB), cmdline="", entry="64bit")


def test_64bit_kernel_init_size_must_fit() -> None:
    img = tiny_bzimage(gzip.compress(tiny_vmlinux()), init_size=0x8000000)
    with pytest.raises(LoaderError, match="init_size"):
        loader.load(img, FakeMemory(64 * MiB), cmdline="", entry="64bit")


def test_e820_map_is_a_pc_layout() -> None:
    m = bp.e820_map(256 * MiB)
    assert m[0] == bp.E820Entry(0, 0x9FC00, bp.E820_RAM)
    assert bp.E820Entry(0xE0000, 0x20000, bp.E820_RESERVED) in m  # where the ACPI tables are
    assert m[-1] == bp.E820Entry(0x100000, 255 * MiB, bp.E820_RAM)
    assert all(a.addr + a.size <= b.addr for a, b in zip(m, m[1:], strict=False))


# ---- format detection --------------------------------------------------------------------------------


def test_boot_detects_linux_and_keeps_multiboot() -> None:
    from tests.unit.test_multiboot import elf32, header

    mem = FakeMemory(64 * MiB)
    mb = boot.load_kernel("k.elf", elf32(0x100000, 0x100000, header() + b"\xf4" * 16), mem, append="a")
    assert mb.kind == "multiboot" and mb.entry.gprs["rax"] == 0x2BADB002 and not mb.is_linux
    lx = boot.load_kernel("vmlinux", tiny_vmlinux(), FakeMemory(64 * MiB), append="a", initrd=b"x")
    assert lx.kind == "vmlinux-pvh" and lx.is_linux


def test_boot_rejects_mixed_options_and_unknown_images() -> None:
    with pytest.raises(LoaderError, match="--initrd"):
        boot.load_kernel("vmlinux", tiny_vmlinux(), FakeMemory(64 * MiB), modules=[(object(), b"")])  # type: ignore[list-item]
    with pytest.raises(LoaderError, match="no Multiboot header.*bzImage"):
        boot.load_kernel("junk", b"junk" * 1000, FakeMemory(64 * MiB))


# ---- the real Debian kernel -------------------------------------------------------------------------

real = pytest.mark.skipif(KERNEL_SKIP is not None, reason=KERNEL_SKIP or "")


@pytest.fixture(scope="module")
def debian_bzimage() -> bytes:
    path = debian_kernel()
    assert path is not None
    return path.read_bytes()


@pytest.fixture(scope="module")
def vmlinux_cache() -> Path:
    # hv1's own cache: the first run on a machine decodes the whole payload (~5 s of pure-Python LZ4)
    # and every check below runs on that result; later runs read it back, and
    # test_debian_lz4_first_block_decodes_to_the_cached_prefix keeps the decoder itself checked.
    return payload.default_cache_dir()


@pytest.fixture(scope="module")
def debian_vmlinux(debian_bzimage: bytes, vmlinux_cache: Path) -> bytes:
    return payload.extract_vmlinux(debian_bzimage, sh.parse(debian_bzimage), vmlinux_cache)


@real
def test_debian_lz4_first_block_decodes_to_the_cached_prefix(
    debian_bzimage: bytes, debian_vmlinux: bytes
) -> None:
    pay = payload.payload_of(debian_bzimage, sh.parse(debian_bzimage))
    (csize,) = struct.unpack_from("<I", pay, 4)
    out = bytearray()
    lz4.decompress_block(pay[8 : 8 + csize], out, lz4.LEGACY_BLOCK_MAX)
    assert len(out) == lz4.LEGACY_BLOCK_MAX and bytes(out) == debian_vmlinux[: len(out)]
    # the kernel build's trailing size word is the whole vmlinux(+relocs) length
    assert struct.unpack_from("<I", pay, len(pay) - 4)[0] == len(debian_vmlinux)


@real
def test_debian_kernel_setup_header(debian_bzimage: bytes) -> None:
    hdr = sh.parse(debian_bzimage)
    assert hdr.version >= 0x020F  # 6.1 speaks boot protocol 2.15
    assert hdr["xloadflags"] & sh.XLF_KERNEL_64 and hdr["loadflags"] & sh.LOADED_HIGH
    assert hdr["relocatable_kernel"] and hdr["kernel_alignment"] == 0x200000
    assert hdr["pref_address"] == 0x1000000 and hdr["init_size"] > len(debian_bzimage)
    assert hdr["cmdline_size"] == 2047 and hdr["initrd_addr_max"] == 0x7FFFFFFF
    version = sh.kernel_version_string(debian_bzimage, hdr)
    assert version is not None and version.startswith("6.1.") and "cloud-amd64" in version
    # Debian 12's kernels are LZ4-compressed (CONFIG_KERNEL_LZ4): no stdlib decoder, hv1 has its own.
    assert payload.format_of(payload.payload_of(debian_bzimage, hdr)) == "lz4"


@real
def test_debian_payload_is_a_vmlinux_with_a_pvh_note(debian_vmlinux: bytes) -> None:
    elf = pvh.parse_vmlinux(debian_vmlinux)
    assert elf.entry32 is not None and 0x1000000 <= elf.entry32 < elf.end
    assert elf.start == 0x1000000  # linked at the bzImage's pref_address
    assert loader.is_linux(debian_vmlinux)


@real
@pytest.mark.parametrize("entry", ["pvh", "64bit"])
def test_debian_kernel_lays_out_boot_data(
    debian_bzimage: bytes, debian_vmlinux: bytes, vmlinux_cache: Path, entry: str
) -> None:
    mem = FakeMemory(256 * MiB)
    initrd = b"07070100" * 4096
    cmd = "console=ttyS0 nokaslr"
    b = loader.load(debian_bzimage, mem, cmdline=cmd, initrd=initrd, apic_ids=[0, 1], entry=entry,
                    cache_dir=vmlinux_cache)  # fmt: skip
    assert b.initrd is not None
    addr, size = b.initrd
    assert mem.read(addr, size) == initrd and addr >= b.kernel_range[1] and addr + size <= 256 * MiB
    assert mem.read(loader.CMDLINE_ADDR, len(cmd) + 1) == cmd.encode() + b"\0"
    assert mem.read(loader.ACPI_ADDR, 8) == b"RSD PTR "
    if entry == "pvh":
        elf = pvh.parse_vmlinux(debian_vmlinux)
        assert b.kind == "bzimage-pvh" and b.entry.rip == elf.entry32
        seg = elf.segments[0]
        assert mem.read(seg.paddr, 4096) == debian_vmlinux[seg.offset : seg.offset + 4096]
        assert _start_info(mem, loader.START_INFO_ADDR)[:4] == (pvh.HVM_START_MAGIC, 1, 0, 1)
    else:
        hdr = sh.parse(debian_bzimage)
        assert b.kind == "bzimage-64bit" and b.entry.rip == 0x1000200
        assert mem.read(0x1000000, 4096) == debian_bzimage[hdr.setup_size : hdr.setup_size + 4096]
        zp = mem.read(loader.ZERO_PAGE_ADDR, 4096)
        assert struct.unpack_from("<II", zp, 0x218) == (addr, size)
        assert bp.read_e820(zp) == bp.e820_map(256 * MiB)


def test_corrupted_images_are_loader_errors_never_crashes() -> None:
    rng = random.Random(1212)
    good_bz = tiny_bzimage(gzip.compress(tiny_vmlinux()))
    good_elf = tiny_vmlinux()
    mem = FakeMemory(24 * MiB)  # reused: what a failed load leaves behind does not matter here
    for i in range(240):
        img = bytearray(good_bz if i % 2 else good_elf)
        lo, hi = (0x1F1, 0x270) if i % 2 else (0, 64 + 112 + 80)  # the header fields, or the ELF headers
        for _ in range(rng.randrange(1, 6)):
            img[rng.randrange(lo, hi)] = rng.randrange(256)
        if i % 7 == 0:
            img = img[: rng.randrange(len(img))]
        for entry in ("pvh", "64bit"):
            with contextlib.suppress(LoaderError):
                loader.load(bytes(img), mem, cmdline="x", initrd=b"i" * 100, entry=entry)
