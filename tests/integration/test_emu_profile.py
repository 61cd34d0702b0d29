"""`hv1 run --profile` on the emulator backend (hv1/profiler.py, issue 13): a guest's exits split into
phases, hypercalls and synthetic-MSR reads recorded under their own names. Checks shapes only: no
timed assertions (the host is shared)."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import run_hv1

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("unicorn") is None, reason="unicorn not installed"),
    pytest.mark.timeout(180),
]


def test_emu_profile_breaks_hypercalls_into_phases(guest: Callable[[str], Path], tmp_path: Path) -> None:
    out = tmp_path / "profile.json"
    r = run_hv1(
        "run", str(guest("hv_bench")), "--backend", "emu", "--apic", "user", "--hv", "default",
        "--append", "n=10", "--timeout", "150", "--profile", str(out), timeout=170,
    )  # fmt: skip
    assert r.status == 1, r.describe()
    assert "per-exit profile" in r.stderr, r.describe()
    kinds = json.loads(out.read_text())["kinds"]
    null = kinds["hypercall HvExtCallQueryCapabilities"]
    assert null["count"] >= 10
    # The backend's phases and the dispatcher's, all on one exit record.
    assert {"run", "decode", "regsync", "route", "lock", "dispatch", "handler", "trace", "deferred"} <= set(
        null["phases"]
    )
    assert "hypercall HvCallGetVpIndexFromApicId" in kinds
    assert "rdmsr 0x40000002" in kinds  # HV_X64_MSR_VP_INDEX
    assert "io-out (in hook)" in kinds  # the bare `out` floor, served inside the emulator's hook
