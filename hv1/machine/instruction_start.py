"""Where an intercepted instruction began, when the backend has already stepped over it.

A child's intercept message carries the RIP of the instruction (TLFS PDF §13.2), and a parent that
maps a page and leaves RIP there re-executes it. KVM retires an OUT and an MMIO write before it
exits to userspace (RIP past the instruction, host-kvm.md "Host kernel 6.18.44") and does not say
how long the instruction was, so hv1/machine/child.py finds the start from the bytes before RIP:
the candidate must end exactly at RIP and agree with what the exit says (port, access size, the
value written). The forms are the ones compilers emit for port and MMIO writes; anything else is
reported at RIP as it is (the message's InstructionLength is 0 for memory intercepts anyway: "the
recipient ... must fetch and decode the instruction"). The root machine uses the same to raise the
#GP of a store to its read-only hypercall page on the store itself (a fault's RIP).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from hv1.machine.paging import read_virtual

if TYPE_CHECKING:
    from hv1.backends.base import Vcpu
    from hv1.hv.hypercalls.vp_calls import InitialVpContext
    from hv1.hv.interfaces import GuestMemory

EFER_LMA = 1 << 10
# The GPRs by their number in an instruction encoding (ModRM.reg with REX.R; Intel SDM Vol. 2 §2.1.5).
GPRS_BY_NUMBER = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
                  "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")  # fmt: skip
LEGACY_PREFIXES = frozenset({0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x66, 0x67, 0xF0, 0xF2, 0xF3})


def io_instruction_length(code: bytes) -> int | None:
    """The length of the IN/OUT/INS/OUTS instruction at the start of `code` (prefixes 66, F2, F3,
    67 and a REX byte; E4-E7 take an imm8), or None if it is not one."""
    i = 0
    while i < len(code) and i < 4 and (code[i] in (0x66, 0x67, 0xF2, 0xF3) or 0x40 <= code[i] <= 0x4F):
        i += 1
    if i >= len(code):
        return None
    op = code[i]
    if 0xE4 <= op <= 0xE7:
        return i + 2
    if 0xEC <= op <= 0xEF or 0x6C <= op <= 0x6F:
        return i + 1
    return None


def io_instruction_start(before: bytes, rip: int, size: int, port: int, rdx: int, default_size: int) -> int:
    """Where an I/O instruction that ends at `rip` began, from the (up to 3) bytes `before` it: the
    shortest IN/OUT/INS/OUTS ending there whose port (imm8 or DX) and operand size (1 for a byte
    opcode, else `default_size` switched by a 66 prefix) are the exit's. KVM retires an OUT before
    it exits (RIP past it) without its length, and `66 EF` ends like `EF`."""
    for n in range(1, len(before) + 1):
        code = before[len(before) - n :]
        if io_instruction_length(code) != n:
            continue
        prefixes = code[: n - 2] if n >= 2 and 0xE4 <= code[n - 2] <= 0xE7 else code[: n - 1]
        op = code[len(prefixes)]
        if 0xE4 <= op <= 0xE7:
            if code[-1] != port:
                continue
        elif rdx & 0xFFFF != port:
            continue
        if op in (0xE4, 0xE6, 0xEC, 0xEE, 0x6C, 0x6E):
            width = 1
        else:
            width = 6 - default_size if 0x66 in prefixes else default_size
        if width == size:
            return rip - n
    return rip - 1


def _modrm_length(code: bytes, i: int, address_size: int) -> int | None:
    """Bytes of the ModRM byte at code[i] and what follows it (SIB, displacement) for a memory
    operand (Intel SDM Vol. 2 §2.1.5, tables 2-1 to 2-3); None for a register operand."""
    if i >= len(code):
        return None
    modrm = code[i]
    mod, rm = modrm >> 6, modrm & 7
    if mod == 3:
        return None
    if address_size == 2:
        if mod == 0:
            return 3 if rm == 6 else 1
        return 2 if mod == 1 else 3
    n = 1
    if rm == 4:
        if i + 1 >= len(code):
            return None
        n += 1
        if mod == 0 and code[i + 1] & 7 == 5:
            return n + 4
    elif mod == 0 and rm == 5:
        return n + 4  # disp32 (RIP-relative in 64-bit mode)
    return n + (1 if mod == 1 else 4 if mod == 2 else 0)


def store_instruction_start(
    before: bytes,
    rip: int,
    size: int,
    value: int,
    long_mode: bool,
    default_size: int,
    gpr: Callable[[int], int],
) -> int | None:
    """Where a MOV store that ends at `rip` began, from the (up to 15) bytes `before` it: MOV r/m, r
    (88/89), MOV r/m, imm (C6/C7 /0) and MOV moffs, AL/eAX (A2/A3) with their prefixes, checked
    against the write's size and `value` (the immediate, or the source register through `gpr`
    by its number, 0 = RAX ... 15 = R15). The shortest match; None if no form fits."""
    mask = (1 << (8 * size)) - 1
    for n in range(1, len(before) + 1):
        code = before[len(before) - n :]
        i, opsize66, addr67, rex = 0, False, False, 0
        while i < n and code[i] in LEGACY_PREFIXES:
            opsize66 |= code[i] == 0x66
            addr67 |= code[i] == 0x67
            i += 1
        if long_mode and i < n and 0x40 <= code[i] <= 0x4F:
            rex = code[i]
            i += 1
        if i >= n:
            continue
        op = code[i]
        i += 1
        width = 8 if rex & 8 else (6 - default_size if opsize66 else default_size)
        legacy_address_size = 6 - default_size if addr67 else default_size
        address_size = (4 if addr67 else 8) if long_mode else legacy_address_size
        if op in (0x88, 0x89, 0xC6, 0xC7):
            m = _modrm_length(code, i, address_size)
            if m is None or (op in (0xC6, 0xC7) and (code[i] >> 3) & 7):
                continue
            reg = ((code[i] >> 3) & 7) | (8 if rex & 4 else 0)
            i += m
            width = 1 if op in (0x88, 0xC6) else width
            if op == 0xC6:
                imm_len = 1
            elif op == 0xC7:
                imm_len = 2 if width == 2 else 4
            else:
                imm_len = 0
            if i + imm_len != n or width != size:
                continue
            if imm_len:
                imm = int.from_bytes(code[i:n], "little", signed=True) & mask
                if imm != value & mask:
                    continue
            else:
                high_byte = width == 1 and not rex and 4 <= reg <= 7  # AH, CH, DH, BH
                src = gpr(reg - 4) >> 8 if high_byte else gpr(reg)
                if src & mask != value & mask:
                    continue
            return rip - n
        if op in (0xA2, 0xA3):
            width = 1 if op == 0xA2 else width
            if i + address_size != n or width != size or gpr(0) & mask != value & mask:
                continue
            return rip - n
    return None


def default_operand_size(ctx: InitialVpContext) -> int:
    """2 in 16-bit code (real mode, a 16-bit CS), else 4 (the operand size without a 66 prefix)."""
    return 4 if ctx.cr0 & 1 and (ctx.cs.db or ctx.cs.long) else 2


def code_before(memory: GuestMemory, ctx: InitialVpContext, n: int) -> bytes:
    """The (up to) `n` bytes of code before RIP, through the VP's paging (b"" where unmapped)."""
    n = min(ctx.rip, n)
    la = ctx.rip - n + (0 if ctx.cr0 & 1 else ctx.cs.base)
    return read_virtual(memory, la, n, ctx.cr0, ctx.cr3, ctx.cr4, ctx.efer) or b""


def retired_store_start(
    vcpu: Vcpu, memory: GuestMemory, ctx: InitialVpContext, size: int, value: int
) -> int | None:
    """Where the MOV store KVM retired before its MMIO write exit began (RIP past it), or None."""
    long_mode = bool(ctx.efer & EFER_LMA) and ctx.cs.long
    return store_instruction_start(
        code_before(memory, ctx, 15), ctx.rip, size, value, long_mode, default_operand_size(ctx),
        lambda reg: vcpu.get(GPRS_BY_NUMBER[reg]),
    )  # fmt: skip
