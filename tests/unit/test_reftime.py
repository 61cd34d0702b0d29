"""Reference time, the reference TSC page, the frequency/reenlightenment MSRs and VP run time
(hv/reftime.py, hv/time_msrs.py) with a fake TSC: deterministic, no KVM.

TLFS timers.md "Reference Counter", "Partition Reference Time Enlightenment"; nested-virtualization.md
"Reenlightenment"; inventory §3.3, §6.7-6.8, §7.13.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hv1.hv.caps import Caps
from hv1.hv.interfaces import GuestException
from hv1.hv.overlay import OverlayPage
from hv1.hv.partition import Partition
from hv1.hv.reftime import (
    TSC_SEQUENCE_INVALID,
    ReferenceTime,
    ReferenceTscPage,
    VpRuntime,
    next_sequence,
    ref_from_tsc,
    tsc_scale,
)
from hv1.hv.time_msrs import PartitionTime
from hv1.tlfs import msrs as M
from hv1.tlfs.feature_discovery import FeaturesEdx
from hv1.tlfs.partition import PartitionPrivilege as P
from tests.fakes import FakeClock, FakeHooks, FakeIrq, FakeMemory

TSC_HZ = 2_600_000_000  # this host (notes/host-kvm.md)
TSC0 = 123_456_789_012_345  # the guest TSC when the partition is created
PAGE_GPFN = 0x80


@dataclass
class FakeTsc:
    """A guest TSC and a host monotonic clock that advance together at TSC_HZ."""

    tsc: int = TSC0
    ns: int = 5_000_000_000

    def read(self) -> int:
        return self.tsc

    def host_ns(self) -> int:
        return self.ns

    def advance_ns(self, ns: int, hz: int = TSC_HZ) -> None:
        self.ns += ns
        self.tsc += ns * hz // 1_000_000_000


def make_reftime(tsc: FakeTsc | None = None, hz: int = TSC_HZ) -> tuple[ReferenceTime, FakeTsc]:
    tsc = tsc or FakeTsc()
    return ReferenceTime(tsc.read, hz, host_ns=tsc.host_ns), tsc


ALL_TIME_PRIVILEGES = (
    P.AccessHypercallMsrs
    | P.AccessVpIndex
    | P.AccessVpRunTimeReg
    | P.AccessPartitionReferenceCounter
    | P.AccessPartitionReferenceTsc
    | P.AccessFrequencyRegs
    | P.AccessSyntheticTimerRegs
    | P.AccessSynicRegs
    | P.AccessReenlightenmentControls
    | P.AccessTscInvariantControls
)


def make_partition(
    privileges: int = ALL_TIME_PRIVILEGES, vps: int = 2
) -> tuple[Partition, PartitionTime, FakeTsc, FakeIrq, FakeMemory]:
    """A partition wired the way the lead wires hv1 (see the time report): reference time as the
    partition clock, PartitionTime as a subsystem, time MSRs registered, timers attached per VP."""
    caps = Caps(
        features=frozenset(),
        privileges=int(privileges),
        features_edx=int(FeaturesEdx.FrequencyRegsAvailable | FeaturesEdx.DirectSyntheticTimers),
    )
    reftime, tsc = make_reftime()
    mem = FakeMemory(1 << 20)
    irq = FakeIrq()
    part = Partition(caps, vps, mem, reftime, irq, FakeHooks())
    return part, part.time, tsc, irq, mem


def page_fields(mem: FakeMemory, gpfn: int = PAGE_GPFN) -> tuple[int, int, int]:
    seq, _, scale, offset = struct.unpack("<IIQq", mem.read(gpfn << 12, 24))
    return seq, scale, offset


# --- the formula -------------------------------------------------------------------------------------


def test_scale_is_floor_1e7_2pow64_over_hz() -> None:
    assert tsc_scale(TSC_HZ) == (10_000_000 << 64) // TSC_HZ
    with pytest.raises(ValueError):
        tsc_scale(10_000_000)  # a scale >= 2^64 does not fit TscScale


def test_counter_starts_at_zero_and_counts_100ns_at_the_tsc_rate() -> None:
    """timers.md: "initialized to zero when the partition is created"; constant rate."""
    rt, tsc = make_reftime()
    assert rt.now() == 0
    tsc.advance_ns(1_000_000_000)
    assert abs(rt.now() - 10_000_000) <= 1
    tsc.advance_ns(250_000)
    assert abs(rt.now() - 10_002_500) <= 1


def test_counter_never_goes_backwards() -> None:
    """Strictly monotonic "as seen by any and all virtual processors": a TSC read on another host CPU
    that is a few cycles behind does not make the counter go back."""
    rt, tsc = make_reftime()
    tsc.advance_ns(10_000)
    high = rt.now()
    tsc.tsc -= 2_600  # 1 us behind
    assert rt.now() == high


@given(st.integers(min_value=0, max_value=(1 << 62)))
def test_tsc_at_ref_is_the_exact_inverse(ref: int) -> None:
    rt, _ = make_reftime()
    t = rt.tsc_at_ref(ref)
    assert rt.ref_at_tsc(t) >= ref
    if t > 0:
        assert rt.ref_at_tsc(t - 1) < ref


def test_host_deadline_is_never_early() -> None:
    rt, tsc = make_reftime()
    tsc.advance_ns(1_000_000)
    now = rt.now()
    at = rt.host_ns_at(now + 10_000)  # 1 ms ahead
    assert at is not None
    assert 999_900 <= at - tsc.ns <= 1_000_001  # `now` is a floor: the tick boundary is <= 1 ms away
    before = FakeTsc(tsc.tsc, tsc.ns)
    before.advance_ns(at - tsc.ns - 1)
    assert rt.ref_at_tsc(before.tsc) < now + 10_000  # 1 ns earlier it is not reached yet
    tsc.advance_ns(at - tsc.ns)
    assert rt.now() >= now + 10_000
    assert rt.host_ns_at(now) == tsc.ns  # already reached: now


def test_pause_freezes_and_resume_continues() -> None:
    """timers.md: the counter counts while at least one VP is not suspended; "will appear to stop
    during the time that a guest partition is saved"."""
    rt, tsc = make_reftime()
    tsc.advance_ns(3_000_000)
    rt.pause()
    frozen = rt.now()
    tsc.advance_ns(7_000_000_000)  # the guest TSC keeps running while paused
    assert rt.now() == frozen
    assert rt.host_ns_at(frozen + 1) is None
    rt.resume()
    assert rt.now() == frozen
    tsc.advance_ns(1_000_000)
    assert abs(rt.now() - (frozen + 10_000)) <= 1


def test_set_frequency_is_continuous() -> None:
    rt, tsc = make_reftime()
    tsc.advance_ns(2_000_000)
    before = rt.now()
    rt.set_frequency(1_000_000_000)
    assert rt.now() == before
    tsc.tsc += 1_000_000  # 1 ms at the new rate
    assert abs(rt.now() - (before + 10_000)) <= 1
    assert rt.params()[0] == tsc_scale(1_000_000_000)


# --- the reference TSC page ------------------------------------------------------------------------


def test_sequence_skips_0_and_ffffffff() -> None:
    """Inventory §7.13: 0 is "invalid" today, 0xFFFFFFFF was pre-v5; never publish either."""
    assert next_sequence(0) == 1
    assert next_sequence(0xFFFF_FFFD) == 0xFFFF_FFFE
    assert next_sequence(0xFFFF_FFFE) == 1


def _page(rt: ReferenceTime, mem: FakeMemory) -> ReferenceTscPage:
    return ReferenceTscPage(rt, OverlayPage(mem))


def test_page_enable_zeroes_and_publishes_the_msr_formula() -> None:
    rt, tsc = make_reftime()
    mem = FakeMemory(1 << 20)
    mem.write(PAGE_GPFN << 12, b"\xaa" * 4096)
    page = _page(rt, mem)
    page.write_msr(PAGE_GPFN << 12 | 1)
    seq, scale, offset = page_fields(mem)
    assert seq not in (0, 0xFFFF_FFFF)
    assert (scale, offset) == rt.params()
    assert mem.read((PAGE_GPFN << 12) + 24, 4096 - 24) == bytes(4096 - 24)  # Reserved2 zeroed
    for _ in range(5):
        tsc.advance_ns(1_234_567)
        assert ref_from_tsc(tsc.tsc, scale, offset) == rt.now()


@given(st.integers(min_value=0, max_value=10**15), st.integers(min_value=10**8, max_value=5 * 10**9))
def test_page_formula_equals_msr(elapsed_ns: int, hz: int) -> None:
    """Issue "Done when": the page formula equals TIME_REF_COUNT (within one tick; here exactly,
    since both are the same formula)."""
    tsc = FakeTsc()
    rt, _ = make_reftime(tsc, hz)
    mem = FakeMemory(1 << 20)
    page = _page(rt, mem)
    page.write_msr(PAGE_GPFN << 12 | 1)
    tsc.advance_ns(elapsed_ns, hz)
    _, scale, offset = page_fields(mem)
    assert abs(ref_from_tsc(tsc.tsc, scale, offset) - rt.now()) <= 1


def test_page_disable_restores_ram_and_msr_keeps_rsvdp_bits() -> None:
    rt, _ = make_reftime()
    mem = FakeMemory(1 << 20)
    mem.write(PAGE_GPFN << 12, b"RAM!")
    page = _page(rt, mem)
    value = PAGE_GPFN << 12 | 0xFFE | 1
    page.write_msr(value)
    assert page.value == value  # 11:1 RsvdP preserved
    page.write_msr(PAGE_GPFN << 12)
    assert mem.read(PAGE_GPFN << 12, 4) == b"RAM!"


def test_page_beyond_ram_is_accepted_but_not_accessible() -> None:
    """timers.md: "If the specified base address is beyond the end of the partition's GPA space, the
    reference TSC page will not be accessible to the guest" (no fault)."""
    rt, _ = make_reftime()
    mem = FakeMemory(1 << 20)
    page = _page(rt, mem)
    page.write_msr((1 << 30) | 1)
    assert page.enabled and not page.overlay.accessible


def test_every_change_bumps_the_sequence() -> None:
    rt, tsc = make_reftime()
    mem = FakeMemory(1 << 20)
    page = _page(rt, mem)
    rt.on_change(page.publish)
    page.write_msr(PAGE_GPFN << 12 | 1)
    seqs = [page_fields(mem)[0]]
    rt.pause()
    tsc.advance_ns(10**9)
    rt.resume()
    seqs.append(page_fields(mem)[0])
    rt.set_frequency(3_000_000_000)
    seqs.append(page_fields(mem)[0])
    page.write_msr(PAGE_GPFN << 12 | 1)  # re-enable: a new sequence too
    seqs.append(page_fields(mem)[0])
    assert len(set(seqs)) == 4 and 0 not in seqs
    _, scale, offset = page_fields(mem)
    assert ref_from_tsc(tsc.tsc, scale, offset) == rt.now()


def test_unreliable_tsc_publishes_sequence_0() -> None:
    """timers.md: "A special value of 0x0 is used to indicate that this facility is no longer a
    reliable source of reference time and the VM must fall back to a different source"."""
    rt, _ = make_reftime()
    mem = FakeMemory(1 << 20)
    page = _page(rt, mem)
    rt.on_change(page.publish)
    page.write_msr(PAGE_GPFN << 12 | 1)
    assert page_fields(mem)[0] != 0
    rt.set_reliable(False)
    assert page_fields(mem)[0] == TSC_SEQUENCE_INVALID
    page.write_msr(PAGE_GPFN << 12 | 1)
    assert page_fields(mem)[0] == TSC_SEQUENCE_INVALID


# --- the MSRs through the partition ---------------------------------------------------------------


def test_time_ref_count_msr_reads_the_counter_and_writes_gp() -> None:
    part, _, tsc, _, _ = make_partition()
    tsc.advance_ns(1_000_000)
    assert part.rdmsr(0, M.HV_X64_MSR_TIME_REF_COUNT) == 10_000
    with pytest.raises(GuestException):
        part.wrmsr(0, M.HV_X64_MSR_TIME_REF_COUNT, 5)


def test_msr_and_page_agree_through_the_partition() -> None:
    part, _, tsc, _, mem = make_partition()
    part.wrmsr(1, M.HV_X64_MSR_REFERENCE_TSC, PAGE_GPFN << 12 | 1)
    assert part.rdmsr(0, M.HV_X64_MSR_REFERENCE_TSC) == PAGE_GPFN << 12 | 1  # partition-wide
    tsc.advance_ns(987_654_321)
    _, scale, offset = page_fields(mem)
    assert ref_from_tsc(tsc.tsc, scale, offset) == part.rdmsr(1, M.HV_X64_MSR_TIME_REF_COUNT)


def test_frequency_msrs() -> None:
    part, _, _, _, _ = make_partition()
    assert part.rdmsr(0, M.HV_X64_MSR_TSC_FREQUENCY) == TSC_HZ
    assert part.rdmsr(0, M.HV_X64_MSR_APIC_FREQUENCY) == 1_000_000_000
    for msr in (M.HV_X64_MSR_TSC_FREQUENCY, M.HV_X64_MSR_APIC_FREQUENCY):
        with pytest.raises(GuestException):
            part.wrmsr(0, msr, 1)


GATES = [
    (M.HV_X64_MSR_VP_RUNTIME, P.AccessVpRunTimeReg),
    (M.HV_X64_MSR_TIME_REF_COUNT, P.AccessPartitionReferenceCounter),
    (M.HV_X64_MSR_REFERENCE_TSC, P.AccessPartitionReferenceTsc),
    (M.HV_X64_MSR_TSC_FREQUENCY, P.AccessFrequencyRegs),
    (M.HV_X64_MSR_APIC_FREQUENCY, P.AccessFrequencyRegs),
    (M.HV_X64_MSR_REENLIGHTENMENT_CONTROL, P.AccessReenlightenmentControls),
    (M.HV_X64_MSR_TSC_EMULATION_CONTROL, P.AccessReenlightenmentControls),
    (M.HV_X64_MSR_TSC_EMULATION_STATUS, P.AccessReenlightenmentControls),
    (M.HV_X64_MSR_TSC_INVARIANT_CONTROL, P.AccessTscInvariantControls),
    (M.HV_X64_MSR_STIMER0_CONFIG, P.AccessSyntheticTimerRegs),
    (M.HV_X64_MSR_STIMER3_COUNT, P.AccessSyntheticTimerRegs),
]


@pytest.mark.parametrize(("msr", "privilege"), GATES)
def test_each_msr_gp_without_its_privilege(msr: int, privilege: int) -> None:
    """feature-discovery.md / PDF §8.10: without the privilege RDMSR and WRMSR #GP."""
    part, _, _, _, _ = make_partition(ALL_TIME_PRIVILEGES & ~privilege)
    with pytest.raises(GuestException) as e:
        part.rdmsr(0, msr)
    assert e.value.vector == 13
    with pytest.raises(GuestException):
        part.wrmsr(0, msr, 0)
    full, _, _, _, _ = make_partition()
    full.rdmsr(0, msr)  # granted: no fault


def test_reference_tsc_gate_is_its_own_privilege() -> None:
    """Inventory §7.20: App. C says AccessPartitionReferenceCounter; the body (AccessPartitionReferenceTsc)
    wins."""
    part, _, _, _, _ = make_partition(ALL_TIME_PRIVILEGES & ~P.AccessPartitionReferenceCounter)
    part.wrmsr(0, M.HV_X64_MSR_REFERENCE_TSC, PAGE_GPFN << 12 | 1)


def test_vp_runtime_is_per_vp_and_read_only() -> None:
    part, time, _, _, _ = make_partition()
    time.vp_runtime[0].add(12_345_600)
    time.vp_runtime[1].add(100)
    assert part.rdmsr(0, M.HV_X64_MSR_VP_RUNTIME) == 123_456
    assert part.rdmsr(1, M.HV_X64_MSR_VP_RUNTIME) == 1
    with pytest.raises(GuestException):
        part.wrmsr(0, M.HV_X64_MSR_VP_RUNTIME, 0)


def test_vp_runtime_thread_clock() -> None:
    cpu = [1000]
    rt = VpRuntime()
    rt.bind_thread_clock(lambda: cpu[0])
    assert rt.read() == 0
    cpu[0] += 50_000  # 50 us of CPU time on the VP's thread
    rt.add(1_000)
    assert rt.read() == 510
    rt.reset()
    assert rt.read() == 0


def test_tsc_invariant_control() -> None:
    """[ext:KVM] HV_X64_MSR_TSC_INVARIANT_CONTROL: only bit 0; cannot be cleared once set."""
    part, _, _, _, _ = make_partition()
    msr = M.HV_X64_MSR_TSC_INVARIANT_CONTROL
    assert part.rdmsr(0, msr) == 0
    with pytest.raises(GuestException):
        part.wrmsr(0, msr, 2)
    part.wrmsr(0, msr, 0)
    part.wrmsr(0, msr, 1)
    assert part.rdmsr(1, msr) == 1
    part.wrmsr(0, msr, 1)
    with pytest.raises(GuestException):
        part.wrmsr(0, msr, 0)


# --- reenlightenment ----------------------------------------------------------------------------------


def _reenl(vector: int, target: int, enabled: bool = True) -> int:
    return target << 32 | (1 << 16 if enabled else 0) | vector


def test_reenlightenment_control_validation() -> None:
    part, _, _, _, _ = make_partition()
    msr = M.HV_X64_MSR_REENLIGHTENMENT_CONTROL
    part.wrmsr(0, msr, _reenl(0x40, 1) | 0xFF00 | 0xFFFE_0000)  # RsvdZ bits are dropped
    assert part.rdmsr(0, msr) == _reenl(0x40, 1)
    with pytest.raises(GuestException):
        part.wrmsr(0, msr, _reenl(0x0F, 0))  # not a fixed interrupt vector
    with pytest.raises(GuestException):
        part.wrmsr(0, msr, _reenl(0x40, 2))  # no VP 2
    part.wrmsr(0, msr, _reenl(0x05, 7, enabled=False))  # disabled: not validated
    part.wrmsr(0, M.HV_X64_MSR_TSC_EMULATION_CONTROL, 0xFFFF_FFFF)
    assert part.rdmsr(0, M.HV_X64_MSR_TSC_EMULATION_CONTROL) == 1


def test_migration_notifies_and_republishes_the_page() -> None:
    """Issue 4: "a host API call simulates a migration to a different frequency and the guest must see
    the interrupt and a new page"."""
    part, time, tsc, irq, mem = make_partition()
    part.wrmsr(0, M.HV_X64_MSR_REFERENCE_TSC, PAGE_GPFN << 12 | 1)
    part.wrmsr(0, M.HV_X64_MSR_REENLIGHTENMENT_CONTROL, _reenl(0x41, 1))
    tsc.advance_ns(5_000_000)
    seq0, scale0, _ = page_fields(mem)
    before = part.rdmsr(0, M.HV_X64_MSR_TIME_REF_COUNT)
    time.simulate_migration(2_000_000_000)
    assert irq.sent == [(1, 0x41, False)]
    seq1, scale1, offset1 = page_fields(mem)
    assert seq1 not in (0, seq0) and scale1 == tsc_scale(2_000_000_000) != scale0
    assert part.rdmsr(0, M.HV_X64_MSR_TSC_FREQUENCY) == 2_000_000_000
    after = part.rdmsr(0, M.HV_X64_MSR_TIME_REF_COUNT)
    assert before <= after <= before + 1  # continuous
    tsc.advance_ns(1_000_000)
    assert ref_from_tsc(tsc.tsc, scale1, offset1) == part.rdmsr(1, M.HV_X64_MSR_TIME_REF_COUNT)
    assert part.rdmsr(0, M.HV_X64_MSR_TSC_EMULATION_STATUS) == 0


def test_migration_without_reenlightenment_raises_no_interrupt() -> None:
    part, time, _, irq, _ = make_partition()
    time.simulate_migration(3_000_000_000)
    assert irq.sent == []
    assert part.rdmsr(0, M.HV_X64_MSR_TSC_FREQUENCY) == 3_000_000_000


def test_migration_with_tsc_emulation_keeps_the_old_scale_until_status_cleared() -> None:
    """nested-virtualization.md: with TSC emulation opted in, InProgress is set and TSC reads keep the
    old rate until the guest writes TSC_EMULATION_STATUS = 0 (inventory §6.8)."""
    part, time, tsc, irq, mem = make_partition()
    part.wrmsr(0, M.HV_X64_MSR_REFERENCE_TSC, PAGE_GPFN << 12 | 1)
    part.wrmsr(0, M.HV_X64_MSR_REENLIGHTENMENT_CONTROL, _reenl(0x42, 0))
    part.wrmsr(0, M.HV_X64_MSR_TSC_EMULATION_CONTROL, 1)
    seq0, scale0, _ = page_fields(mem)
    time.simulate_migration(2_000_000_000)
    assert irq.sent == [(0, 0x42, False)]
    assert part.rdmsr(0, M.HV_X64_MSR_TSC_EMULATION_STATUS) == 1
    assert part.rdmsr(0, M.HV_X64_MSR_TSC_FREQUENCY) == 2_000_000_000
    assert page_fields(mem)[:2] == (seq0, scale0)
    with pytest.raises(GuestException):
        part.wrmsr(0, M.HV_X64_MSR_TSC_EMULATION_STATUS, 1)  # only the hypervisor sets InProgress
    tsc.advance_ns(1_000_000)
    before = part.rdmsr(0, M.HV_X64_MSR_TIME_REF_COUNT)
    part.wrmsr(0, M.HV_X64_MSR_TSC_EMULATION_STATUS, 0)
    assert part.rdmsr(0, M.HV_X64_MSR_TSC_EMULATION_STATUS) == 0
    seq1, scale1, offset1 = page_fields(mem)
    assert seq1 not in (0, seq0) and scale1 == tsc_scale(2_000_000_000)
    assert ref_from_tsc(tsc.tsc, scale1, offset1) in (before, before + 1)


def test_migration_to_a_host_without_invariant_tsc_invalidates_the_page() -> None:
    part, time, _, _, mem = make_partition()
    part.wrmsr(0, M.HV_X64_MSR_REFERENCE_TSC, PAGE_GPFN << 12 | 1)
    time.simulate_migration(TSC_HZ, invariant=False)
    assert page_fields(mem)[0] == 0
    assert part.rdmsr(0, M.HV_X64_MSR_TIME_REF_COUNT) >= 0  # the MSR keeps working


def test_pause_resume_through_partition_time_republishes() -> None:
    part, time, tsc, _, mem = make_partition()
    part.wrmsr(0, M.HV_X64_MSR_REFERENCE_TSC, PAGE_GPFN << 12 | 1)
    kicked: list[str] = []
    time.on_change(lambda: kicked.append("rearm"))
    tsc.advance_ns(1_000_000)
    time.pause()
    frozen = part.rdmsr(0, M.HV_X64_MSR_TIME_REF_COUNT)
    tsc.advance_ns(10**10)
    time.resume()
    assert kicked == ["rearm"]
    _, scale, offset = page_fields(mem)
    assert ref_from_tsc(tsc.tsc, scale, offset) == frozen == part.rdmsr(0, M.HV_X64_MSR_TIME_REF_COUNT)


def test_partition_reset_clears_time_msrs_but_not_the_counter() -> None:
    part, _, tsc, _, mem = make_partition()
    mem.write(PAGE_GPFN << 12, b"ram.")
    part.wrmsr(0, M.HV_X64_MSR_REFERENCE_TSC, PAGE_GPFN << 12 | 1)
    part.wrmsr(0, M.HV_X64_MSR_REENLIGHTENMENT_CONTROL, _reenl(0x41, 1))
    part.wrmsr(0, M.HV_X64_MSR_STIMER0_CONFIG, 1 << 16 | 1 << 1)
    tsc.advance_ns(1_000_000)
    shown = mem.read(PAGE_GPFN << 12, 4096)
    part.reset()
    assert part.rdmsr(0, M.HV_X64_MSR_REFERENCE_TSC) == 0
    assert part.rdmsr(0, M.HV_X64_MSR_REENLIGHTENMENT_CONTROL) == 0
    assert part.rdmsr(0, M.HV_X64_MSR_STIMER0_CONFIG) == 0
    # RAM is not written by a reset (the platform reset reloads it: tests/unit/test_reset_ram.py).
    assert mem.read(PAGE_GPFN << 12, 4096) == shown
    assert part.rdmsr(0, M.HV_X64_MSR_TIME_REF_COUNT) == 10_000


def test_from_clock_returns_the_clock_exactly() -> None:
    """Partitions built with a FakeClock (other unit tests) get a ReferenceTime that agrees with it."""
    clock = FakeClock(777)
    rt = ReferenceTime.from_clock(clock)
    assert rt.now() == 777
    clock.advance(12_345)
    assert rt.now() == 13_122
    scale, offset = rt.params()
    assert (scale, offset) == (1 << 63, 0)
    assert ref_from_tsc(2 * clock.now(), scale, offset) == clock.now()


def test_use_tsc_switches_reader_continuously() -> None:
    """The machine starts on the host TSC and switches to the guest TSC (host + KVM offset)."""
    host = FakeTsc()
    rt, _ = make_reftime(host)
    host.advance_ns(1_000_000)
    before = rt.now()
    guest_offset = -host.tsc + 42
    rt.use_tsc(lambda: host.tsc + guest_offset, TSC_HZ)
    assert rt.now() == before
    host.advance_ns(2_000_000)
    assert abs(rt.now() - (before + 20_000)) <= 1
    at = rt.host_ns_at(rt.now() + 10_000)
    assert at is not None and 999_900 <= at - host.ns <= 1_000_001


def test_poll_vp_fires_due_timers_and_returns_the_next_deadline() -> None:
    """The machine's hook: PartitionTime.poll_vp(vp) under the partition lock, lock-free when idle."""
    part, time, tsc, irq, _ = make_partition()
    assert time.poll_vp(1) is None
    part.wrmsr(1, M.HV_X64_MSR_STIMER0_COUNT, 2 * 10_000)
    part.wrmsr(1, M.HV_X64_MSR_STIMER0_CONFIG, 0x30 << 4 | 1 << 12 | 1 << 1 | 1)  # direct, periodic, 2 ms
    now = part.rdmsr(1, M.HV_X64_MSR_TIME_REF_COUNT)
    deadline = time.poll_vp(1)
    assert deadline is not None and now < deadline <= now + 20_000
    at = time.reftime.host_ns_at(deadline)
    assert at is not None
    tsc.advance_ns(at - tsc.ns)
    assert time.poll_vp(1) == deadline + 20_000
    assert irq.sent == [(1, 0x30, False)]
    assert time.poll_vp(0) is None
