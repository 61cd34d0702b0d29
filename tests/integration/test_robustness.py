"""Nothing a guest does may crash the VMM: guests/tests/fuzz.c throws random values at every
synthetic MSR, random control words, GPAs and XMM blocks at the hypercall page, and random commands at
QEMU's Hyper-V test device; hv1 must answer each as the TLFS says (status, #GP, #UD) and the guest
must still be running, with the hypervisor still answering, at the end."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import requires_kvm, run_hv1

pytestmark = [requires_kvm, pytest.mark.timeout(180)]


@pytest.mark.parametrize("apic", ["kernel", "user"])
@pytest.mark.parametrize("seed", [1, 2, 3, 5])
def test_random_guest_input_never_crashes_the_vmm(guest: Callable[[str], Path], apic: str, seed: int) -> None:
    r = run_hv1(
        "run", str(guest("fuzz")), "--apic", apic, "--cpus", "2", "--on-crash", "continue",
        "--append", f"seed={seed}", "--timeout", "120",
    )  # fmt: skip
    assert "internal-fault" not in r.stderr and r.status != 8, r.describe()
    assert r.results.get("fuzz.survived") == "PASS", r.describe()
    assert not r.failed and r.status == 1, r.describe()
