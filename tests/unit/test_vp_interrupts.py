"""A VP's interrupt path around each guest entry and exit (hv1/machine/machine.py `Vp`, the injection
step hv1/hv/apic.py `inject_pending`, kernel-mode AutoEOI hv1/machine/auto_eoi.py), driven with a
fake vCPU and a fake in-kernel LAPIC instead of KVM (issue 9: bugs 1 and 2, CR8/TPR, CPUID APIC bit).

References: TLFS inter-partition-communication.md "SINTx Registers" (AutoEOI: implicit EOI, the next
interrupt as soon as the VP is interruptible), Intel SDM vol. 3 "Task Priority in IA-32e Mode" (CR8 is
TPR[7:4]) and "Local APIC Status and Location" (CPUID.01H:EDX[9] follows IA32_APIC_BASE.EN).
"""

from __future__ import annotations

import collections
import threading
from types import SimpleNamespace
from typing import Any

import pytest

from hv1.backends.kvm import ioctls as k
from hv1.hv.apic import APIC_BASE_EN, MSR_IA32_APIC_BASE, LocalApic, inject_pending
from hv1.hv.synic import SINT_AUTO_EOI, SINT_MASKED, SINT_POLLING, SINT_RESET
from hv1.machine.auto_eoi import KernelAutoEoi, kvm_sint_value
from hv1.machine.machine import Vp
from hv1.tlfs import msrs as M
from hv1.trace import Tracer
from tests.fakes import FakeKvmLapic, FakeRunVcpu

TPR_MMIO = 0x80
SVR_MMIO = 0xF0


class FakeScheduler:
    def __init__(self) -> None:
        self.armed: dict[Any, int] = {}

    def schedule(self, key: Any, at: int, fn: Any) -> None:
        self.armed[key] = at

    def cancel(self, key: Any) -> None:
        self.armed.pop(key, None)


def enabled_apic() -> LocalApic:
    apic = LocalApic(0, now_ns=lambda: 1_000_000, bsp=True)
    apic.mmio_write(SVR_MMIO, 4, 0x1FF)  # software enable
    return apic


def make_vp(
    vcpu: Any, apic: LocalApic | None = None, *, synic: Any = None, auto_eoi: KernelAutoEoi | None = None
) -> Vp:
    """A Vp without a Machine: only what before_entry / count_exit / wrmsr touch."""
    vp = Vp.__new__(Vp)
    vp.m = SimpleNamespace(  # type: ignore[assignment]
        tracer=Tracer(),
        scheduler=FakeScheduler(),
        partition=SimpleNamespace(
            time=SimpleNamespace(poll_vp=lambda vp_index: None), owns_msr=lambda i: False
        ),
    )
    vp.index = vp.vp_index = 0
    vp.assist = SimpleNamespace(after_exit=lambda: None, interrupt_injected=lambda vector: None)  # type: ignore[assignment]
    vp.synic = synic or SimpleNamespace(has_pending=False, sint_generation=0, sints=[SINT_RESET] * 16)
    vp.apic = apic
    vp.vcpu = vcpu
    vp.kernel_auto_eoi = auto_eoi
    vp._sint_generation = -1
    vp._cr8_entered = 0
    vp._work = collections.deque()
    vp._stimer_lock = threading.Lock()
    vp._stimer_armed = None
    vp._timer_armed = None
    vp.init_pending = False
    vp.started = True
    vp.exit_counts = [0] * 64
    vp.rdmsr_counts, vp.wrmsr_counts = collections.Counter(), collections.Counter()
    vp._trace_exits = False
    vp.nmi_pending = False
    vp.hv_vp = SimpleNamespace(preempt_requested=False)  # type: ignore[assignment]
    vp.wake = threading.Event()
    return vp


# ---------------------------------------------------------------------------------------------------
# Bug 1: AutoEOI in --apic user


def run_guest_that_never_eois(vp: Vp, vcpu: FakeRunVcpu, max_entries: int = 100) -> list[int]:
    """The guest of issue 9 bug 1: its AutoEOI handlers never EOI, and between interrupts it spins in a
    `pause` loop that makes no exit. So after each entry the only exit that can come is the interrupt
    window's, which KVM takes as soon as the handler's IRET makes the VP interruptible again."""
    for _ in range(max_entries):
        vp.before_entry()
        if not vcpu.window:
            break  # spinning with no exit: nothing more is ever injected
        vp.count_exit(k.KVM_EXIT_IRQ_WINDOW_OPEN)
    return vcpu.injected


def test_user_mode_autoeoi_sints_back_to_back_are_all_injected_without_eoi() -> None:
    apic = enabled_apic()
    vcpu = FakeRunVcpu()
    vp = make_vp(vcpu, apic)
    vectors = list(range(0x50, 0x60))  # 16 SINTs, one class: each would block the next if it were in ISR
    for v in vectors:
        apic.accept(v, auto_eoi=True)
    assert run_guest_that_never_eois(vp, vcpu) == sorted(vectors, reverse=True)
    assert apic.isr == 0 and apic.irr == 0
    assert not vcpu.window  # nothing left: no pointless window exits


def test_user_mode_normal_vector_does_not_keep_the_window_open() -> None:
    apic = enabled_apic()
    vcpu = FakeRunVcpu()
    vp = make_vp(vcpu, apic)
    apic.accept(0x51)
    apic.accept(0x50)
    vp.before_entry()
    assert vcpu.injected == [0x51] and not vcpu.window  # 0x50 is blocked by 0x51 in service (same class)
    apic.accept(0x70)  # a higher class arrives while 0x51 is in service: deliverable
    vp.before_entry()
    assert vcpu.injected == [0x51, 0x70]


def test_inject_pending_requests_the_window_when_the_cpu_cannot_take_it() -> None:
    apic = enabled_apic()
    cpu = FakeRunVcpu()
    cpu.interruptible = False
    apic.accept(0x40, auto_eoi=True)
    assert inject_pending(apic, cpu) is None and cpu.window
    cpu.interruptible = True
    assert inject_pending(apic, cpu) == 0x40 and not cpu.window
    assert inject_pending(apic, cpu) is None and not cpu.window


def test_inject_pending_keeps_the_window_for_the_next_autoeoi_vector() -> None:
    apic = enabled_apic()
    cpu = FakeRunVcpu()
    apic.accept(0x41, auto_eoi=True)
    apic.accept(0x42, auto_eoi=True)
    assert inject_pending(apic, cpu) == 0x42
    assert cpu.window  # 0x41 is deliverable at once: nothing went into service


# ---------------------------------------------------------------------------------------------------
# CR8 and the xAPIC TPR are one register (--apic user)


def test_guest_cr8_write_reaches_the_tpr_at_the_next_exit() -> None:
    apic = enabled_apic()
    vcpu = FakeRunVcpu()
    vp = make_vp(vcpu, apic)
    apic.mmio_write(TPR_MMIO, 4, 0x25)
    vp.before_entry()
    assert vcpu.run_cr8 == 2  # the guest enters with CR8 = TPR[7:4]
    vp.count_exit(k.KVM_EXIT_IO)  # nothing changed CR8: TPR[3:0] survive
    assert apic.mmio_read(TPR_MMIO, 4) == 0x25
    vcpu.run_cr8 = 7  # MOV CR8, 7 in the guest (KVM reports it in kvm_run at the exit)
    vp.count_exit(k.KVM_EXIT_MMIO)
    assert apic.mmio_read(TPR_MMIO, 4) == 0x70  # SDM: TPR[7:4] = CR8[3:0], TPR[3:0] = 0
    vcpu.run_cr8 = 0  # lowering CR8 exits with KVM_EXIT_SET_TPR
    vp.count_exit(k.KVM_EXIT_SET_TPR)
    assert apic.tpr == 0


def test_cr8_masks_interrupts_like_the_tpr() -> None:
    apic = enabled_apic()
    vcpu = FakeRunVcpu()
    vp = make_vp(vcpu, apic)
    vcpu.run_cr8 = 5
    vp.count_exit(k.KVM_EXIT_IO)
    apic.accept(0x55)
    vp.before_entry()
    assert vcpu.injected == []  # class 5 does not beat CR8 = 5
    vcpu.run_cr8 = 4
    vp.count_exit(k.KVM_EXIT_SET_TPR)
    vp.before_entry()
    assert vcpu.injected == [0x55]


def test_guest_cr8_write_survives_a_run_interrupted_without_an_exit() -> None:
    # KVM_RUN returning EINTR (a kick) stores the guest's CR8 in kvm_run but makes no exit: the next entry
    # must not put the old TPR back over it.
    apic = enabled_apic()
    vcpu = FakeRunVcpu()
    vp = make_vp(vcpu, apic)
    vp.before_entry()
    vcpu.run_cr8 = 9  # MOV CR8, 9, then the signal: no count_exit
    vp.before_entry()
    assert vcpu.run_cr8 == 9 and apic.tpr == 0x90


def test_stale_kvm_run_cr8_is_not_taken_for_a_guest_write_after_init() -> None:
    # INIT (from another VP, while this one waits) clears the TPR; kvm_run still holds the CR8 of before.
    apic = enabled_apic()
    vcpu = FakeRunVcpu()
    vp = make_vp(vcpu, apic)
    vcpu.run_cr8 = 6
    vp.count_exit(k.KVM_EXIT_HLT)
    assert apic.tpr == 0x60
    apic.init()
    apic.mmio_write(SVR_MMIO, 4, 0x1FF)
    vp.before_entry()
    assert apic.tpr == 0 and vcpu.run_cr8 == 0


def test_tpr_written_through_the_apic_is_the_cr8_the_guest_enters_with() -> None:
    apic = enabled_apic()
    vcpu = FakeRunVcpu()
    vp = make_vp(vcpu, apic)
    apic.tpr = 0xB3  # HV_X64_MSR_TPR / x2APIC TPR / xAPIC TPR all land here
    vp.before_entry()
    assert vcpu.run_cr8 == 0xB
    vcpu.run_cr8 = 0xB  # unchanged by the guest
    vp.count_exit(k.KVM_EXIT_IO)
    assert apic.tpr == 0xB3


# ---------------------------------------------------------------------------------------------------
# CPUID.01H:EDX[9] follows IA32_APIC_BASE.EN (--apic user)


def test_apic_base_writes_are_published_to_kvm_for_the_cpuid_apic_bit() -> None:
    apic = enabled_apic()
    vcpu = FakeRunVcpu()
    vp = make_vp(vcpu, apic)
    base = apic.apic_base
    assert vp.wrmsr(MSR_IA32_APIC_BASE, base & ~APIC_BASE_EN)
    assert vcpu.apic_bases == [base & ~APIC_BASE_EN]  # KVM clears CPUID.01H:EDX[9] itself
    assert vp.wrmsr(MSR_IA32_APIC_BASE, base)
    assert vcpu.apic_bases[-1] == base


def test_a_refused_apic_base_write_gp_or_mirror_failure_never_crashes() -> None:
    apic = enabled_apic()
    vcpu = FakeRunVcpu()
    vp = make_vp(vcpu, apic)
    assert not vp.wrmsr(MSR_IA32_APIC_BASE, 1 << 9)  # reserved bit: #GP, KVM is not told
    assert vcpu.apic_bases == []
    vcpu.refuse_apic_base = True
    assert vp.wrmsr(MSR_IA32_APIC_BASE, apic.apic_base & ~APIC_BASE_EN)  # the guest's write still succeeds
    assert not apic.hw_enabled


# ---------------------------------------------------------------------------------------------------
# Bug 2: AutoEOI in --apic kernel (KVM's SynIC AutoEOI bitmap)


def test_kvm_sint_value_mirrors_only_autoeoi() -> None:
    assert kvm_sint_value(0x52 | SINT_AUTO_EOI) == 0x52 | SINT_AUTO_EOI
    # KVM ignores AutoEOI on a masked SINT; an interrupt in flight when the guest masks it stays AutoEOI
    assert kvm_sint_value(0x52 | SINT_AUTO_EOI | SINT_MASKED) == 0x52 | SINT_AUTO_EOI
    assert kvm_sint_value(0x52 | SINT_AUTO_EOI | SINT_POLLING) == 0x52 | SINT_AUTO_EOI
    assert kvm_sint_value(0x52) == SINT_MASKED  # KVM tracks no vector for a plain SINT
    assert kvm_sint_value(SINT_RESET) == SINT_MASKED
    assert kvm_sint_value(0x05 | SINT_AUTO_EOI | SINT_MASKED) == SINT_MASKED  # invalid vector: nothing to EOI
    assert kvm_sint_value(0x52 | SINT_POLLING) == SINT_MASKED


def test_kernel_mode_without_the_mirror_an_autoeoi_vector_stays_in_service() -> None:
    # What the in-kernel APIC does to a guest relying on AutoEOI when hv1 does nothing (before issue 9).
    lapic = FakeKvmLapic()
    for v in range(0x50, 0x60):
        lapic.signal_msi(v)
    assert lapic.take() == 0x5F
    assert lapic.take() is None  # 0x5F in service blocks class 5: the guest hangs


def test_kernel_mode_autoeoi_sints_back_to_back_all_delivered_without_eoi() -> None:
    lapic = FakeKvmLapic()
    synic = SimpleNamespace(has_pending=False, sint_generation=0, sints=[SINT_RESET] * 16)
    vp = make_vp(FakeRunVcpu(), None, synic=synic, auto_eoi=KernelAutoEoi(lapic.set_msr))
    vectors = [0x50 + i for i in range(16)]
    synic.sints = [v | SINT_AUTO_EOI for v in vectors]  # the guest's SINTx writes (handled on this VP)
    synic.sint_generation += 1
    vp.before_entry()  # mirrored before the guest can take any of them
    for v in vectors:
        lapic.signal_msi(v)  # hv1's SynIC: KVM_SIGNAL_MSI
    taken = [lapic.take() for _ in vectors]
    assert taken == sorted(vectors, reverse=True)
    assert lapic.isr == 0 and lapic.irr == 0


def test_kernel_mode_mirror_writes_only_changes_and_follows_resets() -> None:
    lapic = FakeKvmLapic()
    synic = SimpleNamespace(has_pending=False, sint_generation=0, sints=[SINT_RESET] * 16)
    vp = make_vp(FakeRunVcpu(), None, synic=synic, auto_eoi=KernelAutoEoi(lapic.set_msr))
    vp.before_entry()
    assert len(lapic.msr_writes) == 16  # KVM's values are unknown at first: all written
    vp.before_entry()
    assert len(lapic.msr_writes) == 16  # no SINT change: no ioctl on the hot path
    synic.sints[3] = 0x60 | SINT_AUTO_EOI
    synic.sint_generation += 1
    vp.before_entry()
    assert lapic.msr_writes[16:] == [(M.HV_X64_MSR_SINT0 + 3, 0x60 | SINT_AUTO_EOI)]
    synic.sints[3] = 0x60  # AutoEOI cleared: the vector goes back in service normally
    synic.sint_generation += 1
    vp.before_entry()
    lapic.signal_msi(0x60)
    assert lapic.take() == 0x60 and lapic.isr == 1 << 0x60


def test_kernel_mode_mirror_survives_kvm_refusing_a_write() -> None:
    writes: list[tuple[int, int]] = []

    def refuse_sint5(index: int, value: int) -> None:
        if index == M.HV_X64_MSR_SINT0 + 5:
            raise OSError("EINVAL")
        writes.append((index, value))

    mirror = KernelAutoEoi(refuse_sint5)
    mirror.sync([0x40 | SINT_AUTO_EOI] * 16)
    assert mirror.refused == 1 and len(writes) == 15
    mirror.sync([0x40 | SINT_AUTO_EOI] * 16)  # retried, never raised
    assert mirror.refused == 2


@pytest.mark.parametrize("apic_mode", ["kernel", "user"])
def test_autoeoi_is_not_deprecated_where_it_works(apic_mode: str) -> None:
    from hv1.hv.caps import parse_profile, without_auto_eoi
    from hv1.tlfs.feature_discovery import Recommendations

    caps = parse_profile("default", apic_mode=apic_mode)
    assert caps.auto_eoi and not caps.has_recommendation(Recommendations.DeprecateAutoEoi)
    host_without = without_auto_eoi(caps)  # KVM without KVM_CAP_HYPERV_SYNIC2
    assert not host_without.auto_eoi and host_without.has_recommendation(Recommendations.DeprecateAutoEoi)
    assert not without_auto_eoi(parse_profile("minimal", apic_mode=apic_mode)).has_recommendation(
        Recommendations.DeprecateAutoEoi
    )  # no SynIC, nothing to recommend about


def test_without_auto_eoi_keeps_every_other_capability() -> None:
    from dataclasses import replace

    from hv1.hv.caps import parse_profile, without_auto_eoi

    caps = replace(
        parse_profile("default", apic_mode="kernel", max_vps=64), max_lps=7, implemented_phys_bits=40
    )
    changed = without_auto_eoi(caps)
    assert (changed.max_vps, changed.max_lps, changed.implemented_phys_bits) == (64, 7, 40)
    assert changed.features == caps.features | {"auto-eoi-deprecated"}
    assert changed.privileges == caps.privileges and changed.profile == caps.profile


# ---------------------------------------------------------------------------------------------------
# NMI IPIs (--apic user): delivered, not dropped (a broadcast NMI must reach every VP)


def test_nmi_ipi_is_injected_before_the_next_entry() -> None:
    apic = enabled_apic()
    vcpu = FakeRunVcpu()
    vp = make_vp(vcpu, apic)
    vp.deliver_nmi()
    vp.before_entry()
    assert vcpu.nmis == 1
    vp.before_entry()
    assert vcpu.nmis == 1  # once


def test_nmi_ends_hlt_even_with_if_clear() -> None:
    apic = enabled_apic()
    vcpu = FakeRunVcpu()
    vcpu.interruptible = False
    vp = make_vp(vcpu, apic)
    vp.deliver_nmi()
    vp.sleep(wake_with_if_clear=False)  # returns at once instead of sleeping forever
    vp.before_entry()
    assert vcpu.nmis == 1


def test_nmi_to_a_vp_waiting_for_sipi_or_after_init_is_not_taken() -> None:
    apic = enabled_apic()
    vcpu = FakeRunVcpu()
    vp = make_vp(vcpu, apic)
    vp.started = False
    vp.deliver_nmi()
    assert not vp.nmi_pending
    vp.started = True
    vp.deliver_nmi()
    vp.init_pending = True
    vp._wait_for_sipi = lambda: None  # type: ignore[method-assign]
    vp.before_entry()  # INIT first: the NMI is discarded with it
    assert vcpu.nmis == 0 and not vp.nmi_pending


def test_broadcast_nmi_reaches_every_vp_through_the_router() -> None:
    from hv1.hv.apic import ApicRouter

    apics = [enabled_apic()] + [LocalApic(i, now_ns=lambda: 0) for i in (1, 2)]
    vcpus = [FakeRunVcpu() for _ in apics]
    vps = [make_vp(vcpu, apic) for vcpu, apic in zip(vcpus, apics, strict=True)]
    for i, vp in enumerate(vps):
        vp.index = vp.vp_index = i
    ApicRouter(apics, on_nmi=lambda vp_index: vps[vp_index].deliver_nmi())
    apics[0].mmio_write(0x310, 4, 0xFF << 24)  # ICR high: physical broadcast
    apics[0].mmio_write(0x300, 4, (4 << 8) | (1 << 14))  # NMI, assert
    for vp in vps:
        vp.before_entry()
    assert [v.nmis for v in vcpus] == [1, 1, 1]
