"""The Machine: a partition (hv1/hv), a backend VM (KVM or the emulator, hv1/backends/base.py), a PC's
worth of devices, and one thread per VP.

Life of a run: load the kernel, build CPUID from the capability model, put the BSP at the Multiboot
entry (32-bit flat protected mode, paging off), start a thread per VP (APs wait for INIT/SIPI), and
wait until the guest writes the debug-exit port, faults fatally, reports a crash or the timeout
expires. The exit status says which (hv1/errors.py).
"""

from __future__ import annotations

import abc
import collections
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO, TextIO

from hv1.backends.base import (
    CPUID1_ECX_HYPERVISOR,
    CPUID1_ECX_TSC_DEADLINE,
    EXIT_NAMES,
    HV_LEAF_FIRST,
    HV_LEAF_LAST,
    ContextRejected,
    CpuidEntry,
    Vcpu,
    open_vm,
    resolve_backend,
)
from hv1.backends.guest_debug import HwDebugSupport
from hv1.backends.kvm import guest_debug_probe, host_workarounds
from hv1.backends.kvm import ioctls as k
from hv1.backends.kvm.vcpu import KvmVcpu
from hv1.backends.kvm.vm import KvmVm
from hv1.backends.memory import GuestRam
from hv1.errors import (
    EXIT_GUEST_CRASH,
    EXIT_GUEST_FATAL,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_TIMEOUT,
    UsageError,
)
from hv1.hv import enlightenments
from hv1.hv.apic import ApicHooks, ApicRouter, DeliveryMode, DestMode, LocalApic, Shorthand, inject_pending
from hv1.hv.caps import Caps, parse_profile, without_auto_eoi
from hv1.hv.guest_cpu import GuestCpu
from hv1.hv.hypercall_page import HYPERCALL_PORT
from hv1.hv.hypercalls.vp_calls import InitialVpContext
from hv1.hv.hypervisor import Hypervisor
from hv1.hv.inject import InjectError, Injector
from hv1.hv.interfaces import GP_VECTOR, GuestException
from hv1.hv.partition import Partition
from hv1.hv.reftime import ReferenceTime
from hv1.hv.synic import synic_of
from hv1.hv.vp_assist import vp_assist_of
from hv1.machine import boot, multiboot
from hv1.machine.auto_eoi import KernelAutoEoi
from hv1.machine.devices.base import IoBus
from hv1.machine.devices.bench_dev import BENCH_DEV_PORT, BENCH_DEV_PORT_COUNT, BenchDev
from hv1.machine.devices.debug_exit import DEBUG_EXIT_PORT, DebugExit
from hv1.machine.devices.fwcfg import FW_CFG_PORT_SEL, FwCfg
from hv1.machine.devices.hyperv_testdev import HYPERV_TESTDEV_PORT, HypervTestDev
from hv1.machine.devices.i8042 import I8042, I8042_COMMAND, I8042_DATA
from hv1.machine.devices.ioapic import PIN_COM1, IoApic, decode_msi
from hv1.machine.devices.legacy import Cmos, Pic8259Pair, Pit8254, PostPort
from hv1.machine.devices.time_testdev import TIME_TESTDEV_PORT, TimeTestPort
from hv1.machine.devices.uart import COM1, Uart16550
from hv1.machine.instruction_start import retired_store_start
from hv1.machine.linux.payload import default_cache_dir
from hv1.machine.msr_names import stats_msr_name
from hv1.machine.paging import read_virtual
from hv1.machine.scheduler import Scheduler
from hv1.tlfs.partition import PartitionPrivilege
from hv1.trace import Tracer

if TYPE_CHECKING:
    from hv1.machine.child import ChildRuntime
    from hv1.machine.debug import MachineDebugTarget

APIC_MODES = ("kernel", "user")
INTERCEPTION_SINT = 0  # HV_SYNIC_INTERCEPTION_SINT_INDEX: where a parent's intercept messages arrive
MAX_CPUS = 64
MIN_MEMORY = 2 << 20
MAX_MEMORY = 3 << 30  # below the PCI/APIC hole at 3 GiB: one RAM slot, no remapping
APIC_MSR_BASE = 0x1B
X2APIC_FIRST, X2APIC_LAST = 0x800, 0x8FF
SYNTHETIC_MSRS = (0x40000000, 0x400001FF)
NESTED_SYNTHETIC_MSRS = (0x40001000, 0x400010FF)


SIGNAL_POLL_S = 0.5  # how often Machine.run wakes to let Python run a pending SIGINT handler


@dataclass
class MachineConfig:
    kernel: str
    cpus: int = 1
    memory: int = 128 << 20
    append: str = ""
    modules: list[multiboot.Module] = field(default_factory=list)
    apic: str = "kernel"
    hv: str = "default"
    timeout: float | None = None
    on_crash: str = "stop"
    no_reboot: bool = False  # QEMU's -no-reboot: a partition reset ends the run instead
    vp_index_map: list[int] | None = None  # VP index of each vCPU in APIC-ID order (--vp-index-map)
    # Fault injection (--inject, hv/inject.py): specs, or an Injector built from Python.
    inject: list[str] | Injector = field(default_factory=list)
    initrd: str | None = None  # Linux: the initial ramdisk (--initrd)
    linux_entry: str = "pvh"  # Linux bzImage: "pvh" (payload extracted on the host) or "64bit"
    host_workarounds: str = "auto"  # hv1/backends/kvm/host_workarounds.py: auto | on | off
    gdb: str | None = None  # HOST:PORT of the gdb stub (--gdb; hv1/machine/debug.py)
    gdb_wait: bool = False  # QEMU's -S: every VP waits for gdb before the first instruction
    backend: str = "kvm"  # kvm | emu | auto (hv1/backends/base.py)


@dataclass
class RunResult:
    status: int
    reason: str
    exits: dict[str, int] = field(default_factory=dict)
    # --stats per call (Machine.call_counts): hypercalls by TLFS name, MSR accesses by name, summed over
    # the VPs. Counted where the VMM answers them, so MSRs KVM handles itself do not show.
    hypercalls: dict[str, int] = field(default_factory=dict)
    rdmsrs: dict[str, int] = field(default_factory=dict)
    wrmsrs: dict[str, int] = field(default_factory=dict)


def cpuid_template(
    supported: list[CpuidEntry],
    caps: Caps,
    caps_leaves: dict[int, tuple[int, int, int, int]],
    *,
    user_apic: bool,
) -> list[CpuidEntry]:
    """The guest's CPUID: what the backend's CPU can do, the hypervisor-present bit, and the Hv#1
    leaves of `caps_leaves` instead of the backend's own signature leaves."""
    entries = [e for e in supported if not HV_LEAF_FIRST <= e.function <= HV_LEAF_LAST]
    for e in entries:
        if e.function == 0x80000007 and "ref-tsc" in caps.features:
            e.edx |= 1 << 8  # invariant TSC: advertised with the reference TSC page (TLFS timers.md)
        if e.function == 1:
            e.ecx |= CPUID1_ECX_HYPERVISOR
            if user_apic:
                e.ecx &= ~CPUID1_ECX_TSC_DEADLINE  # hv1's APIC model has no TSC-deadline mode
    for leaf, (a, b, c, d) in sorted(caps_leaves.items()):
        entries.append(CpuidEntry(leaf, 0, a, b, c, d))
    return entries


def cpuid_for_apic_id(template: list[CpuidEntry], apic_id: int) -> list[CpuidEntry]:
    """One VP's copy of the table: its initial APIC ID in leaves 1, 0xB and 0x1F."""
    out = []
    for e in template:
        c = e.copy()
        if c.function == 1:
            c.ebx = (c.ebx & 0x00FFFFFF) | (apic_id << 24)
        elif c.function in (0xB, 0x1F):
            c.edx = apic_id
        out.append(c)
    return out


class SynicEoiHook(ApicHooks):
    """User APIC mode: an EOI of a SINT vector lets the SynIC retry messages queued on that SINT
    (TLFS inter-partition-communication.md, "SynIC Message Flags": EOI and EOM both prompt redelivery)."""

    def __init__(self, partition: Partition, ioapic: IoApic | None = None) -> None:
        self.partition = partition
        self.ioapic = ioapic

    def eoi(self, apic: LocalApic, vector: int, level: bool) -> None:
        vp = self.partition.vp(apic.vp_index)  # LocalApic.vp_index is the VP index (--vp-index-map)
        assert vp is not None
        vp_assist_of(vp).apic_eoi(vector, level)  # EOI assist bookkeeping (may retire one more vector)
        synic_of(vp).eoi(vector)
        if self.ioapic is not None:
            self.ioapic.eoi(vector)  # the EOI broadcast: clears Remote IRR of a level entry, if any


class Vp:
    """One virtual processor: its KVM vCPU, its thread, and (user mode) its local APIC.
    Implements the backend's ExitHandler."""

    def __init__(self, machine: VpHost, index: int, vcpu: Vcpu, apic: LocalApic | None) -> None:
        self.m = machine
        self.index = index
        self.vp_index = machine.vp_indexes[index]  # HV_VP_INDEX: what hv1/hv and the hooks use
        self.assist = enlightenments.vp_assist(machine.partition, self.vp_index)
        self.start_ctx: InitialVpContext | None = None
        self.vcpu = vcpu
        self.apic = apic
        hv_vp = machine.partition.vp(self.vp_index)  # by VP index, never by list position
        assert hv_vp is not None
        self.hv_vp = hv_vp
        self.synic = synic_of(self.hv_vp)
        # Kernel APIC mode: this VP's SINTs mirrored into KVM's AutoEOI bitmap (hv1/machine/auto_eoi.py).
        self.kernel_auto_eoi = (
            KernelAutoEoi(vcpu.set_msr) if machine.kernel_auto_eoi and isinstance(vcpu, KvmVcpu) else None
        )
        self._sint_generation = -1  # the SynIC's sint_generation last mirrored
        self._cr8_entered = 0  # user APIC mode: the CR8 the guest last entered with (kvm_run.cr8)
        self.nmi_pending = False  # user APIC mode: an NMI IPI for this VP, injected before the next entry
        self.wake = threading.Event()
        self.started = index == 0  # APs wait for INIT/SIPI
        # Ran at least once since the partition was created or reset: HvCallStartVirtualProcessor
        # starts only a VP that never ran (hv/hypercalls/vp_calls.py "A VP that has run"); an INIT
        # does not clear it, so both APIC modes answer alike (kernel mode never sees the INIT).
        self.has_run = self.started
        self.sipi_vector: int | None = None
        self.init_pending = False
        self.exit_counts = [0] * 64
        # --stats: MSR index -> count (RunResult.rdmsrs / wrmsrs; hypercalls: the partition's counters)
        self.rdmsr_counts: collections.Counter[int] = collections.Counter()
        self.wrmsr_counts: collections.Counter[int] = collections.Counter()
        self.workaround_count = 0  # emulation failures turned into #BP or skipped (host_workarounds)
        self.tlb_flushes = 0
        self._trace_exits = machine.tracer.wants("exits")
        self._timer_armed: int | None = None
        self._stimer_armed: int | None = None
        self._stimer_lock = threading.Lock()
        self.thread: threading.Thread | None = None
        # Work other threads need done on this VP's own thread while it is out of guest mode (a
        # TLB flush must happen on the target vCPU). Serviced before every entry and while waiting.
        self._work: collections.deque[Callable[[], None]] = collections.deque()
        # True while this VP holds the park lock and waits for the others to park
        # (VpHost._with_vps_parked); work that must not run then (a gdb park) waits in the list.
        self.parking_others = False
        self.after_parking_others: list[Callable[[], None]] = []

    # ---- ExitHandler ----
    def count_exit(self, reason: int) -> None:
        self.assist.after_exit()  # a lazy EOI the guest did shows in the APIC before anything reads it
        self.exit_counts[reason & 63] += 1
        if self.apic is not None:
            self._cr8_from_guest(self.apic)  # before any handler reads the TPR
        if not self.started and self.apic is None:
            # Kernel APIC mode: KVM handled this AP's INIT/SIPI itself; an exit means it is running.
            self.started = self.has_run = True
        if self._trace_exits:
            self.m.tracer.emit("exits", self.index, EXIT_NAMES.get(reason, str(reason)))

    def _cr8_from_guest(self, apic: LocalApic) -> None:
        """CR8 is TPR[7:4] (SDM "Task Priority in IA-32e Mode"). With no in-kernel APIC, KVM keeps
        CR8 itself: it loads it from kvm_run at every KVM_RUN and stores it back there when KVM_RUN
        returns (an exit or an interrupted run alike). A value other than the one the guest entered
        with is therefore a MOV to CR8 by the guest, which sets TPR[7:4] and clears TPR[3:0]."""
        cr8 = self.vcpu.cr8()
        if cr8 != self._cr8_entered:
            self._cr8_entered = cr8
            apic.set_cr8(cr8)

    def _cr8_to_guest(self, apic: LocalApic) -> None:
        """The CR8 the guest runs with next: TPR[7:4], however the TPR was written meanwhile (xAPIC
        page, x2APIC MSR, HV_X64_MSR_TPR, INIT)."""
        cr8 = apic.get_cr8()
        self.vcpu.set_cr8(cr8)
        self._cr8_entered = cr8

    def io_out(self, port: int, size: int, value: int) -> None:
        if port == HYPERCALL_PORT and size == 1 and self.m.partition.hypercall_page_enabled():
            self._hypercall()
            return
        self.m.bus.write(self.index, port, size, value)

    def io_in(self, port: int, size: int) -> int:
        return self.m.bus.read(self.index, port, size)

    def _hypercall(self) -> None:
        try:
            self.m.partition.hypercall(self.vp_index, self.vcpu)
        except GuestException as e:
            # A fault: RIP back on the trapping `out` (2 bytes) so the exception reports it.
            self.vcpu.set("rip", self.vcpu.get("rip") - 2)
            self.vcpu.inject_exception(e.vector, e.error_code)

    def apic_mmio_read(self, addr: int, size: int) -> int | None:
        """hv1's xAPIC page (user APIC mode), or None when `addr` is not on it."""
        apic = self.apic
        if apic is not None:
            base = apic.mmio_base()  # None in x2APIC mode or when disabled: the page is not decoded
            if base is not None and base <= addr < base + 0x1000:
                return apic.mmio_read(addr - base, size)
        return None

    def apic_mmio_write(self, addr: int, size: int, value: int) -> bool:
        """A write to hv1's xAPIC page (user APIC mode); False when `addr` is not on it."""
        apic = self.apic
        if apic is not None:
            base = apic.mmio_base()
            if base is not None and base <= addr < base + 0x1000:
                apic.mmio_write(addr - base, size, value)
                return True
        return False

    def mmio_read(self, addr: int, size: int) -> int:
        v = self.apic_mmio_read(addr, size)
        if v is not None:
            return v
        if self.m.ioapic.contains(addr):
            return self.m.ioapic.mmio_read(addr, size)
        if self.m.tracer.wants("mmio"):
            self.m.tracer.emit("mmio", self.index, "read-unassigned", addr=addr, size=size)
        return (1 << (8 * size)) - 1

    def mmio_write(self, addr: int, size: int, value: int) -> None:
        page = self.m.hypercall_page_gpa
        if page is not None and page <= addr < page + 0x1000:
            # A guest write to the read-only hypercall page: discarded, and #GP as the TLFS says. KVM
            # has retired the instruction before userspace sees the write (RIP past it); a fault's
            # frame must hold the instruction's RIP, so RIP goes back to it where it is found (a MOV
            # store, STOS, MOVS or PUSH, hv1/machine/instruction_start.py, with the registers it
            # moved put back: a fault leaves them as before the instruction, SDM Vol. 3 §6.5; a
            # REP STOS/MOVS's element is its own fault point, RCX counting the ones done; else
            # caps.DEVIATIONS).
            self.m.hypercall_page_writes += 1
            if self.vcpu.io_rip_after:
                ctx = self.vcpu.get_context()
                found = retired_store_start(self.vcpu, self.m.partition.memory, ctx, addr, size, value)
                if found is not None:
                    self.vcpu.set("rip", found.start)
                    for name, v in found.rewind:
                        self.vcpu.set(name, v)
            if self.m.tracer.wants("mmio"):
                self.m.tracer.emit("mmio", self.index, "hypercall-page-write-gp", addr=addr, size=size)
            self.vcpu.inject_exception(GP_VECTOR, 0)
            return
        d = self.m.debugger
        if d is not None and d.watched_write(self, addr, size, value):
            return  # a store to a page write-protected for a gdb watchpoint (hv1/machine/write_watch.py)
        if self.apic_mmio_write(addr, size, value):
            return
        if self.m.ioapic.contains(addr):
            self.m.ioapic.mmio_write(addr, size, value)
            return
        if self.m.tracer.wants("mmio"):
            self.m.tracer.emit("mmio", self.index, "write-unassigned", addr=addr, size=size, value=value)

    def rdmsr(self, index: int) -> int | None:
        self.rdmsr_counts[index] += 1
        try:
            if self.m.partition.owns_msr(index):
                return self.m.partition.rdmsr(self.vp_index, index)
            if self.apic is not None and (index == APIC_MSR_BASE or X2APIC_FIRST <= index <= X2APIC_LAST):
                return self.apic.msr_read(index)
        except GuestException:
            return None
        if self.m.tracer.wants("msrs"):
            self.m.tracer.emit("msrs", self.index, "rdmsr-unknown", msr=index, result="#GP")
        return None

    def wrmsr(self, index: int, value: int) -> bool:
        self.wrmsr_counts[index] += 1
        try:
            if self.m.partition.owns_msr(index):
                self.m.partition.wrmsr(self.vp_index, index, value)
                return True
            if self.apic is not None and (index == APIC_MSR_BASE or X2APIC_FIRST <= index <= X2APIC_LAST):
                self.apic.msr_write(index, value)
                if index == APIC_MSR_BASE:
                    self._publish_apic_base()
                return True
        except GuestException:
            return False
        if self.m.tracer.wants("msrs"):
            self.m.tracer.emit("msrs", self.index, "wrmsr-unknown", msr=index, value=value, result="#GP")
        return False

    def _publish_apic_base(self) -> None:
        """User APIC mode: CPUID.01H:EDX[9] follows IA32_APIC_BASE.EN (SDM "CPUID" / "Local APIC
        Status and Location"). The guest's CPUID is KVM's and cannot be replaced after the first
        KVM_RUN, but KVM flips that one bit itself whenever it learns a new APIC base, so hv1 tells
        it (KvmVcpu.set_apic_base). A value KVM refuses leaves the bit as it was (traced)."""
        assert self.apic is not None
        base = self.apic.apic_base
        if not self.vcpu.set_apic_base(base):
            self.m.tracer.emit("apic", self.index, "apic-base-not-mirrored", base=base)

    def poll_stimers(self, force: bool = False) -> None:
        """Fire due synthetic timers and (re)arm the host scheduler at the next deadline (reference
        time → host monotonic ns). Runs on the VP thread before entry and from the scheduler thread."""
        with self._stimer_lock:
            d = self.m.partition.time.poll_vp(self.vp_index)
            if d != self._stimer_armed or force:
                self._stimer_armed = d
                key = ("stimer", self.index)
                at = None if d is None else self.m.reftime.host_ns_at(d)
                if at is None:
                    self.m.scheduler.cancel(key)
                else:
                    self.m.scheduler.schedule(key, at, self._stimer_due)

    def _stimer_due(self) -> None:
        # On the scheduler thread: deliver from here (the partition lock serializes), then re-arm.
        self.poll_stimers(force=True)

    def before_entry(self) -> None:
        if self._work:
            self.service_work()
        self.poll_stimers()
        if self.synic.has_pending:
            self.synic.rescan()  # queued messages: retried even when no EOI/EOM is visible to hv1
        self.assist.after_exit()  # before the APIC is evaluated (EOI assist)
        apic = self.apic
        if apic is None:
            mirror = self.kernel_auto_eoi
            if mirror is not None and self.synic.sint_generation != self._sint_generation:
                self._sint_generation = self.synic.sint_generation
                mirror.sync(self.synic.sints)  # before the guest can take a SINT interrupt
            return
        self._cr8_from_guest(apic)  # KVM_RUN may also have returned without an exit (EINTR)
        if self.init_pending:
            self._enter_wait_for_sipi()
            self._cr8_to_guest(apic)  # INIT cleared the TPR
            return
        if self.nmi_pending:
            self.nmi_pending = False
            self.vcpu.inject_nmi()
        now = time.monotonic_ns()
        apic.poll_timer(now)
        deadline = apic.timer_deadline()
        if deadline != self._timer_armed:
            self._timer_armed = deadline
            if deadline is None:
                self.m.scheduler.cancel(("lvt", self.index))
            else:
                self.m.scheduler.schedule(("lvt", self.index), deadline, self.kick)
        vcpu = self.vcpu
        self._cr8_to_guest(apic)
        vec = inject_pending(apic, vcpu)  # keeps the window open while a vector is left (AutoEOI)
        if vec is not None:
            self.assist.interrupt_injected(vec)
            if self.m.tracer.wants("irq"):
                self.m.tracer.emit("irq", self.index, "inject", vector=vec)

    def halted(self) -> None:
        """HLT (user APIC mode): sleep until an interrupt can be taken, INIT, or stop."""
        self.sleep(wake_with_if_clear=False)

    def sleep(self, wake_with_if_clear: bool) -> None:
        """Sleep on the host until an interrupt is pending (and IF=1, unless `wake_with_if_clear`:
        the guest-idle MSR wakes "even if the interrupt is masked", TLFS vp-properties.md), an INIT,
        or the end of the run. Work posted to this VP is done meanwhile."""
        apic = self.apic
        assert apic is not None
        while not self.vcpu.stop_requested and not self.init_pending:
            if self._work:
                self.service_work()
            self.poll_stimers()
            apic.poll_timer(time.monotonic_ns())
            if apic.pending_vector() is not None and (wake_with_if_clear or self.vcpu.if_flag()):
                return
            if self.nmi_pending:
                return  # an NMI ends HLT whatever IF says
            deadline = apic.timer_deadline()
            timeout = None if deadline is None else max(0.0, (deadline - time.monotonic_ns()) / 1e9)
            self.wake.wait(timeout)
            self.wake.clear()

    def fatal(self, kind: str, detail: str) -> None:
        self.m.fatal(self, kind, detail, EXIT_GUEST_FATAL)

    def debug_stop(self, vector: int, pc: int, dr6: int, failed_int3: bool) -> bool:
        d = self.m.debugger
        return d is not None and d.debug_stop(self, vector, pc, dr6, failed_int3)

    def reset_state(self) -> None:
        """Power-on state of the VP's VMM-side bookkeeping (the partition reset does the vCPU)."""
        self.started = self.has_run = self.index == 0
        self.sipi_vector = None
        self.init_pending = False
        self.nmi_pending = False
        self._work.clear()
        self.start_ctx = None
        self._timer_armed = None
        self._stimer_armed = None
        self._sint_generation = -1
        if self.kernel_auto_eoi is not None:
            self.kernel_auto_eoi.forget()
        if self.apic is not None:
            self.vcpu.set_cr8(0)  # power-on TPR; nothing stale from kvm_run is taken for a guest write
            self._cr8_entered = 0
        self.m.scheduler.cancel(("lvt", self.index))
        self.m.scheduler.cancel(("stimer", self.index))
        if self.apic is not None:
            self.apic.reset()

    # ---- work done on this VP's thread for others ----
    def post_work(self, fn: Callable[[], None]) -> None:
        self._work.append(fn)
        self.kick()
        d = self.m.debugger
        if d is not None:
            d.wake()  # a VP gdb holds waits on the debugger's condition, outside KVM_RUN: no kick reaches it

    def service_work(self) -> None:
        while self._work:
            self._work.popleft()()

    def flush_tlb(self) -> None:
        """Flush this vCPU's guest TLB, global entries too (on its own thread)."""
        self.vcpu.flush_tlb()
        self.tlb_flushes += 1

    # ---- lifecycle ----
    def kick(self) -> None:
        # Something wants this VP (an interrupt, a flush, a timer, the end of the run): a rep
        # hypercall in progress yields at its next element (TLFS hypercall-interface.md "Hypercall
        # Continuation"), so the VP takes it before finishing the list.
        self.hv_vp.preempt_requested = True
        self.wake.set()
        self.vcpu.kick()

    def deliver_init(self) -> None:
        if self.index == 0 and self.started:
            # INIT to the BSP of a running system is a reset of that CPU; test kernels never do it.
            self.m.tracer.emit("vp", self.index, "init-ignored")
            return
        # INIT puts the processor in wait-for-SIPI at once (Intel SDM 10.4.7.3): from here a SIPI is
        # accepted and latched even before this VP's thread has left the guest. A VP that was running
        # is kicked out and its thread goes back to waiting; one already waiting just stays there.
        with self.m.start_lock:
            was_running = self.started
            self.started = False
            self.sipi_vector = None
            self.start_ctx = None
            if was_running:
                self.init_pending = True
        if was_running:
            self.kick()
        elif self.apic is not None:
            self.apic.init()
            self.m.tracer.emit("vp", self.index, "init")

    def deliver_nmi(self) -> None:
        """An NMI IPI to this VP (user APIC mode; SDM "NMI" delivery mode): injected with KVM_NMI on
        this VP's own thread before its next entry. A VP waiting for SIPI does not take it."""
        if not self.started:
            self.m.tracer.emit("vp", self.index, "nmi-dropped-wait-for-sipi")
            return
        self.nmi_pending = True
        self.kick()

    def deliver_sipi(self, vector: int) -> None:
        with self.m.start_lock:
            if self.started or self.sipi_vector is not None or self.start_ctx is not None:
                return
            self.sipi_vector = vector
        self.wake.set()

    def try_start(self, ctx: InitialVpContext) -> bool:
        """HvCallStartVirtualProcessor: claim a VP that waits for SIPI (atomic with deliver_sipi).

        User APIC mode: the VP's thread waits in _wait_for_sipi and loads the context. Kernel APIC
        mode: KVM holds the AP in KVM_MP_STATE_UNINITIALIZED inside KVM_RUN; the kick brings its thread
        out, and the context is loaded and the vCPU made runnable there (vCPU ioctls belong to the
        vCPU's thread). An AP that KVM started through INIT/SIPI counts as started from its first
        exit; a SIPI racing with this call on the same AP is the guest's own race."""
        with self.m.start_lock:
            if self.has_run or self.started or self.sipi_vector is not None or self.start_ctx is not None:
                return False
            self.start_ctx = ctx
        if self.apic is None:
            self.post_work(self._start_in_kernel_mode)
        else:
            self.wake.set()
        return True

    def _start_in_kernel_mode(self) -> None:
        ctx = self.start_ctx
        if ctx is None or self.started:
            return
        if self._load_start_context(ctx):
            self.vcpu.make_runnable()
        # else KVM keeps the AP in KVM_MP_STATE_UNINITIALIZED: stopped, waiting for INIT/SIPI

    def _load_start_context(self, ctx: InitialVpContext) -> bool:
        """Load a StartVirtualProcessor context on this VP's thread. If KVM refuses it (hv validated
        it, so this is a check hv1 does not know of), nothing is loaded and the VP stays stopped: it
        waits for INIT/SIPI or another HvCallStartVirtualProcessor, as if the call had not been made.
        Never a VMM failure: the context is guest input."""
        self.m.tracer.emit("vp", self.index, "start-vp", rip=ctx.rip)
        try:
            self.vcpu.set_initial_context(ctx)
        except ContextRejected as e:
            self.m.partition.counters["start_vp.load_rejected"] += 1
            self.m.tracer.emit("vp", self.index, "start-vp-load-rejected", reason=str(e))
            with self.m.start_lock:
                if self.start_ctx is ctx:
                    self.start_ctx = None
            return False
        self.started = self.has_run = True
        return True

    def _enter_wait_for_sipi(self) -> None:
        """This VP's thread after an INIT that found it running (deliver_init already reset the
        start state; a SIPI may even be latched by now)."""
        self.init_pending = False
        self.nmi_pending = False  # INIT discards an NMI not taken yet
        if self.apic is not None:
            self.apic.init()
        self.m.tracer.emit("vp", self.index, "init")
        self._wait_for_sipi()

    def _wait_for_sipi(self) -> None:
        while True:
            while not self.vcpu.stop_requested and self.sipi_vector is None and self.start_ctx is None:
                if self._work:
                    self.service_work()
                self.wake.wait()
                self.wake.clear()
            if self.vcpu.stop_requested:
                return
            ctx = self.start_ctx
            if ctx is not None:
                if self._load_start_context(ctx):
                    return
                continue  # refused by KVM: still stopped, back to waiting
            vector = self.sipi_vector
            if vector is None:
                continue
            self.m.tracer.emit("vp", self.index, "sipi", vector=vector)
            self.vcpu.set_real_mode_start(vector)
            self.started = self.has_run = True
            return

    def thread_main(self) -> None:
        # HV_X64_MSR_VP_RUNTIME counts this thread's CPU time: time in guest mode (a halted vCPU
        # sleeps and costs none), plus the VMM's exit handling on its behalf.
        self.m.partition.time.vp_runtime[self.vp_index].bind_thread_clock()
        try:
            if self.apic is not None and not self.started:
                self._wait_for_sipi()
            self.vcpu.run(self)
        except Exception as e:  # an hv1 bug: stop this partition cleanly with a diagnostic
            self.m.fatal(
                self, "internal-fault", f"{type(e).__name__}: {e}\n{traceback.format_exc()}", EXIT_INTERNAL
            )


class VpHost(abc.ABC):
    """A partition that runs: its VPs and what the partition (hv1/hv) asks of them as a set, the
    InterruptSink and EnlightenmentHooks side. The Machine (the partition hv1 boots) and
    each child partition a virtualization host runs (hv1/machine/child.py) are one. The attributes
    below are what a Vp uses of its host."""

    partition: Partition
    vp_indexes: list[int]
    vps: list[Vp]
    vp_by_index: dict[int, Vp]
    kernel_auto_eoi: bool
    tracer: Tracer
    bus: IoBus
    ioapic: IoApic
    debugger: MachineDebugTarget | None
    hypercall_page_gpa: int | None
    hypercall_page_writes: int
    reftime: ReferenceTime
    scheduler: Scheduler
    start_lock: threading.Lock
    _stop: threading.Event
    _park_lock: threading.Lock

    @abc.abstractmethod
    def fatal(self, vp: Vp, kind: str, detail: str, status: int) -> None:
        """A VP cannot go on: the Machine stops the run with `status`, a child tells its parent."""

    def request_interrupt(self, vp_index: int, vector: int, auto_eoi: bool = False) -> None:
        """A fixed interrupt into hv1's local APIC of the VP (user APIC mode)."""
        vp = self.vp_by_index[vp_index]
        assert vp.apic is not None
        vp.apic.accept(vector, auto_eoi=auto_eoi)
        vp.kick()

    def kick(self, vp_index: int) -> None:
        self.vp_by_index[vp_index].kick()

    def guest_idle(self, vp_index: int) -> None:
        """HV_X64_MSR_GUEST_IDLE read (user APIC mode): the VP idles until an interrupt arrives."""
        vp = self.vp_by_index[vp_index]
        if vp.apic is not None:
            vp.sleep(wake_with_if_clear=True)

    def start_vp(self, vp_index: int, ctx: InitialVpContext) -> bool:
        """HvCallStartVirtualProcessor (under the partition lock: must not block)."""
        vp = self.vp_by_index.get(vp_index)
        return vp is not None and vp.try_start(ctx)

    def yield_vp(self, vp_index: int) -> None:
        os.sched_yield()

    def _current_vp(self) -> Vp | None:
        me = threading.get_ident()
        return next((vp for vp in self.vps if vp.vcpu.thread_id == me), None)

    def _with_vps_parked(self, fn: Callable[[], None]) -> None:
        """Run `fn` while every other VP waits outside KVM_RUN. One parker at a time; a VP waiting
        for its turn (or for the others) keeps serving its own work queue, so it can be parked by
        the current parker meanwhile and two parkers cannot deadlock."""
        me = self._current_vp()

        def serve_while(wait: Callable[[], bool]) -> bool:
            while not wait():
                if me is not None:
                    me.service_work()
                # The run is ending or being reset (VP threads stop without serving work; a reset
                # lays the slots out again itself): give up rather than wait for parkers that left.
                if self._stop.is_set() or (me is not None and me.vcpu.stop_requested):
                    return False
            return True

        if not serve_while(lambda: self._park_lock.acquire(timeout=0.0002)):
            return
        if me is not None:
            me.parking_others = True
        release = threading.Event()
        try:
            parked: list[threading.Event] = []
            for vp in self.vps:
                if vp is me or vp.thread is None or not vp.thread.is_alive():
                    continue
                ev = threading.Event()

                def park(ev: threading.Event = ev) -> None:
                    ev.set()
                    release.wait()

                vp.post_work(park)
                parked.append(ev)
            for ev in parked:
                if not serve_while(lambda ev=ev: ev.wait(0.0002)):  # type: ignore[misc]
                    return
            fn()
        finally:
            release.set()
            self._park_lock.release()
            if me is not None:
                me.parking_others = False
                held, me.after_parking_others = me.after_parking_others, []
                for work in held:
                    me.post_work(work)

    def flush_tlb(self, src_vp: int, targets: Iterable[int]) -> None:
        """Flush the guest TLB of every target VP and return only when all are done (TLFS
        virtual-mmu.md: the flush hypercalls complete when the flush has happened on each target).
        Running targets are kicked out of guest mode and flush before they re-enter. While it waits,
        the caller services its own queue, so two VPs flushing each other cannot deadlock. Callers
        must not hold the partition lock."""
        pending: list[threading.Event] = []
        for t in set(targets):
            vp = self.vp_by_index[t]
            if t == src_vp:
                vp.flush_tlb()
                continue
            done = threading.Event()

            def work(vp: Vp = vp, done: threading.Event = done) -> None:
                vp.flush_tlb()
                done.set()

            vp.post_work(work)
            pending.append(done)
        me = self.vp_by_index[src_vp]
        for done in pending:
            while not done.wait(0.0002):
                me.service_work()
                if self._stop.is_set():
                    return


class Machine(VpHost):
    def __init__(
        self,
        cfg: MachineConfig,
        tracer: Tracer | None = None,
        serial_out: BinaryIO | int | None = None,
        diag: TextIO | None = None,
    ) -> None:
        if not 1 <= cfg.cpus <= MAX_CPUS:
            raise UsageError(f"--cpus must be between 1 and {MAX_CPUS}, not {cfg.cpus}")
        if cfg.apic not in APIC_MODES:
            raise UsageError(f"--apic must be one of {', '.join(APIC_MODES)}")
        if not MIN_MEMORY <= cfg.memory <= MAX_MEMORY:
            raise UsageError(f"--memory must be between {MIN_MEMORY >> 20} MiB and {MAX_MEMORY >> 20} MiB")
        if cfg.memory % 0x1000:
            raise UsageError("--memory must be a multiple of 4 KiB")
        self.cfg = cfg
        self.tracer = tracer or Tracer()
        self.diag = diag or sys.stderr
        self._stop = threading.Event()
        self._stop_lock = threading.Lock()
        self.result: RunResult | None = None
        self.fatal_report: str | None = None

        try:
            with open(cfg.kernel, "rb") as f:
                kernel = f.read()
        except FileNotFoundError:
            raise UsageError(f"kernel image not found: {cfg.kernel}") from None
        except IsADirectoryError:
            raise UsageError(f"kernel image is a directory: {cfg.kernel}") from None
        except PermissionError:
            raise UsageError(f"cannot read kernel image: {cfg.kernel}") from None
        mods: list[tuple[multiboot.Module, bytes]] = []
        for m in cfg.modules:
            try:
                with open(m.path, "rb") as f:
                    mods.append((m, f.read()))
            except OSError as e:
                raise UsageError(f"cannot read module {m.path}: {e.strerror}") from None
        initrd: bytes | None = None
        if cfg.initrd is not None:
            try:
                with open(cfg.initrd, "rb") as f:
                    initrd = f.read()
            except OSError as e:
                raise UsageError(f"cannot read initrd {cfg.initrd}: {e.strerror}") from None
        try:
            self.workarounds = host_workarounds.detect(cfg.host_workarounds)
        except ValueError as e:
            raise UsageError(f"--host-workarounds: {e}") from None
        try:
            caps = parse_profile(cfg.hv, apic_mode=cfg.apic)
        except ValueError as e:
            raise UsageError(f"--hv: {e}") from None
        injector: Injector | None = None
        try:
            injector = cfg.inject if isinstance(cfg.inject, Injector) else Injector.parse(cfg.inject)
        except InjectError as e:
            raise UsageError(str(e)) from None
        if not injector.rules:
            injector = None  # no rule: no hook does anything (partition.inject stays None)

        backend = resolve_backend(cfg.backend)
        # Load first: every mistake in the image is reported before /dev/kvm is even opened.
        self.ram = GuestRam(cfg.memory)
        self._kernel_image, self._module_images, self._initrd_image = kernel, mods, initrd
        self.apic_ids = list(range(cfg.cpus))
        self.boot = self._load()
        if self.boot.linux is not None:
            lb = self.boot.linux
            self.tracer.emit("vp", -1, "linux-loaded", kind=lb.kind, entry=lb.entry.rip, note=lb.note)
        self.vm = open_vm(backend, cfg.apic)
        self.vm.add_ram(self.ram)
        if cfg.apic == "kernel":
            self.vm.use_kernel_apic()
        msr_ranges = [SYNTHETIC_MSRS, NESTED_SYNTHETIC_MSRS]
        if cfg.apic == "user":
            msr_ranges.append((APIC_MSR_BASE, APIC_MSR_BASE))
        self.vm.route_msrs_to_userspace(msr_ranges)

        self.scheduler = Scheduler(on_error=self._scheduler_error)
        self.vp_indexes = list(cfg.vp_index_map) if cfg.vp_index_map else list(range(cfg.cpus))
        self.apic_id_of = dict(zip(self.vp_indexes, self.apic_ids, strict=True))
        self.start_lock = threading.Lock()
        # vCPUs before the partition: reference time is defined from the guest TSC (hv/reftime.py),
        # which each backend knows how to read from the host (kvm/tsc.py, emu/tsc.py).
        vcpus = [self.vm.create_vcpu(i) for i in range(cfg.cpus)]
        # Kernel APIC mode (KVM): SINT AutoEOI through KVM's SynIC AutoEOI bitmap
        # (hv1/machine/auto_eoi.py); a host without it gets AutoEOI deprecated instead, so only what
        # works is advertised.
        self.kernel_auto_eoi = cfg.apic == "kernel" and self._activate_kvm_synic(vcpus)
        if cfg.apic == "kernel" and not self.kernel_auto_eoi:
            caps = without_auto_eoi(caps)
        self.tsc_khz = self.vm.tsc_hz // 1000
        self.reftime = ReferenceTime(self.vm.guest_tsc(), self.vm.tsc_hz)
        self.partition = Partition(
            caps, cfg.cpus, self.ram, self.reftime, irq=self, hooks=self, tracer=self.tracer,
            apic_ids=self.apic_ids, boot_zeroed=self._boot_zeroed_ranges(), vp_indexes=self.vp_indexes,
        )  # fmt: skip
        self.partition.time.on_change(self._time_changed)
        self.partition.time.set_min_period(max(self.vm.min_timer_period_ns // 100, 1000))
        # A partition that may manage others (`--hv root`, or +create-partitions / +memory-pool) is the
        # root of a partition engine whose RAM is this machine's (docs/partitions.md).
        self.hypervisor: Hypervisor | None = None
        self.child_runtime: ChildRuntime | None = None
        if caps.privileges & (PartitionPrivilege.CreatePartitions | PartitionPrivilege.AccessMemoryPool):
            self.hypervisor = Hypervisor(
                cfg.memory >> 12, root_privileges=caps.privileges, ram=self.ram, tracer=self.tracer
            )
            self.partition.attach_hypervisor(self.hypervisor, self.hypervisor.root_id)
            # Its children run on the same backend; their intercepts reach this guest's SynIC.
            from hv1.machine.child import ChildRuntime

            self.child_runtime = ChildRuntime(
                self.hypervisor,
                self.ram,
                self._deliver_to_root,
                backend=backend,
                tracer=self.tracer,
                diag=self.diag,
            )
        if injector is not None:
            self.partition.set_injection(injector)
        self._reset_requested = False
        self.resets = 0
        self._park_lock = threading.Lock()
        self.hypercall_page_gpa: int | None = None
        self.hypercall_page_writes = 0

        self.router: ApicRouter | None = None
        apics: list[LocalApic | None] = [None] * cfg.cpus
        if cfg.apic == "user":
            # The APIC model follows the guest's CPUID, as KVM's own APIC does: x2APIC (LVR bit 24,
            # APIC_BASE.EXTD) and MAXPHYADDR (reserved APIC_BASE bits, so KVM accepts every base hv1 does).
            host_cpuid = {e.function: e for e in self.vm.supported_cpuid() if e.index == 0}
            x2apic = 1 in host_cpuid and bool(host_cpuid[1].ecx & (1 << 21))
            phys_bits = host_cpuid[0x80000008].eax & 0xFF if 0x80000008 in host_cpuid else 36
            apics = [
                LocalApic(
                    self.apic_ids[i],
                    now_ns=time.monotonic_ns,
                    bsp=(i == 0),
                    tracer=self.tracer,
                    vp_index=self.vp_indexes[i],
                    x2apic_supported=x2apic,
                    phys_addr_bits=phys_bits or 36,
                    min_periodic_ns=self.vm.min_timer_period_ns,
                )
                for i in range(cfg.cpus)
            ]
            self.router = ApicRouter(
                [a for a in apics if a is not None],
                kick=lambda vp_index: self.vp_by_index[vp_index].kick(),
                on_init=lambda vp_index: self.vp_by_index[vp_index].deliver_init(),
                on_sipi=lambda vp_index, vec: self.vp_by_index[vp_index].deliver_sipi(vec),
                on_nmi=lambda vp_index: self.vp_by_index[vp_index].deliver_nmi(),
            )
        enlightenments.attach(self.partition, self.router.apic_for_vp if self.router is not None else None)
        self.vps: list[Vp] = []
        # The I/O APIC of the split irqchip (both APIC modes: KVM never models it here).
        self.ioapic = IoApic(self._deliver_msi)
        if self.router is not None:
            hooks = SynicEoiHook(self.partition, self.ioapic)
            for a in apics:
                if a is not None:
                    a.hooks = hooks
        cpuid = self._cpuid_template(caps_leaves=self.partition.cpuid_leaves())
        # What the guest's CPUID allows (MAXPHYADDR, CR4/EFER bits): StartVirtualProcessor contexts are
        # checked against it (hv/guest_cpu.py).
        self.partition.guest_cpu = GuestCpu.from_leaves(
            {(e.function, e.index): (e.eax, e.ebx, e.ecx, e.edx) for e in cpuid}
        )
        for i in range(cfg.cpus):
            vcpu = vcpus[i]
            vcpu.set_cpuid(cpuid_for_apic_id(cpuid, self.apic_ids[i]))
            self.vps.append(Vp(self, i, vcpu, apics[i]))
            if self.workarounds.enabled and isinstance(vcpu, KvmVcpu):
                vcpu.on_emulation_failure = self._emulation_failure_handler(self.vps[-1])
        self.vp_by_index = {vp.vp_index: vp for vp in self.vps}
        self.vps[0].vcpu.set_entry_state(self.boot.entry)
        self.debugger: MachineDebugTarget | None = None
        if cfg.gdb is not None:
            self.debugger = self._attach_debugger(cfg.gdb, cfg.gdb_wait)

        self.bus = IoBus(self.tracer)
        self.uart = Uart16550(serial_out if serial_out is not None else sys.stdout.buffer,
                              irq=lambda level: self.ioapic.set_irq(PIN_COM1, level))  # fmt: skip
        self.bus.register(self.uart, COM1, 8)
        self.bus.register(DebugExit(self._debug_exit), DEBUG_EXIT_PORT, 4)
        self.bus.register(FwCfg(cfg.cpus, cfg.memory, cfg.append), FW_CFG_PORT_SEL, 2)
        pic = Pic8259Pair()
        for p in (0x20, 0x21, 0xA0, 0xA1):
            self.bus.register(pic, p)
        pit = Pit8254()
        for p in (0x40, 0x41, 0x42, 0x43, 0x61):
            self.bus.register(pit, p)
        self.bus.register(PostPort(), 0x80)
        self.cmos = Cmos(cfg.memory)
        self.bus.register(self.cmos, 0x70, 2)
        i8042 = I8042(self.request_reset)  # the keyboard controller's reset line (reboot=k, FADT RESET_REG)
        self.bus.register(i8042, I8042_DATA)
        self.bus.register(i8042, I8042_COMMAND)
        # Test devices, on by default and as harmless as QEMU's hyperv-testdev.
        self.testdev = HypervTestDev(self.partition.ports, self.tracer)
        self.bus.register(self.testdev, HYPERV_TESTDEV_PORT, 4)
        self.bus.register(TimeTestPort(self.partition.time, self.tracer), TIME_TESTDEV_PORT, 4)
        self.bench_dev = BenchDev(self.partition.ports, self.reftime.now, self.request_interrupt)
        self.bus.register(self.bench_dev, BENCH_DEV_PORT, BENCH_DEV_PORT_COUNT)

    def _deliver_to_root(
        self, parent_id: int, partition_id: int, vp_index: int, kind: int, payload: bytes
    ) -> None:
        """A message for the root guest from one of its children (an intercept, a failure): to
        SINT 0 of the root's first VP (HV_SYNIC_INTERCEPTION_SINT_INDEX; hv1 names no other VP:
        docs/partitions.md). A SINT that cannot take it drops it, traced."""
        st = self.partition.ports.post_message(self.vp_indexes[0], INTERCEPTION_SINT, kind, payload[:240])
        self.tracer.emit(
            "partitions",
            -1,
            "to-root",
            partition=partition_id,
            vp_index=vp_index,
            type=f"{kind:#x}",
            status=int(st),
        )

    def _activate_kvm_synic(self, vcpus: list[Vcpu]) -> bool:
        """Turn on KVM's SynIC on every vCPU, for its AutoEOI bitmap only (hv1/machine/auto_eoi.py).
        SYNIC2: KVM does not zero SynIC pages it never gets. False if the host cannot, on any vCPU
        (and on a backend that is not KVM: the in-kernel APIC is KVM's)."""
        if not isinstance(self.vm, KvmVm) or not self.vm.system.check(k.KVM_CAP_HYPERV_SYNIC2):
            return False
        try:
            for vcpu in vcpus:
                assert isinstance(vcpu, KvmVcpu)
                vcpu.enable_cap(k.KVM_CAP_HYPERV_SYNIC2)
        except OSError:
            return False
        return True

    def _load(self) -> boot.Boot:
        cfg = self.cfg
        return boot.load_kernel(
            cfg.kernel, self._kernel_image, self.ram, append=cfg.append, modules=self._module_images,
            initrd=self._initrd_image, apic_ids=self.apic_ids, linux_entry=cfg.linux_entry,
            cache_dir=default_cache_dir(),
        )  # fmt: skip

    def _deliver_msi(self, address: int, data: int) -> None:
        """An MSI from the I/O APIC (or any device): to KVM's local APICs, or routed to hv1's."""
        if self.cfg.apic == "kernel":
            assert isinstance(self.vm, KvmVm)  # the kernel APIC mode is KVM's
            try:
                self.vm.signal_msi_raw(address, data)
            except OSError as e:  # a message KVM refuses (the guest programmed it): dropped, traced
                self.tracer.emit("irq", -1, "msi-refused", address=address, data=data, error=e.strerror or "")
            return
        assert self.router is not None
        msi = decode_msi(address, data)
        if msi.delivery_mode not in (0, 1, 4):  # fixed, lowest priority, NMI: what hv1's APIC model takes
            return
        self.router.send_ipi(
            -1, msi.dest, DestMode.LOGICAL if msi.logical else DestMode.PHYSICAL, Shorthand.NONE,
            DeliveryMode(msi.delivery_mode), msi.vector, level=True, trigger_level=msi.level_triggered,
        )  # fmt: skip

    def _emulation_failure_handler(self, vp: Vp) -> Callable[[bytes | None], bool]:
        vcpu = vp.vcpu
        assert isinstance(vcpu, KvmVcpu)  # the workaround layer is KVM's

        def read_insn(rip: int) -> bytes | None:
            s = vcpu.sregs  # the kvm_run sync area: valid at every exit
            gva = rip + (s.cs.base if not s.cr0 & 1 else 0)
            # 15 bytes (the longest instruction) when mapped; the first byte alone at a page end
            for n in (15, 1):
                insn = read_virtual(self.ram, gva, n, s.cr0, s.cr3, s.cr4, s.efer)
                if insn is not None:
                    return insn
            return None

        def read_descriptor(selector: int) -> tuple[int, int] | None:
            """(the GDT descriptor of `selector`, CPL) for LSL; None for an LDT selector or one past
            the GDT limit (TI = 1 would need the LDT: not handled)."""
            s = vcpu.sregs
            index = selector & ~7
            if selector & 4 or index + 7 > s.gdt.limit:
                return None
            raw = read_virtual(self.ram, s.gdt.base + index, 8, s.cr0, s.cr3, s.cr4, s.efer)
            return None if raw is None else (int.from_bytes(raw, "little"), s.cs.dpl)

        def note(action: str, rip: int) -> None:
            vp.workaround_count += 1
            if self.tracer.wants("exits"):
                self.tracer.emit("exits", vp.index, "host-workaround", action=action, rip=rip)

        return lambda reported: host_workarounds.handle_emulation_failure(
            self.workarounds, vp.vcpu, read_insn, note, reported, read_descriptor
        )

    def _attach_debugger(self, spec: str, wait: bool) -> MachineDebugTarget:
        """The gdb stub's hook point: the target adapter and its server (hv1/machine/debug.py)."""
        from hv1.gdbstub.server import parse_address
        from hv1.machine.debug import MachineDebugTarget

        try:
            host, port = parse_address(spec)
        except ValueError as e:
            raise UsageError(str(e)) from None
        if not isinstance(self.vm, KvmVm):
            raise UsageError("--gdb needs --backend kvm (the emulator backend has no debugger interface yet)")
        if not self.vm.system.check(k.KVM_CAP_SET_GUEST_DEBUG):
            raise UsageError("--gdb: this KVM has no KVM_SET_GUEST_DEBUG (breakpoints and single step)")
        block_irq = bool(self.vm.system.check(k.KVM_CAP_SET_GUEST_DEBUG2) & k.KVM_GUESTDBG_BLOCKIRQ)
        # Which debug-register breakpoints this KVM delivers: one throwaway VM, ~1 ms (a host that
        # emulates ring-0 code delivers no data breakpoints; write watchpoints then use page protection).
        try:
            support = guest_debug_probe.host_support(self.vm.system.fd, self.vm.system.vcpu_mmap_size)
        except OSError as e:
            self.diag.write(f"hv1: gdb stub: debug-register probe failed ({e}); using page protection\n")
            support = HwDebugSupport(exec=False, write=False, access=False)
        d = MachineDebugTarget(self, block_irq=block_irq, hw_support=support)
        try:
            d.listen(host, port, wait)
        except OSError as e:
            raise UsageError(f"--gdb {spec}: {e.strerror or e}") from None
        return d

    # ---- CPUID ----
    def _cpuid_template(self, caps_leaves: dict[int, tuple[int, int, int, int]]) -> list[CpuidEntry]:
        entries = cpuid_template(self.vm.supported_cpuid(), self.partition.caps, caps_leaves,
                                 user_apic=self.cfg.apic == "user")  # fmt: skip
        if isinstance(self.vm, KvmVm):
            host_workarounds.adjust_cpuid(self.workarounds, entries)
        return entries

    def _boot_zeroed_ranges(self) -> list[tuple[int, int]]:
        """RAM the loader did not write: still zero since boot (HvExtCallGetBootZeroedMemory)."""
        used = sorted((gpa & ~0xFFF, (gpa + n + 0xFFF) & ~0xFFF) for gpa, n in self.boot.loaded)
        ranges: list[tuple[int, int]] = []
        cursor = 0
        for start, end in used:
            if start > cursor:
                ranges.append((cursor, start - cursor))
            cursor = max(cursor, end)
        if cursor < self.ram.size:
            ranges.append((cursor, self.ram.size - cursor))
        return ranges

    def _scheduler_error(self, e: BaseException) -> None:
        self.fatal(self.vps[0], "internal-fault", f"timer callback failed: {type(e).__name__}: {e}\n"
                   + "".join(traceback.format_exception(e)), EXIT_INTERNAL)  # fmt: skip

    def _time_changed(self) -> None:
        """Reference time was paused/resumed or rescaled: every VP re-arms its timers. Runs under the
        partition lock: take no other lock here."""
        for vp in getattr(self, "vps", []):
            vp._stimer_armed = None
            vp.kick()

    # ---- interfaces the partition uses: InterruptSink, PartitionHooks ----
    def request_interrupt(self, vp_index: int, vector: int, auto_eoi: bool = False) -> None:
        if self.cfg.apic == "kernel":
            self.vm.signal_msi(self.apic_id_of[vp_index], vector)
            return
        super().request_interrupt(vp_index, vector, auto_eoi)

    def request_reset(self) -> None:
        """HV_X64_MSR_RESET: reset the partition — every VP, guest RAM and all Hv state — and boot
        the kernel again (or end the run with status 0 under --no-reboot, as QEMU's -no-reboot).
        Called on a VP thread; the main thread does the work once every VP has stopped."""
        self.tracer.emit("vp", -1, "reset-requested")
        if self.cfg.no_reboot:
            self.stop(0, "guest requested a partition reset (HV_X64_MSR_RESET) with --no-reboot")
            return
        self._reset_requested = True
        self._stop.set()

    def guest_crash(self, vp_index: int, params: tuple[int, ...], message: bytes | None) -> None:
        text = " ".join(f"P{i}={p:#x}" for i, p in enumerate(params))
        self.tracer.emit("crash", vp_index, "guest-crash", params=list(params), message=message or b"")
        self.diag.write(f"hv1: guest crash reported by vp{vp_index}: {text}\n")
        if message:
            self.diag.write("hv1: crash message: " + message.decode("utf-8", "replace").rstrip("\0") + "\n")
        self.diag.flush()
        if self.cfg.on_crash == "stop":
            self.stop(EXIT_GUEST_CRASH, "guest crash notification")

    def hypercall_page_moved(self, gpa: int | None) -> None:
        """Keep the hypercall page read/execute-only for the guest: a read-only memory slot over
        its GPA (TLFS hypercall-interface.md "Hypercall Page"). Memory slots change with every other
        VP parked outside KVM_RUN."""
        self._with_vps_parked(lambda: self._lay_out_readonly_pages(gpa))
        self.hypercall_page_gpa = gpa
        self.tracer.emit("vp", -1, "hypercall-page-readonly", gpa=gpa if gpa is not None else -1)

    def watch_pages_changed(self) -> None:
        """The gdb stub write-protects other pages now (hv1/machine/write_watch.py): lay the slots out
        again with every VP outside KVM_RUN (from the gdb thread, or the main thread after a reset)."""
        self._with_vps_parked(lambda: self._lay_out_readonly_pages(self.hypercall_page_gpa))

    def _lay_out_readonly_pages(self, hypercall_page: int | None) -> None:
        """The guest's read-only RAM: the hypercall page and the pages of gdb write watchpoints."""
        pages = set(self.debugger.watch_pages()) if self.debugger is not None else set()
        if hypercall_page is not None:
            pages.add(hypercall_page)
        self.vm.set_readonly_pages(sorted(pages))

    # ---- running ----
    def _debug_exit(self, status: int) -> None:
        self.stop(status, "debug-exit")

    def stop(self, status: int, reason: str) -> None:
        with self._stop_lock:
            if self.result is None:
                self.result = RunResult(status, reason)
        self._stop.set()

    def fatal(self, vp: Vp, kind: str, detail: str, status: int) -> None:
        """Stop the partition with `status` and a dump. The first outcome of a run stands, except
        that an internal fault replaces a status the run already had (the guest's debug exit, a
        timeout): a failure of hv1 must never read as the guest's odd status (hv1/errors.py)."""
        with self._stop_lock:
            prior = self.result
            if prior is not None and (status != EXIT_INTERNAL or prior.status == EXIT_INTERNAL):
                return
            report = self._dump(vp, kind, detail)
            if prior is not None:
                report = f"hv1: after the run had ended ({prior.reason}, status {prior.status}):\n" + report
            self.fatal_report = report
            self.result = RunResult(status, kind)
        self.diag.write(self.fatal_report)
        self.diag.flush()
        self._stop.set()

    def _dump(self, vp: Vp, kind: str, detail: str) -> str:
        lines = [f"hv1: partition stopped: {kind} on vp{vp.index}", f"hv1: {detail.rstrip()}"]
        try:
            s = vp.vcpu.snapshot()
            vals = [f"{n:>6}={v:016x}" for n, v in s.gprs.items()]
            for i in range(0, len(vals), 4):
                lines.append("  " + "  ".join(vals[i : i + 4]))
            lines.append(
                f"  cr0={s.cr0:#x} cr2={s.cr2:#x} cr3={s.cr3:#x} cr4={s.cr4:#x} efer={s.efer:#x} "
                f"cs={s.cs_selector:#x}(l={s.cs_l:d} db={s.cs_db:d} dpl={s.cs_dpl}) ss={s.ss_selector:#x}"
            )
            rip = s.gprs["rip"] + (s.cs_base if not s.cr0 & 1 else 0)
            code = read_virtual(self.ram, rip, 16, s.cr0, s.cr3, s.cr4, s.efer)
            lines.append(f"  code at rip: {code.hex(' ') if code is not None else '(not mapped)'}")
        except OSError as e:
            lines.append(f"  (registers unavailable: {e})")
        events = self.tracer.last_events()
        if events:
            lines.append("  last trace events:")
            lines.extend("    " + e for e in events[-16:])
        return "\n".join(lines) + "\n"

    def exit_counts(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for vp in self.vps:
            for reason, n in enumerate(vp.exit_counts):
                if n:
                    name = EXIT_NAMES.get(reason, str(reason))
                    totals[name] = totals.get(name, 0) + n
        handled = sum(vp.workaround_count for vp in self.vps)
        if handled:  # emulation failures the host workaround layer turned into #BP or skipped
            totals["host-workaround"] = handled
        return totals

    def call_counts(self) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
        """Hypercalls by TLFS name (the partition's per-call counters: a call that returned, once however
        many continuations it took; an undefined code by its hex value) and MSR reads/writes by name
        (hv1/machine/msr_names.py), summed over the VPs (--stats)."""
        pre = "hypercalls."
        calls = {k[len(pre) :]: n for k, n in self.partition.counters.items() if k.startswith(pre) and n}
        reads: collections.Counter[int] = collections.Counter()
        writes: collections.Counter[int] = collections.Counter()
        for vp in self.vps:
            reads.update(vp.rdmsr_counts)
            writes.update(vp.wrmsr_counts)
        return (
            calls,
            {stats_msr_name(i): n for i, n in reads.items()},
            {stats_msr_name(i): n for i, n in writes.items()},
        )

    def _start_threads(self) -> None:
        for vp in self.vps:
            vp.vcpu.stop_requested = False
            vp.thread = threading.Thread(target=vp.thread_main, name=f"hv1-vp{vp.index}", daemon=True)
            vp.thread.start()

    def _reboot(self) -> None:
        """The power-on state again: RAM cleared and the kernel reloaded, Hv state reset, the BSP at
        the Multiboot entry and the APs waiting for INIT/SIPI. CMOS NVRAM survives, as on a PC."""
        self.resets += 1
        # Hv state first, RAM last: the partition reset drops the overlays without writing RAM, and
        # reloading afterwards makes RAM exactly the fresh image whatever any reset step wrote.
        self.partition.reset()
        self.ram.clear()
        self.boot = self._load()
        self.ioapic.reset()
        self.uart.reset()
        self.vm.set_readonly_pages(())  # every VP thread has stopped: no parking needed
        self.hypercall_page_gpa = None
        self.testdev.reset()
        self.bench_dev.reset()
        for vp in self.vps:
            vp.reset_state()
            vp.vcpu.reset(bsp=vp.index == 0)  # nothing pending or in flight, power-on APIC state
        self.vps[0].vcpu.set_entry_state(self.boot.entry)
        if self.debugger is not None:
            self.debugger.after_reset()
        self.tracer.emit("vp", -1, "reset", count=self.resets)

    def run(self) -> RunResult:
        self.vm.prepare_thread()
        self._start_threads()
        deadline = None if self.cfg.timeout is None else time.monotonic() + self.cfg.timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                # In slices: the kernel may deliver SIGINT to a vCPU thread, and then only the main
                # thread's next wakeup runs Python's handler (a wait for the whole timeout did not
                # see a SIGINT for up to --timeout seconds).
                step = SIGNAL_POLL_S if remaining is None else min(remaining, SIGNAL_POLL_S)
                stopped = self._stop.wait(step)
            except KeyboardInterrupt:
                # Ctrl-C (or the SIGINT a test sends a Linux boot that cannot finish on a host where
                # user space cannot run) stops the partition like a timeout does, so --stats and
                # --profile still report what the run did.
                self.stop(EXIT_INTERRUPTED, "interrupted (SIGINT)")
                break
            if not stopped and remaining is not None and remaining <= SIGNAL_POLL_S:
                self.stop(EXIT_TIMEOUT, f"timeout after {self.cfg.timeout:g} s")
                break
            if not stopped:
                continue
            with self._stop_lock:
                rebooting = self._reset_requested and self.result is None
                self._reset_requested = False
                if rebooting:
                    self._stop.clear()
            if not rebooting:
                break
            self._halt_all()
            self._reboot()
            self._start_threads()
        if self.debugger is not None and self.result is not None:
            self.debugger.machine_stopped(self.result.status)
        self._halt_all()
        self.uart.flush()
        assert self.result is not None
        self.result.exits = self.exit_counts()
        self.result.hypercalls, self.result.rdmsrs, self.result.wrmsrs = self.call_counts()
        return self.result

    def _halt_all(self) -> None:
        for vp in self.vps:
            vp.vcpu.stop_requested = True
        deadline = time.monotonic() + 3.0
        for vp in self.vps:
            while vp.thread is not None and vp.thread.is_alive() and time.monotonic() < deadline:
                vp.kick()
                vp.thread.join(timeout=0.05)

    def close(self) -> None:
        if self.child_runtime is not None and self.hypervisor is not None:
            with self.hypervisor.lock:
                self.child_runtime.close()
        if self.debugger is not None:
            self.debugger.close()
        self.scheduler.stop()
        for vp in self.vps:
            if vp.thread is None or not vp.thread.is_alive():
                vp.vcpu.close()
        self.vm.close()
