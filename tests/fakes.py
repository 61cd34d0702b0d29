"""Fakes for the interfaces in hv1/hv/interfaces.py: unit tests drive hv1/hv with these, no KVM."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from hv1.hv.interfaces import GPR_NAMES, CpuMode, GpaError


class FakeMemory:
    """Guest RAM of `size` bytes starting at GPA 0, bounds-checked like the real thing."""

    def __init__(self, size: int = 16 << 20) -> None:
        self._buf = bytearray(size)
        self._view = memoryview(self._buf)

    @property
    def size(self) -> int:
        return len(self._buf)

    def contains(self, gpa: int, length: int) -> bool:
        return gpa >= 0 and length >= 0 and gpa + length <= len(self._buf)

    def _check(self, gpa: int, length: int) -> None:
        if not self.contains(gpa, length):
            raise GpaError(gpa, length)

    def read(self, gpa: int, length: int) -> bytes:
        self._check(gpa, length)
        return bytes(self._buf[gpa : gpa + length])

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        self._check(gpa, len(data))
        self._buf[gpa : gpa + len(data)] = data

    def view(self, gpa: int, length: int) -> memoryview:
        self._check(gpa, length)
        return self._view[gpa : gpa + length]

    def read_u64(self, gpa: int) -> int:
        return int.from_bytes(self.read(gpa, 8), "little")

    def write_u64(self, gpa: int, value: int) -> None:
        self.write(gpa, value.to_bytes(8, "little"))


@dataclass
class FakeRegs:
    """A VP's registers at an exit. Defaults: 64-bit long mode, CPL 0."""

    gprs: dict[str, int] = field(default_factory=lambda: dict.fromkeys(GPR_NAMES, 0))
    xmm: list[int] = field(default_factory=lambda: [0] * 16)
    cpu_mode: CpuMode = CpuMode.LONG
    cpl_value: int = 0
    xmm_reads: int = 0

    def get(self, name: str) -> int:
        return self.gprs[name]

    def set(self, name: str, value: int) -> None:
        if name not in self.gprs:
            raise KeyError(name)
        self.gprs[name] = value & 0xFFFF_FFFF_FFFF_FFFF

    def get_xmm(self, index: int) -> int:
        self.xmm_reads += 1
        return self.xmm[index]

    def set_xmm(self, index: int, value: int) -> None:
        self.xmm[index] = value & ((1 << 128) - 1)

    def mode(self) -> CpuMode:
        return self.cpu_mode

    def cpl(self) -> int:
        return self.cpl_value


class FakeClock:
    """Reference time in 100 ns units that only moves when the test says so."""

    def __init__(self, start: int = 0) -> None:
        self.t = start

    def now(self) -> int:
        return self.t

    def advance(self, ticks: int) -> None:
        self.t += ticks


@dataclass
class FakeIrq:
    """Records interrupts requested for VPs. With `vp_indexes` set, an interrupt for a VP index the
    partition does not have raises KeyError, as the machine's sink does (Machine.vp_by_index)."""

    sent: list[tuple[int, int, bool]] = field(default_factory=list)
    vp_indexes: set[int] | None = None

    def request_interrupt(self, vp_index: int, vector: int, auto_eoi: bool = False) -> None:
        if self.vp_indexes is not None and vp_index not in self.vp_indexes:
            raise KeyError(f"no VP with index {vp_index}")
        self.sent.append((vp_index, vector, auto_eoi))


@dataclass
class FakeHooks:
    """Records the partition's machine hooks (hv1.hv.partition.PartitionHooks)."""

    resets: int = 0
    crashes: list[tuple[int, tuple[int, ...], bytes | None]] = field(default_factory=list)
    yields: list[int] = field(default_factory=list)

    def request_reset(self) -> None:
        self.resets += 1

    def guest_crash(self, vp_index: int, params: tuple[int, ...], message: bytes | None) -> None:
        self.crashes.append((vp_index, params, message))

    def yield_vp(self, vp_index: int) -> None:
        self.yields.append(vp_index)

    hypercall_pages: list[int | None] = field(default_factory=list)

    def hypercall_page_moved(self, gpa: int | None) -> None:
        self.hypercall_pages.append(gpa)

    # EnlightenmentHooks (hv1.hv.enlightenments)
    flushes: list[tuple[int, tuple[int, ...]]] = field(default_factory=list)
    idles: list[int] = field(default_factory=list)
    starts: list[tuple[int, Any]] = field(default_factory=list)
    started: set[int] = field(default_factory=lambda: {0})  # VPs that run (VP 0 boots)

    def flush_tlb(self, src_vp: int, targets: Iterable[int]) -> None:
        self.flushes.append((src_vp, tuple(targets)))

    def guest_idle(self, vp_index: int) -> None:
        self.idles.append(vp_index)

    def start_vp(self, vp_index: int, ctx: Any) -> bool:
        if vp_index in self.started:
            return False
        self.started.add(vp_index)
        self.starts.append((vp_index, ctx))
        return True


HV_X64_MSR_SINT0 = 0x40000090
SINT_AUTO_EOI_BIT = 1 << 17


class FakeKvmLapic:
    """KVM's in-kernel local APIC, as far as SynIC AutoEOI goes (hv1/machine/auto_eoi.py). Like real
    hardware it keeps an acknowledged vector in ISR until an EOI, and PPR blocks IRR vectors of that class
    and below (SDM "Interrupt, Task, and Processor Priority"); only vectors in KVM's SynIC AutoEOI bitmap
    skip ISR (kvm_get_apic_interrupt). The bitmap follows host-initiated KVM_SET_MSRS of HV_X64_MSR_SINTx
    as KVM's synic_set_sint/synic_update_vector keep it: a vector is in it while some unmasked SINTx with
    that vector has AutoEOI set. Stands in for the KvmVcpu (set_msr) and the VM (signal_msi)."""

    def __init__(self) -> None:
        self.irr = 0
        self.isr = 0
        self.tpr = 0
        self.sints = [1 << 16] * 16
        self.msr_writes: list[tuple[int, int]] = []

    def set_msr(self, index: int, value: int) -> None:
        if not HV_X64_MSR_SINT0 <= index < HV_X64_MSR_SINT0 + 16:
            raise OSError(f"KVM_SET_MSRS rejected MSR {index:#x}")
        self.sints[index - HV_X64_MSR_SINT0] = value
        self.msr_writes.append((index, value))

    @property
    def auto_eoi_bitmap(self) -> int:
        bits = 0
        for raw in self.sints:
            if raw & SINT_AUTO_EOI_BIT and not raw & (1 << 16):  # synic_get_sint_vector: masked is -1
                bits |= 1 << (raw & 0xFF)
        return bits

    def signal_msi(self, vector: int) -> None:
        self.irr |= 1 << vector

    def ppr(self) -> int:
        isrv = self.isr.bit_length() - 1 if self.isr else 0
        return self.tpr if self.tpr >> 4 >= isrv >> 4 else isrv & 0xF0

    def take(self) -> int | None:
        """The vCPU, IF=1, acknowledges the highest deliverable interrupt (None: nothing beats PPR)."""
        if not self.irr:
            return None
        vector = self.irr.bit_length() - 1
        if vector >> 4 <= self.ppr() >> 4:
            return None
        self.irr &= ~(1 << vector)
        if not self.auto_eoi_bitmap >> vector & 1:
            self.isr |= 1 << vector
        return vector

    def eoi(self) -> None:
        if self.isr:
            self.isr &= ~(1 << (self.isr.bit_length() - 1))


class FakeRunVcpu:
    """The parts of hv1.backends.kvm.vcpu.KvmVcpu that a VP's exit/entry code uses without an in-kernel
    APIC: KVM_INTERRUPT, the interrupt-window request, kvm_run's CR8 (KVM reports the guest's CR8 after
    each exit and loads it from there on entry) and the APIC base KVM is told about."""

    def __init__(self) -> None:
        self.injected: list[int] = []
        self.window = False
        self.interruptible = True
        self.run_cr8 = 0
        self.apic_bases: list[int] = []
        self.refuse_apic_base = False
        self.msrs: list[tuple[int, int]] = []
        self.nmis = 0
        self.stop_requested = False

    def can_inject(self) -> bool:
        return self.interruptible

    def inject_interrupt(self, vector: int) -> None:
        self.injected.append(vector)

    def request_interrupt_window(self, on: bool) -> None:
        self.window = on

    def cr8(self) -> int:
        return self.run_cr8

    def set_cr8(self, value: int) -> None:
        self.run_cr8 = value & 0xF

    def set_apic_base(self, value: int) -> bool:
        if self.refuse_apic_base:
            return False
        self.apic_bases.append(value)
        return True

    def set_msr(self, index: int, value: int) -> None:
        self.msrs.append((index, value))

    def inject_nmi(self) -> None:
        self.nmis += 1

    def if_flag(self) -> bool:
        return self.interruptible

    def kick(self) -> None:
        pass
