"""The gdb stub against the REAL gdb (Debian's gdb in batch mode), no KVM needed.

A tiny C program (tests/data/gdb_target.c) is compiled by gcc with symbols; the fake CPU
(tests/fake_debug.py) serves its memory image and walks its instructions as `objdump -d` lists them
(calls, returns, the stack, and the loads/stores of its globals), with two VPs. gdb connects over
TCP to the stub's real server and a scripted session does `info threads`, `break bump`,
`continue`, `print counter`, `stepi`, `watch counter` and continues to the exit. The same session
against a real guest on KVM (guests/tests/gdb.c) is test_gdb_on_kvm below.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from hv1.gdbstub.server import GdbServer
from tests.fake_debug import FakeCpuTarget, Insn
from tests.fakes import FakeMemory
from tests.integration.conftest import ROOT, requires_kvm

pytestmark = pytest.mark.timeout(120)

SOURCE = ROOT / "tests" / "data" / "gdb_target.c"
STACK_TOP = 0x7F0000
_LINE = re.compile(r"^\s*([0-9a-f]+):\t([0-9a-f ]+)\t(.*)$")
_RIP_REF = re.compile(r"#\s*([0-9a-f]+)\s*<")
_WIDTH = {"%e": 4, "%r": 8}

needs_tools = pytest.mark.skipif(
    any(shutil.which(t) is None for t in ("gdb", "gcc", "objdump")), reason="needs gdb, gcc and objdump"
)


def build_elf(tmp: Path) -> Path:
    elf = tmp / "gdb_target.elf"
    subprocess.run(
        ["gcc", "-g", "-O0", "-static", "-nostdlib", "-fno-pie", "-no-pie", "-fcf-protection=none",
         "-fno-asynchronous-unwind-tables", "-Wl,-e,main", "-Wl,--build-id=none",
         "-o", str(elf), str(SOURCE)],
        check=True,
    )  # fmt: skip
    return elf


def _operand_width(text: str) -> int:
    for prefix, n in _WIDTH.items():
        if prefix in text:
            return n
    return 4 if re.match(r"movl\b", text) else 8


def program_from_objdump(elf: Path) -> dict[int, Insn]:
    """The fake CPU's program for the -O0 code of gdb_target.c: push/pop/mov of the frame pointer,
    call/ret/jmp, loads into %eax, `add $1,%eax`, and stores of %eax or an immediate to a global."""
    text = subprocess.run(
        ["objdump", "-d", "-w", str(elf)], check=True, capture_output=True, text=True
    ).stdout
    prog: dict[int, Insn] = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        addr, size, asm = int(m.group(1), 16), len(m.group(2).split()), m.group(3).strip()
        mnem, _, ops = asm.partition(" ")
        ops = ops.split("#")[0].strip()
        ref = _RIP_REF.search(asm)
        insn = Insn(size=size)
        if asm == "push   %rbp":
            insn.op = "push_rbp"
        elif asm == "pop    %rbp":
            insn.op = "pop_rbp"
        elif ops == "%rsp,%rbp":
            insn.op = "mov_rbp_rsp"
        elif mnem == "call":
            insn.op, insn.next = "call", int(ops.split()[0], 16)
        elif mnem == "ret":
            insn.op = "ret"
        elif mnem == "jmp":
            insn.next = int(ops.split()[0], 16)
        elif ref is not None and mnem.startswith("mov"):
            target, width = int(ref.group(1), 16), _operand_width(asm)
            if ops.endswith("(%rip)"):  # a store: AT&T puts the destination last
                src = ops.split(",")[0]
                if src.startswith("$"):
                    val = int(src[1:], 16)
                    insn.store = (target, width, lambda _o, _r, v=val, w=width: v.to_bytes(w, "little"))
                else:
                    insn.store = (
                        target,
                        width,
                        lambda _o, r, w=width: (r["rax"] & ((1 << 8 * w) - 1)).to_bytes(w, "little"),
                    )
            else:
                insn.load = (target, width, "rax")
        elif asm.startswith("add    $0x1,%eax"):
            insn.effect = lambda r: r.update(rax=(r["rax"] + 1) & 0xFFFFFFFF)
        prog[addr] = insn
    return prog


def fake_for(elf: Path) -> FakeCpuTarget:
    mem = FakeMemory(8 << 20)
    with open(elf, "rb") as f:
        e = ELFFile(f)
        for seg in e.iter_segments():
            if seg["p_type"] == "PT_LOAD":
                mem.write(seg["p_paddr"], seg.data())
        syms = {s.name: s["st_value"] for s in e.get_section_by_name(".symtab").iter_symbols()}
    # VP 0 enters main with a return address of 0 on its stack (its `ret` ends the run); VP 1 spins.
    mem.write(STACK_TOP - 8, bytes(8))
    return FakeCpuTarget(mem, program_from_objdump(elf), {0: syms["main"], 1: syms["vp1_main"]},
                         {0: STACK_TOP - 8, 1: STACK_TOP - 0x1000}, exit_status=1)  # fmt: skip


def run_gdb(elf: Path, port: int, commands: list[str], timeout: float = 90) -> str:
    args = ["gdb", "-batch", "-nx", "-ex", "set confirm off", "-ex", "set pagination off",
            "-ex", f"target remote 127.0.0.1:{port}"]  # fmt: skip
    for c in commands:
        args += ["-ex", c]
    r = subprocess.run([*args, str(elf)], capture_output=True, text=True, timeout=timeout)
    return r.stdout + r.stderr


def gdb_against_fake(tmp: Path, commands: list[str]) -> tuple[Path, FakeCpuTarget, str]:
    """Build the ELF, serve it from a fake CPU, run the real gdb with `commands`, stop the server."""
    elf = build_elf(tmp)
    target = fake_for(elf)
    server = GdbServer(target, "127.0.0.1", 0)
    server.start()
    try:
        out = run_gdb(elf, server.address[1], commands)
    finally:
        server.close()
    return elf, target, out


@needs_tools
def test_real_gdb_break_step_print_watch_threads(tmp_path: Path) -> None:
    _, target, out = gdb_against_fake(tmp_path, [
            "info threads", "break bump", "continue", "print counter", "stepi", "print/x $pc",
            "print/x $cr3", "print $fs_base", "watch counter", "continue", "delete", "thread 2",
            "print ticks[1]", "thread 1", "continue",
    ])  # fmt: skip
    assert "Thread 2" in out and "VP 1 (fake CPU)" in out, out
    assert "Breakpoint 1, bump ()" in out and "gdb_target.c" in out, out
    assert "$1 = 5" in out, out
    bp = int(re.search(r"Breakpoint 1 at (0x[0-9a-f]+)", out).group(1), 16)  # type: ignore[union-attr]
    pc = int(re.search(r"\$2 = (0x[0-9a-f]+)", out).group(1), 16)  # type: ignore[union-attr]
    assert pc == bp + target.program[bp].size, out  # stepi executed exactly the load at the breakpoint
    assert "$3 = 0x0" in out and "$4 = 0" in out, out  # control and segment-base registers are there
    assert "Hardware watchpoint 2: counter" in out and "Old value = 5" in out and "New value = 6" in out, out
    assert "Switching to thread 2" in out and "vp1_main ()" in out and "$5 = 7" in out, out  # VP 1 ran
    assert "exited with code 01" in out, out


@needs_tools
def test_real_gdb_monitor_and_memory_write(tmp_path: Path) -> None:
    _, target, out = gdb_against_fake(tmp_path, [
            "monitor hv synic", "monitor phys 0x402000 4", "set var counter = 41", "print counter",
            "print ticks", "detach",
    ])  # fmt: skip
    assert "fake synic state" in out, out
    assert "0x00402000: 05 00 00 00" in out, out
    assert "$1 = 41" in out and "$2 = {0, 0}" in out, out
    assert target.memory.read(0x402000, 4) == (41).to_bytes(4, "little")
    assert target.detached


@needs_tools
def test_real_gdb_hbreak_awatch_and_scheduler_locking(tmp_path: Path) -> None:
    _, target, out = gdb_against_fake(tmp_path, [
            "hbreak bump", "continue", "x/2i $pc", "delete", "awatch counter", "set scheduler-locking step",
            "thread 2", "stepi", "stepi", "print ticks[1]", "thread 1", "print/x $pc",
            "info registers cr0 efer fs_base", "continue",
    ])  # fmt: skip
    m = re.search(r"Hardware assisted breakpoint 1 at (0x[0-9a-f]+)", out)
    assert m and "Breakpoint 1, bump ()" in out, out
    assert f"=> {m.group(1)} <bump+" in out and "<counter>" in out, out  # x/i reads the real code
    assert "Hardware access (read/write) watchpoint 2: counter" in out, out
    assert "$1 = 7" in out and f"$2 = {m.group(1)}" in out, out  # VP 0 stayed put while VP 1 stepped
    assert re.search(r"cr0\s+0x0", out) and re.search(r"fs_base\s+0x0", out), out
    assert "Old value = 5" in out and "New value = 6" in out, out  # the access watchpoint fired


@needs_tools
def test_real_gdb_ctrl_c_interrupts_a_spinning_guest(tmp_path: Path) -> None:
    """gdb's SIGINT while the guest runs: gdb sends 0x03, every VP stops, gdb sees SIGINT."""
    elf = build_elf(tmp_path)
    target = fake_for(elf)
    target.vps[0].regs["rip"] = target.entries[1]  # both VPs spin in vp1_main
    server = GdbServer(target, "127.0.0.1", 0)
    server.start()
    port = server.address[1]
    args = ["gdb", "-batch", "-nx", "-ex", "set confirm off", "-ex", f"target remote 127.0.0.1:{port}",
            "-ex", "continue", "-ex", "info threads", "-ex", "detach", str(elf)]  # fmt: skip
    gdb = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        while not (target.running and target._worker is not None):  # gdb has resumed the guest
            if gdb.poll() is not None:
                break
            time.sleep(0.02)
        gdb.send_signal(signal.SIGINT)
        out, _ = gdb.communicate(timeout=60)
    finally:
        if gdb.poll() is None:
            gdb.kill()
        server.close()
    assert "received signal SIGINT" in out, out
    assert "vp1_main ()" in out and "Thread 2" in out, out
    assert target.detached, out


@requires_kvm
@needs_tools
@pytest.mark.timeout(60)  # ~1.3 s here; a guest or gdb that hangs fails, it does not stall the run
@pytest.mark.parametrize("apic", ["kernel", "user"])
def test_gdb_on_kvm(guest: Callable[[str], Path], apic: str) -> None:
    """`hv1 run --gdb 127.0.0.1:0 --gdb-wait --cpus 2` on KVM and the real gdb with the kernel's
    symbols: break at a function, step, read a variable, watch a store, both VPs as threads,
    continue to the exit. On a host whose KVM delivers no data breakpoints (this one: ring-0 code
    is emulated) the watchpoint is served by write-protecting counter's page, which also holds
    code that runs meanwhile (hv1/machine/write_watch.py)."""
    out, stdout, stderr, status = gdb_on_kvm(guest, apic, [
        "break bump", "continue", "print counter", "stepi", "info threads", "watch counter",
        "continue", "print counter", "delete", "monitor hv partition", "continue",
    ])  # fmt: skip
    assert "Breakpoint 1, bump ()" in out, out
    assert "$1 = 5" in out, out
    assert "Thread 2" in out, out
    assert "Hardware watchpoint 2: counter" in out and "Old value = 5" in out and "New value = 6" in out, out
    assert "$2 = 6" in out and "VPs 2" in out, out
    assert "exited with code 01" in out, out
    assert status == 1 and "counter 8" in stdout, stdout + stderr


def gdb_on_kvm(guest: Callable[[str], Path], apic: str, commands: list[str]) -> tuple[str, str, str, int]:
    """`hv1 run guests/build/gdb.elf --gdb 127.0.0.1:0 --gdb-wait --cpus 2` and the real gdb with
    the kernel's symbols running `commands`: (gdb's output, hv1's stdout, stderr, status)."""
    elf = guest("gdb")
    cmd = [sys.executable, "-m", "hv1", "run", str(elf), "--cpus", "2", "--apic", apic,
           "--gdb", "127.0.0.1:0", "--gdb-wait", "--timeout", "40"]  # fmt: skip
    hv1 = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert hv1.stderr is not None
        line = hv1.stderr.readline()
        m = re.search(r"gdb stub listening on [^:]+:(\d+)", line)
        assert m, line
        out = run_gdb(elf.with_suffix(".elf64"), int(m.group(1)), commands, timeout=40)
        stdout, stderr = hv1.communicate(timeout=15)
    finally:
        if hv1.poll() is None:
            hv1.kill()
            hv1.wait()
    return out, stdout, line + stderr, hv1.returncode


@requires_kvm
@needs_tools
@pytest.mark.timeout(60)
def test_gdb_on_kvm_hbreak_and_a_watch_the_other_vp_hits(guest: Callable[[str], Path]) -> None:
    """An execute breakpoint in a debug register (KVM delivers those even where it emulates ring 0),
    a watchpoint on `ap_ticks[1]` that VP 1 stores to (Thread 2 reports it, with its values), a
    second hit of a watch on `counter`, and `monitor hv debug` naming the method in use."""
    out, stdout, stderr, status = gdb_on_kvm(guest, "kernel", [
        "hbreak kmain", "continue", "delete", "watch ap_ticks[1]", "continue", "delete",
        "watch counter", "continue", "continue", "delete", "monitor hv debug", "continue",
    ])  # fmt: skip
    assert "Hardware assisted breakpoint 1 at" in out and "Breakpoint 1, kmain (" in out, out
    assert re.search(
        r"Thread 2 .*hit Hardware watchpoint 2: ap_ticks\[1\]\s+Old value = 0\s+New value = 1", out
    ), out
    assert re.search(r"Old value = 5\s+New value = 6", out) and re.search(
        r"Old value = 6\s+New value = 7", out
    ), out
    assert "debug registers deliver (probed): execute yes" in out, out
    hw_watch = "write yes" in out
    method = "watchpoints in the debug registers" if hw_watch else "watch: write-protected pages"
    assert method in out and method in stderr, out + stderr
    assert "exited with code 01" in out and status == 1 and "counter 8" in stdout, out + stdout + stderr


@requires_kvm
@pytest.mark.timeout(30)
def test_guest_debug_probe_is_cheap_and_finds_execute_breakpoints() -> None:
    """hv1/backends/kvm/guest_debug_probe.py against this KVM: it finishes (a probe guest that hangs
    would raise), execute breakpoints are delivered (every KVM we know: this host too), and a second
    call is the cached answer."""
    from hv1.backends.kvm import guest_debug_probe
    from hv1.backends.kvm.vm import KvmSystem

    system = KvmSystem()
    try:
        t = time.perf_counter()
        first = guest_debug_probe.host_support(system.fd, system.vcpu_mmap_size)
        took = time.perf_counter() - t
        assert first.exec, first
        assert guest_debug_probe.host_support(system.fd, system.vcpu_mmap_size) is first
        assert took < 1.0, took  # ~1 ms here; generous for a loaded host
    finally:
        system.close()


@requires_kvm
@needs_tools
@pytest.mark.timeout(90)
def test_gdb_watch_every_pass_of_a_conformance_guest(guest: Callable[[str], Path], tmp_path: Path) -> None:
    """A watch on the console's `n_pass` (bumped with `lock inc` by both VPs) through a whole
    hv_hypercalls run on KVM: gdb counts one hit per PASS line, and the guest, which enables the
    hypercall page (read-only too) and writes all over the watched page, still passes everything."""
    elf = guest("hv_hypercalls")
    cmd = [sys.executable, "-m", "hv1", "run", str(elf), "--cpus", "2", "--gdb", "127.0.0.1:0", "--gdb-wait",
           "--timeout", "60"]  # fmt: skip
    hv1 = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert hv1.stderr is not None
        line = hv1.stderr.readline()
        m = re.search(r"gdb stub listening on [^:]+:(\d+)", line)
        assert m, line
        script = tmp_path / "count.gdb"
        script.write_text(
            "set $hits = 0\nwatch n_pass\ncommands\nsilent\nset $hits = $hits + 1\ncontinue\nend\n"
            "continue\nprint $hits\n"
        )
        out = run_gdb(elf.with_suffix(".elf64"), int(m.group(1)), [f"source {script}"], timeout=70)
        stdout, stderr = hv1.communicate(timeout=15)
    finally:
        if hv1.poll() is None:
            hv1.kill()
            hv1.wait()
    passes = stdout.count("\nPASS ") + stdout.startswith("PASS ")
    assert hv1.returncode == 1 and "0 failed" in stdout and passes > 100, stdout + stderr
    assert "exited with code 01" in out and f"$1 = {passes}" in out, out + stdout
