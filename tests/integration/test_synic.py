"""SynIC, ports and connections on KVM (issue: SynIC): guests/tests/synic.c checks the SynIC MSR
rules, the overlay pages, the message slot protocol with busy slots, MessagePending, EOM and
redelivery, queue overflow, event flags, AutoEOI (user APIC mode), polling, every hypercall status,
and a flood from several VPs through QEMU's Hyper-V test device with nothing lost or duplicated."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import requires_kvm, run_hv1

pytestmark = [requires_kvm, pytest.mark.timeout(240)]

Guest = Callable[[str], Path]


@pytest.mark.parametrize("apic", ["kernel", "user"])
@pytest.mark.parametrize("cpus", [1, 2, 4])
def test_synic_conformance(guest: Guest, apic: str, cpus: int) -> None:
    r = run_hv1("run", str(guest("synic")), "--apic", apic, "--cpus", str(cpus), "--timeout", "200")
    assert r.results and not r.failed and r.status == 1, r.describe()
    if cpus > 1:
        assert r.results.get("synic.smp.flood-no-loss-per-sender-order") == "PASS", r.describe()
        assert r.results.get("synic.smp.flood-no-duplicates") == "PASS", r.describe()
    if apic == "user":
        # AutoEOI is honoured only by hv1's own APIC; in kernel mode it is not advertised.
        assert not any(name.startswith("synic.auto-eoi") and res != "PASS" for name, res in r.results.items())


def test_synic_is_gated_by_the_profile(guest: Guest) -> None:
    """Without AccessSynicRegs every SynIC MSR #GPs (TLFS feature-discovery.md)."""
    r = run_hv1("run", str(guest("synic")), "--hv", "default,-synic", "--timeout", "120")
    assert r.status == 1 and not r.failed, r.describe()


def test_trace_synic_lines(guest: Guest) -> None:
    r = run_hv1("run", str(guest("synic")), "--cpus", "2", "--trace", "synic", "--timeout", "200")
    assert r.status == 1, r.describe()
    for event in ("post", "delivered", "eom", "event"):
        assert f" {event}" in r.stderr, f"no '{event}' synic trace line\n" + r.stderr[-2000:]
