"""Helpers for the hypercall tests (test_hypercalls*.py; no tests in here): a partition on fakes and a
`call` that loads registers the way the hypercall page's caller does."""

from __future__ import annotations

from hv1.hv.caps import Caps, parse_profile
from hv1.hv.hypercall_page import STUB_OUT_END
from hv1.hv.hypercalls import build_control
from hv1.hv.interfaces import CpuMode
from hv1.hv.partition import Partition
from hv1.trace import Tracer
from tests.fakes import FakeClock, FakeHooks, FakeIrq, FakeMemory, FakeRegs

PAGE = 0x1000
RAM = 1 << 20
STUB = 0x5000  # where the tests pretend the hypercall page is mapped (virtual = physical)
RIP_AT_EXIT = STUB + STUB_OUT_END  # RIP reported by the backend: past the `out`, on the `ret`
IN = 0x10000  # default input page
OUT = 0x11000  # default output page


def make(
    profile: str | Caps = "default",
    vps: int = 2,
    mem: int = RAM,
    tracer: Tracer | None = None,
    apic_ids: list[int] | None = None,
    vp_indexes: list[int] | None = None,
) -> tuple[Partition, FakeHooks]:
    hooks = FakeHooks()
    caps = parse_profile(profile) if isinstance(profile, str) else profile
    p = Partition(
        caps,
        vps,
        FakeMemory(mem),
        FakeClock(),
        FakeIrq(),
        hooks,
        tracer=tracer if tracer is not None else Tracer(),
        apic_ids=apic_ids,
        vp_indexes=vp_indexes,  # --vp-index-map: slot i has VP index vp_indexes[i]
    )
    assert isinstance(p.irq, FakeIrq)
    p.irq.vp_indexes = {vp.index for vp in p.vps}  # strict, like the machine
    # Deterministic tests: no continuation because the host was slow (the tests of the time budget
    # set it themselves).
    p.rep_budget_ns = 10**15
    return p, hooks


def regs_for(
    control: int,
    p1: int = 0,
    p2: int = 0,
    *,
    mode: CpuMode = CpuMode.LONG,
    cpl: int = 0,
    xmm: list[int] | None = None,
) -> FakeRegs:
    """Registers at the hypercall exit: control / input GPA (or fast bytes 0-7) / output GPA (or fast
    bytes 8-15) in RCX/RDX/R8, or EDX:EAX / EBX:ECX / EDI:ESI for a 32-bit caller."""
    r = FakeRegs(cpu_mode=mode, cpl_value=cpl)
    if mode is CpuMode.LONG:
        r.gprs.update(rcx=control, rdx=p1, r8=p2)
    else:
        r.gprs.update(
            rdx=control >> 32, rax=control & 0xFFFFFFFF, rbx=p1 >> 32, rcx=p1 & 0xFFFFFFFF, rdi=p2 >> 32,
            rsi=p2 & 0xFFFFFFFF,
        )  # fmt: skip
    r.gprs["rip"] = RIP_AT_EXIT
    if xmm is not None:
        r.xmm[: len(xmm)] = xmm
    return r


def call(
    p: Partition,
    code: int,
    p1: int = IN,
    p2: int = OUT,
    *,
    fast: bool = False,
    rep_count: int = 0,
    rep_start: int = 0,
    var_header: int = 0,
    extra: int = 0,
    vp: int = 0,
    mode: CpuMode = CpuMode.LONG,
    cpl: int = 0,
    xmm: list[int] | None = None,
) -> FakeRegs:
    control = build_control(
        code, fast=fast, var_header_qwords=var_header, rep_count=rep_count, rep_start=rep_start
    )
    r = regs_for(control | extra, p1, p2, mode=mode, cpl=cpl, xmm=xmm)
    p.hypercall(vp, r)
    return r


def result(r: FakeRegs) -> int:
    if r.cpu_mode is CpuMode.LONG:
        return r.gprs["rax"]
    return (r.gprs["rdx"] & 0xFFFFFFFF) << 32 | (r.gprs["rax"] & 0xFFFFFFFF)


def status(r: FakeRegs) -> int:
    return result(r) & 0xFFFF


def reps(r: FakeRegs) -> int:
    return (result(r) >> 32) & 0xFFF


def xmm_bytes(r: FakeRegs, first: int, count: int) -> bytes:
    return b"".join(r.xmm[i].to_bytes(16, "little") for i in range(first, first + count))


def to_xmm(data: bytes) -> list[int]:
    data = data + bytes(-len(data) % 16)
    return [int.from_bytes(data[i : i + 16], "little") for i in range(0, len(data), 16)]
