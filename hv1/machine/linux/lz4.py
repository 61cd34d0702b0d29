"""LZ4 decompression, pure Python: the "legacy" frame the Linux build uses for vmlinux.bin.lz4.

The Linux/x86 bzImage built with CONFIG_KERNEL_LZ4 (Debian 12's cloud kernel is) carries its
payload as `lz4 -l` output (lib/decompress_unlz4.c reads it): the magic 0x184C2102, then blocks, each
a 32-bit little-endian compressed size and an LZ4 block, and after the last block the 32-bit
uncompressed size that the kernel build appends (scripts/Makefile.lib size_append). Python's stdlib
has no LZ4, and the format is small enough to decode here; the `lz4` package is used instead when it
is installed (several times faster), with the same checks around it.

Block format (LZ4 Block Format Description, lz4 project doc/lz4_Block_format.md): a sequence is a
token (high nibble literal length, low nibble match length - 4; 15 means "more bytes follow, each
added, until one is not 255"), the literals, a 16-bit little-endian offset back into the output and
the match. The last sequence has literals only.
"""

from __future__ import annotations

import struct

LEGACY_MAGIC = 0x184C2102
LEGACY_BLOCK_MAX = 8 << 20  # lz4 -l: 8 MiB blocks


class Lz4Error(ValueError):
    pass


def decompress_block(src: bytes, out: bytearray, limit: int) -> None:
    """Append the decoded LZ4 block `src` to `out`; the block may refer back into `out` (the
    legacy format's blocks are independent, but this costs nothing). At most `limit` bytes.

    Written for CPython's speed (~1 us a sequence): locals only, slices for copies, and the output
    limit checked only where a sequence can grow large (an extended match length) and at the end."""
    i, n = 0, len(src)
    end_limit = len(out) + limit
    while i < n:
        token = src[i]
        i += 1
        lit = token >> 4
        if lit == 15:
            while True:
                if i >= n:
                    raise Lz4Error("truncated literal length")
                b = src[i]
                i += 1
                lit += b
                if b != 255:
                    break
        j = i + lit
        if j > n:
            raise Lz4Error("literals run past the end of the block")
        if lit:
            out += src[i:j]
        i = j
        if i == n:
            break  # the last sequence: literals only
        if i + 2 > n:
            raise Lz4Error("truncated match offset")
        offset = src[i] | (src[i + 1] << 8)
        i += 2
        mlen = (token & 15) + 4
        if mlen == 19:
            while True:
                if i >= n:
                    raise Lz4Error("truncated match length")
                b = src[i]
                i += 1
                mlen += b
                if b != 255:
                    break
            if len(out) + mlen > end_limit:
                raise Lz4Error("block decodes to more than its limit")
        pos = len(out) - offset
        if offset == 0 or pos < 0:
            raise Lz4Error(f"match offset {offset} points before the start of the output")
        if offset >= mlen:
            out += out[pos : pos + mlen]
        else:  # an overlapping match repeats the last `offset` bytes
            chunk = out[pos:]
            out += (chunk * (mlen // offset + 1))[:mlen]
    if len(out) > end_limit:
        raise Lz4Error("block decodes to more than its limit")


def _fast_block(src: bytes) -> bytes | None:
    try:
        import lz4.block  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return None
    try:
        out = lz4.block.decompress(src, uncompressed_size=LEGACY_BLOCK_MAX)
    except Exception as e:  # the binding's LZ4BlockError is not exported under one name everywhere
        raise Lz4Error(f"bad LZ4 block: {e}") from None
    return bytes(out)


def decompress_legacy(data: bytes, max_size: int = 1 << 30) -> bytes:
    """Decode an `lz4 -l` stream (with or without the kernel's trailing size word)."""
    if len(data) < 4 or struct.unpack_from("<I", data, 0)[0] != LEGACY_MAGIC:
        raise Lz4Error("not an LZ4 legacy stream (magic 0x184C2102)")
    out = bytearray()
    i = 4
    while i < len(data):
        if len(data) - i == 4:
            # The size word the kernel build appends: it must match what was decoded.
            size = struct.unpack_from("<I", data, i)[0]
            if size != len(out):
                raise Lz4Error(f"trailing size {size} does not match the decoded {len(out)} bytes")
            break
        if len(data) - i < 4:
            raise Lz4Error("truncated block header")
        csize = struct.unpack_from("<I", data, i)[0]
        i += 4
        if csize == LEGACY_MAGIC:
            continue  # concatenated streams
        if csize > len(data) - i:
            raise Lz4Error(f"block of {csize} bytes runs past the end of the stream")
        block = data[i : i + csize]
        i += csize
        fast = _fast_block(block)
        if fast is not None:
            out += fast
        else:
            decompress_block(block, out, LEGACY_BLOCK_MAX)
        if len(out) > max_size:
            raise Lz4Error(f"decodes to more than {max_size} bytes")
    return bytes(out)
