"""The hypercall ABI in the dispatcher (hv/hypercalls/dispatch.py, abi.py): TLFS
hypercall-interface.md and tlfs-inventory.md §4. Test hypercalls with codes 0x7Fxx exercise shapes
that no implemented call has yet (variable headers, 20-byte XMM input, 80-byte XMM output)."""

from __future__ import annotations

import io
import struct

import pytest

from hv1.hv.caps import parse_profile
from hv1.hv.hypercalls import HypercallContext, HypercallDef, Kind, build_control, format_table
from hv1.hv.interfaces import UD_VECTOR, CpuMode, GuestException
from hv1.hv.partition import Partition
from hv1.tlfs.hypercalls import HypercallCode as C
from hv1.tlfs.status import HvStatus as S
from hv1.trace import Tracer
from tests.unit.test_hypercalls_support import (
    IN,
    OUT,
    PAGE,
    RAM,
    RIP_AT_EXIT,
    STUB,
    call,
    make,
    regs_for,
    reps,
    result,
    status,
    to_xmm,
    xmm_bytes,
)

T_SIMPLE = 0x7F01  # 16 in -> 16 out (halves swapped)
T_VAR = 0x7F02  # variable header: 8 fixed; out = header length, sum of qwords
T_VAR_REP = 0x7F03  # variable rep: 8 fixed + var; elements 8 -> 8 (in + first var qword)
T_X20 = 0x7F04  # 20 in -> 80 out
T_REP = 0x7F05  # rep: header {fail_at u64}; elements 8 -> 8 (x2); element fail_at fails
T_NOFAST = 0x7F06  # fast not allowed
T_NOXMM = 0x7F07  # 24 in, no output, xmm not allowed
T_PTR = 0x7F08  # 8 in: a GPA the handler reads (GpaError path)
T_IN24 = 0x7F09  # 24 in, no output


def _swap(ctx: HypercallContext) -> int:
    a, b = struct.unpack_from("<QQ", ctx.input)
    struct.pack_into("<QQ", ctx.output, 0, b, a)
    return S.SUCCESS


def _var(ctx: HypercallContext) -> int:
    n = len(ctx.input)
    qwords = struct.unpack_from(f"<{n // 8}Q", ctx.input)
    struct.pack_into("<QQ", ctx.output, 0, n, sum(qwords) & ((1 << 64) - 1))
    return S.SUCCESS


def _var_rep_elem(ctx: HypercallContext, i: int, ein: memoryview, eout: memoryview) -> int:
    (v,) = struct.unpack_from("<Q", ein)
    (first_var,) = struct.unpack_from("<Q", ctx.input, 8)
    struct.pack_into("<Q", eout, 0, (v + first_var) & ((1 << 64) - 1))
    return S.SUCCESS


def _x20(ctx: HypercallContext) -> int:
    data = bytes(ctx.input)
    assert len(data) == 20
    ctx.output[:] = (data * 4)[:80]
    return S.SUCCESS


def _rep_elem(ctx: HypercallContext, i: int, ein: memoryview, eout: memoryview) -> int:
    (fail_at,) = struct.unpack_from("<Q", ctx.input)
    if i == fail_at:
        return S.INVALID_PARAMETER
    (v,) = struct.unpack_from("<Q", ein)
    struct.pack_into("<Q", eout, 0, (2 * v) & ((1 << 64) - 1))
    ctx.partition.counters["test_elements"] += 1
    return S.SUCCESS


def _ok(ctx: HypercallContext) -> int:
    return S.SUCCESS


def _ptr(ctx: HypercallContext) -> int:
    (gpa,) = struct.unpack_from("<Q", ctx.input)
    ctx.partition.memory.read(gpa, 8)
    return S.SUCCESS


TEST_DEFS = [
    HypercallDef(T_SIMPLE, "TestSimple", Kind.SIMPLE, _swap, input_size=16, output_size=16),
    HypercallDef(T_VAR, "TestVariable", Kind.VARIABLE, _var, input_size=8, output_size=16),
    HypercallDef(
        T_VAR_REP,
        "TestVariableRep",
        Kind.VARIABLE_REP,
        None,
        _var_rep_elem,
        input_size=8,
        rep_input_size=8,
        rep_output_size=8,
    ),  # fmt: skip
    HypercallDef(T_X20, "TestXmm20", Kind.SIMPLE, _x20, input_size=20, output_size=80),
    HypercallDef(
        T_REP, "TestRep", Kind.REP, None, _rep_elem, input_size=8, rep_input_size=8, rep_output_size=8
    ),
    HypercallDef(T_NOFAST, "TestNoFast", Kind.SIMPLE, _ok, input_size=8, fast=False),
    HypercallDef(T_NOXMM, "TestNoXmm", Kind.SIMPLE, _ok, input_size=24, xmm=False),
    HypercallDef(T_PTR, "TestPointer", Kind.SIMPLE, _ptr, input_size=8),
    HypercallDef(T_IN24, "TestIn24", Kind.SIMPLE, _ok, input_size=24),
]

NO_FAIL = 0xFFFF


def make_test(profile: str = "default", **kw: object) -> Partition:
    p, _ = make(profile, **kw)  # type: ignore[arg-type]
    for d in TEST_DEFS:
        p.hypercalls.register(d)
    return p


def put(p: Partition, gpa: int, fmt: str, *vals: int) -> None:
    p.memory.write(gpa, struct.pack(fmt, *vals))


def get(p: Partition, gpa: int, fmt: str) -> tuple[int, ...]:
    return struct.unpack(fmt, p.memory.read(gpa, struct.calcsize(fmt)))


# --- legal environments (hypercall-interface.md "Legal Hypercall Environments") -------------------


@pytest.mark.parametrize(
    ("mode", "cpl"), [(CpuMode.LONG, 3), (CpuMode.LONG, 1), (CpuMode.PROTECTED, 3), (CpuMode.REAL, 0)]
)
def test_illegal_environment_raises_ud(mode: CpuMode, cpl: int) -> None:
    p = make_test()
    r = regs_for(T_SIMPLE, IN, OUT, mode=mode, cpl=cpl)
    r.gprs["rax"] = 0x1234
    before = dict(r.gprs)
    with pytest.raises(GuestException) as e:
        p.hypercall(0, r)
    assert e.value.vector == UD_VECTOR
    assert r.gprs == before  # no status returned, nothing changed
    assert p.counters["hypercall_ud"] == 1


def test_protected_mode_cpl0_is_legal_and_uses_32bit_registers() -> None:
    p = make_test()
    put(p, IN, "<QQ", 0x1111_2222_3333_4444, 0x5555_6666_7777_8888)
    r = call(p, T_SIMPLE, mode=CpuMode.PROTECTED)
    assert status(r) == S.SUCCESS and r.gprs["rdx"] == 0 and r.gprs["rax"] == 0
    assert get(p, OUT, "<QQ") == (0x5555_6666_7777_8888, 0x1111_2222_3333_4444)


# --- call codes and gates -------------------------------------------------------------------------


@pytest.mark.parametrize("code", [0x0000, 0x0001, 0x0050, 0x7FFF, 0x8004, 0xFFFF])
def test_unknown_code_invalid_hypercall_code(code: int) -> None:
    p = make_test()
    r = call(p, code, p1=3, p2=5)  # garbage GPAs do not matter
    assert result(r) == S.INVALID_HYPERCALL_CODE


def test_not_advertised_extended_call_is_invalid_code_quietly() -> None:
    p = make_test("minimal")
    assert status(call(p, C.HvExtCallQueryCapabilities)) == S.INVALID_HYPERCALL_CODE


def test_missing_privilege_access_denied() -> None:
    p = make_test("default")
    assert status(call(p, C.HvCallGetPartitionId)) == S.ACCESS_DENIED


# --- control word (hypercall-interface.md "Hypercall Inputs") -------------------------------------


@pytest.mark.parametrize("bit", [27, 28, 29, 30, 31, 44, 45, 46, 47, 60, 61, 62, 63])
def test_reserved_control_bits_invalid_input(bit: int) -> None:
    """RsvdZ 30:27, 47:44, 63:60 and Is Nested (31, hv1 is not nested: caps.DEVIATIONS)."""
    p = make_test()
    assert result(call(p, T_SIMPLE, extra=1 << bit)) == S.INVALID_HYPERCALL_INPUT
    assert result(call(p, T_REP, rep_count=1, extra=1 << bit)) == S.INVALID_HYPERCALL_INPUT


def test_reserved_bits_checked_after_privilege() -> None:
    """ACCESS_DENIED wins over other errors ("Ordering of Error Conditions")."""
    p = make_test()
    assert status(call(p, C.HvCallGetPartitionId, extra=1 << 63)) == S.ACCESS_DENIED


@pytest.mark.parametrize(("rep_count", "rep_start"), [(1, 0), (0, 1), (4095, 4094)])
def test_rep_fields_on_simple_call_invalid_input(rep_count: int, rep_start: int) -> None:
    p = make_test()
    assert status(call(p, T_SIMPLE, rep_count=rep_count, rep_start=rep_start)) == S.INVALID_HYPERCALL_INPUT


@pytest.mark.parametrize(("rep_count", "rep_start"), [(0, 0), (3, 3), (3, 4), (1, 4095), (0, 5)])
def test_bad_rep_count_or_start_on_rep_call_invalid_input(rep_count: int, rep_start: int) -> None:
    p = make_test()
    assert status(call(p, T_REP, rep_count=rep_count, rep_start=rep_start)) == S.INVALID_HYPERCALL_INPUT


@pytest.mark.parametrize("code", [T_SIMPLE, T_REP])
def test_var_header_on_fixed_header_call_invalid_input(code: int) -> None:
    p = make_test()
    rc = 1 if code == T_REP else 0
    assert status(call(p, code, rep_count=rc, var_header=1)) == S.INVALID_HYPERCALL_INPUT


@pytest.mark.parametrize("qwords", [0, 1, 3, 20])
def test_variable_header_size_in_qwords(qwords: int) -> None:
    p = make_test()
    vals = [1 + i for i in range(1 + qwords)]
    put(p, IN, f"<{len(vals)}Q", *vals)
    r = call(p, T_VAR, var_header=qwords)
    assert status(r) == S.SUCCESS
    assert get(p, OUT, "<QQ") == (8 + 8 * qwords, sum(vals))


def test_variable_rep_elements_follow_the_variable_header() -> None:
    """ "the rep elements lie after the header ... the header's total size includes both the fixed
    and variable portions"."""
    p = make_test()
    put(p, IN, "<QQQQQ", 0, 1000, 2000, 1, 2)  # fixed, 2 var qwords, then elements 1, 2
    r = call(p, T_VAR_REP, var_header=2, rep_count=2)
    assert (status(r), reps(r)) == (S.SUCCESS, 2)
    assert get(p, OUT, "<QQ") == (1001, 1002)


def test_variable_header_too_big_for_a_page_is_alignment() -> None:
    p = make_test()
    assert status(call(p, T_VAR, var_header=0x3FF)) == S.INVALID_ALIGNMENT  # 8 + 8184 bytes


# --- memory-based parameters (hypercall-interface.md "Alignment Requirements") --------------------


@pytest.mark.parametrize(
    "gpa",
    [IN + 4, IN + 1, IN + PAGE - 8, RAM - 8, RAM, 1 << 40, (1 << 64) - 8, (1 << 64) - 16],
)
def test_bad_input_gpa_invalid_alignment(gpa: int) -> None:
    """Not 8-byte aligned, spanning a page (16-byte block at page end - 8), or outside the GPA space."""
    p = make_test()
    assert result(call(p, T_SIMPLE, p1=gpa)) == S.INVALID_ALIGNMENT


@pytest.mark.parametrize("gpa", [OUT + 2, OUT + PAGE - 8, RAM - 8, RAM + PAGE, 1 << 52])
def test_bad_output_gpa_invalid_alignment(gpa: int) -> None:
    p = make_test()
    assert result(call(p, T_SIMPLE, p2=gpa)) == S.INVALID_ALIGNMENT


def test_rep_list_crossing_a_page_invalid_alignment() -> None:
    p = make_test()
    # header 8 + 511 elements of 8 = 4096: fits exactly at a page start; 512 elements do not.
    put(p, IN, "<Q", NO_FAIL)
    assert status(call(p, T_REP, rep_count=511)) == S.SUCCESS
    assert status(call(p, T_REP, rep_count=512)) == S.INVALID_ALIGNMENT
    assert status(call(p, T_REP, p1=IN + 8, rep_count=511)) == S.INVALID_ALIGNMENT


def test_gpa_registers_ignored_without_input_or_output() -> None:
    p = make_test()
    r = call(p, C.HvExtCallQueryCapabilities, p1=3, p2=OUT)  # no input: RDX ignored
    assert status(r) == S.SUCCESS
    r = call(p, C.HvCallNotifyLongSpinWait, p1=IN, p2=7)  # no output: R8 ignored
    assert status(r) == S.SUCCESS


def test_output_written_only_on_success() -> None:
    p = make_test("default,+partition-properties")
    p.memory.write(OUT, b"\xee" * 8)
    put(p, IN, "<QII", 0xFFFF_FFFF_FFFF_FFFF, 0xDEAD, 0)
    assert status(call(p, C.HvCallGetPartitionProperty)) == S.UNKNOWN_PROPERTY
    assert p.memory.read(OUT, 8) == b"\xee" * 8


def test_handler_following_a_bad_guest_pointer_gets_invalid_parameter() -> None:
    p = make_test()
    put(p, IN, "<Q", RAM + 8)
    assert status(call(p, T_PTR)) == S.INVALID_PARAMETER


# --- register-based (fast) calls ------------------------------------------------------------------


def test_fast_gpr_input_needs_no_cpuid_feature() -> None:
    p = make_test("minimal")
    r = call(p, C.HvCallNotifyLongSpinWait, p1=0x1000, p2=0, fast=True)
    assert result(r) == S.SUCCESS


def test_fast_call_not_allowed_invalid_input() -> None:
    p = make_test()
    assert status(call(p, T_NOFAST, p1=1, fast=True)) == S.INVALID_HYPERCALL_INPUT


def test_fast_output_goes_to_the_chunk_after_the_input() -> None:
    """16-byte input in RDX:R8 -> output from XMM0 ("XMM Fast Hypercall Output")."""
    p = make_test()
    r = call(p, T_SIMPLE, p1=0xAAAA, p2=0xBBBB, fast=True)
    assert status(r) == S.SUCCESS
    assert r.xmm[0] == 0xBBBB | 0xAAAA << 64
    assert (r.gprs["rdx"], r.gprs["r8"]) == (0xAAAA, 0xBBBB)  # input registers preserved


def test_fast_output_with_no_input_starts_at_rdx() -> None:
    p = make_test("default,+partition-id")
    r = call(p, C.HvCallGetPartitionId, p1=0x55, p2=0x66, fast=True)
    assert status(r) == S.SUCCESS
    assert (r.gprs["rdx"], r.gprs["r8"]) == (p.partition_id, 0)


def test_xmm_input_20_bytes_output_80_bytes_in_xmm1_to_xmm5() -> None:
    """The TLFS example: a 20-byte input consumes RDX, R8, XMM0 (bytes 20-31 ignored); up to 80 bytes
    of output come back in XMM1-XMM5."""
    p = make_test()
    data = bytes(range(1, 21))
    xmm0 = int.from_bytes(data[16:] + b"\xff" * 12, "little")  # junk beyond the input is ignored
    r = call(
        p, T_X20, int.from_bytes(data[:8], "little"), int.from_bytes(data[8:16], "little"), fast=True,
        xmm=[xmm0, 0, 0, 0, 0, 0],
    )  # fmt: skip
    assert status(r) == S.SUCCESS
    assert xmm_bytes(r, 1, 5) == (data * 4)[:80]
    assert r.xmm[0] == xmm0  # input XMM preserved


def test_xmm_input_without_cpuid_bit_is_ud() -> None:
    p = make_test("default,-xmm-input")
    with pytest.raises(GuestException) as e:
        call(p, T_IN24, p1=1, p2=2, fast=True)
    assert e.value.vector == UD_VECTOR


def test_register_output_without_cpuid_bit_is_ud() -> None:
    p = make_test("default,-xmm-output")
    with pytest.raises(GuestException) as e:
        call(p, T_SIMPLE, p1=1, p2=2, fast=True)
    assert e.value.vector == UD_VECTOR
    assert status(call(p, T_IN24, p1=1, p2=2, fast=True)) == S.SUCCESS  # input alone is fine


def test_xmm_not_allowed_for_call_invalid_input() -> None:
    p = make_test()
    assert status(call(p, T_NOXMM, p1=1, p2=2, fast=True)) == S.INVALID_HYPERCALL_INPUT


def test_fast_block_over_112_bytes_invalid_input() -> None:
    p = make_test()
    # rep: 8 header + n*8 in, n*8 out. n=6: in 56 (4 chunks) + out 48 = 112 bytes fits; n=7 does not.
    # Block: RDX = header, R8 = element 0, XMM0-XMM2 = elements 1-5; output from chunk 4 = XMM3.
    r = call(
        p, T_REP, p1=NO_FAIL, p2=1, fast=True, rep_count=6, xmm=to_xmm(struct.pack("<5Q", 2, 3, 4, 5, 6))
    )
    assert (status(r), reps(r)) == (S.SUCCESS, 6)
    assert struct.unpack("<6Q", xmm_bytes(r, 3, 3)) == (2, 4, 6, 8, 10, 12)
    assert status(call(p, T_REP, p1=NO_FAIL, fast=True, rep_count=7)) == S.INVALID_HYPERCALL_INPUT
    # memory form of the same call has no such limit
    put(p, IN, "<Q", NO_FAIL)
    assert status(call(p, T_REP, rep_count=7)) == S.SUCCESS


def test_32bit_fast_call_registers() -> None:
    p = make_test()
    r = call(p, C.HvCallNotifyLongSpinWait, p1=0x1_0000_0020, p2=0, fast=True, mode=CpuMode.PROTECTED)
    assert result(r) == S.SUCCESS


def test_32bit_xmm_input_allowed() -> None:
    p = make_test()
    assert status(call(p, T_IN24, p1=1, p2=2, fast=True, mode=CpuMode.PROTECTED)) == S.SUCCESS


def test_32bit_register_output_is_ud() -> None:
    """XMM fast output "is only supported on x64 platforms" (caps.DEVIATIONS)."""
    p = make_test()
    with pytest.raises(GuestException):
        call(p, T_SIMPLE, p1=1, p2=2, fast=True, mode=CpuMode.PROTECTED)


def test_32bit_memory_call_uses_ebx_ecx_and_edi_esi() -> None:
    p = make_test()
    hi_in, hi_out = 0x2_0000_0000, 0x3_0000_0000
    # GPAs above 4 GiB in EBX:ECX / EDI:ESI are outside RAM: proves the high halves are used.
    assert status(call(p, T_SIMPLE, p1=hi_in | IN, mode=CpuMode.PROTECTED)) == S.INVALID_ALIGNMENT
    assert status(call(p, T_SIMPLE, p2=hi_out | OUT, mode=CpuMode.PROTECTED)) == S.INVALID_ALIGNMENT
    assert status(call(p, T_SIMPLE, mode=CpuMode.PROTECTED)) == S.SUCCESS


# --- rep calls (hypercall-interface.md "Hypercall Classes") ---------------------------------------


def test_rep_call_processes_all_elements() -> None:
    p = make_test()
    put(p, IN, "<6Q", NO_FAIL, 1, 2, 3, 4, 5)
    r = call(p, T_REP, rep_count=5)
    assert (status(r), reps(r)) == (S.SUCCESS, 5)
    assert get(p, OUT, "<5Q") == (2, 4, 6, 8, 10)


def test_rep_partial_completion_on_error() -> None:
    """ "an appropriate status code is provided along with a reps completed count"; outputs of the
    completed elements are valid, the rest untouched."""
    p = make_test()
    put(p, IN, "<7Q", 3, 1, 2, 3, 4, 5, 6)
    p.memory.write(OUT, b"\xee" * 48)
    r = call(p, T_REP, rep_count=6)
    assert (status(r), reps(r)) == (S.INVALID_PARAMETER, 3)
    assert get(p, OUT, "<3Q") == (2, 4, 6)
    assert p.memory.read(OUT + 24, 24) == b"\xee" * 24


def test_reps_completed_is_absolute_not_relative_to_start() -> None:
    """ "if the caller specified a rep start index of 5, and a rep count of 10, the reps complete field
    would indicate 10 upon successful completion"."""
    p = make_test()
    put(p, IN, "<11Q", NO_FAIL, *range(10))
    p.memory.write(OUT, b"\xee" * 80)
    r = call(p, T_REP, rep_count=10, rep_start=5)
    assert (status(r), reps(r)) == (S.SUCCESS, 10)
    assert p.memory.read(OUT, 40) == b"\xee" * 40  # elements before the start are not touched
    assert get(p, OUT + 40, "<5Q") == (10, 12, 14, 16, 18)
    assert p.counters["test_elements"] == 5


# --- continuation (hypercall-interface.md "Hypercall Continuation") -------------------------------


def reexecute(p: Partition, r: object) -> None:
    """The guest resumes at the stub start and executes `out` again: the exit reports RIP at `ret`."""
    regs = r
    assert regs.gprs["rip"] == STUB  # type: ignore[attr-defined]
    regs.gprs["rip"] = RIP_AT_EXIT  # type: ignore[attr-defined]
    p.hypercall(0, regs)  # type: ignore[arg-type]


def test_rep_continuation_rewinds_rip_and_updates_rep_start() -> None:
    p = make_test()
    p.rep_budget_reps = 2
    put(p, IN, "<6Q", NO_FAIL, 1, 2, 3, 4, 5)
    r = regs_for(0, IN, OUT)
    r.gprs["rcx"] = build_control(T_REP, rep_count=5)
    r.gprs["rax"] = 0xA5A5
    p.hypercall(0, r)
    assert r.gprs["rip"] == STUB
    assert r.gprs["rcx"] == build_control(T_REP, rep_count=5, rep_start=2)
    assert r.gprs["rax"] == 0xA5A5  # no result yet
    assert get(p, OUT, "<2Q") == (2, 4)  # completed elements already written
    reexecute(p, r)
    assert r.gprs["rcx"] == build_control(T_REP, rep_count=5, rep_start=4)
    reexecute(p, r)
    assert r.gprs["rip"] == RIP_AT_EXIT
    assert (status(r), reps(r)) == (S.SUCCESS, 5)
    assert get(p, OUT, "<5Q") == (2, 4, 6, 8, 10)
    assert p.counters["hypercall_continuations"] == 2
    assert p.counters["hypercalls.TestRep"] == 1


def test_rep_continuation_32bit_updates_edx_eax() -> None:
    p = make_test()
    p.rep_budget_reps = 1
    put(p, IN, "<3Q", NO_FAIL, 1, 2)
    r = call(p, T_REP, rep_count=2, mode=CpuMode.PROTECTED)
    assert r.gprs["rip"] == STUB
    assert (r.gprs["rdx"] << 32 | r.gprs["rax"]) == build_control(T_REP, rep_count=2, rep_start=1)
    reexecute(p, r)
    assert (status(r), reps(r)) == (S.SUCCESS, 2)


def test_rep_continuation_keeps_earlier_fast_outputs() -> None:
    p = make_test()
    p.rep_budget_reps = 2
    r = call(p, T_REP, p1=NO_FAIL, p2=1, fast=True, rep_count=5, xmm=to_xmm(struct.pack("<4Q", 2, 3, 4, 5)))
    for _ in range(2):
        reexecute(p, r)
    assert (status(r), reps(r)) == (S.SUCCESS, 5)
    # input: 8 + 40 = 48 bytes = 3 chunks; output from chunk 3 = XMM2
    assert struct.unpack("<5Q", xmm_bytes(r, 2, 3)[:40]) == (2, 4, 6, 8, 10)


def test_rep_continuation_on_time_budget_and_preempt_request() -> None:
    p = make_test()
    put(p, IN, "<4Q", NO_FAIL, 1, 2, 3)
    p.rep_budget_ns = 0  # every exit is over budget: one element per exit ("at least one rep")
    r = call(p, T_REP, rep_count=3)
    assert r.gprs["rip"] == STUB and p.counters["test_elements"] == 1
    p.rep_budget_ns = 10**12
    p.vps[0].preempt_requested = True  # e.g. an interrupt is waiting for this VP
    reexecute(p, r)
    assert r.gprs["rip"] == STUB and p.counters["test_elements"] == 2
    assert not p.vps[0].preempt_requested
    reexecute(p, r)
    assert (status(r), reps(r)) == (S.SUCCESS, 3)


def test_no_continuation_after_the_last_element_or_an_error() -> None:
    p = make_test()
    p.rep_budget_reps = 1
    put(p, IN, "<2Q", NO_FAIL, 1)
    r = call(p, T_REP, rep_count=1)
    assert r.gprs["rip"] == RIP_AT_EXIT and (status(r), reps(r)) == (S.SUCCESS, 1)
    put(p, IN, "<3Q", 0, 1, 2)
    r = call(p, T_REP, rep_count=2)
    assert r.gprs["rip"] == RIP_AT_EXIT and (status(r), reps(r)) == (S.INVALID_PARAMETER, 0)


# --- trace, counters, table -----------------------------------------------------------------------


def test_one_trace_line_per_hypercall() -> None:
    out = io.StringIO()
    p, _ = make(tracer=Tracer(["hypercalls"], text=out))
    call(p, C.HvCallNotifyLongSpinWait, p1=5, fast=True, vp=1)
    call(p, 0x1234)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert "vp1" in lines[0] and "HvCallNotifyLongSpinWait code=8 fast=true xmm=false" in lines[0]
    assert "status=SUCCESS reps=0 us=" in lines[0]
    assert "status=INVALID_HYPERCALL_CODE" in lines[1]
    assert p.counters["hypercalls.HvCallNotifyLongSpinWait"] == 1


def test_format_table_lists_every_call() -> None:
    text = format_table()
    for name in (
        "HvCallNotifyLongSpinWait", "HvCallGetVpIndexFromApicId", "HvCallGetPartitionId",
        "HvCallGetPartitionProperty", "HvExtCallQueryCapabilities", "HvExtCallGetBootZeroedMemory",
        "HvExtCallMemoryHeatHint",
    ):  # fmt: skip
        assert name in text
    assert "0x009a" in text and "rep" in text
    p = make_test()
    text = format_table(p.hypercalls, parse_profile("minimal"))
    assert "TestXmm20" in text and "/ no" in text


def test_table_rejects_duplicates_and_bad_shapes() -> None:
    p = make_test()
    with pytest.raises(ValueError, match="already registered"):
        p.hypercalls.register(TEST_DEFS[0])
    with pytest.raises(ValueError):
        HypercallDef(0x7F50, "BadRep", Kind.REP, None)
    with pytest.raises(ValueError):
        HypercallDef(0x7F51, "BadSimple", Kind.SIMPLE, None)
    with pytest.raises(ValueError):
        HypercallDef(0x7F52, "BadSimple2", Kind.SIMPLE, _ok, rep_input_size=8)


def test_control_parse_cache_is_exact_and_bounded() -> None:
    """Control.parse caches decoded words; a guest cycling through random words cannot grow it."""
    import random

    from hv1.hv.hypercalls import abi

    rnd = random.Random(7)
    for _ in range(3 * abi._PARSED_MAX):
        raw = rnd.getrandbits(64)
        assert abi.Control.parse(raw) == abi.Control._decode(raw)
        assert len(abi._PARSED) <= abi._PARSED_MAX
    assert abi.Control.parse(1 << 70 | 0x10008) == abi.Control._decode(0x10008)  # masked to 64 bits
