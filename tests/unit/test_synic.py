"""SynIC state machine (hv1/hv/synic.py) with fakes: MSR rules, overlay pages, the message slot
protocol, event flags, AutoEOI, polling. TLFS inter-partition-communication.md unless noted."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import pytest

import hv1.hv.synic as synic_mod
from hv1.hv.caps import Caps
from hv1.hv.interfaces import GuestException
from hv1.hv.partition import Partition
from hv1.hv.synic import (
    HV_EVENT_FLAGS_COUNT,
    MESSAGE_FLAG_PENDING,
    SINT_AUTO_EOI,
    SINT_MASKED,
    SINT_POLLING,
    SINT_RESET,
    Synic,
    attach_synic,
    synic_of,
)
from hv1.tlfs import msrs as M
from hv1.tlfs.feature_discovery import FeaturesEdx
from hv1.tlfs.partition import PartitionPrivilege as P
from hv1.tlfs.status import HvStatus as S
from tests.fakes import FakeClock, FakeHooks, FakeIrq, FakeMemory

SIMP_GPA = 0x10000
SIEFP_GPA = 0x11000
VEC = 0x50


@dataclass
class Rec:
    """A tracer that records every event."""

    events: list[tuple[str, int, str, dict[str, Any]]] = field(default_factory=list)

    def wants(self, cat: str) -> bool:
        return True

    def emit(self, cat: str, vp: int, event: str, **fields: Any) -> None:
        self.events.append((cat, vp, event, fields))

    def names(self) -> list[str]:
        return [e[2] for e in self.events]


class Owner:
    def __init__(self) -> None:
        self.released = 0

    def release_message_buffer(self) -> None:
        self.released += 1


def make(**kw: Any) -> tuple[Synic, FakeMemory, FakeIrq, Rec]:
    mem, irq, rec = FakeMemory(1 << 20), FakeIrq(), Rec()
    return Synic(0, mem, irq, tracer=rec, **kw), mem, irq, rec


def enable(s: Synic, sints: dict[int, int] | None = None) -> None:
    s.write_msr(M.HV_X64_MSR_SCONTROL, 1)
    s.write_msr(M.HV_X64_MSR_SIMP, SIMP_GPA | 1)
    s.write_msr(M.HV_X64_MSR_SIEFP, SIEFP_GPA | 1)
    for sint, value in (sints or {0: VEC}).items():
        s.write_msr(M.HV_X64_MSR_SINT0 + sint, value)


def slot(mem: FakeMemory, sint: int) -> tuple[int, int, int, int, bytes]:
    raw = mem.read(SIMP_GPA + sint * 256, 256)
    t, size, flags, rsvd, origin = struct.unpack_from("<IBBHQ", raw)
    return t, size, flags, origin, raw[16 : 16 + size]


def guest_clear(mem: FakeMemory, sint: int) -> None:
    mem.write(SIMP_GPA + sint * 256, b"\0\0\0\0")


# --- MSRs ----------------------------------------------------------------------------------------------


def test_reset_values_section_synic_registers() -> None:
    s, *_ = make()
    assert s.read_msr(M.HV_X64_MSR_SCONTROL) == 0
    assert s.read_msr(M.HV_X64_MSR_SVERSION) == 1
    assert s.read_msr(M.HV_X64_MSR_SIEFP) == 0
    assert s.read_msr(M.HV_X64_MSR_SIMP) == 0
    assert s.read_msr(M.HV_X64_MSR_EOM) == 0
    for i in range(16):
        assert s.read_msr(M.HV_X64_MSR_SINT0 + i) == 0x10000


def test_sversion_write_gp() -> None:
    s, *_ = make()
    with pytest.raises(GuestException) as e:
        s.write_msr(M.HV_X64_MSR_SVERSION, 1)
    assert e.value.vector == 13


def test_rsvdp_bits_are_stored() -> None:
    s, *_ = make()
    s.write_msr(M.HV_X64_MSR_SCONTROL, 0xFFFF_0000_0000_0001)
    assert s.read_msr(M.HV_X64_MSR_SCONTROL) == 0xFFFF_0000_0000_0001 and s.enabled
    s.write_msr(M.HV_X64_MSR_SIMP, SIMP_GPA | 0xFFE | 1)
    assert s.read_msr(M.HV_X64_MSR_SIMP) == SIMP_GPA | 0xFFF
    v = 0xFFFF_FFFF_FFF8_FF20 & ~SINT_POLLING & ~SINT_AUTO_EOI
    s.write_msr(M.HV_X64_MSR_SINT0 + 3, v)
    assert s.read_msr(M.HV_X64_MSR_SINT0 + 3) == v


def test_eom_reads_zero_and_ignores_value() -> None:
    s, *_ = make()
    s.write_msr(M.HV_X64_MSR_EOM, 0xDEAD)
    assert s.read_msr(M.HV_X64_MSR_EOM) == 0


@pytest.mark.parametrize("vector", [0, 1, 15])
def test_unmasked_sint_with_vector_below_16_gp(vector: int) -> None:
    s, *_ = make()
    with pytest.raises(GuestException):
        s.write_msr(M.HV_X64_MSR_SINT0, vector)
    with pytest.raises(GuestException):
        s.write_msr(M.HV_X64_MSR_SINT0, vector | SINT_POLLING)
    assert s.read_msr(M.HV_X64_MSR_SINT0) == SINT_RESET


@pytest.mark.parametrize("vector", [0, 15])
def test_masked_sint_with_low_vector_accepted_inventory_7_8(vector: int) -> None:
    s, *_ = make()
    s.write_msr(M.HV_X64_MSR_SINT0, vector | SINT_MASKED)
    assert s.read_msr(M.HV_X64_MSR_SINT0) == vector | SINT_MASKED


@pytest.mark.parametrize("vector", [16, 0x80, 255])
def test_valid_vectors(vector: int) -> None:
    s, *_ = make()
    s.write_msr(M.HV_X64_MSR_SINT0 + 15, vector)
    assert s.sint(15).vector == vector and not s.sint(15).masked


def test_unknown_index_gp() -> None:
    s, *_ = make()
    for index in (M.HV_X64_MSR_SIRBP, 0x40000086, 0x400000A0):
        with pytest.raises(GuestException):
            s.read_msr(index)
        with pytest.raises(GuestException):
            s.write_msr(index, 0)


# --- MSR table gating (a partition) -------------------------------------------------------------------

BASE_PRIVS = P.AccessHypercallMsrs | P.AccessVpIndex


def make_partition(
    vps: int = 2, privileges: int = 0, edx: int = 0, apic_mode: str = "user"
) -> tuple[Partition, FakeMemory, FakeIrq]:
    caps = Caps(
        features=frozenset({"hypercall-msrs", "vp-index"}),
        privileges=int(BASE_PRIVS | privileges),
        features_edx=edx,
        apic_mode=apic_mode,
    )
    mem, irq = FakeMemory(1 << 20), FakeIrq()
    p = Partition(caps, vps, mem, FakeClock(), irq, FakeHooks())
    attach_synic(p)
    return p, mem, irq


def test_synic_msrs_gp_without_access_synic_regs() -> None:
    p, *_ = make_partition()
    for index in (M.HV_X64_MSR_SCONTROL, M.HV_X64_MSR_SVERSION, M.HV_X64_MSR_EOM, M.HV_X64_MSR_SINT0 + 7):
        with pytest.raises(GuestException):
            p.rdmsr(0, index)
        with pytest.raises(GuestException):
            p.wrmsr(0, index, 0)


def test_synic_msrs_through_partition_are_per_vp() -> None:
    p, *_ = make_partition(privileges=P.AccessSynicRegs)
    p.wrmsr(1, M.HV_X64_MSR_SINT0 + 2, 0x42)
    assert p.rdmsr(1, M.HV_X64_MSR_SINT0 + 2) == 0x42
    assert p.rdmsr(0, M.HV_X64_MSR_SINT0 + 2) == SINT_RESET
    assert p.rdmsr(0, M.HV_X64_MSR_SVERSION) == 1
    with pytest.raises(GuestException):
        p.wrmsr(0, M.HV_X64_MSR_SVERSION, 0)
    with pytest.raises(GuestException):
        p.wrmsr(0, M.HV_X64_MSR_SINT0, 5)


def test_partition_reset_resets_synic() -> None:
    p, mem, _ = make_partition(privileges=P.AccessSynicRegs)
    p.wrmsr(0, M.HV_X64_MSR_SCONTROL, 1)
    p.wrmsr(0, M.HV_X64_MSR_SIMP, SIMP_GPA | 1)
    p.wrmsr(0, M.HV_X64_MSR_SINT0, VEC)
    s = synic_of(p.vps[0])
    s.post_message(0, 1, b"a")
    s.post_message(0, 1, b"b")
    p.reset()
    assert p.rdmsr(0, M.HV_X64_MSR_SIMP) == 0 and p.rdmsr(0, M.HV_X64_MSR_SINT0) == SINT_RESET
    assert not s.has_pending and s.queued(0) == 0


# --- overlay pages ---------------------------------------------------------------------------------------


def test_simp_enable_zeroes_page_and_disable_restores_ram() -> None:
    s, mem, _, _ = make()
    mem.write(SIMP_GPA, b"\xaa" * 4096)
    s.write_msr(M.HV_X64_MSR_SIMP, SIMP_GPA | 1)
    assert mem.read(SIMP_GPA, 4096) == bytes(4096)  # stale RAM never looks like a busy slot
    s.write_msr(M.HV_X64_MSR_SIMP, SIMP_GPA)
    assert mem.read(SIMP_GPA, 4096) == b"\xaa" * 4096


def test_simp_move_carries_contents() -> None:
    s, mem, _, _ = make()
    enable(s)
    s.post_message(0, 7, b"hello")
    s.write_msr(M.HV_X64_MSR_SIMP, 0x20000 | 1)
    assert mem.read(SIMP_GPA, 4096) == bytes(4096)
    assert mem.read(0x20000, 4) == (7).to_bytes(4, "little")


def test_siefp_enable_zeroes_page() -> None:
    s, mem, _, _ = make()
    mem.write(SIEFP_GPA, b"\xff" * 4096)
    s.write_msr(M.HV_X64_MSR_SIEFP, SIEFP_GPA | 1)
    assert mem.read(SIEFP_GPA, 4096) == bytes(4096)


def test_simp_beyond_ram_is_enabled_but_not_accessible() -> None:
    s, mem, irq, _ = make()
    s.write_msr(M.HV_X64_MSR_SCONTROL, 1)
    s.write_msr(M.HV_X64_MSR_SINT0, VEC)
    s.write_msr(M.HV_X64_MSR_SIMP, (1 << 40) | 1)  # no fault
    assert s.post_message(0, 9, b"x") == S.SUCCESS
    # Moving the page onto RAM shows what was delivered meanwhile.
    s.write_msr(M.HV_X64_MSR_SIMP, SIMP_GPA | 1)
    assert slot(mem, 0)[0] == 9


# --- messages -------------------------------------------------------------------------------------


def test_post_delivers_into_empty_slot_and_interrupts() -> None:
    s, mem, irq, rec = make()
    enable(s)
    assert s.post_message(0, 0x1234, b"payload", origin=77) == S.SUCCESS
    assert slot(mem, 0) == (0x1234, 7, 0, 77, b"payload")
    assert irq.sent == [(0, VEC, False)]
    assert {"post", "delivered", "sint"} <= set(rec.names())


def test_post_requires_scontrol_and_simp() -> None:
    s, mem, irq, _ = make()
    assert s.post_message(0, 1, b"") == S.INVALID_SYNIC_STATE
    s.write_msr(M.HV_X64_MSR_SCONTROL, 1)
    assert s.post_message(0, 1, b"") == S.INVALID_SYNIC_STATE
    s.write_msr(M.HV_X64_MSR_SIMP, SIMP_GPA | 1)
    assert s.post_message(0, 1, b"") == S.SUCCESS


def test_busy_slot_sets_message_pending_and_eom_redelivers_in_order() -> None:
    s, mem, irq, rec = make()
    enable(s)
    for i in range(3):
        assert s.post_message(0, 100 + i, bytes([i])) == S.SUCCESS
    t, _, flags, _, payload = slot(mem, 0)
    assert t == 100 and flags & MESSAGE_FLAG_PENDING and payload == b"\0"
    assert s.queued(0) == 2 and "queued" in rec.names()
    # EOM with the slot still busy delivers nothing.
    s.write_msr(M.HV_X64_MSR_EOM, 0)
    assert slot(mem, 0)[0] == 100
    guest_clear(mem, 0)
    s.write_msr(M.HV_X64_MSR_EOM, 0)
    t, _, flags, _, payload = slot(mem, 0)
    assert (t, payload) == (101, b"\1") and flags & MESSAGE_FLAG_PENDING  # one more waits
    guest_clear(mem, 0)
    s.write_msr(M.HV_X64_MSR_EOM, 0)
    t, _, flags, _, payload = slot(mem, 0)
    assert (t, payload, flags) == (102, b"\2", 0)
    assert not s.has_pending
    assert [v for _, v, _ in irq.sent] == [VEC, VEC, VEC]


def test_queue_full_returns_insufficient_buffers_and_loses_nothing() -> None:
    s, mem, _, _ = make(queue_depth=4)
    enable(s)
    assert s.post_message(0, 1, b"0") == S.SUCCESS  # in the slot
    for i in range(4):
        assert s.post_message(0, 1, bytes([i + 1])) == S.SUCCESS
    assert s.post_message(0, 1, b"x") == S.INSUFFICIENT_BUFFERS
    got = []
    for _ in range(5):
        got.append(slot(mem, 0)[4])
        guest_clear(mem, 0)
        s.eom()
    assert got == [b"0", b"\1", b"\2", b"\3", b"\4"]
    assert slot(mem, 0)[0] == 0


def test_sints_are_independent() -> None:
    s, mem, irq, _ = make()
    enable(s, {0: VEC, 1: VEC + 1})
    s.post_message(0, 1, b"a")
    s.post_message(0, 1, b"b")  # queued behind SINT0's busy slot
    s.post_message(1, 2, b"c")
    assert slot(mem, 1)[4] == b"c"
    assert irq.sent == [(0, VEC, False), (0, VEC + 1, False)]


def test_masked_sint_gets_the_message_but_no_interrupt() -> None:
    s, mem, irq, _ = make()
    enable(s, {0: VEC | SINT_MASKED})
    assert s.post_message(0, 5, b"m") == S.SUCCESS
    assert slot(mem, 0)[0] == 5 and irq.sent == []


def test_eom_drains_a_masked_sint() -> None:
    s, mem, irq, _ = make()
    enable(s, {0: VEC | SINT_MASKED})
    s.post_message(0, 5, b"1")
    s.post_message(0, 5, b"2")
    guest_clear(mem, 0)
    s.eom()
    assert slot(mem, 0)[4] == b"2" and irq.sent == []


def test_simp_disabled_keeps_messages_queued_until_enabled() -> None:
    s, mem, irq, _ = make()
    enable(s)
    s.post_message(0, 1, b"1")
    s.post_message(0, 1, b"2")
    s.write_msr(M.HV_X64_MSR_SIMP, SIMP_GPA)  # disable: the delivered "1" goes with the page
    assert s.post_message(0, 1, b"3") == S.INVALID_SYNIC_STATE
    s.eom()
    assert s.queued(0) == 1
    s.write_msr(M.HV_X64_MSR_SIMP, SIMP_GPA | 1)  # enable: zeroed page, queued "2" delivered
    assert slot(mem, 0)[4] == b"2" and not s.has_pending


def test_scontrol_disable_holds_delivery_and_enable_resumes() -> None:
    s, mem, irq, _ = make()
    enable(s)
    s.post_message(0, 1, b"1")
    s.post_message(0, 1, b"2")
    s.write_msr(M.HV_X64_MSR_SCONTROL, 0)
    guest_clear(mem, 0)
    s.eom()
    assert slot(mem, 0)[0] == 0 and s.queued(0) == 1
    s.write_msr(M.HV_X64_MSR_SCONTROL, 1)
    assert slot(mem, 0)[4] == b"2"


def test_eoi_of_the_sint_vector_redelivers() -> None:
    s, mem, irq, _ = make()
    enable(s, {0: VEC, 1: VEC + 1})
    s.post_message(0, 1, b"1")
    s.post_message(0, 1, b"2")
    guest_clear(mem, 0)
    s.eoi(VEC + 1)  # another vector: nothing
    assert slot(mem, 0)[0] == 0
    s.eoi(VEC)
    assert slot(mem, 0)[4] == b"2"


def test_sint_write_and_rescan_redeliver() -> None:
    s, mem, _, _ = make()
    enable(s)
    s.post_message(0, 1, b"1")
    s.post_message(0, 1, b"2")
    s.post_message(0, 1, b"3")
    guest_clear(mem, 0)
    s.write_msr(M.HV_X64_MSR_SINT0, VEC)
    assert slot(mem, 0)[4] == b"2"
    guest_clear(mem, 0)
    s.rescan()
    assert slot(mem, 0)[4] == b"3"


def test_guest_clears_slot_between_flag_and_recheck(monkeypatch: pytest.MonkeyPatch) -> None:
    """The MessagePending race: the guest empties the slot (and reads MessagePending = 0) after we
    saw it busy but before our flag landed; the re-check after setting the flag delivers at once."""
    s, mem, _, _ = make()
    enable(s)
    s.post_message(0, 1, b"1")
    real = struct.Struct("<I")

    class RacyU32:
        n = 0

        def unpack_from(self, buf: Any, off: int = 0) -> tuple[int, ...]:
            r = real.unpack_from(buf, off)
            self.n += 1
            if self.n == 1:
                guest_clear(mem, 0)  # lands right after our first look
            return r

    monkeypatch.setattr(synic_mod, "_U32", RacyU32())
    assert s.post_message(0, 2, b"2") == S.SUCCESS
    assert slot(mem, 0)[4] == b"2" and not s.has_pending


def test_auto_eoi_flag_passed_through() -> None:
    s, mem, irq, _ = make()
    enable(s, {3: VEC | SINT_AUTO_EOI})
    s.post_message(3, 1, b"")
    assert irq.sent == [(0, VEC, True)]


def test_auto_eoi_unsupported_is_traced_and_logged_for_every_sint(caplog: pytest.LogCaptureFixture) -> None:
    # Issue 9: the warning named only the first AutoEOI SINT of a VP; each SINT is its own guest bug.
    s, mem, irq, rec = make(auto_eoi_supported=False)
    enable(s, {3: VEC | SINT_AUTO_EOI})
    s.write_msr(M.HV_X64_MSR_SINT0 + 4, VEC | SINT_AUTO_EOI)
    s.write_msr(M.HV_X64_MSR_SINT0 + 3, VEC | SINT_AUTO_EOI)  # the same SINT again: traced, not re-logged
    assert rec.names().count("auto-eoi-unsupported") == 3
    warnings = [r.getMessage() for r in caplog.records if "AutoEOI" in r.getMessage()]
    assert len(warnings) == 2
    assert "SINT3 " in warnings[0] and "SINT4 " in warnings[1]


def test_sint_generation_changes_with_every_sint_write_and_reset() -> None:
    s, mem, irq, _ = make()
    g0 = s.sint_generation
    s.write_msr(M.HV_X64_MSR_SINT0 + 2, VEC | SINT_AUTO_EOI)
    g1 = s.sint_generation
    s.reset()
    assert g0 < g1 < s.sint_generation


def test_polling_sint_gets_messages_without_interrupts() -> None:
    s, mem, irq, _ = make()
    enable(s, {2: VEC | SINT_POLLING})
    assert s.post_message(2, 1, b"p") == S.SUCCESS
    assert slot(mem, 2)[0] == 1 and irq.sent == []
    assert s.signal_event(2, 5) == (S.SUCCESS, True)  # polling counts as unmasked
    assert irq.sent == []


def test_polling_bit_without_the_feature_is_just_stored() -> None:
    s, mem, irq, _ = make(polling_supported=False)
    enable(s, {2: VEC | SINT_POLLING})
    s.post_message(2, 1, b"p")
    assert irq.sent == [(0, VEC, False)]


def test_drop_messages_of_owner_releases_buffers() -> None:
    s, mem, _, _ = make()
    enable(s)
    a, b = Owner(), Owner()
    s.post_message(0, 1, b"a0", owner=a)
    s.post_message(0, 1, b"b0", owner=b)
    s.post_message(0, 1, b"a1", owner=a)
    assert a.released == 1  # delivered into the slot
    assert s.drop_messages(a) == 1 and a.released == 2
    guest_clear(mem, 0)
    s.eom()
    assert slot(mem, 0)[4] == b"b0" and b.released == 1


def test_reset_releases_queued_buffers_and_clears_pages() -> None:
    s, mem, _, _ = make()
    enable(s)
    o = Owner()
    for _ in range(3):
        s.post_message(0, 1, b"x", owner=o)
    s.reset()
    assert o.released == 3 and not s.has_pending
    assert s.simp_page.read() == bytes(4096)


def test_try_post_and_ready_listener() -> None:
    s, mem, irq, _ = make()
    ready: list[int] = []
    s.add_ready_listener(ready.append)
    assert not s.try_post(0, 0x80000010, b"t")  # SynIC off
    enable(s)
    assert 0 in ready  # SINT0 written while everything enabled
    assert s.try_post(0, 0x80000010, b"t")
    assert not s.try_post(0, 0x80000010, b"u")  # busy: MessagePending set
    assert slot(mem, 0)[2] & MESSAGE_FLAG_PENDING
    ready.clear()
    s.eom()
    assert ready == []  # still busy
    guest_clear(mem, 0)
    s.eom()
    assert ready == [0]
    s.write_msr(M.HV_X64_MSR_SINT0 + 1, VEC | SINT_MASKED)
    assert not s.try_post(1, 0x80000010, b"m")  # masked SINT: not now


def test_raise_sint() -> None:
    s, _, irq, _ = make()
    assert not s.raise_sint(0)
    enable(s, {0: VEC, 1: VEC | SINT_MASKED, 2: VEC | SINT_POLLING})
    assert s.raise_sint(0) and not s.raise_sint(1) and not s.raise_sint(2)
    assert irq.sent == [(0, VEC, False)]


# --- event flags -----------------------------------------------------------------------------------


def test_event_flag_set_newly_and_interrupt_only_on_0_to_1() -> None:
    s, mem, irq, _ = make()
    enable(s, {1: VEC})
    assert s.signal_event(1, 13) == (S.SUCCESS, True)
    assert mem.read(SIEFP_GPA + 256 + 1, 1) == bytes([1 << 5])
    assert s.signal_event(1, 13) == (S.SUCCESS, False)
    assert irq.sent == [(0, VEC, False)]
    mem.write(SIEFP_GPA + 256 + 1, b"\0")  # the guest clears it (LOCK AND)
    assert s.signal_event(1, 13) == (S.SUCCESS, True)
    assert len(irq.sent) == 2


def test_event_flag_layout_bit_k_of_byte_k_div_8() -> None:
    s, mem, _, _ = make()
    enable(s, {15: VEC})
    s.signal_event(15, HV_EVENT_FLAGS_COUNT - 1)
    s.signal_event(15, 0)
    assert mem.read(SIEFP_GPA + 15 * 256, 1) == b"\x01"
    assert mem.read(SIEFP_GPA + 15 * 256 + 255, 1) == b"\x80"
    assert s.event_flag(15, 2047) and not s.event_flag(15, 2046)


def test_event_flags_only_set_bits() -> None:
    s, mem, _, _ = make()
    enable(s, {0: VEC})
    mem.write(SIEFP_GPA, b"\x0e")  # (not possible for a guest to set, but must be preserved)
    s.signal_event(0, 0)
    assert mem.read(SIEFP_GPA, 1) == b"\x0f"


def test_event_invalid_synic_state() -> None:
    s, mem, irq, _ = make()
    assert s.signal_event(0, 1) == (S.INVALID_SYNIC_STATE, False)
    s.write_msr(M.HV_X64_MSR_SCONTROL, 1)
    s.write_msr(M.HV_X64_MSR_SINT0, VEC)
    assert s.signal_event(0, 1) == (S.INVALID_SYNIC_STATE, False)  # SIEFP off
    s.write_msr(M.HV_X64_MSR_SIEFP, SIEFP_GPA | 1)
    s.write_msr(M.HV_X64_MSR_SINT0, VEC | SINT_MASKED)
    assert s.signal_event(0, 1) == (S.INVALID_SYNIC_STATE, False)  # masked SINT
    assert mem.read(SIEFP_GPA, 1) == b"\0"


def test_event_auto_eoi() -> None:
    s, _, irq, _ = make()
    enable(s, {4: 0x99 | SINT_AUTO_EOI})
    s.signal_event(4, 0)
    assert irq.sent == [(0, 0x99, True)]


def test_describe() -> None:
    s, *_ = make()
    enable(s)
    d = s.describe()
    assert d["scontrol"] == 1 and d["sints"][0] == VEC and d["queued"] == [0] * 16


def test_counters_and_edx_constant() -> None:
    assert FeaturesEdx.SintPollingModeAvailable == 1 << 17
