"""The machine side of the gdb stub: a `DebugTarget` (hv1/gdbstub/target.py) over a running Machine.

Stopping: a VP stops by parking on its own thread, outside KVM_RUN. A stop request posts the park
as VP work (the queue every VP serves before entry, in the HLT sleep and while waiting for SIPI,
hv1/machine/machine.py) and kicks the VP; a VP that hits a breakpoint parks itself in the exit. A
parked VP serves the debugger's register reads and writes (vCPU ioctls belong to the vCPU's thread)
and the machine's own VP work, and leaves when gdb resumes it, re-arming KVM_SET_GUEST_DEBUG first.

Breakpoints: software breakpoints are int3 bytes in RAM (hv1/gdbstub/swbreak.py) and exit through
KVM_GUESTDBG_USE_SW_BP; on this development host KVM cannot emulate a ring-0 int3 and reports an
emulation failure instead (../shared/notes/host-kvm.md §2), and that failure at a planted int3 is
the breakpoint hit. Hardware breakpoints and watchpoints are the four debug registers
(hv1/backends/guest_debug.py) loaded with KVM_SET_GUEST_DEBUG, as is single step, for each kind of
breakpoint the host's KVM really delivers (`hw_support`, probed once by the machine:
hv1/backends/kvm/guest_debug_probe.py). A write watchpoint the host would not deliver is served by
write-protecting its pages instead (hv1/machine/write_watch.py): the guest's store exits as an MMIO
write, `watched_write` performs it and stops there. Read/write watchpoints and execute breakpoints
have no such fallback and are refused where the debug registers do not deliver them.

Tested end to end on this host's KVM (tests/integration/test_gdb.py::test_gdb_on_kvm, real gdb).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, cast

from hv1.backends.guest_debug import (
    DR6_BS,
    Condition,
    DebugRegisters,
    GuestDebug,
    HwBreakpoint,
    HwDebugSupport,
)
from hv1.errors import EXIT_OK
from hv1.gdbstub.server import GdbServer
from hv1.gdbstub.swbreak import SoftwareBreakpoints
from hv1.gdbstub.target import BreakpointType, StopEvent, StopKind
from hv1.hv.interfaces import GuestMemory
from hv1.hv.synic import synic_of
from hv1.machine.paging import translate
from hv1.machine.write_watch import WriteWatch, WriteWatchpoints, split_pages

if TYPE_CHECKING:
    from hv1.machine.machine import Machine, Vp

BP_VECTOR, DB_VECTOR = 3, 1
Paging = tuple[int, int, int, int]  # CR0, CR3, CR4, EFER
_POLL = 0.05  # parked VPs look at the end of the run this often (nothing is timed by it)
MAX_WATCH_BYTES = 0x1000  # a write-protection watchpoint of up to a page (debug registers: 1-8 bytes)


class DebugVcpu(Protocol):
    """What a backend vCPU offers the debugger (KvmVcpu implements it)."""

    def debug_read_registers(self) -> dict[str, int]: ...
    def debug_write_registers(self, values: dict[str, int]) -> bool: ...
    def debug_paging(self) -> Paging: ...
    def set_guest_debug(self, dbg: GuestDebug, block_irq: bool, inject: int | None = None) -> None: ...


# ---- guest virtual memory through a VP's page tables -------------------------------------------
def read_virtual(mem: GuestMemory, paging: Paging, addr: int, length: int, sw: SoftwareBreakpoints) -> bytes:
    """Up to `length` bytes at `addr`, stopping where the mapping or RAM ends; planted int3s read as
    the bytes they replaced."""
    out = bytearray()
    while length > 0:
        gpa = translate(mem, addr, *paging)
        n = min(length, 0x1000 - (addr & 0xFFF))
        if gpa is None or not mem.contains(gpa, n):
            break
        out += sw.mask(gpa, mem.read(gpa, n))
        addr, length = (addr + n) & 0xFFFF_FFFF_FFFF_FFFF, length - n
    return bytes(out)


def write_virtual(mem: GuestMemory, paging: Paging, addr: int, data: bytes, sw: SoftwareBreakpoints) -> bool:
    """All of `data` at `addr` or nothing (every page is translated before the first byte is
    written). The debugger writes through read-only mappings, as QEMU's gdbstub does."""
    pieces: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(data):
        va = (addr + pos) & 0xFFFF_FFFF_FFFF_FFFF
        n = min(len(data) - pos, 0x1000 - (va & 0xFFF))
        gpa = translate(mem, va, *paging)
        if gpa is None or not mem.contains(gpa, n):
            return False
        pieces.append((gpa, data[pos : pos + n]))
        pos += n
    for gpa, chunk in pieces:
        mem.write(gpa, sw.write_through(gpa, chunk))
    return True


_HW_CONDITION = {
    BreakpointType.HARDWARE: Condition.EXEC,
    BreakpointType.WRITE_WATCH: Condition.WRITE,
    BreakpointType.ACCESS_WATCH: Condition.ACCESS,
}
_NOT_RECURRING = (StopKind.STEP, StopKind.WATCH, StopKind.AWATCH)
_WATCH_KIND = {Condition.WRITE: StopKind.WATCH, Condition.ACCESS: StopKind.AWATCH}


def classify(vector: int, pc: int, dr6: int, stepping: bool, sw: SoftwareBreakpoints,
             hw: DebugRegisters) -> tuple[StopKind, int | None] | None:  # fmt: skip
    """The stop a debug exit means, or None when it is the guest's own #BP/#DB (SDM 18.2.3: DR6 B0-B3
    name the debug register that matched, BS a single-step trap)."""
    if vector == BP_VECTOR:
        return (StopKind.SWBREAK, None) if sw.planted_at(pc) else None
    if vector != DB_VECTOR:
        return None
    bp = hw.hit(dr6)
    if bp is not None:
        if bp.cond is Condition.EXEC:
            return StopKind.HWBREAK, None
        return _WATCH_KIND[bp.cond], bp.addr
    if dr6 & DR6_BS and stepping:
        return StopKind.STEP, None
    return None


@dataclass
class _Request:
    fn: Callable[[], Any]
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


class MachineDebugTarget:
    """A `DebugTarget` over `machine` (VPs named by VP index, as in hv1/hv). `hw_support` says which
    debug-register breakpoints the backend delivers; a write watchpoint it does not deliver is
    served by page write-protection (the machine calls `watched_write` for such stores)."""

    def __init__(
        self, machine: Machine, block_irq: bool = False, hw_support: HwDebugSupport | None = None
    ) -> None:
        self.m = machine
        self.block_irq = block_irq
        self.hw_support = hw_support if hw_support is not None else HwDebugSupport()
        self.watches = WriteWatchpoints()
        self.cond = threading.Condition()
        self.hold: set[int] = set()  # VP indexes that must stay parked
        self.parked: set[int] = set()
        self.pending: list[StopEvent] = []
        self.stopping = False  # a stop is being reported for this run of the guest
        self.step_vp: int | None = None
        self.exited: StopEvent | None = None
        self.requests: dict[int, deque[_Request]] = {vp.vp_index: deque() for vp in machine.vps}
        self.hw = DebugRegisters()
        self.sw = SoftwareBreakpoints(self._read_phys, machine.ram.write)
        self.server: GdbServer | None = None

    # ---- lifecycle (called by the Machine) ----
    def listen(self, host: str, port: int, wait: bool) -> None:
        """Serve gdb on (host, port). With `wait` (QEMU's -S) every VP starts parked."""
        if wait:
            self._request_stop(None)
        self.server = GdbServer(self, host, port)
        self.server.start()
        h, p = self.server.address
        self.m.diag.write(
            f"hv1: gdb stub listening on {h}:{p}{' (waiting for gdb)' if wait else ''}; "
            f"{self.watch_method()}\n"
        )
        self.m.diag.flush()

    def machine_stopped(self, status: int) -> None:
        with self.cond:
            self.exited = StopEvent(StopKind.EXITED, self._first_vp(), exit_status=status)
            self.cond.notify_all()

    def after_reset(self) -> None:
        """The partition rebooted (RAM reloaded, VP work queues emptied, VP threads about to start
        again): put the planted int3s back over the new image, and if a stop was under way, post
        the parks again so the new threads honour it."""
        self.sw.replant()
        if len(self.watches):
            self.m.watch_pages_changed()  # the reset laid RAM out without the write-protected pages
        with self.cond:
            stopping = self.stopping
        if stopping:
            self._request_stop(None)

    def close(self) -> None:
        if self.server is not None:
            self.server.finish(timeout=2.0)
            self.server.close()

    # ---- helpers ----
    def _first_vp(self) -> int:
        return self.m.vps[0].vp_index

    def _vp(self, vp_index: int) -> Vp:
        return self.m.vp_by_index[vp_index]

    def _read_phys(self, gpa: int, n: int) -> bytes:
        return self.m.ram.read(gpa, n) if self.m.ram.contains(gpa, n) else b""

    @staticmethod
    def _alive(vp: Vp) -> bool:
        return vp.thread is not None and vp.thread.is_alive() and not vp.vcpu.stop_requested

    def _all_parked(self) -> bool:
        return all(vp.vp_index in self.parked or not self._alive(vp) for vp in self.m.vps)

    def _request_stop(self, event: StopEvent | None) -> None:
        """Every VP parks soon (call with or without the lock; `event` is what to report)."""
        with self.cond:
            if event is not None:
                self.pending.append(event)
            self.stopping = True
            self.hold = {vp.vp_index for vp in self.m.vps}
        for vp in self.m.vps:
            if vp.vp_index not in self.parked:
                vp.post_work(lambda vp=vp: self._park(vp))  # type: ignore[misc]

    def wake(self) -> None:
        """Work was posted to a VP (Vp.post_work): a parked one serves it now rather than at its
        next poll (a relayout of the watched pages parks every VP twice per gdb stop)."""
        with self.cond:
            self.cond.notify_all()

    # ---- on a VP's thread ----
    def _park(self, vp: Vp) -> None:
        """Stay out of the guest while gdb holds this VP, serving debugger requests and VP work."""
        if vp.parking_others:
            # This VP holds the park lock and is waiting for the others to leave KVM_RUN (a
            # hypercall-page move, a watch-page relayout). Parked for gdb here it would keep the
            # lock, and a VP already parked for it would wait forever instead of serving gdb. It
            # parks for gdb as soon as its change is done.
            vp.after_parking_others.append(lambda: self._park(vp))
            return
        i = vp.vp_index
        with self.cond:
            if i not in self.hold:
                return  # a stale park from an earlier stop
            self.parked.add(i)
            self.cond.notify_all()
        try:
            while True:
                vp.service_work()  # e.g. another VP parks everyone to move the hypercall page
                with self.cond:
                    reqs = self.requests[i]
                    if not reqs:
                        if i not in self.hold or vp.vcpu.stop_requested:
                            break
                        self.cond.wait(_POLL)
                        continue
                    req = reqs.popleft()
                try:
                    req.result = req.fn()
                except Exception as e:  # reported to the gdb thread, which answers gdb with an error
                    req.error = e
                req.done.set()
        finally:
            with self.cond:
                self.parked.discard(i)
                stepping = self.step_vp == i
                self.cond.notify_all()
        if not vp.vcpu.stop_requested:
            self._arm(vp, self._config(i, stepping))

    def _arm(self, vp: Vp, dbg: GuestDebug, inject: int | None = None) -> None:
        """KVM_SET_GUEST_DEBUG on `vp`'s thread. A refusal (a debug register KVM will not take) costs
        that breakpoint or step, not the run: it is reported on stderr and in the trace."""
        try:
            self._vcpu(vp).set_guest_debug(dbg, self.block_irq, inject=inject)
        except OSError as e:
            self.m.tracer.emit("vp", vp.index, "gdb-arm-failed", error=str(e))
            self.m.diag.write(f"hv1: gdb stub: KVM_SET_GUEST_DEBUG failed on VP {vp.vp_index}: {e}\n")

    def _config(self, vp_index: int, stepping: bool | None = None) -> GuestDebug:
        step = self.step_vp == vp_index if stepping is None else stepping
        return self.hw.config(single_step=step, sw_breakpoints=self.sw.any_planted())

    def debug_stop(self, vp: Vp, vector: int, pc: int, dr6: int, failed_int3: bool) -> bool:
        """A KVM_EXIT_DEBUG, or (`failed_int3`) an int3 KVM failed to emulate, on `vp`'s thread.
        False: not the debugger's (a failed int3 then stays the fatal emulation failure it was)."""
        with self.cond:
            what = classify(vector, pc, dr6, self.step_vp == vp.vp_index, self.sw, self.hw)
            if what is None:
                if failed_int3:
                    return False
                # The guest's own #BP/#DB while guest debugging is armed: it goes to the guest, as
                # QEMU does it (KVM_GUESTDBG_INJECT_BP/DB queue it with the right RIP on entry).
                self._arm(vp, self._config(vp.vp_index), inject=vector)
                return True
            kind, addr = what
            self._stop_event(vp, kind, pc, addr)
        self._park(vp)
        return True

    def _stop_event(self, vp: Vp, kind: StopKind, pc: int, addr: int | None) -> None:
        """Report `kind` for `vp` (under the lock; the caller parks afterwards)."""
        ev = StopEvent(kind, vp.vp_index, addr=addr)
        self.m.tracer.emit("vp", vp.index, "gdb-stop", kind=kind.value, pc=pc, addr=addr or 0)
        if self.stopping:
            # Another VP's stop is being reported. A breakpoint will be hit again when this VP
            # resumes; a completed step or store will not, so it is reported next.
            if kind in _NOT_RECURRING:
                self.pending.append(ev)
        else:
            self._request_stop(ev)

    def watched_write(self, vp: Vp, gpa: int, size: int, value: int) -> bool:
        """A guest store to RAM that exited as an MMIO write, on `vp`'s thread. With the debugger
        attached the only read-only RAM besides the hypercall page (which the machine answers first)
        is a page write-protected for a watchpoint, now or until the layout catches up with a
        removal: so the store is performed here, planted int3s kept, and if it writes into a
        watched range, `vp` stops after it (KVM has moved RIP past the instruction) for gdb to
        print Old value / New value. False: not RAM, not ours."""
        if not self.m.ram.contains(gpa, size):
            return False
        self.m.ram.write(gpa, self.sw.write_through(gpa, value.to_bytes(size, "little")))
        w = self.watches.hit(gpa, size)
        if w is None:
            return True
        with self.cond:
            self._stop_event(vp, StopKind.WATCH, vp.vcpu.get("rip"), w.addr)
        self._park(vp)
        return True

    def watch_pages(self) -> frozenset[int]:
        """Guest-physical pages the machine must keep read-only for the guest."""
        return self.watches.pages()

    def watch_method(self) -> str:
        """How `watch` is served (the listening line on stderr, `monitor hv debug`)."""
        if self.hw_support.write:
            return "watchpoints in the debug registers"
        return "watch: write-protected pages (this KVM delivers no data breakpoints)"

    # ---- the gdb thread: requests to a parked VP ----
    def _on_vp(self, vp_index: int, fn: Callable[[], Any]) -> Any:
        vp = self._vp(vp_index)
        req = _Request(fn)
        with self.cond:
            if vp_index not in self.parked:
                if self._alive(vp):
                    raise RuntimeError(f"VP {vp_index} is running")
                return fn()  # its thread has ended: nothing else touches the vCPU now
            self.requests[vp_index].append(req)
            self.cond.notify_all()
        while not req.done.wait(_POLL):
            if not self._alive(vp):
                with self.cond:
                    if req in self.requests[vp_index]:
                        self.requests[vp_index].remove(req)
                        return fn()
        if req.error is not None:
            raise req.error
        return req.result

    @staticmethod
    def _vcpu(vp: Vp) -> DebugVcpu:
        return cast("DebugVcpu", vp.vcpu)  # --gdb is refused on a backend without these methods

    def _paging(self, vp_index: int) -> Paging:
        vcpu = self._vcpu(self._vp(vp_index))
        result: Paging = self._on_vp(vp_index, vcpu.debug_paging)
        return result

    # ---- DebugTarget ----
    def vp_indexes(self) -> list[int]:
        return [vp.vp_index for vp in self.m.vps]

    def describe_vp(self, vp: int) -> str:
        v = self._vp(vp)
        state = "running" if v.started else "waiting for SIPI"
        return f"VP {vp} (APIC {self.m.apic_id_of[vp]}) {state}"

    def stop_all(self) -> StopEvent:
        with self.cond:
            if self.exited is not None:
                return self.exited
            already = self.stopping and not self.pending
        if not already:
            self._request_stop(None)
        with self.cond:
            while not self._all_parked() and self.exited is None:
                self.cond.wait(_POLL)
            self.pending.clear()
            return self.exited or StopEvent(StopKind.INTERRUPT, self._first_vp())

    def interrupt(self) -> None:
        with self.cond:
            if self.stopping:
                return
            running = sorted(self.hold ^ {vp.vp_index for vp in self.m.vps}) or [self._first_vp()]
        self._request_stop(StopEvent(StopKind.INTERRUPT, running[0]))

    def resume(self, step: int | None, run: frozenset[int]) -> None:
        with self.cond:
            # Stops that will recur by themselves are dropped; a completed step or store is
            # reported at once, without running anything.
            self.pending = [
                e for e in self.pending if e.kind in (StopKind.STEP, StopKind.WATCH, StopKind.AWATCH)
            ]
            if self.pending:
                self.cond.notify_all()
                return
            self.stopping = False
            self.step_vp = step
            self.m.tracer.emit("vp", -1, "gdb-resume", step=-1 if step is None else step, run=sorted(run))
            self.hold = (
                {vp.vp_index for vp in self.m.vps} - set(run) - ({step} if step is not None else set())
            )
            self.cond.notify_all()

    def wait(self, timeout: float) -> StopEvent | None:
        with self.cond:
            if self.exited is not None:
                return self.exited
            if not (self.pending and self._all_parked()):
                self.cond.wait(timeout)
            if self.exited is not None:
                return self.exited
            if self.pending and self._all_parked():
                return self.pending.pop(0)
            return None

    def kill(self) -> None:
        """gdb `kill`: the run ends with status 0, as QEMU exits on it."""
        self.detach()
        self.m.stop(EXIT_OK, "killed from gdb")

    def detach(self) -> None:
        had_watches = len(self.watches) > 0
        with self.cond:
            self.sw.remove_all()
            self.hw.clear()
            self.watches.clear()
            self.step_vp = None
            self.pending.clear()
            self.stopping = False
            self.hold = set()
            self.cond.notify_all()
        if had_watches:
            self.m.watch_pages_changed()  # outside the lock: parked VPs need it to serve the relayout

    def read_registers(self, vp: int) -> dict[str, int]:
        values: dict[str, int] = self._on_vp(vp, self._vcpu(self._vp(vp)).debug_read_registers)
        return values

    def write_registers(self, vp: int, values: dict[str, int]) -> bool:
        vcpu = self._vcpu(self._vp(vp))
        ok: bool = self._on_vp(vp, lambda: vcpu.debug_write_registers(values))
        return ok

    def read_virtual(self, vp: int, addr: int, length: int) -> bytes:
        return read_virtual(self.m.ram, self._paging(vp), addr, length, self.sw)

    def write_virtual(self, vp: int, addr: int, data: bytes) -> bool:
        return write_virtual(self.m.ram, self._paging(vp), addr, data, self.sw)

    def read_physical(self, addr: int, length: int) -> bytes:
        n = max(0, min(length, self.m.ram.size - addr))
        return self.sw.mask(addr, self.m.ram.read(addr, n)) if n else b""

    def insert_breakpoint(self, vp: int, typ: BreakpointType, addr: int, length: int) -> bool:
        if typ is BreakpointType.SOFTWARE:
            gpa = translate(self.m.ram, addr, *self._paging(vp))
            return gpa is not None and self.m.ram.contains(gpa, 1) and self.sw.insert(addr, gpa)
        cond = _HW_CONDITION.get(typ)
        if cond is None:
            return False
        if self.hw_support.works(cond):
            return self.hw.insert(HwBreakpoint(addr, cond, length))
        return cond is Condition.WRITE and self._insert_write_watch(vp, addr, length)

    def remove_breakpoint(self, vp: int, typ: BreakpointType, addr: int, length: int) -> bool:
        if typ is BreakpointType.SOFTWARE:
            return self.sw.remove(addr)
        cond = _HW_CONDITION.get(typ)
        if cond is None:
            return False
        if self.hw_support.works(cond):
            return self.hw.remove(HwBreakpoint(addr, cond, length))
        if cond is not Condition.WRITE:
            return False
        before = self.watches.pages()
        if not self.watches.remove(addr, length):
            return False
        if self.watches.pages() != before:
            self.m.watch_pages_changed()
        return True

    def _insert_write_watch(self, vp: int, addr: int, length: int) -> bool:
        """A write watchpoint by page write-protection: the bytes' GPAs through `vp`'s page tables
        now (all mapped, all RAM, or refused)."""
        if not 0 < length <= MAX_WATCH_BYTES or addr + length > 1 << 64:
            return False
        paging = self._paging(vp)
        pieces = []
        for va, n in split_pages(addr, length):
            gpa = translate(self.m.ram, va, *paging)
            if gpa is None or not self.m.ram.contains(gpa, n):
                return False
            pieces.append((gpa, n))
        before = self.watches.pages()
        self.watches.insert(WriteWatch(addr, length, tuple(pieces)))
        if self.watches.pages() != before:
            self.m.watch_pages_changed()
        return True

    def monitor(self, command: str) -> str | None:
        words = command.split()
        if words == ["help"]:
            return (
                "  hv partition      capability profile, VPs, hypercall page, resets\n"
                "  hv synic          SynIC registers and queued messages of every VP\n"
                "  hv timers         synthetic timers of every VP\n"
                "  hv debug          which breakpoints use debug registers, which page protection\n"
            )
        if words == ["hv", "debug"]:
            return self._hv_debug()
        if len(words) == 2 and words[0] == "hv":
            fn = _MONITOR.get(words[1])
            return fn(self.m) if fn is not None else None
        return None

    def _hv_debug(self) -> str:
        pages = sorted(self.watches.pages())
        return (
            f"debug registers deliver (probed): {self.hw_support.describe()}\n"
            f"{self.watch_method()}\n"
            f"write-protected for watchpoints: {', '.join(f'{p:#x}' for p in pages) or 'no page'}\n"
        )


# ---- monitor commands: hv1 state as text -----------------------------------------------------------
def _hv_partition(m: Machine) -> str:
    p = m.partition
    page = m.hypercall_page_gpa
    lines = [
        f"profile {m.cfg.hv}; features: {', '.join(sorted(p.caps.features))}",
        f"VPs {len(m.vps)} (VP index: APIC ID) "
        + ", ".join(f"{vp.vp_index}:{m.apic_id_of[vp.vp_index]}" for vp in m.vps),
        f"guest OS ID {p.guest_os_id:#x}; hypercall page "
        + (f"at GPA {page:#x}" if page is not None else "not enabled"),
        f"APIC mode {m.cfg.apic}; resets {m.resets}; RAM {m.ram.size >> 20} MiB",
        f"exits {', '.join(f'{k}={v}' for k, v in sorted(m.exit_counts().items())) or 'none'}",
    ]
    return "\n".join(lines) + "\n"


def _hv_synic(m: Machine) -> str:
    lines = []
    for vp in m.vps:
        d = synic_of(vp.hv_vp).describe()
        unmasked = [f"{n}:{v & 0xFF:#x}" for n, v in enumerate(d["sints"]) if not v & (1 << 16)]
        lines.append(
            f"VP {vp.vp_index}: SCONTROL {d['scontrol']:#x} SIMP {d['simp']:#x} SIEFP {d['siefp']:#x} "
            f"unmasked SINTs {' '.join(unmasked) or 'none'}; queued {d['queued']}"
        )
    return "\n".join(lines) + "\n"


def _hv_timers(m: Machine) -> str:
    lines = [f"reference time {m.reftime.now()}"]
    for vp in m.vps:
        vt = m.partition.time.vp_timers[vp.vp_index]
        for t in vt.timers:
            if not t.config and not t.count:
                continue
            mode = "direct" if t.direct else f"SINT {t.sint}"
            state = f"{'enabled' if t.enabled else 'disabled'}, {'periodic' if t.periodic else 'one-shot'}"
            lines.append(
                f"VP {vp.vp_index} STIMER{t.index}: config {t.config:#x} ({state}, {mode}) count {t.count} "
                f"next {t.expiration} pending {t.pending} fired {t.fired} delivered {t.delivered}"
            )
    if len(lines) == 1:
        lines.append("no synthetic timer configured")
    return "\n".join(lines) + "\n"


_MONITOR: dict[str, Callable[[Machine], str]] = {
    "partition": _hv_partition,
    "synic": _hv_synic,
    "timers": _hv_timers,
}
