"""The x86/x64 hypercall register ABI (hypercall-interface.md "Hypercall Inputs", "Hypercall
Register Conventions (x86/x64)", "XMM Fast Hypercall Input/Output", "Hypercall Outputs",
"Volatile Registers").

The caller's convention is chosen by EFER.LMA && CS.L (`CpuMode.LONG`): x64 uses RCX (control),
RDX (input GPA / fast bytes 0-7), R8 (output GPA / fast bytes 8-15) and returns the result in RAX;
a 32-bit caller uses EDX:EAX, EBX:ECX, EDI:ESI and gets the result in EDX:EAX. XMM0-XMM5 carry
fast-block bytes 16-111 in both modes.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from hv1.hv.interfaces import VpRegisters
from hv1.tlfs.hypercall_interface import (
    CONTROL_CODE_MASK,
    CONTROL_FAST,
    CONTROL_NESTED,
    CONTROL_REP_COUNT_MASK,
    CONTROL_REP_COUNT_SHIFT,
    CONTROL_REP_START_MASK,
    CONTROL_REP_START_SHIFT,
    CONTROL_RSVDZ_MASK,
    CONTROL_VAR_HEADER_MASK,
    CONTROL_VAR_HEADER_SHIFT,
    FAST_CHUNK_SIZE,
    RESULT_REPS_COMPLETED_MASK,
    RESULT_REPS_COMPLETED_SHIFT,
    RESULT_STATUS_MASK,
)

MASK32 = 0xFFFF_FFFF
MASK64 = (1 << 64) - 1
# One 16-byte chunk as two little-endian qwords: struct is several times cheaper than int.to_bytes /
# int.from_bytes in CPython 3.11 (bench/profile.py), and chunks are converted on every fast call.
_QQ = struct.Struct("<QQ")
_Q = struct.Struct("<Q")


# Guests issue the same few control words over and over; a decoded Control is immutable, so the
# decode (~0.8 µs in CPython) is done once per distinct word.
_PARSED_MAX = 1024


class Control(NamedTuple):
    """A decoded hypercall input value."""

    raw: int
    code: int
    fast: bool
    var_header_qwords: int
    nested: bool
    rep_count: int
    rep_start: int
    reserved: int  # the RsvdZ bits that are set (30:27, 47:44, 63:60)

    @classmethod
    def parse(cls, raw: int) -> Control:
        raw &= MASK64
        parsed = _PARSED.get(raw)
        if parsed is not None:
            return parsed
        if len(_PARSED) >= _PARSED_MAX:
            _PARSED.clear()  # a guest cycling through random control words must not grow it
        parsed = _PARSED[raw] = cls._decode(raw)
        return parsed

    @classmethod
    def _decode(cls, raw: int) -> Control:
        return cls(
            raw,
            raw & CONTROL_CODE_MASK,
            bool(raw & CONTROL_FAST),
            (raw >> CONTROL_VAR_HEADER_SHIFT) & CONTROL_VAR_HEADER_MASK,
            bool(raw & CONTROL_NESTED),
            (raw >> CONTROL_REP_COUNT_SHIFT) & CONTROL_REP_COUNT_MASK,
            (raw >> CONTROL_REP_START_SHIFT) & CONTROL_REP_START_MASK,
            raw & CONTROL_RSVDZ_MASK,
        )

    def with_rep_start(self, rep_start: int) -> int:
        """The raw control word with a new rep start index (continuation)."""
        mask = CONTROL_REP_START_MASK << CONTROL_REP_START_SHIFT
        return (self.raw & ~mask) | ((rep_start & CONTROL_REP_START_MASK) << CONTROL_REP_START_SHIFT)


_PARSED: dict[int, Control] = {}


def build_control(
    code: int, *, fast: bool = False, var_header_qwords: int = 0, rep_count: int = 0, rep_start: int = 0
) -> int:
    """A hypercall input value (for tests and tools)."""
    return (
        (code & CONTROL_CODE_MASK)
        | (CONTROL_FAST if fast else 0)
        | ((var_header_qwords & CONTROL_VAR_HEADER_MASK) << CONTROL_VAR_HEADER_SHIFT)
        | ((rep_count & CONTROL_REP_COUNT_MASK) << CONTROL_REP_COUNT_SHIFT)
        | ((rep_start & CONTROL_REP_START_MASK) << CONTROL_REP_START_SHIFT)
    )


def result_value(status: int, reps_completed: int = 0) -> int:
    return (status & RESULT_STATUS_MASK) | (
        (reps_completed & RESULT_REPS_COMPLETED_MASK) << RESULT_REPS_COMPLETED_SHIFT
    )


# The three 64-bit values of each convention: (x64 register, (x86 high, x86 low)).
_CONTROL = ("rcx", ("rdx", "rax"))
_PARAM1 = ("rdx", ("rbx", "rcx"))  # input GPA / fast bytes 0-7
_PARAM2 = ("r8", ("rdi", "rsi"))  # output GPA / fast bytes 8-15


def _get(regs: VpRegisters, long_mode: bool, which: tuple[str, tuple[str, str]]) -> int:
    if long_mode:
        return regs.get(which[0]) & MASK64
    hi, lo = which[1]
    return ((regs.get(hi) & MASK32) << 32) | (regs.get(lo) & MASK32)


def _set(regs: VpRegisters, long_mode: bool, which: tuple[str, tuple[str, str]], value: int) -> None:
    if long_mode:
        regs.set(which[0], value & MASK64)
    else:
        hi, lo = which[1]
        regs.set(hi, (value >> 32) & MASK32)
        regs.set(lo, value & MASK32)


def write_control(regs: VpRegisters, long_mode: bool, value: int) -> None:
    """Rep continuation: "Rep hypercalls will modify RCX (x64) and EDX:EAX (x86) with the new rep
    start index"."""
    _set(regs, long_mode, _CONTROL, value)


def read_inputs(regs: VpRegisters, long_mode: bool) -> tuple[int, int, int]:
    """(control, input GPA or fast bytes 0-7, output GPA or fast bytes 8-15)."""
    if long_mode:
        return regs.get("rcx") & MASK64, regs.get("rdx") & MASK64, regs.get("r8") & MASK64
    return _get(regs, False, _CONTROL), _get(regs, False, _PARAM1), _get(regs, False, _PARAM2)


def write_result(regs: VpRegisters, long_mode: bool, value: int) -> None:
    """RAX (x64) or EDX:EAX (x86) = the hypercall result value."""
    if long_mode:
        regs.set("rax", value & MASK64)
    else:
        regs.set("rdx", (value >> 32) & MASK32)
        regs.set("rax", value & MASK32)


def chunks(nbytes: int) -> int:
    """16-byte register chunks ({RDX:R8}, XMM0, ...) needed for `nbytes`."""
    return (nbytes + FAST_CHUNK_SIZE - 1) // FAST_CHUNK_SIZE


def read_fast_block(regs: VpRegisters, p1: int, p2: int, nbytes: int) -> bytes:
    """The first `nbytes` of the register parameter block: the GPR pair (`p1`, `p2` as read by
    `read_inputs`), then XMM0..5. XMM registers are fetched only when needed (they may cost an
    extra ioctl)."""
    n = chunks(nbytes)
    if n <= 1:
        return _QQ.pack(p1, p2)
    return _QQ.pack(p1, p2) + b"".join(_xmm_bytes(regs.get_xmm(i)) for i in range(n - 1))


def _xmm_bytes(value: int) -> bytes:
    return _QQ.pack(value & MASK64, (value >> 64) & MASK64)


def read_fast_chunks(regs: VpRegisters, first: int, count: int) -> bytearray:
    """Chunks [first, first+count) of the block as they are now (x64; chunk 0 = RDX:R8)."""
    out = bytearray()
    for c in range(first, first + count):
        if c == 0:
            out += _QQ.pack(regs.get("rdx") & MASK64, regs.get("r8") & MASK64)
        else:
            out += _xmm_bytes(regs.get_xmm(c - 1))
    return out


def write_fast_chunks(regs: VpRegisters, first: int, data: bytes | bytearray) -> None:
    """Write `data` into whole chunks starting at `first` (x64 fast output). A last partial chunk is
    written zero-padded ("If it overwrites padding regions, it will write zeros", "XMM Fast Hypercall
    Input/Output")."""
    n = len(data)
    for off in range(0, n, FAST_CHUNK_SIZE):
        left = n - off
        if left >= FAST_CHUNK_SIZE:
            lo, hi = _QQ.unpack_from(data, off)
        elif left == 8:
            lo, hi = _Q.unpack_from(data, off)[0], 0
        else:
            lo, hi = _QQ.unpack(bytes(data[off:]).ljust(FAST_CHUNK_SIZE, b"\0"))
        c = first + off // FAST_CHUNK_SIZE
        if c == 0:
            regs.set("rdx", lo)
            regs.set("r8", hi)
        else:
            regs.set_xmm(c - 1, lo | hi << 64)
