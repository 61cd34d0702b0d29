"""APIC MSRs (HV_X64_MSR_EOI/ICR/TPR), the VP assist page, EOI assist ("lazy EOI") and the guest idle
MSR: hv/apic_msrs.py, hv/vp_assist.py, hv/enlightenments.py.

TLFS virtual-interrupts.md "Local APIC MSR Accesses", "EOI Assist"; vp-properties.md "Virtual
Processor Assist Page", "Virtual Processor Idle Sleep State"; inventory §3.3, §6.4.3, §7.4, §7.21.

The run loop is simulated the way the machine does it: `after_exit()` before the APIC is looked at,
then take the highest deliverable vector, acknowledge it and tell `interrupt_injected`.
"""

from __future__ import annotations

import struct
from dataclasses import replace

import pytest

from hv1.hv import enlightenments
from hv1.hv.apic import APIC_BASE_EN, APIC_BASE_EXTD, APIC_DEFAULT_BASE, ApicHooks, ApicRouter, LocalApic
from hv1.hv.caps import FEATURES_BY_NAME, Caps, parse_profile
from hv1.hv.interfaces import GP_VECTOR, GuestException
from hv1.hv.partition import Partition
from hv1.hv.vp_assist import NO_EOI_REQUIRED, VpAssist
from hv1.tlfs import msrs as M
from hv1.trace import Tracer
from tests.fakes import FakeClock, FakeHooks, FakeIrq, FakeMemory

RAM = 1 << 20
ASSIST_PFN = 0x40  # GPA 0x40000
ASSIST_GPA = ASSIST_PFN << 12
SVR, EOI_MMIO, ICR_LO, ICR_HI = 0xF0, 0xB0, 0x300, 0x310


def caps_with(*names: str, base: str = "default") -> Caps:
    """`base` plus features that caps.py may not mark implemented yet (their bits, as build_caps would)."""
    caps = parse_profile(base, apic_mode="user")
    priv, edx, rec = caps.privileges, caps.features_edx, caps.recommendations
    for n in names:
        f = FEATURES_BY_NAME[n]
        priv |= int(f.privileges)
        edx |= int(f.features_edx)
        rec |= int(f.recommendations)
    return replace(
        caps, features=caps.features | set(names), privileges=priv, features_edx=edx, recommendations=rec
    )


ALL_FEATURES = ("apic-msrs", "vp-assist", "guest-idle")


class Hooks(ApicHooks):
    """What the machine's ApicHooks must do for the EOI assist: forward every EOI."""

    def __init__(self, assist: dict[int, VpAssist]) -> None:
        self.assist = assist
        self.eois: list[tuple[int, int]] = []

    def eoi(self, apic: LocalApic, vector: int, level: bool) -> None:
        self.eois.append((apic.vp_index, vector))
        self.assist[apic.vp_index].apic_eoi(vector, level)


class Rig:
    def __init__(
        self, caps: Caps | None = None, vps: int = 2, user_apic: bool = True, lazy: bool = True
    ) -> None:
        self.mem = FakeMemory(RAM)
        self.hooks = FakeHooks()
        self.tracer = Tracer(["apic", "vp"], text=_Sink())
        self.p = Partition(
            caps if caps is not None else caps_with(*ALL_FEATURES),
            vps,
            self.mem,
            FakeClock(),
            FakeIrq(),
            self.hooks,
            tracer=self.tracer,
        )
        self.apics = [LocalApic(i, now_ns=lambda: 0, vp_index=i, bsp=i == 0) for i in range(vps)]
        self.router = ApicRouter(self.apics)
        for a in self.apics:
            a.mmio_write(SVR, 4, 0x1FF)  # software-enable
        enlightenments.attach(self.p, self.router.apic_for_vp if user_apic else None, lazy_eoi=lazy)
        self.assist = {i: enlightenments.vp_assist(self.p, i) for i in range(vps)}
        self.apic_hooks = Hooks(self.assist)
        for a in self.apics:
            a.hooks = self.apic_hooks

    # guest actions
    def rdmsr(self, msr: int, vp: int = 0) -> int:
        return self.p.rdmsr(vp, msr)

    def wrmsr(self, msr: int, value: int, vp: int = 0) -> None:
        self.p.wrmsr(vp, msr, value)

    def enable_assist(self, vp: int = 0, pfn: int = ASSIST_PFN) -> None:
        self.wrmsr(M.HV_X64_MSR_VP_ASSIST_PAGE, pfn << 12 | 1, vp)

    def assist_word(self, gpa: int = ASSIST_GPA) -> int:
        return int(struct.unpack_from("<I", self.mem.read(gpa, 4))[0])

    def guest_btr(self, gpa: int = ASSIST_GPA) -> bool:
        """The guest's `btr [assist], 0`: True if NoEoiRequired was set (then no EOI is needed)."""
        word = self.assist_word(gpa)
        self.mem.write(gpa, struct.pack("<I", word & ~1))
        return bool(word & 1)

    def guest_eoi(self, vp: int = 0, gpa: int = ASSIST_GPA) -> None:
        """The TLFS-recommended EOI sequence."""
        if not self.guest_btr(gpa):
            self.wrmsr(M.HV_X64_MSR_EOI, 0, vp)

    # the run loop
    def enter(self, vp: int = 0) -> int | None:
        """One before-entry step: returns the vector injected, if any."""
        assist, apic = self.assist[vp], self.apics[vp]
        assist.after_exit()
        vector = apic.pending_vector()
        if vector is not None:
            apic.acknowledge(vector)
            assist.interrupt_injected(vector)
        return vector


class _Sink:
    def write(self, s: str) -> int:
        return len(s)

    def flush(self) -> None:
        pass


def gp(fn: object, *args: object) -> None:
    with pytest.raises(GuestException) as e:
        fn(*args)  # type: ignore[operator]
    assert e.value.vector == GP_VECTOR


# --- APIC MSRs ------------------------------------------------------------------------------------


def test_eoi_msr_is_write_only_and_retires_the_highest_in_service_vector() -> None:
    r = Rig()
    apic = r.apics[0]
    apic.accept(0x40)
    apic.accept(0x50)
    assert r.enter() == 0x50
    gp(r.rdmsr, M.HV_X64_MSR_EOI)
    r.wrmsr(M.HV_X64_MSR_EOI, 0)
    assert apic.isr == 0
    assert r.apic_hooks.eois == [(0, 0x50)]
    assert r.enter() == 0x40  # deliverable now


def test_eoi_msr_value_bits_ignored_reserved_high_bits_gp() -> None:
    r = Rig()
    r.apics[0].accept(0x40)
    r.enter()
    gp(r.wrmsr, M.HV_X64_MSR_EOI, 1 << 32)
    assert r.apics[0].isr == 1 << 0x40
    r.wrmsr(M.HV_X64_MSR_EOI, 0xFFFF_FFFF)  # 31:0 "EOI value": like the xAPIC EOI register
    assert r.apics[0].isr == 0


def test_tpr_msr() -> None:
    r = Rig()
    apic = r.apics[0]
    r.wrmsr(M.HV_X64_MSR_TPR, 0x5F)
    assert apic.tpr == 0x5F and apic.get_cr8() == 5
    assert r.rdmsr(M.HV_X64_MSR_TPR) == 0x5F
    apic.accept(0x50)
    assert r.enter() is None  # class 5 does not beat TPR class 5
    r.wrmsr(M.HV_X64_MSR_TPR, 0)
    assert r.enter() == 0x50
    gp(r.wrmsr, M.HV_X64_MSR_TPR, 0x100)  # 63:8 RsvdZ
    gp(r.wrmsr, M.HV_X64_MSR_TPR, 1 << 63)
    assert apic.tpr == 0


def test_icr_msr_xapic_mode_sends_with_destination_in_63_56() -> None:
    r = Rig()
    value = (1 << 56) | 0x4031  # physical destination APIC ID 1, fixed, vector 0x31, level assert
    r.wrmsr(M.HV_X64_MSR_ICR, value)
    assert r.apics[1].irr == 1 << 0x31
    assert r.rdmsr(M.HV_X64_MSR_ICR) == value
    # Same registers as the xAPIC page.
    assert r.apics[0].mmio_read(ICR_HI, 4) == 1 << 24
    assert r.apics[0].mmio_read(ICR_LO, 4) == 0x4031


def test_icr_msr_self_ipi_is_pending_when_the_wrmsr_completes() -> None:
    # Inventory §6.4.2: a self-IPI is recognized before the next instruction; the run loop injects
    # what is pending before re-entering.
    r = Rig()
    r.wrmsr(M.HV_X64_MSR_ICR, (1 << 18) | 0x33)  # shorthand self, fixed, vector 0x33
    assert r.enter() == 0x33


def test_icr_msr_x2apic_mode_rules() -> None:
    r = Rig()
    apic = r.apics[0]
    apic.apic_base_write(APIC_DEFAULT_BASE | APIC_BASE_EN | APIC_BASE_EXTD | (1 << 8))
    r.wrmsr(M.HV_X64_MSR_ICR, (1 << 32) | 0x4032)  # x2APIC destination 1 in 63:32
    assert r.apics[1].irr == 1 << 0x32
    gp(r.wrmsr, M.HV_X64_MSR_ICR, (1 << 32) | 0x4032 | (1 << 20))  # reserved ICR-low bit
    assert r.rdmsr(M.HV_X64_MSR_ICR) == (1 << 32) | 0x4032


def test_apic_msrs_gp_without_the_feature_or_without_a_user_apic() -> None:
    r = Rig(caps=parse_profile("minimal", "user"))
    for msr in (M.HV_X64_MSR_EOI, M.HV_X64_MSR_ICR, M.HV_X64_MSR_TPR, M.HV_X64_MSR_VP_ASSIST_PAGE):
        gp(r.wrmsr, msr, 0)
    gp(r.rdmsr, M.HV_X64_MSR_TPR)
    k = Rig(user_apic=False)  # kernel APIC mode: no APIC model behind the MSRs
    gp(k.wrmsr, M.HV_X64_MSR_EOI, 0)
    gp(k.rdmsr, M.HV_X64_MSR_ICR)
    gp(k.wrmsr, M.HV_X64_MSR_TPR, 0)


# --- VP assist page -----------------------------------------------------------------------------


def test_assist_page_msr_is_per_vp_and_keeps_rsvdp_bits() -> None:
    r = Rig()
    assert r.rdmsr(M.HV_X64_MSR_VP_ASSIST_PAGE) == 0
    r.wrmsr(M.HV_X64_MSR_VP_ASSIST_PAGE, ASSIST_GPA | 0xFFE)  # RsvdP 11:1, disabled
    assert r.rdmsr(M.HV_X64_MSR_VP_ASSIST_PAGE) == ASSIST_GPA | 0xFFE
    assert r.rdmsr(M.HV_X64_MSR_VP_ASSIST_PAGE, vp=1) == 0
    assert not r.assist[0].page.mapped


def test_assist_page_is_zeroed_on_enable_and_uncovers_ram_on_disable() -> None:
    r = Rig()
    r.mem.write(ASSIST_GPA, b"\xaa" * 4096)
    r.enable_assist()
    assert r.mem.read(ASSIST_GPA, 4096) == bytes(4096)
    r.mem.write(ASSIST_GPA + 8, b"guest")  # the guest's writes land in the overlay
    r.wrmsr(M.HV_X64_MSR_VP_ASSIST_PAGE, ASSIST_GPA)  # disable
    assert r.mem.read(ASSIST_GPA, 4096) == b"\xaa" * 4096
    # Moving an enabled page keeps its content (it follows the overlay); re-enabling zeroes it.
    r.enable_assist(pfn=ASSIST_PFN)
    r.mem.write(ASSIST_GPA + 8, b"keep")
    r.enable_assist(pfn=ASSIST_PFN + 1)
    assert r.mem.read(ASSIST_GPA + 0x1000 + 8, 4) == b"keep"
    assert r.mem.read(ASSIST_GPA, 4) == b"\xaa" * 4


def test_assist_page_beyond_ram_is_accepted_but_not_accessible() -> None:
    r = Rig()
    r.wrmsr(M.HV_X64_MSR_VP_ASSIST_PAGE, (RAM << 4) | 1)
    assert r.rdmsr(M.HV_X64_MSR_VP_ASSIST_PAGE) == (RAM << 4) | 1
    assert not r.assist[0].page.accessible
    r.apics[0].accept(0x40)
    assert r.enter() == 0x40
    assert r.assist[0].armed is None  # nowhere to put the bit


def test_assist_page_reset() -> None:
    r = Rig()
    r.mem.write(ASSIST_GPA, b"\x11" * 16)
    r.enable_assist()
    shown = r.mem.read(ASSIST_GPA, 16)
    r.p.reset()
    assert r.rdmsr(M.HV_X64_MSR_VP_ASSIST_PAGE) == 0
    # RAM is not written by a reset (the platform reset reloads it: tests/unit/test_reset_ram.py).
    assert r.mem.read(ASSIST_GPA, 16) == shown


# --- EOI assist -------------------------------------------------------------------------------------


def test_lazy_eoi_edge_interrupt_with_nothing_lower_pending() -> None:
    r = Rig()
    r.enable_assist()
    r.apics[0].accept(0x40)
    assert r.enter() == 0x40
    assert r.assist_word() & NO_EOI_REQUIRED
    assert r.guest_btr()  # no EOI write needed
    r.enter()  # next exit: the hypervisor derives the EOI
    assert r.apics[0].isr == 0
    assert r.p.counters["lazy_eoi.completed"] == 1
    assert r.apic_hooks.eois == [(0, 0x40)]


def test_lazy_eoi_not_for_level_triggered() -> None:
    r = Rig()
    r.enable_assist()
    r.apics[0].accept(0x40, level=True)
    assert r.enter() == 0x40
    assert not r.assist_word() & NO_EOI_REQUIRED
    r.guest_eoi()
    assert r.apics[0].isr == 0
    assert r.apic_hooks.eois == [(0, 0x40)]


def test_lazy_eoi_not_when_a_lower_priority_interrupt_is_pending() -> None:
    r = Rig()
    r.enable_assist()
    r.apics[0].accept(0x40)
    r.apics[0].accept(0x30)
    assert r.enter() == 0x40
    assert not r.assist_word() & NO_EOI_REQUIRED
    r.guest_eoi()
    assert r.enter() == 0x30
    assert r.assist_word() & NO_EOI_REQUIRED  # now nothing lower is pending


def test_lower_priority_interrupt_after_injection_clears_the_bit() -> None:
    # "If, at a later time, a lower priority interrupt is requested, the hypervisor clears the No EOI
    # required bit such that a subsequent EOI causes an intercept."
    r = Rig()
    r.enable_assist()
    r.apics[0].accept(0x40)
    assert r.enter() == 0x40
    r.apics[0].accept(0x30)  # another VP's IPI: the sender kicks us, we exit
    assert r.enter() is None  # 0x40 still in service
    assert not r.assist_word() & NO_EOI_REQUIRED
    assert r.p.counters["lazy_eoi.withdrawn"] == 1
    r.guest_eoi()  # btr finds 0: WRMSR EOI
    assert r.apics[0].isr == 0
    assert r.enter() == 0x30


def test_guest_cleared_bit_and_lower_interrupt_arrive_together() -> None:
    r = Rig()
    r.enable_assist()
    r.apics[0].accept(0x40)
    r.enter()
    assert r.guest_btr()  # lazy EOI done by the guest, no exit
    r.apics[0].accept(0x30)
    assert r.enter() == 0x30  # the derived EOI made 0x30 deliverable
    assert r.apic_hooks.eois == [(0, 0x40)]


def test_higher_priority_interrupt_keeps_the_bit() -> None:
    r = Rig()
    r.enable_assist()
    r.apics[0].accept(0x40)
    r.enter()
    r.apics[0].accept(0x50)
    assert r.enter() == 0x50  # nested
    assert r.assist[0].armed == 0x50
    assert r.assist_word() & NO_EOI_REQUIRED


def test_nested_interrupts_only_the_highest_is_lazy() -> None:
    # virtual-interrupts.md: "In case of nested interrupts, the EOI intercept is avoided only for the
    # highest priority interrupt ... the next EOI generates an intercept."
    r = Rig()
    r.enable_assist()
    apic = r.apics[0]
    apic.accept(0x40)
    r.enter()
    apic.accept(0x50)
    r.enter()
    r.guest_eoi()  # 0x50 handler: btr finds 1, no exit
    r.guest_eoi()  # 0x40 handler: btr finds 0, WRMSR EOI
    assert apic.isr == 0
    assert sorted(v for _, v in r.apic_hooks.eois) == [0x40, 0x50]
    assert r.p.counters["lazy_eoi.completed"] == 1


def test_nested_with_mmio_eoi_for_the_lower_one() -> None:
    r = Rig()
    r.enable_assist()
    apic = r.apics[0]
    apic.accept(0x40)
    r.enter()
    apic.accept(0x50)
    r.enter()
    assert r.guest_btr()  # 0x50 EOI'd lazily
    apic.mmio_write(EOI_MMIO, 4, 0)  # 0x40 handler uses the xAPIC EOI register
    assert apic.isr == 0


def test_conventional_eoi_while_the_bit_is_set() -> None:
    # "While the enlightenment is enabled, conventional EOIs can still be performed irrespective of
    # the No EOI required value": the EOI is for the armed vector, which must not be EOI'd twice.
    r = Rig()
    r.enable_assist()
    apic = r.apics[0]
    apic.accept(0x30)
    apic.accept(0x40)
    assert r.enter() == 0x40  # not armed: 0x30 pending below it
    r.guest_eoi()
    assert r.enter() == 0x30  # armed
    apic.accept(0x50)
    assert r.enter() == 0x50  # armed again (0x30 in ISR, nothing pending)
    r.wrmsr(M.HV_X64_MSR_EOI, 0)  # conventional EOI of 0x50, bit still set
    assert apic.isr == 1 << 0x30
    assert not r.assist_word() & NO_EOI_REQUIRED
    r.enter()
    assert apic.isr == 1 << 0x30  # no second EOI
    r.guest_eoi()
    assert apic.isr == 0


def test_autoeoi_injection_leaves_an_armed_vector_alone() -> None:
    r = Rig()
    r.enable_assist()
    apic = r.apics[0]
    apic.accept(0x40)
    r.enter()
    apic.accept(0x60, auto_eoi=True)  # SynIC AutoEOI: never in service
    assert r.enter() == 0x60
    assert r.assist[0].armed == 0x40 and r.assist_word() & 1
    assert r.guest_btr()
    r.enter()
    assert apic.isr == 0


def test_disabling_the_page_performs_a_pending_lazy_eoi() -> None:
    r = Rig()
    r.enable_assist()
    r.apics[0].accept(0x40)
    r.enter()
    assert r.guest_btr()
    r.wrmsr(M.HV_X64_MSR_VP_ASSIST_PAGE, 0)
    assert r.apics[0].isr == 0
    r.apics[0].accept(0x41)
    r.enter()
    assert r.assist[0].armed is None  # disabled: conventional EOIs only
    r.wrmsr(M.HV_X64_MSR_EOI, 0)
    assert r.apics[0].isr == 0


def test_disabling_the_page_with_the_bit_still_set_keeps_the_interrupt_in_service() -> None:
    r = Rig()
    r.enable_assist()
    r.apics[0].accept(0x40)
    r.enter()
    r.wrmsr(M.HV_X64_MSR_VP_ASSIST_PAGE, 0)
    assert r.apics[0].isr == 1 << 0x40  # the guest still owes a conventional EOI
    r.wrmsr(M.HV_X64_MSR_EOI, 0)
    assert r.apics[0].isr == 0


def test_lazy_eoi_off_and_kernel_mode_never_set_the_bit() -> None:
    for rig in (Rig(lazy=False), Rig(user_apic=False)):
        rig.enable_assist()
        rig.apics[0].accept(0x40)
        rig.enter()
        assert rig.assist_word() == 0
        assert rig.assist[0].armed is None


def test_lazy_eoi_per_vp_pages() -> None:
    r = Rig()
    r.enable_assist(vp=0, pfn=ASSIST_PFN)
    r.enable_assist(vp=1, pfn=ASSIST_PFN + 1)
    r.apics[1].accept(0x45)
    assert r.enter(vp=1) == 0x45
    assert r.assist_word(ASSIST_GPA + 0x1000) == 1
    assert r.assist_word(ASSIST_GPA) == 0


def test_exits_saved_per_1000_interrupts() -> None:
    # The bench row "lazy-EOI exits saved per 1000 interrupts", on the model: every edge interrupt
    # taken alone is EOI'd without an EOI exit.
    r = Rig()
    r.enable_assist()
    msr_writes = 0
    for i in range(1000):
        r.apics[0].accept(0x40 + i % 16)
        r.enter()
        if not r.guest_btr():
            msr_writes += 1
            r.wrmsr(M.HV_X64_MSR_EOI, 0)
    r.enter()
    assert msr_writes == 0
    assert r.p.counters["lazy_eoi.completed"] == 1000


# --- guest idle -------------------------------------------------------------------------------------


def test_guest_idle_read_sleeps_via_the_machine_outside_the_lock() -> None:
    r = Rig()
    seen: list[bool] = []

    def idle(vp_index: int) -> None:
        seen.append(r.p.lock._is_owned())  # type: ignore[attr-defined]
        r.hooks.idles.append(vp_index)

    r.hooks.guest_idle = idle  # type: ignore[method-assign]
    assert r.rdmsr(M.HV_X64_MSR_GUEST_IDLE, vp=1) == 0
    assert r.hooks.idles == [1]
    assert seen == [False]
    gp(r.wrmsr, M.HV_X64_MSR_GUEST_IDLE, 0)


def test_guest_idle_needs_its_privilege() -> None:
    r = Rig(caps=caps_with("apic-msrs", "vp-assist", base="minimal"))
    gp(r.rdmsr, M.HV_X64_MSR_GUEST_IDLE)
    assert r.hooks.idles == []


def test_vp_assist_lookup() -> None:
    r = Rig()
    with pytest.raises(KeyError):
        enlightenments.vp_assist(r.p, 9)
