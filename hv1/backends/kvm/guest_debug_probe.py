"""Which KVM_SET_GUEST_DEBUG hardware breakpoints this host's KVM really delivers, found by trying.

KVM accepts KVM_GUESTDBG_USE_HW_BP with any DR7 and says nothing about whether the breakpoints will
fire. On a host that runs guest ring-0 code in KVM's instruction emulator (this development machine,
../shared/notes/host-kvm.md "Host kernel 6.18.44-fc-v1098"), execute breakpoints are reported but
data breakpoints never are: the emulator checks DR7 for instruction fetches only. So the gdb stub
asks once per process, with a throwaway VM whose single vCPU runs four instructions at CPL0 in
32-bit flat protected mode (how every hv1 guest starts):

    0x000  nop                    DR0: execute breakpoint here
    0x001  mov [0x1000], eax      DR1: write breakpoint on 0x1000, 4 bytes
    0x006  mov eax, [0x1008]      DR2: read/write breakpoint on 0x1008, 4 bytes
    0x00b  out 0x10, al           the end
    0x00d  hlt

Each KVM_EXIT_DEBUG names in DR6 (B0-B2) the breakpoint that fired; an execute breakpoint is a
fault, so it is disarmed before the vCPU goes on. A breakpoint KVM does not deliver is simply
passed: the `out` ends the run either way. Cost: one VM, one vCPU, ~4 exits (~1 ms here, median of 7).
"""

from __future__ import annotations

import fcntl
import os
import struct
import threading

from hv1.backends.guest_debug import Condition, GuestDebug, HwBreakpoint, HwDebugSupport
from hv1.backends.kvm import cpustate
from hv1.backends.kvm import ioctls as k
from hv1.backends.kvm.kick import install_kick_handler
from hv1.backends.kvm.vcpu import KvmVcpu
from hv1.backends.memory import GuestRam

CODE_GPA, DATA_GPA = 0x0, 0x1000
_END_PORT = 0x10
_PROGRAM = (
    b"\x90"  # nop
    + b"\xa3" + struct.pack("<I", DATA_GPA)  # mov [DATA], eax
    + b"\xa1" + struct.pack("<I", DATA_GPA + 8)  # mov eax, [DATA + 8]
    + bytes((0xE6, _END_PORT, 0xF4))  # out 0x10, al; hlt
)  # fmt: skip
_SLOTS = (
    HwBreakpoint(CODE_GPA, Condition.EXEC, 1),
    HwBreakpoint(DATA_GPA, Condition.WRITE, 4),
    HwBreakpoint(DATA_GPA + 8, Condition.ACCESS, 4),
    None,
)
_TIMEOUT = 2.0  # seconds; the probe guest needs microseconds


class _ProbeExits:
    """The ExitHandler of the probe vCPU: records which slots fired, stops at the `out`."""

    def __init__(self, vcpu: KvmVcpu) -> None:
        self.vcpu = vcpu
        self.slots = list(_SLOTS)
        self.fired: set[int] = set()
        self.failure: str | None = None

    def _arm(self) -> None:
        self.vcpu.set_guest_debug(GuestDebug(tuple(self.slots)), block_irq=False)

    def _stop(self) -> None:
        self.vcpu.stop_requested = True

    def io_in(self, port: int, size: int) -> int:
        self._stop()
        return 0

    def io_out(self, port: int, size: int, value: int) -> None:
        self._stop()

    def mmio_read(self, addr: int, size: int) -> int:
        self._stop()
        return 0

    def mmio_write(self, addr: int, size: int, value: int) -> None:
        self._stop()

    def rdmsr(self, index: int) -> int | None:
        return None

    def wrmsr(self, index: int, value: int) -> bool:
        return False

    def halted(self) -> None:
        self._stop()

    def before_entry(self) -> None:
        pass

    def fatal(self, kind: str, detail: str) -> None:
        self.failure = detail
        self._stop()

    def count_exit(self, reason: int) -> None:
        pass

    def debug_stop(self, vector: int, pc: int, dr6: int, failed_int3: bool) -> bool:
        if failed_int3 or vector != 1:
            return False
        hit = {n for n in range(3) if dr6 & (1 << n)}
        if not hit:
            return False
        self.fired |= hit
        if 0 in hit:
            self.slots[0] = None  # an execute breakpoint is a fault: it would fire again at once
            self._arm()
        return True


_cache: dict[int, HwDebugSupport] = {}
_cache_lock = threading.Lock()


def probe(vm_fd: int, vcpu_mmap_size: int) -> HwDebugSupport:
    """Run the probe program in a fresh vCPU of a VM of its own (`vm_fd` must be an empty VM that is
    not used for anything else; the caller closes it). Raises OSError if KVM refuses a step."""
    ram = GuestRam(0x2000)
    region = k.kvm_userspace_memory_region(slot=0, flags=0, guest_phys_addr=0, memory_size=ram.size,
                                           userspace_addr=ram.host_address)  # fmt: skip
    fcntl.ioctl(vm_fd, k.KVM_SET_USER_MEMORY_REGION, bytes(region))
    ram.write(CODE_GPA, _PROGRAM)
    vcpu = KvmVcpu(vm_fd, 0, vcpu_mmap_size)
    try:
        cpustate.set_multiboot_entry(vcpu, CODE_GPA, 0, 0)
        exits = _ProbeExits(vcpu)
        exits._arm()
        install_kick_handler()

        def give_up() -> None:
            exits.failure = f"the probe guest did not finish in {_TIMEOUT} s"
            vcpu.stop_requested = True
            vcpu.kick()

        timer = threading.Timer(_TIMEOUT, give_up)
        timer.start()
        try:
            vcpu.run(exits)
        finally:
            timer.cancel()
        if exits.failure is not None:
            raise OSError(f"guest debug probe: {exits.failure}")
        return HwDebugSupport(exec=0 in exits.fired, write=1 in exits.fired, access=2 in exits.fired)
    finally:
        vcpu.close()
        ram.close()


def host_support(system_fd: int, vcpu_mmap_size: int) -> HwDebugSupport:
    """`probe` once per process (per /dev/kvm fd), in a VM created and closed for it."""
    with _cache_lock:
        found = _cache.get(system_fd)
        if found is None:
            vm_fd = fcntl.ioctl(system_fd, k.KVM_CREATE_VM, 0)
            try:
                found = probe(vm_fd, vcpu_mmap_size)
            finally:
                os.close(vm_fd)
            _cache[system_fd] = found
        return found
