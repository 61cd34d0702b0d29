"""The machine side of the gdb stub (hv1/machine/debug.py) with fake VPs: parking on the VP's own
thread, all-stop, what each debug exit means, guest virtual memory through the page tables, and the
debug-register encoding it hands to KVM_SET_GUEST_DEBUG (hv1/backends/guest_debug.py)."""

from __future__ import annotations

import collections
import io
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from hv1.backends.guest_debug import (
    DR6_BS,
    Condition,
    DebugRegisters,
    GuestDebug,
    HwBreakpoint,
    HwDebugSupport,
    valid,
)
from hv1.gdbstub.swbreak import SoftwareBreakpoints
from hv1.gdbstub.target import BreakpointType, StopKind
from hv1.hv.caps import parse_profile
from hv1.hv.partition import Partition
from hv1.machine.debug import MachineDebugTarget, classify, read_virtual, write_virtual
from hv1.machine.write_watch import WriteWatch, WriteWatchpoints, split_pages
from hv1.trace import Tracer
from tests.fakes import FakeClock, FakeHooks, FakeIrq, FakeMemory

pytestmark = pytest.mark.timeout(30)

# ---- the DR7 encoding (Intel SDM Vol. 3B, 18.2.4) ------------------------------------------------


def test_dr7_encoding_of_each_condition_and_length() -> None:
    dbg = GuestDebug(
        (
            HwBreakpoint(0x1000, Condition.EXEC, 1),
            HwBreakpoint(0x2000, Condition.WRITE, 4),
            None,
            HwBreakpoint(0x3008, Condition.ACCESS, 8),
        )
    )
    dr0, dr1, dr2, dr3, dr7 = dbg.debugregs()
    assert (dr0, dr1, dr2, dr3) == (0x1000, 0x2000, 0, 0x3008)
    assert dr7 & 0xFF == 0b0100_0101  # L0, L1, L3
    assert dr7 & (1 << 10) and dr7 & (1 << 9)  # bit 10 reads as 1; GE
    assert (dr7 >> 16) & 0xF == 0b0000  # DR0: execute, 1 byte
    assert (dr7 >> 20) & 0xF == 0b1101  # DR1: LEN 11 (4 bytes), R/W 01 (write)
    assert (dr7 >> 28) & 0xF == 0b1011  # DR3: LEN 10 (8 bytes), R/W 11 (read/write)
    assert GuestDebug().debugregs()[4] == 1 << 10 and not GuestDebug().enabled


@pytest.mark.parametrize(
    ("bp", "ok"),
    [(HwBreakpoint(0x1001, Condition.EXEC, 1), True), (HwBreakpoint(0x1000, Condition.EXEC, 2), False),
     (HwBreakpoint(0x1002, Condition.WRITE, 2), True), (HwBreakpoint(0x1002, Condition.WRITE, 4), False),
     (HwBreakpoint(0x1000, Condition.ACCESS, 3), False), (HwBreakpoint(1 << 64, Condition.WRITE, 1), False)],
)  # fmt: skip
def test_debug_register_alignment_rules(bp: HwBreakpoint, ok: bool) -> None:
    assert valid(bp) is ok


def test_debug_register_hit_and_matching() -> None:
    d = DebugRegisters()
    w = HwBreakpoint(0x2000, Condition.WRITE, 4)
    a = HwBreakpoint(0x3000, Condition.ACCESS, 2)
    assert d.insert(w) and d.insert(a)
    assert d.hit(0b10) == a and d.hit(0b01) == w and d.hit(DR6_BS) is None
    assert d.matching(Condition.WRITE, 0x2003, 1) == w
    assert d.matching(Condition.WRITE, 0x2004, 4) is None
    assert d.matching(Condition.ACCESS, 0x2000, 4) is None  # a read does not meet a write breakpoint
    assert d.matching(Condition.ACCESS, 0x3001, 1) == a
    assert d.remove(w) and not d.remove(w)


# ---- what a debug exit means ----------------------------------------------------------------------


def test_classify_debug_exits() -> None:
    mem = FakeMemory(1 << 16)
    sw = SoftwareBreakpoints(mem.read, mem.write)
    hw = DebugRegisters()
    sw.insert(0x100, 0x100)
    hw.insert(HwBreakpoint(0x200, Condition.EXEC, 1))
    hw.insert(HwBreakpoint(0x800, Condition.WRITE, 8))
    assert classify(3, 0x100, 0, False, sw, hw) == (StopKind.SWBREAK, None)
    assert classify(3, 0x101, 0, False, sw, hw) is None  # the guest's own int3
    assert classify(1, 0x200, 0b01, False, sw, hw) == (StopKind.HWBREAK, None)
    assert classify(1, 0x300, 0b10, False, sw, hw) == (StopKind.WATCH, 0x800)
    assert classify(1, 0x300, DR6_BS, True, sw, hw) == (StopKind.STEP, None)
    assert classify(1, 0x300, DR6_BS, False, sw, hw) is None  # a trap flag the guest set itself
    assert classify(14, 0x300, 0, True, sw, hw) is None


# ---- guest virtual memory -------------------------------------------------------------------------
CR0_PG_PE, CR4_PAE, EFER_LME_LMA = 0x80000001, 0x20, 0x500
ROOT = 0x10000


def _map(mem: FakeMemory, va: int, pa: int, root: int = ROOT) -> None:
    """A 4 KiB page va -> pa in 4-level tables at `root` (Intel SDM 4.5): one PDPT, PD and PT after
    the root, so every page a test maps lies in one 2 MiB region."""
    tables = [root, root + 0x1000, root + 0x2000, root + 0x3000]
    for level, shift in enumerate((39, 30, 21, 12)):
        nxt = tables[level + 1] if level < 3 else pa
        mem.write(tables[level] + ((va >> shift) & 0x1FF) * 8, (nxt | 3).to_bytes(8, "little"))


PAGING = (CR0_PG_PE, ROOT, CR4_PAE, EFER_LME_LMA)


def test_virtual_read_crosses_pages_and_stops_where_the_mapping_ends() -> None:
    mem = FakeMemory(1 << 20)
    sw = SoftwareBreakpoints(mem.read, mem.write)
    va = 0xFFFF_8000_0000_0000
    _map(mem, va, 0x40000)
    _map(mem, va + 0x1000, 0x20000)  # the next virtual page is elsewhere physically
    mem.write(0x40FFE, b"ab")
    mem.write(0x20000, b"cd")
    assert read_virtual(mem, PAGING, va + 0xFFE, 4, sw) == b"abcd"
    assert read_virtual(mem, PAGING, va + 0x1FFE, 4, sw) == b"\0\0"  # then unmapped
    assert read_virtual(mem, PAGING, 0x1234, 4, sw) == b""
    assert read_virtual(mem, (0x11, 0, 0, 0), 0x40FFE, 2, sw) == b"ab"  # paging off: identity


def test_virtual_write_is_all_or_nothing_and_keeps_planted_int3s() -> None:
    mem = FakeMemory(1 << 20)
    sw = SoftwareBreakpoints(mem.read, mem.write)
    va = 0x40_0000
    _map(mem, va, 0x30000)
    assert not write_virtual(mem, PAGING, va + 0xFFE, b"wxyz", sw)  # second page unmapped
    assert mem.read(0x30FFE, 2) == b"\0\0"
    assert sw.insert(va + 1, 0x30001)
    assert write_virtual(mem, PAGING, va, b"\x11\x22\x33", sw)
    assert mem.read(0x30000, 3) == b"\x11\xcc\x33"
    assert read_virtual(mem, PAGING, va, 3, sw) == b"\x11\x22\x33"
    sw.remove(va + 1)
    assert mem.read(0x30000, 3) == b"\x11\x22\x33"


def test_replant_after_reset_saves_the_new_bytes() -> None:
    mem = FakeMemory(1 << 16)
    sw = SoftwareBreakpoints(mem.read, mem.write)
    mem.write(0x100, b"\x55")
    sw.insert(0x100, 0x100)
    mem.write(0x100, b"\x66")  # RAM reloaded by a partition reset
    sw.replant()
    assert mem.read(0x100, 1) == b"\xcc"
    sw.remove(0x100)
    assert mem.read(0x100, 1) == b"\x66"


# ---- parking and all-stop over fake VPs ----------------------------------------------------------


@dataclass
class FakeDebugVcpu:
    regs: dict[str, int]
    stop_requested: bool = False
    armed: list[tuple[GuestDebug, int | None]] = field(default_factory=list)
    reader_threads: list[int] = field(default_factory=list)

    def debug_read_registers(self) -> dict[str, int]:
        self.reader_threads.append(threading.get_ident())
        return dict(self.regs)

    def debug_write_registers(self, values: dict[str, int]) -> bool:
        self.regs.update(values)
        return True

    def debug_paging(self) -> tuple[int, int, int, int]:
        return (0x11, 0, 0, 0)  # protected mode, paging off

    def get(self, name: str) -> int:
        return self.regs[name]

    refuse: bool = False

    def set_guest_debug(self, dbg: GuestDebug, block_irq: bool, inject: int | None = None) -> None:
        if self.refuse:
            raise OSError(22, "Invalid argument")
        self.armed.append((dbg, inject))


class FakeVp:
    """A VP thread like the machine's: serves its work queue, 'runs' (counts), and produces the
    scripted debug exits one per loop while it is not parked."""

    def __init__(self, m: FakeMachine, vp_index: int) -> None:
        self.m = m
        self.vp_index = vp_index
        self.index = vp_index
        self.vcpu = FakeDebugVcpu({"rip": 0x1000 + vp_index})
        self.started = True
        self.work: collections.deque[Callable[[], None]] = collections.deque()
        self.script: list[tuple[int, int, int, bool]] = []
        self.results: list[bool] = []
        self.stores: list[tuple[int, int, int]] = []  # MMIO write exits: (gpa, size, value)
        self.store_results: list[bool] = []
        self.ticks = 0
        self.thread: threading.Thread | None = None
        self.hv_vp = m.partition.vps[vp_index]
        self.parking_others = False  # as machine.Vp: set by VpHost._with_vps_parked
        self.after_parking_others: list[Callable[[], None]] = []

    def post_work(self, fn: Callable[[], None]) -> None:
        self.work.append(fn)

    def service_work(self) -> None:
        while self.work:
            self.work.popleft()()

    def loop(self) -> None:
        while not self.vcpu.stop_requested:
            self.service_work()
            self.ticks += 1
            if self.script:
                vec, pc, dr6, failed = self.script.pop(0)
                assert self.m.debugger is not None
                self.results.append(self.m.debugger.debug_stop(self, vec, pc, dr6, failed))  # type: ignore[arg-type]
            if self.stores:
                gpa, size, value = self.stores.pop(0)
                assert self.m.debugger is not None
                self.store_results.append(self.m.debugger.watched_write(self, gpa, size, value))  # type: ignore[arg-type]
            time.sleep(0.0005)


class FakeMachine:
    def __init__(self, n: int = 2) -> None:
        self.ram = FakeMemory(1 << 20)
        caps = parse_profile("default")
        self.partition = Partition(caps, n, self.ram, FakeClock(), FakeIrq(), FakeHooks())
        self.vps = [FakeVp(self, i) for i in range(n)]
        self.vp_by_index = {vp.vp_index: vp for vp in self.vps}
        self.apic_id_of = {i: i for i in range(n)}
        self.diag = io.StringIO()
        self.stopped: tuple[int, str] | None = None
        self.debugger: MachineDebugTarget | None = None
        self.hypercall_page_gpa: int | None = 0x5000
        self.resets = 0
        self.layouts: list[frozenset[int]] = []  # the watched pages at each watch_pages_changed()
        self.reftime = FakeClock(1234)
        self.tracer = Tracer()

        class Cfg:
            hv, apic = "default", "user"

        self.cfg = Cfg()

    def exit_counts(self) -> dict[str, int]:
        return {"io": 3}

    def stop(self, status: int, reason: str) -> None:
        self.stopped = (status, reason)

    def watch_pages_changed(self) -> None:
        assert self.debugger is not None
        self.layouts.append(self.debugger.watch_pages())

    def start(self) -> None:
        for vp in self.vps:
            vp.thread = threading.Thread(target=vp.loop, daemon=True)
            vp.thread.start()

    def halt(self) -> None:
        for vp in self.vps:
            vp.vcpu.stop_requested = True
        for vp in self.vps:
            assert vp.thread is not None
            vp.thread.join(5)


@pytest.fixture
def machine() -> Iterator[tuple[FakeMachine, MachineDebugTarget]]:
    m = FakeMachine()
    d = MachineDebugTarget(m)  # type: ignore[arg-type]
    m.debugger = d
    m.start()
    yield m, d
    m.halt()


def _wait(d: MachineDebugTarget) -> Any:
    for _ in range(400):
        ev = d.wait(0.05)
        if ev is not None:
            return ev
    raise AssertionError("no stop reported")


def test_stop_all_parks_every_vp_and_registers_are_read_on_the_vps_thread(
    machine: tuple[FakeMachine, MachineDebugTarget],
) -> None:
    m, d = machine
    ev = d.stop_all()
    assert ev.kind is StopKind.INTERRUPT and d.parked == {0, 1}
    before = [vp.ticks for vp in m.vps]
    assert d.read_registers(1)["rip"] == 0x1001
    assert m.vps[1].vcpu.reader_threads == [m.vps[1].thread.ident]  # type: ignore[union-attr]
    assert d.write_registers(0, {"rax": 7}) and m.vps[0].vcpu.regs["rax"] == 7
    assert [vp.ticks for vp in m.vps] == before  # parked VPs do not run


def test_software_breakpoint_hit_stops_everyone(machine: tuple[FakeMachine, MachineDebugTarget]) -> None:
    m, d = machine
    d.stop_all()
    m.ram.write(0x2000, b"\x90")
    assert d.insert_breakpoint(0, BreakpointType.SOFTWARE, 0x2000, 1)
    assert m.ram.read(0x2000, 1) == b"\xcc" and d.read_virtual(0, 0x2000, 1) == b"\x90"
    m.vps[1].script.append((3, 0x2000, 0, True))  # this host: KVM fails to emulate the int3
    d.resume(None, frozenset({0, 1}))
    ev = _wait(d)
    assert (ev.kind, ev.vp) == (StopKind.SWBREAK, 1)
    assert d.parked == {0, 1} and m.vps[1].results == []  # VP 1 is parked inside the exit
    armed, _ = m.vps[1].vcpu.armed[-1]
    assert armed.sw_breakpoints and not armed.single_step  # armed when it left the park to run
    assert any("gdb-stop" in e and "swbreak" in e for e in m.tracer.last_events())


def test_failed_int3_that_is_not_ours_stays_fatal(machine: tuple[FakeMachine, MachineDebugTarget]) -> None:
    m, d = machine
    d.stop_all()
    m.vps[0].script.append((3, 0x3000, 0, True))
    d.resume(None, frozenset({0, 1}))
    for _ in range(200):
        if m.vps[0].results:
            break
        time.sleep(0.01)
    assert m.vps[0].results == [False] and d.wait(0.01) is None


def test_guests_own_int3_is_reinjected(machine: tuple[FakeMachine, MachineDebugTarget]) -> None:
    m, d = machine
    d.stop_all()
    m.vps[0].script.append((3, 0x3000, 0, False))  # a real #BP exit (KVM_GUESTDBG_USE_SW_BP)
    d.resume(None, frozenset({0, 1}))
    for _ in range(200):
        if m.vps[0].results:
            break
        time.sleep(0.01)
    assert m.vps[0].results == [True]
    assert m.vps[0].vcpu.armed[-1][1] == 3  # KVM_GUESTDBG_INJECT_BP on the next entry
    assert d.wait(0.01) is None


def test_watchpoint_and_single_step_with_the_other_vp_held(
    machine: tuple[FakeMachine, MachineDebugTarget],
) -> None:
    m, d = machine
    d.stop_all()
    assert d.insert_breakpoint(0, BreakpointType.WRITE_WATCH, 0x4000, 4)
    assert not d.insert_breakpoint(0, BreakpointType.WRITE_WATCH, 0x4001, 4)  # misaligned
    m.vps[0].script.append((1, 0x1234, DR6_BS, False))
    held = m.vps[1].ticks
    d.resume(0, frozenset())  # step VP 0 only (vCont;s:1;t)
    ev = _wait(d)
    assert (ev.kind, ev.vp) == (StopKind.STEP, 0)
    assert m.vps[1].ticks == held  # VP 1 never left its park
    armed, _ = m.vps[0].vcpu.armed[-1]
    assert armed.single_step and armed.slots[0] == HwBreakpoint(0x4000, Condition.WRITE, 4)
    m.vps[1].script.append((1, 0x1300, 0b0001, False))
    d.resume(None, frozenset({0, 1}))
    ev = _wait(d)
    assert (ev.kind, ev.vp, ev.addr) == (StopKind.WATCH, 1, 0x4000)


def test_ctrl_c_reports_sigint(machine: tuple[FakeMachine, MachineDebugTarget]) -> None:
    _, d = machine
    d.stop_all()
    d.resume(None, frozenset({0, 1}))
    d.interrupt()
    ev = _wait(d)
    assert ev.kind is StopKind.INTERRUPT and ev.signal == 2 and d.parked == {0, 1}


def test_detach_disarms_and_releases(machine: tuple[FakeMachine, MachineDebugTarget]) -> None:
    m, d = machine
    d.stop_all()
    m.ram.write(0x2000, b"\x90")
    d.insert_breakpoint(0, BreakpointType.SOFTWARE, 0x2000, 1)
    d.insert_breakpoint(0, BreakpointType.HARDWARE, 0x2100, 1)
    d.detach()
    for _ in range(200):
        if not d.parked:
            break
        time.sleep(0.01)
    assert not d.parked and m.ram.read(0x2000, 1) == b"\x90"
    assert not m.vps[0].vcpu.armed[-1][0].enabled


def test_end_of_run_reports_exit_and_kill_stops_the_machine(
    machine: tuple[FakeMachine, MachineDebugTarget],
) -> None:
    m, d = machine
    d.stop_all()
    d.resume(None, frozenset({0, 1}))
    d.machine_stopped(3)
    ev = _wait(d)
    assert ev.kind is StopKind.EXITED and ev.exit_status == 3
    d.kill()
    assert m.stopped == (0, "killed from gdb")


def test_monitor_hv_commands(machine: tuple[FakeMachine, MachineDebugTarget]) -> None:
    _, d = machine
    part = d.monitor("hv partition")
    assert part is not None and "VPs 2" in part and "hypercall page at GPA 0x5000" in part and "io=3" in part
    syn = d.monitor("hv synic")
    assert syn is not None and syn.count("SCONTROL") == 2 and "unmasked SINTs none" in syn
    tim = d.monitor("hv timers")
    assert tim is not None and "reference time 1234" in tim and "no synthetic timer configured" in tim
    assert d.monitor("hv nothing") is None and "hv synic" in (d.monitor("help") or "")
    assert d.describe_vp(1) == "VP 1 (APIC 1) running"


def test_a_reset_during_a_stop_parks_the_new_threads_again() -> None:
    m = FakeMachine()
    d = MachineDebugTarget(m)  # type: ignore[arg-type]
    m.debugger = d
    m.ram.write(0x2000, b"\x90")
    d.stop_all()  # no VP thread yet: nothing to wait for
    assert d.insert_breakpoint(0, BreakpointType.SOFTWARE, 0x2000, 1)
    d.resume(None, frozenset({0, 1}))
    d.interrupt()  # a stop under way when the partition resets
    for vp in m.vps:
        vp.work.clear()  # Vp.reset_state() empties the work queues
    m.ram.write(0x2000, b"\x91")  # the kernel is loaded again
    d.after_reset()
    assert m.ram.read(0x2000, 1) == b"\xcc"
    m.start()
    try:
        ev = _wait(d)
        assert ev.kind is StopKind.INTERRUPT and d.parked == {0, 1}
        assert d.read_virtual(0, 0x2000, 1) == b"\x91"
    finally:
        m.halt()


def test_a_refused_kvm_set_guest_debug_costs_the_step_not_the_run(
    machine: tuple[FakeMachine, MachineDebugTarget],
) -> None:
    m, d = machine
    d.stop_all()
    m.vps[0].vcpu.refuse = True
    ticks = m.vps[0].ticks
    d.resume(None, frozenset({0, 1}))
    while m.vps[0].ticks == ticks:  # until VP 0 has left its park (and tried to arm)
        time.sleep(0.001)
    d.interrupt()
    ev = _wait(d)
    assert ev.kind is StopKind.INTERRUPT and m.vps[0].thread.is_alive()  # type: ignore[union-attr]
    assert "KVM_SET_GUEST_DEBUG failed on VP 0" in m.diag.getvalue()


# ---- write watchpoints by page write-protection (hv1/machine/write_watch.py) --------------------


def test_write_watch_pieces_pages_and_hits() -> None:
    assert split_pages(0x1FFE, 4) == [(0x1FFE, 2), (0x2000, 2)]
    assert split_pages(0x3000, 0x1000) == [(0x3000, 0x1000)]
    ww = WriteWatchpoints()
    a = WriteWatch(0xFFFF_8000_0000_1FFE, 4, ((0x51FFE, 2), (0x90000, 2)))  # virtually contiguous only
    b = WriteWatch(0x4000, 1, ((0x51000, 1),))
    ww.insert(a)
    ww.insert(b)
    assert ww.pages() == {0x51000, 0x90000}
    assert ww.hit(0x51FFC, 2) is None  # on the page, before the range: the store is just performed
    assert ww.hit(0x51FFC, 4) == a and ww.hit(0x90001, 1) == a and ww.hit(0x90002, 8) is None
    assert ww.hit(0x51000, 8) == b
    assert ww.remove(0x4000, 1) and not ww.remove(0x4000, 1)
    assert ww.pages() == {0x51000, 0x90000}  # a still holds its first page
    ww.clear()
    assert ww.pages() == frozenset() and len(ww) == 0


@pytest.fixture
def no_data_breakpoints() -> Iterator[tuple[FakeMachine, MachineDebugTarget]]:
    """A debugger on a host like this one: execute breakpoints only (guest_debug_probe's answer)."""
    m = FakeMachine()
    d = MachineDebugTarget(m, hw_support=HwDebugSupport(exec=True, write=False, access=False))  # type: ignore[arg-type]
    m.debugger = d
    m.start()
    yield m, d
    m.halt()


def test_watch_without_data_breakpoints_write_protects_and_stops_after_the_store(
    no_data_breakpoints: tuple[FakeMachine, MachineDebugTarget],
) -> None:
    m, d = no_data_breakpoints
    d.stop_all()
    m.ram.write(0x6000, (5).to_bytes(4, "little"))
    assert d.insert_breakpoint(0, BreakpointType.WRITE_WATCH, 0x6000, 4)
    assert m.layouts == [frozenset({0x6000})] and d.watch_pages() == {0x6000}
    assert all(s is None for s in d.hw.slots)  # not in a debug register: KVM would not deliver it
    assert not d.insert_breakpoint(0, BreakpointType.ACCESS_WATCH, 0x6000, 4)  # no fallback for reads
    assert d.insert_breakpoint(0, BreakpointType.HARDWARE, 0x1000, 1)  # execute breakpoints do work
    assert "write-protected pages" in (d.monitor("hv debug") or "")
    assert "0x6000" in (d.monitor("hv debug") or "")
    m.vps[1].vcpu.regs["rip"] = 0x1236  # KVM reports the MMIO write with RIP past the store
    m.vps[1].stores += [(0x6010, 4, 0xAABBCCDD), (0x6000, 4, 6)]  # elsewhere on the page, then it
    d.resume(None, frozenset({0, 1}))
    ev = _wait(d)
    assert (ev.kind, ev.vp, ev.addr) == (StopKind.WATCH, 1, 0x6000)
    assert m.ram.read(0x6010, 4) == (0xAABBCCDD).to_bytes(4, "little")  # performed, no stop
    assert m.ram.read(0x6000, 4) == (6).to_bytes(4, "little")  # the new value is in RAM at the stop
    assert d.parked == {0, 1} and d.read_registers(1)["rip"] == 0x1236
    assert any("gdb-stop" in e and "watch" in e for e in m.tracer.last_events())


def test_removing_the_watch_unprotects_and_a_late_store_is_still_performed(
    no_data_breakpoints: tuple[FakeMachine, MachineDebugTarget],
) -> None:
    m, d = no_data_breakpoints
    d.stop_all()
    assert d.insert_breakpoint(0, BreakpointType.WRITE_WATCH, 0x6000, 4)
    assert d.insert_breakpoint(0, BreakpointType.WRITE_WATCH, 0x6FFC, 8)  # crosses into 0x7000
    assert m.layouts[-1] == {0x6000, 0x7000}
    assert d.remove_breakpoint(0, BreakpointType.WRITE_WATCH, 0x6FFC, 8)
    assert m.layouts[-1] == {0x6000}
    assert not d.remove_breakpoint(0, BreakpointType.WRITE_WATCH, 0x6FFC, 8)
    m.ram.write(0x7002, b"\x90")
    assert d.insert_breakpoint(0, BreakpointType.SOFTWARE, 0x7002, 1)
    # A store that left KVM before the layout dropped 0x7000: performed, int3 kept, no stop.
    m.vps[0].stores.append((0x7000, 4, 0x11223344))
    d.resume(None, frozenset({0, 1}))
    for _ in range(200):
        if m.vps[0].store_results:
            break
        time.sleep(0.01)
    assert m.vps[0].store_results == [True] and d.wait(0.05) is None
    assert m.ram.read(0x7000, 4) == bytes((0x44, 0x33, 0xCC, 0x11))
    d.stop_all()
    assert d.read_virtual(0, 0x7000, 4) == (0x11223344).to_bytes(4, "little")
    assert not d.watched_write(m.vps[0], m.ram.size, 4, 0)  # not RAM: not the debugger's
    d.detach()
    assert m.layouts[-1] == frozenset() and d.watch_pages() == frozenset()


def test_write_watch_needs_every_byte_mapped(
    no_data_breakpoints: tuple[FakeMachine, MachineDebugTarget],
) -> None:
    m, d = no_data_breakpoints
    d.stop_all()
    assert not d.insert_breakpoint(0, BreakpointType.WRITE_WATCH, m.ram.size - 2, 4)  # runs off RAM
    assert not d.insert_breakpoint(0, BreakpointType.WRITE_WATCH, 0x6000, 0)
    assert m.layouts == [] and d.watch_pages() == frozenset()


def test_a_reset_lays_the_watched_pages_out_again() -> None:
    """The partition reset drops every read-only slot (Machine._reboot); the watch must survive it."""
    m = FakeMachine()
    d = MachineDebugTarget(m, hw_support=HwDebugSupport(write=False))  # type: ignore[arg-type]
    m.debugger = d
    d.stop_all()  # no VP thread yet
    assert d.insert_breakpoint(0, BreakpointType.WRITE_WATCH, 0x6000, 4)
    d.after_reset()
    assert m.layouts == [frozenset({0x6000})] * 2


def test_machine_lays_out_the_hypercall_page_and_the_watched_pages_together() -> None:
    """Machine._lay_out_readonly_pages: one read-only layout for both users of read-only slots, so
    neither a hypercall-page move nor a watchpoint change drops the other's pages."""
    from types import SimpleNamespace

    from hv1.machine.machine import Machine

    layouts: list[list[int]] = []
    d = SimpleNamespace(watch_pages=lambda: frozenset({0x103000, 0x5000}))
    fake = SimpleNamespace(debugger=d, vm=SimpleNamespace(set_readonly_pages=layouts.append))
    Machine._lay_out_readonly_pages(fake, 0x7000)  # type: ignore[arg-type]
    Machine._lay_out_readonly_pages(fake, None)  # type: ignore[arg-type]
    fake.debugger = None
    Machine._lay_out_readonly_pages(fake, 0x7000)  # type: ignore[arg-type]
    assert layouts == [[0x5000, 0x7000, 0x103000], [0x5000, 0x103000], [0x7000]]


def test_a_gdb_stop_while_a_vp_parks_the_others_does_not_deadlock() -> None:
    """VP 0 is in VpHost._with_vps_parked (a hypercall-page move: every other VP must leave KVM_RUN)
    when gdb stops everyone. If VP 0 parked for gdb there, holding the park lock, VP 1, parked for
    VP 0, would wait for it forever and never serve gdb (stop_all, register reads hung). VP 0 must
    finish its change first, then park."""
    from types import SimpleNamespace

    from hv1.machine.machine import VpHost

    m = FakeMachine()
    d = MachineDebugTarget(m)  # type: ignore[arg-type]
    m.debugger = d
    host = SimpleNamespace(vps=m.vps, _park_lock=threading.Lock(), _stop=threading.Event())
    host._current_vp = lambda: next((v for v in m.vps if v.thread is threading.current_thread()), None)
    gate = threading.Event()  # VP 1 serves no work until the stop has been requested
    vp1_loop = m.vps[1].loop

    def gated_loop() -> None:
        gate.wait(10)
        vp1_loop()

    m.vps[1].loop = gated_loop  # type: ignore[method-assign]
    changed = threading.Event()
    m.start()
    try:
        m.vps[0].post_work(lambda: VpHost._with_vps_parked(host, changed.set))  # type: ignore[arg-type]
        for _ in range(500):  # VP 0 holds the park lock and waits for VP 1
            if host._park_lock.locked():
                break
            time.sleep(0.002)
        d.interrupt()  # gdb's Ctrl-C: parks posted to both VPs
        time.sleep(0.05)  # VP 0 serves its work while it waits: the gdb park among it
        gate.set()
        ev = _wait(d)
        assert ev.kind is StopKind.INTERRUPT and d.parked == {0, 1}
        assert changed.is_set() and not host._park_lock.locked()
        assert d.read_registers(1)["rip"] == 0x1001  # VP 1 serves gdb
    finally:
        m.halt()
