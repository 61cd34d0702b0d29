"""HvCallStartVirtualProcessor with hostile contexts (TLFS hypercalls/HvCallStartVirtualProcessor.md,
datatypes/hv_initial_vp_context.md; issue 9 bug 4): a context the guest's own processor could not
hold is HV_STATUS_INVALID_REGISTER_VALUE ("The supplied register value is invalid"), checked against
the guest's CPUID and MAXPHYADDR (hv/guest_cpu.py); every context the call accepts is one KVM
(KVM_SET_SREGS) and VM entry accept, and no context makes the handler raise.

`kvm_accepts` below is written from KVM's checks (kvm_is_valid_sregs, kvm_is_valid_cr0/cr4 with
__cr4_reserved_bits, kvm_valid_efer) and the SDM's VM-entry guest-state checks (vol. 3 §26.3.1),
independently of hv/hypercalls/vp_calls.py."""

from __future__ import annotations

import struct
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hv1.hv import enlightenments
from hv1.hv.guest_cpu import ARCHITECTURAL, GuestCpu
from hv1.hv.hypercalls.vp_calls import SEG_P, InitialVpContext, SegmentRegister, TableRegister, context_error
from hv1.hv.interfaces import GuestMemory
from hv1.hv.partition import Partition
from hv1.tlfs.hypercalls import HypercallCode as C
from hv1.tlfs.partition import HV_PARTITION_ID_SELF
from hv1.tlfs.status import HvStatus as S
from tests.fakes import FakeHooks, FakeMemory
from tests.unit.test_enlightenments import caps_with
from tests.unit.test_hypercalls_support import IN, call, make, status
from tests.unit.test_ipi_flush import CODE32, CODE64, DATA, LONG, PROT32

Leaves = dict[tuple[int, int], tuple[int, int, int, int]]

# A guest CPUID like a KVM guest on a recent Intel host without nested virtualization: no VMX, SMX
# or PKU; MAXPHYADDR 39.
LEAF1_ECX = 1 << 17 | 1 << 26  # PCID, XSAVE
LEAF1_EDX = (
    1 << 1 | 1 << 2 | 1 << 3 | 1 << 6 | 1 << 7 | 1 << 13 | 1 << 24 | 1 << 25
)  # VME DE PSE PAE MCE PGE FXSR SSE
LEAF7_EBX = 1 << 0 | 1 << 7 | 1 << 20  # FSGSBASE SMEP SMAP
LEAF7_ECX = 1 << 2  # UMIP
EXT_EDX = 1 << 11 | 1 << 20 | 1 << 29  # SYSCALL NX LM
TYPICAL: Leaves = {
    (1, 0): (0, 0, LEAF1_ECX, LEAF1_EDX),
    (7, 0): (0, LEAF7_EBX, LEAF7_ECX, 0),
    (0x80000001, 0): (0, 0, 0, EXT_EDX),
    (0x80000008, 0): (0x3027, 0, 0, 0),  # 39 physical, 48 linear bits
}
VMX, SMX, PKU = (1, 0, 2, 5), (1, 0, 2, 6), (7, 0, 2, 3)


def with_bit(leaves: Leaves, bit: tuple[int, int, int, int]) -> Leaves:
    leaf, sub, reg, pos = bit
    regs = list(leaves.get((leaf, sub), (0, 0, 0, 0)))
    regs[reg] |= 1 << pos
    return {**leaves, (leaf, sub): (regs[0], regs[1], regs[2], regs[3])}


def rig(leaves: Leaves | None = None) -> tuple[Partition, FakeHooks]:
    p, hooks = make(caps_with("start-vp"), vps=2)
    enlightenments.attach(p)
    p.guest_cpu = GuestCpu.from_leaves(TYPICAL if leaves is None else leaves)
    return p, hooks


def start(p: Partition, ctx: InitialVpContext, vp: int = 1) -> int:
    p.memory.write(IN, struct.pack("<QIB3x", HV_PARTITION_ID_SELF, vp, 0) + ctx.pack())
    return status(call(p, C.HvCallStartVirtualProcessor))


# --- the guest's CPUID --------------------------------------------------------------------------------


def test_guest_cpu_from_cpuid() -> None:
    cpu = GuestCpu.from_leaves(TYPICAL)
    assert cpu.max_phys_bits == 39
    assert cpu.cr4_allowed & (1 << 5 | 1 << 17 | 1 << 20)  # PAE, PCIDE, SMEP
    assert not cpu.cr4_allowed & (1 << 13 | 1 << 14 | 1 << 22)  # VMXE, SMXE, PKE
    assert cpu.efer_allowed == 1 << 0 | 1 << 8 | 1 << 10 | 1 << 11
    # SDM CPUID: "If CPUID.80000008H is not supported, MAXPHYADDR is 36".
    assert GuestCpu.from_leaves({}).max_phys_bits == 36
    assert GuestCpu.from_leaves({}).efer_allowed == 0
    assert ARCHITECTURAL.max_phys_bits == 52


# --- hostile contexts the issue names, and the features that make them valid ----------------------------

CR4_BY_FEATURE = [
    ("VMXE without VMX", 1 << 13, VMX),
    ("SMXE without SMX", 1 << 14, SMX),
    ("PKE without PKU", 1 << 22, PKU),
]


@pytest.mark.parametrize(("name", "bit", "feature"), CR4_BY_FEATURE)
def test_cr4_bit_needs_the_guest_cpuid_feature(
    name: str, bit: int, feature: tuple[int, int, int, int]
) -> None:
    ctx = replace(LONG, cr4=LONG.cr4 | bit)
    p, hooks = rig()
    assert start(p, ctx) == S.INVALID_REGISTER_VALUE, name
    assert hooks.starts == []
    p, hooks = rig(with_bit(TYPICAL, feature))
    assert start(p, ctx) == S.SUCCESS
    assert hooks.starts[0][1].cr4 == ctx.cr4


def test_cr3_beyond_the_guests_maxphyaddr() -> None:
    p, hooks = rig()  # MAXPHYADDR 39
    assert start(p, replace(LONG, cr3=1 << 39)) == S.INVALID_REGISTER_VALUE
    assert start(p, replace(LONG, cr3=1 << 51)) == S.INVALID_REGISTER_VALUE
    assert start(p, replace(LONG, cr3=(1 << 39) - 0x1000)) == S.SUCCESS
    assert [ctx.cr3 for _, ctx in hooks.starts] == [(1 << 39) - 0x1000]


def test_efer_bits_need_the_guest_cpuid_feature() -> None:
    no_nx = {**TYPICAL, (0x80000001, 0): (0, 0, 0, EXT_EDX & ~(1 << 20))}
    p, _ = rig(no_nx)
    assert start(p, LONG) == S.INVALID_REGISTER_VALUE  # LONG sets EFER.NXE
    assert start(p, replace(LONG, efer=0x500)) == S.SUCCESS


PDPT = 0x20000
PAE32 = replace(PROT32, cr0=0x8000_0011, cr4=0x20, cr3=PDPT)  # PAE paging, not IA-32e

HOSTILE = {
    "CR0 reserved bit 6": replace(PROT32, cr0=0x11 | 1 << 6),
    "CR0 reserved bit 28": replace(LONG, cr0=LONG.cr0 | 1 << 28),
    "CR0.PG without PE": replace(PROT32, cr0=0x8000_0010),
    "CR4 reserved bit 15": replace(LONG, cr4=LONG.cr4 | 1 << 15),
    "CR4 bit 63": replace(LONG, cr4=LONG.cr4 | 1 << 63),
    "CR4.CET without CR0.WP": replace(LONG, cr4=LONG.cr4 | 1 << 23),
    "EFER.SVME": replace(LONG, efer=LONG.efer | 1 << 12),
    "EFER.LME+LMA with CR0.PG clear": replace(LONG, cr0=0x11),
    "TR 16-bit busy TSS in long mode": replace(LONG, tr=SegmentRegister(0, 0x67, 0x28, SEG_P | 0x3)),
    "FS base not canonical": replace(LONG, fs=replace(DATA, base=0x0000_8000_0000_0000)),
    "GS base not canonical": replace(LONG, gs=replace(DATA, base=1 << 63)),
    "TR base not canonical": replace(LONG, tr=SegmentRegister(1 << 48, 0x67, 0x28, SEG_P | 0xB)),
    "CS base beyond 4 GiB": replace(PROT32, cs=replace(CODE32, base=1 << 32)),
    "SS base beyond 4 GiB": replace(PROT32, ss=replace(DATA, base=1 << 40)),
    "SS.DPL != SS.RPL": replace(PROT32, ss=replace(DATA, selector=0x13)),
    "CS.DPL != SS.DPL": replace(PROT32, cs=replace(CODE32, attributes=CODE32.attributes | 3 << 5)),
    "IDTR not canonical in 32-bit mode": replace(PROT32, idtr=TableRegister(1 << 60, 0xFFF)),
    "RIP not canonical": replace(LONG, rip=0x1234_5678_9ABC_DEF0),
    "PAE PDPT outside RAM": replace(PAE32, cr3=0xFFFF_F000),
    "PAE PDPTE reserved bits": replace(PAE32, cr3=PDPT + 0x20),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_context_is_invalid_register_value(name: str) -> None:
    p, hooks = rig()
    p.memory.write(PDPT, struct.pack("<4Q", 0x30001, 0x31001, 0, 0))  # a good PDPT ...
    p.memory.write(PDPT + 0x20, struct.pack("<4Q", 0x30001 | 1 << 5, 0, 0, 0))  # ... and a bad one
    assert start(p, HOSTILE[name]) == S.INVALID_REGISTER_VALUE
    assert hooks.starts == []
    assert start(p, LONG) == S.SUCCESS  # the VP is still startable


def test_pae_paging_with_a_good_pdpt_starts() -> None:
    p, hooks = rig()
    p.memory.write(PDPT, struct.pack("<4Q", 0x30001, 0x31001, 0, 0))
    assert start(p, PAE32) == S.SUCCESS


def test_normalized_context_sets_the_accessed_bits() -> None:
    unaccessed_code = replace(CODE64, attributes=CODE64.attributes & ~1)
    unaccessed_data = replace(DATA, attributes=DATA.attributes & ~1)
    ctx = replace(LONG, cs=unaccessed_code, ds=unaccessed_data, ss=unaccessed_data)
    assert context_error(ctx) is None
    n = ctx.normalized()
    assert n.cs.type & 1 and n.ds.type & 1 and n.ss.type & 1
    assert not n.es.present or n.es.type & 1


# --- the KVM-validity predicate, and random contexts ----------------------------------------------------


def _has(leaves: Leaves, leaf: int, sub: int, reg: int, bit: int) -> bool:
    return bool(leaves.get((leaf, sub), (0, 0, 0, 0))[reg] >> bit & 1)


def _cr4_reserved(leaves: Leaves) -> int:
    """KVM's __cr4_reserved_bits for this CPUID (bits KVM itself never allows included)."""
    reserved = ~((1 << 29) - 1) & ~(1 << 32) | 1 << 15 | 1 << 19 | 1 << 25 | 1 << 26 | 1 << 27
    gated = {
        0: (1, 0, 3, 1), 1: (1, 0, 3, 1), 3: (1, 0, 3, 2), 4: (1, 0, 3, 3), 5: (1, 0, 3, 6), 6: (1, 0, 3, 7),
        7: (1, 0, 3, 13), 9: (1, 0, 3, 24), 10: (1, 0, 3, 25), 11: (7, 0, 2, 2), 12: (7, 0, 2, 16),
        13: (1, 0, 2, 5), 14: (1, 0, 2, 6), 16: (7, 0, 1, 0), 17: (1, 0, 2, 17), 18: (1, 0, 2, 26),
        20: (7, 0, 1, 7), 21: (7, 0, 1, 20), 22: (7, 0, 2, 3), 24: (7, 0, 2, 31), 28: (7, 1, 0, 26),
        32: (7, 1, 0, 17),
    }  # fmt: skip
    for bit, feature in gated.items():
        if not _has(leaves, *feature):
            reserved |= 1 << bit
    if not (_has(leaves, 7, 0, 2, 7) or _has(leaves, 7, 0, 3, 20)):
        reserved |= 1 << 23  # CET: shadow stacks or IBT
    return reserved & ((1 << 64) - 1)


def _maxphyaddr(leaves: Leaves) -> int:
    eax = leaves.get((0x80000008, 0), (0, 0, 0, 0))[0] & 0xFF
    return min(eax, 52) if eax else 36


def _canon(addr: int, bits: int = 48) -> bool:
    return -(1 << (bits - 1)) <= (addr - (1 << 64) if addr >> 63 else addr) < 1 << (bits - 1)


def kvm_accepts(c: InitialVpContext, leaves: Leaves, mem: GuestMemory) -> bool:
    """Would KVM_SET_SREGS take `c` and the VM entry after it succeed, on a vCPU with this CPUID?"""
    lme, lma, pg, pae = c.efer >> 8 & 1, c.efer >> 10 & 1, c.cr0 >> 31 & 1, c.cr4 >> 5 & 1
    ia32e = bool(lma)
    # kvm_is_valid_sregs
    if lme and pg:
        if not pae or not lma or c.cr3 >> _maxphyaddr(leaves):
            return False
    elif lma or c.cs.long:
        return False
    # kvm_is_valid_cr0 (+ VM entry: CR0 reserved bits per IA32_VMX_CR0_FIXED1)
    if (
        c.cr0 >> 32
        or c.cr0 & ~0xE005003F
        or (c.cr0 >> 29 & 1 and not c.cr0 >> 30 & 1)
        or (pg and not c.cr0 & 1)
    ):
        return False
    # kvm_is_valid_cr4 + CET needs WP (SDM "MOV to CR4")
    if c.cr4 & _cr4_reserved(leaves) or (c.cr4 >> 23 & 1 and not c.cr0 >> 16 & 1):
        return False
    if c.cr4 >> 17 & 1 and (not ia32e or c.cr3 & 0xFFF):
        return False
    if c.cr4 >> 32 & 1 and not ia32e:  # FRED
        return False
    # kvm_valid_efer: SCE needs SYSCALL, LME/LMA need LM, NXE needs NX; the rest is not offered
    efer_ok = 0
    sce, lm, nx = (0x80000001, 0, 3, 11), (0x80000001, 0, 3, 29), (0x80000001, 0, 3, 20)
    for bit, feature in ((0, sce), (8, lm), (10, lm), (11, nx)):
        if _has(leaves, *feature):
            efer_ok |= 1 << bit
    if c.efer & ~efer_ok:
        return False
    if not ia32e and c.cr3 >> 32:
        return False
    # PAE paging outside IA-32e mode: the PDPTEs (SDM §4.4.1)
    if pg and pae and not ia32e:
        gpa = c.cr3 & 0xFFFF_FFE0
        if gpa + 32 > mem.size:
            return False
        for i in range(4):
            e = int.from_bytes(mem.read(gpa + 8 * i, 8), "little")
            if e & 1 and (e & 0x1E6 or e >> _maxphyaddr(leaves)):
                return False
    # VM entry: RIP, RFLAGS
    la = 57 if c.cr4 >> 12 & 1 else 48
    if (ia32e and c.cs.long and not _canon(c.rip, la)) or (not (ia32e and c.cs.long) and c.rip >> 32):
        return False
    if not c.rflags & 2 or c.rflags & (1 << 3 | 1 << 5 | 1 << 15 | ~((1 << 22) - 1) & ((1 << 64) - 1)):
        return False
    if c.rflags >> 17 & 1:
        return False

    # VM entry: segments (present = usable), SDM §26.3.1.2
    def seg_ok(name: str, s: SegmentRegister) -> bool:
        if not s.present:
            return name not in ("cs", "tr")
        if s.limit & 0xFFF != 0xFFF and s.granularity:
            return False
        if s.limit >> 20 and not s.granularity:
            return False
        if name in ("cs", "ss", "ds", "es") and s.base >> 32:
            return False
        if name in ("fs", "gs", "tr", "ldtr") and not _canon(s.base, la):
            return False
        if name == "tr":
            return not s.s and (s.type == 11 or (not ia32e and s.type == 3))
        if name == "ldtr":
            return not s.s and s.type == 2
        if not s.s or not s.type & 1:  # code/data, accessed
            return False
        if name == "cs":
            return bool(s.type & 8) and not (s.long and s.db)
        if name == "ss":
            return s.type in (3, 7) and s.dpl == s.selector & 3
        return not s.type & 8 or bool(s.type & 2)

    for name in ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldtr"):
        if not seg_ok(name, getattr(c, name)):
            return False
    if c.ss.present and c.cs.type in (9, 11) and c.cs.dpl != c.ss.dpl:
        return False
    if not (_canon(c.gdtr.base, la) and _canon(c.idtr.base, la)):
        return False
    return all((c.pat >> (8 * i)) & 0xFF in (0, 1, 4, 5, 6, 7) for i in range(8))


U64 = st.integers(0, (1 << 64) - 1)
FIELDS = ["rip", "rsp", "rflags", "efer", "cr0", "cr3", "cr4", "pat", "gdtr", "idtr",
          "cs", "ds", "es", "fs", "gs", "ss", "tr", "ldtr"]  # fmt: skip


def _mutate(ctx: InitialVpContext, field: str, how: int, value: int) -> InitialVpContext:
    """Flip bit `value % 64` (how 0), set `value` (how 1), or set a small value (how 2) in `field`."""
    cur = getattr(ctx, field)
    if isinstance(cur, SegmentRegister):
        part = ("base", "limit", "selector", "attributes")[value % 4]
        old, width = getattr(cur, part), (64, 32, 16, 16)[value % 4]
        new = old ^ (1 << (value >> 2) % width) if how == 0 else value & ((1 << width) - 1)
        return replace(ctx, **{field: replace(cur, **{part: new})})
    if isinstance(cur, TableRegister):
        return replace(ctx, **{field: replace(cur, base=cur.base ^ (1 << value % 64) if how == 0 else value)})
    new = cur ^ (1 << value % 64) if how == 0 else value if how == 1 else value & 0xFFF
    return replace(ctx, **{field: new & ((1 << 64) - 1)})


@st.composite
def leaves_strategy(draw: st.DrawFn) -> Leaves:
    """A guest CPUID: TYPICAL with random feature bits flipped and a random MAXPHYADDR."""
    leaves = dict(TYPICAL)
    for key in ((1, 0), (7, 0), (7, 1), (0x80000001, 0)):
        regs = list(leaves.get(key, (0, 0, 0, 0)))
        for _ in range(draw(st.integers(0, 3))):
            regs[draw(st.integers(0, 3))] ^= 1 << draw(st.integers(0, 31))
        leaves[key] = (regs[0], regs[1], regs[2], regs[3])
    leaves[(0x80000008, 0)] = (draw(st.integers(32, 52)) | 48 << 8, 0, 0, 0)
    return leaves


MUTATION = st.tuples(st.sampled_from(FIELDS), st.integers(0, 2), U64)
_partition: list[tuple[Partition, FakeHooks]] = []


def _shared_rig() -> tuple[Partition, FakeHooks]:
    if not _partition:
        p, hooks = rig()
        p.memory.write(PDPT, struct.pack("<4Q", 0x30001, 0x31001, 0, 0))
        _partition.append((p, hooks))
    return _partition[0]


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    base=st.sampled_from([LONG, PROT32, PAE32]),
    mutations=st.lists(MUTATION, max_size=4),
    leaves=leaves_strategy(),
)
def test_random_contexts_never_raise_and_accepted_ones_are_kvm_valid(
    base: InitialVpContext, mutations: list[tuple[str, int, int]], leaves: Leaves
) -> None:
    p, hooks = _shared_rig()
    p.guest_cpu = GuestCpu.from_leaves(leaves)
    hooks.started, hooks.starts = {0}, []  # VP 1 has not run
    ctx = base
    for field, how, value in mutations:
        ctx = _mutate(ctx, field, how, value)
    st_ = start(p, ctx)
    assert st_ in (S.SUCCESS, S.INVALID_REGISTER_VALUE)
    if st_ == S.SUCCESS:
        ((_, loaded),) = hooks.starts
        assert kvm_accepts(loaded, leaves, p.memory), loaded
    else:
        assert hooks.starts == []


@settings(max_examples=300, deadline=None)
@given(data=st.binary(min_size=224, max_size=224), leaves=leaves_strategy())
def test_random_context_bytes_never_raise(data: bytes, leaves: Leaves) -> None:
    p, hooks = _shared_rig()
    p.guest_cpu = GuestCpu.from_leaves(leaves)
    hooks.started, hooks.starts = {0}, []
    ctx = InitialVpContext.unpack(data)
    assert start(p, ctx) in (S.SUCCESS, S.INVALID_REGISTER_VALUE)
    for _, loaded in hooks.starts:
        assert kvm_accepts(loaded, leaves, p.memory)


def test_the_predicate_accepts_the_reference_contexts() -> None:
    mem = FakeMemory(1 << 20)
    mem.write(PDPT, struct.pack("<4Q", 0x30001, 0x31001, 0, 0))
    for ctx in (LONG, PROT32, PAE32):
        assert kvm_accepts(ctx.normalized(), TYPICAL, mem)
