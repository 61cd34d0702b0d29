"""The dispatcher's fast path (hv/hypercalls/dispatch.py, issue 13): per-control-word plans that follow
the table and the caps, batch rep handlers that give exactly what the element handlers give
(hypercall-interface.md "Hypercall Classes": elements in order, partial completion; "Hypercall
Continuation"), the fast-output chunk padding ("XMM Fast Hypercall Input/Output"), and trace ring
records."""

from __future__ import annotations

import dataclasses
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hv1.hv.caps import parse_profile
from hv1.hv.hypercalls import HypercallContext, HypercallDef, Kind, build_control
from hv1.hv.hypercalls.abi import write_fast_chunks
from hv1.hv.hypercalls.dispatch import PLANS_MAX, REP_BATCH
from hv1.hv.hypercalls.vp import get_vp_index_from_apic_id_batch, get_vp_index_from_apic_id_element
from hv1.hv.interfaces import UD_VECTOR, CpuMode, GuestException
from hv1.hv.partition import Partition
from hv1.tlfs.hypercalls import HypercallCode as C
from hv1.tlfs.status import HvStatus as S
from hv1.trace import Tracer
from tests.fakes import FakeRegs
from tests.unit.test_hypercalls_support import IN, OUT, RIP_AT_EXIT, STUB, call, make, regs_for, reps, status

GET_VP_INDEX = C.HvCallGetVpIndexFromApicId
REP_START_BITS = 0xFFF << 48  # control word bits 59:48
HEADER = struct.pack("<QB7x", (1 << 64) - 1, 0)  # HV_PARTITION_ID_SELF, VTL 0


def _element_only(p: Partition) -> None:
    """`p` with HvCallGetVpIndexFromApicId's batch handler removed: the element path."""
    d = p.hypercalls.defs[GET_VP_INDEX]
    assert d.batch is not None
    p.hypercalls.replace(dataclasses.replace(d, batch=None))


def _run_to_completion(p: Partition, r: FakeRegs) -> int:
    """Re-execute a rep call while it continues (RIP back on the stub); returns the exits taken."""
    exits = 1
    p.hypercall(0, r)
    while r.gprs["rip"] == STUB:
        r.gprs["rip"] = RIP_AT_EXIT
        p.hypercall(0, r)
        exits += 1
    return exits


apic_ids = st.lists(st.sampled_from([0, 1, 2, 3, 5, 0xFFFF_FFFF]), min_size=1, max_size=510)


@settings(max_examples=60, deadline=None)
@given(
    ids=apic_ids,
    start_frac=st.floats(min_value=0, max_value=0.99),
    budget=st.sampled_from([None, 1, 3, REP_BATCH, REP_BATCH + 1]),
    preempt=st.booleans(),
)
def test_batch_rep_path_gives_what_the_element_path_gives(
    ids: list[int], start_frac: float, budget: int | None, preempt: bool
) -> None:
    count = len(ids)
    start = int(start_frac * count)
    results = []
    for batched in (True, False):
        p, _ = make("default", vps=4)
        if not batched:
            _element_only(p)
        p.rep_budget_reps = budget
        p.memory.write(IN, HEADER + b"".join(struct.pack("<I4x", a) for a in ids))
        p.memory.write(OUT, b"\xa5" * 4096)
        p.vps[0].preempt_requested = preempt
        r = regs_for(build_control(GET_VP_INDEX, rep_count=count, rep_start=start), IN, OUT)
        exits = _run_to_completion(p, r)
        out = p.memory.read(OUT, 4096)
        counters = {k: v for k, v in p.counters.items() if k != "hypercall_continuations"}
        # Where a call continues is the hypervisor's choice ("Hypercall Continuation"): with a
        # preempt request the batch path yields after a slice, the element path after an element,
        # so RCX may hold another rep start; everything else is the same.
        gprs = dict(r.gprs, rcx=r.gprs["rcx"] & ~REP_START_BITS if preempt else r.gprs["rcx"])
        results.append((gprs, out, counters, None if preempt else exits))
    assert results[0] == results[1]


@settings(max_examples=40, deadline=None)
@given(ids=st.lists(st.sampled_from([0, 1, 7, 0xFFFF_FFFF]), min_size=1, max_size=12))
def test_fast_batch_rep_path_gives_what_the_element_path_gives(ids: list[int]) -> None:
    """The register form: header and elements in RDX:R8 and XMM, outputs in the chunks after them."""
    results = []
    for batched in (True, False):
        p, _ = make("default")
        if not batched:
            _element_only(p)
        block = HEADER + b"".join(struct.pack("<I4x", a) for a in ids)
        block += bytes(-len(block) % 16)
        p1, p2 = struct.unpack_from("<QQ", block)
        xmm = [int.from_bytes(block[i : i + 16], "little") for i in range(16, len(block), 16)]
        r = call(p, GET_VP_INDEX, p1, p2, fast=True, rep_count=len(ids), xmm=xmm + [0x5A] * (6 - len(xmm)))
        results.append((r.gprs, r.xmm))
    assert results[0] == results[1]


@settings(max_examples=80, deadline=None)
@given(
    ids=st.lists(st.sampled_from([0, 1, 2, 9, 0xFFFF_FFFF]), min_size=1, max_size=100),
    first=st.integers(0, 50),
)
def test_batch_handler_matches_the_element_handler_element_by_element(ids: list[int], first: int) -> None:
    p, _ = make("default", vps=3)
    ctx = HypercallContext(p, p.vps[0], GET_VP_INDEX, memoryview(HEADER), bytearray(0))
    elems_in = b"".join(struct.pack("<I4x", a) for a in ids)
    batch_out = bytearray(b"\xee" * (8 * len(ids)))
    status_b, done_b = get_vp_index_from_apic_id_batch(
        ctx, first, len(ids), memoryview(elems_in), memoryview(batch_out)
    )
    elem_out = bytearray(b"\xee" * (8 * len(ids)))
    done_e, status_e = 0, int(S.SUCCESS)
    for i in range(len(ids)):
        status_e = get_vp_index_from_apic_id_element(
            ctx, first + i, memoryview(elems_in)[8 * i : 8 * i + 8], memoryview(elem_out)[8 * i : 8 * i + 8]
        )
        if status_e != S.SUCCESS:
            break
        done_e += 1
    assert (status_b, done_b) == (status_e, done_e)
    assert batch_out[: 8 * done_b] == elem_out[: 8 * done_e]


def test_510_elements_are_answered_in_one_exit_with_one_read_and_one_write() -> None:
    p, _ = make("default", vps=2)
    reads: list[tuple[int, int]] = []
    writes: list[tuple[int, int]] = []
    mem = p.memory
    real_read, real_write = mem.read, mem.write
    mem.write(IN, HEADER + b"".join(struct.pack("<I4x", i & 1) for i in range(510)))

    def read(gpa: int, length: int) -> bytes:
        reads.append((gpa, length))
        return real_read(gpa, length)

    def write(gpa: int, data: bytes | bytearray | memoryview) -> None:
        writes.append((gpa, len(data)))
        real_write(gpa, data)

    mem.read, mem.write = read, write  # type: ignore[method-assign]
    r = call(p, GET_VP_INDEX, rep_count=510)
    assert (status(r), reps(r)) == (S.SUCCESS, 510)
    assert reads == [(IN, 16 + 510 * 8)] and writes == [(OUT, 510 * 8)]
    assert struct.unpack_from("<510Q", real_read(OUT, 510 * 8)) == tuple(i & 1 for i in range(510))


# --- plans ----------------------------------------------------------------------------------------


def _ok(ctx: HypercallContext) -> int:
    return S.SUCCESS


def test_a_plan_follows_a_call_registered_after_it_was_made() -> None:
    p, _ = make()
    code = 0x7FAA
    assert status(call(p, code, fast=True)) == S.INVALID_HYPERCALL_CODE
    p.hypercalls.register(HypercallDef(code, "TestLate", Kind.SIMPLE, _ok))
    assert status(call(p, code, fast=True)) == S.SUCCESS
    p.hypercalls.replace(HypercallDef(code, "TestLate", Kind.SIMPLE, _ok, fast=False))
    assert status(call(p, code, fast=True)) == S.INVALID_HYPERCALL_INPUT


def test_a_plan_follows_the_partition_caps() -> None:
    p, _ = make("default")
    assert status(call(p, C.HvExtCallQueryCapabilities, fast=True)) == S.SUCCESS
    p.caps = parse_profile("minimal")  # no extended hypercalls
    assert status(call(p, C.HvExtCallQueryCapabilities, fast=True)) == S.INVALID_HYPERCALL_CODE


def test_random_control_words_do_not_grow_the_plan_cache_without_bound() -> None:
    p, _ = make()
    for rep_count in range(PLANS_MAX + 50):
        call(p, C.HvExtCallQueryCapabilities, fast=True, rep_count=rep_count & 0xFFF)
    assert len(p.hypercalls.plans) <= PLANS_MAX


def test_the_same_control_word_in_both_conventions_has_two_plans() -> None:
    p, _ = make("default")
    # Register output from a 32-bit caller is #UD (inventory §7.18); from a 64-bit caller it is the
    # null call: one control word, two plans.
    assert status(call(p, C.HvExtCallQueryCapabilities, fast=True)) == S.SUCCESS
    with pytest.raises(GuestException) as e:
        call(p, C.HvExtCallQueryCapabilities, fast=True, mode=CpuMode.PROTECTED)
    assert e.value.vector == UD_VECTOR
    assert status(call(p, C.HvExtCallQueryCapabilities, fast=True)) == S.SUCCESS


# --- fast output chunks, trace records --------------------------------------------------------------


def test_partial_fast_output_chunks_are_written_zero_padded() -> None:
    r = FakeRegs()
    r.gprs["r8"] = 0x1111
    r.xmm[1] = (1 << 128) - 1
    write_fast_chunks(r, 0, struct.pack("<Q", 0xABCD))
    assert (r.gprs["rdx"], r.gprs["r8"]) == (0xABCD, 0)
    write_fast_chunks(r, 1, bytes(range(16)) + struct.pack("<Q", 7))
    assert r.xmm[0] == int.from_bytes(bytes(range(16)), "little")
    assert r.xmm[1] == 7
    write_fast_chunks(r, 2, b"\x01\x02\x03")
    assert r.xmm[1] == 0x030201


def test_untraced_hypercalls_are_in_the_ring_buffer_without_a_duration() -> None:
    tracer = Tracer()  # nothing enabled: the ring buffer only
    p, _ = make(tracer=tracer)
    call(p, C.HvExtCallQueryCapabilities, fast=True)
    last = tracer.last_events()[-1]
    assert "HvExtCallQueryCapabilities" in last and "status=SUCCESS" in last and "ns=" not in last


def test_traced_hypercalls_carry_their_duration() -> None:
    import io
    import json

    out = io.StringIO()
    tracer = Tracer(json_out=out)
    p, _ = make(tracer=tracer)
    call(p, C.HvExtCallQueryCapabilities, fast=True)
    rec = json.loads(out.getvalue().splitlines()[-1])
    assert rec["event"] == "HvExtCallQueryCapabilities" and rec["status"] == "SUCCESS"
    assert rec["ns"] >= 0 and "us" in rec


# --- the registers the dispatcher reads first: KvmVcpu.mode() / cpl() from the kvm_run sync area -----


@pytest.mark.parametrize("cr0", [0, 1, 0x80000011])
@pytest.mark.parametrize("efer", [0, 1 << 10, 0xD01])
@pytest.mark.parametrize("cs_l", [0, 1])
@pytest.mark.parametrize("dpl", [0, 3])
def test_kvm_mode_and_cpl_read_the_sync_sregs_as_the_ctypes_struct_has_them(
    cr0: int, efer: int, cs_l: int, dpl: int
) -> None:
    """mode()/cpl() index kvm_run directly (issue 13); the sync area's kvm_sregs is the reference."""
    import mmap

    from hv1.backends.kvm.vcpu import KvmVcpu

    v = KvmVcpu.over(0, -1, mmap.mmap(-1, 8192))
    s = v.sregs
    s.cr0, s.efer, s.cs.l, s.ss.dpl = cr0, efer, cs_l, dpl
    s.cs.dpl, s.ss.l = 3 - dpl, 1 - cs_l  # neighbours that must not be read instead
    if not cr0 & 1:
        want_mode, want_cpl = CpuMode.REAL, 0
    else:
        want_mode = CpuMode.LONG if efer & (1 << 10) and cs_l else CpuMode.PROTECTED
        want_cpl = dpl
    assert (v.mode(), v.cpl()) == (want_mode, want_cpl)
