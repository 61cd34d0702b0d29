"""/dev/kvm, the VM, its memory and its CPUID: everything outside the vCPU run loop.

Setup ioctls use `fcntl.ioctl` (clear and safe; cost does not matter here). The hot `KVM_RUN` call
lives in vcpu.py and goes through ctypes without argtypes, the cheapest binding measured without a
compiler (shared/reference/python-ecosystem.md §1.2).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from hv1.backends.base import CpuidEntry, MemoryRegion
from hv1.backends.kvm import ioctls as k
from hv1.backends.kvm.tsc import guest_tsc_offset, rdtsc
from hv1.backends.kvm.vcpu import KVM_CPUID_FLAG_SIGNIFCANT_INDEX, KvmVcpu, install_kick_handler
from hv1.backends.memory import GuestRam
from hv1.errors import KvmUnavailable

KVM_PATH = "/dev/kvm"


class KvmSystem:
    """An open /dev/kvm and what it can do."""

    def __init__(self, path: str = KVM_PATH) -> None:
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise KvmUnavailable(
                f"{path} does not exist: load the KVM module (modprobe kvm_intel or kvm_amd) "
                "or run on a host with hardware virtualization (without KVM: --backend emu --apic user)"
            ) from None
        except PermissionError:
            raise KvmUnavailable(
                f"no permission to open {path}: add yourself to the 'kvm' group "
                f"(sudo usermod -aG kvm $USER, then log in again) or run as root "
                "(without KVM: --backend emu --apic user)"
            ) from None
        version = fcntl.ioctl(self.fd, k.KVM_GET_API_VERSION, 0)
        if version != 12:
            raise KvmUnavailable(f"unexpected KVM API version {version} (need 12)")
        self.vcpu_mmap_size = fcntl.ioctl(self.fd, k.KVM_GET_VCPU_MMAP_SIZE, 0)

    def check(self, cap: int) -> int:
        try:
            return int(fcntl.ioctl(self.fd, k.KVM_CHECK_EXTENSION, cap))
        except OSError:
            return 0

    def supported_cpuid(self) -> list[k.kvm_cpuid_entry2]:
        n = 256
        while True:
            buf = cpuid2_buffer([], n)
            try:
                fcntl.ioctl(self.fd, k.KVM_GET_SUPPORTED_CPUID, buf)
            except OSError as e:
                if e.errno == errno.E2BIG and n < 4096:
                    n *= 2
                    continue
                raise
            t = k.cpuid2_type(n)
            c = t.from_buffer(buf)
            return [k.kvm_cpuid_entry2.from_buffer_copy(c.entries[i]) for i in range(c.nent)]

    def close(self) -> None:
        os.close(self.fd)


def cpuid2_buffer(entries: list[k.kvm_cpuid_entry2], capacity: int | None = None) -> bytearray:
    n = capacity if capacity is not None else len(entries)
    t = k.cpuid2_type(n)
    c = t()
    c.nent = n
    for i, e in enumerate(entries):
        c.entries[i] = e
    # KVM_SET_CPUID2 needs a mutable buffer: fcntl rejects immutable arguments over 1024 bytes.
    return bytearray(bytes(c))


def _covering(regions: Sequence[MemoryRegion], page: int) -> MemoryRegion | None:
    return next((r for r in regions if r.gpa <= page and page + 0x1000 <= r.gpa + r.size), None)


def slot_layout(regions: Sequence[MemoryRegion], readonly_pages: Sequence[int]) -> list[MemoryRegion]:
    """The memory slots for `regions` with each page of `readonly_pages` (inside a region) in a
    read-only slot of its own: the region split around it, each piece pointing at its own part of
    the host memory. The hypercall page of the root machine and of a child is such a page (a guest
    write to it is the machine's mmio_write, hv1/machine/machine.py)."""
    out: list[MemoryRegion] = []
    pages = sorted(set(readonly_pages))
    for r in sorted(regions, key=lambda r: r.gpa):
        cursor = r.gpa
        for page in pages:
            if not r.gpa <= page < r.gpa + r.size:
                continue
            if page > cursor:
                out.append(
                    MemoryRegion(
                        cursor, r.host_address + cursor - r.gpa, page - cursor, r.writable, r.executable
                    )
                )
            out.append(MemoryRegion(page, r.host_address + page - r.gpa, 0x1000, False, r.executable))
            cursor = page + 0x1000
        if cursor < r.gpa + r.size:
            end = r.gpa + r.size
            out.append(
                MemoryRegion(cursor, r.host_address + cursor - r.gpa, end - cursor, r.writable, r.executable)
            )
    return out


@dataclass(frozen=True)
class HostInfo:
    """The KVM capabilities that matter to hv1 (printed by `hv1 info`)."""

    api_version: int
    max_vcpus: int
    sync_regs: int
    split_irqchip: bool
    user_space_msr: bool
    msr_filter: bool
    immediate_exit: bool
    signal_msi: bool
    tsc_khz: int
    in_kernel_hyperv: bool
    synic_auto_eoi: bool  # KVM_CAP_HYPERV_SYNIC2: SINT AutoEOI with the in-kernel APIC
    enforce_pv_cpuid: bool
    readonly_mem: bool


def host_info(system: KvmSystem) -> HostInfo:
    vm = KvmVm(system)
    try:
        vfd = vm.create_vcpu_fd(0)
        tsc = int(fcntl.ioctl(vfd, k.KVM_GET_TSC_KHZ, 0))
        os.close(vfd)
    finally:
        vm.close()
    return HostInfo(
        api_version=12,
        max_vcpus=system.check(k.KVM_CAP_MAX_VCPUS) or system.check(k.KVM_CAP_NR_VCPUS),
        sync_regs=system.check(k.KVM_CAP_SYNC_REGS),
        split_irqchip=bool(system.check(k.KVM_CAP_SPLIT_IRQCHIP)),
        user_space_msr=bool(system.check(k.KVM_CAP_X86_USER_SPACE_MSR)),
        msr_filter=bool(system.check(k.KVM_CAP_X86_MSR_FILTER)),
        immediate_exit=bool(system.check(k.KVM_CAP_IMMEDIATE_EXIT)),
        signal_msi=bool(system.check(k.KVM_CAP_SIGNAL_MSI)),
        tsc_khz=tsc,
        in_kernel_hyperv=bool(system.check(k.KVM_CAP_HYPERV)),
        synic_auto_eoi=bool(system.check(k.KVM_CAP_HYPERV_SYNIC2)),
        enforce_pv_cpuid=bool(system.check(k.KVM_CAP_ENFORCE_PV_FEATURE_CPUID)),
        readonly_mem=bool(system.check(k.KVM_CAP_READONLY_MEM)),
    )


class KvmVm:
    """One KVM VM: guest RAM slots, the interrupt controller choice, MSR routing, MSIs. Implements
    the backend interface's Vm (hv1/backends/base.py); closes `system` too when it owns it."""

    name = "kvm"
    min_timer_period_ns = 100_000  # hv/apic.py MIN_PERIODIC_NS (KVM's own floor is 200 us)

    def __init__(self, system: KvmSystem, own_system: bool = False) -> None:
        self.system = system
        self._own_system = own_system
        self.fd = fcntl.ioctl(system.fd, k.KVM_CREATE_VM, 0)
        self.ram: GuestRam | None = None
        self._regions: list[MemoryRegion] = []  # add_ram's one region, or a child's layout
        self._readonly: tuple[int, ...] = ()  # set_readonly_pages
        self._slots: list[MemoryRegion] = []  # what KVM has: slot i = entry i
        self._msr_filter_bitmaps: list[ctypes.Array[ctypes.c_uint8]] = []
        self._kernel_apic = False
        self.tsc_hz = 0
        self._tsc_offset: int | None = None

    def create_vcpu(self, index: int) -> KvmVcpu:
        vcpu = KvmVcpu(self.fd, index, self.system.vcpu_mmap_size, in_kernel_apic=self._kernel_apic)
        if self.system.check(k.KVM_CAP_ENFORCE_PV_FEATURE_CPUID):
            vcpu.enable_cap(k.KVM_CAP_ENFORCE_PV_FEATURE_CPUID, 1)
        if self._tsc_offset is None:
            # Reference time is defined from the guest TSC (hv/reftime.py): the host TSC plus the
            # offset KVM gives the guest, read once (hv1/backends/kvm/tsc.py).
            self.tsc_hz = vcpu.tsc_khz() * 1000
            self._tsc_offset = guest_tsc_offset(vcpu.fd)
        return vcpu

    def guest_tsc(self) -> Callable[[], int]:
        assert self._tsc_offset is not None, "create a vCPU first"
        off = self._tsc_offset
        return lambda: rdtsc() + off

    def supported_cpuid(self) -> list[CpuidEntry]:
        return [
            CpuidEntry(
                e.function,
                e.index,
                e.eax,
                e.ebx,
                e.ecx,
                e.edx,
                indexed=bool(e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX),
            )  # fmt: skip
            for e in self.system.supported_cpuid()
        ]

    def prepare_thread(self) -> None:
        install_kick_handler()

    def enable_cap(self, cap: int, *args: int, fd: int | None = None) -> None:
        c = k.kvm_enable_cap()
        c.cap = cap
        for i, a in enumerate(args):
            c.args[i] = a
        fcntl.ioctl(self.fd if fd is None else fd, k.KVM_ENABLE_CAP, bytearray(bytes(c)))

    def add_ram(self, ram: GuestRam) -> None:
        """Guest RAM at GPA 0, in one memory slot (split later by `set_readonly_pages`)."""
        self.ram = ram
        self._regions = [MemoryRegion(0, ram.host_address, ram.size)]
        self._relayout()

    def set_memory_regions(
        self, regions: Sequence[MemoryRegion], mmio: Sequence[tuple[int, int]] | None = None
    ) -> None:
        """A child partition's GPA map as memory slots pointing into the root's RAM (zero copy; one
        slot per coalesced run, KVM_MEM_READONLY where the map forbids writes, so such a write exits
        as MMIO and becomes the parent's GPA intercept). KVM cannot forbid execution in a slot: a
        mapping without Executable still runs (docs/partitions.md). Every GPA in no slot is an MMIO
        exit whatever `mmio` says. The read-only pages (`set_readonly_pages`) stay read-only where
        the new regions still cover them. Every vCPU is out of KVM_RUN."""
        self._regions = list(regions)
        self._readonly = tuple(p for p in self._readonly if _covering(self._regions, p) is not None)
        self._relayout()

    def set_readonly_pages(self, pages: tuple[int, ...] | list[int]) -> None:
        """Each page of `pages` (4 KiB-aligned GPAs inside RAM, or inside a child's regions) read/
        execute-only for the guest: a guest write to it exits as MMIO and never reaches RAM. The
        host's own view of RAM stays writable. Every vCPU must be out of KVM_RUN (the old slots are
        deleted before the new ones exist)."""
        new = tuple(sorted(set(pages)))
        for page in new:
            if page % 0x1000 or _covering(self._regions, page) is None:
                raise ValueError(f"read-only page {page:#x} is not a page of guest RAM")
        self._readonly = new
        self._relayout()

    def _relayout(self) -> None:
        layout = slot_layout(self._regions, self._readonly)
        if layout == self._slots:
            return
        for slot in range(len(self._slots)):
            self._set_slot(slot, 0, 0, False, 0)  # delete: KVM cannot move or resize a slot
        for slot, r in enumerate(layout):
            self._set_slot(slot, r.gpa, r.size, not r.writable, r.host_address)
        self._slots = layout

    def _set_slot(self, slot: int, gpa: int, size: int, readonly: bool, host: int) -> None:
        region = k.kvm_userspace_memory_region(
            slot=slot, flags=k.KVM_MEM_READONLY if readonly else 0, guest_phys_addr=gpa, memory_size=size,
            userspace_addr=host if size else 0,
        )  # fmt: skip
        fcntl.ioctl(self.fd, k.KVM_SET_USER_MEMORY_REGION, bytes(region))

    def use_kernel_apic(self) -> None:
        """--apic kernel, before any vCPU exists: the local APIC in the kernel, everything else
        (PIC, IOAPIC, PIT) in userspace: MSIs can be sent from any thread and HLT/LAPIC timers
        never leave the kernel (host-kvm.md §1)."""
        self.enable_cap(k.KVM_CAP_SPLIT_IRQCHIP, 24)
        self._kernel_apic = True

    def route_msrs_to_userspace(self, ranges: list[tuple[int, int]]) -> None:
        """Send unknown/invalid MSRs and every MSR in `ranges` ([first, last]) to userspace."""
        self.enable_cap(
            k.KVM_CAP_X86_USER_SPACE_MSR,
            k.KVM_MSR_EXIT_REASON_INVAL | k.KVM_MSR_EXIT_REASON_UNKNOWN | k.KVM_MSR_EXIT_REASON_FILTER,
        )
        f = k.kvm_msr_filter()
        f.flags = k.KVM_MSR_FILTER_DEFAULT_ALLOW
        for i, (first, last) in enumerate(ranges):
            n = last - first + 1
            bitmap = (ctypes.c_uint8 * ((n + 7) // 8))()  # all zero: deny, i.e. exit to userspace
            self._msr_filter_bitmaps.append(bitmap)
            r = f.ranges[i]
            r.flags = k.KVM_MSR_FILTER_READ | k.KVM_MSR_FILTER_WRITE
            r.nmsrs = n
            r.base = first
            r.bitmap = ctypes.addressof(bitmap)
        fcntl.ioctl(self.fd, k.KVM_X86_SET_MSR_FILTER, bytearray(bytes(f)))

    def signal_msi(self, apic_id: int, vector: int) -> None:
        """Fixed, edge, physical-destination MSI to the in-kernel local APIC `apic_id`."""
        msi = k.kvm_msi(address_lo=0xFEE00000 | (apic_id << 12), address_hi=0, data=vector & 0xFF)
        fcntl.ioctl(self.fd, k.KVM_SIGNAL_MSI, bytes(msi))

    def signal_msi_raw(self, address: int, data: int) -> None:
        """Any MSI (address/data as an I/O APIC redirection entry or a device builds them)."""
        msi = k.kvm_msi(address_lo=address & 0xFFFFFFFF, address_hi=address >> 32, data=data & 0xFFFFFFFF)
        fcntl.ioctl(self.fd, k.KVM_SIGNAL_MSI, bytes(msi))

    def create_vcpu_fd(self, vcpu_id: int) -> int:
        return int(fcntl.ioctl(self.fd, k.KVM_CREATE_VCPU, vcpu_id))

    def close(self) -> None:
        os.close(self.fd)
        if self._own_system:
            self.system.close()
