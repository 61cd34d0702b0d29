"""The rest of the root-partition calls on the partition engine (hv1/hv/hypervisor.py, issue 11):
HvCallGetVpCpuidValues, the intercept queries and HvCallCheckForIoIntercept, HvCallRegister/
UnregisterInterceptResult, HvCallTranslateVirtualAddressEx, HvCallAssertVirtualInterrupt,
HvCallMap/UnmapVpStatePage and HvCallMapStatsPage2 / UnmapStatsPage with their counters. (The ports
between partitions: test_port_registry.py; the hypercall layouts: test_root_hypercalls.py.)"""

from __future__ import annotations

import threading

import pytest

from hv1.hv.cpuid import default_vp_cpuid
from hv1.hv.hypervisor import ASSERTED_INTERRUPTS_KEPT, ROOT_PARTITION_ID, HvError, Hypervisor
from hv1.hv.intercept_results import (
    CpuidResultParameters,
    CpuidUnregisterParameters,
    MsrResultParameters,
    MsrUnregisterParameters,
)
from hv1.hv.virtual_interrupt import AssertedInterrupt
from hv1.hv.vp_state_page import CLASS_GENERAL, CLASS_IP, REGISTER_PAGE_HEADER, REGISTER_PAGE_VALUES
from hv1.tlfs.feature_discovery import CPUID_1_ECX_HYPERVISOR_PRESENT
from hv1.tlfs.intercepts import InterceptAccess, InterceptType
from hv1.tlfs.partition import HV_PARTITION_ID_SELF, PartitionPrivilege
from hv1.tlfs.registers import HvRegisterName
from hv1.tlfs.stats import HypervisorCounter, PartitionCounter, StatsObjectType, VpCounter
from hv1.tlfs.status import HvStatus
from hv1.tlfs.virtualization_host import (
    HV_INTERRUPT_VECTOR_NONE,
    INTERRUPT_CONTROL_LEVEL,
    INTERRUPT_CONTROL_LOGICAL,
    InterruptType,
    UnimplementedMsrAction,
    VpStatePageType,
)
from hv1.tlfs.vp import HV_ANY_VP
from tests.fakes import FakeMemory

ROOT = ROOT_PARTITION_ID
S = HvStatus
IO, MSR, CPUID, EXC = (
    InterceptType.X64IoPort,
    InterceptType.X64Msr,
    InterceptType.X64Cpuid,
    InterceptType.Exception,
)
RD, WR, EX = int(InterceptAccess.READ), int(InterceptAccess.WRITE), int(InterceptAccess.EXECUTE)


def status_of(fn: object, *args: object, **kw: object) -> HvStatus:
    with pytest.raises(HvError) as e:
        fn(*args, **kw)  # type: ignore[operator]
    return e.value.status


def engine(vps: int = 2) -> tuple[Hypervisor, int, FakeMemory]:
    """A root with 1 MiB of RAM and an initialized child with `vps` VPs."""
    ram = FakeMemory(256 << 12)
    hv = Hypervisor(root_pages=256, ram=ram)
    c = hv.create_partition(ROOT)
    hv.deposit_memory(ROOT, c, list(range(200, 250)))
    hv.initialize_partition(ROOT, c)
    for i in range(vps):
        hv.create_vp(ROOT, c, i)
    return hv, c, ram


# ---- HvCallGetVpCpuidValues ------------------------------------------------------------------------
def test_get_vp_cpuid_values_default_provider_gives_hv1_leaves_and_the_apic_id() -> None:
    hv, c, _ = engine()
    got = hv.get_vp_cpuid_values(ROOT, c, 1, 0, 0, [(0x40000000, 0), (1, 0), (7, 0)])
    assert got[0] == default_vp_cpuid(c, 1, 0x40000000, 0) and got[0][0] >= 0x40000005  # "Microsoft Hv"
    assert got[0][1:] == (0x7263694D, 0x666F736F, 0x76482074)
    assert got[1] == (0, 1 << 24, CPUID_1_ECX_HYPERVISOR_PRESENT, 0)  # initial APIC ID = VP index 1
    assert got[2] == (0, 0, 0, 0)


def test_get_vp_cpuid_values_uses_the_hosts_provider_masked_to_32_bits() -> None:
    hv, c, _ = engine()
    seen: list[tuple[int, int, int, int]] = []

    def provider(pid: int, vp: int, leaf: int, subleaf: int) -> tuple[int, int, int, int]:
        seen.append((pid, vp, leaf, subleaf))
        return (leaf | 1 << 40, subleaf, vp, pid)

    hv.cpuid_provider = provider
    assert hv.get_vp_cpuid_values(ROOT, c, 0, 0, 0, [(0xD, 1)]) == [(0xD, 1, 0, c)]
    assert seen == [(c, 0, 0xD, 1)]


def test_get_vp_cpuid_values_apply_registered_values_only_with_the_flag() -> None:
    hv, c, _ = engine()
    hv.cpuid_provider = lambda pid, vp, leaf, sub: (0x11111111, 0x22222222, 0x33333333, 0x44444444)
    params = CpuidResultParameters(7, 0, 0, 0, (0xA0, 0, 0, 0xFFFFFFFF), (0xF0, 0, 0, 0x1))
    hv.register_intercept_result(ROOT, c, 0, CPUID, params)
    plain = hv.get_vp_cpuid_values(ROOT, c, 0, 0, 0, [(7, 3)])
    applied = hv.get_vp_cpuid_values(ROOT, c, 0, 0b10, 0, [(7, 3)])
    assert plain == [(0x11111111, 0x22222222, 0x33333333, 0x44444444)]
    assert applied == [(0x111111A1, 0x22222222, 0x33333333, 0x44444445)]
    assert hv.get_vp_cpuid_values(ROOT, c, 1, 0b10, 0, [(7, 3)]) == plain  # VP 0's result only
    assert hv.get_vp_cpuid_values(ROOT, c, 0, 0b01, 0, [(7, 3)]) == plain  # UseVpXfemXss: accepted


def test_get_vp_cpuid_values_statuses() -> None:
    hv, c, _ = engine()
    assert status_of(hv.get_vp_cpuid_values, ROOT, c, 0, 0b100, 0, [(0, 0)]) == S.INVALID_PARAMETER
    assert status_of(hv.get_vp_cpuid_values, ROOT, c, 0, 0, 1, [(0, 0)]) == S.INVALID_PARAMETER
    assert status_of(hv.get_vp_cpuid_values, ROOT, c, 7, 0, 0, [(0, 0)]) == S.INVALID_VP_INDEX
    assert status_of(hv.get_vp_cpuid_values, ROOT, 0x55, 0, 0, 0, [(0, 0)]) == S.INVALID_PARTITION_ID
    assert status_of(hv.get_vp_cpuid_values, c, ROOT, 0, 0, 0, [(0, 0)]) == S.ACCESS_DENIED
    created = hv.create_partition(ROOT)
    assert status_of(hv.get_vp_cpuid_values, ROOT, created, 0, 0, 0, [(0, 0)]) == S.INVALID_PARTITION_STATE


def test_a_failing_provider_is_operation_failed_after_the_leaves_done() -> None:
    hv, c, _ = engine()

    def provider(pid: int, vp: int, leaf: int, subleaf: int) -> tuple[int, int, int, int]:
        if leaf == 2:
            raise RuntimeError("host bug")
        return (leaf, 0, 0, 0)

    hv.cpuid_provider = provider
    with pytest.raises(HvError) as e:
        hv.get_vp_cpuid_values(ROOT, c, 0, 0, 0, [(0, 0), (1, 0), (2, 0)])
    assert (e.value.status, e.value.reps_done) == (S.OPERATION_FAILED, 2)


# ---- intercept queries, HvCallCheckForIoIntercept ---------------------------------------------------
def test_the_running_layer_asks_the_intercept_table() -> None:
    hv, c, _ = engine()
    hv.install_intercept(ROOT, c, WR, IO, 0x60)
    hv.install_intercept(ROOT, c, RD | WR, InterceptType.X64IoPortRange, 0x3F8 | 0x3FF << 16)
    hv.install_intercept(ROOT, c, RD, MSR, 0x1B)
    hv.install_intercept(ROOT, c, EX, CPUID, 0x40000000)
    hv.install_intercept(ROOT, c, EX, EXC, 14)
    assert hv.io_intercepted(c, 0x60, True) and not hv.io_intercepted(c, 0x60, False)
    assert hv.io_intercepted(c, 0x3FC, False) and not hv.io_intercepted(c, 0x400, False)
    assert hv.io_intercepted(c, 0x5E, True, size=4)  # 0x5E..0x61 covers 0x60
    assert not hv.io_intercepted(c, 0x5C, True, size=4)
    assert hv.msr_intercepted(c, 0x1B, False) and not hv.msr_intercepted(c, 0x1B, True)
    assert hv.cpuid_intercepted(c, 0x40000000) and not hv.cpuid_intercepted(c, 0)
    assert hv.exception_intercepted(c, 14) and not hv.exception_intercepted(c, 13)
    assert status_of(hv.io_intercepted, 0x99, 0, False) == S.INVALID_PARTITION_ID


def test_check_for_io_intercept_answers_and_validates() -> None:
    hv, c, _ = engine()
    hv.install_intercept(ROOT, c, RD, IO, 0x71)
    assert hv.check_for_io_intercept(ROOT, c, 0, 0, 0x70, 2, 0) is True  # 0x70-0x71
    assert hv.check_for_io_intercept(ROOT, c, 0, 0, 0x70, 1, 0) is False
    assert hv.check_for_io_intercept(ROOT, c, 0, 0, 0x71, 1, 1) is False  # a write: not trapped
    assert status_of(hv.check_for_io_intercept, ROOT, c, 0, 0, 0x70, 3, 0) == S.INVALID_PARAMETER
    assert status_of(hv.check_for_io_intercept, ROOT, c, 0, 1, 0x70, 1, 0) == S.INVALID_PARAMETER
    assert status_of(hv.check_for_io_intercept, ROOT, c, 0, 0, 0x70, 1, 2) == S.INVALID_PARAMETER
    assert status_of(hv.check_for_io_intercept, ROOT, c, 9, 0, 0x70, 1, 0) == S.INVALID_VP_INDEX
    assert status_of(hv.check_for_io_intercept, c, c, 0, 0, 0x70, 1, 0) == S.ACCESS_DENIED


# ---- HvCallRegisterInterceptResult / HvCallUnregisterInterceptResult ---------------------------------
def test_cpuid_results_subleaf_specific_wins_and_any_vp_is_the_fallback() -> None:
    hv, c, _ = engine()
    everyone = CpuidResultParameters(1, 0, 0, 0, (0, 0, 0xFF, 0), (0, 0, 0xFF, 0))
    vp1_sub2 = CpuidResultParameters(1, 2, 1, 0, (0, 0, 0x0F, 0), (0, 0, 0xFF, 0))
    hv.register_intercept_result(ROOT, c, HV_ANY_VP, CPUID, everyone)
    hv.register_intercept_result(ROOT, c, 1, CPUID, vp1_sub2)
    d = (1, 2, 0x300, 4)
    assert hv.intercept_result(c, CPUID, 0, 1, subleaf=5, default=d) == (1, 2, 0x3FF, 4)
    assert hv.intercept_result(c, CPUID, 1, 1, subleaf=2, default=d) == (1, 2, 0x30F, 4)
    assert hv.intercept_result(c, CPUID, 1, 1, subleaf=3, default=d) == (1, 2, 0x3FF, 4)
    assert hv.intercept_result(c, CPUID, 0, 2, default=d) is None
    hv.unregister_intercept_result(ROOT, c, 1, CPUID, CpuidUnregisterParameters(1, 2, 1))
    assert hv.intercept_result(c, CPUID, 1, 1, subleaf=2, default=d) == (1, 2, 0x3FF, 4)
    unregister = hv.unregister_intercept_result
    assert status_of(unregister, ROOT, c, 1, CPUID, CpuidUnregisterParameters(1, 2, 1)) == S.INVALID_PARAMETER


def test_msr_results_by_direction_and_their_statuses() -> None:
    hv, c, _ = engine()
    hv.register_intercept_result(ROOT, c, 0, MSR, MsrResultParameters(0x3A, RD | WR, 1))
    hv.register_intercept_result(ROOT, c, 0, MSR, MsrResultParameters(0x3A, WR, 0))  # replaces the write
    ignore, fault = UnimplementedMsrAction.IGNORE_WRITE_READ_ZERO, UnimplementedMsrAction.FAULT
    assert hv.intercept_result(c, MSR, 0, 0x3A) is ignore
    assert hv.intercept_result(c, MSR, 0, 0x3A, is_write=True) is fault
    assert hv.intercept_result(c, MSR, 1, 0x3A) is None
    hv.unregister_intercept_result(ROOT, c, 0, MSR, MsrUnregisterParameters(0x3A, WR))
    assert hv.intercept_result(c, MSR, 0, 0x3A, is_write=True) is None
    reg = hv.register_intercept_result
    assert status_of(reg, ROOT, c, 0, MSR, MsrResultParameters(0x3A, 0, 1)) == S.INVALID_PARAMETER
    assert status_of(reg, ROOT, c, 0, MSR, MsrResultParameters(0x3A, EX, 1)) == S.INVALID_PARAMETER
    assert status_of(reg, ROOT, c, 0, MSR, MsrResultParameters(0x3A, RD, 2)) == S.INVALID_PARAMETER
    assert status_of(reg, ROOT, c, 0, IO, MsrResultParameters(0x3A, RD, 1)) == S.INVALID_PARAMETER
    assert status_of(reg, ROOT, c, 0, CPUID, MsrResultParameters(0x3A, RD, 1)) == S.INVALID_PARAMETER
    bad = CpuidResultParameters(1, 0, 2, 0, (0, 0, 0, 0), (0, 0, 0, 0))
    assert status_of(reg, ROOT, c, 0, CPUID, bad) == S.INVALID_PARAMETER
    assert status_of(reg, ROOT, c, 5, MSR, MsrResultParameters(0x3A, RD, 1)) == S.INVALID_VP_INDEX
    assert status_of(reg, c, ROOT, 0, MSR, MsrResultParameters(0x3A, RD, 1)) == S.ACCESS_DENIED


def test_a_deleted_vp_takes_its_results_with_it() -> None:
    hv, c, _ = engine()
    hv.register_intercept_result(ROOT, c, 1, MSR, MsrResultParameters(0x10, RD, 1))
    hv.delete_vp(ROOT, c, 1)
    hv.create_vp(ROOT, c, 1)
    assert hv.intercept_result(c, MSR, 1, 0x10) is None


# ---- HvCallTranslateVirtualAddressEx ------------------------------------------------------------------
def test_translate_ex_is_the_walk_with_an_empty_event() -> None:
    hv, c, _ = engine()
    hv.map_gpa_pages(ROOT, c, 0, 0x3, list(range(100, 132)))
    # Paging off (the reset state): the GVA is the GPA.
    result, event, gpa = hv.translate_virtual_address_ex(ROOT, c, 0, 0x1, 0x1F)
    assert (result & 0xFFFFFFFF, result >> 32 & 0xFF, event, gpa) == (0, 6, 0, 0x1F)
    assert (result, gpa) == hv.translate_virtual_address(ROOT, c, 0, 0x1, 0x1F)
    assert status_of(hv.translate_virtual_address_ex, ROOT, c, 0, 0, 0x1F) == S.INVALID_PARAMETER


# ---- HvCallAssertVirtualInterrupt ---------------------------------------------------------------------
FIXED, NMI, INIT, SIPI, EXTINT = (int(t) for t in (InterruptType.FIXED, InterruptType.NMI, InterruptType.INIT,
                                                   InterruptType.SIPI, InterruptType.EXT_INT))  # fmt: skip
LEVEL, LOGICAL = INTERRUPT_CONTROL_LEVEL, INTERRUPT_CONTROL_LOGICAL
NONE = HV_INTERRUPT_VECTOR_NONE


def test_assert_virtual_interrupt_is_recorded_without_a_running_layer() -> None:
    hv, c, _ = engine(vps=3)
    hv.assert_virtual_interrupt(ROOT, c, FIXED, 2, 0x31)
    hv.assert_virtual_interrupt(ROOT, c, FIXED | LOGICAL | LEVEL, 0b101, 0x41)
    hv.assert_virtual_interrupt(ROOT, c, FIXED, 0xFF, 0x51)  # physical broadcast
    hv.assert_virtual_interrupt(ROOT, c, NMI, 1, 0)
    hv.assert_virtual_interrupt(ROOT, c, EXTINT | LEVEL, 0, 0x20)
    hv.assert_virtual_interrupt(ROOT, c, FIXED | LEVEL, 2, NONE)  # deassert a level interrupt
    hv.assert_virtual_interrupt(ROOT, c, FIXED, 2, NONE)  # deasserting an edge one: a no-op
    got = [(i.interrupt_type, i.vector, i.targets, i.level_triggered) for i in hv.asserted_interrupts[c]]
    assert got == [
        (InterruptType.FIXED, 0x31, (2,), False),
        (InterruptType.FIXED, 0x41, (0, 2), True),
        (InterruptType.FIXED, 0x51, (0, 1, 2), False),
        (InterruptType.NMI, None, (1,), False),
        (InterruptType.EXT_INT, 0x20, (0,), True),
        (InterruptType.FIXED, None, (2,), True),
    ]
    assert hv.asserted_interrupts[c][-1].deassert


@pytest.mark.parametrize(
    ("control", "destination", "vector", "vtl", "status"),
    [
        (FIXED | 1 << 34, 0, 0x30, 0, S.INVALID_PARAMETER),  # reserved control bits
        (10, 0, 0x30, 0, S.INVALID_PARAMETER),  # undefined type
        (int(InterruptType.SMI), 0, 0, 0, S.INVALID_PARAMETER),  # hv1: not assertable
        (int(InterruptType.LOCAL_INT0), 0, 0, 0, S.INVALID_PARAMETER),
        (NMI | LEVEL, 0, 0, 0, S.INVALID_PARAMETER),  # NMI is edge
        (INIT, 0, 0x30, 0, S.INVALID_PARAMETER),  # INIT takes no vector
        (SIPI, 0, NONE, 0, S.INVALID_PARAMETER),  # SIPI needs one
        (EXTINT, 0, 0x20, 0, S.INVALID_PARAMETER),  # ExtInt is level
        (EXTINT | LEVEL, 1, 0x20, 0, S.INVALID_PARAMETER),  # ExtInt goes to VP 0
        (FIXED, 0, 0x100, 0, S.INVALID_PARAMETER),  # vector beyond 255
        (FIXED, 5, 0x30, 0, S.INVALID_VP_INDEX),  # no VP with APIC ID 5
        (FIXED | LOGICAL, 0b1000, 0x30, 0, S.INVALID_VP_INDEX),  # the set names no VP
        (FIXED | LOGICAL, 0, 0x30, 0, S.INVALID_PARAMETER),  # an empty set
        (FIXED, 0, 0x30, 1, S.INVALID_VTL_STATE),  # VTL 1 is not enabled
        (FIXED, 0, 0x30, 16, S.INVALID_PARAMETER),  # not a VTL
    ],
)
def test_assert_virtual_interrupt_validation(control: int, destination: int, vector: int, vtl: int,
                                             status: HvStatus) -> None:  # fmt: skip
    hv, c, _ = engine(vps=2)
    assert status_of(hv.assert_virtual_interrupt, ROOT, c, control, destination, vector, vtl) == status
    assert c not in hv.asserted_interrupts


def test_assert_virtual_interrupt_caller_state_and_reserved_fields() -> None:
    hv, c, _ = engine()
    assert status_of(hv.assert_virtual_interrupt, ROOT, c, FIXED, 0, 0x30, 0, 1) == S.INVALID_PARAMETER
    assert status_of(hv.assert_virtual_interrupt, ROOT, c, FIXED, 0, 0x30, 0, 0, 1) == S.INVALID_PARAMETER
    assert status_of(hv.assert_virtual_interrupt, c, ROOT, FIXED, 0, 0x30) == S.ACCESS_DENIED
    assert status_of(hv.assert_virtual_interrupt, ROOT, HV_PARTITION_ID_SELF, FIXED, 0, 0x30) == (
        S.INVALID_PARTITION_ID
    )
    created = hv.create_partition(ROOT)
    assert status_of(hv.assert_virtual_interrupt, ROOT, created, FIXED, 0, 0x30) == S.INVALID_PARTITION_STATE


def test_the_running_layers_hook_gets_the_interrupt_outside_the_engine_lock() -> None:
    hv, c, _ = engine()
    got: list[AssertedInterrupt] = []
    free: list[bool] = []

    def probe() -> None:
        ok = hv.lock.acquire(blocking=False)
        if ok:
            hv.lock.release()
        free.append(ok)

    def hook(irq: AssertedInterrupt) -> int | None:
        t = threading.Thread(target=probe)  # another thread can take the engine lock: we do not hold it
        t.start()
        t.join()
        got.append(irq)
        return S.ACKNOWLEDGED if irq.interrupt_type is InterruptType.EXT_INT else None

    hv.on_assert_virtual_interrupt = hook
    hv.assert_virtual_interrupt(ROOT, c, FIXED, 1, 0x30)
    assert status_of(hv.assert_virtual_interrupt, ROOT, c, EXTINT | LEVEL, 0, 0x20) == S.ACKNOWLEDGED
    assert [i.interrupt_type for i in got] == [InterruptType.FIXED, InterruptType.EXT_INT] and free == [
        True
    ] * 2
    assert c not in hv.asserted_interrupts


# ---- HvCallMapVpStatePage / HvCallUnmapVpStatePage -----------------------------------------------------
REGS, MSG = int(VpStatePageType.REGISTERS), int(VpStatePageType.INTERCEPT_MESSAGE)


def test_the_register_page_shows_the_vp_and_takes_dirty_registers_back() -> None:
    hv, c, ram = engine()
    hv.set_vp_registers(ROOT, c, 1, [(HvRegisterName.Rax, 0xAA), (HvRegisterName.Rsp, 0x7000),
                                     (HvRegisterName.Rip, 0x1234)])  # fmt: skip
    assert hv.map_vp_state_page(ROOT, c, 1, REGS, 0, 1, 0x30) == 0x30
    version, valid, _, dirty = REGISTER_PAGE_HEADER.unpack(ram.read(0x30000, 8))
    values = REGISTER_PAGE_VALUES.unpack(ram.read(0x30008, REGISTER_PAGE_VALUES.size))
    assert (version, valid, dirty) == (1, 1, 0)
    assert (values[0], values[4], values[16], values[17]) == (0xAA, 0x7000, 0x1234, 0x2)
    assert hv.backing_refs(0x30) == 1
    # The parent edits RBX and RIP and marks the classes dirty; hv1 loads them before the VP runs.
    ram.write(0x30008 + 3 * 8, (0xBB).to_bytes(8, "little"))
    ram.write(0x30008 + 16 * 8, (0x5678).to_bytes(8, "little"))
    ram.write(0x30004, (CLASS_GENERAL | CLASS_IP).to_bytes(4, "little"))
    assert hv.load_vp_state_page(c, 1) == CLASS_GENERAL | CLASS_IP
    assert hv.get_vp_registers(ROOT, c, 1, [HvRegisterName.Rbx, HvRegisterName.Rip]) == [0xBB, 0x5678]
    assert ram.read(0x30004, 4) == bytes(4) and hv.load_vp_state_page(c, 1) == 0
    hv.set_vp_registers(ROOT, c, 1, [(HvRegisterName.Rcx, 0xCC)])
    hv.sync_vp_state_page(c, 1)
    assert REGISTER_PAGE_VALUES.unpack(ram.read(0x30008, REGISTER_PAGE_VALUES.size))[1] == 0xCC
    hv.unmap_vp_state_page(ROOT, c, 1, REGS, 0)
    assert hv.backing_refs(0x30) == 0 and hv.vp_state_page(c, 1, VpStatePageType.REGISTERS) is None


def test_a_mapped_state_page_cannot_be_deposited_until_it_is_unmapped() -> None:
    hv, c, _ = engine()
    hv.map_vp_state_page(ROOT, c, 0, MSG, 0, 1, 0x31)
    assert status_of(hv.deposit_memory, ROOT, c, [0x31]) == S.OBJECT_IN_USE
    assert hv.write_intercept_message_page(c, 0, b"\x01\x00\x00\x80" + bytes(12))
    assert not hv.write_intercept_message_page(c, 1, b"\x01")
    hv.unmap_vp_state_page(ROOT, c, 0, MSG, 0)
    assert hv.deposit_memory(ROOT, c, [0x31]) == 1


def test_map_vp_state_page_statuses() -> None:
    hv, c, _ = engine()
    m = hv.map_vp_state_page
    assert status_of(m, ROOT, c, 0, REGS, 0, 3, 0x30) == S.INVALID_PARAMETER  # undefined flag
    assert status_of(m, ROOT, c, 0, 2, 0, 1, 0x30) == S.INVALID_PARAMETER  # GHCB
    assert status_of(m, ROOT, c, 0, 3, 0, 1, 0x30) == S.INVALID_PARAMETER  # no such type
    assert status_of(m, ROOT, c, 0, REGS, 1, 1, 0x30) == S.INVALID_PARAMETER  # input VTL
    assert status_of(m, ROOT, c, 0, REGS, 0, 1, 0x9999) == S.INVALID_PARAMETER  # not the caller's RAM
    assert status_of(m, ROOT, c, 0, REGS, 0, 1, 200) == S.INVALID_PARAMETER  # deposited: not the caller's
    assert status_of(m, ROOT, c, 5, REGS, 0, 1, 0x30) == S.INVALID_VP_INDEX
    assert status_of(m, c, ROOT, 0, REGS, 0, 1, 0x30) == S.ACCESS_DENIED
    m(ROOT, c, 0, REGS, 0, 1, 0x30)
    assert status_of(m, ROOT, c, 0, REGS, 0, 1, 0x32) == S.OBJECT_IN_USE  # that VP's page is mapped
    assert status_of(m, ROOT, c, 1, REGS, 0, 1, 0x30) == S.OBJECT_IN_USE  # that page shows one
    u = hv.unmap_vp_state_page
    assert status_of(u, ROOT, c, 0, MSG, 0) == S.INVALID_PARAMETER  # not mapped
    assert status_of(u, ROOT, c, 0, REGS, 0, 1) == S.INVALID_PARAMETER  # Reserved0


def test_without_a_location_the_state_page_comes_from_the_childs_pool() -> None:
    hv, c, ram = engine()  # 50 pages deposited: 16 + 2 * 4 in use
    free = hv.get_memory_balance(ROOT, c)[0]
    page = hv.map_vp_state_page(ROOT, c, 0, REGS, 0, 0, 0)
    assert 200 <= page < 250 and hv.get_memory_balance(ROOT, c)[0] == free - 1
    assert REGISTER_PAGE_HEADER.unpack(ram.read(page << 12, 8))[0] == 1  # the page shows VP 0
    assert page not in hv.withdraw_memory(ROOT, c, 100)  # in use: not withdrawable
    assert status_of(hv.map_vp_state_page, ROOT, c, 1, REGS, 0, 0, 0) == S.INSUFFICIENT_MEMORY
    hv.deposit_memory(ROOT, c, [0x60])  # what mshv_root does: deposit, retry
    assert hv.map_vp_state_page(ROOT, c, 1, REGS, 0, 0, 0) == 0x60
    hv.unmap_vp_state_page(ROOT, c, 0, REGS, 0)
    assert page in hv.withdraw_memory(ROOT, c, 100)  # back in the pool
    hv.finalize_partition(ROOT, c)
    hv.delete_partition(ROOT, c)  # the pool page of VP 1 went back to the pool, then to the root
    assert hv.partition(ROOT).gpa.get(0x60) is not None


def test_deleting_the_vp_or_finalizing_unmaps_its_state_pages() -> None:
    hv, c, _ = engine()
    hv.map_vp_state_page(ROOT, c, 0, REGS, 0, 1, 0x30)
    hv.map_vp_state_page(ROOT, c, 1, REGS, 0, 1, 0x31)
    hv.delete_vp(ROOT, c, 0)
    assert hv.backing_refs(0x30) == 0 and hv.backing_refs(0x31) == 1
    hv.finalize_partition(ROOT, c)
    assert hv.backing_refs(0x31) == 0


# ---- HvCallMapStatsPage2 / HvCallUnmapStatsPage and the counters -----------------------------------------
PART, VP, HYP = int(StatsObjectType.PARTITION), int(StatsObjectType.VP), int(StatsObjectType.HYPERVISOR)


def counter(ram: FakeMemory, page: int, index: int) -> int:
    return ram.read_u64((page << 12) + 8 * index)


def test_a_partition_stats_page_shows_vps_deposits_and_gpa_pages() -> None:
    hv, c, ram = engine(vps=2)
    hv.map_gpa_pages(ROOT, c, 0, 0x3, [0x50, 0x51, 0x52])
    hv.map_stats_page2(ROOT, PART, (c, 0, 0, 0, 0), 0x40)
    assert counter(ram, 0x40, PartitionCounter.PartitionVirtualProcessors) == 2
    assert counter(ram, 0x40, PartitionCounter.PartitionDepositedPages) == 50
    assert counter(ram, 0x40, PartitionCounter.PartitionGpaPages) == 3
    assert counter(ram, 0x40, PartitionCounter.PartitionPartitionId) == c
    hv.create_vp(ROOT, c, 2)
    hv.refresh_stats_pages()
    assert counter(ram, 0x40, PartitionCounter.PartitionVirtualProcessors) == 3
    assert hv.count(c, None, "PartitionGpaSpaceModifications") == 1
    assert counter(ram, 0x40, PartitionCounter.PartitionGpaSpaceModifications) == 1


def test_vp_counters_bumped_by_the_running_layer_show_in_the_vp_page() -> None:
    hv, c, ram = engine()
    hv.map_stats_page2(ROOT, VP, (c, 1, 0, 0, 1), 0x41)  # StatsAreaType PARENT
    for _ in range(3):
        hv.count(c, 1, "VpHypercallsCount")
    hv.count(c, 1, "VpIoInterceptMessages", 5)
    hv.count(c, 0, "VpHypercallsCount")  # another VP: not on this page
    assert counter(ram, 0x41, VpCounter.VpHypercallsCount) == 3
    assert counter(ram, 0x41, VpCounter.VpIoInterceptMessages) == 5
    assert hv.stats_values((StatsObjectType.VP, c, 0)) == {VpCounter.VpHypercallsCount: 1}
    with pytest.raises(KeyError):
        hv.count(c, 1, "NoSuchCounter")
    hv.unmap_stats_page(ROOT, VP, (c, 1, 0, 0, 1))
    hv.count(c, 1, "VpHypercallsCount")
    assert counter(ram, 0x41, VpCounter.VpHypercallsCount) == 3  # no longer updated


def test_the_hypervisor_page_is_the_roots_and_self_pages_are_allowed() -> None:
    hv, c, ram = engine(vps=2)
    hv.map_stats_page2(ROOT, HYP, (0, 0, 0, 0, 0), 0x42)
    assert counter(ram, 0x42, HypervisorCounter.HvPartitions) == 2
    assert counter(ram, 0x42, HypervisorCounter.HvVirtualProcessors) == 2
    assert counter(ram, 0x42, HypervisorCounter.HvTotalPages) == 256 - 50 + 50
    hv.map_stats_page2(ROOT, PART, (HV_PARTITION_ID_SELF, 0, 0, 0, 0), 0x43)
    assert counter(ram, 0x43, PartitionCounter.PartitionPartitionId) == ROOT


def test_map_stats_page2_statuses() -> None:
    hv, c, _ = engine()
    m = hv.map_stats_page2
    assert status_of(m, ROOT, 0x12345, (c, 0, 0, 0, 0), 0x40) == S.INVALID_PARAMETER  # type
    assert status_of(m, ROOT, PART, (c, 0, 0, 0, 2), 0x40) == S.INVALID_PARAMETER  # area INTERNAL
    assert status_of(m, ROOT, PART, (c, 1, 0, 0, 0), 0x40) == S.INVALID_PARAMETER  # ReservedZ1
    assert status_of(m, ROOT, VP, (c, 0, 1, 0, 0), 0x40) == S.INVALID_PARAMETER  # ReservedZ2
    assert status_of(m, ROOT, HYP, (5, 0, 0, 0, 0), 0x40) == S.INVALID_PARAMETER  # ReservedZ0
    assert status_of(m, ROOT, PART, (c, 0, 0, 0, 0), 0x40, 1) == S.INVALID_PARAMETER  # Reserved
    assert status_of(m, ROOT, PART, (c, 0, 0, 0, 0), 0x9999) == S.INVALID_PARAMETER  # location
    assert status_of(m, ROOT, VP, (c, 7, 0, 0, 0), 0x40) == S.INVALID_VP_INDEX
    assert status_of(m, ROOT, PART, (0x77, 0, 0, 0, 0), 0x40) == S.INVALID_PARTITION_ID
    assert status_of(m, c, HYP, (0, 0, 0, 0, 0), 0x40) == S.ACCESS_DENIED  # a child has no AccessStats
    m(ROOT, PART, (c, 0, 0, 0, 0), 0x40)
    assert status_of(m, ROOT, PART, (c, 0, 0, 0, 0), 0x44) == S.OBJECT_IN_USE
    assert status_of(m, ROOT, VP, (c, 0, 0, 0, 0), 0x40) == S.OBJECT_IN_USE  # the page shows one
    assert status_of(hv.deposit_memory, ROOT, c, [0x40]) == S.OBJECT_IN_USE
    assert status_of(hv.unmap_stats_page, ROOT, VP, (c, 0, 0, 0, 0)) == S.INVALID_PARAMETER
    without = Hypervisor(root_pages=64, root_privileges=int(PartitionPrivilege.CreatePartitions))
    assert status_of(without.map_stats_page2, ROOT, HYP, (0, 0, 0, 0, 0), 0x10) == S.ACCESS_DENIED


def test_finalize_releases_stats_pages_and_counters() -> None:
    hv, c, _ = engine()
    hv.map_stats_page2(ROOT, VP, (c, 0, 0, 0, 0), 0x40)
    hv.map_stats_page2(ROOT, PART, (c, 0, 0, 0, 0), 0x41)
    hv.count(c, 0, "VpCpuidInstructionsCount")
    hv.delete_vp(ROOT, c, 0)
    assert hv.backing_refs(0x40) == 0 and hv.backing_refs(0x41) == 1
    hv.finalize_partition(ROOT, c)
    assert hv.backing_refs(0x41) == 0 and hv.stats_values((StatsObjectType.VP, c, 0)) == {}


def test_recorded_interrupts_are_bounded() -> None:
    hv, c, _ = engine()
    for i in range(ASSERTED_INTERRUPTS_KEPT + 10):
        hv.assert_virtual_interrupt(ROOT, c, FIXED, 0, 0x20 + i % 200)
    assert len(hv.asserted_interrupts[c]) == ASSERTED_INTERRUPTS_KEPT
    assert hv.asserted_interrupts[c][-1].vector == 0x20 + (ASSERTED_INTERRUPTS_KEPT + 9) % 200
