"""Where an intercepted instruction began, when the backend has already stepped over it.

A child's intercept message carries the RIP of the instruction (TLFS PDF §13.2), and a parent that
maps a page and leaves RIP there re-executes it. KVM retires an OUT and an MMIO write before it
exits to userspace (RIP past the instruction, host-kvm.md "Host kernel 6.18.44") and does not say
how long the instruction was, so hv1/machine/child.py finds the start from the bytes before RIP:
the candidate must end exactly at RIP and agree with what the exit says (port, access size, the
value written, for string and stack stores the address). The forms are the ones compilers emit for
port and MMIO writes, and the string and stack stores (STOS, MOVS, PUSH), whose moved registers
are put back too (`retired_store`; a REP STOS/MOVS element exits with RIP on the instruction and
is found there); anything else is reported at RIP as it is (the message's InstructionLength is 0
for memory intercepts anyway: "the recipient ... must fetch and decode the instruction"). The root
machine uses the same to raise the #GP of a store to its read-only hypercall page on the store
itself (a fault's RIP, registers as before it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hv1.machine.paging import read_virtual, translate

if TYPE_CHECKING:
    from hv1.backends.base import Vcpu
    from hv1.hv.hypercalls.vp_calls import InitialVpContext
    from hv1.hv.interfaces import GuestMemory

EFER_LMA = 1 << 10
# The GPRs by their number in an instruction encoding (ModRM.reg with REX.R; Intel SDM Vol. 2 §2.1.5).
GPRS_BY_NUMBER = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
                  "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")  # fmt: skip
LEGACY_PREFIXES = frozenset({0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x66, 0x67, 0xF0, 0xF2, 0xF3})
SEGMENT_OVERRIDES = {0x26: "es", 0x2E: "cs", 0x36: "ss", 0x3E: "ds", 0x64: "fs", 0x65: "gs"}


@dataclass(frozen=True)
class Prefixes:
    """What the prefixes of one instruction say (SDM Vol. 2 §2.1.1, §2.2.1): `end` is the opcode's index."""

    end: int
    opsize66: bool
    addr67: bool
    rep: bool  # F2 or F3
    seg: str | None  # a segment override
    rex: int  # 0 when none (64-bit mode only)


_NO_LOCK = LEGACY_PREFIXES - {0xF0}
_NO_LOCK_OR_REP = LEGACY_PREFIXES - {0xF0, 0xF2, 0xF3}


def scan_prefixes(code: bytes, long_mode: bool, allowed: frozenset[int] = LEGACY_PREFIXES) -> Prefixes:
    """The legacy prefixes of `code` that are in `allowed`, then a REX byte in 64-bit mode."""
    i, opsize66, addr67, rep, seg, rex = 0, False, False, False, None, 0
    while i < len(code) and code[i] in allowed:
        opsize66 |= code[i] == 0x66
        addr67 |= code[i] == 0x67
        rep |= code[i] in (0xF2, 0xF3)
        seg = SEGMENT_OVERRIDES.get(code[i], seg)
        i += 1
    if long_mode and i < len(code) and 0x40 <= code[i] <= 0x4F:
        rex = code[i]
        i += 1
    return Prefixes(i, opsize66, addr67, rep, seg, rex)


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


def _mov_store_matches(
    code: bytes, size: int, value: int, long_mode: bool, default_size: int, gpr: Callable[[int], int]
) -> bool:
    """Whether `code` is exactly one MOV r/m, r (88/89), MOV r/m, imm (C6/C7 /0) or MOV moffs,
    AL/eAX (A2/A3) with its prefixes that writes `size` bytes of `value`."""
    n = len(code)
    mask = (1 << (8 * size)) - 1
    p = scan_prefixes(code, long_mode)
    i, opsize66, addr67, rex = p.end, p.opsize66, p.addr67, p.rex
    if i >= n:
        return False
    op = code[i]
    i += 1
    width = 8 if rex & 8 else (6 - default_size if opsize66 else default_size)
    legacy_address_size = 6 - default_size if addr67 else default_size
    address_size = (4 if addr67 else 8) if long_mode else legacy_address_size
    if op in (0x88, 0x89, 0xC6, 0xC7):
        m = _modrm_length(code, i, address_size)
        if m is None or (op in (0xC6, 0xC7) and (code[i] >> 3) & 7):
            return False
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
            return False
        if imm_len:
            return int.from_bytes(code[i:n], "little", signed=True) & mask == value & mask
        high_byte = width == 1 and not rex and 4 <= reg <= 7  # AH, CH, DH, BH
        src = gpr(reg - 4) >> 8 if high_byte else gpr(reg)
        return src & mask == value & mask
    if op in (0xA2, 0xA3):
        width = 1 if op == 0xA2 else width
        return i + address_size == n and width == size and gpr(0) & mask == value & mask
    return False


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
    for n in range(1, len(before) + 1):
        if _mov_store_matches(before[len(before) - n :], size, value, long_mode, default_size, gpr):
            return rip - n
    return None


RFLAGS_DF = 1 << 10
# Register numbers (Intel SDM Vol. 2 §2.1.5) used by the string and stack forms.
RAX, RCX, RSP, RSI, RDI = 0, 1, 4, 6, 7


@dataclass(frozen=True)
class StoreView:
    """What a retired store is checked against besides its bytes: the vCPU's state after it."""

    long_mode: bool
    default_size: int  # the operand (and address) size without 66/67: 2 or 4 (CS.D)
    stack_size: int  # the stack pointer's width: 8 in 64-bit mode, else 4 or 2 (SS.B)
    rflags: int
    gpr: Callable[[int], int]  # a GPR by its number, 0 = RAX ... 15 = R15
    gpa_of: Callable[[str, int], int | None]  # (segment, offset) -> GPA, None if unmapped
    read: Callable[[str, int, int], int | None]  # (segment, offset, size) -> the value there


@dataclass(frozen=True)
class RetiredStore:
    """The start of a store KVM retired (RIP goes there), and the other registers (name, value)
    that put the vCPU back to before it: the store "not happened", so a parent that maps the page
    and leaves RIP re-executes it (TLFS PDF §13.2)."""

    start: int
    rewind: tuple[tuple[str, int], ...] = ()


def _with_low(old: int, new: int, width: int) -> int:
    """`old` with its low `width` bytes replaced by `new` (a 16-bit DI/SI/SP/CX update keeps the
    upper bits; a 32-bit one zero-extends, SDM Vol. 1 §3.4.1.1; 64 bits replace all)."""
    if width == 2:
        return (old & ~0xFFFF) | (new & 0xFFFF)
    return new & ((1 << (8 * width)) - 1)


def _string_store(code: bytes, view: StoreView) -> tuple[int, int, bool, str, int] | None:
    """(opcode, element width, REP, source segment, address size) if `code` is exactly one STOS
    (AA/AB) or MOVS (A4/A5) with prefixes (66, 67, F2/F3, a segment override, REX); else None."""
    p = scan_prefixes(code, view.long_mode, _NO_LOCK)
    # F2 and F3 both repeat STOS/MOVS: neither checks ZF (SDM REP).
    i, opsize66, addr67, rep, seg, rex = p.end, p.opsize66, p.addr67, p.rep, p.seg or "ds", p.rex
    if i != len(code) - 1 or code[i] not in (0xA4, 0xA5, 0xAA, 0xAB):
        return None
    op = code[i]
    if op in (0xA4, 0xAA):
        width = 1
    elif rex & 8:
        width = 8
    else:
        width = 6 - view.default_size if opsize66 else view.default_size
    if view.long_mode:
        address_size = 4 if addr67 else 8
    else:
        address_size = 6 - view.default_size if addr67 else view.default_size
    return op, width, rep, seg, address_size


def _string_rewind(
    code: bytes, addr: int, size: int, value: int, view: StoreView, rcx_done: bool
) -> tuple[tuple[str, int], ...] | None:
    """The rewind of one element of the STOS/MOVS `code` whose store of `size` bytes of `value` to
    `addr` has happened, RDI (and RSI) moved past it (SDM STOS/MOVS: by the element size, down
    when RFLAGS.DF=1; with REP, RCX one less). None if the store is not that element's.
    `rcx_done`: the instruction must have ended (RIP past it), so a REP's count is 0 now."""
    decoded = _string_store(code, view)
    if decoded is None:
        return None
    op, width, rep, seg, asize = decoded
    if width != size:
        return None
    amask = (1 << (8 * asize)) - 1
    step = -width if view.rflags & RFLAGS_DF else width
    rdi = view.gpr(RDI)
    dest = (rdi - step) & amask
    if view.gpa_of("es", dest) != addr:  # the destination is ES:rDI, no override (SDM STOS)
        return None
    mask = (1 << (8 * size)) - 1
    rewind = [("rdi", _with_low(rdi, dest, asize))]
    if op in (0xAA, 0xAB):
        if view.gpr(RAX) & mask != value & mask:
            return None
    else:
        rsi = view.gpr(RSI)
        src = (rsi - step) & amask
        if view.read(seg, src, width) != value & mask:
            return None
        rewind.append(("rsi", _with_low(rsi, src, asize)))
    if rep:
        rcx = view.gpr(RCX)
        if rcx_done and rcx & amask:
            return None
        rewind.append(("rcx", _with_low(rcx, (rcx & amask) + 1, asize)))
    elif not rcx_done:
        return None  # only a REP form stays on its RIP after a store
    return tuple(rewind)


def _push_rewind(
    code: bytes, addr: int, size: int, value: int, view: StoreView
) -> tuple[tuple[str, int], ...] | None:
    """The rewind (RSP back up) of the PUSH `code` (50+r, 6A ib, 68 iw/id, FF /6; SDM PUSH) whose
    store of `size` bytes of `value` to `addr`, at SS:rSP, has happened; None if it is not one."""
    n = len(code)
    p = scan_prefixes(code, view.long_mode, _NO_LOCK_OR_REP)
    i, opsize66, rex = p.end, p.opsize66, p.rex
    if i >= n:
        return None
    op = code[i]
    i += 1
    # 64-bit mode: 8 bytes, 2 with 66 unless REX.W (which wins, SDM Vol. 2 §2.2.1.2); else
    # CS.D's size, 66 switches it.
    if view.long_mode:
        width = 2 if opsize66 and not rex & 8 else 8
    else:
        width = 6 - view.default_size if opsize66 else view.default_size
    if width != size:
        return None
    mask = (1 << (8 * size)) - 1
    rsp = view.gpr(RSP)
    smask = (1 << (8 * view.stack_size)) - 1

    def pushed_register(reg: int) -> int:
        # PUSH rSP pushes the value before the push (SDM PUSH: "the value of the SP register as it
        # existed before the instruction was executed").
        return _with_low(rsp, (rsp & smask) + width, view.stack_size) if reg == RSP else view.gpr(reg)

    pushed: int | None
    if 0x50 <= op <= 0x57 and i == n:
        pushed = pushed_register((op - 0x50) | (8 if rex & 1 else 0))
    elif (op == 0x6A and i + 1 == n) or (op == 0x68 and i + (2 if width == 2 else 4) == n):
        pushed = int.from_bytes(code[i:], "little", signed=True)
    elif op == 0xFF and i < n and (code[i] >> 3) & 7 == 6:
        if code[i] >> 6 == 3:
            if i + 1 != n:
                return None
            pushed = pushed_register((code[i] & 7) | (8 if rex & 1 else 0))
        else:
            asize = 8 if view.long_mode else view.default_size
            if 0x67 in code[:i]:
                asize = 4 if view.long_mode else 6 - view.default_size
            m = _modrm_length(code, i, asize)
            if m is None or i + m != n:
                return None
            pushed = None  # from memory: its operand's address is not decoded; the address check stays
    else:
        return None
    if pushed is not None and pushed & mask != value & mask:
        return None
    if view.gpa_of("ss", rsp & smask) != addr:
        return None
    return (("rsp", _with_low(rsp, (rsp & smask) + width, view.stack_size)),)


def retired_store(
    before: bytes, at: bytes, rip: int, addr: int, size: int, value: int, view: StoreView
) -> RetiredStore | None:
    """Where the store of `size` bytes of `value` to GPA `addr` that KVM retired before its MMIO
    write exit began, and what puts the vCPU back to before it. From the (up to 15) bytes `before`
    RIP, the shortest MOV, STOS, MOVS or PUSH ending at RIP that agrees with the exit; and from
    the bytes `at` RIP, a REP STOS/MOVS: KVM's emulator retires one element of a REP string per
    MMIO exit and leaves RIP on the instruction, RCX and RDI (RSI) moved past that element, even
    for the last element (RCX 0; measured on this host, docs/partitions.md). None when no form
    fits, or when both readings do (a plain store just before a REP STOS to the same place): a
    wrong rewind would be worse than none."""
    found: list[RetiredStore] = []
    for n in range(1, len(at) + 1):
        if _string_store(at[:n], view) is not None:
            rewind = _string_rewind(at[:n], addr, size, value, view, rcx_done=False)
            if rewind is not None:
                found.append(RetiredStore(rip, rewind))
            break
    for n in range(1, len(before) + 1):
        code = before[len(before) - n :]
        if _mov_store_matches(code, size, value, view.long_mode, view.default_size, view.gpr):
            found.append(RetiredStore(rip - n))
            break
        rewind = _string_rewind(code, addr, size, value, view, rcx_done=True)
        if rewind is not None and not _prefixes_agree(before, n, rewind, addr, size, value, view):
            return None
        if rewind is None:
            rewind = _push_rewind(code, addr, size, value, view)
        if rewind is not None:
            found.append(RetiredStore(rip - n, rewind))
            break
    return found[0] if len(found) == 1 else None


def _prefixes_agree(
    before: bytes,
    n: int,
    rewind: tuple[tuple[str, int], ...],
    addr: int,
    size: int,
    value: int,
    view: StoreView,
) -> bool:
    """Whether the bytes before the STOS/MOVS found in the last `n` bytes, read as more prefixes of
    it, give the same rewind wherever they also fit the exit. A prefix byte may end the previous
    instruction instead; where it is harmless both readings re-execute alike (the shortest is
    taken), but a 67 that moves the address (RDI wrapping at 64 KiB or 4 GiB) makes the two
    rewinds differ, and then neither is safe. A REP's RCX 0 -> 1 is no difference: re-executed
    once, it ends at 0 as the plain form leaves it."""
    mine = {k: v for k, v in rewind if k != "rcx"}
    for m in range(n + 1, len(before) + 1):
        code = before[len(before) - m :]
        if _string_store(code, view) is None:
            return True
        longer = _string_rewind(code, addr, size, value, view, rcx_done=True)
        if longer is not None and {k: v for k, v in longer if k != "rcx"} != mine:
            return False
    return True


def default_operand_size(ctx: InitialVpContext) -> int:
    """2 in 16-bit code (real mode, a 16-bit CS), else 4 (the operand size without a 66 prefix)."""
    return 4 if ctx.cr0 & 1 and (ctx.cs.db or ctx.cs.long) else 2


def code_before(memory: GuestMemory, ctx: InitialVpContext, n: int) -> bytes:
    """The (up to) `n` bytes of code before RIP, through the VP's paging (b"" where unmapped)."""
    n = min(ctx.rip, n)
    la = ctx.rip - n + (0 if ctx.cr0 & 1 else ctx.cs.base)
    return read_virtual(memory, la, n, ctx.cr0, ctx.cr3, ctx.cr4, ctx.efer) or b""


def _linear(ctx: InitialVpContext, long_mode: bool, seg: str, offset: int) -> int:
    """The linear address of seg:offset (SDM Vol. 3 §3.4: in 64-bit mode only FS and GS have a
    base; elsewhere the base is added and the address wraps at 4 GiB)."""
    base = int(getattr(ctx, seg).base)
    if long_mode:
        return ((base if seg in ("fs", "gs") else 0) + offset) & 0xFFFF_FFFF_FFFF_FFFF
    return (base + offset) & 0xFFFF_FFFF


def code_at(memory: GuestMemory, ctx: InitialVpContext, n: int) -> bytes:
    """The (up to) `n` bytes of code at RIP, through the VP's paging (shorter at a page it cannot read)."""
    la = ctx.rip + (0 if ctx.cr0 & 1 else ctx.cs.base)
    for m in (n, 0x1000 - (la & 0xFFF)):
        data = read_virtual(memory, la, min(m, n), ctx.cr0, ctx.cr3, ctx.cr4, ctx.efer)
        if data is not None:
            return data
    return b""


def retired_store_start(
    vcpu: Vcpu, memory: GuestMemory, ctx: InitialVpContext, addr: int, size: int, value: int
) -> RetiredStore | None:
    """Where the store to GPA `addr` KVM retired before its MMIO write exit began (a MOV, STOS,
    MOVS or PUSH, RIP past it; or a REP STOS/MOVS, RIP on it) and its rewind, or None."""
    long_mode = bool(ctx.efer & EFER_LMA) and ctx.cs.long

    def gpa_of(seg: str, offset: int) -> int | None:
        return translate(memory, _linear(ctx, long_mode, seg, offset), ctx.cr0, ctx.cr3, ctx.cr4, ctx.efer)

    def read(seg: str, offset: int, n: int) -> int | None:
        la = _linear(ctx, long_mode, seg, offset)
        data = read_virtual(memory, la, n, ctx.cr0, ctx.cr3, ctx.cr4, ctx.efer)
        return None if data is None else int.from_bytes(data, "little")

    view = StoreView(
        long_mode=long_mode, default_size=default_operand_size(ctx),
        stack_size=8 if long_mode else 4 if ctx.ss.db and ctx.cr0 & 1 else 2, rflags=ctx.rflags,
        gpr=lambda reg: vcpu.get(GPRS_BY_NUMBER[reg]), gpa_of=gpa_of, read=read,
    )  # fmt: skip
    return retired_store(
        code_before(memory, ctx, 15), code_at(memory, ctx, 15), ctx.rip, addr, size, value, view
    )
