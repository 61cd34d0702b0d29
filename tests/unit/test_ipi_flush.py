"""Synthetic cluster IPIs, TLB flush hypercalls and HvCallStartVirtualProcessor through the dispatcher:
hypercalls/ipi.py, hypercalls/flush.py, hypercalls/vp_calls.py.

TLFS virtual-interrupts.md "Synthetic Cluster IPI", virtual-mmu.md "Virtual TLB Enhancements",
hypercalls/HvCallSendSyntheticClusterIpi*.md, HvCallFlushVirtualAddress*.md,
HvCallStartVirtualProcessor.md, datatypes/hv_vp_set.md, hv_initial_vp_context.md; inventory §6.2-6.4, §7.
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hv1.hv import enlightenments
from hv1.hv.caps import Caps
from hv1.hv.hypercalls.flush import (
    HV_FLUSH_ALL_PROCESSORS,
    HV_FLUSH_ALL_VIRTUAL_ADDRESS_SPACES,
    HV_FLUSH_NON_GLOBAL_MAPPINGS_ONLY,
    HV_FLUSH_USE_EXTENDED_RANGE_FORMAT,
)
from hv1.hv.hypercalls.vp_calls import (
    RESET_TR,
    SEG_DB,
    SEG_G,
    SEG_L,
    SEG_P,
    SEG_S,
    InitialVpContext,
    SegmentRegister,
    TableRegister,
    context_error,
)
from hv1.hv.partition import Partition
from hv1.hv.vpset import encode_vp_set
from hv1.tlfs.hypercalls import HypercallCode as C
from hv1.tlfs.partition import HV_PARTITION_ID_SELF
from hv1.tlfs.status import HvStatus as S
from hv1.tlfs.vp import HV_ANY_VP, HV_VP_INDEX_SELF
from hv1.trace import Tracer
from tests.fakes import FakeHooks, FakeIrq
from tests.unit.test_enlightenments import caps_with
from tests.unit.test_hypercalls_support import IN, call, make, reps, status, to_xmm


def rig(
    vps: int = 4, caps: Caps | None = None, tracer: Tracer | None = None, vp_indexes: list[int] | None = None
) -> tuple[Partition, FakeHooks, FakeIrq]:
    # The VP index map (--vp-index-map) is the partition's own, so that every subsystem (SynIC,
    # timers, VP assist) names the VPs by it, as in a real run.
    p, hooks = make(
        caps if caps is not None else caps_with("start-vp"), vps=vps, tracer=tracer, vp_indexes=vp_indexes
    )
    enlightenments.attach(p)
    assert isinstance(p.irq, FakeIrq)
    return p, hooks, p.irq


def put(p: Partition, data: bytes, gpa: int = IN) -> None:
    p.memory.write(gpa, data)


def ipi_input(vector: int, mask: int, vtl: int = 0) -> bytes:
    return struct.pack("<IB3xQ", vector, vtl, mask)


def ipi_ex_input(vector: int, vp_set: bytes, vtl: int = 0) -> bytes:
    return struct.pack("<IB3x", vector, vtl) + vp_set


def banks(vp_set: bytes) -> int:
    return (len(vp_set) - 16) // 8


# --- HvCallSendSyntheticClusterIpi ------------------------------------------------------------------


def test_ipi_memory_form_reaches_every_vp_of_the_mask_including_the_sender() -> None:
    p, _, irq = rig()
    put(p, ipi_input(0x40, 0b1011))
    r = call(p, C.HvCallSendSyntheticClusterIpi)
    assert status(r) == S.SUCCESS
    assert sorted(irq.sent) == [(0, 0x40, False), (1, 0x40, False), (3, 0x40, False)]


def test_ipi_fast_form() -> None:
    p, _, irq = rig()
    r = call(p, C.HvCallSendSyntheticClusterIpi, 0x21 | (0 << 32), 0b0100, fast=True, vp=1)
    assert status(r) == S.SUCCESS
    assert irq.sent == [(2, 0x21, False)]


@pytest.mark.parametrize(
    ("vector", "ok"), [(0x0F, False), (0x10, True), (0xFF, True), (0x100, False), (0, False)]
)
def test_ipi_vector_range(vector: int, ok: bool) -> None:
    p, _, irq = rig()
    put(p, ipi_input(vector, 0b10))
    r = call(p, C.HvCallSendSyntheticClusterIpi)
    assert status(r) == (S.SUCCESS if ok else S.INVALID_PARAMETER)
    assert irq.sent == ([(1, vector, False)] if ok else [])


@pytest.mark.parametrize(
    ("vtl", "expected"),
    [
        (0x00, S.SUCCESS),
        (0x10, S.SUCCESS),
        (0x11, S.INVALID_PARAMETER),
        (0x20, S.INVALID_PARAMETER),
        (0x01, S.SUCCESS),
    ],
)
def test_ipi_target_vtl(vtl: int, expected: int) -> None:
    # HV_INPUT_VTL: TargetVtl is only used with UseTargetVtl (bit 4); bits 7:5 are ReservedZ.
    p, _, _ = rig()
    put(p, ipi_input(0x40, 1, vtl))
    assert status(call(p, C.HvCallSendSyntheticClusterIpi)) == expected


def test_ipi_padding_ignored_and_missing_vps_ignored() -> None:
    p, _, irq = rig(vps=2)
    put(p, struct.pack("<IBBBBQ", 0x40, 0, 0xFF, 0xFF, 0xFF, (1 << 63) | 0b10))
    assert status(call(p, C.HvCallSendSyntheticClusterIpi)) == S.SUCCESS
    assert irq.sent == [(1, 0x40, False)]


def test_ipi_empty_mask_succeeds_and_sends_nothing() -> None:
    p, _, irq = rig()
    assert status(call(p, C.HvCallSendSyntheticClusterIpi, 0x40, 0, fast=True)) == S.SUCCESS
    assert irq.sent == []


def test_ipi_block_errors_come_from_the_dispatcher() -> None:
    p, _, irq = rig()
    assert status(call(p, C.HvCallSendSyntheticClusterIpi, IN + 4)) == S.INVALID_ALIGNMENT
    assert status(call(p, C.HvCallSendSyntheticClusterIpi, rep_count=1)) == S.INVALID_HYPERCALL_INPUT
    assert status(call(p, C.HvCallSendSyntheticClusterIpi, var_header=1)) == S.INVALID_HYPERCALL_INPUT
    assert irq.sent == []


def test_ipi_trace() -> None:
    out = io.StringIO()
    p, _, _ = rig(tracer=Tracer(["ipi"], text=io.StringIO(), json_out=out))
    call(p, C.HvCallSendSyntheticClusterIpi, 0x40, 0b110, fast=True, vp=3)
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    ipi = [e for e in events if e.get("cat") == "ipi"]
    assert len(ipi) == 1
    assert "send" in json.dumps(ipi[0]) and "[1, 2]" in json.dumps(ipi[0])


# --- HvCallSendSyntheticClusterIpiEx ----------------------------------------------------------------


def test_ipi_ex_sparse_set() -> None:
    p, _, irq = rig()
    vs = encode_vp_set([1, 3])
    put(p, ipi_ex_input(0x50, vs))
    r = call(p, C.HvCallSendSyntheticClusterIpiEx, var_header=banks(vs))
    assert status(r) == S.SUCCESS
    assert sorted(irq.sent) == [(1, 0x50, False), (3, 0x50, False)]


def test_ipi_ex_all() -> None:
    p, _, irq = rig()
    put(p, ipi_ex_input(0x50, encode_vp_set(None, all_vps=True)))
    assert status(call(p, C.HvCallSendSyntheticClusterIpiEx)) == S.SUCCESS
    assert sorted(t for t, _, _ in irq.sent) == [0, 1, 2, 3]


def test_ipi_ex_sparse_vp_indexes_above_63() -> None:
    # The conformance case: VP indexes >= 64 through a VP index map.
    p, _, irq = rig(vp_indexes=[0, 65, 130, 3])
    vs = encode_vp_set([65, 130, 200])  # 200 does not exist: ignored
    put(p, ipi_ex_input(0x60, vs))
    assert status(call(p, C.HvCallSendSyntheticClusterIpiEx, var_header=banks(vs))) == S.SUCCESS
    assert sorted(irq.sent) == [(65, 0x60, False), (130, 0x60, False)]
    # The 64-bit mask form can only reach VP indexes 0..63.
    irq.sent.clear()
    put(p, ipi_input(0x61, (1 << 63) - 1))
    assert status(call(p, C.HvCallSendSyntheticClusterIpi)) == S.SUCCESS
    assert sorted(irq.sent) == [(0, 0x61, False), (3, 0x61, False)]


def test_ipi_ex_var_header_mismatch_and_bad_format() -> None:
    p, _, irq = rig()
    vs = encode_vp_set([1, 70])  # two banks
    put(p, ipi_ex_input(0x50, vs))
    assert status(call(p, C.HvCallSendSyntheticClusterIpiEx, var_header=1)) == S.INVALID_HYPERCALL_INPUT
    assert status(call(p, C.HvCallSendSyntheticClusterIpiEx, var_header=0)) == S.INVALID_HYPERCALL_INPUT
    put(p, ipi_ex_input(0x50, struct.pack("<QQ", 2, 0)))
    assert status(call(p, C.HvCallSendSyntheticClusterIpiEx)) == S.INVALID_PARAMETER
    put(p, ipi_ex_input(0x05, encode_vp_set([1])))
    assert status(call(p, C.HvCallSendSyntheticClusterIpiEx, var_header=1)) == S.INVALID_PARAMETER
    assert irq.sent == []


def test_ipi_ex_xmm_fast_form() -> None:
    p, _, irq = rig()
    block = ipi_ex_input(0x70, encode_vp_set([0, 2]))  # 32 bytes: RDX, R8, XMM0
    rdx, r8 = struct.unpack_from("<QQ", block)
    r = call(p, C.HvCallSendSyntheticClusterIpiEx, rdx, r8, fast=True, var_header=1, xmm=to_xmm(block[16:]))
    assert status(r) == S.SUCCESS
    assert sorted(irq.sent) == [(0, 0x70, False), (2, 0x70, False)]


@given(st.frozensets(st.integers(0, 300), max_size=20), st.integers(0x10, 0xFF))
def test_ipi_ex_random_sets(targets: frozenset[int], vector: int) -> None:
    p, _, irq = rig(vp_indexes=[0, 65, 130, 3])
    vs = encode_vp_set(targets)
    put(p, ipi_ex_input(vector, vs))
    assert status(call(p, C.HvCallSendSyntheticClusterIpiEx, var_header=banks(vs))) == S.SUCCESS
    assert sorted(t for t, _, _ in irq.sent) == sorted(targets & {0, 65, 130, 3})


# --- flushes ----------------------------------------------------------------------------------------


def flush_input(flags: int, mask: int, space: int = 0x1000) -> bytes:
    return struct.pack("<QQQ", space, flags, mask)


def flush_ex_input(flags: int, vp_set: bytes, space: int = 0x1000) -> bytes:
    return struct.pack("<QQ", space, flags) + vp_set


def test_flush_space_mask() -> None:
    p, hooks, _ = rig()
    put(p, flush_input(0, 0b0110))
    assert status(call(p, C.HvCallFlushVirtualAddressSpace)) == S.SUCCESS
    assert hooks.flushes == [(0, (1, 2))]


@pytest.mark.parametrize(
    ("flags", "mask"),
    [
        (HV_FLUSH_ALL_PROCESSORS, 0b1),
        (0, 0),
        (HV_FLUSH_ALL_PROCESSORS | HV_FLUSH_ALL_VIRTUAL_ADDRESS_SPACES, 0),
    ],
)
def test_flush_all_processors_and_mask_zero_mean_every_vp(flags: int, mask: int) -> None:
    # Inventory §7.10: mask 0 without HV_FLUSH_ALL_PROCESSORS is "all" (Windows Server 2012; KVM).
    p, hooks, _ = rig()
    put(p, flush_input(flags, mask))
    assert status(call(p, C.HvCallFlushVirtualAddressSpace, vp=2)) == S.SUCCESS
    assert hooks.flushes == [(2, (0, 1, 2, 3))]


@pytest.mark.parametrize("flags", [HV_FLUSH_USE_EXTENDED_RANGE_FORMAT, 1 << 4, 1 << 8, 1 << 63])
def test_flush_reserved_flags_are_invalid_parameter(flags: int) -> None:
    p, hooks, _ = rig()
    for code, data in (
        (C.HvCallFlushVirtualAddressSpace, flush_input(flags, 1)),
        (C.HvCallFlushVirtualAddressSpaceEx, flush_ex_input(flags, encode_vp_set(None, all_vps=True))),
    ):
        put(p, data)
        assert status(call(p, code)) == S.INVALID_PARAMETER
    put(p, flush_input(flags, 1) + struct.pack("<Q", 0x5000))
    r = call(p, C.HvCallFlushVirtualAddressList, rep_count=1)
    assert (status(r), reps(r)) == (S.INVALID_PARAMETER, 0)
    assert hooks.flushes == []


def test_flush_non_global_accepted_everywhere() -> None:
    # Inventory §7.11: real NT sets NON_GLOBAL_MAPPINGS_ONLY on List calls too.
    p, hooks, _ = rig()
    put(p, flush_input(HV_FLUSH_NON_GLOBAL_MAPPINGS_ONLY, 1))
    assert status(call(p, C.HvCallFlushVirtualAddressSpace)) == S.SUCCESS
    put(p, flush_input(HV_FLUSH_NON_GLOBAL_MAPPINGS_ONLY, 1) + struct.pack("<Q", 0x7000))
    assert status(call(p, C.HvCallFlushVirtualAddressList, rep_count=1)) == S.SUCCESS
    assert hooks.flushes == [(0, (0,)), (0, (0,))]


def test_flush_runs_outside_the_partition_lock_before_the_call_returns() -> None:
    p, hooks, _ = rig()
    held: list[bool] = []

    def flush_tlb(src: int, targets: object) -> None:
        held.append(p.lock._is_owned())  # type: ignore[attr-defined]
        hooks.flushes.append((src, tuple(targets)))  # type: ignore[arg-type]

    hooks.flush_tlb = flush_tlb  # type: ignore[method-assign]
    put(p, flush_input(0, 0b1000))
    r = call(p, C.HvCallFlushVirtualAddressSpace, vp=1)
    assert status(r) == S.SUCCESS
    assert hooks.flushes == [(1, (3,))] and held == [False]


def test_flush_fast_xmm_form() -> None:
    p, hooks, _ = rig()
    block = flush_input(0, 0b11)  # 24 bytes: RDX, R8, XMM0 low
    rdx, r8 = struct.unpack_from("<QQ", block)
    r = call(p, C.HvCallFlushVirtualAddressSpace, rdx, r8, fast=True, xmm=to_xmm(block[16:]))
    assert status(r) == S.SUCCESS
    assert hooks.flushes == [(0, (0, 1))]


def test_flush_list_every_rep_succeeds_one_flush() -> None:
    p, hooks, _ = rig()
    gvas = [0xFFFF_8000_0000_0000 | 0xFFF, 0x1234_5000, (1 << 64) - 1]  # even nonsense GVAs are fine
    put(p, flush_input(0, 0b10) + b"".join(struct.pack("<Q", g) for g in gvas))
    r = call(p, C.HvCallFlushVirtualAddressList, rep_count=3)
    assert (status(r), reps(r)) == (S.SUCCESS, 3)
    assert hooks.flushes == [(0, (1,))]


def test_flush_list_fast_rep_form() -> None:
    # Real NT issues the List flush as an XMM fast rep call: mask in the header, ranges in XMM.
    p, hooks, _ = rig()
    block = flush_input(HV_FLUSH_ALL_VIRTUAL_ADDRESS_SPACES, 0b100) + struct.pack("<QQ", 0x1000, 0x2003)
    rdx, r8 = struct.unpack_from("<QQ", block)
    r = call(p, C.HvCallFlushVirtualAddressList, rdx, r8, fast=True, rep_count=2, xmm=to_xmm(block[16:]))
    assert (status(r), reps(r)) == (S.SUCCESS, 2)
    assert hooks.flushes == [(0, (2,))]


def test_flush_list_continuation_flushes_on_every_exit() -> None:
    p, hooks, _ = rig()
    p.rep_budget_reps = 1
    put(p, flush_input(0, 0b1) + struct.pack("<QQ", 0x1000, 0x2000))
    call(p, C.HvCallFlushVirtualAddressList, rep_count=2)  # yields after one element
    r = call(p, C.HvCallFlushVirtualAddressList, rep_count=2, rep_start=1)
    assert (status(r), reps(r)) == (S.SUCCESS, 2)
    assert hooks.flushes == [(0, (0,)), (0, (0,))]


def test_flush_ex_sparse_all_and_empty() -> None:
    p, hooks, _ = rig(vp_indexes=[0, 65, 130, 3])
    vs = encode_vp_set([65, 3, 999])
    put(p, flush_ex_input(0, vs))
    assert status(call(p, C.HvCallFlushVirtualAddressSpaceEx, var_header=banks(vs))) == S.SUCCESS
    put(p, flush_ex_input(0, encode_vp_set(None, all_vps=True)))
    assert status(call(p, C.HvCallFlushVirtualAddressSpaceEx)) == S.SUCCESS
    put(p, flush_ex_input(0, encode_vp_set([])))  # an empty Ex set flushes nothing (KVM)
    assert status(call(p, C.HvCallFlushVirtualAddressSpaceEx)) == S.SUCCESS
    put(p, flush_ex_input(HV_FLUSH_ALL_PROCESSORS, encode_vp_set([])))  # ...unless all processors
    assert status(call(p, C.HvCallFlushVirtualAddressSpaceEx)) == S.SUCCESS
    assert hooks.flushes == [(0, (3, 65)), (0, (0, 3, 65, 130)), (0, (0, 3, 65, 130))]


def test_flush_ex_errors() -> None:
    p, hooks, _ = rig()
    vs = encode_vp_set([1])
    put(p, flush_ex_input(0, vs))
    assert status(call(p, C.HvCallFlushVirtualAddressSpaceEx, var_header=2)) == S.INVALID_HYPERCALL_INPUT
    put(p, flush_ex_input(0, struct.pack("<QQ", 7, 0)))
    assert status(call(p, C.HvCallFlushVirtualAddressSpaceEx)) == S.INVALID_PARAMETER
    assert hooks.flushes == []


def test_flush_list_ex() -> None:
    p, hooks, _ = rig()
    vs = encode_vp_set([2, 3])
    put(p, flush_ex_input(0, vs) + struct.pack("<QQ", 0x1000, 0x2000))
    r = call(p, C.HvCallFlushVirtualAddressListEx, rep_count=2, var_header=banks(vs))
    assert (status(r), reps(r)) == (S.SUCCESS, 2)
    assert hooks.flushes == [(0, (2, 3))]
    r = call(p, C.HvCallFlushVirtualAddressListEx, rep_count=2, var_header=0)
    assert (status(r), reps(r)) == (S.INVALID_HYPERCALL_INPUT, 0)


def test_flush_trace_has_targets_flags_and_time() -> None:
    out = io.StringIO()
    p, _, _ = rig(tracer=Tracer(["flush"], text=io.StringIO(), json_out=out))
    put(p, flush_input(HV_FLUSH_ALL_VIRTUAL_ADDRESS_SPACES, 0b11))
    call(p, C.HvCallFlushVirtualAddressSpace)
    flushes = [json.loads(line) for line in out.getvalue().splitlines() if '"flush"' in line]
    assert flushes
    text = json.dumps(flushes[-1])
    assert '"us"' in text and "[0, 1]" in text and '"flags": 2' in text


# --- HvCallStartVirtualProcessor --------------------------------------------------------------------

CODE64 = SegmentRegister(0, 0xFFFFFFFF, 0x08, SEG_P | SEG_S | 0xB | SEG_L | SEG_G)
DATA = SegmentRegister(0, 0xFFFFFFFF, 0x10, SEG_P | SEG_S | 0x3 | SEG_DB | SEG_G)
CODE32 = SegmentRegister(0, 0xFFFFFFFF, 0x08, SEG_P | SEG_S | 0xB | SEG_DB | SEG_G)
LONG = InitialVpContext(
    rip=0xFFFF_8000_0010_0000,
    rsp=0x8000,
    rflags=0x2,
    cs=CODE64,
    ds=DATA,
    es=DATA,
    ss=DATA,
    gdtr=TableRegister(0x1000, 0x27),
    idtr=TableRegister(0x2000, 0xFFF),
    efer=0x500 | 0x800,  # LME | LMA | NXE
    cr0=0x8000_0011,  # PG | ET | PE
    cr3=0x10_0000,
    cr4=0x20,  # PAE
)
PROT32 = InitialVpContext(rip=0x10_0000, rsp=0x9000, cs=CODE32, ds=DATA, ss=DATA, cr0=0x11)


def start_input(
    vp_index: int, ctx: InitialVpContext, partition: int = HV_PARTITION_ID_SELF, vtl: int = 0
) -> bytes:
    return struct.pack("<QIB3x", partition, vp_index, vtl) + ctx.pack()


def test_start_vp_success_and_already_started() -> None:
    p, hooks, _ = rig()
    put(p, start_input(2, LONG))
    assert status(call(p, C.HvCallStartVirtualProcessor)) == S.SUCCESS
    ((index, ctx),) = hooks.starts
    assert index == 2
    assert ctx.rip == LONG.rip and ctx.cr3 == LONG.cr3 and ctx.cs == CODE64
    assert ctx.tr == RESET_TR  # a non-present TR is loaded as its reset state
    assert status(call(p, C.HvCallStartVirtualProcessor)) == S.INVALID_VP_STATE
    assert len(hooks.starts) == 1


def test_start_vp_32_bit_protected_mode() -> None:
    p, hooks, _ = rig()
    put(p, start_input(1, PROT32, partition=p.partition_id))
    assert status(call(p, C.HvCallStartVirtualProcessor)) == S.SUCCESS
    assert hooks.starts[0][1].cr0 == 0x11


@pytest.mark.parametrize(
    ("vp_index", "expected"),
    [(HV_VP_INDEX_SELF, S.INVALID_VP_STATE), (0, S.INVALID_VP_STATE), (4, S.INVALID_VP_INDEX),
     (HV_ANY_VP, S.INVALID_VP_INDEX), (3, S.SUCCESS)],
)  # fmt: skip
def test_start_vp_indexes(vp_index: int, expected: int) -> None:
    p, _, _ = rig()
    put(p, start_input(vp_index, LONG))
    assert status(call(p, C.HvCallStartVirtualProcessor)) == expected


def test_start_vp_sparse_vp_index() -> None:
    p, hooks, _ = rig(vp_indexes=[0, 65, 130, 3])
    put(p, start_input(130, LONG))
    assert status(call(p, C.HvCallStartVirtualProcessor)) == S.SUCCESS
    put(p, start_input(2, LONG))
    assert status(call(p, C.HvCallStartVirtualProcessor)) == S.INVALID_VP_INDEX
    assert [i for i, _ in hooks.starts] == [130]


@pytest.mark.parametrize(
    ("partition", "vtl", "expected"),
    [(2, 0, S.INVALID_PARTITION_ID), (0, 0, S.INVALID_PARTITION_ID),
     (HV_PARTITION_ID_SELF, 1, S.INVALID_VTL_STATE), (HV_PARTITION_ID_SELF, 0x11, S.INVALID_VTL_STATE),
     (HV_PARTITION_ID_SELF, 0x10, S.SUCCESS),
     (HV_PARTITION_ID_SELF, 0x40, S.INVALID_PARAMETER)],
)  # fmt: skip
def test_start_vp_partition_and_vtl(partition: int, vtl: int, expected: int) -> None:
    p, _, _ = rig()
    put(p, start_input(1, LONG, partition=partition, vtl=vtl))
    assert status(call(p, C.HvCallStartVirtualProcessor)) == expected


def test_start_vp_needs_its_privilege_and_memory_form() -> None:
    p, hooks, _ = rig(caps=caps_with(base="minimal"))
    put(p, start_input(1, LONG))
    assert status(call(p, C.HvCallStartVirtualProcessor)) == S.ACCESS_DENIED
    p, hooks, _ = rig()
    assert status(call(p, C.HvCallStartVirtualProcessor, 0, 0, fast=True)) == S.INVALID_HYPERCALL_INPUT
    assert status(call(p, C.HvCallStartVirtualProcessor, 0xFFF80)) == S.INVALID_ALIGNMENT  # crosses a page
    assert hooks.starts == []


BAD_CONTEXTS = {
    "real mode": replace(PROT32, cr0=0x10),
    "PG without PAE in long mode": replace(LONG, cr4=0),
    "LME+PG without LMA": replace(LONG, efer=0x100),
    "LMA without paging": replace(LONG, cr0=0x11),
    "CS.L outside long mode": replace(PROT32, cs=CODE64),
    "CS.L with CS.D": replace(LONG, cs=replace(CODE64, attributes=CODE64.attributes | SEG_DB)),
    "CS not present": replace(LONG, cs=replace(CODE64, attributes=CODE64.attributes & ~SEG_P)),
    "CS is data": replace(PROT32, cs=DATA),
    "SS is code": replace(PROT32, ss=CODE32),
    "non-canonical RIP": replace(LONG, rip=0x0000_8000_0000_0000),
    "RIP above 4 GiB in 32-bit code": replace(PROT32, rip=1 << 32),
    "non-canonical GDTR": replace(LONG, gdtr=TableRegister(1 << 50, 0x27)),
    "bad PAT type": replace(LONG, pat=0x0007040600070402),
    "RFLAGS reserved": replace(LONG, rflags=0x2 | 1 << 3),
    "virtual-8086": replace(PROT32, rflags=0x2 | 1 << 17),
    "CR0 high bits": replace(LONG, cr0=LONG.cr0 | 1 << 32),
    "NW without CD": replace(PROT32, cr0=0x11 | 1 << 29),
    "CR4 reserved": replace(LONG, cr4=0x20 | 1 << 15),
    "EFER unsupported bit": replace(LONG, efer=LONG.efer | 1 << 1),
    "CR3 beyond 32 bits outside long mode": replace(PROT32, cr3=1 << 32),
    "PCIDE outside long mode": replace(PROT32, cr4=1 << 17),
    "G=1 with limit low bits clear": replace(PROT32, ds=replace(DATA, limit=0xFFFFF000)),
    "unencodable byte limit": replace(
        PROT32, ds=replace(DATA, limit=0x123456, attributes=DATA.attributes & ~SEG_G)
    ),
    "TR not a TSS": replace(LONG, tr=SegmentRegister(0, 0x67, 0x28, SEG_P | 0x9)),
    "LDTR not an LDT": replace(LONG, ldtr=SegmentRegister(0, 0x67, 0x30, SEG_P | 0x3)),
}


@pytest.mark.parametrize("name", sorted(BAD_CONTEXTS))
def test_start_vp_invalid_register_value(name: str) -> None:
    ctx = BAD_CONTEXTS[name]
    assert context_error(ctx) is not None
    p, hooks, _ = rig()
    put(p, start_input(1, ctx))
    assert status(call(p, C.HvCallStartVirtualProcessor)) == S.INVALID_REGISTER_VALUE
    assert hooks.starts == []


def test_context_normalization() -> None:
    byte_limit = replace(DATA, attributes=DATA.attributes & ~SEG_G)  # limit 0xFFFFFFFF, G=0
    ctx = replace(PROT32, ds=byte_limit, rflags=0)
    assert context_error(ctx) is None
    n = ctx.normalized()
    assert n.ds.granularity and n.ds.limit == 0xFFFFFFFF
    assert n.rflags == 0x2
    assert n.tr == RESET_TR and n.ldtr.present


@given(st.binary(min_size=224, max_size=224))
def test_context_pack_roundtrip_and_validation_never_raises(data: bytes) -> None:
    ctx = InitialVpContext.unpack(data)
    packed = ctx.pack()
    assert InitialVpContext.unpack(packed) == ctx
    assert packed[:152] == data[:152] and packed[184:] == data[184:]  # all but the table-register Pad[3]
    err = context_error(ctx)
    assert err is None or isinstance(err, str)
