"""Time on KVM (issue: Time): guests/tests/timers.c checks the reference counter (monotonic, at the
TSC-derived rate on every VP), the TSC page formula against the MSR, sequence semantics, the
frequency MSRs, VP_RUNTIME, every synthetic timer mode (one-shot, periodic, lazy, auto-enable,
direct, message) on several VPs, expiry payloads, busy-slot and masked-SINT redelivery, past
deadlines, reenlightenment, pause/resume, and each #GP rule."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import requires_kvm, run_hv1

pytestmark = [requires_kvm, pytest.mark.timeout(240)]

Guest = Callable[[str], Path]


@pytest.mark.parametrize("apic", ["kernel", "user"])
@pytest.mark.parametrize("cpus", [1, 2, 4])
def test_timers_conformance(guest: Guest, apic: str, cpus: int) -> None:
    r = run_hv1(
        "run", str(guest("timers")), "--apic", apic, "--cpus", str(cpus), "--hv", "default,+reenlightenment",
        "--append", f"cpus={cpus}", "--timeout", "200",
    )  # fmt: skip
    assert r.results and not r.failed and r.status == 1, r.describe()


@pytest.mark.parametrize("edit", ["-stimer", "-direct-stimer", "-frequency-msrs"])
def test_time_features_are_gated(guest: Guest, edit: str) -> None:
    r = run_hv1("run", str(guest("timers")), "--hv", f"default,{edit}", "--timeout", "200")
    assert r.results and not r.failed and r.status == 1, r.describe()


def test_minimal_profile_hides_time(guest: Guest) -> None:
    r = run_hv1("run", str(guest("timers")), "--hv", "minimal", "--timeout", "200")
    assert r.status == 1 and not r.failed, r.describe()


def test_tsc_page_read_takes_no_exit(guest: Guest) -> None:
    """The reference TSC page is read with no exit at all (TLFS timers.md): the bench guest reads the
    page N times; hv1 --stats shows no more RDMSR exits than the MSR loop itself made."""
    r = run_hv1("run", str(guest("time_bench")), "--stats", "--timeout", "200")
    assert r.status in (1, 3), r.describe()
    assert "BENCH" in r.stdout, r.describe()
