"""Time on KVM (issue: Time): guests/tests/timers.c checks the reference counter (monotonic, at the
TSC-derived rate on every VP), the TSC page formula against the MSR, sequence semantics, the
frequency MSRs, VP_RUNTIME, every synthetic timer mode (one-shot, periodic, lazy, auto-enable,
direct, message) on several VPs, expiry payloads, busy-slot and masked-SINT redelivery, past
deadlines, reenlightenment, pause/resume, and each #GP rule."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import requires_kvm, run_hv1, stats_line

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
    """The reference TSC page is read with no exit at all (TLFS timers.md "Partition Reference Time
    Enlightenment"). time_bench.c's count= modes run one loop 1000 times and print one fixed line, so
    the exit counts of the runs differ only by that loop's exits: 1000 reads of the page add none,
    1000 RDMSR TIME_REF_COUNT add 1000."""
    k = str(guest("time_bench"))
    counts, reads = {}, {}
    for mode in ("none", "page", "msr"):
        r = run_hv1("run", k, "--stats", "--append", f"count={mode} count_n=1000", "--timeout", "120")
        assert r.status == 1, r.describe()
        counts[mode], reads[mode] = stats_line(r.stderr), stats_line(r.stderr, "rdmsr")
    total = {m: sum(c.values()) for m, c in counts.items()}
    assert total["page"] == total["none"], counts
    assert counts["msr"].get("rdmsr", 0) - counts["none"].get("rdmsr", 0) == 1000, counts
    # --stats per MSR: the 1000 exits are reads of TIME_REF_COUNT, and every rdmsr exit is counted by name.
    ref = "HV_X64_MSR_TIME_REF_COUNT"
    assert reads["msr"].get(ref, 0) - reads["none"].get(ref, 0) == 1000, reads
    assert {m: sum(r.values()) for m, r in reads.items()} == {m: c.get("rdmsr", 0) for m, c in counts.items()}
