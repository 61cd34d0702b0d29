"""Child partitions that run (TLFS virtualization-host.md; docs/partitions.md "Running children").

The partition engine (hv1/hv/hypervisor.py) keeps what a child *is*: its state, GPA map, intercept
table and, while a VP is stopped, that VP's register file. This module makes children *run*. It is
the engine's `PartitionRuntime`: when a virtualization host clears the last suspension reason of a
child's VP for the first time, the runtime builds the child —

- a backend VM of its own (KVM or the emulator) whose memory regions point into the root's RAM
  where the child's GPA map says (zero copy; read-only where the map forbids writes; every other
  GPA below 4 GiB is unmapped, so an access there becomes an intercept);
- an hv1/hv `Partition` over `PartitionMemory` (the child's own Hv#1: hypercall page, SynIC,
  timers, enlightenments), with hv1's local APIC per VP (children always run in the user APIC
  mode: the engine asserts their interrupts, and KVM's in-kernel APIC is per VM);
- a thread per VP (a `machine.Vp` with the intercept-aware exits of `ChildVp` below).

A VP runs from its register file and, whenever a suspension reason is set, stops and saves its
state back (`VpRecord.running` tells the engine when the file is authoritative again). An access
the parent intercepts (I/O port, MSR, unmapped or forbidden GPA) suspends the VP (InterceptSuspend)
and sends the parent the TLFS intercept message (PDF §13.2, hv1/hv/intercepts.py) through
`deliver`; the parent completes it with SetVpRegisters (advancing RIP, setting RAX for an IN or
EDX:EAX for an RDMSR) and clears InterceptSuspend. What nobody intercepts is answered as a machine
without devices does: I/O reads all-ones and writes are dropped, unknown MSRs #GP.

Lock order: the engine lock, then a child's Partition.lock. A VP thread takes the engine lock only
with `_engine_locked`, which serves the VP's work queue while it waits, so that the engine can park
the VP (a memory-map change) while it holds the lock.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, TextIO, TypeVar

from hv1.backends.base import ContextRejected, MemoryRegion, Vcpu, open_vm, resolve_backend
from hv1.hv import enlightenments
from hv1.hv.apic import ApicRouter, LocalApic
from hv1.hv.caps import Caps, parse_profile
from hv1.hv.guest_cpu import GuestCpu
from hv1.hv.hypercall_page import HYPERCALL_PORT
from hv1.hv.hypercalls.vp_calls import InitialVpContext
from hv1.hv.hypervisor import ASSERTED_INTERRUPTS_KEPT, Hypervisor, VpRecord
from hv1.hv.intercepts import InterceptContext, io_port_message, memory_message, msr_message
from hv1.hv.interfaces import GuestMemory
from hv1.hv.partition import Partition
from hv1.hv.reftime import ReferenceTime
from hv1.hv.virtual_interrupt import AssertedInterrupt
from hv1.machine.devices.base import IoBus
from hv1.machine.devices.ioapic import IoApic
from hv1.machine.instruction_start import (
    default_operand_size,
    io_instruction_length,
    io_instruction_start,
    retired_store_start,
)
from hv1.machine.machine import (
    APIC_MSR_BASE,
    NESTED_SYNTHETIC_MSRS,
    SYNTHETIC_MSRS,
    SynicEoiHook,
    Vp,
    VpHost,
    cpuid_for_apic_id,
    cpuid_template,
)
from hv1.machine.paging import read_virtual
from hv1.machine.scheduler import Scheduler
from hv1.tlfs.intercepts import InterceptAccessType
from hv1.tlfs.messages import HvMessageType
from hv1.tlfs.virtualization_host import MAP_GPA_PERMISSIONS, InterruptType, MapGpaFlags
from hv1.trace import Tracer

if TYPE_CHECKING:
    from hv1.machine.debug import MachineDebugTarget

T = TypeVar("T")

XAPIC_PAGE = 0xFEE00000  # the local APIC's default base: MMIO in every child (hv1's APIC model)
CHILD_MMIO = [(XAPIC_PAGE, XAPIC_PAGE + 0x1000)]
ALL_ONES = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFF_FFFF}
# Deliver(parent partition id, child partition id, child VP index, message type, payload).
Deliver = Callable[[int, int, int, int, bytes], None]


def child_caps(privileges: int) -> Caps:
    """A child's Hv#1: hv1's default guest profile in the user APIC mode, with the privileges its
    parent gave it (HvCallSetPartitionProperty PrivilegeFlags, clipped by the engine)."""
    return dataclasses.replace(parse_profile("default", apic_mode="user"), privileges=privileges)


class ChildVp(Vp):
    """A VP of a child partition: it runs from its engine register file, stops whenever a
    suspension reason is set, and turns intercepted exits into messages to the parent."""

    host: ChildPartition

    def __init__(self, host: ChildPartition, index: int, vcpu: Vcpu, apic: LocalApic | None) -> None:
        super().__init__(host, index, vcpu, apic)
        self.host = host
        self.started = self.has_run = True  # a child VP starts from its register file, not INIT/SIPI
        self.resumed = threading.Event()
        # After an intercept: the RIP the vCPU will run from if the file's RIP is left alone (past
        # the instruction where the backend completes or has retired it, on it where it was taken
        # back: Vcpu.undo_exit); before the next entry what the parent changed in the register file
        # is loaded (RIP written only if it differs from that).
        self._reload_after: int | None = None
        self._saved: tuple[InitialVpContext, dict[str, int]] = (InitialVpContext(), {})
        # The vCPU's state at this exit, read once (~23 us on KVM here, PAT an ioctl): an intercept
        # reads it for the code bytes, the operand size, the message and the register file.
        self._exit_ctx: InitialVpContext | None = None

    @property
    def record(self) -> VpRecord:
        return self.host.record_vp(self.vp_index)

    # ---- the register file ----
    def _ctx(self) -> InitialVpContext:
        if self._exit_ctx is None:
            self._exit_ctx = self.vcpu.get_context()
        return self._exit_ctx

    def _save(self, rec: VpRecord, rip: int | None = None) -> None:
        ctx = self._ctx()
        if rip is not None:
            ctx = dataclasses.replace(ctx, rip=rip)
        rec.registers.ctx = ctx
        for name in rec.registers.gprs:
            rec.registers.gprs[name] = self.vcpu.get(name)
        rec.running = False
        # What the file held when the VP stopped: after an intercept only what the parent changed
        # is written back (_apply_file), so nothing depends on where the backend stops next.
        self._saved = (ctx, dict(rec.registers.gprs))

    def _load(self, rec: VpRecord) -> bool:
        """Load the register file into the vCPU. False (and the VP stays stopped, the parent told
        with HvMessageTypeInvalidVpRegisterValue) if the backend refuses the context."""
        self._exit_ctx = None
        try:
            self.vcpu.set_initial_context(rec.registers.ctx)
        except ContextRejected as e:
            rec.intercept_suspend = True
            self.host.tracer.emit("partitions", self.index, "invalid-vp-register-value", reason=str(e))
            self.host.send_to_parent(self.vp_index, HvMessageType.HvMessageTypeInvalidVpRegisterValue,
                                     self.vp_index.to_bytes(4, "little"))  # fmt: skip
            return False
        for name, value in rec.registers.gprs.items():
            if name != "rsp":
                self.vcpu.set(name, value)
        rec.running = True
        return True

    def _apply_file(self, rec: VpRecord, expected_rip: int) -> None:
        """After an intercept: what the parent changed in the register file since the VP stopped,
        on top of the completed instruction (the backend moved RIP to `expected_rip` itself: a
        parent that stepped over the instruction changes nothing here). The common completion
        (RIP, and RAX through the instruction's own result) writes no register at all."""
        ctx = rec.registers.ctx
        saved_ctx, saved_gprs = self._saved
        self._exit_ctx = None
        moved = dataclasses.replace(ctx, rip=saved_ctx.rip, rflags=saved_ctx.rflags, rsp=saved_ctx.rsp)
        if moved != saved_ctx:
            self.vcpu.set_initial_context(ctx)  # the parent changed segments or control registers
        else:
            if ctx.rip != expected_rip:
                self.vcpu.set("rip", ctx.rip)
            if ctx.rflags != saved_ctx.rflags:
                self.vcpu.set("rflags", ctx.rflags)
            if ctx.rsp != saved_ctx.rsp:
                self.vcpu.set("rsp", ctx.rsp)
        for name, value in rec.registers.gprs.items():
            if value != saved_gprs.get(name):
                self.vcpu.set(name, value)

    def _engine_locked(self, fn: Callable[[], T], gone: T) -> T:
        """`fn()` under the engine lock, serving this VP's work while waiting for it; `gone` if the
        VP is stopped meanwhile (the engine may hold the lock while it waits for this thread)."""
        lock = self.host.engine.lock
        while not lock.acquire(timeout=0.0002):
            self.service_work()
            if self.vcpu.stop_requested:
                return gone
        try:
            return fn()
        finally:
            lock.release()

    def _wait_resumed(self, load: bool = True) -> bool:
        """Wait (serving work: the engine may park this VP meanwhile) until no suspension reason
        is left, then load the register file (`load` False: the caller applies it later, outside
        the instruction being intercepted). False: the VP is being stopped for good."""
        while True:
            if self.vcpu.stop_requested:
                return False

            def check() -> bool | None:
                rec = self.host.engine_vp(self.vp_index)
                if rec is None:
                    return None
                if not rec.suspended:
                    if not load:
                        rec.running = True
                        return True
                    return self._load(rec)
                return False

            ok = self._engine_locked(check, None)
            if ok is None:
                return False
            if ok:
                return True
            self.resumed.wait(0.05)
            self.resumed.clear()
            self.service_work()

    def _stop_if_suspended(self) -> None:
        """Before an entry: a parent that set ExplicitSuspend (or an intercept elsewhere) stops
        this VP here, with its state saved to the register file."""

        def check() -> bool:
            rec = self.host.engine_vp(self.vp_index)
            if rec is None or not rec.suspended:
                return False
            if rec.running:
                self._save(rec)
            return True

        if self._engine_locked(check, False):
            self._wait_resumed()

    def _intercept(self, kind: int, payload: bytes, rip: int, expected_rip: int) -> bool:
        """Suspend for the parent: save the state with RIP on the instruction, send the message,
        wait for the parent to clear InterceptSuspend. True when it did (the register file then
        holds its answer); False when the VP is being stopped."""

        def suspend() -> bool:
            rec = self.host.engine_vp(self.vp_index)
            if rec is None:
                return False
            self._save(rec, rip)
            rec.intercept_suspend = True
            rec.intercept = (kind, payload)
            return True

        self.host.counters["intercepts"] += 1
        if not self._engine_locked(suspend, False):
            return False
        # After the engine lock: a root guest's SynIC takes its partition lock, which is outside
        # the engine's (docs/partitions.md "Locks").
        self.host.send_to_parent(self.vp_index, kind, payload)
        self.host.count_intercept(self.vp_index, kind)
        tracer = self.host.tracer
        tracer.emit("partitions", self.index, "intercept", partition=self.host.id, type=f"{kind:#x}", rip=rip)
        if not self._wait_resumed(load=False):
            return False
        self._reload_after = expected_rip
        if not self.vcpu.io_rip_after:
            # The emulator runs this handler inside the instruction: stop soon after it, so that
            # before_entry runs. KVM's run loop calls before_entry before its next entry anyway.
            self.vcpu.kick()
        return True

    def _context(self, rip: int, length: int, insn: bytes = b"") -> InterceptContext:
        ctx = self._ctx()
        return InterceptContext(
            vp_index=self.vp_index, instruction_length=length, cs=ctx.cs, rip=rip, rflags=ctx.rflags,
            cr0=ctx.cr0, efer=ctx.efer, cpl=self.vcpu.cpl(), instruction_bytes=insn,
        )  # fmt: skip

    def _code(self, la: int, n: int) -> bytes:
        c = self._ctx()
        if not c.cr0 & 1:
            la += c.cs.base
        return read_virtual(self.host.memory, la, n, c.cr0, c.cr3, c.cr4, c.efer) or b""

    # ---- exits ----
    def before_entry(self) -> None:
        self._exit_ctx = None  # the exit's handlers are done; registers may change from here
        if self._reload_after is not None:
            expected, self._reload_after = self._reload_after, None
            rec = self.host.engine_vp(self.vp_index)
            if rec is not None:
                self._apply_file(rec, expected)
        self._stop_if_suspended()
        super().before_entry()

    def _io(self, port: int, size: int, is_write: bool, value: int) -> int | None:
        """An I/O access the parent intercepts: its answer (the IN value), or None if not intercepted."""
        if not self.host.io_intercepted(port, is_write):
            return None
        rip = self.vcpu.get("rip")
        insn = b""
        # A string IN's unit gets its value from this handler (the parent's RAX) on both backends:
        # KVM writes it to [ES:RDI] on the next entry, so it is not taken back (and its RIP is on
        # the instruction, which KVM runs again while the REP goes on).
        string_in = self._string_in_at(rip, port) if not is_write and self.vcpu.io_rip_after else 0
        undone = None if string_in else self.vcpu.undo_exit()
        if string_in:
            start, length = rip, string_in
            resume = start + length
        elif undone is not None:
            # KVM's IN: taken back, RIP on it; it runs again unless the parent steps over it.
            start, length = undone
            resume = start
        elif self.vcpu.io_rip_after and (rep := self._rep_outs_at(rip, port)):
            # KVM's `rep outs`: each unit exits with RIP on the instruction, which KVM runs again
            # for the next unit: the parent stepping over it (or not) changes nothing.
            start, length = rip, rep
            resume = start + length
        elif self.vcpu.io_rip_after:
            # KVM's OUT: retired at the exit, RIP past it (host-kvm.md): find where it began.
            before = self._code(rip - min(rip, 3), min(rip, 3))  # an OUT at IP 0 has no bytes before it
            start = io_instruction_start(
                before, rip, size, port, self.vcpu.get("rdx"), self._default_operand_size()
            )
            length, resume = rip - start, rip
            insn = before[len(before) - length :] if length <= len(before) else b""
        else:
            # The emulator: RIP on it; the emulator completes it after this handler.
            start = rip
            insn = self._code(start, 15)
            length = io_instruction_length(insn) or 1
            resume = start + length
        if undone is not None or not insn:
            insn = self._code(start, length)
        insn = insn[:length]
        rax = self.vcpu.get("rax")
        if is_write:
            rax = (rax & ~ALL_ONES[size]) | (value & ALL_ONES[size])
        string = bool(insn) and insn[-1] in (0x6C, 0x6D, 0x6E, 0x6F)
        ctx = self._ctx()
        kind, payload = io_port_message(
            self._context(start, length, insn), port, size, is_write, rax, string=string,
            # A string form's operands (PDF §13.2 I/O port message: RCX, RSI, RDI, DS, ES).
            rep=string and bool({0xF2, 0xF3} & set(insn[:-1])),
            rcx=self.vcpu.get("rcx") if string else 0, rsi=self.vcpu.get("rsi") if string else 0,
            rdi=self.vcpu.get("rdi") if string else 0, ds=ctx.ds, es=ctx.es,
        )  # fmt: skip
        if not self._intercept(kind, payload, start, resume):
            return ALL_ONES[size]
        rec = self.host.engine_vp(self.vp_index)
        return (rec.registers.gprs["rax"] if rec is not None else ALL_ONES[size]) & ALL_ONES[size]

    def _string_in_at(self, rip: int, port: int) -> int:
        """The length of an INS from `port` (DX) at `rip`, else 0."""
        code = self._code(rip, 15)
        n = io_instruction_length(code) or 0
        if not n or code[n - 1] not in (0x6C, 0x6D):
            return 0
        return n if self.vcpu.get("rdx") & 0xFFFF == port else 0

    def _rep_outs_at(self, rip: int, port: int) -> int:
        """The length of a REP OUTS to `port` (DX) at `rip`, else 0."""
        code = self._code(rip, 15)
        n = io_instruction_length(code) or 0
        if n < 2 or code[n - 1] not in (0x6E, 0x6F) or 0xF3 not in code[: n - 1]:
            return 0
        return n if self.vcpu.get("rdx") & 0xFFFF == port else 0

    def _default_operand_size(self) -> int:
        """An I/O instruction's operand size without a 66 prefix (REX.W does not widen it)."""
        return default_operand_size(self._ctx())

    def io_out(self, port: int, size: int, value: int) -> None:
        if port == HYPERCALL_PORT and size == 1 and self.host.partition.hypercall_page_enabled():
            self._hypercall()
            return
        if self._io(port, size, True, value) is None:
            self.host.unclaimed("io-write", port=port, value=value)

    def io_in(self, port: int, size: int) -> int:
        v = self._io(port, size, False, 0)
        if v is None:
            self.host.unclaimed("io-read", port=port)
            return ALL_ONES[size]
        return v

    def _msr(self, index: int, is_write: bool, value: int) -> int | None:
        rip = self.vcpu.get("rip")
        # KVM: taken back, so that KVM does not step over it once more after the parent's answer
        # (PDF §13.2: the message's RIP is the instruction's; the parent steps over it). The
        # emulator completes it after this handler: RIP + 2 unless the parent moves it.
        undone = self.vcpu.undo_exit()
        resume = rip if undone is not None else rip + 2
        kind, payload = msr_message(
            self._context(rip, 2, b"\x0f\x30" if is_write else b"\x0f\x32"), index, is_write,
            (value >> 32) if is_write else self.vcpu.get("rdx") & 0xFFFF_FFFF,
            (value & 0xFFFF_FFFF) if is_write else self.vcpu.get("rax") & 0xFFFF_FFFF,
        )  # fmt: skip
        if not self._intercept(kind, payload, rip, resume):
            return None
        rec = self.host.engine_vp(self.vp_index)
        if rec is None:
            return None
        g = rec.registers.gprs
        return ((g["rdx"] & 0xFFFF_FFFF) << 32) | (g["rax"] & 0xFFFF_FFFF)

    def rdmsr(self, index: int) -> int | None:
        if self.host.msr_intercepted(index, False):
            return self._msr(index, False, 0)
        return super().rdmsr(index)

    def wrmsr(self, index: int, value: int) -> bool:
        if self.host.msr_intercepted(index, True):
            return self._msr(index, True, value) is not None
        return super().wrmsr(index, value)

    def _memory(self, addr: int, size: int, is_write: bool, value: int = 0) -> None:
        """An access to a GPA the child's map does not allow: the parent's HvMessageTypeUnmappedGpa
        (nothing mapped) or HvMessageTypeGpaIntercept (mapped without the right), with RIP on the
        instruction: the access has not happened, and a parent that maps the page and leaves RIP
        there re-executes it. The emulator stops before the access; KVM's read is taken back
        (undo_exit); a write KVM retires before it exits (RIP past it, its data dropped), so its
        start is found from the bytes around RIP (a MOV, STOS, MOVS or PUSH; REP STOS/MOVS one
        element per exit: instruction_start.py) and the registers it moved are put back; any
        other form is reported at RIP as KVM left it, docs/partitions.md "Not there yet")."""
        rip = start = self.vcpu.get("rip")
        if self.vcpu.undo_exit() is None and is_write and self.vcpu.io_rip_after:
            found = retired_store_start(self.vcpu, self.host.memory, self._ctx(), addr, size, value)
            if found is not None:
                # Put the vCPU back to before the store (RIP on it, RDI/RSI/RCX/RSP as they were):
                # KVM has nothing left to complete for a write, so what is set here is what the
                # message and the register file hold and where the VP resumes.
                start = rip = found.start
                self.vcpu.set("rip", start)
                for name, v in found.rewind:
                    self.vcpu.set(name, v)
                self._exit_ctx = None  # RSP (a PUSH) is in the cached context
        insn = self._code(start, 15)
        mapped = self.host.memory_mapped(addr)
        access = InterceptAccessType.WRITE if is_write else InterceptAccessType.READ
        kind, payload = memory_message(self._context(start, 0, insn), addr, access, mapped)
        self._intercept(kind, payload, start, rip)

    def mmio_read(self, addr: int, size: int) -> int:
        v = self.apic_mmio_read(addr, size)
        if v is not None:
            return v
        self._memory(addr, size, False)
        return (1 << (8 * size)) - 1

    def mmio_write(self, addr: int, size: int, value: int) -> None:
        page = self.host.hypercall_page_gpa
        if page is not None and page <= addr < page + 0x1000:
            super().mmio_write(addr, size, value)  # the read-only hypercall page: #GP
            return
        if not self.apic_mmio_write(addr, size, value):
            self._memory(addr, size, True, value)

    def fatal(self, kind: str, detail: str) -> None:
        """A triple fault or an emulation failure in a child is the parent's to handle
        (HvMessageTypeUnrecoverableException), never the end of the hv1 process."""
        self.host.vp_failed(self, kind, detail)

    def thread_main(self) -> None:
        self.host.partition.time.vp_runtime[self.vp_index].bind_thread_clock()
        try:
            if self._wait_resumed():
                self.vcpu.run(self)
        except Exception as e:  # an hv1 bug: this child stops with a diagnostic, the others go on
            self.host.vp_failed(self, "internal-fault", f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
        finally:
            rec = self.host.engine_vp(self.vp_index)
            if rec is not None:
                rec.running = False


class ChildPartition(VpHost):
    """One running child partition: its backend VM, its hv1/hv Partition and its VPs."""

    def __init__(self, runtime: ChildRuntime, partition_id: int) -> None:
        self.runtime = runtime
        self.engine = runtime.engine
        self.id = partition_id
        self.tracer = runtime.tracer
        self.counters: dict[str, int] = {"intercepts": 0, "unclaimed": 0}
        record = self.engine.partition(partition_id)
        self.parent_id = record.parent if record.parent is not None else self.engine.root_id
        self.vp_indexes = sorted(record.vps)
        self.kernel_auto_eoi = False
        self.debugger: MachineDebugTarget | None = None
        self.hypercall_page_gpa: int | None = None
        self.hypercall_page_writes = 0
        self.scheduler = Scheduler(on_error=runtime.scheduler_error)  # per child: VPs key timers by index
        self.start_lock = threading.Lock()
        self._stop = threading.Event()
        self._park_lock = threading.Lock()
        self.failed: str | None = None
        self.memory: GuestMemory = self.engine.partition_memory(partition_id)

        self.vm = open_vm(runtime.backend, "user")
        self.vm.set_memory_regions(self.regions(), CHILD_MMIO)
        self.vm.route_msrs_to_userspace(
            [SYNTHETIC_MSRS, NESTED_SYNTHETIC_MSRS, (APIC_MSR_BASE, APIC_MSR_BASE)]
        )
        vcpus = [self.vm.create_vcpu(i) for i in range(len(self.vp_indexes))]
        self.reftime = ReferenceTime(self.vm.guest_tsc(), self.vm.tsc_hz)
        caps = child_caps(record.privileges)
        self.partition = Partition(
            caps, len(self.vp_indexes), self.memory, self.reftime, irq=self, hooks=self,
            tracer=self.tracer, apic_ids=self.vp_indexes, vp_indexes=self.vp_indexes,
        )  # fmt: skip
        self.partition.partition_id = partition_id
        self.partition.time.set_min_period(max(self.vm.min_timer_period_ns // 100, 1000))
        self.partition.time.on_change(self._time_changed)
        host_cpuid = {e.function: e for e in self.vm.supported_cpuid() if e.index == 0}
        x2apic = 1 in host_cpuid and bool(host_cpuid[1].ecx & (1 << 21))
        phys_bits = host_cpuid[0x80000008].eax & 0xFF if 0x80000008 in host_cpuid else 36
        apics = [
            LocalApic(
                vp_index,
                now_ns=time.monotonic_ns,
                bsp=(i == 0),
                tracer=self.tracer,
                vp_index=vp_index,
                x2apic_supported=x2apic,
                phys_addr_bits=phys_bits or 36,
                min_periodic_ns=self.vm.min_timer_period_ns,
            )  # fmt: skip
            for i, vp_index in enumerate(self.vp_indexes)
        ]
        self.router = ApicRouter(
            apics,
            kick=lambda vp_index: self.vp_by_index[vp_index].kick(),
            on_init=lambda vp_index: self.tracer.emit("partitions", vp_index, "init-ignored"),
            on_sipi=lambda vp_index, vec: None,
            on_nmi=lambda vp_index: self.vp_by_index[vp_index].deliver_nmi(),
        )
        enlightenments.attach(self.partition, self.router.apic_for_vp)
        self.ioapic = IoApic(lambda address, data: None)  # a child has no devices
        self.bus = IoBus(self.tracer)
        hooks = SynicEoiHook(self.partition)
        for a in apics:
            a.hooks = hooks
        cpuid = cpuid_template(self.vm.supported_cpuid(), caps, self.partition.cpuid_leaves(), user_apic=True)
        self.partition.guest_cpu = GuestCpu.from_leaves(
            {(e.function, e.index): (e.eax, e.ebx, e.ecx, e.edx) for e in cpuid}
        )
        self.vps: list[Vp] = []
        for i, vcpu in enumerate(vcpus):
            vcpu.set_cpuid(cpuid_for_apic_id(cpuid, self.vp_indexes[i]))
            self.vps.append(ChildVp(self, i, vcpu, apics[i]))
        self.vp_by_index = {vp.vp_index: vp for vp in self.vps}
        self.vm.prepare_thread()
        # Its SynICs to the engine's port registry: ports created for it are delivered here, and its
        # HvCallPostMessage / SignalEvent on a registry connection go to the engine (hv1/hv/port_registry.py).
        self.engine.attach_ports(partition_id, self.partition.ports)
        for irq in self.engine.asserted_interrupts.pop(partition_id, ()):
            self.assert_interrupt(irq)  # asserted before the child ran (ChildRuntime._assert_interrupt)
        self.tracer.emit("partitions", -1, "child-running", partition=partition_id, vps=len(self.vps))

    # ---- engine views ----
    def engine_vp(self, vp_index: int) -> VpRecord | None:
        p = self.engine.peek(self.id)
        return p.vps.get(vp_index) if p is not None else None

    def record_vp(self, vp_index: int) -> VpRecord:
        rec = self.engine_vp(vp_index)
        assert rec is not None
        return rec

    def io_intercepted(self, port: int, is_write: bool) -> bool:
        p = self.engine.peek(self.id)
        return p is not None and p.intercepts.io_port(port, is_write)

    def msr_intercepted(self, index: int, is_write: bool) -> bool:
        p = self.engine.peek(self.id)
        return p is not None and p.intercepts.msr(index, is_write)

    def memory_mapped(self, gpa: int) -> bool:
        p = self.engine.peek(self.id)
        return p is not None and p.gpa.get(gpa >> 12) is not None

    def regions(self) -> list[MemoryRegion]:
        """The child's GPA map as backend memory regions into the root's RAM (GpaMap.runs:
        coalesced), the xAPIC page left out (hv1's APIC model answers it)."""
        host = self.runtime.root_host_address
        out: list[MemoryRegion] = []
        p = self.engine.peek(self.id)
        for run in p.gpa.runs() if p is not None else ():
            gpa, size = run.first_page << 12, run.count << 12
            if gpa <= XAPIC_PAGE < gpa + size:
                continue  # a child's APIC page is its APIC, whatever the map says
            if gpa + size > 1 << 32:
                continue  # the emulator's guests live below 4 GiB; KVM would take it, but keep one answer
            flags = run.flags & MAP_GPA_PERMISSIONS
            executable = bool(flags & (MapGpaFlags.KERNEL_EXECUTABLE | MapGpaFlags.USER_EXECUTABLE))
            writable = bool(flags & MapGpaFlags.WRITABLE)
            out.append(MemoryRegion(gpa, host + (run.backing_first << 12), size, writable, executable))
        return out

    # ---- what the engine asks (under its lock) ----
    def start_or_resume(self, vp_index: int) -> None:
        vp = self.vp_by_index.get(vp_index)
        if vp is None:
            self.tracer.emit(
                "partitions", -1, "vp-created-while-running", partition=self.id, vp_index=vp_index
            )
            return
        assert isinstance(vp, ChildVp)
        if vp.thread is None:
            vp.vcpu.stop_requested = False
            vp.thread = threading.Thread(
                target=vp.thread_main, name=f"hv1-p{self.id}-vp{vp_index}", daemon=True
            )
            vp.thread.start()
        else:
            # A VP that can be resumed waits in _wait_resumed (or is about to): the event is enough.
            # A kick would also make its next KVM_RUN return at once (immediate_exit): one more
            # round through before_entry on every intercept.
            vp.resumed.set()

    def suspend(self, vp_index: int) -> None:
        vp = self.vp_by_index.get(vp_index)
        if vp is not None:
            vp.kick()

    def relayout(self) -> None:
        """The GPA map changed: every VP parked outside the backend while the regions change, so
        no VP touches a page after it was unmapped (UnmapGpaPages returns only after this)."""
        regions = self.regions()
        self._with_vps_parked(lambda: self.vm.set_memory_regions(regions, CHILD_MMIO))
        self.tracer.emit("partitions", -1, "memory-layout", partition=self.id, regions=len(regions))

    def stop(self) -> None:
        """Every VP leaves the backend for good (FinalizePartition, DeletePartition, DeleteVp of
        the last, or the host closing)."""
        self._stop.set()
        for vp in self.vps:
            vp.vcpu.stop_requested = True
        me = threading.get_ident()
        deadline = time.monotonic() + 5.0
        for vp in self.vps:
            while vp.thread is not None and vp.thread.is_alive() and vp.thread.ident != me:
                vp.kick()
                assert isinstance(vp, ChildVp)
                vp.resumed.set()
                vp.thread.join(timeout=0.02)
                if time.monotonic() > deadline:
                    self.runtime.diag.write(f"hv1: partition {self.id:#x} vp{vp.vp_index} did not stop\n")
                    break
        self.scheduler.stop()

    def close(self) -> None:
        for vp in self.vps:
            if vp.thread is None or not vp.thread.is_alive():
                vp.vcpu.close()
        self.vm.close()

    # ---- what the VPs and the child's Hv#1 ask ----
    def send_to_parent(self, vp_index: int, kind: int, payload: bytes) -> None:
        self.runtime.deliver(self.parent_id, self.id, vp_index, kind, payload)

    def count_intercept(self, vp_index: int, kind: int) -> None:
        """The stats page counter of this intercept message (hv1/tlfs/stats.py)."""
        name = {
            HvMessageType.HvMessageTypeX64IoPortIntercept: "VpIoInterceptMessages",
            HvMessageType.HvMessageTypeUnmappedGpa: "VpMemoryInterceptMessages",
            HvMessageType.HvMessageTypeGpaIntercept: "VpMemoryInterceptMessages",
        }.get(HvMessageType(kind), "VpOtherMessages")
        self.engine.count(self.id, vp_index, name)

    def assert_interrupt(self, irq: AssertedInterrupt) -> int | None:
        """HvCallAssertVirtualInterrupt into this child: fixed and lowest-priority interrupts into the
        target VPs' local APICs, NMIs as NMIs (PDF §12 "Virtual Interrupt Controller"). INIT, SIPI
        and deasserting a level interrupt are accepted and only traced: hv1 does not model them
        for children yet (docs/partitions.md)."""
        for vp_index in irq.targets:
            vp = self.vp_by_index.get(vp_index)
            if vp is None:
                continue
            if irq.interrupt_type == InterruptType.NMI:
                vp.deliver_nmi()
            elif irq.vector is not None and vp.apic is not None:
                vp.apic.accept(irq.vector)
                vp.kick()
            else:
                self.tracer.emit("partitions", vp_index, "assert-not-modelled", type=str(irq.interrupt_type))
        return None

    def unclaimed(self, what: str, **fields: int) -> None:
        self.counters["unclaimed"] += 1
        if self.tracer.wants("partitions"):
            self.tracer.emit("partitions", -1, what, partition=self.id, **fields)

    def vp_failed(self, vp: Vp, kind: str, detail: str) -> None:
        """A VP of this child cannot go on: it stops (suspended, as if intercepted) and the parent
        gets HvMessageTypeUnrecoverableException; other partitions keep running."""
        self.failed = f"{kind}: {detail.splitlines()[0] if detail else ''}"
        if kind == "internal-fault":
            self.runtime.diag.write(f"hv1: partition {self.id:#x} vp{vp.vp_index}: {detail}\n")
        vp.vcpu.stop_requested = True
        rec = self.engine_vp(vp.vp_index)
        if rec is not None:
            rec.intercept_suspend = True
        self.send_to_parent(vp.vp_index, HvMessageType.HvMessageTypeUnrecoverableException,
                            vp.vp_index.to_bytes(4, "little"))  # fmt: skip

    def fatal(self, vp: Vp, kind: str, detail: str, status: int) -> None:
        self.vp_failed(vp, kind, detail)

    def _time_changed(self) -> None:
        for vp in getattr(self, "vps", []):
            vp._stimer_armed = None
            vp.kick()

    # PartitionHooks
    def request_reset(self) -> None:
        """HV_X64_MSR_RESET in a child: its VPs stop and the parent is told, as for a failure (a
        child's reset is its virtualization host's to carry out)."""
        for vp in self.vps:
            self.vp_failed(vp, "reset-requested", "the child wrote HV_X64_MSR_RESET")

    def guest_crash(self, vp_index: int, params: tuple[int, ...], message: bytes | None) -> None:
        self.tracer.emit("crash", vp_index, "guest-crash", partition=self.id, params=list(params))

    def hypercall_page_moved(self, gpa: int | None) -> None:
        pages = (gpa,) if gpa is not None and self.memory.contains(gpa, 0x1000) else ()
        self._with_vps_parked(lambda: self.vm.set_readonly_pages(pages))
        self.hypercall_page_gpa = gpa


class ChildRuntime:
    """Runs the children of one partition engine: implements hv1/hv/hypervisor.py's
    PartitionRuntime. `deliver` gets every message for a parent (intercepts, failures)."""

    def __init__(
        self,
        engine: Hypervisor,
        root_ram: GuestMemory,
        deliver: Deliver,
        *,
        backend: str = "auto",
        tracer: Tracer | None = None,
        diag: TextIO | None = None,
    ) -> None:
        host_address = getattr(root_ram, "host_address", None)
        if not isinstance(host_address, int):
            raise TypeError("the root's RAM must be host memory (GuestRam) for children to map it")
        self.engine = engine
        self.root_ram = root_ram
        self.root_host_address = host_address
        self.deliver = deliver
        self.backend = resolve_backend(backend)
        self.tracer = tracer or Tracer()
        self.diag = diag or sys.stderr
        self.children: dict[int, ChildPartition] = {}
        self._stopped: list[ChildPartition] = []
        engine.runtime = self
        engine.on_assert_virtual_interrupt = self._assert_interrupt

    def scheduler_error(self, e: BaseException) -> None:
        self.diag.write("hv1: child timer callback failed: " + "".join(traceback.format_exception(e)))

    def _assert_interrupt(self, irq: AssertedInterrupt) -> int | None:
        c = self.children.get(irq.partition_id)
        if c is None:
            # No VP of it runs yet: the interrupt waits in its (not yet built) local APICs.
            self.engine.asserted_interrupts.setdefault(
                irq.partition_id, deque(maxlen=ASSERTED_INTERRUPTS_KEPT)
            ).append(irq)
            return None
        return c.assert_interrupt(irq)

    def child(self, partition_id: int) -> ChildPartition | None:
        return self.children.get(partition_id)

    # ---- PartitionRuntime (called under the engine lock) ----
    def vp_resumed(self, partition_id: int, vp_index: int) -> None:
        c = self.children.get(partition_id)
        if c is None:
            c = self.children[partition_id] = ChildPartition(self, partition_id)
        c.start_or_resume(vp_index)

    def vp_suspended(self, partition_id: int, vp_index: int) -> None:
        c = self.children.get(partition_id)
        if c is not None:
            c.suspend(vp_index)

    def vp_deleted(self, partition_id: int, vp_index: int) -> None:
        c = self.children.get(partition_id)
        if c is not None and vp_index in c.vp_by_index:
            vp = c.vp_by_index[vp_index]
            vp.vcpu.stop_requested = True
            vp.kick()

    def memory_changed(self, partition_id: int) -> None:
        c = self.children.get(partition_id)
        if c is not None:
            c.relayout()

    def partition_stopping(self, partition_id: int) -> None:
        c = self.children.pop(partition_id, None)
        if c is not None:
            c.stop()
            self._stopped.append(c)

    def close(self) -> None:
        for pid in list(self.children):
            self.partition_stopping(pid)
        for c in self._stopped:
            c.close()
        self._stopped.clear()

    def running(self) -> Iterable[int]:
        return list(self.children)
