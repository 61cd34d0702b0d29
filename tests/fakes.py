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
class FakeKicker:
    kicked: list[int] = field(default_factory=list)

    def kick(self, vp_index: int) -> None:
        self.kicked.append(vp_index)


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
