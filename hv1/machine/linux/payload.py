"""Host-side extraction of a bzImage's payload: the compressed vmlinux the decompressor would unpack.

Why: on a host whose KVM emulates guest ring 0 (host-kvm.md), the bzImage decompressor costs ~45 s
of emulated time; decompressing on the host and entering the vmlinux through its PVH note costs a few
seconds of Python once, and nothing after that (the result is cached by the payload's hash).

boot.rst "Details of Header Fields": payload_offset (from the start of the protected-mode code) and
payload_length locate the payload; its format is identified by its magic number. The payload is
vmlinux as an ELF file, followed by the relocation table a relocatable kernel carries
(arch/x86/boot/compressed/Makefile: vmlinux.bin.all); loading by physical address at the link
address needs no relocation, so the table is ignored.

Formats: gzip, bzip2, LZMA, XZ (Python's stdlib) and LZ4 (hv1/machine/linux/lz4.py; Debian 12's
kernels use it). Zstandard and LZO have no stdlib decoder: such a kernel is booted through the
decompressor (the 64-bit boot protocol) instead.
"""

from __future__ import annotations

import bz2
import hashlib
import lzma
import os
import struct
import tempfile
import zlib
from pathlib import Path

from hv1.errors import LoaderError
from hv1.machine.linux import lz4
from hv1.machine.linux import setup_header as sh

MAX_VMLINUX = 1 << 30
EXTRACT_VERSION = 1  # part of the cache key: bump when extraction changes what it produces

# (magic, name) as scripts/Makefile.lib's compressors write them
MAGICS: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b", "gzip"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x5d\x00\x00", "lzma"),
    (b"BZh", "bzip2"),
    (struct.pack("<I", lz4.LEGACY_MAGIC), "lz4"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\x89LZO", "lzo"),
)
SUPPORTED = ("gzip", "xz", "lzma", "bzip2", "lz4")


class PayloadUnsupported(LoaderError):
    """The payload cannot be extracted here (no decoder, or no payload fields): the kernel can still
    boot through its own decompressor (loader.py falls back to the 64-bit boot protocol)."""


def payload_of(data: bytes, hdr: sh.SetupHeader) -> bytes:
    if hdr.version < 0x0208:
        v = hdr.version
        raise PayloadUnsupported(f"boot protocol {v >> 8}.{v & 0xFF} has no payload fields (2.08+)")
    start = hdr.setup_size + hdr["payload_offset"]
    length = hdr["payload_length"]
    if not length or start + length > len(data):
        raise LoaderError("the bzImage payload lies outside the image")
    return data[start : start + length]


def format_of(payload: bytes) -> str:
    for magic, name in MAGICS:
        if payload.startswith(magic):
            return name
    raise LoaderError(f"unknown bzImage payload format (magic {payload[:6].hex()})")


def _stream(dec: lzma.LZMADecompressor | bz2.BZ2Decompressor, payload: bytes) -> bytes:
    out = dec.decompress(payload, MAX_VMLINUX)
    if not dec.eof:  # trailing bytes (the kernel build's size word) stay in unused_data
        raise LoaderError("the compressed payload is truncated or decompresses to more than 1 GiB")
    return out


def _gunzip(payload: bytes) -> bytes:
    dec = zlib.decompressobj(wbits=31)
    out = dec.decompress(payload, MAX_VMLINUX)
    if not dec.eof:
        raise LoaderError("the gzip payload is truncated or decompresses to more than 1 GiB")
    return out


def decompress(payload: bytes) -> bytes:
    fmt = format_of(payload)
    try:
        if fmt == "gzip":
            return _gunzip(payload)
        if fmt == "xz":
            return _stream(lzma.LZMADecompressor(format=lzma.FORMAT_XZ), payload)
        if fmt == "lzma":
            return _stream(lzma.LZMADecompressor(format=lzma.FORMAT_ALONE), payload)
        if fmt == "bzip2":
            return _stream(bz2.BZ2Decompressor(), payload)
        if fmt == "lz4":
            return lz4.decompress_legacy(payload, MAX_VMLINUX)
    except (zlib.error, lzma.LZMAError, OSError, ValueError) as e:
        raise LoaderError(f"the {fmt} payload does not decompress: {e}") from None
    raise PayloadUnsupported(
        f"the bzImage payload is {fmt}-compressed and Python has no {fmt} decoder: "
        "boot it through its decompressor (--linux-entry 64bit)"
    )


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "hv1" / "vmlinux"


def extract_vmlinux(data: bytes, hdr: sh.SetupHeader, cache_dir: Path | None = None) -> bytes:
    """The vmlinux ELF inside a bzImage (from `cache_dir` when it was extracted before)."""
    payload = payload_of(data, hdr)
    cached: Path | None = None
    if cache_dir is not None:
        key = hashlib.sha256(payload).hexdigest()[:32]
        cached = cache_dir / f"vmlinux-v{EXTRACT_VERSION}-{key}"
        try:
            blob = cached.read_bytes()
            if blob[:4] == b"\x7fELF":
                return blob
        except OSError:
            pass
    blob = decompress(payload)
    if blob[:4] != b"\x7fELF":
        raise LoaderError("the decompressed bzImage payload is not an ELF image")
    if cached is not None:
        try:  # best effort: a read-only or full cache only costs the next run the extraction again
            cached.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=cached.parent, delete=False) as f:
                f.write(blob)
            os.replace(f.name, cached)
        except OSError:
            pass
    return blob
