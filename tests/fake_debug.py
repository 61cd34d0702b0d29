"""A fake `DebugTarget` for the gdb stub tests: a tiny deterministic "CPU" over a memory image.

Each VP walks a program: a map from address to `Insn`. An instruction may store to memory (which
the watchpoints see), push/pop/call/ret through the stack in memory (so gdb can unwind), jump, or
end the run. No x86 is decoded here: tests build the program by hand or from `objdump -d` of a
real ELF (tests/integration/test_gdb.py). Breakpoints behave as on the machine: a planted int3
stops the VP before it executes, an execute debug register likewise, a data debug register after
the store; at most four debug registers (hv1/backends/guest_debug.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from hv1.backends.guest_debug import Condition, DebugRegisters, HwBreakpoint
from hv1.gdbstub.swbreak import INT3, SoftwareBreakpoints
from hv1.gdbstub.target import BreakpointType, StopEvent, StopKind
from hv1.machine.paging import translate
from tests.fakes import FakeMemory

Store = Callable[[bytes, dict[str, int]], bytes]  # (old bytes, registers) -> new bytes


@dataclass
class Insn:
    size: int = 1
    load: tuple[int, int, str] | None = None  # (virtual address, length, register) register = memory
    effect: Callable[[dict[str, int]], None] | None = None  # on the registers (e.g. `add $1, %eax`)
    store: tuple[int, int, Store] | None = None  # (virtual address, length, new value)
    next: int | None = None  # jump target (default: the following address)
    op: str = ""  # "", "call", "ret", "push_rbp", "pop_rbp", "mov_rbp_rsp", "exit"


@dataclass
class FakeVp:
    index: int
    regs: dict[str, int]
    done: bool = False


_REG_NAMES = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12",
              "r13", "r14", "r15", "rip", "eflags", "cs", "ss", "ds", "es", "fs", "gs", "fs_base",
              "gs_base", "cr0", "cr2", "cr3", "cr4", "cr8", "efer")  # fmt: skip


@dataclass
class FakeCpuTarget:
    memory: FakeMemory
    program: dict[int, Insn]
    entries: dict[int, int]  # VP index -> first RIP
    stacks: dict[int, int] = field(default_factory=dict)  # VP index -> initial RSP
    exit_status: int = 1
    paging: tuple[int, int, int, int] = (0, 0, 0, 0)  # cr0, cr3, cr4, efer for every VP

    def __post_init__(self) -> None:
        self.vps: dict[int, FakeVp] = {}
        for i, rip in self.entries.items():
            r = dict.fromkeys(_REG_NAMES, 0)
            r.update(rip=rip, rsp=self.stacks.get(i, 0), eflags=0x2, cs=0x10, ss=0x18, ds=0x18, es=0x18)
            r.update(zip(("cr0", "cr3", "cr4", "efer"), self.paging, strict=True))
            self.vps[i] = FakeVp(i, r)
        self.hw = DebugRegisters()
        self.sw = SoftwareBreakpoints(self.memory.read, self.memory.write)
        self.lock = threading.Condition()
        self.running: set[int] = set()
        self.step_vp: int | None = None
        self.events: list[StopEvent] = []
        self.interrupt_requested = False
        self.exited = False
        self.killed = False
        self.detached = False
        self.monitor_log: list[str] = []
        self._worker: threading.Thread | None = None

    # ---- DebugTarget: VPs ----
    def vp_indexes(self) -> list[int]:
        return sorted(self.vps)

    def describe_vp(self, vp: int) -> str:
        return f"VP {vp} (fake CPU){' done' if self.vps[vp].done else ''}"

    # ---- memory ----
    def _gpa(self, vp: int, addr: int) -> int | None:
        r = self.vps[vp].regs
        return translate(self.memory, addr, r["cr0"], r["cr3"], r["cr4"], r["efer"])

    def read_virtual(self, vp: int, addr: int, length: int) -> bytes:
        out = bytearray()
        while length > 0:
            gpa = self._gpa(vp, addr)
            n = min(length, 0x1000 - (addr & 0xFFF))
            if gpa is None or not self.memory.contains(gpa, n):
                break
            out += self.sw.mask(gpa, self.memory.read(gpa, n))
            addr, length = addr + n, length - n
        return bytes(out)

    def write_virtual(self, vp: int, addr: int, data: bytes) -> bool:
        pieces = []
        pos = 0
        while pos < len(data):
            gpa = self._gpa(vp, addr + pos)
            n = min(len(data) - pos, 0x1000 - ((addr + pos) & 0xFFF))
            if gpa is None or not self.memory.contains(gpa, n):
                return False
            pieces.append((gpa, data[pos : pos + n]))
            pos += n
        for gpa, chunk in pieces:
            self.memory.write(gpa, self.sw.write_through(gpa, chunk))
        return True

    def read_physical(self, addr: int, length: int) -> bytes:
        n = max(0, min(length, self.memory.size - addr))
        return self.sw.mask(addr, self.memory.read(addr, n)) if n else b""

    # ---- registers ----
    def read_registers(self, vp: int) -> dict[str, int]:
        return dict(self.vps[vp].regs)

    def write_registers(self, vp: int, values: dict[str, int]) -> bool:
        r = self.vps[vp].regs
        known = {k: v for k, v in values.items() if k in r}
        r.update(known)
        return len(known) == len(values) or all(k.startswith(("st", "f", "xmm", "mxcsr")) for k in values)

    # ---- breakpoints ----
    def _hw(self, typ: BreakpointType, addr: int, length: int) -> HwBreakpoint | None:
        cond = {BreakpointType.HARDWARE: Condition.EXEC, BreakpointType.WRITE_WATCH: Condition.WRITE,
                BreakpointType.ACCESS_WATCH: Condition.ACCESS}.get(typ)  # fmt: skip
        return None if cond is None else HwBreakpoint(addr, cond, length)

    def insert_breakpoint(self, vp: int, typ: BreakpointType, addr: int, length: int) -> bool:
        if typ is BreakpointType.SOFTWARE:
            gpa = self._gpa(vp, addr)
            return gpa is not None and self.sw.insert(addr, gpa)
        bp = self._hw(typ, addr, length)
        return bp is not None and self.hw.insert(bp)

    def remove_breakpoint(self, vp: int, typ: BreakpointType, addr: int, length: int) -> bool:
        if typ is BreakpointType.SOFTWARE:
            return self.sw.remove(addr)
        bp = self._hw(typ, addr, length)
        return bp is not None and self.hw.remove(bp)

    def monitor(self, command: str) -> str | None:
        self.monitor_log.append(command)
        if command == "help":
            return "  hv synic          (fake)\n"
        if command == "hv synic":
            return "fake synic state\n"
        return None

    # ---- execution ----
    def stop_all(self) -> StopEvent:
        with self.lock:
            self.running.clear()
            self.step_vp = None
            self.lock.notify_all()
        self._join()
        if self.exited:
            return StopEvent(StopKind.EXITED, 0, exit_status=self.exit_status)
        return StopEvent(StopKind.INTERRUPT, self.vp_indexes()[0])

    def interrupt(self) -> None:
        with self.lock:
            self.interrupt_requested = True

    def resume(self, step: int | None, run: frozenset[int]) -> None:
        self._join()
        with self.lock:
            self.running = set(run)
            self.step_vp = step
            self.interrupt_requested = False
        self._worker = threading.Thread(target=self._run, daemon=True)
        self._worker.start()

    def wait(self, timeout: float) -> StopEvent | None:
        with self.lock:
            if not self.events:
                self.lock.wait(timeout)
            return self.events.pop(0) if self.events else None

    def kill(self) -> None:
        self.killed = True
        self.stop_all()

    def detach(self) -> None:
        self.detached = True
        self.sw.remove_all()
        self.hw.clear()

    def _join(self) -> None:
        w = self._worker
        if w is not None and w is not threading.current_thread():
            with self.lock:
                self.running.clear()
                self.step_vp = None
            w.join()
            self._worker = None

    def _report(self, ev: StopEvent) -> None:
        """All-stop: the first stop ends the slice for every VP."""
        with self.lock:
            self.running.clear()
            self.step_vp = None
            self.events.append(ev)
            self.lock.notify_all()

    def _run(self) -> None:
        while True:
            with self.lock:
                active = sorted(self.running | ({self.step_vp} if self.step_vp is not None else set()))
                if not active:
                    return
                if self.interrupt_requested:
                    self.interrupt_requested = False
                    self.running.clear()
                    self.step_vp = None
                    self.events.append(StopEvent(StopKind.INTERRUPT, active[0]))
                    self.lock.notify_all()
                    return
                stepping = self.step_vp
            for vp in active:
                ev = self._execute(self.vps[vp])
                if ev is None and vp == stepping:
                    ev = StopEvent(StopKind.STEP, vp)
                if ev is not None:
                    self._report(ev)
                    return

    def _execute(self, vp: FakeVp) -> StopEvent | None:
        """One instruction on `vp`, or the stop that prevents or follows it."""
        if vp.done:
            return None
        r = vp.regs
        rip = r["rip"]
        gpa = self._gpa(vp.index, rip)
        if gpa is not None and self.sw.planted_at(rip) and self.memory.read(gpa, 1)[0] == INT3:
            return StopEvent(StopKind.SWBREAK, vp.index)
        for bp in self.hw.slots:
            if bp is not None and bp.cond is Condition.EXEC and bp.addr == rip:
                return StopEvent(StopKind.HWBREAK, vp.index)
        insn = self.program.get(rip)
        if insn is None:
            vp.done = True  # off the program: the VP is stuck (like a halted CPU)
            return None
        nxt = insn.next if insn.next is not None else rip + insn.size
        if insn.op == "push_rbp":
            r["rsp"] -= 8
            self.write_virtual(vp.index, r["rsp"], r["rbp"].to_bytes(8, "little"))
        elif insn.op == "pop_rbp":
            r["rbp"] = int.from_bytes(self.read_virtual(vp.index, r["rsp"], 8), "little")
            r["rsp"] += 8
        elif insn.op == "mov_rbp_rsp":
            r["rbp"] = r["rsp"]
        elif insn.op == "call":
            r["rsp"] -= 8
            self.write_virtual(vp.index, r["rsp"], (rip + insn.size).to_bytes(8, "little"))
        elif insn.op == "ret":
            nxt = int.from_bytes(self.read_virtual(vp.index, r["rsp"], 8), "little")
            r["rsp"] += 8
        if insn.op == "exit" or (insn.op == "ret" and nxt == 0):
            vp.done = True
            if vp.index == min(self.vps):
                self.exited = True
                return StopEvent(StopKind.EXITED, vp.index, exit_status=self.exit_status)
            return None
        r["rip"] = nxt
        if insn.load is not None:
            addr, length, reg = insn.load
            r[reg] = int.from_bytes(self.read_virtual(vp.index, addr, length), "little")
        if insn.effect is not None:
            insn.effect(r)
        if insn.store is not None:
            addr, length, fn = insn.store
            old = self.read_virtual(vp.index, addr, length)
            self.write_virtual(vp.index, addr, fn(old, r))
            bp = self.hw.matching(Condition.WRITE, addr, length)
            if bp is not None:
                kind = StopKind.WATCH if bp.cond is Condition.WRITE else StopKind.AWATCH
                return StopEvent(kind, vp.index, addr=bp.addr)
        return None
