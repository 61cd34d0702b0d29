"""The Hv#1 core on KVM (issue 6, items 7 and 9): the conformance guests `hv_discovery` (CPUID leaves, MSR
gates, GUEST_OS_ID/HYPERCALL ordering, the hypercall page overlay, VP_INDEX on every VP, crash MSRs) and
`hv_hypercalls` (the hypercall ABI) under the `minimal` and `default` profiles, in both APIC modes, with one
and several CPUs; plus `hv1 info --hv minimal` / `--hypercalls`.

The exact CPUID values a guest should see are derived from hv1's capability model (`hv1.hv.caps`) and passed
on the guest's command line (`hv=...`); for `minimal` the guest also checks its own built-in copy of the
Requirements-doc set, and `test_info_minimal_is_exactly_the_requirements_set` checks the model against the
Requirements doc independently.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from hv1.backends.kvm import ioctls as k
from hv1.backends.kvm.vm import KvmSystem
from hv1.hv.caps import parse_profile, without_auto_eoi
from tests.integration.conftest import GuestRun, requires_kvm, run_hv1

pytestmark = [requires_kvm]

Guest = Callable[[str], Path]

CRASH_LINE = "hv1: guest crash reported by vp0: P0=0x1e P1=0xc0000005 P2=0xfffff80012345678"
CRASH_MESSAGE = "hv1: crash message: hv1 crash message test"


def host_has_synic2() -> bool:
    """KVM_CAP_HYPERV_SYNIC2: what AutoEOI in `--apic kernel` needs (hv1/machine/auto_eoi.py)."""
    system = KvmSystem()
    try:
        return bool(system.check(k.KVM_CAP_HYPERV_SYNIC2))
    finally:
        os.close(system.fd)


def expectations(profile: str, apic: str) -> str:
    """The guest's `hv=` argument: max leaf, 0x40000003 EAX..EDX, 0x40000004 EAX..ECX, 0x40000005 EAX..ECX,
    0x40000006 EAX, as hv1's capability model computes them for this profile and APIC mode. In kernel
    mode on a host without KVM_CAP_HYPERV_SYNIC2 hv1 cannot honour AutoEOI and recommends its
    deprecation instead (0x40000004.EAX[9], caps.without_auto_eoi), as Machine does."""
    caps = parse_profile(profile, apic)
    if apic == "kernel" and not host_has_synic2():
        caps = without_auto_eoi(caps)
    leaves = caps.cpuid_leaves()
    l3, l4, l5 = leaves[0x40000003], leaves[0x40000004], leaves[0x40000005]
    l6 = leaves.get(0x40000006, (0, 0, 0, 0))
    values = [leaves[0x40000000][0], *l3, *l4[:3], *l5[:3], l6[0]]
    return "hv=" + ",".join(f"{v:x}" for v in values)


def assert_all_pass(r: GuestRun) -> None:
    assert r.results, "the guest printed no result lines\n" + r.describe()
    assert not r.failed, r.describe()
    assert r.status == 1, r.describe()  # debug-exit 0: (0 << 1) | 1


def discovery(guest: Guest, profile: str, apic: str, cpus: int, *extra: str) -> GuestRun:
    name = profile if profile in ("minimal", "default") else "custom"
    append = f"profile={name} {expectations(profile, apic)}"
    return run_hv1(
        "run", str(guest("hv_discovery")), "--hv", profile, "--apic", apic, "--cpus", str(cpus),
        "--on-crash", "continue", "--append", append, "--timeout", "50", *extra, timeout=70,
    )  # fmt: skip


def hypercalls(guest: Guest, profile: str, apic: str, cpus: int, append: str = "", *extra: str) -> GuestRun:
    return run_hv1(
        "run", str(guest("hv_hypercalls")), "--hv", profile, "--apic", apic, "--cpus", str(cpus),
        "--append", append, "--timeout", "50", *extra, timeout=70,
    )  # fmt: skip


# --- discovery and MSRs ------------------------------------------------------------------------------------


@pytest.mark.timeout(90)
@pytest.mark.parametrize("apic", ["kernel", "user"])
@pytest.mark.parametrize("profile", ["minimal", "default"])
def test_discovery_and_msrs(guest: Guest, profile: str, apic: str) -> None:
    r = discovery(guest, profile, apic, 2)
    assert_all_pass(r)
    res = r.results
    assert any(n.startswith("cpuid.40000003.eax.exact") for n in res), r.describe()  # hv= was understood
    assert res["msr.vp-index.unique"] == "PASS"
    assert res["hypercall-page.move-restores-ram-at-old-gpa"] == "PASS"
    if profile == "minimal":
        # everything beyond the Requirements set is absent: its MSRs #GP
        for msr in ("RESET", "CRASH_CTL", "SCONTROL", "TIME_REF_COUNT", "VP_ASSIST_PAGE", "GUEST_IDLE"):
            assert res[f"msr.{msr}.not-advertised-rdmsr-gp"] == "PASS", msr
        assert "guest crash" not in r.stderr
    else:
        # CRASH_CTL.CrashNotify is printed with P0-P4, and the message buffer when CrashMessage is set
        assert CRASH_LINE + " P3=0x0 P4=0x0" in r.stderr, r.describe()
        assert CRASH_MESSAGE in r.stderr, r.describe()
        assert res["msr.hypercall.locked-unlock-gp"] == "PASS"


@pytest.mark.timeout(60)
def test_discovery_one_cpu(guest: Guest) -> None:
    assert_all_pass(discovery(guest, "default", "kernel", 1))


@pytest.mark.timeout(60)
def test_discovery_edited_profile(guest: Guest) -> None:
    """`+name/-name` edits: removed features' MSRs #GP, the lock bit is ignored without its feature bit."""
    r = discovery(guest, "default,-crash,-hypercall-lock,-reset", "user", 1)
    assert_all_pass(r)
    res = r.results
    assert res["msr.CRASH_P0.not-advertised-wrmsr-gp"] == "PASS"
    assert res["msr.RESET.not-advertised-rdmsr-gp"] == "PASS"
    assert res["msr.hypercall.lock-bit-ignored-without-feature"] == "PASS"
    assert "guest crash" not in r.stderr


@pytest.mark.timeout(60)
def test_crash_notification_stops_the_run_by_default(guest: Guest) -> None:
    r = run_hv1(
        "run", str(guest("hv_discovery")), "--hv", "default", "--append", "profile=default crash-only",
        "--timeout", "50", timeout=70,
    )  # fmt: skip
    assert r.status == 6, r.describe()  # EXIT_GUEST_CRASH
    assert "hv1: guest crash reported by vp0: P0=0xdead" in r.stderr, r.describe()
    assert "SUMMARY" not in r.stdout


@pytest.mark.timeout(60)
def test_reset_msr_resets_the_partition(guest: Guest) -> None:
    """HV_X64_MSR_RESET = 1 resets the partition; with --no-reboot the run ends with status 0."""
    r = run_hv1(
        "run", str(guest("hv_discovery")), "--hv", "default", "--append", "profile=default reset-only",
        "--no-reboot", "--timeout", "50", timeout=70,
    )  # fmt: skip
    assert r.status == 0, r.describe()
    assert "SUMMARY" not in r.stdout and "FAIL" not in r.stdout, r.describe()


# --- the hypercall ABI -------------------------------------------------------------------------------------


@pytest.mark.timeout(90)
@pytest.mark.parametrize("apic", ["kernel", "user"])
@pytest.mark.parametrize("profile", ["minimal", "default"])
def test_hypercall_abi(guest: Guest, profile: str, apic: str) -> None:
    r = hypercalls(guest, profile, apic, 2)
    assert_all_pass(r)
    res = r.results
    assert res["hc.rep.510-reps-complete-with-continuation"] == "PASS"
    assert res["hc.x86.memory-call-success"] == "PASS"  # the 32-bit convention ran in compatibility mode
    assert res["hc.smp.concurrent-long-rep-calls-complete"] == "PASS"
    if profile == "minimal":
        assert res["hc.xmm.input-not-advertised-ud"] == "PASS"
        assert res["hc.ext.8001-not-advertised-invalid-code"] == "PASS"
    else:
        assert res["hc.xmm.full-112-byte-block-in-and-out"] == "PASS"
        assert res["hc.ext.boot-zeroed-ranges-read-zero"] == "PASS"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("profile", ["minimal", "default"])
def test_hypercall_abi_one_cpu(guest: Guest, profile: str) -> None:
    assert_all_pass(hypercalls(guest, profile, "kernel", 1))


@pytest.mark.timeout(60)
def test_hypercall_abi_four_cpus(guest: Guest) -> None:
    assert_all_pass(hypercalls(guest, "default", "user", 4))


@pytest.mark.timeout(60)
def test_hypercall_privileges_granted(guest: Guest) -> None:
    """HvCallGetPartitionId / GetPartitionProperty with the privilege and the hv1 grant."""
    r = hypercalls(guest, "default,+partition-id,+partition-properties", "kernel", 2, "grant-props")
    assert_all_pass(r)
    assert r.results["hc.partition-id.granted-success"] == "PASS"
    assert r.results["hc.partition-property.privilege-flags-match-cpuid"] == "PASS"


@pytest.mark.timeout(60)
def test_xmm_input_without_xmm_output(guest: Guest) -> None:
    r = hypercalls(guest, "default,-xmm-output", "user", 1)
    assert_all_pass(r)
    assert r.results["hc.xmm.output-not-advertised-ud"] == "PASS"
    assert r.results["hc.xmm.input-only-call-without-output-feature"] == "PASS"


@pytest.mark.timeout(60)
def test_trace_shows_hypercalls_continuation_and_msrs(guest: Guest) -> None:
    r = hypercalls(guest, "minimal", "kernel", 1, "", "--trace", "hypercalls,msrs")
    assert_all_pass(r)
    lines = r.stderr.splitlines()
    # one line per call with name (code), fast/xmm, rep start/count, status, reps, duration
    spin = re.compile(
        r"hypercalls vp0 +HvCallNotifyLongSpinWait code=8 fast=true .* status=SUCCESS reps=0 us="
    )
    assert any(spin.search(ln) for ln in lines), r.stderr[-3000:]
    assert any("status=INVALID_HYPERCALL_INPUT" in ln for ln in lines)
    assert any("status=#UD" in ln for ln in lines)  # XMM fast input not advertised under minimal
    # the 510-rep call is continued (each exit has a ~200 us budget) and then completes
    long_call = [ln for ln in lines if "HvCallGetVpIndexFromApicId" in ln and "rep_count=510" in ln]
    assert any("status=CONTINUE" in ln for ln in long_call), "\n".join(long_call)
    assert any("status=SUCCESS reps=510" in ln for ln in long_call), "\n".join(long_call)
    assert any("wrmsr msr=HV_X64_MSR_HYPERCALL" in ln for ln in lines)


# --- hv1 info ----------------------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_info_minimal_is_exactly_the_requirements_set() -> None:
    """Requirements doc: CPUID.1:ECX[31], leaves 0x40000000-0x40000005, "Hv#1", AccessHypercallMsrs and
    AccessVpIndex (and nothing else: every other bit is optional and hv1's minimal leaves it clear)."""
    r = run_hv1("info", "--hv", "minimal")
    assert r.status == 0, r.describe()
    out = r.stdout
    assert "features: hypercall-msrs, vp-index\n" in out
    assert "EAX=0x40000005 EBX=0x7263694d ECX=0x666f736f EDX=0x76482074" in out  # max leaf, "Microsoft Hv"
    assert "EAX=0x31237648 EBX=0x00000000 ECX=0x00000000 EDX=0x00000000" in out  # "Hv#1"
    assert "EAX=0x00000060 EBX=0x00000000 ECX=0x00000000 EDX=0x00000000" in out  # 0x40000003
    assert "EAX=0x00000000 EBX=0xffffffff ECX=0x00000000 EDX=0x00000000" in out  # 0x40000004
    assert "EAX=0x00001000 EBX=0x00000040 ECX=0x00000000 EDX=0x00000000" in out  # 0x40000005 limits
    leaves = re.findall(r"^  CPUID (0x4000000[0-9a-f]) ", out, re.M)
    assert leaves == [f"{0x40000000 + i:#010x}" for i in range(6)], leaves
    set_bits = [ln.split("]", 1)[1].split() for ln in out.splitlines() if ln.strip().startswith("[x]")]
    assert set_bits == [["5", "AccessHypercallMsrs"], ["6", "AccessVpIndex"]], set_bits


@pytest.mark.timeout(30)
def test_info_hypercalls_lists_the_core_calls() -> None:
    r = run_hv1("info", "--hypercalls")
    assert r.status == 0, r.describe()
    for code, name in (
        ("0x0008", "HvCallNotifyLongSpinWait"),
        ("0x0044", "HvCallGetPartitionProperty"),
        ("0x0046", "HvCallGetPartitionId"),
        ("0x009a", "HvCallGetVpIndexFromApicId"),
        ("0x8001", "HvExtCallQueryCapabilities"),
        ("0x8002", "HvExtCallGetBootZeroedMemory"),
        ("0x8003", "HvExtCallMemoryHeatHint"),
    ):
        assert re.search(rf"^{code} +{name} ", r.stdout, re.M), (code, r.stdout)


@pytest.mark.parametrize("apic", ["kernel", "user"])
def test_hypercall_from_cpl3_faults_without_a_status(guest: Guest, apic: str) -> None:
    """TLFS "Legal Hypercall Environments": CPL 3 gets no status. hv1 answers #UD when the trapping
    `out` reaches it; where the CPU refuses the `out` first the guest sees #GP (caps.DEVIATIONS)."""
    r = run_hv1("run", str(guest("hv_cpl")), "--apic", apic, "--timeout", "60")
    assert_all_pass(r)


@pytest.mark.parametrize("apic", ["kernel", "user"])
def test_root_calls(guest: Guest, apic: str) -> None:
    """guests/tests/root_calls.c as a virtualization host on KVM (the emulator run: test_emu.py)."""
    r = run_hv1(
        "run", str(guest("root_calls")), "--hv", "root", "--apic", apic, "--timeout", "60", timeout=90
    )
    assert r.results and not r.failed and r.status == 1, r.describe()
    assert len(r.results) >= 80, r.describe()
