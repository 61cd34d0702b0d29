"""The start and the rewind of a STOS, MOVS or PUSH that KVM retired before its MMIO write exit
(hv1/machine/instruction_start.py `retired_store`; issue 10, docs/partitions.md).

A small model of the instructions (Intel SDM Vol. 2: STOS, MOVS, PUSH) runs an encoded instruction
on random registers, gives the finder what KVM leaves (RIP past it, or on it for a REP element;
registers moved; the store's GPA and value), and checks the start found and that the rewind puts
every register back to before the instruction.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from hv1.backends.memory import GuestRam
from hv1.hv.hypercalls.vp_calls import InitialVpContext, SegmentRegister
from hv1.machine.instruction_start import (
    GPRS_BY_NUMBER,
    RFLAGS_DF,
    SEGMENT_OVERRIDES,
    RetiredStore,
    StoreView,
    retired_store,
)

pytestmark = pytest.mark.timeout(60)

# (long mode, default operand/address size, stack size): 64-bit, 32-bit flat, 16-bit real mode.
MODES = {"long": (True, 4, 8), "prot32": (False, 4, 4), "real16": (False, 2, 2)}
SEG_BASES = {"es": 0x10000, "cs": 0x20000, "ss": 0x30000, "ds": 0x40000, "fs": 0x50000, "gs": 0x60000}
RIP = 0x4000


def memory_value(la: int, n: int) -> int:
    """What the model's memory holds at linear address `la` (a fixed pseudo-random function)."""
    return ((la * 0x9E37_79B9_7F4A_7C15) >> 11) & ((1 << (8 * n)) - 1)


@dataclass
class Run:
    """An instruction run by the model: its bytes, the store it made, the registers before/after."""

    code: bytes
    addr: int
    size: int
    value: int
    before: dict[str, int]
    after: dict[str, int]
    rep: bool = False


def linear(mode: str, seg: str, offset: int) -> int:
    long_mode = MODES[mode][0]
    if long_mode:
        return (SEG_BASES[seg] if seg in ("fs", "gs") else 0) + offset
    return (SEG_BASES[seg] + offset) & 0xFFFF_FFFF


def view_for(mode: str, regs: dict[str, int], df: bool) -> StoreView:
    long_mode, default, stack = MODES[mode]
    return StoreView(
        long_mode=long_mode, default_size=default, stack_size=stack, rflags=RFLAGS_DF if df else 0,
        gpr=lambda r: regs[GPRS_BY_NUMBER[r]],
        gpa_of=lambda seg, off: linear(mode, seg, off),
        read=lambda seg, off, n: memory_value(linear(mode, seg, off), n),
    )  # fmt: skip


def with_low(old: int, new: int, width: int) -> int:
    if width == 2:
        return (old & ~0xFFFF) | (new & 0xFFFF)
    return new & ((1 << (8 * width)) - 1)


def run_string(
    mode: str, op: int, p66: bool, p67: bool, seg: int | None, rex: int | None, rep: bool,
    regs: dict[str, int], df: bool,
) -> Run:  # fmt: skip
    long_mode, default, _ = MODES[mode]
    code = bytes([0x66] if p66 else []) + bytes([0x67] if p67 else []) + bytes([seg] if seg else [])
    code += bytes([0xF3] if rep else []) + bytes([rex] if rex is not None else []) + bytes([op])
    if op in (0xAA, 0xA4):
        width = 1
    elif rex is not None and rex & 8:
        width = 8
    else:
        width = 6 - default if p66 else default
    asize = (4 if p67 else 8) if long_mode else (6 - default if p67 else default)
    amask = (1 << (8 * asize)) - 1
    step = -width if df else width
    after = dict(regs)
    dest = regs["rdi"] & amask
    after["rdi"] = with_low(regs["rdi"], dest + step, asize)
    if op in (0xAA, 0xAB):
        value = regs["rax"] & ((1 << (8 * width)) - 1)
    else:
        src_seg = SEGMENT_OVERRIDES.get(seg or 0x3E, "ds")
        value = memory_value(linear(mode, src_seg, regs["rsi"] & amask), width)
        after["rsi"] = with_low(regs["rsi"], (regs["rsi"] & amask) + step, asize)
    if rep:
        after["rcx"] = with_low(regs["rcx"], (regs["rcx"] & amask) - 1, asize)
    before = dict(regs)
    for name in ("rdi", "rsi", "rcx"):  # what a rewind can give back: the address-size part
        if after[name] != regs[name]:
            before[name] = with_low(after[name], regs[name] & amask, asize)
    return Run(code, linear(mode, "es", dest), width, value, before, after, rep)


def run_push(mode: str, form: str, p66: bool, rex: int | None, n: int, imm: int, regs: dict[str, int]) -> Run:
    long_mode, default, stack = MODES[mode]
    rex_w = rex is not None and bool(rex & 8)
    width = (2 if p66 and not rex_w else 8) if long_mode else (6 - default if p66 else default)
    mask = (1 << (8 * width)) - 1
    smask = (1 << (8 * stack)) - 1
    prefix = bytes([0x66] if p66 else []) + bytes([rex] if rex is not None else [])
    reg = (n & 7) | (8 if rex is not None and rex & 1 else 0)
    if form == "reg":
        code = prefix + bytes([0x50 + (n & 7)])
        value = regs[GPRS_BY_NUMBER[reg]]  # PUSH rSP: its value before the push
    elif form == "modrm-reg":
        code = prefix + bytes([0xFF, 0xF0 | (n & 7)])
        value = regs[GPRS_BY_NUMBER[reg]]
    elif form == "imm8":
        code = prefix + bytes([0x6A, imm & 0xFF])
        value = imm & 0xFF
        value = value - 0x100 if value & 0x80 else value
    elif form == "imm":
        isize = 2 if width == 2 else 4
        code = prefix + bytes([0x68]) + (imm & ((1 << (8 * isize)) - 1)).to_bytes(isize, "little")
        value = int.from_bytes(code[-isize:], "little", signed=True)
    else:  # push [rbx+disp8]: the value is the memory's (the finder checks the address only)
        code = prefix + bytes([0xFF, 0x73, imm & 0xFF])
        value = memory_value(imm, width)
    after = dict(regs)
    new_sp = ((regs["rsp"] & smask) - width) & smask
    after["rsp"] = with_low(regs["rsp"], new_sp, stack)
    return Run(code, linear(mode, "ss", new_sp), width, value & mask, dict(regs), after)


def check(found: RetiredStore | None, run: Run, start: int) -> None:
    """The instruction's start, or (the shortest match) a later one where the bytes from there are
    a store the exit agrees with just as well, e.g. `67 aa` with RDI below 4 GiB read as `aa`: it
    re-executes the same. Either way the rewind gives back every register."""
    assert found is not None, run
    assert start <= found.start < start + len(run.code) or found.start == start, (found, run)
    rewound = dict(run.after) | dict(found.rewind)
    assert rewound == run.before, (found, run)


MODE = st.sampled_from(list(MODES))
REG_VALUES = st.lists(st.integers(0, 2**64 - 1), min_size=16, max_size=16, unique=True)


def registers(mode: str, values: list[int]) -> dict[str, int]:
    long_mode = MODES[mode][0]
    return {
        name: (v if long_mode else v & 0xFFFF_FFFF) if i < (16 if long_mode else 8) else 0
        for i, (name, v) in enumerate(zip(GPRS_BY_NUMBER, values, strict=True))
    }


@given(
    MODE, st.sampled_from([0xAA, 0xAB, 0xA4, 0xA5]), st.booleans(), st.booleans(),
    st.sampled_from([None, *SEGMENT_OVERRIDES]), st.sampled_from([None, 0x40, 0x41, 0x48, 0x4F]),
    st.booleans(), REG_VALUES, st.binary(max_size=15),
)  # fmt: skip
def test_a_retired_stos_or_movs_is_found_and_rewound(
    mode: str, op: int, p66: bool, p67: bool, seg: int | None, rex: int | None, df: bool,
    values: list[int], junk: bytes,
) -> None:  # fmt: skip
    """STOS/MOVS without REP: KVM leaves RIP past it, RDI (RSI) moved one element (back when
    DF=1). Found from the bytes before RIP; whatever came before the instruction does not matter."""
    if not MODES[mode][0]:
        rex = None
    regs = registers(mode, values)
    run = run_string(mode, op, p66, p67, seg, rex, False, regs, df)
    before = (junk + run.code)[-15:]
    assume(len(run.code) <= 15)
    view = view_for(mode, run.after, df)
    found = retired_store(before, b"\x90" * 15, RIP, run.addr, run.size, run.value, view)
    if found is None:
        # Only a 67 can leave two readings with different rewinds (`67 aa` and `aa` with RDI
        # wrapping differently); the finder then gives none rather than a wrong one.
        assert p67, run
        return
    check(found, run, RIP - len(run.code))


@given(
    MODE, st.sampled_from([0xAA, 0xAB, 0xA4, 0xA5]), st.booleans(), st.booleans(),
    st.sampled_from([None, *SEGMENT_OVERRIDES]), st.sampled_from([None, 0x40, 0x48]),
    st.booleans(), REG_VALUES, st.integers(1, 2**64 - 1),
)  # fmt: skip
def test_a_rep_string_element_is_found_at_rip_and_rewound(
    mode: str, op: int, p66: bool, p67: bool, seg: int | None, rex: int | None, df: bool,
    values: list[int], count: int,
) -> None:  # fmt: skip
    """REP STOS/MOVS: KVM retires one element per MMIO exit and leaves RIP on the instruction, RCX
    one less, even for the last element (RCX 0; measured, docs/partitions.md). The rewind gives
    the element back: RDI (RSI) back, RCX + 1."""
    if not MODES[mode][0]:
        rex = None
    regs = registers(mode, values)
    asize = (4 if p67 else 8) if MODES[mode][0] else (6 - MODES[mode][1] if p67 else MODES[mode][1])
    regs["rcx"] = with_low(regs["rcx"], max(1, count & ((1 << (8 * asize)) - 1)), asize)
    run = run_string(mode, op, p66, p67, seg, rex, True, regs, df)
    view = view_for(mode, run.after, df)
    found = retired_store(b"\x90" * 15, run.code + b"\x90" * 8, RIP, run.addr, run.size, run.value, view)
    check(found, run, RIP)


@given(
    MODE, st.sampled_from(["reg", "modrm-reg", "imm8", "imm", "mem"]), st.booleans(),
    st.sampled_from([None, 0x40, 0x41, 0x48, 0x49]), st.integers(0, 7), st.integers(0, 2**32 - 1),
    REG_VALUES, st.binary(max_size=12),
)  # fmt: skip
def test_a_retired_push_is_found_and_rsp_rewound(
    mode: str, form: str, p66: bool, rex: int | None, n: int, imm: int, values: list[int], junk: bytes
) -> None:
    """PUSH r, PUSH r/m (FF /6), PUSH imm8/imm: KVM leaves RIP past it and RSP moved down by the
    operand size (8 in 64-bit mode, 2 with 66); the rewind moves RSP back up."""
    if not MODES[mode][0]:
        rex = None
    regs = registers(mode, values)
    run = run_push(mode, form, p66, rex, n, imm, regs)
    view = view_for(mode, run.after, False)
    before = (junk + run.code)[-15:]
    found = retired_store(before, b"\x90" * 15, RIP, run.addr, run.size, run.value, view)
    # A shorter suffix of the instruction that is itself a store agreeing with the exit (e.g. the
    # immediate of `push imm` ending in a PUSH r that pushes the same value) is a coincidence the
    # bytes cannot rule out; the model's random registers make it one the search does not meet.
    check(found, run, RIP - len(run.code))


def real_mode_view(regs: dict[str, int], df: bool = False) -> StoreView:
    return view_for("real16", regs, df)


REAL = {name: 0 for name in GPRS_BY_NUMBER}


def test_the_measured_rep_stosw_elements_rewind_to_before_them() -> None:
    """The two exits measured on this host's KVM (docs/partitions.md): `rep stosw` (f3 ab) at
    0xa from DI 0x7ff8, CX 8, into an unmapped page at 0x8000 exits with RIP 0xa, CX 3, DI
    0x8002; from DI 0x8000, CX 1 (its last element) with RIP 0xa, CX 0, DI 0x8002."""
    for cx_after in (3, 0):
        regs = REAL | {"rax": 0x1234, "rcx": cx_after, "rdi": 0x8002, "rsp": 0x7000}
        view = view_for("real16", regs, False)
        es_base = SEG_BASES["es"]
        found = retired_store(
            b"\xb9\x08\x00\xfc", b"\xf3\xab\xb0\x02", 0xA, es_base + 0x8000, 2, 0x1234, view
        )
        assert found == RetiredStore(0xA, (("rdi", 0x8000), ("rcx", cx_after + 1)))


def test_a_store_that_is_not_the_instructions_is_not_taken() -> None:
    regs = REAL | {"rax": 0x1234, "rdi": 0x8002, "rsi": 0x102, "rsp": 0x8002, "rcx": 5}
    view = real_mode_view(regs)
    es, ss = SEG_BASES["es"], SEG_BASES["ss"]
    # stosw, but the write went elsewhere / had another value
    assert retired_store(b"\x90\xab", b"", 0x10, es + 0x9000, 2, 0x1234, view) is None
    assert retired_store(b"\x90\xab", b"", 0x10, es + 0x8000, 2, 0x4321, view) is None
    # movsw whose source does not hold the value written
    assert retired_store(b"\x90\xa5", b"", 0x10, es + 0x8000, 2, 0x1234, view) is None
    # push ax to SS:SP, but the exit says 4 bytes
    assert retired_store(b"\x90\x50", b"", 0x10, ss + 0x8002, 4, 0x1234, view) is None
    # a plain stosw before RIP and a rep stosw at RIP agree with the exit alike: no answer
    assert retired_store(b"\x90\xab", b"\xf3\xab", 0x10, es + 0x8000, 2, 0x1234, view) is None
    # 66 f3 ab (rep stosd in 16-bit code) before RIP, RIP past it, needs ECX 0: with 5 it would
    # still be running (and the shorter f3 ab, ab are stosw: not the 4-byte write)
    regs4 = regs | {"rax": 0x5A5A1234, "rdi": 0x8004}
    assert (
        retired_store(b"\x66\xf3\xab", b"", 0x10, es + 0x8000, 4, 0x5A5A1234, real_mode_view(regs4)) is None
    )
    found = retired_store(
        b"\x66\xf3\xab", b"", 0x10, es + 0x8000, 4, 0x5A5A1234, real_mode_view(regs4 | {"rcx": 0})
    )
    assert found == RetiredStore(0xD, (("rdi", 0x8000), ("rcx", 1)))


def test_a_rep_stos_past_rip_with_its_count_done_is_rewound_to_one_element() -> None:
    """Where KVM leaves RIP past the last element of a REP STOS (upstream's emulator, RCX 0): the
    shortest match is the STOS byte, and the rewind gives back that one element."""
    regs = REAL | {"rax": 0x1234, "rdi": 0x8002, "rcx": 0}
    found = retired_store(
        b"\x90\xf3\xab", b"\x90", 0x10, SEG_BASES["es"] + 0x8000, 2, 0x1234, real_mode_view(regs)
    )
    assert found == RetiredStore(0xF, (("rdi", 0x8000),))


class FakeVcpu:
    """Just what the root machine's hypercall-page #GP path reads and writes of a KVM vCPU."""

    io_rip_after = True

    def __init__(self, ctx: InitialVpContext, regs: dict[str, int]) -> None:
        self.ctx, self.regs = ctx, regs
        self.injected: list[tuple[int, int]] = []

    def get_context(self) -> InitialVpContext:
        return dataclasses.replace(self.ctx, rip=self.regs["rip"], rsp=self.regs["rsp"])

    def get(self, name: str) -> int:
        return self.regs[name]

    def set(self, name: str, value: int) -> None:
        self.regs[name] = value

    def inject_exception(self, vector: int, error_code: int) -> None:
        self.injected.append((vector, error_code))


@pytest.mark.parametrize(
    ("code", "regs", "addr", "size", "value", "start", "rewound"),
    [
        # rep stosw (f3 ab) at 0x100, one element into the page at 0x5000: RIP on it, CX one less
        (
            "f3ab",
            {"rdi": 0x5012, "rcx": 4, "rax": 0x1234},
            0x5010,
            2,
            0x1234,
            0x100,
            {"rdi": 0x5010, "rcx": 5},
        ),
        # push ax (50) at 0x100 with SP 0x5022 after it: RIP past it
        ("50", {"rsp": 0x5020, "rax": 0x1234}, 0x5020, 2, 0x1234, 0x100, {"rsp": 0x5022}),
    ],
)
def test_a_store_to_the_hypercall_page_faults_with_registers_as_before_it(
    code: str, regs: dict[str, int], addr: int, size: int, value: int, start: int, rewound: dict[str, int]
) -> None:
    """hv1/machine/machine.py: a store to the read-only hypercall page is #GP (TLFS hypercall
    interface), and a fault leaves the registers as before the faulting instruction (SDM Vol. 3
    §6.5): RIP on it and RDI/RCX/RSP not moved, for the forms KVM retires before its exit."""
    from hv1.machine.machine import Vp as MachineVp

    ram = GuestRam(0x10000)
    ram.write(0x100, bytes.fromhex(code) + b"\x90" * 8)
    seg = SegmentRegister(base=0, limit=0xFFFF, selector=0, attributes=0x93)
    ctx = InitialVpContext(cs=SegmentRegister(base=0, limit=0xFFFF, attributes=0x9B), ds=seg, es=seg, ss=seg)
    all_regs = {name: 0 for name in GPRS_BY_NUMBER} | {"rsp": 0x7000} | regs
    all_regs["rip"] = 0x100 if code.startswith("f3") else 0x100 + len(bytes.fromhex(code))
    vcpu = FakeVcpu(ctx, all_regs)
    tracer = SimpleNamespace(wants=lambda _cat: False)
    machine = SimpleNamespace(
        hypercall_page_gpa=0x5000,
        hypercall_page_writes=0,
        partition=SimpleNamespace(memory=ram),
        tracer=tracer,
    )
    vp = SimpleNamespace(m=machine, vcpu=vcpu)
    try:
        MachineVp.mmio_write(vp, addr, size, value)  # type: ignore[arg-type]
    finally:
        ram.close()
    assert vcpu.injected == [(13, 0)] and machine.hypercall_page_writes == 1
    assert vcpu.regs["rip"] == start
    assert {k: vcpu.regs[k] for k in rewound} == rewound
