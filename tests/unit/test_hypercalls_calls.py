"""The hypercalls implemented with the core (hv/hypercalls/vp.py, partition.py, extended.py): TLFS
hypercalls/HvCallNotifyLongSpinWait.md, HvCallGetVpIndexFromApicId.md, HvCallGetPartitionProperty.md,
HvExtCallQueryCapabilities.md, HvExtCallGetBootZeroedMemory.md; PDF §4.4 (HvCallGetPartitionId)."""

from __future__ import annotations

import struct

import pytest

from hv1.hv.partition import Partition
from hv1.tlfs.hypercalls import HypercallCode as C
from hv1.tlfs.msrs import HV_X64_MSR_GUEST_OS_ID
from hv1.tlfs.partition import HV_PARTITION_ID_SELF, PartitionPropertyCode
from hv1.tlfs.status import HvStatus as S
from tests.unit.test_hypercalls_support import (
    IN,
    OUT,
    PAGE,
    RAM,
    call,
    make,
    reps,
    result,
    status,
    to_xmm,
    xmm_bytes,
)

SELF = HV_PARTITION_ID_SELF


def put(p: Partition, gpa: int, fmt: str, *vals: int) -> None:
    p.memory.write(gpa, struct.pack(fmt, *vals))


def get(p: Partition, gpa: int, fmt: str) -> tuple[int, ...]:
    return struct.unpack(fmt, p.memory.read(gpa, struct.calcsize(fmt)))


# --- HvCallNotifyLongSpinWait (0x0008) ------------------------------------------------------------


@pytest.mark.parametrize("profile", ["minimal", "default"])
def test_notify_long_spin_wait_yields_and_always_succeeds(profile: str) -> None:
    p, hooks = make(profile)
    put(p, IN, "<II", 0x1000, 0xFFFF_FFFF)  # RsvdZ set: still SUCCESS ("no error status")
    assert result(call(p, C.HvCallNotifyLongSpinWait, vp=1)) == S.SUCCESS
    assert result(call(p, C.HvCallNotifyLongSpinWait, p1=0x2000, p2=0, fast=True)) == S.SUCCESS
    assert hooks.yields == [1, 0]
    assert p.counters["spin_wait_yields"] == 2


def test_notify_long_spin_wait_yield_runs_outside_the_lock() -> None:
    p, hooks = make()
    held: list[bool] = []
    hooks.yield_vp = lambda vp: held.append(p.lock._is_owned())  # type: ignore[method-assign, attr-defined]
    call(p, C.HvCallNotifyLongSpinWait, fast=True)
    assert held == [False]


# --- HvCallGetVpIndexFromApicId (0x009A) ----------------------------------------------------------


def test_get_vp_index_from_apic_id() -> None:
    p, _ = make(vps=4, apic_ids=[0, 2, 4, 6])
    put(p, IN, "<QB7x", SELF, 0)
    put(p, IN + 16, "<I4xI4xI4x", 4, 0, 6)
    r = call(p, C.HvCallGetVpIndexFromApicId, rep_count=3)
    assert (status(r), reps(r)) == (S.SUCCESS, 3)
    assert get(p, OUT, "<I4xI4xI4x") == (2, 0, 3)


def test_get_vp_index_from_apic_id_own_partition_id_accepted() -> None:
    p, _ = make()
    put(p, IN, "<QB7xI4x", p.partition_id, 0, 1)
    r = call(p, C.HvCallGetVpIndexFromApicId, rep_count=1)
    assert (status(r), reps(r)) == (S.SUCCESS, 1) and get(p, OUT, "<I")[0] == 1


@pytest.mark.parametrize(
    ("pid", "vtl", "expect"),
    [
        (2, 0, S.INVALID_PARTITION_ID),
        (0, 0, S.INVALID_PARTITION_ID),
        (SELF, 1, S.INVALID_VTL_STATE),
        (SELF, 0xFF, S.INVALID_VTL_STATE),
    ],
)
def test_get_vp_index_from_apic_id_bad_header(pid: int, vtl: int, expect: int) -> None:
    p, _ = make()
    put(p, IN, "<QB7xI4xI4x", pid, vtl, 0, 1)
    r = call(p, C.HvCallGetVpIndexFromApicId, rep_count=2, rep_start=1)
    assert (status(r), reps(r)) == (expect, 1)  # completed count stays at the start index


def test_get_vp_index_from_apic_id_unknown_apic_id_partial() -> None:
    p, _ = make(vps=2)
    put(p, IN, "<QB7xI4xI4xI4x", SELF, 0, 1, 99, 0)
    r = call(p, C.HvCallGetVpIndexFromApicId, rep_count=3)
    assert (status(r), reps(r)) == (S.INVALID_PARAMETER, 1)
    assert get(p, OUT, "<I")[0] == 1


def test_get_vp_index_from_apic_id_xmm_fast() -> None:
    """Header in RDX:R8, elements in XMM0; output from the next chunk (XMM1)."""
    p, _ = make(vps=3, apic_ids=[10, 11, 12])
    r = call(
        p, C.HvCallGetVpIndexFromApicId, p1=SELF, p2=0, fast=True, rep_count=2,
        xmm=to_xmm(struct.pack("<I4xI4x", 12, 10)),
    )  # fmt: skip
    assert (status(r), reps(r)) == (S.SUCCESS, 2)
    assert struct.unpack("<I4xI4x", xmm_bytes(r, 1, 1)) == (2, 0)


# --- HvCallGetPartitionId (0x0046) / HvCallGetPartitionProperty (0x0044) --------------------------


def test_get_partition_id_needs_access_partition_id() -> None:
    p, _ = make("default")
    assert status(call(p, C.HvCallGetPartitionId)) == S.ACCESS_DENIED
    p, _ = make("default,+partition-id")
    assert status(call(p, C.HvCallGetPartitionId)) == S.SUCCESS
    assert get(p, OUT, "<Q") == (1,)


def test_get_partition_property_needs_grant() -> None:
    p, _ = make("default,+partition-id")
    put(p, IN, "<QII", SELF, PartitionPropertyCode.PrivilegeFlags, 0)
    assert status(call(p, C.HvCallGetPartitionProperty)) == S.ACCESS_DENIED


@pytest.mark.parametrize(
    ("code", "expect"),
    [
        (PartitionPropertyCode.CpuWeight, 100),
        (PartitionPropertyCode.CpuCap, 0x10000),
        (PartitionPropertyCode.CpuReserve, 0),
        (PartitionPropertyCode.Suspend, 0),
        (PartitionPropertyCode.TimeFreeze, 0),
    ],
)
def test_get_partition_property_values(code: int, expect: int) -> None:
    p, _ = make("default,+partition-properties")
    put(p, IN, "<QII", SELF, code, 0)
    assert status(call(p, C.HvCallGetPartitionProperty)) == S.SUCCESS
    assert get(p, OUT, "<Q") == (expect,)


def test_get_partition_property_live_values() -> None:
    p, _ = make("default,+partition-properties")
    p.wrmsr(0, HV_X64_MSR_GUEST_OS_ID, 0x1234)
    p.clock.advance(777)  # type: ignore[attr-defined]
    for code, expect in (
        (PartitionPropertyCode.PrivilegeFlags, p.caps.privileges),
        (PartitionPropertyCode.GuestOsId, 0x1234),
        (PartitionPropertyCode.ReferenceTime, 777),
    ):
        put(p, IN, "<QII", p.partition_id, code, 0)
        assert status(call(p, C.HvCallGetPartitionProperty)) == S.SUCCESS
        assert get(p, OUT, "<Q") == (expect,)


@pytest.mark.parametrize(
    ("pid", "code", "rsvd", "expect"),
    [
        (SELF, 0xDEAD, 0, S.UNKNOWN_PROPERTY),
        (SELF, PartitionPropertyCode.VsmConfig, 0, S.UNKNOWN_PROPERTY),
        (SELF, PartitionPropertyCode.CpuWeight, 1, S.INVALID_PARAMETER),
        (7, PartitionPropertyCode.CpuWeight, 0, S.INVALID_PARTITION_ID),
    ],
)
def test_get_partition_property_errors(pid: int, code: int, rsvd: int, expect: int) -> None:
    p, _ = make("default,+partition-properties")
    put(p, IN, "<QII", pid, code, rsvd)
    assert status(call(p, C.HvCallGetPartitionProperty)) == expect


def test_get_partition_property_fast_with_register_output() -> None:
    p, _ = make("default,+partition-properties")
    r = call(p, C.HvCallGetPartitionProperty, p1=SELF, p2=PartitionPropertyCode.CpuWeight, fast=True)
    assert status(r) == S.SUCCESS and r.xmm[0] == 100


# --- extended hypercalls --------------------------------------------------------------------------


@pytest.mark.parametrize("code", [C.HvExtCallQueryCapabilities, C.HvExtCallGetBootZeroedMemory])
def test_extended_calls_not_advertised_without_privilege(code: int) -> None:
    p, _ = make("default,-ext-hypercalls")
    assert result(call(p, code)) == S.INVALID_HYPERCALL_CODE


def test_extended_heat_hint_not_advertised_without_privilege() -> None:
    p, _ = make("minimal")
    assert result(call(p, C.HvExtCallMemoryHeatHint, rep_count=1)) == S.INVALID_HYPERCALL_CODE


def test_query_capabilities() -> None:
    p, _ = make()
    assert status(call(p, C.HvExtCallQueryCapabilities)) == S.SUCCESS
    assert get(p, OUT, "<Q") == (0b11,)  # GetBootZeroedMemory, MemoryHeatHint


def boot_zeroed_output(p: Partition, out: int = OUT) -> list[tuple[int, int]]:
    (n,) = get(p, out, "<Q")
    return [get(p, out + 8 + 16 * i, "<QQ") for i in range(n)]  # type: ignore[misc]


def test_get_boot_zeroed_memory_reports_what_is_still_zero() -> None:
    p, _ = make()
    p.boot_zeroed = [(0x40000, 0x40000), (0x20800, 0x2000)]  # bytes; the 2nd has one whole page
    p.memory.write(0x50010, b"x")  # written since boot
    r = call(p, C.HvExtCallGetBootZeroedMemory)
    assert status(r) == S.SUCCESS
    assert boot_zeroed_output(p) == [(0x51, 0x2F), (0x40, 0x10), (0x21, 1)]  # biggest first


def test_get_boot_zeroed_memory_leaves_out_the_output_page() -> None:
    p, _ = make()
    p.boot_zeroed = [(0x40000, 0x10000)]
    r = call(p, C.HvExtCallGetBootZeroedMemory, p2=0x48000)
    assert status(r) == S.SUCCESS
    assert boot_zeroed_output(p, 0x48000) == [(0x40, 8), (0x49, 7)]


def test_get_boot_zeroed_memory_at_most_255_ranges_and_only_ram() -> None:
    ram = 4 * RAM
    p, _ = make(mem=ram)
    p.boot_zeroed = [(0x40000, 600 * PAGE), (ram - PAGE, 16 * PAGE)]
    for i in range(0, 600, 2):
        p.memory.write(0x40000 + i * PAGE, b"x")
    assert status(call(p, C.HvExtCallGetBootZeroedMemory)) == S.SUCCESS
    ranges = boot_zeroed_output(p)
    assert len(ranges) == 255
    assert all(count == 1 for _, count in ranges)
    assert all((first - 0x40) % 2 == 1 for first, _ in ranges[:-1])
    assert max(first for first, _ in ranges) < ram // PAGE


def test_get_boot_zeroed_memory_output_must_fit_in_a_page() -> None:
    p, _ = make()
    assert status(call(p, C.HvExtCallGetBootZeroedMemory, p2=OUT + 8)) == S.SUCCESS  # 8 + 0xFF8 = 4096
    assert status(call(p, C.HvExtCallGetBootZeroedMemory, p2=OUT + 16)) == S.INVALID_ALIGNMENT
    assert status(call(p, C.HvExtCallGetBootZeroedMemory, fast=True)) == S.INVALID_HYPERCALL_INPUT


def test_memory_heat_hint_accepted_and_counted() -> None:
    p, _ = make()
    # type 2 (cold discard); ranges: 1 page, 4 pages, one 2 MiB large page
    put(p, IN, "<QQQQ", 2, 0x100 << 12, 0x200 << 12 | 3, 0x400 << 12 | 1 << 11)
    r = call(p, C.HvExtCallMemoryHeatHint, rep_count=3)
    assert (status(r), reps(r)) == (S.SUCCESS, 3)
    assert p.counters["heat_hint_ranges"] == 3
    assert p.counters["heat_hint_pages"] == 1 + 4 + 512
    assert p.counters["hypercalls.HvExtCallMemoryHeatHint"] == 1


def test_memory_heat_hint_reserved_bits() -> None:
    p, _ = make()
    put(p, IN, "<QQ", 1 << 5 | 2, 0)
    r = call(p, C.HvExtCallMemoryHeatHint, rep_count=1)
    assert (status(r), reps(r)) == (S.INVALID_PARAMETER, 0)


# --- partition construction -----------------------------------------------------------------------


def test_partition_construction_checks() -> None:
    with pytest.raises(ValueError):
        make(vps=0)
    with pytest.raises(ValueError):
        make(vps=2, apic_ids=[1, 1])
    with pytest.raises(ValueError):
        make(vps=2, apic_ids=[1])
    p, _ = make(vps=2, apic_ids=[5, 9])
    assert p.vp_index_from_apic_id(9) == 1 and p.vp_index_from_apic_id(0) is None
