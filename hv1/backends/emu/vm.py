"""The emulator VM: guest RAM shared with every vCPU's Unicorn instance, the read-only hypercall
page, the CPUID the emulated CPU really has, the guest TSC, and the turn that serializes vCPUs.

Each vCPU is its own Unicorn instance (one `Uc` is not thread-safe), and all of them map the same
host memory (`mem_map_ptr` over GuestRam), so the machine, hv1/hv and every vCPU see one RAM.
Unicorn does not make LOCK-prefixed instructions atomic between instances (QEMU's TCG only does
so in its parallel mode, which Unicorn does not use), so only one vCPU emulates at a time: the
`Turn` below. A vCPU waiting for its turn longer than a slice asks the holder to stop at its next
block boundary; a vCPU that halts, exits or is kicked gives the turn up at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from unicorn import UC_ARCH_X86, UC_MODE_32, Uc
from unicorn.x86_const import UC_X86_REG_EAX, UC_X86_REG_EBX, UC_X86_REG_ECX, UC_X86_REG_EDX

from hv1.backends.base import CPUID1_ECX_X2APIC, CpuidEntry, MemoryRegion
from hv1.backends.emu.tsc import calibrate_tsc_hz, rdtsc
from hv1.backends.emu.vcpu import EmuVcpu
from hv1.backends.memory import GuestRam, RegionMemory
from hv1.hv.interfaces import GuestMemory

SLICE_S = 0.002  # how long a waiting vCPU lets the running one go on before asking it to stop

# The leaves of the emulated CPU (Unicorn's default x86 model) that the guest may see, with their
# sub-leaves where ECX selects one (Intel SDM vol. 2A, CPUID).
BASIC_LEAVES = range(0x0, 0xE)
EXTENDED_LEAVES = range(0x80000000, 0x80000009)
SUBLEAVES = {0x4: range(4), 0x7: range(1), 0xB: range(2), 0xD: range(4)}


class Turn:
    """A FIFO lock: one vCPU emulates at a time, in the order they asked."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._next = 0  # next ticket to hand out
        self._serving = 0
        self.holder: EmuVcpu | None = None
        self.solo = True  # until a second vCPU exists

    def acquire(self, vcpu: EmuVcpu) -> None:
        if self.solo:
            return  # one vCPU: nothing to serialize against
        with self._cond:
            ticket = self._next
            self._next += 1
            while self._serving != ticket:
                if not self._cond.wait(SLICE_S) and self.holder is not None:
                    self.holder.preempt()  # stop at its next block boundary
            self.holder = vcpu

    def release(self) -> None:
        if self.solo:
            return
        with self._cond:
            self.holder = None
            self._serving += 1
            self._cond.notify_all()


def _native_cpuid(leaf: int, sub: int) -> tuple[int, int, int, int]:
    """What the emulated CPU's own CPUID returns (run once at VM creation)."""
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, 0x2000)
    uc.mem_write(0x1000, b"\x0f\xa2")  # cpuid
    uc.reg_write(UC_X86_REG_EAX, leaf)
    uc.reg_write(UC_X86_REG_ECX, sub)
    uc.emu_start(0x1000, 0x1002)
    regs = (UC_X86_REG_EAX, UC_X86_REG_EBX, UC_X86_REG_ECX, UC_X86_REG_EDX)
    a, b, c, d = (int(uc.reg_read(r)) for r in regs)
    return a, b, c, d


class EmuVm:
    """Implements the backend interface's Vm (hv1/backends/base.py) on Unicorn."""

    name = "emu"
    # An exit through the run loop costs ~70-100 us here and a guest's timer handler takes several
    # (an EOI, a reference-time read, an EOM): a 100 us periodic timer would leave no time between
    # ticks, so periodic timers fire at most every 2 ms.
    min_timer_period_ns = 2_000_000

    def __init__(self) -> None:
        self.ram: GuestRam | None = None
        self.memory: GuestMemory | None = None  # what the vCPUs read on their own (page walks)
        self.regions: list[MemoryRegion] = []
        self.mmio: list[tuple[int, int]] | None = None
        self.vcpus: list[EmuVcpu] = []
        self.turn = Turn()
        self.readonly_pages: tuple[int, ...] = ()
        self.msr_ranges: list[tuple[int, int]] = []
        self.tsc_hz = calibrate_tsc_hz()

    def add_ram(self, ram: GuestRam) -> None:
        self.ram = ram
        self.memory = ram
        self.regions = [MemoryRegion(0, ram.host_address, ram.size)]

    def set_memory_regions(
        self, regions: Sequence[MemoryRegion], mmio: Sequence[tuple[int, int]] | None = None
    ) -> None:
        """A child partition's layout (hv1/backends/base.py): every vCPU maps the regions and makes
        the rest MMIO; the backend's own accesses go through a RegionMemory over them."""
        self.regions = list(regions)
        self.mmio = None if mmio is None else list(mmio)
        self.memory = RegionMemory([(r.gpa, r.host_address, r.size) for r in self.regions])
        for vcpu in self.vcpus:
            vcpu.ram = self.memory
            vcpu.set_layout(self.regions, self.mmio)
            vcpu.protect_pages((), self.readonly_pages)

    def set_readonly_pages(self, pages: tuple[int, ...] | list[int]) -> None:
        """Each page of `pages` read/execute-only for the guest (a write becomes the machine's
        mmio_write, as a KVM read-only slot does). Every vCPU is outside emulation (parked)."""
        assert self.memory is not None
        new = tuple(sorted(set(pages)))
        for page in new:
            if page % 0x1000 or not self.memory.contains(page, 0x1000):
                raise ValueError(f"read-only page {page:#x} is not a page of guest RAM")
        old = self.readonly_pages
        self.readonly_pages = new
        for vcpu in self.vcpus:
            vcpu.protect_pages(old, new)

    def use_kernel_apic(self) -> None:
        raise NotImplementedError("the emulator has no in-kernel APIC (open_vm rejects --apic kernel)")

    def route_msrs_to_userspace(self, ranges: list[tuple[int, int]]) -> None:
        # Every MSR the emulator does not implement goes to the machine anyway (emu/msrs.py); these
        # ranges go there even if the emulator has an MSR of that index (IA32_APIC_BASE).
        self.msr_ranges = list(ranges)

    def signal_msi(self, apic_id: int, vector: int) -> None:
        raise NotImplementedError("the emulator has no in-kernel APIC")

    def supported_cpuid(self) -> list[CpuidEntry]:
        out: list[CpuidEntry] = []
        for leaf in (*BASIC_LEAVES, *EXTENDED_LEAVES):
            for sub in SUBLEAVES.get(leaf, range(1)):
                a, b, c, d = _native_cpuid(leaf, sub)
                if leaf == 1:
                    c |= CPUID1_ECX_X2APIC  # hv1's user APIC model implements x2APIC (hv/apic.py)
                out.append(CpuidEntry(leaf, sub, a, b, c, d, indexed=leaf in SUBLEAVES))
        return out

    def create_vcpu(self, index: int) -> EmuVcpu:
        assert self.memory is not None, "add_ram or set_memory_regions first"
        vcpu = EmuVcpu(self, index, self.memory, self.regions, self.mmio)
        self.vcpus.append(vcpu)
        self.turn.solo = len(self.vcpus) == 1
        return vcpu

    def guest_tsc(self) -> Callable[[], int]:
        return rdtsc  # guest TSC = host TSC (emu/tsc.py)

    def prepare_thread(self) -> None:
        pass  # kicks are flags the vCPU's block hook polls: no signal handler needed

    def close(self) -> None:
        for vcpu in self.vcpus:
            vcpu.close()
        self.vcpus.clear()
