"""Foundation on KVM: boot, serial, exit codes, exceptions, interrupts in both APIC modes, SMP,
CLI errors, and the same output as `qemu-system-x86_64 -kernel` (issue: Foundation, items 2-9)."""

from __future__ import annotations

import ctypes
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from hv1.backends.kvm import host_workarounds
from tests.integration.conftest import ROOT, requires_kvm, run_hv1, stats_line

pytestmark = [requires_kvm, pytest.mark.timeout(180)]

Guest = Callable[[str], Path]


def _assert_all_pass(run: object) -> None:
    from tests.integration.conftest import GuestRun

    assert isinstance(run, GuestRun)
    assert run.results, "the guest printed no result lines\n" + run.describe()
    assert not run.failed, run.describe()
    assert run.status == 1, run.describe()  # debug-exit with 0: (0 << 1) | 1


def test_hello_prints_and_exits_with_debug_exit_status(guest: Guest) -> None:
    k = str(guest("hello"))
    r = run_hv1("run", k, "--timeout", "60")
    assert "hello from hv1 guest" in r.stdout, r.describe()
    assert r.status == 1, r.describe()
    r = run_hv1("run", k, "--append", "exit=3", "--timeout", "60")
    assert r.status == 7, r.describe()  # (3 << 1) | 1, as QEMU's isa-debug-exit
    assert "exit=3" in r.stdout


def test_hello_sees_modules(guest: Guest, tmp_path: Path) -> None:
    m1 = tmp_path / "one.bin"
    m1.write_bytes(b"\x01" * 100)
    m2 = tmp_path / "two.bin"
    m2.write_bytes(b"\x02" * 5000)
    r = run_hv1(
        "run", str(guest("hello")), "--module", f"{m1},first arg", "--module", str(m2), "--timeout", "60"
    )
    assert r.status == 1, r.describe()
    assert "first arg" in r.stdout and "two.bin" in r.stdout, r.describe()


@pytest.mark.parametrize("apic", ["kernel", "user"])
def test_exceptions_are_handled_in_the_guest(guest: Guest, apic: str) -> None:
    _assert_all_pass(run_hv1("run", str(guest("exceptions")), "--apic", apic, "--timeout", "90"))


# This host's in-kernel local APIC (nested kvm_pvm) never sets ISR for a delivered interrupt: it
# behaves as if every interrupt were auto-EOI'd. These checks pass under QEMU/TCG and in hv1's own
# APIC model (--apic user); in kernel mode they are the only failures allowed.
KERNEL_APIC_HOST_QUIRKS = {
    f"apic.{mode}.{rule}"
    for mode in ("xapic", "x2apic")
    for rule in ("isr-set-in-handler", "isr-held-without-eoi")
}


# The kvm_pvm host (kernel 6.18.44-fc-v1098 on) keeps a guest's IA32_TSC_ADJUST write but does not move
# the TSC, and answers CPUID leaf 7 from the real CPU so the bit cannot be hidden
# (hv1/backends/kvm/host_workarounds.py). Allowed to fail there only, in both APIC modes.
PVM_HOST_QUIRKS = {"tsc-adjust.write-moves-the-tsc", "tsc-adjust.write-back-restores"}


@pytest.mark.parametrize("apic", ["kernel", "user"])
def test_interrupts(guest: Guest, apic: str) -> None:
    r = run_hv1("run", str(guest("interrupts")), "--apic", apic, "--cpus", "2", "--timeout", "120")
    allowed = PVM_HOST_QUIRKS if host_workarounds.detect().enabled else set()
    if apic == "kernel":
        allowed = allowed | KERNEL_APIC_HOST_QUIRKS
    assert r.results and set(r.failed) <= allowed, r.describe()
    assert r.results.get("tsc-adjust.read-returns-the-adjustment") == "PASS", r.describe()
    assert r.status == 1 or (r.status == 3 and r.failed), r.describe()


@pytest.mark.parametrize("apic", ["kernel", "user"])
@pytest.mark.parametrize("cpus", [1, 2, 4])
def test_smp(guest: Guest, apic: str, cpus: int) -> None:
    r = run_hv1("run", str(guest("smp")), "--apic", apic, "--cpus", str(cpus), "--timeout", "120")
    _assert_all_pass(r)


def test_trace_prints_exits_and_json(guest: Guest, tmp_path: Path) -> None:
    j = tmp_path / "t.jsonl"
    r = run_hv1("run", str(guest("hello")), "--trace", "exits,io", "--trace-json", str(j), "--timeout", "60")
    assert r.status == 1
    assert " exits " in r.stderr and "dev=uart" in r.stderr
    import json

    events = [json.loads(line) for line in j.read_text().splitlines()]
    assert any(e["cat"] == "io" and e.get("port") == 0x3F8 for e in events)


def test_serial_to_file(guest: Guest, tmp_path: Path) -> None:
    out = tmp_path / "serial.txt"
    r = run_hv1("run", str(guest("hello")), "--serial", str(out), "--timeout", "60")
    assert r.status == 1 and "hello from hv1 guest" in out.read_text() and r.stdout == ""


def test_timeout_stops_a_stuck_guest(guest: Guest) -> None:
    r = run_hv1("run", str(guest("hello")), "--append", "hang", "--timeout", "2")
    assert r.status == 124, r.describe()
    assert "timeout" in r.stderr


def test_sigint_stops_a_stuck_guest_and_still_reports_stats(guest: Guest) -> None:
    # Regression: SIGINT (how tests/integration/test_linux.py ends a Linux boot that cannot finish on
    # a host where user space cannot run) left --stats and --profile unprinted (a KeyboardInterrupt
    # through Machine.run) and gave Python's traceback-free 130 only by accident.
    cmd = [sys.executable, "-m", "hv1", "run", str(guest("hello")), "--append", "hang", "--stats",
           "--profile", "-", "--timeout", "60"]  # fmt: skip
    # The kernel may hand a process-directed SIGINT to any thread: send it to a vCPU thread on
    # purpose (tgkill), the case where a main thread blocked for the whole --timeout never saw it.
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(3)  # started and spinning
    task = Path(f"/proc/{p.pid}/task")
    comm = (task / str(p.pid) / "comm").read_text()  # not KVM's own kernel threads (kvm-nx-lpage-re)
    tids = sorted(
        int(t.name) for t in task.iterdir() if int(t.name) != p.pid and (t / "comm").read_text() == comm
    )
    sys_tgkill = 234  # x86-64
    assert ctypes.CDLL(None, use_errno=True).syscall(sys_tgkill, p.pid, tids[-1], signal.SIGINT) == 0
    t0 = time.monotonic()
    out, err = p.communicate(timeout=30)
    assert time.monotonic() - t0 < 10, "SIGINT took effect only at --timeout"
    assert p.returncode == 130, err
    assert "interrupted (SIGINT)" in err and "hv1: exits: " in err and "per-exit profile" in err, err


def test_triple_fault_stops_with_a_dump(guest: Guest) -> None:
    r = run_hv1("run", str(guest("hello")), "--append", "triple-fault", "--timeout", "60")
    assert r.status == 4, r.describe()
    assert "triple-fault" in r.stderr and "rip=" in r.stderr and "code at rip" in r.stderr


def test_info_reports_host_capabilities() -> None:
    r = run_hv1("info")
    assert r.status == 0 and "sync regs" in r.stdout and "TSC frequency" in r.stdout
    assert "deliver (probed at CPL0): execute yes" in r.stdout, r.stdout  # guest_debug_probe ran


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86_64 not installed")
def test_same_output_and_status_as_qemu(guest: Guest) -> None:
    """A Multiboot kernel that `qemu-system-x86_64 -kernel` runs also runs under `hv1 run` with the same
    serial output and exit status (QEMU under TCG: this host's nested KVM boots SeaBIOS very slowly)."""
    k = str(guest("hello"))
    q = subprocess.run(
        ["qemu-system-x86_64", "-accel", "tcg", "-kernel", k, "-append", "exit=2", "-serial", "stdio",
         "-display", "none", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-no-reboot", "-m", "128"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    h = run_hv1("run", k, "--append", "exit=2", "--timeout", "60")
    assert h.status == q.returncode == 5
    assert h.stdout.replace("\r", "") == q.stdout.replace("\r", "")


@pytest.mark.parametrize("apic", ["kernel", "user"])
def test_partition_reset_reboots_with_hv_state_cleared(guest: Guest, apic: str) -> None:
    """HV_X64_MSR_RESET resets every VP, guest RAM and all Hv state, and the kernel boots again."""
    r = run_hv1("run", str(guest("reset")), "--apic", apic, "--cpus", "2", "--timeout", "90")
    assert "second boot after HV_X64_MSR_RESET" in r.stdout, r.describe()
    _assert_all_pass(r)


def test_partition_reset_with_no_reboot_exits_zero(guest: Guest) -> None:
    r = run_hv1("run", str(guest("reset")), "--no-reboot", "--timeout", "60")
    assert r.status == 0 and "second boot" not in r.stdout, r.describe()


@pytest.mark.parametrize("apic", ["kernel", "user"])
def test_64_vcpus(guest: Guest, apic: str) -> None:
    """--cpus 64, the maximum: every vCPU exists; the guest library brings up the first 16 (its
    per-CPU slots) and the rest wait for INIT/SIPI without disturbing anything."""
    r = run_hv1("run", str(guest("smp")), "--apic", apic, "--cpus", "64", "--timeout", "150")
    assert "fw_cfg reports 64 CPUs; using 16" in r.stdout, r.describe()
    _assert_all_pass(r)


def test_stats_count_each_hypercall_and_msr_as_traced(guest: Guest) -> None:
    """`--stats` per call (issue 12): hv_hypercalls makes defined, undefined (by hex code) and
    rejected calls; every call that returned is counted once under its trace name, and the synthetic
    MSRs written are counted as the msrs trace shows them."""
    import re

    r = run_hv1("run", str(guest("hv_hypercalls")), "--stats", "--trace", "hypercalls,msrs", timeout=120)
    assert r.status == 1, r.describe()
    traced: dict[str, int] = {}
    for m in re.finditer(r"\bhypercalls\s+vp\d+\s+(Hv(?:Ext)?Call\w+) .*?status=(\S+)", r.stderr):
        if m.group(2) not in ("CONTINUE", "#UD"):
            traced[m.group(1)] = traced.get(m.group(1), 0) + 1
    calls = stats_line(r.stderr, "hypercalls")
    assert calls == traced and any(k.startswith("HvCall0x") for k in calls), (calls, traced)
    writes: dict[str, int] = {}
    for m in re.finditer(r"\bmsrs\s+vp\d+\s+wrmsr msr=(\S+)", r.stderr):
        writes[m.group(1)] = writes.get(m.group(1), 0) + 1
    counted = stats_line(r.stderr, "wrmsr")
    assert {k: counted.get(k, 0) for k in writes} == writes and writes, (counted, writes)
