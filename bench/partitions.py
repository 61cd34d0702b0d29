#!/usr/bin/env python3
"""Child-partition intercept round trip vs the bare exit floor, measured in the same run.

    python3 bench/partitions.py [--backend auto|kvm|emu] [--iterations N] [--runs R] [--json OUT]

A Python root (hv1.Hypervisor) runs a real-mode child whose loop is `out dx, al` N times. Figure: the
port is intercepted, so every `out` is a round trip child -> InterceptSuspend + HvMessageTypeX64Io-
PortIntercept -> the root's `next_message` -> `complete_intercept` (SetVpRegisters RIP, clear
InterceptSuspend) -> the child resumes. Floor: the same child, same loop, the port not intercepted
(each `out` is a bare exit the child's VP thread answers itself). Each run gives a time per `out`
(wall clock of the whole loop / N); the table shows the median and p10/p90 over the runs and the
ratio of the medians. Also: CreatePartition -> first intercept (setup to the first message).

The same rows for a root *guest* (guests/bench/root_bench.c, `hv1 run --hv root`, issue 11 item 7): the
guest creates the same child through the hypercall ABI, takes every intercept from its SIMP slot 0 and
completes it with HvCallSetVpRegisters, timing with RDTSC; its `BENCH` lines are printed in the same
table, next to the Python root's figure, measured in the same run (after it, on the same backend).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hv1  # noqa: E402
from hv1.host import Hypervisor  # noqa: E402
from hv1.hv.hypercalls.vp_calls import SegmentRegister  # noqa: E402
from hv1.hv.vp_registers import encode_segment  # noqa: E402
from hv1.tlfs.intercepts import InterceptAccess, InterceptType  # noqa: E402
from hv1.tlfs.registers import HvRegisterName as R  # noqa: E402
from hv1.tlfs.virtualization_host import MapGpaFlags as F  # noqa: E402

PORT, START, DONE = 0x500, 0xF5, 0xF4
REPO = Path(__file__).resolve().parents[1]
ROOT_BENCH = REPO / "guests" / "build" / "root_bench.elf"
BENCH_LINE = re.compile(r"^BENCH (\S+) cycles_per_op=(\d+) tsc_khz=(\d+)", re.M)
RWX = F.READABLE | F.WRITABLE | F.KERNEL_EXECUTABLE | F.USER_EXECUTABLE


def program(n: int) -> bytes:
    """mov dx, PORT; mov cx, n; out START, al; l: out dx, al; loop l; out DONE, al; hlt (16-bit real
    mode at 0). The loop is timed between the START and DONE intercepts, so building the child and
    its first entry are not in it."""
    return bytes(
        [
            0xBA,
            PORT & 0xFF,
            PORT >> 8,
            0xB9,
            n & 0xFF,
            n >> 8,
            0xE6,
            START,
            0xEE,
            0xE2,
            0xFD,
            0xE6,
            DONE,
            0xF4,
        ]
    )


def one_run(hv: Hypervisor, n: int, intercepted: bool, page: int) -> tuple[float, float]:
    """(seconds per `out`, seconds from CreatePartition to the first message)."""
    t0 = time.perf_counter()
    c = hv.create_partition()
    hv.deposit_memory(c, list(range(page, page + 32)))
    hv.initialize_partition(c)
    hv.write((page + 32) << 12, program(n))
    hv.map_gpa_pages(c, 0, RWX, list(range(page + 32, page + 48)))
    hv.create_vp(c, 0)
    code = encode_segment(SegmentRegister(base=0, limit=0xFFFF, selector=0, attributes=0x9B))
    data = encode_segment(SegmentRegister(base=0, limit=0xFFFF, selector=0, attributes=0x93))
    hv.set_vp_registers(c, 0, {R.Cs: code, R.Ds: data, R.Es: data, R.Ss: data, R.Rip: 0, R.Rsp: 0x7000})
    write = int(InterceptAccess.WRITE)
    hv.install_intercept(c, write, int(InterceptType.X64IoPort), DONE)
    hv.install_intercept(c, write, int(InterceptType.X64IoPort), START)
    if intercepted:
        hv.install_intercept(c, write, int(InterceptType.X64IoPort), PORT)
    hv.resume_vp(c, 0)
    first: float | None = None
    start = 0.0
    while True:
        m = hv.next_message(timeout=600)
        if first is None:
            first = time.perf_counter() - t0
            start = time.perf_counter()
        port = m.io_port()[0]
        if port == DONE:
            break
        hv.complete_intercept(m)
    per = (time.perf_counter() - start) / n
    hv.finalize_partition(c)
    hv.delete_partition(c)
    return per, first


def root_guest(backend: str, n: int, runs: int) -> dict[str, list[float]]:
    """guests/bench/root_bench.c as a root guest on `backend`: seconds per BENCH line name, one per run
    (cycles_per_op / the guest's TSC frequency). Builds the guest if it is missing or older."""
    src = REPO / "guests" / "bench" / "root_bench.c"
    if not ROOT_BENCH.exists() or ROOT_BENCH.stat().st_mtime < src.stat().st_mtime:
        subprocess.run(["make", "-C", str(REPO / "guests"), "-s", "build/root_bench.elf"], check=True)
    cmd = [sys.executable, "-m", "hv1", "run", str(ROOT_BENCH), "--hv", "root", "--backend", backend,
           "--apic", "user", "--append", f"n={n} runs={runs}", "--timeout", "3000"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=3600)
    out: dict[str, list[float]] = {}
    for name, cycles, khz in BENCH_LINE.findall(r.stdout):
        out.setdefault(name, []).append(int(cycles) / (int(khz) * 1000))
    if r.returncode != 1 or not out:
        raise RuntimeError(f"root_bench: exit status {r.returncode}\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    return out


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="auto", choices=("auto", "kvm", "emu"))
    ap.add_argument("--iterations", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    n = min(a.iterations, 0xFFFF)
    figure: list[float] = []
    floor: list[float] = []
    setup: list[float] = []
    with hv1.Hypervisor(memory=64 << 20, backend=a.backend) as hv:
        backend = hv.runtime.backend
        page = 0x400
        for i in range(a.runs):  # interleaved, so both see the same machine load
            for intercepted, out in ((True, figure), (False, floor)):
                per, first = one_run(hv, n, intercepted, page)
                page += 48
                out.append(per)
                if intercepted:
                    setup.append(first)
            print(
                f"run {i + 1}/{a.runs}: intercept {figure[-1] * 1e6:.1f} us, bare {floor[-1] * 1e6:.1f} us",
                file=sys.stderr,
            )
    print(f"root guest: {n} outs x {a.runs} runs on {backend}", file=sys.stderr)
    guest = root_guest(backend, n, a.runs)
    rows = {
        "child intercept round trip (child out -> Python root -> child resumes)": (figure, floor),
        "child intercept round trip (child out -> root guest -> child resumes)": (
            guest["root-guest-intercept-round-trip"],
            guest["root-guest-bare-child-exit"],
        ),
    }
    print(
        f"| figure ({backend}, {n} outs x {a.runs} runs) | median | p10 | p90 | floor: bare exit in the child"
        " | ratio |"
    )
    print("|---|---|---|---|---|---|")
    for name, (f, fl) in rows.items():
        ratio = statistics.median(f) / statistics.median(fl)
        med, p10, p90 = statistics.median(f) * 1e6, pct(f, 0.1) * 1e6, pct(f, 0.9) * 1e6
        bare = statistics.median(fl) * 1e6
        print(f"| {name} | {med:.1f} us | {p10:.1f} | {p90:.1f} | {bare:.1f} us | {ratio:.2f}x |")
    guest_setup = guest["root-guest-create-to-first-intercept"]
    for who, xs in (("Python root", setup), ("root guest", guest_setup)):
        print(
            f"| CreatePartition -> first child intercept ({who}) | {statistics.median(xs) * 1e3:.1f} ms | "
            f"{pct(xs, 0.1) * 1e3:.1f} | {pct(xs, 0.9) * 1e3:.1f} | | |"
        )
    if a.json:
        a.json.write_text(
            json.dumps(
                {
                    "backend": backend,
                    "iterations": n,
                    "intercept_s": figure,
                    "bare_s": floor,
                    "create_to_first_intercept_s": setup,
                    "root_guest_intercept_s": guest["root-guest-intercept-round-trip"],
                    "root_guest_bare_s": guest["root-guest-bare-child-exit"],
                    "root_guest_create_to_first_intercept_s": guest_setup,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
