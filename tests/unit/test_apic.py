"""hv1's local APIC model (hv1/hv/apic.py): registers, priority, EOI, IPIs, LVT timer, x2APIC rules.

References: Intel SDM vol. 3 "Advanced Programmable Interrupt Controller" (register semantics), TLFS
virtual-interrupts.md "Local APIC" (allowed deviations), inter-partition-communication.md (AutoEOI),
requirements-for-implementing-hv1.txt "Inter-Processor Interrupts" (self-IPI before the next
instruction); inventory §6.4.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hv1.hv.apic import (
    APIC_BASE_BSP,
    APIC_BASE_EN,
    APIC_BASE_EXTD,
    APIC_DEFAULT_BASE,
    APIC_VERSION,
    APIC_VERSION_X2,
    ESR_RECV_ILLEGAL_VECTOR,
    ESR_SEND_ILLEGAL_VECTOR,
    LVT_MASKED,
    LVT_TIMER_PERIODIC,
    MIN_PERIODIC_NS,
    MSR_IA32_APIC_BASE,
    ApicHooks,
    ApicMode,
    ApicRouter,
    DeliveryMode,
    DestMode,
    LocalApic,
    Shorthand,
    match_destination,
    route,
    x2apic_ldr,
)
from hv1.hv.interfaces import GP_VECTOR, GuestException

# xAPIC MMIO offsets
ID, VER, TPR, APR, PPR, EOI, LDR, DFR, SVR = 0x20, 0x30, 0x80, 0x90, 0xA0, 0xB0, 0xD0, 0xE0, 0xF0
ISR0, TMR0, IRR0, ESR, ICR_LO, ICR_HI = 0x100, 0x180, 0x200, 0x280, 0x300, 0x310
LVT_TIMER, LVT_LINT0, LVT_ERROR, TMICT, TMCCT, TDCR = 0x320, 0x350, 0x370, 0x380, 0x390, 0x3E0


def msr(offset: int) -> int:
    return 0x800 + (offset >> 4)


X2_ICR = 0x830
X2_SELF_IPI = 0x83F


class NsClock:
    def __init__(self) -> None:
        self.t = 1_000_000

    def __call__(self) -> int:
        return self.t


@dataclass
class FakeTracer:
    events: list[tuple[str, int, str, dict[str, Any]]] = field(default_factory=list)

    def wants(self, cat: str) -> bool:
        return True

    def emit(self, cat: str, vp: int, event: str, **fields: Any) -> None:
        self.events.append((cat, vp, event, fields))


def make(apic_id: int = 0, clock: NsClock | None = None, **kw: Any) -> LocalApic:
    return LocalApic(apic_id, clock or NsClock(), **kw)


def enabled(apic_id: int = 0, clock: NsClock | None = None, **kw: Any) -> LocalApic:
    apic = make(apic_id, clock, **kw)
    apic.mmio_write(SVR, 4, 0x1FF)
    return apic


def to_x2apic(apic: LocalApic) -> LocalApic:
    apic.msr_write(MSR_IA32_APIC_BASE, apic.apic_base | APIC_BASE_EXTD)
    return apic


def gp_raised(fn: Any, *args: Any) -> bool:
    try:
        fn(*args)
    except GuestException as e:
        assert e.vector == GP_VECTOR
        return True
    return False


# ---------------------------------------------------------------------------------------------------
# Power-on state and xAPIC register semantics


def test_power_on_state_sdm_local_apic_state_after_reset() -> None:
    bsp = make(0, bsp=True)
    ap = make(3)
    assert bsp.apic_base == APIC_DEFAULT_BASE | APIC_BASE_EN | APIC_BASE_BSP
    assert ap.apic_base == APIC_DEFAULT_BASE | APIC_BASE_EN
    assert ap.mode is ApicMode.XAPIC and ap.mmio_base() == APIC_DEFAULT_BASE
    assert ap.mmio_read(ID, 4) == 3 << 24
    # The LVR KVM's in-kernel APIC reads under a split irqchip with x2APIC in CPUID (kvm_apic_set_version)
    assert ap.mmio_read(VER, 4) == APIC_VERSION_X2 == 0x01050014
    assert make(4, x2apic_supported=False).mmio_read(VER, 4) == APIC_VERSION == 0x00050014
    assert ap.mmio_read(SVR, 4) == 0xFF and not ap.sw_enabled
    assert ap.mmio_read(DFR, 4) == 0xFFFFFFFF
    for off in range(LVT_TIMER, LVT_ERROR + 0x10, 0x10):
        assert ap.mmio_read(off, 4) == LVT_MASKED
    assert ap.mmio_read(TPR, 4) == ap.mmio_read(PPR, 4) == ap.mmio_read(LDR, 4) == 0
    assert ap.mmio_read(TMICT, 4) == ap.mmio_read(TMCCT, 4) == ap.mmio_read(TDCR, 4) == 0


def test_xapic_register_write_masks() -> None:
    a = make(2)
    a.mmio_write(ID, 4, 0x07000000)  # APIC IDs are read-only here (TLFS "Local APIC" deviations)
    assert a.mmio_read(ID, 4) == 2 << 24
    a.mmio_write(VER, 4, 0)
    assert a.mmio_read(VER, 4) == APIC_VERSION_X2
    a.mmio_write(TPR, 4, 0x1234)
    assert a.mmio_read(TPR, 4) == 0x34 and a.tpr == 0x34 and a.get_cr8() == 3
    a.mmio_write(LDR, 4, 0x12345678)
    assert a.mmio_read(LDR, 4) == 0x12000000
    a.mmio_write(DFR, 4, 0x00000000)
    assert a.mmio_read(DFR, 4) == 0x0FFFFFFF  # cluster model, low 28 bits read as ones
    a.mmio_write(SVR, 4, 0xFFFFFFFF)
    assert a.mmio_read(SVR, 4) == 0x13FF  # bit 12 (suppress EOI broadcast): LVR bit 24 is set
    a.mmio_write(ICR_HI, 4, 0xFFFFFFFF)
    assert a.mmio_read(ICR_HI, 4) == 0xFF000000
    a.mmio_write(TDCR, 4, 0xFF)
    assert a.mmio_read(TDCR, 4) == 0xB
    a.mmio_write(LVT_TIMER, 4, 0xFFFFFFFF)  # bit 18 (TSC-deadline) not supported: dropped
    assert a.mmio_read(LVT_TIMER, 4) == 0x000300FF
    a.mmio_write(LVT_LINT0, 4, 0xFFFFFFFF)
    assert a.mmio_read(LVT_LINT0, 4) == 0x0001A7FF
    a.mmio_write(PPR, 4, 0xFF)  # read-only: ignored
    assert a.mmio_read(PPR, 4) == 0x34


def test_xapic_odd_accesses_read_zero_and_writes_are_ignored() -> None:
    a = make(1)
    for off, size in [(ID, 1), (ID, 2), (ID, 8), (ID + 4, 4), (ID + 1, 4), (0x1000, 4), (-16, 4), (0x3F0, 4)]:
        assert a.mmio_read(off, size) == 0
    a.mmio_write(TPR, 2, 0xFF)
    a.mmio_write(TPR + 4, 4, 0xFF)
    a.mmio_write(0x2000, 4, 0xFF)
    assert a.mmio_read(TPR, 4) == 0
    assert a.mmio_read(APR, 4) == 0 and a.mmio_read(EOI, 4) == 0


def test_software_disabled_apic_keeps_lvts_masked_and_drops_fixed_interrupts() -> None:
    a = make()
    a.mmio_write(LVT_TIMER, 4, 0x40)
    assert a.mmio_read(LVT_TIMER, 4) == LVT_MASKED | 0x40  # SDM: mask cannot be cleared while disabled
    assert not a.accept(0x40)
    assert a.irr == 0 and a.pending_vector() is None
    a.mmio_write(SVR, 4, 0x1FF)
    a.mmio_write(LVT_TIMER, 4, 0x40)
    assert a.mmio_read(LVT_TIMER, 4) == 0x40
    a.mmio_write(SVR, 4, 0x0FF)  # software disable masks every LVT
    assert a.mmio_read(LVT_TIMER, 4) == LVT_MASKED | 0x40


def test_esr_write_latches_errors_seen_since_the_previous_write() -> None:
    a = enabled()
    a.accept(3)
    assert a.mmio_read(ESR, 4) == 0
    a.mmio_write(ESR, 4, 0)
    assert a.mmio_read(ESR, 4) == ESR_RECV_ILLEGAL_VECTOR
    a.mmio_write(ESR, 4, 0)
    assert a.mmio_read(ESR, 4) == 0


# ---------------------------------------------------------------------------------------------------
# Priority, acceptance, EOI


def test_irr_to_isr_and_ppr_blocks_lower_classes() -> None:
    a = enabled()
    assert a.accept(0x30) and a.accept(0x50)
    assert a.mmio_read(IRR0 + 0x10 * (0x30 // 32), 4) & (1 << (0x30 % 32))
    assert a.pending_vector() == 0x50
    assert a.acknowledge(0x50)
    assert a.isr == 1 << 0x50 and a.mmio_read(ISR0 + 0x10 * (0x50 // 32), 4) == 1 << (0x50 % 32)
    assert a.mmio_read(PPR, 4) == 0x50
    assert a.pending_vector() is None  # class 3 does not beat PPR class 5
    a.accept(0x55)
    assert a.pending_vector() is None  # same class as the in-service one: must wait
    a.accept(0x61)
    assert a.pending_vector() == 0x61  # higher class nests
    assert a.take_pending() == 0x61
    assert a.mmio_read(PPR, 4) == 0x60
    a.mmio_write(EOI, 4, 0)
    assert a.isr == 1 << 0x50  # EOI retires the highest in-service vector first
    assert a.eoi() == 0x50
    assert a.pending_vector() == 0x55
    assert not a.acknowledge(0x99)  # not in IRR: no change


def test_tpr_masks_interrupts_by_class() -> None:
    a = enabled()
    a.mmio_write(TPR, 4, 0x45)
    a.accept(0x4F)
    assert a.mmio_read(PPR, 4) == 0x45
    assert a.pending_vector() is None  # class 4 <= TPR class 4
    a.accept(0x50)
    assert a.pending_vector() == 0x50
    a.set_cr8(0x6)
    assert a.tpr == 0x60 and a.pending_vector() is None
    a.tpr = 0
    assert a.pending_vector() == 0x50


def test_ppr_is_tpr_when_tpr_class_is_at_least_the_isr_class() -> None:
    a = enabled()
    a.accept(0x35)
    a.take_pending()
    a.tpr = 0x3A
    assert a.ppr == 0x3A
    a.tpr = 0x2F
    assert a.ppr == 0x30


def test_eoi_with_nothing_in_service_is_harmless() -> None:
    a = enabled()
    assert a.eoi() is None
    a.mmio_write(EOI, 4, 0)
    assert a.isr == 0


def test_auto_eoi_acknowledge_clears_irr_without_isr() -> None:
    # TLFS inter-partition-communication.md: AutoEOI SINTs are never put in service.
    a = enabled()
    a.accept(0x40, auto_eoi=True)
    a.accept(0x30)
    assert a.take_pending() == 0x40
    assert a.isr == 0 and a.irr == 1 << 0x30
    assert a.pending_vector() == 0x30  # PPR untouched by the auto-EOI'd vector
    # Re-accepting the same vector without auto-EOI puts it in service as usual.
    a.accept(0x40)
    assert a.take_pending() == 0x40 and a.isr == 1 << 0x40


def test_level_triggered_sets_tmr_and_eoi_hook_reports_level() -> None:
    seen: list[tuple[str, int, bool]] = []

    class Hooks(ApicHooks):
        def accepted(self, apic: LocalApic, vector: int, level: bool, auto_eoi: bool) -> None:
            seen.append(("accepted", vector, level))

        def eoi(self, apic: LocalApic, vector: int, level: bool) -> None:
            seen.append(("eoi", vector, level))

    a = enabled()
    a.hooks = Hooks()
    a.accept(0x70, level=True)
    assert a.tmr == 1 << 0x70 and a.mmio_read(TMR0 + 0x30, 4) == 1 << (0x70 - 96)
    a.take_pending()
    a.eoi()
    a.accept(0x71)
    assert a.tmr == 1 << 0x70
    a.take_pending()
    a.mmio_write(EOI, 4, 0)
    a.mmio_write(TDCR, 4, 0xB)
    a.mmio_write(LVT_TIMER, 4, 0x72)
    a.mmio_write(TMICT, 4, 10)
    a.poll_timer(a.timer_deadline() or 0)
    seen.append(("irr", a.irr.bit_length() - 1, False))
    assert seen[-2:] == [("accepted", 0x72, False), ("irr", 0x72, False)]
    del seen[-2:]
    assert seen == [
        ("accepted", 0x70, True),
        ("eoi", 0x70, True),
        ("accepted", 0x71, False),
        ("eoi", 0x71, False),
    ]


def test_illegal_vectors_are_not_delivered_and_raise_the_error_lvt() -> None:
    a = enabled()
    assert not a.accept(15)
    assert a.irr == 0
    a.mmio_write(LVT_ERROR, 4, 0xFE)
    assert a.accept(0)  # the error interrupt became pending
    assert a.irr == 1 << 0xFE
    a.mmio_write(ESR, 4, 0)
    assert a.mmio_read(ESR, 4) == ESR_RECV_ILLEGAL_VECTOR
    # An illegal error vector does not loop.
    a.mmio_write(LVT_ERROR, 4, 0x02)
    assert not a.accept(1)


def test_illegal_vector_in_icr_is_a_send_error_and_is_not_sent() -> None:
    a, b = enabled(0), enabled(1)
    ApicRouter([a, b])
    a.mmio_write(ICR_HI, 4, 1 << 24)
    a.mmio_write(ICR_LO, 4, 0x0F)
    assert b.irr == 0
    a.mmio_write(ESR, 4, 0)
    assert a.mmio_read(ESR, 4) == ESR_SEND_ILLEGAL_VECTOR


def test_eoi_can_be_lazy_condition_tlfs_eoi_assist() -> None:
    a = enabled()
    a.accept(0x80)
    assert a.take_pending() == 0x80
    assert a.eoi_can_be_lazy(0x80)
    a.accept(0x40)  # a lower-priority interrupt now pending: the EOI must trap
    assert not a.eoi_can_be_lazy(0x80)
    b = enabled()
    b.accept(0x80, level=True)
    b.take_pending()
    assert not b.eoi_can_be_lazy(0x80)  # level-triggered never
    assert not b.eoi_can_be_lazy(0x81)  # not in service


# ---------------------------------------------------------------------------------------------------
# Routing


@dataclass
class T:
    apic_id: int
    ldr: int = 0
    dfr: int = 0xFFFFFFFF
    x2apic_mode: bool = False
    hw_enabled: bool = True


def ids(targets: list[T]) -> list[int]:
    return [t.apic_id for t in targets]


def test_route_physical_and_broadcast_xapic() -> None:
    apics = [T(0), T(1), T(2), T(3, hw_enabled=False)]
    assert ids(route(apics, apics[0], 2, DestMode.PHYSICAL, Shorthand.NONE)) == [2]
    assert ids(route(apics, apics[0], 7, DestMode.PHYSICAL, Shorthand.NONE)) == []
    assert ids(route(apics, apics[0], 0xFF, DestMode.PHYSICAL, Shorthand.NONE)) == [0, 1, 2]
    assert ids(route(apics, apics[0], 0xFF, DestMode.LOGICAL, Shorthand.NONE)) == [0, 1, 2]


def test_route_shorthands() -> None:
    apics = [T(0), T(1), T(2)]
    src = apics[1]
    assert ids(route(apics, src, 0, DestMode.PHYSICAL, Shorthand.SELF)) == [1]
    assert ids(route(apics, src, 0, DestMode.PHYSICAL, Shorthand.ALL)) == [0, 1, 2]
    assert ids(route(apics, src, 0, DestMode.PHYSICAL, Shorthand.ALL_BUT_SELF)) == [0, 2]
    assert route(apics, None, 0, DestMode.PHYSICAL, Shorthand.SELF) == []


def test_route_logical_flat() -> None:
    apics = [T(i, ldr=(1 << i) << 24, dfr=0xFFFFFFFF) for i in range(4)]
    assert ids(route(apics, None, 0b0101, DestMode.LOGICAL, Shorthand.NONE)) == [0, 2]
    assert ids(route(apics, None, 0, DestMode.LOGICAL, Shorthand.NONE)) == []


def test_route_logical_cluster() -> None:
    # cluster in LDR[31:28], member bit in LDR[27:24]
    apics = [T(i, ldr=((i // 4) << 28) | ((1 << (i % 4)) << 24), dfr=0x0FFFFFFF) for i in range(8)]
    assert ids(route(apics, None, 0x13, DestMode.LOGICAL, Shorthand.NONE)) == [4, 5]
    assert ids(route(apics, None, 0x0F, DestMode.LOGICAL, Shorthand.NONE)) == [0, 1, 2, 3]
    assert ids(route(apics, None, 0x20, DestMode.LOGICAL, Shorthand.NONE)) == []


def test_route_x2apic_physical_logical_broadcast() -> None:
    apics = [T(i, ldr=x2apic_ldr(i), x2apic_mode=True) for i in range(20)]
    src = apics[0]
    assert ids(route(apics, src, 17, DestMode.PHYSICAL, Shorthand.NONE)) == [17]
    assert ids(route(apics, src, 0xFF, DestMode.PHYSICAL, Shorthand.NONE)) == []  # 0xFF is an ID here
    assert len(route(apics, src, 0xFFFFFFFF, DestMode.PHYSICAL, Shorthand.NONE)) == 20
    assert len(route(apics, src, 0xFFFFFFFF, DestMode.LOGICAL, Shorthand.NONE)) == 20
    # cluster 1 (IDs 16-31), members 0 and 2 -> IDs 16 and 18
    assert ids(route(apics, src, (1 << 16) | 0b101, DestMode.LOGICAL, Shorthand.NONE)) == [16, 18]
    assert ids(route(apics, src, 0b11, DestMode.LOGICAL, Shorthand.NONE)) == [0, 1]
    assert x2apic_ldr(0x25) == (2 << 16) | (1 << 5)


def test_match_destination_reads_broadcast_in_the_senders_format() -> None:
    x2 = T(5, ldr=x2apic_ldr(5), x2apic_mode=True)
    assert match_destination(x2, 0xFF, DestMode.PHYSICAL, src_x2apic=False)
    assert not match_destination(x2, 0xFF, DestMode.PHYSICAL, src_x2apic=True)
    xa = T(5)
    assert not match_destination(xa, 0x105, DestMode.PHYSICAL, src_x2apic=True)
    assert not match_destination(T(1, ldr=1 << 24, dfr=0x5FFFFFFF), 1, DestMode.LOGICAL, False)


# ---------------------------------------------------------------------------------------------------
# IPIs through the router


@dataclass
class Calls:
    kicks: list[int] = field(default_factory=list)
    inits: list[int] = field(default_factory=list)
    sipis: list[tuple[int, int]] = field(default_factory=list)
    nmis: list[int] = field(default_factory=list)


def system(n: int = 4, x2: bool = False) -> tuple[list[LocalApic], ApicRouter, Calls]:
    clock = NsClock()
    apics = [enabled(i, clock, bsp=i == 0) for i in range(n)]
    if x2:
        for a in apics:
            to_x2apic(a)
    calls = Calls()
    router = ApicRouter(
        apics,
        kick=calls.kicks.append,
        on_init=calls.inits.append,
        on_sipi=lambda vp, vec: calls.sipis.append((vp, vec)),
        on_nmi=calls.nmis.append,
    )
    return apics, router, calls


def xapic_ipi(src: LocalApic, dest: int, low: int) -> None:
    src.mmio_write(ICR_HI, 4, dest << 24)
    src.mmio_write(ICR_LO, 4, low)


def test_fixed_ipi_physical_kicks_the_target() -> None:
    apics, _, calls = system()
    xapic_ipi(apics[0], 2, 0x41)
    assert apics[2].irr == 1 << 0x41 and apics[1].irr == 0
    assert calls.kicks == [2]
    assert apics[0].mmio_read(ICR_LO, 4) == 0x41  # delivery status idle
    assert apics[0].mmio_read(ICR_HI, 4) == 2 << 24


def test_self_ipi_is_pending_when_the_icr_write_returns() -> None:
    # TLFS requirements "Inter-Processor Interrupts": taken before the next guest instruction.
    apics, _, calls = system()
    xapic_ipi(apics[1], 0, (Shorthand.SELF << 18) | 0x42)
    assert apics[1].pending_vector() == 0x42
    xapic_ipi(apics[1], 1, 0x43)  # physical to itself
    assert apics[1].pending_vector() == 0x43
    assert calls.kicks == []  # never kick the sender: its run loop checks after the exit


def test_broadcast_and_all_but_self() -> None:
    apics, _, calls = system()
    xapic_ipi(apics[0], 0, (Shorthand.ALL_BUT_SELF << 18) | 0x50)
    assert [bool(a.irr) for a in apics] == [False, True, True, True]
    assert sorted(calls.kicks) == [1, 2, 3]
    xapic_ipi(apics[3], 0, (Shorthand.ALL << 18) | 0x51)
    assert all(a.irr & (1 << 0x51) for a in apics)
    xapic_ipi(apics[3], 0xFF, 0x52)
    assert all(a.irr & (1 << 0x52) for a in apics)


def test_logical_flat_ipi_through_mmio() -> None:
    apics, _, _ = system()
    for i, a in enumerate(apics):
        a.mmio_write(LDR, 4, (1 << i) << 24)
    xapic_ipi(apics[0], 0b1010, (DestMode.LOGICAL << 11) | 0x60)
    assert [bool(a.irr) for a in apics] == [False, True, False, True]


def test_logical_cluster_ipi_through_mmio() -> None:
    apics, _, _ = system()
    for i, a in enumerate(apics):
        a.mmio_write(DFR, 4, 0x0FFFFFFF)
        a.mmio_write(LDR, 4, ((i // 2) << 28) | ((1 << (i % 2)) << 24))
    xapic_ipi(apics[0], 0x13, (DestMode.LOGICAL << 11) | 0x61)
    assert [bool(a.irr) for a in apics] == [False, False, True, True]


def test_init_sipi_nmi_callbacks() -> None:
    apics, _, calls = system()
    xapic_ipi(apics[0], 0, (Shorthand.ALL_BUT_SELF << 18) | (DeliveryMode.INIT << 8) | (1 << 14))
    assert calls.inits == [1, 2, 3]
    # INIT level de-assert (trigger level, level 0) does nothing.
    xapic_ipi(apics[0], 0, (Shorthand.ALL_BUT_SELF << 18) | (DeliveryMode.INIT << 8) | (1 << 15))
    assert calls.inits == [1, 2, 3]
    xapic_ipi(apics[0], 2, (DeliveryMode.SIPI << 8) | 0x08)
    assert calls.sipis == [(2, 0x08)]
    xapic_ipi(apics[0], 3, DeliveryMode.NMI << 8)
    assert calls.nmis == [3]
    assert all(a.irr == 0 for a in apics)


def test_init_without_callback_resets_the_target_apic_but_keeps_id_and_base() -> None:
    a, b = enabled(0), enabled(1)
    ApicRouter([a, b])
    b.accept(0x40)
    b.tpr = 0x20
    xapic_ipi(a, 1, (DeliveryMode.INIT << 8) | (1 << 14))
    assert b.irr == 0 and b.tpr == 0 and not b.sw_enabled
    assert b.apic_id == 1 and b.apic_base == APIC_DEFAULT_BASE | APIC_BASE_EN


def test_self_shorthand_only_carries_fixed() -> None:
    apics, _, calls = system()
    xapic_ipi(apics[0], 0, (Shorthand.SELF << 18) | (DeliveryMode.NMI << 8))
    assert calls.nmis == []


def test_lowest_priority_picks_lowest_ppr() -> None:
    apics, _, _ = system()
    for a in apics:
        a.tpr = 0x80
    apics[2].tpr = 0x10
    xapic_ipi(apics[0], 0xFF, (DeliveryMode.LOWEST << 8) | 0x90)
    assert [bool(a.irr) for a in apics] == [False, False, True, False]


def test_reserved_delivery_mode_and_smi_are_dropped() -> None:
    apics, _, calls = system()
    xapic_ipi(apics[0], 1, (3 << 8) | 0x40)
    xapic_ipi(apics[0], 1, (DeliveryMode.SMI << 8) | 0x40)
    assert apics[1].irr == 0 and calls.kicks == []


def test_x2apic_icr_and_self_ipi_msrs() -> None:
    apics, _, calls = system(x2=True)
    apics[0].msr_write(X2_ICR, (3 << 32) | 0x44)
    assert apics[3].irr == 1 << 0x44 and calls.kicks == [3]
    assert apics[0].msr_read(X2_ICR) == (3 << 32) | 0x44
    apics[0].msr_write(X2_SELF_IPI, 0x45)
    assert apics[0].pending_vector() == 0x45
    apics[1].msr_write(X2_ICR, (0xFFFFFFFF << 32) | 0x46)
    assert all(a.irr & (1 << 0x46) for a in apics)
    # logical: cluster 0, members 0 and 2
    apics[1].msr_write(X2_ICR, (0b101 << 32) | (1 << 11) | 0x47)
    assert [bool(a.irr & (1 << 0x47)) for a in apics] == [True, False, True, False]
    apics[1].msr_write(X2_ICR, (1 << 12) | (1 << 14) | (0 << 32) | 0x48)  # bit 12 is tolerated
    assert apics[0].irr & (1 << 0x48)


def test_write_icr_64_bit_in_both_modes_for_hv_x64_msr_icr() -> None:
    apics, _, _ = system()
    apics[0].write_icr((2 << 56) | 0x4A)
    assert apics[2].irr == 1 << 0x4A
    assert apics[0].read_icr() == (2 << 56) | 0x4A
    apics2, _, _ = system(x2=True)
    apics2[0].write_icr((2 << 32) | 0x4B)
    assert apics2[2].irr == 1 << 0x4B
    assert gp_raised(apics2[0].write_icr, 1 << 20)


def test_lone_apic_without_router_can_self_ipi() -> None:
    a = enabled()
    a.mmio_write(ICR_LO, 4, (Shorthand.SELF << 18) | 0x40)
    assert a.pending_vector() == 0x40


def test_cross_ipis_from_two_threads_do_not_deadlock() -> None:
    apics, _, _ = system(2, x2=True)

    def blast(src: LocalApic, dest: int) -> None:
        for i in range(300):
            src.msr_write(X2_ICR, (dest << 32) | (0x40 + i % 0x80))
            src.take_pending()
            src.eoi()

    threads = [threading.Thread(target=blast, args=(apics[i], 1 - i)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert not any(t.is_alive() for t in threads)


# ---------------------------------------------------------------------------------------------------
# x2APIC MSR rules and mode transitions


def test_x2apic_msrs_gp_outside_x2apic_mode() -> None:
    a = enabled()
    assert gp_raised(a.msr_read, msr(TPR))
    assert gp_raised(a.msr_write, msr(TPR), 0)
    assert gp_raised(a.msr_read, 0x6E0)  # not ours
    assert not LocalApic.handles_msr(0x6E0) and LocalApic.handles_msr(0x1B) and LocalApic.handles_msr(0x8FF)


def test_x2apic_register_reads() -> None:
    a = to_x2apic(enabled(0x25))
    assert a.mode is ApicMode.X2APIC and a.mmio_base() is None
    assert a.msr_read(msr(ID)) == 0x25
    assert a.msr_read(msr(VER)) == APIC_VERSION_X2
    assert a.msr_read(msr(LDR)) == (2 << 16) | (1 << 5)
    assert a.msr_read(msr(SVR)) == 0x1FF
    a.msr_write(msr(TPR), 0x30)
    assert a.msr_read(msr(TPR)) == 0x30 and a.msr_read(msr(PPR)) == 0x30
    a.accept(0x99)
    assert a.msr_read(0x820 + 4) == 1 << (0x99 - 128)
    # MMIO is no longer decoded in x2APIC mode
    assert a.mmio_read(TPR, 4) == 0
    a.mmio_write(TPR, 4, 0)
    assert a.tpr == 0x30


@pytest.mark.parametrize(
    "reg",
    [0x809, 0x80B, 0x80C, 0x80E, 0x82F, 0x831, 0x83A, 0x83F, 0x840, 0x8FF, 0x801],
)
def test_x2apic_reads_that_gp(reg: int) -> None:
    a = to_x2apic(enabled())
    assert gp_raised(a.msr_read, reg)


@pytest.mark.parametrize(
    "reg,value",
    [
        (msr(ID), 0),  # read-only
        (msr(VER), 0),
        (msr(PPR), 0),
        (msr(LDR), 0),
        (msr(ISR0), 0),
        (msr(TMR0), 0),
        (msr(IRR0), 0),
        (msr(TMCCT), 0),
        (0x809, 0),  # APR: reserved in x2APIC
        (0x80E, 0),  # DFR
        (0x831, 0),  # ICR high
        (0x82F, 0),  # CMCI not implemented (max LVT 5)
        (0x8FF, 0),
        (msr(EOI), 1),  # EOI: only 0
        (msr(ESR), 1),  # ESR: only 0
        (msr(TPR), 0x100),  # reserved bits
        (msr(TPR), 1 << 32),
        (msr(SVR), 0x2000),
        (msr(LVT_TIMER), 1 << 18),  # TSC-deadline mode not supported
        (msr(LVT_ERROR), 0x700),
        (msr(TDCR), 0x4),
        (X2_SELF_IPI, 0x100),
        (X2_ICR, 1 << 13),
        (X2_ICR, 1 << 16),
        (X2_ICR, 1 << 20),
        (X2_ICR, 1 << 64),
        (msr(TPR), -1),
    ],
)
def test_x2apic_writes_that_gp(reg: int, value: int) -> None:
    a = to_x2apic(enabled())
    assert gp_raised(a.msr_write, reg, value)


def test_x2apic_writes_to_read_only_lvt_bits_are_ignored_not_gp() -> None:
    a = to_x2apic(enabled())
    a.msr_write(msr(LVT_LINT0), 0x5000 | 0x20)
    assert a.msr_read(msr(LVT_LINT0)) == 0x20
    a.msr_write(msr(EOI), 0)
    a.msr_write(msr(ESR), 0)


def test_apic_base_transitions_sdm_x2apic_state_transitions() -> None:
    a = enabled(1)
    base = a.apic_base
    a.msr_write(MSR_IA32_APIC_BASE, base | APIC_BASE_EXTD)  # xAPIC -> x2APIC
    assert a.mode is ApicMode.X2APIC and a.ldr == x2apic_ldr(1)
    assert a.sw_enabled  # other state survives the switch
    assert gp_raised(a.msr_write, MSR_IA32_APIC_BASE, base)  # x2APIC -> xAPIC directly
    a.msr_write(MSR_IA32_APIC_BASE, base & ~APIC_BASE_EN)  # x2APIC -> disabled
    assert a.mode is ApicMode.DISABLED and a.mmio_base() is None
    assert not a.sw_enabled and a.ldr == 0  # state reset
    assert not a.accept(0x40) and a.pending_vector() is None
    assert gp_raised(a.msr_write, MSR_IA32_APIC_BASE, base | APIC_BASE_EXTD)  # disabled -> x2APIC
    a.msr_write(MSR_IA32_APIC_BASE, base)  # disabled -> xAPIC
    assert a.mode is ApicMode.XAPIC and a.mmio_read(ID, 4) == 1 << 24
    assert a.msr_read(MSR_IA32_APIC_BASE) == base


@pytest.mark.parametrize(
    "value",
    [
        APIC_DEFAULT_BASE | APIC_BASE_EXTD,  # EN=0, EXTD=1: invalid
        APIC_DEFAULT_BASE | APIC_BASE_EN | 1,  # bits 7:0 reserved
        APIC_DEFAULT_BASE | APIC_BASE_EN | (1 << 9),  # bit 9 reserved
        APIC_DEFAULT_BASE | APIC_BASE_EN | (1 << 40),  # above MAXPHYADDR (36 here)
        1 << 64,
        -1,
    ],
)
def test_apic_base_reserved_values_gp(value: int) -> None:
    a = make(phys_addr_bits=36)
    assert gp_raised(a.msr_write, MSR_IA32_APIC_BASE, value)
    assert a.apic_base == APIC_DEFAULT_BASE | APIC_BASE_EN


def test_apic_base_x2apic_bit_reserved_without_x2apic_cpuid() -> None:
    a = make(x2apic_supported=False)
    assert gp_raised(to_x2apic, a)


def test_apic_base_relocation_and_bsp_bit() -> None:
    a = make(bsp=True)
    a.msr_write(MSR_IA32_APIC_BASE, 0xFED00000 | APIC_BASE_EN | APIC_BASE_BSP)
    assert a.mmio_base() == 0xFED00000


def test_init_keeps_id_base_and_x2apic_mode_reset_restores_power_on() -> None:
    a = to_x2apic(enabled(7, bsp=True))
    a.accept(0x40)
    a.msr_write(msr(TPR), 0x20)
    a.init()
    assert a.mode is ApicMode.X2APIC and a.apic_id == 7 and a.ldr == x2apic_ldr(7)
    assert a.irr == 0 and a.tpr == 0 and not a.sw_enabled
    assert a.msr_read(msr(LVT_TIMER)) == LVT_MASKED
    a.reset()
    assert a.mode is ApicMode.XAPIC and a.apic_base == APIC_DEFAULT_BASE | APIC_BASE_EN | APIC_BASE_BSP


# ---------------------------------------------------------------------------------------------------
# LVT timer


def timer_apic(clock: NsClock, lvt: int, tdcr: int = 0xB) -> LocalApic:
    a = enabled(0, clock)
    a.mmio_write(TDCR, 4, tdcr)
    a.mmio_write(LVT_TIMER, 4, lvt)
    return a


def test_one_shot_timer() -> None:
    clock = NsClock()
    t0 = clock.t
    a = timer_apic(clock, 0x40)  # divide by 1: 1 tick per ns at 1 GHz
    a.mmio_write(TMICT, 4, 1000)
    assert a.timer_deadline() == t0 + 1000
    clock.t = t0 + 250
    assert a.mmio_read(TMCCT, 4) == 750
    assert not a.poll_timer(t0 + 999)
    assert a.poll_timer(t0 + 1000)
    assert a.pending_vector() == 0x40
    clock.t = t0 + 1001
    assert a.mmio_read(TMCCT, 4) == 0
    assert a.timer_deadline() is None
    assert not a.poll_timer(t0 + 5000)


def test_divide_configuration() -> None:
    # SDM "Divide Configuration Register": 0b0000 -> 2, 0b1010 -> 128
    for tdcr, div in [(0x0, 2), (0x1, 4), (0x2, 8), (0x3, 16), (0x8, 32), (0x9, 64), (0xA, 128), (0xB, 1)]:
        clock = NsClock()
        a = timer_apic(clock, 0x40, tdcr)
        a.mmio_write(TMICT, 4, 10)
        assert a.timer_deadline() == clock.t + 10 * div


def test_periodic_timer_rearms_without_drift_and_coalesces_missed_periods() -> None:
    clock = NsClock()
    t0 = clock.t
    period = 2 * MIN_PERIODIC_NS
    a = timer_apic(clock, LVT_TIMER_PERIODIC | 0x41)
    a.mmio_write(TMICT, 4, period)
    assert a.timer_deadline() == t0 + period
    assert a.poll_timer(t0 + period + 37)  # serviced late
    assert a.timer_deadline() == t0 + 2 * period  # next = previous deadline + period
    a.take_pending()
    a.eoi()
    assert a.poll_timer(t0 + 5 * period + 5)  # three periods missed: one interrupt
    assert a.timer_deadline() == t0 + 6 * period
    clock.t = t0 + 6 * period - 100
    assert a.mmio_read(TMCCT, 4) == 100


def test_periodic_timer_period_is_clamped() -> None:
    clock = NsClock()
    a = timer_apic(clock, LVT_TIMER_PERIODIC | 0x41)
    a.mmio_write(TMICT, 4, 1)
    assert a.timer_deadline() == clock.t + MIN_PERIODIC_NS


def test_masked_timer_counts_but_does_not_interrupt() -> None:
    clock = NsClock()
    t0 = clock.t
    period = MIN_PERIODIC_NS
    a = timer_apic(clock, LVT_MASKED | LVT_TIMER_PERIODIC | 0x42)
    a.mmio_write(TMICT, 4, period)
    assert a.timer_deadline() is None
    clock.t = t0 + period // 4
    assert a.mmio_read(TMCCT, 4) == period - period // 4
    clock.t = t0 + 3 * period + period // 2  # boundaries passed while masked
    assert a.mmio_read(TMCCT, 4) == period // 2
    a.mmio_write(LVT_TIMER, 4, LVT_TIMER_PERIODIC | 0x42)  # unmask
    assert a.irr == 0  # nothing for the masked periods
    assert a.timer_deadline() == t0 + 4 * period
    assert a.poll_timer(t0 + 4 * period)


def test_initial_count_zero_stops_the_timer() -> None:
    clock = NsClock()
    a = timer_apic(clock, 0x40)
    a.mmio_write(TMICT, 4, 1000)
    a.mmio_write(TMICT, 4, 0)
    assert a.timer_deadline() is None and a.mmio_read(TMCCT, 4) == 0
    assert not a.poll_timer(clock.t + 10_000)


def test_divide_change_while_counting_continues_from_current_count() -> None:
    clock = NsClock()
    t0 = clock.t
    a = timer_apic(clock, 0x40)
    a.mmio_write(TMICT, 4, 1000)
    clock.t = t0 + 400
    a.mmio_write(TDCR, 4, 0x0)  # divide by 2 from now on
    assert a.mmio_read(TMCCT, 4) == 600
    assert a.timer_deadline() == t0 + 400 + 1200


def test_timer_through_x2apic_msrs() -> None:
    clock = NsClock()
    a = to_x2apic(enabled(0, clock))
    a.msr_write(msr(TDCR), 0xB)
    a.msr_write(msr(LVT_TIMER), 0x43)
    a.msr_write(msr(TMICT), 500)
    clock.t += 100
    assert a.msr_read(msr(TMCCT)) == 400
    assert a.msr_read(msr(TMICT)) == 500
    assert a.poll_timer(clock.t + 400)
    assert a.pending_vector() == 0x43


def test_illegal_timer_vector_sets_esr() -> None:
    clock = NsClock()
    a = timer_apic(clock, 0x05)
    a.mmio_write(TMICT, 4, 10)
    assert not a.poll_timer(clock.t + 10)
    a.mmio_write(ESR, 4, 0)
    assert a.mmio_read(ESR, 4) == ESR_RECV_ILLEGAL_VECTOR


def test_trace_events() -> None:
    tracer = FakeTracer()
    clock = NsClock()
    apics = [enabled(i, clock, tracer=tracer) for i in range(2)]
    ApicRouter(apics, tracer=tracer)
    xapic_ipi(apics[0], 1, 0x40)
    apics[1].take_pending()
    apics[1].eoi()
    apics[0].mmio_write(LVT_TIMER, 4, 0x41)
    apics[0].mmio_write(TMICT, 4, 5)
    apics[0].poll_timer(clock.t + 10)  # divide by 2 (TDCR 0)
    events = [(vp, ev) for cat, vp, ev, _ in tracer.events if cat == "apic"]
    assert (0, "ipi") in events and (1, "eoi") in events and (0, "timer") in events
    ipi = next(f for _, _, ev, f in tracer.events if ev == "ipi")
    assert ipi["targets"] == [1] and ipi["dm"] == "fixed"
    assert "apic0" in apics[0].describe()


# ---------------------------------------------------------------------------------------------------
# Fuzz: guest accesses never raise anything but GuestException

_offsets = st.one_of(st.integers(0, 0x3F).map(lambda r: r << 4), st.integers(-8, 0x1010))
_values = st.one_of(
    st.integers(0, 0xFFFFFFFF), st.integers(0, (1 << 64) - 1), st.sampled_from([0, 0x1FF, 1 << 11])
)
_msrs = st.one_of(
    st.integers(0x800, 0x8FF), st.just(MSR_IA32_APIC_BASE), st.sampled_from([0x830, 0x83F, 0x80B])
)
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("mr"), st.integers(0, 1), _offsets, st.sampled_from([1, 2, 4, 8]), _values),
        st.tuples(st.just("mw"), st.integers(0, 1), _offsets, st.sampled_from([1, 2, 4, 8]), _values),
        st.tuples(st.just("rd"), st.integers(0, 1), _msrs, st.just(0), _values),
        st.tuples(st.just("wr"), st.integers(0, 1), _msrs, st.just(0), _values),
        st.tuples(st.just("irq"), st.integers(0, 1), st.integers(0, 255), st.just(0), st.booleans()),
        st.tuples(st.just("take"), st.integers(0, 1), st.just(0), st.just(0), st.just(0)),
        st.tuples(st.just("eoi"), st.integers(0, 1), st.just(0), st.just(0), st.just(0)),
        st.tuples(st.just("tick"), st.integers(0, 1), st.integers(0, 10**7), st.just(0), st.just(0)),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(_ops)
def test_random_guest_accesses_only_raise_guest_exceptions(ops: list[tuple[str, int, int, int, Any]]) -> None:
    clock = NsClock()
    apics = [LocalApic(i, clock, bsp=i == 0) for i in range(2)]
    ApicRouter(apics)
    for op, i, a, b, v in ops:
        apic = apics[i]
        try:
            if op == "mr":
                assert 0 <= apic.mmio_read(a, b) <= 0xFFFFFFFF
            elif op == "mw":
                apic.mmio_write(a, b, v)
            elif op == "rd":
                assert 0 <= apic.msr_read(a) < 1 << 64
            elif op == "wr":
                apic.msr_write(a, v)
            elif op == "irq":
                apic.accept(a, level=bool(v))
            elif op == "take":
                apic.take_pending()
            elif op == "eoi":
                apic.eoi()
            elif op == "tick":
                clock.t += a
                apic.poll_timer(clock.t)
                deadline = apic.timer_deadline()
                assert deadline is None or deadline > clock.t
        except GuestException as e:
            assert e.vector == GP_VECTOR and op in ("rd", "wr")
        ppr = apic.ppr
        assert 0 <= ppr <= 0xFF
        pending = apic.pending_vector()
        assert pending is None or (pending >> 4) > (ppr >> 4)


# ---------------------------------------------------------------------------------------------------
# Issue 9 fidelity: one LVR in both APIC modes, physical broadcast


def test_version_register_matches_kvms_in_kernel_apic_under_a_split_irqchip() -> None:
    # kvm_apic_set_version: 0x14, max LVT entry 5, and bit 24 (EOI-broadcast suppression) whenever the
    # guest's CPUID has x2APIC and the I/O APIC is not in the kernel (hv1's split irqchip).
    a = enabled(1)
    assert a.mmio_read(VER, 4) == 0x01050014
    assert to_x2apic(a).msr_read(msr(VER)) == 0x01050014
    assert make(2, x2apic_supported=False).mmio_read(VER, 4) == 0x00050014


def test_svr_eoi_broadcast_suppression_bit_only_where_advertised() -> None:
    x2 = to_x2apic(enabled(1))
    x2.msr_write(msr(SVR), 0x11FF)  # SDM "Spurious-Interrupt Vector Register": bit 12 with LVR bit 24
    assert x2.msr_read(msr(SVR)) == 0x11FF
    assert gp_raised(x2.msr_write, msr(SVR), 0x21FF)  # bit 13 stays reserved
    legacy = make(2, x2apic_supported=False)
    legacy.mmio_write(SVR, 4, 0x11FF)
    assert legacy.mmio_read(SVR, 4) == 0x1FF  # reserved without LVR bit 24: ignored (xAPIC)


@pytest.mark.parametrize("x2", [False, True])
def test_physical_broadcast_reaches_every_apic_including_the_sender(x2: bool) -> None:
    apics, _, calls = system(4, x2=x2)
    if x2:
        apics[1].msr_write(X2_ICR, (0xFFFF_FFFF << 32) | 0x66)  # x2APIC physical broadcast
    else:
        xapic_ipi(apics[1], 0xFF, 0x66)  # xAPIC physical broadcast
    assert all(a.pending_vector() == 0x66 for a in apics)
    assert sorted(calls.kicks) == [0, 2, 3]  # the sender takes its own after the exit


def test_x2apic_broadcast_reaches_apics_still_in_xapic_mode() -> None:
    # The broadcast address is read in the sender's format (SDM "Broadcast"): an AP that has not switched
    # to x2APIC yet still receives the BSP's 0xFFFFFFFF.
    apics, _, _ = system(3)
    to_x2apic(apics[0])
    apics[0].msr_write(X2_ICR, (0xFFFF_FFFF << 32) | 0x67)
    assert all(a.irr & (1 << 0x67) for a in apics)
