"""The partition: the hypervisor state of one guest and the entry points a backend calls.

Backend entry points (each takes `lock`; hooks that may block run after it is released):

- `cpuid_leaves()`: the hypervisor CPUID leaves to install (hv/cpuid.py composes a full table).
- `owns_msr(msr)`: whether an RDMSR/WRMSR exit for `msr` belongs here.
- `rdmsr(vp_index, msr) -> int`, `wrmsr(vp_index, msr, value)`: raise GuestException (#GP).
- `hypercall(vp_index, regs)`: the `out` to HYPERCALL_PORT from the hypercall page; raises
  GuestException (#UD); otherwise the result is in `regs`.
- `reset()`: all Hv state back to reset values (the machine calls it on a platform reset).

Extension points for later subsystems (SynIC, timers, APIC enlightenments, VP assist, TSC page):
`msrs.register(...)` (hv/msrs.py), `hypercalls.register(HypercallDef(...))` (hv/hypercalls),
a field of `vp.state` (hv/vp.py VpState) and `add_subsystem(name, obj)` (objects with `reset()`), and
`new_overlay()` for overlay pages. Everything they do runs under `lock`.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Protocol

from hv1 import profiler as _profiler
from hv1.hv.caps import Caps
from hv1.hv.guest_cpu import ARCHITECTURAL, GuestCpu
from hv1.hv.hypercall_page import HypercallPage
from hv1.hv.hypercalls import HypercallTable, core_table, dispatch
from hv1.hv.inject import Injector
from hv1.hv.interfaces import Clock, GuestException, GuestMemory, InterruptSink, VpRegisters
from hv1.hv.msrs import MsrTable, register_core_msrs
from hv1.hv.overlay import OverlayLayer, OverlayPage
from hv1.hv.ports import PartitionPorts
from hv1.hv.reftime import ReferenceTime
from hv1.hv.synic import attach_synic, synic_of
from hv1.hv.time_msrs import PartitionTime, register_time_msrs
from hv1.hv.vp import Resettable, Vp
from hv1.tlfs.msrs import HV_X64_MSR_GUEST_OS_ID
from hv1.trace import NULL_TRACER, Tracer

if TYPE_CHECKING:
    from hv1.hv.hypervisor import Hypervisor
    from hv1.profiler import PhaseClock


def _since(t0: int) -> int:
    """Nanoseconds since perf_counter_ns() == t0; 0 when t0 is 0 (nobody records the duration)."""
    return time.perf_counter_ns() - t0 if t0 else 0


# HV_PARTITION_ID of the (only) partition: IDs are allocated by the hypervisor from 1.
PARTITION_ID = 1

# Continuation budget for rep hypercalls (hv/hypercalls/dispatch.py). The TLFS aims at 50 us per
# hypercall; a Python exit costs ~15-30 us by itself, so hv1 allows more per exit.
DEFAULT_REP_BUDGET_NS = 200_000


class PartitionHooks(Protocol):
    """What the hypervisor asks of the machine. Called outside the partition lock, on the VP's thread
    that caused it."""

    def request_reset(self) -> None:
        """The guest wrote HV_X64_MSR_RESET: reset the platform (and call Partition.reset())."""
        ...

    def guest_crash(self, vp_index: int, params: tuple[int, ...], message: bytes | None) -> None:
        """The guest wrote CRASH_CTL.CrashNotify: params = (P0, P1, P2, P3, P4); `message` is the
        crash message buffer when CrashMessage was set and P3/P4 name readable RAM, else None."""
        ...

    def yield_vp(self, vp_index: int) -> None:
        """HvCallNotifyLongSpinWait: give the host CPU to another VP for a moment."""
        ...

    def hypercall_page_moved(self, gpa: int | None) -> None:
        """The hypercall page is now shown at `gpa` (None: nowhere). The machine makes that page
        read/execute-only for the guest (a partition reset puts it back to nowhere by itself)."""
        ...


class Partition:
    def __init__(
        self,
        caps: Caps,
        vp_count: int,
        memory: GuestMemory,
        clock: Clock,
        irq: InterruptSink,
        hooks: PartitionHooks,
        tracer: Tracer = NULL_TRACER,
        apic_ids: Sequence[int] | None = None,
        boot_zeroed: Iterable[tuple[int, int]] = (),
        vp_indexes: Sequence[int] | None = None,
    ) -> None:
        if vp_count < 1:
            raise ValueError("a partition needs at least one VP")
        apic_ids = list(range(vp_count)) if apic_ids is None else list(apic_ids)
        if len(apic_ids) != vp_count or len(set(apic_ids)) != vp_count:
            raise ValueError(f"need {vp_count} distinct APIC IDs, got {apic_ids}")
        self.caps: Caps = caps
        self.memory: GuestMemory = memory
        self.clock: Clock = clock
        self.irq: InterruptSink = irq
        self.hooks: PartitionHooks = hooks
        self.tracer: Tracer = tracer
        self.partition_id: int = PARTITION_ID
        # The partition engine (hv1/hv/hypervisor.py) when this partition may act as a virtualization
        # host: set by attach_hypervisor().
        self.hypervisor: Hypervisor | None = None
        self.lock = threading.RLock()
        self.counters: collections.Counter[str] = collections.Counter()
        # RAM that was zero at boot, as (start GPA, length in bytes): set by the machine, used by
        # HvExtCallGetBootZeroedMemory (partial pages at the edges are left out).
        self.boot_zeroed: list[tuple[int, int]] = list(boot_zeroed)
        self.rep_budget_ns = DEFAULT_REP_BUDGET_NS
        # The guest's processor as its CPUID describes it (hv/guest_cpu.py): the machine sets it from
        # the CPUID table it installs, before the first VP runs. Guest-supplied register state
        # (HvCallStartVirtualProcessor) is checked against it.
        self.guest_cpu: GuestCpu = ARCHITECTURAL
        self.rep_budget_reps: int | None = None  # also yield after this many rep elements per exit
        # Fault injection (hv/inject.py): None unless the host asked for it; see set_injection.
        self.inject: Injector | None = None
        # VP indexes (HV_X64_MSR_VP_INDEX) of the VPs in APIC-ID order; sparse maps allowed (hv/vpset.py
        # parse_vp_index_map). Every entry point and hook names VPs by VP index.
        vp_indexes = list(range(vp_count)) if vp_indexes is None else list(vp_indexes)
        if len(vp_indexes) != vp_count or len(set(vp_indexes)) != vp_count:
            raise ValueError(f"need {vp_count} distinct VP indexes, got {vp_indexes}")
        self.vps = [Vp(self, vp_indexes[i], apic_ids[i]) for i in range(vp_count)]
        self._vp_by_index = {vp.index: vp for vp in self.vps}
        self._vp_by_apic_id = {vp.apic_id: vp.index for vp in self.vps}
        self.subsystems: dict[str, Resettable] = {}
        self.overlays = OverlayLayer(memory)
        self.hypercall_page = HypercallPage(self.new_overlay(guest_writable=False))
        self.msrs = MsrTable(self)
        register_core_msrs(self.msrs)
        self.hypercalls: HypercallTable = core_table()
        # Subsystems: each registers its MSRs and hypercalls into the tables above and its state on
        # the VPs. Registering is unconditional: the caps gate every access.
        self.ports: PartitionPorts = attach_synic(self)
        reftime = clock if isinstance(clock, ReferenceTime) else ReferenceTime.from_clock(clock)
        self.time = PartitionTime(
            caps, reftime, self.new_overlay(), vp_indexes, irq, lock=self.lock, tracer=tracer
        )
        self.add_subsystem("time", self.time)
        for vp in self.vps:
            self.time.attach_vp(vp, synic_of(vp))
        register_time_msrs(self.msrs, self.time)
        if caps.beyond_requirements:
            self._register_host_calls_refused()

    def _register_host_calls_refused(self) -> None:
        """The privilege-gated virtualization-host calls, before any engine is attached: a guest without
        CreatePartitions (etc.) gets HV_STATUS_ACCESS_DENIED, the status each call's TLFS page lists
        for a caller without the privilege (hypercalls/HvCallCreatePartition.md, ...), not
        INVALID_HYPERCALL_CODE as if hv1 did not implement them. Their handlers need the engine; the
        gate refuses before a handler runs, and `attach_hypervisor` puts the working calls in place for
        a partition that gets the privilege. A Requirements-only partition (`minimal`) leaves them
        unimplemented (INVALID_HYPERCALL_CODE, Requirements doc "unimplemented hypercalls")."""
        from hv1.hv.hypercalls import virtualization_host

        for d in virtualization_host.DEFS:
            if (
                d.gate.privileges
                and self.hypercalls.get(d.code) is None
                and not self.caps.has_privilege(d.gate.privileges)
            ):
                self.hypercalls.register(d)

    # --- state --------------------------------------------------------------------------------------
    @property
    def guest_os_id(self) -> int:
        return self.msrs.values[HV_X64_MSR_GUEST_OS_ID]

    def hypercall_page_enabled(self) -> bool:
        """Whether the backend should route `out HYPERCALL_PORT` here (hv/hypercall_page.py)."""
        return self.hypercall_page.enabled

    def vp(self, vp_index: int) -> Vp | None:
        """The VP with this VP index, if any."""
        return self._vp_by_index.get(vp_index)

    def vp_index_from_apic_id(self, apic_id: int) -> int | None:
        return self._vp_by_apic_id.get(apic_id)

    def attach_hypervisor(self, hv: Hypervisor, partition_id: int) -> None:
        """Make this partition `partition_id` of `hv` and give it the virtualization-host hypercalls
        (hv/hypercalls/virtualization_host.py), each still gated by its privilege. A partition that is
        not attached refuses them (`_register_host_calls_refused`)."""
        from hv1.hv.hypercalls import virtualization_host

        with self.lock:
            self.hypervisor = hv
            self.partition_id = partition_id
            for d in virtualization_host.DEFS:
                if self.hypercalls.get(d.code) is None:
                    self.hypercalls.register(d)
                else:  # registered refused-only by _register_host_calls_refused
                    self.hypercalls.replace(d)
            self.hypercalls.replace(virtualization_host.GET_PARTITION_PROPERTY)
            # Ports between partitions (hv1/hv/port_registry.py): the port calls may name a child, and
            # connections the engine holds for this partition are reachable from its guest.
            for d in virtualization_host.PORT_DEFS:
                self.hypercalls.replace(d)
            self.ports.partition_id = partition_id
        hv.attach_ports(partition_id, self.ports)  # engine lock after (never under) the partition lock

    def new_overlay(self, *, guest_writable: bool = True) -> OverlayPage:
        return OverlayPage(self.memory, self.overlays, guest_writable=guest_writable)

    def set_injection(self, injector: Injector | None) -> None:
        """Install fault-injection rules (hv/inject.py), or None to remove them. The hook points are
        the dispatcher, the MSR table, every VP's SynIC and timers; injected events are traced in
        category "inject". Call before the VPs run (or with no VP inside the hypervisor)."""
        with self.lock:
            if injector is not None:
                injector.tracer = self.tracer
                injector.clock = self.time.reftime
            self.inject = injector
            for vp in self.vps:
                synic_of(vp).inject = injector
                self.time.vp_timers[vp.index].inject = injector

    def add_subsystem(self, name: str, obj: Resettable) -> None:
        if name in self.subsystems:
            raise ValueError(f"subsystem {name!r} already attached")
        self.subsystems[name] = obj

    # --- backend entry points -------------------------------------------------------------------
    def cpuid_leaves(self) -> dict[int, tuple[int, int, int, int]]:
        """Leaves 0x40000000..max. Leaf 0x40000002 follows GUEST_OS_ID at the time of the call; the
        KVM backend asks once before the first run, so it is zero there (caps.DEVIATIONS)."""
        return self.caps.cpuid_leaves(guest_os_id_set=self.guest_os_id != 0)

    def owns_msr(self, msr: int) -> bool:
        return self.msrs.owns(msr)

    def rdmsr(self, vp_index: int, msr: int) -> int:
        vp = self._vp_by_index[vp_index]
        # The access's duration (a timeline slice, `hv1 stats` latency) only when someone records it.
        t0 = time.perf_counter_ns() if self.tracer.wants("msrs") else 0
        try:
            with self.lock:
                try:
                    value = self.msrs.read(vp, msr)
                except GuestException:
                    self.tracer.emit(
                        "msrs", vp_index, "rdmsr", msr=self.msrs.name(msr), gp=True, ns=_since(t0)
                    )
                    raise
                self.tracer.emit(
                    "msrs", vp_index, "rdmsr", msr=self.msrs.name(msr), value=value, ns=_since(t0)
                )
                return value
        finally:
            vp.run_deferred()

    def wrmsr(self, vp_index: int, msr: int, value: int) -> None:
        vp = self._vp_by_index[vp_index]
        value &= (1 << 64) - 1
        t0 = time.perf_counter_ns() if self.tracer.wants("msrs") else 0
        try:
            with self.lock:
                shown = self.hypercall_page.shown_at()
                try:
                    self.msrs.write(vp, msr, value)
                except GuestException:
                    self.tracer.emit(
                        "msrs",
                        vp_index,
                        "wrmsr",
                        msr=self.msrs.name(msr),
                        value=value,
                        gp=True,
                        ns=_since(t0),
                    )
                    raise
                self.tracer.emit(
                    "msrs", vp_index, "wrmsr", msr=self.msrs.name(msr), value=value, ns=_since(t0)
                )
                self._hypercall_page_moved(vp, shown)
        finally:
            vp.run_deferred()

    def _hypercall_page_moved(self, vp: Vp, before: int | None) -> None:
        """Tell the machine where the hypercall page is visible now, so that it keeps exactly that
        page read/execute-only for the guest (hypercall-interface.md "Hypercall Page": "Attempts to
        write to the hypercall page will result in a protection (#GP) exception"). Any MSR that maps
        an overlay may move, hide (a SIMP mapped over it) or uncover it. Deferred: it changes memory
        slots, which must not happen under the partition lock."""
        after = self.hypercall_page.shown_at()
        if after != before:
            vp.defer(lambda: self.hooks.hypercall_page_moved(after))

    def hypercall(self, vp_index: int, regs: VpRegisters) -> None:
        prof = _profiler.ACTIVE
        if prof is not None:
            self._hypercall_profiled(prof.clock(), vp_index, regs)
            return
        vp = self._vp_by_index[vp_index]
        try:
            with self.lock:
                dispatch(self, vp, regs)
        finally:
            vp.run_deferred()

    def _hypercall_profiled(self, clk: PhaseClock, vp_index: int, regs: VpRegisters) -> None:
        """`hypercall` with the phase laps of the per-exit profile (hv1/profiler.py): the same steps."""
        clk.lap("route")
        vp = self._vp_by_index[vp_index]
        try:
            self.lock.acquire()
            clk.lap("lock")
            try:
                dispatch(self, vp, regs)
            finally:
                self.lock.release()
                clk.lap("lock")
        finally:
            vp.run_deferred()
            clk.lap("deferred")

    def reset(self) -> None:
        """Every piece of Hv state back to its reset value: MSRs, the hypercall page (disabled,
        unlocked), every overlay unmapped and zeroed, per-VP state and subsystems. Counters are kept
        (they are statistics, not guest-visible state).

        Guest RAM is not written: the overlays are dropped first (OverlayLayer.reset), so the resets
        after it find nothing mapped and nothing restores the RAM saved under an overlay in the
        previous boot. The machine gives the guest fresh RAM around this call (Machine._reboot), and
        after a reset RAM must be exactly that fresh image."""
        with self.lock:
            self.overlays.reset()
            self.hypercall_page.reset()
            self.msrs.reset()
            for vp in self.vps:
                vp.reset()
            for obj in self.subsystems.values():
                obj.reset()
