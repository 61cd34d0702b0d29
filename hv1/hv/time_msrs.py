"""The partition's time state and its MSRs (TLFS timers.md; nested-virtualization.md
"Reenlightenment"; feature-discovery.md privileges; inventory §2.5.1, §3.2-3.3, §6.7-6.8, §7.7, §7.20).

| MSR | gate (0x40000003 EAX) | access | behaviour |
|---|---|---|---|
| VP_RUNTIME 0x40000010 | 0 AccessVpRunTimeReg | R, V | 100 ns the VP ran (hv/reftime.VpRuntime) |
| TIME_REF_COUNT 0x40000020 | 1 AccessPartitionReferenceCounter | R, P | ReferenceTime.now() |
| REFERENCE_TSC 0x40000021 | 9 AccessPartitionReferenceTsc (§7.20) | RW, P | TSC page overlay |
| TSC_FREQUENCY 0x40000022 | 11 AccessFrequencyRegs | R, P | guest TSC Hz |
| APIC_FREQUENCY 0x40000023 | 11 AccessFrequencyRegs | R, P | APIC timer input clock Hz |
| STIMER0..3_CONFIG/COUNT 0x400000B0-B7 | 3 AccessSyntheticTimerRegs | RW, V | hv/timers.VpTimers |
| REENLIGHTENMENT_CONTROL 0x40000106 | 13 AccessReenlightenmentControls | RW, P | see below |
| TSC_EMULATION_CONTROL 0x40000107 | 13 | RW, P | bit 0 Enabled, 63:1 RsvdZ dropped |
| TSC_EMULATION_STATUS 0x40000108 | 13 | RW, P | bit 0 InProgress: the guest may only clear it |
| TSC_INVARIANT_CONTROL 0x40000118 | 15 AccessTscInvariantControls [ext] | RW, P | bit 0 only; sticky |

Without the gate both RDMSR and WRMSR #GP (the MSR table checks it); WRMSR of a read-only MSR #GPs.

Reenlightenment (inventory §3.3, §6.8): REENLIGHTENMENT_CONTROL = 7:0 Vector, 16 Enabled, 63:32
TargetVp (15:8, 31:17 RsvdZ, dropped). Enabling with a vector < 16 or a TargetVp that does not exist
#GPs (validated at write). When the host changes the TSC frequency (`simulate_migration`):
- TSC_FREQUENCY reports the new frequency at once;
- with TSC_EMULATION_CONTROL.Enabled, TSC_EMULATION_STATUS.InProgress is set and the reference time
  keeps the old scale (the guest TSC is "emulated at the old rate") until the guest writes 0 to
  TSC_EMULATION_STATUS; then the new scale takes effect (KVM: "TSC page values are not touched while
  the guest opted in and emulation status is set"). Without emulation the new scale takes effect now;
- the reference counter stays continuous and the TSC page gets a new sequence with the new scale
  (sequence 0 for good if the new host has no invariant TSC);
- if reenlightenment is enabled, Vector is asserted on TargetVp.
hv1 cannot trap RDTSC from userspace: unless the machine really changed the guest TSC rate (and
passes the new reader), "migration" relabels the frequency; MSR, page and timers stay consistent
because they share one formula (hv/reftime.py).

TSC_INVARIANT_CONTROL [ext:KVM]: bit 0 "expose invariant TSC"; other bits #GP; clearing it once set
#GPs (KVM: "can't be disabled from the guest"). hv1 cannot change CPUID after the first KVM_RUN, so
the machine exposes CPUID 0x80000007.EDX[8] from the start whenever the TSC page is offered; the MSR
is plain (sticky) storage.

Wiring (tested end to end on KVM in a private copy; guests/tests/timers.c passes with 1/2/4 VPs in
both APIC modes):

    # hv/partition.py, after the MSR table and the per-VP Synics exist (clock: the machine's
    # ReferenceTime; unit tests that pass a FakeClock get ReferenceTime.from_clock(clock)):
    reftime = clock if isinstance(clock, ReferenceTime) else ReferenceTime.from_clock(clock)
    self.time = PartitionTime(caps, reftime, self.new_overlay(), vp_indexes, irq, lock=self.lock,
                              tracer=tracer)
    self.add_subsystem("time", self.time)
    for vp in self.vps:
        self.time.attach_vp(vp, synic_of(vp))   # hv/synic.Synic (try_post + add_ready_listener)
    register_time_msrs(self.msrs, self.time)

    # machine: vCPUs before the partition; the guest TSC is host rdtsc + KVM's offset
    tsc_off = guest_tsc_offset(vcpus[0].fd)           # hv1/backends/kvm/tsc.py
    self.reftime = ReferenceTime(lambda: rdtsc() + tsc_off, vcpus[0].tsc_khz() * 1000)
    # ... pass self.reftime as the partition's clock; per VP (scheduler key ("stimer", i)):
    def _poll_stimers(self, force=False):              # before_entry, the HLT sleep loop, and _stimer_due
        with self._stimer_lock:
            d = partition.time.poll_vp(self.index)
            if d != self._stimer_armed or force:
                self._stimer_armed = d
                at = None if d is None else reftime.host_ns_at(d)
                scheduler.cancel(key) if at is None else scheduler.schedule(key, at, self._stimer_due)
    def _stimer_due(self): self._poll_stimers(force=True)   # scheduler thread; partition lock inside
    # after resume/migration (runs under the partition lock: take no other lock, just make VPs re-arm):
    partition.time.on_change(lambda: [setattr(vp, "_stimer_armed", None) or vp.kick() for vp in vps])
    partition.time.vp_runtime[i].bind_thread_clock()     # first thing on VP i's thread
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

from hv1.hv.apic import APIC_FREQUENCY_HZ  # hv1's APIC model; KVM's in-kernel LAPIC bus is 1 GHz too
from hv1.hv.caps import Caps, Gate, privilege_gate
from hv1.hv.interfaces import InterruptSink, TraceSink, gp
from hv1.hv.overlay import OverlayPage
from hv1.hv.reftime import ReferenceTime, ReferenceTscPage, VpRuntime
from hv1.hv.timers import TimerSynic, VpTimers
from hv1.tlfs import msrs as M
from hv1.tlfs.feature_discovery import FeaturesEdx
from hv1.tlfs.msrs import msr_name
from hv1.tlfs.partition import PartitionPrivilege as P
from hv1.tlfs.timers import STIMER_COUNT

if TYPE_CHECKING:
    from hv1.hv.msrs import MsrRead, MsrTable, MsrWrite
    from hv1.hv.vp import Vp


# HV_X64_MSR_REENLIGHTENMENT_CONTROL (nested-virtualization.md; inventory §3.2).
REENLIGHTENMENT_VECTOR_MASK = 0xFF
REENLIGHTENMENT_ENABLED = 1 << 16
REENLIGHTENMENT_TARGET_VP_SHIFT = 32
REENLIGHTENMENT_VALID = 0xFFFF_FFFF_0001_00FF
TSC_EMULATION_ENABLED = 1 << 0  # TSC_EMULATION_CONTROL
TSC_EMULATION_IN_PROGRESS = 1 << 0  # TSC_EMULATION_STATUS
TSC_INVARIANT_EXPOSE = 1 << 0  # TSC_INVARIANT_CONTROL [ext] HV_EXPOSE_INVARIANT_TSC


class TimerSynicPort(TimerSynic, Protocol):
    """A VP's SynIC as the timers use it (hv/synic.Synic): try_post, plus the hook that tells when a
    SINT may take a message again (EOM, EOI, SINT/SIMP/SCONTROL writes, rescan)."""

    def add_ready_listener(self, callback: Callable[[int], None]) -> None: ...

    def next_release(self) -> int | None: ...

    def rescan(self) -> None: ...


class PartitionTime:
    """Partition-wide time: the reference time source, the TSC page, the frequency MSRs,
    reenlightenment and TSC invariant control, and the per-VP timers and run-time counters.

    Guest-facing methods (the MSR functions) run under the partition lock (the MSR table holds it).
    Host-facing methods (`pause`, `resume`, `simulate_migration`) take `lock` themselves.
    """

    def __init__(
        self,
        caps: Caps,
        reftime: ReferenceTime,
        tsc_page_overlay: OverlayPage,
        vp_indexes: Iterable[int],
        irq: InterruptSink,
        *,
        lock: AbstractContextManager[Any] | None = None,
        apic_hz: int = APIC_FREQUENCY_HZ,
        tracer: TraceSink | None = None,
    ) -> None:
        self.caps = caps
        self.reftime = reftime
        self.tsc_page = ReferenceTscPage(reftime, tsc_page_overlay, tracer)
        # The partition's VP indexes (vp-properties.md "Virtual Processor Index"; a sparse map such as
        # 0,65,130,3 is allowed): TargetVp names a VP by VP index, never by position or count.
        self.vp_indexes: frozenset[int] = frozenset(vp_indexes)
        self.irq = irq
        self.lock: AbstractContextManager[Any] = lock if lock is not None else threading.RLock()
        self.apic_hz = apic_hz
        self.tracer = tracer
        self.tsc_hz = reftime.tsc_hz  # what TSC_FREQUENCY reports
        self.reenlightenment_control = 0
        self.tsc_emulation_control = 0
        self.tsc_emulation_status = 0
        self.tsc_invariant_control = 0
        self._deferred_hz: int | None = None  # new scale waiting for the end of TSC emulation
        self.vp_timers: dict[int, VpTimers] = {}
        self.vp_runtime: dict[int, VpRuntime] = {}
        self.vp_synics: dict[int, TimerSynicPort] = {}
        self._listeners: list[Callable[[], None]] = []
        self.migrations = 0
        reftime.on_change(self._params_changed)

    def set_min_period(self, period: int) -> None:
        """The shortest period (100 ns units) any synthetic timer of the partition runs with: a
        slower backend needs more time between expiries for the guest to make progress (the
        default, timers.MIN_PERIOD, is 100 us)."""
        for timers in self.vp_timers.values():
            timers.min_period = period

    # --- per VP --------------------------------------------------------------------------------------
    def attach_vp(self, vp: Vp, synic: TimerSynicPort | None) -> VpTimers:
        """Create VP `vp`'s timers and run-time counter, attach them as `vp.state.timers` and
        `vp.state.runtime` (reset with the VP), and subscribe the timers to the SynIC's ready hook
        (pending expiries are retried on EOM, unmask, SIMP/SCONTROL enable)."""
        timers = VpTimers(
            vp.index,
            self.reftime,
            self.irq,
            synic,
            direct_mode_available=self.caps.has_feature(FeaturesEdx.DirectSyntheticTimers),
            tracer=self.tracer,
        )
        runtime = VpRuntime()
        if vp.state.timers is not None or vp.state.runtime is not None:
            raise ValueError(f"VP {vp.index} already has synthetic timers")
        vp.state.timers = timers
        vp.state.runtime = runtime
        self.vp_timers[vp.index] = timers
        self.vp_runtime[vp.index] = runtime
        if synic is not None:
            synic.add_ready_listener(timers.sint_ready)
            self.vp_synics[vp.index] = synic
        return timers

    def poll_vp(self, vp_index: int, now: int | None = None) -> int | None:
        """The machine's timer hook for VP `vp_index` (call on that VP's thread before entering the
        guest, and when the scheduler kicks it): fire due timers, retry pending messages, return the
        next deadline in reference time (None: nothing armed; convert with reftime.host_ns_at).
        Lock-free when nothing is due."""
        timers = self.vp_timers[vp_index]
        inj = timers.inject
        if inj is not None and inj.holds_messages:
            return self._poll_held_messages(timers, now)
        nxt = timers.next_deadline()
        if nxt is None:
            return None
        if now is None:
            now = self.reftime.now()
        if now < nxt:
            return nxt
        with self.lock:
            return timers.poll(now)

    def _poll_held_messages(self, timers: VpTimers, now: int | None) -> int | None:
        """poll_vp with message-holding fault injection (hv/inject.py): messages held until a release time
        are released here, for every VP (the poster's VP is the one sure to come by soon: the target
        may sit in HLT), and the earliest release counts as a deadline, so the machine's scheduler
        wakes a VP then."""
        with self.lock:
            if now is None:
                now = self.reftime.now()
            nxt = timers.poll(now)
            for synic in self.vp_synics.values():
                release = synic.next_release()
                if release is not None and now >= release:
                    synic.rescan()
                    release = synic.next_release()
                if release is not None and (nxt is None or release < nxt):
                    nxt = release
            return nxt

    # --- host side ---------------------------------------------------------------------------------------
    def on_change(self, listener: Callable[[], None]) -> None:
        """`listener()` runs (under the lock) after the reference time parameters changed: resume,
        migration. The machine re-converts its scheduler deadlines (e.g. kicks every VP so that it
        re-polls its timers and re-arms)."""
        self._listeners.append(listener)

    def _params_changed(self) -> None:
        self.tsc_page.publish()
        for listener in list(self._listeners):
            listener()

    def pause(self) -> None:
        """Every VP is suspended: the reference counter stops (timers.md "Reference Counter")."""
        with self.lock:
            self.reftime.pause()

    def resume(self) -> None:
        with self.lock:
            self.reftime.resume()

    def simulate_migration(
        self,
        new_tsc_hz: int,
        *,
        invariant: bool = True,
        tsc_now: Callable[[], int] | None = None,
        true_hz: int | None = None,
    ) -> None:
        """The partition "moved" to a host whose TSC runs at `new_tsc_hz` (see the module doc).
        `invariant=False`: the new host has no invariant TSC, the TSC page publishes sequence 0.
        `tsc_now`/`true_hz`: the machine really changed the guest TSC (new reader and real rate)."""
        with self.lock:
            self.migrations += 1
            self.tsc_hz = new_tsc_hz
            real_change = tsc_now is not None
            emulate = bool(self.tsc_emulation_control & TSC_EMULATION_ENABLED) and not real_change
            if emulate:
                self.tsc_emulation_status |= TSC_EMULATION_IN_PROGRESS
                self._deferred_hz = new_tsc_hz
            if not invariant:
                self.reftime.set_reliable(False)
            if not emulate:
                self._deferred_hz = None
                self.reftime.set_frequency(new_tsc_hz, tsc_now=tsc_now, true_hz=true_hz)
            seq = self.tsc_page.sequence
            self._trace("migration", tsc_hz=new_tsc_hz, emulation=emulate, invariant=invariant, seq=seq)
            self._notify_reenlightenment()

    def _notify_reenlightenment(self) -> None:
        ctl = self.reenlightenment_control
        if not ctl & REENLIGHTENMENT_ENABLED:
            return
        target = ctl >> REENLIGHTENMENT_TARGET_VP_SHIFT
        vector = ctl & REENLIGHTENMENT_VECTOR_MASK
        if target in self.vp_indexes:  # validated at write; a reset VP set cannot change it
            self._trace("reenlightenment", target_vp=target, vector=vector)
            self.irq.request_interrupt(target, vector, False)

    def reset(self) -> None:
        """Partition reset: MSRs back to 0, page unmapped, timers reset (through vp.state, Vp.reset). The
        reference counter keeps counting (it is zeroed only at partition creation)."""
        self.tsc_page.reset()
        self.reenlightenment_control = self.tsc_emulation_control = 0
        self.tsc_invariant_control = 0
        if self.tsc_emulation_status & TSC_EMULATION_IN_PROGRESS:
            self._end_emulation()
        self.tsc_emulation_status = 0

    def _end_emulation(self) -> None:
        hz, self._deferred_hz = self._deferred_hz, None
        if hz is not None and hz != self.reftime.tsc_hz:
            self.reftime.set_frequency(hz)

    def _trace(self, event: str, **fields: Any) -> None:
        if self.tracer is not None:
            self.tracer.emit("timers", -1, event, **fields)

    # --- MSR functions (under the partition lock) ----------------------------------------------------
    def read_vp_runtime(self, vp: Vp) -> int:
        return self.vp_runtime[vp.index].read()

    def read_time_ref_count(self, vp: Vp) -> int:
        return self.reftime.now()

    def read_reference_tsc(self, vp: Vp) -> int:
        return self.tsc_page.value

    def write_reference_tsc(self, vp: Vp, value: int) -> None:
        self.tsc_page.write_msr(value)

    def read_tsc_frequency(self, vp: Vp) -> int:
        return self.tsc_hz

    def read_apic_frequency(self, vp: Vp) -> int:
        return self.apic_hz

    def read_reenlightenment_control(self, vp: Vp) -> int:
        return self.reenlightenment_control

    def write_reenlightenment_control(self, vp: Vp, value: int) -> None:
        value &= REENLIGHTENMENT_VALID  # RsvdZ 15:8 and 31:17 dropped (inventory §7.7)
        if value & REENLIGHTENMENT_ENABLED:
            # "Vector (must be a fixed APIC interrupt vector)"; TargetVp must name a VP.
            if (value & REENLIGHTENMENT_VECTOR_MASK) < 16:
                raise gp()
            if value >> REENLIGHTENMENT_TARGET_VP_SHIFT not in self.vp_indexes:
                raise gp()
        self.reenlightenment_control = value

    def read_tsc_emulation_control(self, vp: Vp) -> int:
        return self.tsc_emulation_control

    def write_tsc_emulation_control(self, vp: Vp, value: int) -> None:
        self.tsc_emulation_control = value & TSC_EMULATION_ENABLED

    def read_tsc_emulation_status(self, vp: Vp) -> int:
        return self.tsc_emulation_status

    def write_tsc_emulation_status(self, vp: Vp, value: int) -> None:
        # The guest only ends emulation: setting InProgress is the hypervisor's (KVM: #GP).
        if value & TSC_EMULATION_IN_PROGRESS:
            raise gp()
        was = self.tsc_emulation_status & TSC_EMULATION_IN_PROGRESS
        self.tsc_emulation_status = value  # 63:1 RsvdP: stored
        if was:
            self._trace("tsc-emulation-end", tsc_hz=self.tsc_hz)
            self._end_emulation()

    def read_tsc_invariant_control(self, vp: Vp) -> int:
        return self.tsc_invariant_control

    def write_tsc_invariant_control(self, vp: Vp, value: int) -> None:
        if value & ~TSC_INVARIANT_EXPOSE:
            raise gp()
        if self.tsc_invariant_control and not value:
            raise gp()  # cannot be disabled once set (KVM)
        self.tsc_invariant_control = value

    def read_stimer(self, vp: Vp, msr: int) -> int:
        timers = self.vp_timers[vp.index]
        index, is_count = divmod(msr - M.HV_X64_MSR_STIMER0_CONFIG, 2)
        return timers.read_count(index) if is_count else timers.read_config(index)

    def write_stimer(self, vp: Vp, msr: int, value: int) -> None:
        timers = self.vp_timers[vp.index]
        index, is_count = divmod(msr - M.HV_X64_MSR_STIMER0_CONFIG, 2)
        if is_count:
            timers.write_count(index, value)
        else:
            timers.write_config(index, value)


def register_time_msrs(table: MsrTable, time: PartitionTime) -> None:
    """Add the time MSRs to the partition's MSR table (hv/msrs.py). Names come from hv1/tlfs/msrs.py."""
    from hv1.hv.msrs import Scope  # runtime import: hv/msrs imports the partition type lazily too

    reenl = privilege_gate(P.AccessReenlightenmentControls)
    freq = privilege_gate(P.AccessFrequencyRegs)
    # (MSR, gate, read, write (None: read-only), scope) -- the table of the module docstring.
    rows: tuple[tuple[int, Gate, MsrRead, MsrWrite | None, Scope], ...] = (
        (M.HV_X64_MSR_VP_RUNTIME, privilege_gate(P.AccessVpRunTimeReg), time.read_vp_runtime, None, Scope.VP),
        (M.HV_X64_MSR_TIME_REF_COUNT, privilege_gate(P.AccessPartitionReferenceCounter),
         time.read_time_ref_count, None, Scope.PARTITION),
        (M.HV_X64_MSR_REFERENCE_TSC, privilege_gate(P.AccessPartitionReferenceTsc), time.read_reference_tsc,
         time.write_reference_tsc, Scope.PARTITION),
        (M.HV_X64_MSR_TSC_FREQUENCY, freq, time.read_tsc_frequency, None, Scope.PARTITION),
        (M.HV_X64_MSR_APIC_FREQUENCY, freq, time.read_apic_frequency, None, Scope.PARTITION),
        (M.HV_X64_MSR_REENLIGHTENMENT_CONTROL, reenl, time.read_reenlightenment_control,
         time.write_reenlightenment_control, Scope.PARTITION),
        (M.HV_X64_MSR_TSC_EMULATION_CONTROL, reenl, time.read_tsc_emulation_control,
         time.write_tsc_emulation_control, Scope.PARTITION),
        (M.HV_X64_MSR_TSC_EMULATION_STATUS, reenl, time.read_tsc_emulation_status,
         time.write_tsc_emulation_status, Scope.PARTITION),
        (M.HV_X64_MSR_TSC_INVARIANT_CONTROL, privilege_gate(P.AccessTscInvariantControls),
         time.read_tsc_invariant_control, time.write_tsc_invariant_control, Scope.PARTITION),
    )  # fmt: skip
    for msr, gate, read, write, scope in rows:
        table.register(msr, msr_name(msr), gate, read=read, write=write, scope=scope)
    stimer = privilege_gate(P.AccessSyntheticTimerRegs)
    for i in range(STIMER_COUNT):
        for is_count in (False, True):
            msr = M.HV_X64_MSR_STIMER0_CONFIG + 2 * i + int(is_count)
            table.register(
                msr,
                msr_name(msr),
                stimer,
                read=_bind_read(time, msr),
                write=_bind_write(time, msr),
                scope=Scope.VP,
            )


def _bind_read(time: PartitionTime, msr: int) -> Callable[[Vp], int]:
    return lambda vp: time.read_stimer(vp, msr)


def _bind_write(time: PartitionTime, msr: int) -> Callable[[Vp, int], None]:
    return lambda vp, value: time.write_stimer(vp, msr, value)
