"""Synthetic MSRs (hv/msrs.py, hv/hypercall_page.py): TLFS hypercall-interface.md, vp-properties.md,
partition-properties.md, PDF §8.10, tlfs-inventory.md §3 and §7."""

from __future__ import annotations

import io

import pytest

from hv1.hv.caps import Caps, parse_profile, privilege_gate
from hv1.hv.hypercall_page import HYPERCALL_PORT, PAGE_CONTENT, STUB32_OFFSET, STUB64_OFFSET, STUB_OUT_END
from hv1.hv.interfaces import GP_VECTOR, GuestException, gp
from hv1.hv.msrs import CRASH_CTL_CAPABILITIES, Scope
from hv1.hv.partition import Partition
from hv1.hv.vp import Vp
from hv1.tlfs import msrs as M
from hv1.tlfs.partition import PartitionPrivilege
from hv1.trace import Tracer
from tests.fakes import FakeClock, FakeHooks, FakeIrq, FakeMemory

PAGE = 0x1000
RAM = 1 << 20
GUEST_ID = 0x8100_0000_0000_0000  # open source, Linux


def make(
    profile: str | Caps = "default", vps: int = 2, tracer: Tracer | None = None
) -> tuple[Partition, FakeHooks]:
    hooks = FakeHooks()
    caps = parse_profile(profile) if isinstance(profile, str) else profile
    kw = {"tracer": tracer} if tracer is not None else {}
    p = Partition(caps, vps, FakeMemory(RAM), FakeClock(), FakeIrq(), hooks, **kw)
    return p, hooks


def raises_gp(fn: object, *args: int) -> None:
    with pytest.raises(GuestException) as e:
        fn(*args)  # type: ignore[operator]
    assert e.value.vector == GP_VECTOR and e.value.error_code == 0


def fill_ram(p: Partition, gpfn: int, byte: int) -> None:
    p.memory.write(gpfn * PAGE, bytes([byte]) * PAGE)


# --- gates (PDF §8.10: not granted -> #GP) --------------------------------------------------------

# (msr, readable, writable, feature that grants it)
CORE = [
    (M.HV_X64_MSR_GUEST_OS_ID, True, True, None),
    (M.HV_X64_MSR_HYPERCALL, True, True, None),
    (M.HV_X64_MSR_VP_INDEX, True, False, None),
    (M.HV_X64_MSR_RESET, True, True, "reset"),
    (M.HV_X64_MSR_CRASH_P0, True, True, "crash"),
    (M.HV_X64_MSR_CRASH_P4, True, True, "crash"),
    (M.HV_X64_MSR_CRASH_CTL, True, True, "crash"),
]


@pytest.mark.parametrize("profile", ["minimal", "default"])
@pytest.mark.parametrize(("msr", "readable", "writable", "feature"), CORE)
def test_msr_gate_under_profile(
    profile: str, msr: int, readable: bool, writable: bool, feature: str | None
) -> None:
    p, _ = make(profile)
    granted = feature is None or feature in p.caps.features
    assert p.owns_msr(msr)
    if granted and readable:
        p.rdmsr(0, msr)
    else:
        raises_gp(p.rdmsr, 0, msr)
    if not (granted and writable):
        raises_gp(p.wrmsr, 0, msr, 0)


@pytest.mark.parametrize("profile", ["minimal", "default"])
@pytest.mark.parametrize(
    "msr",
    [
        0x40000004,
        0x40000011,  # holes between the defined synthetic MSRs
        0x400000A0,
        0x400000E0,  # stats pages: never implemented (AccessStatsReg is never granted)
        0x400001FF,
        M.HV_X64_MSR_NESTED_VP_INDEX,
        0x400010FF,
    ],
)
def test_unknown_synthetic_msr_gp(profile: str, msr: int) -> None:
    p, _ = make(profile)
    assert msr not in p.msrs.defs
    assert p.owns_msr(msr)
    raises_gp(p.rdmsr, 0, msr)
    raises_gp(p.wrmsr, 0, msr, 1)


@pytest.mark.parametrize("msr", [0x10, 0x1B, 0x3FFFFFFF, 0x40000200, 0x40000FFF, 0x40001100, 0xC0000080])
def test_non_synthetic_msrs_are_not_ours(msr: int) -> None:
    p, _ = make()
    assert not p.owns_msr(msr)


def test_partition_privileges_and_crash_are_vm_wide() -> None:
    """Requirements doc: privileges identical on all VPs."""
    p, _ = make("minimal", vps=3)
    for vp in range(3):
        raises_gp(p.rdmsr, vp, M.HV_X64_MSR_CRASH_CTL)
        assert p.rdmsr(vp, M.HV_X64_MSR_VP_INDEX) == vp


# --- VP_INDEX (vp-properties.md "Virtual Processor Indices") --------------------------------------


def test_vp_index_read_only_and_unique() -> None:
    p, _ = make(vps=4)
    assert [p.rdmsr(i, M.HV_X64_MSR_VP_INDEX) for i in range(4)] == [0, 1, 2, 3]
    raises_gp(p.wrmsr, 1, M.HV_X64_MSR_VP_INDEX, 1)
    raises_gp(p.wrmsr, 1, M.HV_X64_MSR_VP_INDEX, 5)


# --- GUEST_OS_ID / HYPERCALL ordering (hypercall-interface.md) ------------------------------------


def test_guest_os_id_partition_wide_and_initially_zero() -> None:
    p, _ = make()
    assert p.rdmsr(0, M.HV_X64_MSR_GUEST_OS_ID) == 0
    p.wrmsr(1, M.HV_X64_MSR_GUEST_OS_ID, GUEST_ID)
    assert p.rdmsr(0, M.HV_X64_MSR_GUEST_OS_ID) == GUEST_ID
    assert p.guest_os_id == GUEST_ID


def test_hypercall_enable_ignored_while_guest_os_id_zero() -> None:
    """ "If no Guest OS identity has been specified ... The enable bit will remain zero even when
    writing a one to it." The rest of the value is kept (inventory §7.5)."""
    p, _ = make()
    fill_ram(p, 5, 0x55)
    p.wrmsr(0, M.HV_X64_MSR_HYPERCALL, 5 * PAGE | 1)
    assert p.rdmsr(0, M.HV_X64_MSR_HYPERCALL) == 5 * PAGE
    assert not p.hypercall_page_enabled()
    assert p.memory.read(5 * PAGE, PAGE) == b"\x55" * PAGE


def test_hypercall_page_enable_maps_code_page() -> None:
    p, _ = make()
    fill_ram(p, 5, 0x55)
    p.wrmsr(0, M.HV_X64_MSR_GUEST_OS_ID, GUEST_ID)
    p.wrmsr(1, M.HV_X64_MSR_HYPERCALL, 5 * PAGE | 1)
    assert p.hypercall_page_enabled()
    assert p.rdmsr(0, M.HV_X64_MSR_HYPERCALL) == 5 * PAGE | 1  # partition-wide
    page = p.memory.read(5 * PAGE, PAGE)
    assert page == PAGE_CONTENT
    # endbr64; out 0x90, al; ret at 0 and endbr32; out; ret at 0x10; rest int3.
    assert page[STUB64_OFFSET : STUB64_OFFSET + 7] == bytes.fromhex("f30f1efa e690 c3")
    assert page[STUB32_OFFSET : STUB32_OFFSET + 7] == bytes.fromhex("f30f1efb e690 c3")
    assert page[STUB64_OFFSET + STUB_OUT_END] == 0xC3 and page[STUB64_OFFSET + 5] == HYPERCALL_PORT
    assert set(page[0x20:]) == {0xCC} and set(page[7:0x10]) == {0xCC}


def test_hypercall_rsvdp_bits_preserved() -> None:
    p, _ = make()
    p.wrmsr(0, M.HV_X64_MSR_GUEST_OS_ID, GUEST_ID)
    p.wrmsr(0, M.HV_X64_MSR_HYPERCALL, 5 * PAGE | 0xFFC | 1)
    assert p.rdmsr(0, M.HV_X64_MSR_HYPERCALL) == 5 * PAGE | 0xFFC | 1


def test_hypercall_disable_and_move_follow_overlay_semantics() -> None:
    p, _ = make()
    fill_ram(p, 5, 0x55)
    fill_ram(p, 6, 0x66)
    p.wrmsr(0, M.HV_X64_MSR_GUEST_OS_ID, GUEST_ID)
    p.wrmsr(0, M.HV_X64_MSR_HYPERCALL, 5 * PAGE | 1)
    p.wrmsr(0, M.HV_X64_MSR_HYPERCALL, 6 * PAGE | 1)  # move
    assert p.memory.read(5 * PAGE, PAGE) == b"\x55" * PAGE
    assert p.memory.read(6 * PAGE, PAGE) == PAGE_CONTENT
    p.wrmsr(0, M.HV_X64_MSR_HYPERCALL, 6 * PAGE)  # disable
    assert p.memory.read(6 * PAGE, PAGE) == b"\x66" * PAGE
    assert not p.hypercall_page_enabled()


def test_hypercall_page_refilled_on_enable() -> None:
    """Zeroed and filled on enable: whatever the guest scribbled over it is gone (caps.DEVIATIONS)."""
    p, _ = make()
    p.wrmsr(0, M.HV_X64_MSR_GUEST_OS_ID, GUEST_ID)
    p.wrmsr(0, M.HV_X64_MSR_HYPERCALL, 5 * PAGE | 1)
    p.memory.write(5 * PAGE + 0x100, b"scribble")
    p.wrmsr(0, M.HV_X64_MSR_HYPERCALL, 5 * PAGE)
    p.wrmsr(0, M.HV_X64_MSR_HYPERCALL, 5 * PAGE | 1)
    assert p.memory.read(5 * PAGE, PAGE) == PAGE_CONTENT


def test_clearing_guest_os_id_disables_hypercall_page() -> None:
    """ "if the Guest OS identity is cleared to zero after the hypercall page has been enabled, it will
    become disabled." """
    p, _ = make()
    fill_ram(p, 5, 0x55)
    p.wrmsr(0, M.HV_X64_MSR_GUEST_OS_ID, GUEST_ID)
    p.wrmsr(0, M.HV_X64_MSR_HYPERCALL, 5 * PAGE | 1)
    p.wrmsr(1, M.HV_X64_MSR_GUEST_OS_ID, 0)
    assert not p.hypercall_page_enabled()
    assert p.rdmsr(0, M.HV_X64_MSR_HYPERCALL) == 5 * PAGE
    assert p.memory.read(5 * PAGE, PAGE) == b"\x55" * PAGE


@pytest.mark.parametrize("gpfn", [RAM // PAGE, (1 << 40), (1 << 52) - 1])
def test_hypercall_gpfn_beyond_gpa_space_gp(gpfn: int) -> None:
    """ "If the guest attempts to move the hypercall page beyond the bounds of the GPA space, a #GP
    fault will result when the MSR is written." (hv1: beyond guest RAM, caps.DEVIATIONS)."""
    p, _ = make()
    p.wrmsr(0, M.HV_X64_MSR_GUEST_OS_ID, GUEST_ID)
    p.wrmsr(0, M.HV_X64_MSR_HYPERCALL, 5 * PAGE | 1)
    raises_gp(p.wrmsr, 0, M.HV_X64_MSR_HYPERCALL, gpfn << 12 | 1)
    assert p.rdmsr(0, M.HV_X64_MSR_HYPERCALL) == 5 * PAGE | 1  # unchanged
    assert p.memory.read(5 * PAGE, PAGE) == PAGE_CONTENT
    p.wrmsr(0, M.HV_X64_MSR_HYPERCALL, gpfn << 12)  # storing it disabled is fine: nothing moves


def test_hypercall_locked_bit_honoured() -> None:
    """Locked: "Once set, only a system reset can clear the bit"; later writes #GP (inventory §7.6)."""
    p, _ = make()
    p.wrmsr(0, M.HV_X64_MSR_GUEST_OS_ID, GUEST_ID)
    p.wrmsr(0, M.HV_X64_MSR_HYPERCALL, 5 * PAGE | 3)
    assert p.rdmsr(1, M.HV_X64_MSR_HYPERCALL) == 5 * PAGE | 3
    raises_gp(p.wrmsr, 0, M.HV_X64_MSR_HYPERCALL, 6 * PAGE | 1)
    raises_gp(p.wrmsr, 1, M.HV_X64_MSR_HYPERCALL, 5 * PAGE | 3)
    assert p.memory.read(5 * PAGE, PAGE) == PAGE_CONTENT
    p.reset()
    assert p.rdmsr(0, M.HV_X64_MSR_HYPERCALL) == 0
    p.wrmsr(0, M.HV_X64_MSR_HYPERCALL, 6 * PAGE)


def test_hypercall_locked_then_guest_os_id_cleared_disables_but_stays_locked() -> None:
    p, _ = make()
    p.wrmsr(0, M.HV_X64_MSR_GUEST_OS_ID, GUEST_ID)
    p.wrmsr(0, M.HV_X64_MSR_HYPERCALL, 5 * PAGE | 3)
    p.wrmsr(0, M.HV_X64_MSR_GUEST_OS_ID, 0)
    assert p.rdmsr(0, M.HV_X64_MSR_HYPERCALL) == 5 * PAGE | 2
    raises_gp(p.wrmsr, 0, M.HV_X64_MSR_HYPERCALL, 5 * PAGE | 1)


def test_hypercall_lock_bit_ignored_without_feature() -> None:
    p, _ = make("default,-hypercall-lock")
    p.wrmsr(0, M.HV_X64_MSR_GUEST_OS_ID, GUEST_ID)
    p.wrmsr(0, M.HV_X64_MSR_HYPERCALL, 5 * PAGE | 3)
    assert p.rdmsr(0, M.HV_X64_MSR_HYPERCALL) == 5 * PAGE | 1
    p.wrmsr(0, M.HV_X64_MSR_HYPERCALL, 6 * PAGE | 1)  # not locked


def test_hypercall_page_under_minimal() -> None:
    p, _ = make("minimal")
    p.wrmsr(0, M.HV_X64_MSR_GUEST_OS_ID, GUEST_ID)
    p.wrmsr(0, M.HV_X64_MSR_HYPERCALL, 7 * PAGE | 3)
    assert p.hypercall_page_enabled()
    assert p.rdmsr(0, M.HV_X64_MSR_HYPERCALL) == 7 * PAGE | 1  # no lock in minimal


# --- RESET ----------------------------------------------------------------------------------------


def test_reset_msr_requests_reset() -> None:
    p, hooks = make()
    assert p.rdmsr(0, M.HV_X64_MSR_RESET) == 0
    p.wrmsr(0, M.HV_X64_MSR_RESET, 0)
    p.wrmsr(0, M.HV_X64_MSR_RESET, 2)
    assert hooks.resets == 0
    p.wrmsr(1, M.HV_X64_MSR_RESET, 1)
    assert hooks.resets == 1 and p.counters["reset_requests"] == 1
    assert p.rdmsr(0, M.HV_X64_MSR_RESET) == 0


def test_hooks_run_outside_the_partition_lock() -> None:
    p, _ = make()
    seen: list[bool] = []

    class Hooks(FakeHooks):
        def request_reset(self) -> None:
            # Another thread must be able to take the lock: it is not held by us.
            seen.append(p.lock._is_owned())  # type: ignore[attr-defined]

    p.hooks = Hooks()
    p.wrmsr(0, M.HV_X64_MSR_RESET, 1)
    assert seen == [False]


# --- crash MSRs (partition-properties.md "Partition Crash Enlightenment") -------------------------


def test_crash_params_are_storage_and_ctl_reports_capabilities() -> None:
    p, hooks = make()
    for i in range(5):
        p.wrmsr(i % 2, M.HV_X64_MSR_CRASH_P0 + i, 0x1000 + i)
    assert [p.rdmsr(0, M.HV_X64_MSR_CRASH_P0 + i) for i in range(5)] == [0x1000 + i for i in range(5)]
    assert p.rdmsr(0, M.HV_X64_MSR_CRASH_CTL) == CRASH_CTL_CAPABILITIES == 0xC000_0000_0000_0000
    p.wrmsr(0, M.HV_X64_MSR_CRASH_CTL, 0x3FF)  # no CrashNotify: nothing happens
    assert hooks.crashes == []


def test_crash_notify_calls_hook_with_params() -> None:
    p, hooks = make()
    for i in range(5):
        p.wrmsr(0, M.HV_X64_MSR_CRASH_P0 + i, 0xDEAD0 + i)
    p.wrmsr(1, M.HV_X64_MSR_CRASH_CTL, 1 << 63)
    assert hooks.crashes == [(1, tuple(0xDEAD0 + i for i in range(5)), None)]
    assert p.rdmsr(0, M.HV_X64_MSR_CRASH_CTL) == CRASH_CTL_CAPABILITIES


def test_crash_message_read_from_p3_p4() -> None:
    p, hooks = make()
    p.memory.write(0x3000, b"kernel panic\0")
    p.wrmsr(0, M.HV_X64_MSR_CRASH_P3, 0x3000)
    p.wrmsr(0, M.HV_X64_MSR_CRASH_P4, 13)
    p.wrmsr(0, M.HV_X64_MSR_CRASH_CTL, 3 << 62)
    assert hooks.crashes[-1][2] == b"kernel panic\0"


def test_crash_message_length_capped_at_4096() -> None:
    p, hooks = make()
    p.wrmsr(0, M.HV_X64_MSR_CRASH_P3, 0x3000)
    p.wrmsr(0, M.HV_X64_MSR_CRASH_P4, 1 << 40)
    p.wrmsr(0, M.HV_X64_MSR_CRASH_CTL, 3 << 62)
    msg = hooks.crashes[-1][2]
    assert msg is not None and len(msg) == 4096


@pytest.mark.parametrize("gpa", [RAM - 4, RAM, 1 << 63, (1 << 64) - 1])
def test_crash_message_out_of_ram_is_none(gpa: int) -> None:
    p, hooks = make()
    p.wrmsr(0, M.HV_X64_MSR_CRASH_P3, gpa)
    p.wrmsr(0, M.HV_X64_MSR_CRASH_P4, 64)
    p.wrmsr(0, M.HV_X64_MSR_CRASH_CTL, 3 << 62)
    assert hooks.crashes[-1][2] is None


# --- partition reset ------------------------------------------------------------------------------


def test_partition_reset_restores_reset_values() -> None:
    p, _ = make()
    fill_ram(p, 5, 0x55)
    p.wrmsr(0, M.HV_X64_MSR_GUEST_OS_ID, GUEST_ID)
    p.wrmsr(0, M.HV_X64_MSR_HYPERCALL, 5 * PAGE | 1)
    p.wrmsr(0, M.HV_X64_MSR_CRASH_P2, 9)
    shown = p.memory.read(5 * PAGE, PAGE)
    p.reset()
    assert p.rdmsr(0, M.HV_X64_MSR_GUEST_OS_ID) == 0
    assert p.rdmsr(0, M.HV_X64_MSR_HYPERCALL) == 0
    assert p.rdmsr(0, M.HV_X64_MSR_CRASH_P2) == 0
    # RAM is not written by a reset (the platform reset reloads it: tests/unit/test_reset_ram.py).
    assert p.memory.read(5 * PAGE, PAGE) == shown
    assert not p.hypercall_page_enabled()


# --- registration API for later subsystems --------------------------------------------------------


def test_register_custom_msrs() -> None:
    p, _ = make(vps=2)
    gate = privilege_gate(PartitionPrivilege.AccessHypercallMsrs)
    p.msrs.register(0x40000150, "TEST_PER_VP", gate, reset=0x10000, scope=Scope.VP)
    p.msrs.register(0x40000151, "TEST_WO", gate, read=None)
    log: list[tuple[int, int]] = []

    def write(vp: Vp, value: int) -> None:
        if value & 1:
            raise gp()
        log.append((vp.index, value))
        p.msrs.store(vp, 0x40000152, value)

    p.msrs.register(0x40000152, "TEST_CUSTOM", gate, write=write)
    assert p.rdmsr(0, 0x40000150) == 0x10000
    p.wrmsr(1, 0x40000150, 7)
    assert (p.rdmsr(0, 0x40000150), p.rdmsr(1, 0x40000150)) == (0x10000, 7)
    raises_gp(p.rdmsr, 0, 0x40000151)
    p.wrmsr(0, 0x40000151, 1)
    raises_gp(p.wrmsr, 0, 0x40000152, 3)
    p.wrmsr(1, 0x40000152, 4)
    assert log == [(1, 4)] and p.rdmsr(0, 0x40000152) == 4
    p.reset()
    assert p.rdmsr(1, 0x40000150) == 0x10000
    with pytest.raises(ValueError, match="already registered"):
        p.msrs.register(0x40000150, "AGAIN", gate)
    # A gate that is not granted hides the MSR completely.
    p.msrs.register(0x40000153, "TEST_GATED", privilege_gate(PartitionPrivilege.AccessStatsReg))
    raises_gp(p.rdmsr, 0, 0x40000153)
    # Outside the synthetic range, registered MSRs are owned too (x2APIC in user mode).
    p.msrs.register(0x808, "X2APIC_TPR", gate)
    assert p.owns_msr(0x808)
    assert "TEST_PER_VP" in p.msrs.format_table()


def test_values_are_64_bit() -> None:
    p, _ = make()
    p.wrmsr(0, M.HV_X64_MSR_CRASH_P0, (1 << 64) + 5)
    assert p.rdmsr(0, M.HV_X64_MSR_CRASH_P0) == 5


# --- trace ----------------------------------------------------------------------------------------


def test_msr_trace_lines() -> None:
    out = io.StringIO()
    p, _ = make(tracer=Tracer(["msrs"], text=out))
    p.wrmsr(0, M.HV_X64_MSR_GUEST_OS_ID, GUEST_ID)
    p.rdmsr(1, M.HV_X64_MSR_VP_INDEX)
    with pytest.raises(GuestException):
        p.rdmsr(0, 0x400001FF)
    lines = out.getvalue().splitlines()
    assert "wrmsr msr=HV_X64_MSR_GUEST_OS_ID value=0x8100000000000000" in lines[0]
    assert "vp1" in lines[1] and "rdmsr msr=HV_X64_MSR_VP_INDEX value=1" in lines[1]
    assert "gp=true" in lines[2]


def test_machine_is_told_where_the_hypercall_page_is() -> None:
    """The machine keeps the page read/execute-only (TLFS "Hypercall Page": writes #GP); the partition
    tells it, outside the partition lock, each time the guest-visible page moves, appears or goes."""
    p, hooks = make()
    p.wrmsr(0, M.HV_X64_MSR_HYPERCALL, 0x5000 | 1)  # GUEST_OS_ID still 0: enable ignored
    assert hooks.hypercall_pages == []
    p.wrmsr(0, M.HV_X64_MSR_GUEST_OS_ID, 0x8100000000000000)
    p.wrmsr(0, M.HV_X64_MSR_HYPERCALL, 0x5000 | 1)
    p.wrmsr(1, M.HV_X64_MSR_HYPERCALL, 0x5000 | 1)  # same place: nothing to tell
    p.wrmsr(1, M.HV_X64_MSR_HYPERCALL, 0x7000 | 1)
    p.wrmsr(0, M.HV_X64_MSR_GUEST_OS_ID, 0)  # disables the page
    assert hooks.hypercall_pages == [0x5000, 0x7000, None]


def test_stats_msr_names() -> None:
    """`--stats` names: TLFS names for synthetic MSRs, SDM x2APIC names (banked ISR/TMR/IRR by
    number), a few architectural ones, the hex index for the rest."""
    from hv1.machine.msr_names import stats_msr_name

    assert stats_msr_name(0x40000073) == "HV_X64_MSR_VP_ASSIST_PAGE"
    assert stats_msr_name(0x1B) == "IA32_APIC_BASE"
    assert [stats_msr_name(0x800 + r) for r in (0x02, 0x0F, 0x10, 0x17, 0x18, 0x27, 0x30, 0x3F)] == [
        "X2APIC_ID", "X2APIC_SVR", "X2APIC_ISR0", "X2APIC_ISR7", "X2APIC_TMR0", "X2APIC_IRR7",
        "X2APIC_ICR", "X2APIC_SELF_IPI",
    ]  # fmt: skip
    assert stats_msr_name(0x801) == "MSR_0x801"  # reserved in the x2APIC range
    assert stats_msr_name(0x1234) == "MSR_0x1234"
