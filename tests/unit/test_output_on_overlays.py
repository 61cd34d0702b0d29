"""Hypercall output on the read/execute-only hypercall page (issue 9, bug 8).

hypercall-interface.md "Hypercall Page": the page's "contents are readable and executable by the
guest. Attempts to write to the hypercall page will result in a protection (#GP) exception".
"Alignment Requirements": for a call with output "the hypervisor will validate that the partition can
write to the output page ... the specified GPA is mapped and the GPA is marked writable". hv1 answers
that failed validation like the one for a GPA outside RAM, HV_STATUS_INVALID_ALIGNMENT, before the call
runs, and never writes into the page. Overlays the guest may write (SIMP, SIEFP, VP assist) are
written as the guest would see them (the TLFS leaves that case undefined).
"""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from hv1.hv.hypercall_page import PAGE_CONTENT
from hv1.hv.partition import Partition
from hv1.tlfs import msrs as M
from hv1.tlfs.hypercalls import HypercallCode as C
from hv1.tlfs.status import HvStatus as S
from tests.unit.test_hypercalls_support import IN, PAGE, call, make, reps, status

HC_GPFN = 0x20  # the hypercall page at GPA 0x20000
HC_GPA = HC_GPFN * PAGE
ENABLE = 1


def with_hypercall_page() -> Partition:
    p, _ = make()
    p.wrmsr(0, M.HV_X64_MSR_GUEST_OS_ID, 0x8100_0000_0000_0000)
    p.wrmsr(0, M.HV_X64_MSR_HYPERCALL, HC_GPFN << 12 | ENABLE)
    assert p.memory.read(HC_GPA, PAGE) == PAGE_CONTENT
    return p


def test_simple_call_output_on_the_hypercall_page_is_invalid_alignment_and_writes_nothing() -> None:
    p = with_hypercall_page()
    for off in (0, 0x10, 0xFF8):  # on the 64-bit stub, the 32-bit stub, the last qword
        r = call(p, C.HvExtCallQueryCapabilities, p2=HC_GPA + off)
        assert status(r) == S.INVALID_ALIGNMENT
        assert p.memory.read(HC_GPA, PAGE) == PAGE_CONTENT
    # The same call with an ordinary output page succeeds.
    assert status(call(p, C.HvExtCallQueryCapabilities, p2=0x30000)) == S.SUCCESS


def test_rep_call_output_on_the_hypercall_page_completes_no_element() -> None:
    p = with_hypercall_page()
    p.memory.write(IN, struct.pack("<QQ", 1, 0) + struct.pack("<II", 0, 1))  # partition, vtl, APIC IDs 0, 1
    r = call(p, C.HvCallGetVpIndexFromApicId, p2=HC_GPA + 0x100, rep_count=2)
    assert status(r) == S.INVALID_ALIGNMENT and reps(r) == 0
    assert p.memory.read(HC_GPA, PAGE) == PAGE_CONTENT


def test_output_on_a_writable_overlay_over_the_hypercall_page_is_written_there() -> None:
    """Stacked overlays: the most recently mapped one is visible (PDF §5.2.1). A SIMP over the
    hypercall page is what the guest sees and may write; the hidden hypercall page is untouched."""
    p = with_hypercall_page()
    p.wrmsr(0, M.HV_X64_MSR_SIMP, HC_GPFN << 12 | ENABLE)
    assert status(call(p, C.HvExtCallQueryCapabilities, p2=HC_GPA + 0x800)) == S.SUCCESS
    p.wrmsr(0, M.HV_X64_MSR_SIMP, 0)  # the hypercall page is visible again, intact
    assert p.memory.read(HC_GPA, PAGE) == PAGE_CONTENT
    assert status(call(p, C.HvExtCallQueryCapabilities, p2=HC_GPA + 0x800)) == S.INVALID_ALIGNMENT


def test_hypercall_page_over_a_simp_still_refuses_output() -> None:
    p, _ = make()
    p.wrmsr(0, M.HV_X64_MSR_GUEST_OS_ID, 0x8100_0000_0000_0000)
    p.wrmsr(0, M.HV_X64_MSR_SIMP, HC_GPFN << 12 | ENABLE)
    p.wrmsr(0, M.HV_X64_MSR_HYPERCALL, HC_GPFN << 12 | ENABLE)  # mapped last: visible
    assert status(call(p, C.HvExtCallQueryCapabilities, p2=HC_GPA)) == S.INVALID_ALIGNMENT
    assert p.memory.read(HC_GPA, PAGE) == PAGE_CONTENT


def test_output_after_the_hypercall_page_moved_away_is_ordinary_ram() -> None:
    p = with_hypercall_page()
    p.wrmsr(0, M.HV_X64_MSR_HYPERCALL, (HC_GPFN + 1) << 12 | ENABLE)
    assert status(call(p, C.HvExtCallQueryCapabilities, p2=HC_GPA)) == S.SUCCESS
    assert status(call(p, C.HvExtCallQueryCapabilities, p2=HC_GPA + PAGE)) == S.INVALID_ALIGNMENT


def test_input_on_the_hypercall_page_is_read_as_the_guest_sees_it() -> None:
    """Input on an overlay is "undefined" in the TLFS; the page is guest-readable, so hv1 reads it
    (no status change, nothing written)."""
    p = with_hypercall_page()
    r = call(p, C.HvCallGetVpIndexFromApicId, p1=HC_GPA + 0x100, p2=0x30000, rep_count=1)
    assert status(r) != S.INVALID_ALIGNMENT
    assert p.memory.read(HC_GPA, PAGE) == PAGE_CONTENT


def test_the_machine_keeps_read_only_exactly_the_page_where_the_hypercall_page_is_visible() -> None:
    """The machine makes the GPA it is told read-only for the guest (a read-only KVM slot). A SIMP
    mapped over the hypercall page is the visible page there, and the guest may write its SIMP
    ("Read and write accesses by a virtual processor to the SIM page behave like read and write
    accesses to RAM", ipc "SIM Page"): the machine is told the page is gone, and back when the SIMP
    leaves."""
    p, hooks = make()
    p.wrmsr(0, M.HV_X64_MSR_GUEST_OS_ID, 0x8100_0000_0000_0000)
    p.wrmsr(0, M.HV_X64_MSR_HYPERCALL, HC_GPFN << 12 | ENABLE)
    p.wrmsr(1, M.HV_X64_MSR_SIMP, HC_GPFN << 12 | ENABLE)  # another VP's SIMP on top
    p.wrmsr(0, M.HV_X64_MSR_SIEFP, (HC_GPFN + 1) << 12 | ENABLE)  # elsewhere: nothing to tell
    p.wrmsr(1, M.HV_X64_MSR_SIMP, 0)
    p.wrmsr(0, M.HV_X64_MSR_SIMP, HC_GPFN << 12)  # SIMP not enabled: not mapped, nothing to tell
    assert hooks.hypercall_pages == [HC_GPA, None, HC_GPA]
    assert p.hypercall_page.shown_at() == HC_GPA


OUT_IN_PAGE = st.integers(0, PAGE - 8).map(lambda off: HC_GPA + (off & ~7))
CODES = [
    C.HvCallGetVpIndexFromApicId,
    C.HvExtCallQueryCapabilities,
    C.HvExtCallGetBootZeroedMemory,
    C.HvCallSignalEventDirect,
    C.HvCallPostMessageDirect,
    C.HvCallGetPartitionId,
    0x0003,
    0x0013,
]


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(CODES) | st.integers(0, 0xFFFF),
    st.integers(0, 1),
    st.integers(0, 64),
    OUT_IN_PAGE,
    st.binary(min_size=64, max_size=64),
)
def test_no_hypercall_writes_into_the_hypercall_page(
    code: int, fast: int, rep_count: int, out_gpa: int, input_bytes: bytes
) -> None:
    """Any call, memory or fast, simple or rep, with its output GPA anywhere on the hypercall page:
    the page is never written (hc "Hypercall Page": readable and executable only)."""
    p = _fuzz_partition()
    p.memory.write(IN, input_bytes)
    r = call(p, code, p2=out_gpa, fast=bool(fast), rep_count=rep_count)
    assert status(r) >= 0
    assert p.memory.read(HC_GPA, PAGE) == PAGE_CONTENT


_cached: list[Partition] = []


def _fuzz_partition() -> Partition:
    if not _cached:
        p = with_hypercall_page()
        p.boot_zeroed = [(0, 1 << 20)]
        p.rep_budget_reps = 8
        _cached.append(p)
    return _cached[0]
