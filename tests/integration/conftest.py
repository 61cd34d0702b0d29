"""Integration tests boot guest test kernels on /dev/kvm with `hv1 run` and check what they saw.

KVM is present on the development machine and in CI, where these tests must run; elsewhere they
skip with the reason. Every test has a pytest-timeout: a stuck guest fails, it does not hang CI.

Without KVM, test_emu.py boots the same conformance guests on the emulator backend (--backend emu
--apic user). The tests here stay KVM-only: most of them also run --apic kernel (KVM's in-kernel
APIC), and several check KVM itself (host quirks, `hv1 info` capabilities, exit counts and timings
sized for ~10 us exits).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from hv1.machine.guests import build_guest

ROOT = Path(__file__).resolve().parents[2]


def _kvm_reason() -> str | None:
    if not os.path.exists("/dev/kvm"):
        return "no /dev/kvm on this machine"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "no permission to open /dev/kvm"
    return None


KVM_SKIP = _kvm_reason()
requires_kvm = pytest.mark.skipif(KVM_SKIP is not None, reason=KVM_SKIP or "")

_RESULT = re.compile(r"^(PASS|FAIL) (\S+)(.*)$")


@dataclass
class GuestRun:
    status: int
    stdout: str
    stderr: str

    @property
    def results(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for line in self.stdout.splitlines():
            m = _RESULT.match(line.strip())
            if m:
                out[m.group(2)] = m.group(1)
        return out

    @property
    def failed(self) -> list[str]:
        return [n for n, r in self.results.items() if r != "PASS"]

    def describe(self) -> str:
        return f"status={self.status}\n--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr[-4000:]}"


def stats_line(stderr: str, kind: str = "exits") -> dict[str, int]:
    """One `hv1 run --stats` line (hv1/cli.py format_run_stats): exits, hypercalls, rdmsr or wrmsr."""
    head = f"hv1: {kind}: "
    body = next(ln for ln in stderr.splitlines() if ln.startswith(head))[len(head) :]
    return {} if body == "none" else {k: int(v) for k, v in (kv.split("=") for kv in body.split(", "))}


def run_hv1(*args: str, timeout: float = 60) -> GuestRun:
    cmd = [sys.executable, "-m", "hv1", *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    return GuestRun(p.returncode, p.stdout, p.stderr)


@pytest.fixture(scope="session")
def guest() -> object:
    """guest(name) -> path of the built test kernel guests/build/<name>.elf."""
    return build_guest
