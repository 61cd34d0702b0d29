"""The guest TSC on the emulator, and its frequency.

Unicorn's RDTSC is QEMU TCG's `cpu_get_tsc`: the host TSC plus the vCPU's TSC offset, which is 0
until the guest writes IA32_TSC (measured: a guest RDTSC falls between two host reads). So the
guest TSC is the host TSC, read with the same 10-byte stub the KVM backend uses (kvm/tsc.py; it
needs no /dev/kvm), and reference time (hv1/hv/reftime.py) is defined from it exactly as on KVM.

Without KVM_GET_TSC_KHZ the host TSC frequency comes from calibration against CLOCK_MONOTONIC:
the best of several 20 ms windows, each bracketed by clock reads, gives it to well under 0.01 %.
"""

from __future__ import annotations

import time

from hv1.backends.kvm.tsc import rdtsc

__all__ = ["calibrate_tsc_hz", "rdtsc"]


def calibrate_tsc_hz(window_s: float = 0.02, rounds: int = 3) -> int:
    """The host TSC frequency in Hz, from `rounds` windows of `window_s` against CLOCK_MONOTONIC."""
    best: list[float] = []
    for _ in range(rounds):
        n0, t0 = time.monotonic_ns(), rdtsc()
        end = n0 + int(window_s * 1e9)
        while time.monotonic_ns() < end:
            pass
        t1, n1 = rdtsc(), time.monotonic_ns()
        best.append((t1 - t0) / ((n1 - n0) / 1e9))
    best.sort()
    return int(best[len(best) // 2])
