"""The backend interface: what hv1/machine needs from whatever runs the guest's instructions.

Two backends implement it: `hv1/backends/kvm` (hardware virtualization through /dev/kvm) and
`hv1/backends/emu` (the Unicorn CPU emulator, QEMU's TCG as a library, for hosts without KVM).
The machine talks to a backend only through the protocols below and the neutral types next to
them, so no ioctl structure or emulator handle leaks into hv1/machine (and none into hv1/hv, which
sees a vCPU only as `VpRegisters`).

A VM owns guest RAM (one `GuestRam` at GPA 0, shared with the host), memory-slot protection (the
read-only hypercall page), the MSR ranges routed to the machine, and the CPUID the backend's CPU
can really do. A vCPU is the register file at an exit, event injection, the start states the
machine puts a processor in (Multiboot entry, an AP after INIT-SIPI, HV_INITIAL_VP_CONTEXT), and
`run(handler)`: the loop that calls the `ExitHandler` for every exit until `stop_requested`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from hv1.backends.memory import GuestRam
from hv1.errors import UsageError
from hv1.hv.hypercalls.vp_calls import InitialVpContext
from hv1.hv.interfaces import VpRegisters
from hv1.machine.entry_state import EntryState

BACKENDS = ("kvm", "emu", "auto")

# Hyper-V's CPUID range; a backend's own signature leaves (KVM's) live here too and must be
# replaced, not merged.
HV_LEAF_FIRST = 0x40000000
HV_LEAF_LAST = 0x400000FF
CPUID1_ECX_X2APIC = 1 << 21
CPUID1_ECX_TSC_DEADLINE = 1 << 24
CPUID1_ECX_HYPERVISOR = 1 << 31

# Exit kinds, numbered as KVM numbers them (linux/kvm.h KVM_EXIT_*) so the KVM backend passes its
# exit reason through untranslated; the emulator reports the same kinds with the same numbers.
EXIT_IO = 2
EXIT_HLT = 5
EXIT_MMIO = 6
EXIT_IRQ_WINDOW_OPEN = 7
EXIT_SHUTDOWN = 8
EXIT_INTR = 10  # a kick (signal / emulator stop request)
EXIT_INTERNAL_ERROR = 17
EXIT_RDMSR = 29
EXIT_WRMSR = 30
EXIT_EXCEPTION = 1  # emu: a CPU exception delivered through the guest IDT by the backend
EXIT_SET_TPR = 11  # KVM_EXIT_SET_TPR; emu: a MOV to or from CR8 (the APIC's TPR, hv1's APIC model)
EXIT_NAMES: Mapping[int, str] = {
    0: "unknown", EXIT_EXCEPTION: "exception", EXIT_IO: "io", 3: "hypercall", 4: "debug",
    EXIT_HLT: "hlt", EXIT_MMIO: "mmio", EXIT_IRQ_WINDOW_OPEN: "irq-window", EXIT_SHUTDOWN: "shutdown",
    9: "fail-entry", EXIT_INTR: "intr", EXIT_INTERNAL_ERROR: "internal-error", 24: "system-event",
    EXIT_SET_TPR: "set-tpr", EXIT_RDMSR: "rdmsr", EXIT_WRMSR: "wrmsr",
}  # fmt: skip


@dataclass(frozen=True)
class MemoryRegion:
    """A range of guest-physical addresses backed by host memory of this process (zero copy): how
    a child partition's GPA map (hv1/hv/gpa_map.py GpaRun) becomes memory slots. `host_address` is
    where the first byte lives (inside the root's GuestRam mapping); not `writable`: a guest write
    exits as MMIO (read-only slot); not `executable`: advisory (KVM slots cannot forbid execution;
    the emulator enforces it)."""

    gpa: int
    host_address: int
    size: int
    writable: bool = True
    executable: bool = True


class ExitHandler(Protocol):
    """What the run loop asks of the machine for each kind of exit."""

    def io_in(self, port: int, size: int) -> int: ...
    def io_out(self, port: int, size: int, value: int) -> None: ...
    def mmio_read(self, addr: int, size: int) -> int: ...
    def mmio_write(self, addr: int, size: int, value: int) -> None: ...
    def rdmsr(self, index: int) -> int | None: ...  # None: inject #GP
    def wrmsr(self, index: int, value: int) -> bool: ...  # False: inject #GP
    def halted(self) -> None: ...  # HLT exit (user APIC mode only)
    def before_entry(self) -> None: ...  # interrupts, pending work; may call vcpu.inject_*
    def fatal(self, kind: str, detail: str) -> None: ...  # stops the machine
    def count_exit(self, reason: int) -> None: ...
    # A debug exit, or an int3 KVM failed to emulate (`failed_int3`); False: not the debugger's.
    def debug_stop(self, vector: int, pc: int, dr6: int, failed_int3: bool) -> bool: ...


class ContextRejected(Exception):
    """A backend refused a start state (an HV_INITIAL_VP_CONTEXT that hv validated: a check hv1
    does not know of). The vCPU is as it was before the call."""


@dataclass
class CpuidEntry:
    """One CPUID leaf (and sub-leaf when `indexed`) as the guest will see it."""

    function: int
    index: int = 0
    eax: int = 0
    ebx: int = 0
    ecx: int = 0
    edx: int = 0
    indexed: bool = False  # ECX selects a sub-leaf (leaves 4, 7, 0xB, 0xD, ...)

    def copy(self) -> CpuidEntry:
        return CpuidEntry(self.function, self.index, self.eax, self.ebx, self.ecx, self.edx, self.indexed)


@dataclass
class CpuSnapshot:
    """Registers for a fatal-state dump (neutral: no backend structure)."""

    gprs: dict[str, int] = field(default_factory=dict)  # GPR_NAMES order
    cr0: int = 0
    cr2: int = 0
    cr3: int = 0
    cr4: int = 0
    efer: int = 0
    cs_selector: int = 0
    cs_base: int = 0
    cs_l: bool = False
    cs_db: bool = False
    cs_dpl: int = 0
    ss_selector: int = 0


class Vcpu(VpRegisters, Protocol):
    """One virtual processor of a backend VM. Everything but `kick` runs on the vCPU's own thread."""

    stop_requested: bool
    # Where RIP is when io_out and mmio_write run: past the instruction (True: KVM retires an OUT
    # and an MMIO write before it exits, host-kvm.md; the hypercall `out` relies on it) or still on
    # it (the emulator's instruction hooks; it stops before an unmapped access). An IN, RDMSR/WRMSR
    # and an MMIO read exit with RIP on the instruction on both.
    io_rip_after: bool

    @property
    def thread_id(self) -> int | None: ...  # the thread inside run() now, or None

    # The register file at an exit is hv1/hv's VpRegisters (get/set, XMM, mode, CPL).

    # ---- events ----
    def inject_exception(self, vector: int, error_code: int | None) -> None: ...
    def inject_interrupt(self, vector: int) -> None: ...  # only when can_inject()
    def inject_nmi(self) -> None: ...  # user APIC mode: an NMI (vector 2, ignores IF)
    def can_inject(self) -> bool: ...  # IF=1 and no interrupt shadow
    def if_flag(self) -> bool: ...
    def request_interrupt_window(self, on: bool) -> None: ...
    def kick(self) -> None: ...  # any thread: leave guest mode soon

    # ---- start states and machine-level operations ----
    def set_cpuid(self, entries: Sequence[CpuidEntry]) -> None: ...
    def set_multiboot_entry(self, entry: int, eax: int, ebx: int) -> None: ...
    def set_real_mode_start(self, vector: int) -> None: ...
    def set_initial_context(self, ctx: InitialVpContext) -> None: ...  # ContextRejected: unchanged
    def set_entry_state(self, st: EntryState) -> None: ...  # a loader's entry (Multiboot, Linux)
    def set_apic_base(self, value: int) -> bool: ...  # tell the CPU model (CPUID.1:EDX.APIC follows EN)
    def cr8(self) -> int: ...  # user APIC mode: CR8 as the guest left it at this exit
    def set_cr8(self, value: int) -> None: ...  # ... and for the next entry (CR8 = TPR[7:4])
    def make_runnable(self) -> None: ...  # kernel APIC mode: leave wait-for-SIPI (StartVP)
    def flush_tlb(self) -> None: ...
    def reset(self, bsp: bool) -> None: ...  # partition reset: nothing pending, power-on APIC state
    def snapshot(self) -> CpuSnapshot: ...
    # The architectural state as an HV_INITIAL_VP_CONTEXT (segments with their cached attributes):
    # what a child VP's register file keeps while it is suspended (hv/vp_registers.py).
    def get_context(self) -> InitialVpContext: ...
    # An exit intercepted for a parent (hv1/machine/child.py): take the instruction back so that
    # the backend does not complete it. (RIP, length) when done (the vCPU is as before it and runs
    # it again unless its registers change: KVM's IN, RDMSR/WRMSR, MMIO read); None when there is
    # nothing to take back: the instruction was retired at the exit (KVM: io_rip_after) or the
    # backend completes it after the handler itself (the emulator's I/O and MSR hooks).
    def undo_exit(self) -> tuple[int, int] | None: ...

    def run(self, h: ExitHandler) -> None: ...
    def close(self) -> None: ...


class Vm(Protocol):
    name: str  # "kvm" or "emu"
    # The shortest periodic timer (LVT, synthetic) the backend runs: each expiry is an exit, and a
    # guest must make progress between them (hv/apic.py MIN_PERIODIC_NS on KVM).
    min_timer_period_ns: int
    tsc_hz: int  # guest TSC frequency (after the first vCPU exists)

    def add_ram(self, ram: GuestRam) -> None: ...
    # A child partition's layout instead of add_ram: every region at once, replacing the previous
    # layout (every vCPU out of run()). A GPA in no region is an MMIO exit (mmio_read/mmio_write):
    # on KVM a read is completed on the next entry unless Vcpu.undo_exit takes it back, a write
    # has been retired (io_rip_after); on the emulator, outside the (start, end) ranges of `mmio`,
    # it stops before the instruction, RIP on it (the unmapped-GPA intercept the TLFS describes).
    def set_memory_regions(
        self, regions: Sequence[MemoryRegion], mmio: Sequence[tuple[int, int]] | None = None
    ) -> None: ...
    def set_readonly_pages(self, pages: tuple[int, ...] | list[int]) -> None: ...
    def use_kernel_apic(self) -> None: ...  # --apic kernel (KVM only)
    def route_msrs_to_userspace(self, ranges: list[tuple[int, int]]) -> None: ...
    def signal_msi(self, apic_id: int, vector: int) -> None: ...  # kernel APIC mode only
    def supported_cpuid(self) -> list[CpuidEntry]: ...
    def create_vcpu(self, index: int) -> Vcpu: ...
    def guest_tsc(self) -> Callable[[], int]: ...  # the guest's TSC, readable from any thread
    def prepare_thread(self) -> None: ...  # once, on the main thread, before vCPU threads run
    def close(self) -> None: ...


def kvm_usable() -> bool:
    """/dev/kvm exists and we may open it read/write (what `--backend auto` asks)."""
    return os.path.exists("/dev/kvm") and os.access("/dev/kvm", os.R_OK | os.W_OK)


def resolve_backend(name: str) -> str:
    """`auto` is kvm when /dev/kvm is usable, else emu."""
    if name not in BACKENDS:
        raise UsageError(f"--backend must be one of {', '.join(BACKENDS)}")
    if name == "auto":
        return "kvm" if kvm_usable() else "emu"
    return name


def open_vm(name: str, apic_mode: str) -> Vm:
    """A VM of backend `name` (kvm or emu; resolve `auto` first). Imports the backend lazily: the
    emulator's package is optional for KVM users and KVM's ioctls are never touched on emu."""
    if name == "kvm":
        from hv1.backends.kvm.vm import KvmSystem, KvmVm

        return KvmVm(KvmSystem(), own_system=True)
    if name == "emu":
        if apic_mode != "user":
            raise UsageError(
                "--backend emu needs --apic user: the kernel APIC mode is KVM's in-kernel local APIC"
            )
        from hv1.backends.emu.vm import EmuVm

        return EmuVm()
    raise UsageError(f"unknown backend {name!r}")
