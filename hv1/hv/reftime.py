"""Partition reference time, the reference TSC page and VP run time (TLFS timers.md "Reference
Counter", "Partition Reference Time Enlightenment"; Requirements doc "Partition Reference Time
Enlightenment"; inventory §3.3, §6.7.1-2, §7.13, Appendix A "Timers/clock").

One timeline, defined from the guest TSC with the formula the TSC page publishes:

    ReferenceTime = ((GuestTsc * TscScale) >> 64) + TscOffset        (100 ns units)

HV_X64_MSR_TIME_REF_COUNT, the TSC page and the synthetic timers all evaluate exactly this, so a
guest never sees the page and the MSR disagree, and a timer never fires "early" by the guest's own
clock (the WSL #6982 / peers.md §4.5 failure: expiry computed on a different clock than the guest's).

- TscScale = floor(10^7 * 2^64 / tsc_hz) (inventory §6.7.2; Xen/OpenVMM/Propolis use the same);
  TscOffset is chosen so that the counter is 0 when the partition is created ("A partition's
  reference time counter is initialized to zero when the partition is created").
- pause()/resume(): the counter stops while every VP is suspended ("continues to count up as long as
  at least one virtual processor is not explicitly suspended"; "will appear to stop during the time
  that a guest partition is saved"). The guest TSC may keep running meanwhile, so resume() picks a
  new offset that continues from the frozen value; every parameter change bumps the page sequence.
- A frequency change (simulated migration, hv/time_msrs.py) rescales continuously the same way.
- The scheduler lives in host monotonic ns: `host_ns_at(ref)` inverts the formula to the guest TSC
  value at which the deadline is reached and converts the TSC distance with the TSC's real rate.

The TSC page (`ReferenceTscPage`) is a partition-wide overlay (hv/overlay.py), zeroed when enabled,
updated with the sequence protocol: TscSequence = 0, then scale/offset, then a new sequence that is
never 0 or 0xFFFFFFFF (inventory §7.13: 0 is today's "invalid", 0xFFFFFFFF was pre-v5's). While the
formula cannot be trusted (TSC not reliable, host without invariant TSC) TscSequence stays 0 and
guests read HV_X64_MSR_TIME_REF_COUNT instead.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from hv1.hv.interfaces import PAGE_SHIFT, Clock, TraceSink
from hv1.hv.overlay import OverlayPage

REF_HZ = 10_000_000  # reference time counts 100 ns units
U64 = (1 << 64) - 1

# HV_REFERENCE_TSC_PAGE (timers.md "Partition Reference Time Stamp Counter Page"; inventory §6.7.2).
TSC_PAGE_SEQUENCE_OFFSET = 0  # volatile UINT32 TscSequence
TSC_PAGE_SCALE_OFFSET = 8  # volatile UINT64 TscScale
TSC_PAGE_OFFSET_OFFSET = 16  # volatile INT64 TscOffset
TSC_SEQUENCE_INVALID = 0  # "this facility is no longer a reliable source of reference time"
TSC_SEQUENCE_INVALID_LEGACY = 0xFFFF_FFFF  # pre-v5 TLFS "invalid" value: never published as valid

# HV_X64_MSR_REFERENCE_TSC (timers.md "Register Layout").
REFERENCE_TSC_ENABLE = 1 << 0
REFERENCE_TSC_RSVDP = 0xFFE  # bits 11:1, preserved
REFERENCE_TSC_GPFN_SHIFT = PAGE_SHIFT


def tsc_scale(tsc_hz: int) -> int:
    """TscScale for a TSC of `tsc_hz`: 64.64 fixed-point reference ticks per TSC tick."""
    if tsc_hz <= REF_HZ:
        # A scale >= 2^64 does not fit the page; no x86 TSC this slow exists.
        raise ValueError(f"TSC frequency {tsc_hz} Hz is too low for the reference TSC page")
    return (REF_HZ << 64) // tsc_hz


def ref_from_tsc(tsc: int, scale: int, offset: int) -> int:
    """The TLFS formula (timers.md "Partition Reference TSC Mechanism"): 64x64->128-bit multiply,
    high 64 bits, plus the signed offset."""
    return ((tsc * scale) >> 64) + offset


def next_sequence(seq: int) -> int:
    """The sequence after `seq`, skipping 0 and 0xFFFFFFFF (inventory §7.13)."""
    seq = (seq + 1) & 0xFFFF_FFFF
    while seq in (TSC_SEQUENCE_INVALID, TSC_SEQUENCE_INVALID_LEGACY):
        seq = (seq + 1) & 0xFFFF_FFFF
    return seq


def _to_i64(value: int) -> int:
    value &= U64
    return value - (1 << 64) if value >> 63 else value


class ReferenceTime:
    """The partition reference time source (implements interfaces.Clock).

    `tsc_now()` reads the guest TSC (the machine: host rdtsc + KVM's TSC offset); `tsc_hz` is its
    frequency (KVM_GET_TSC_KHZ * 1000). `host_ns()` is the scheduler's clock (time.monotonic_ns).
    Thread-safe: any VP thread, the scheduler thread and the host may call it.
    """

    def __init__(
        self,
        tsc_now: Callable[[], int],
        tsc_hz: int,
        *,
        host_ns: Callable[[], int] = time.monotonic_ns,
        reliable: bool = True,
    ) -> None:
        self._tsc_now = tsc_now
        self._host_ns = host_ns
        self._lock = threading.Lock()
        self._tsc_hz = tsc_hz  # the frequency the formula (and the guest) assumes
        self._true_hz = tsc_hz  # how fast tsc_now() really advances (differs after a simulated migration)
        scale = tsc_scale(tsc_hz)
        # (scale, offset): one tuple, replaced whole, so readers never see half an update.
        self._params = (scale, -((tsc_now() * scale) >> 64))
        self._last = 0  # largest value handed out: the counter never goes backwards
        self._monotonic = True
        self._frozen: int | None = None  # the counter's value while paused
        self.reliable = reliable  # False: the page publishes sequence 0 (guests use the MSR)
        self._listeners: list[Callable[[], None]] = []

    @classmethod
    def from_clock(cls, clock: Clock) -> ReferenceTime:
        """A ReferenceTime that returns exactly `clock.now()` (unit tests that give the partition a
        FakeClock). Its "TSC" is 2 x the clock, so TscScale = 2^63 and TscOffset = 0."""
        rt = cls(lambda: 2 * clock.now(), 2 * REF_HZ)
        rt._params = (rt._params[0], 0)
        rt._monotonic = False
        return rt

    # --- reading -----------------------------------------------------------------------------------
    def now(self) -> int:
        """The reference counter now (100 ns since partition creation): HV_X64_MSR_TIME_REF_COUNT."""
        frozen = self._frozen
        if frozen is not None:
            return frozen
        scale, offset = self._params
        value = ((self._tsc_now() * scale) >> 64) + offset
        if not self._monotonic:
            return value
        with self._lock:
            # Strictly monotonic as seen by all VPs (timers.md "Reference Counter"): TSCs of different
            # host CPUs may differ by a few cycles; never hand out a smaller value than before.
            if value < self._last:
                return self._last
            self._last = value
            return value

    @property
    def tsc_hz(self) -> int:
        """The guest TSC frequency the formula assumes."""
        return self._tsc_hz

    def params(self) -> tuple[int, int]:
        """(TscScale, TscOffset) as published in the TSC page."""
        return self._params

    def ref_at_tsc(self, tsc: int) -> int:
        scale, offset = self._params
        return ref_from_tsc(tsc, scale, offset)

    def tsc_at_ref(self, ref: int) -> int:
        """The smallest guest TSC value at which the formula reaches `ref`."""
        scale, offset = self._params
        r = ref - offset
        if r <= 0:
            return 0
        return -((-r << 64) // scale)  # ceil(r * 2^64 / scale)

    def host_ns_at(self, ref: int) -> int | None:
        """The host monotonic ns at which the counter reaches `ref` (never earlier: rounded up), for
        the scheduler. None while paused (the counter does not move; resume() notifies listeners)."""
        if self._frozen is not None:
            return None
        target = self.tsc_at_ref(ref)
        host = self._host_ns()
        delta = target - self._tsc_now()
        if delta <= 0:
            return host
        return host + -((-delta * 1_000_000_000) // self._true_hz)

    # --- changing the parameters -------------------------------------------------------------------
    def on_change(self, listener: Callable[[], None]) -> None:
        """Call `listener()` after every parameter change (resume, frequency change, reliability):
        the TSC page republishes, the machine re-arms scheduler deadlines."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in list(self._listeners):
            listener()

    def pause(self) -> None:
        """Every VP is suspended: freeze the counter."""
        if self._frozen is None:
            self._frozen = self.now()

    def resume(self) -> None:
        """Continue from the frozen value whatever the guest TSC did meanwhile."""
        frozen = self._frozen
        if frozen is None:
            return
        scale, _ = self._params
        self._params = (scale, frozen - ((self._tsc_now() * scale) >> 64))
        self._frozen = None
        self._changed()

    def set_frequency(
        self, tsc_hz: int, *, tsc_now: Callable[[], int] | None = None, true_hz: int | None = None
    ) -> None:
        """The guest TSC now runs at `tsc_hz` (a migration). The counter continues from its current
        value with the new scale. When the machine really changed the guest TSC rate it passes the
        new reader and its real rate; otherwise `tsc_now()` keeps its real rate (a simulation: the
        counter then runs at true_hz/tsc_hz of real time, consistently for MSR, page and timers, and
        host deadlines still convert with the real rate)."""
        current = self.now()
        if tsc_now is not None:
            self._tsc_now = tsc_now
        if true_hz is not None:
            self._true_hz = true_hz
        scale = tsc_scale(tsc_hz)
        self._tsc_hz = tsc_hz
        tsc = self._tsc_now()
        self._params = (scale, current - ((tsc * scale) >> 64))
        if self._frozen is not None:
            self._frozen = current
        self._changed()

    def use_tsc(self, tsc_now: Callable[[], int], tsc_hz: int) -> None:
        """Switch to another TSC reader that really runs at `tsc_hz`, keeping the counter continuous
        (the machine: start with the host TSC, switch to the guest TSC once the vCPUs exist)."""
        self.set_frequency(tsc_hz, tsc_now=tsc_now, true_hz=tsc_hz)

    def set_reliable(self, reliable: bool) -> None:
        """Whether the TSC-based formula may be published (False: TSC page sequence 0)."""
        if reliable != self.reliable:
            self.reliable = reliable
            self._changed()


class ReferenceTscPage:
    """HV_X64_MSR_REFERENCE_TSC and the partition-wide reference TSC overlay page it controls.

    Call every method under the partition lock (the lock of the overlay layer): publishing writes
    the page wherever it currently lives. The owner (hv/time_msrs.PartitionTime) calls `publish()`
    after every change of the reference time parameters."""

    def __init__(self, reftime: ReferenceTime, overlay: OverlayPage, tracer: TraceSink | None = None) -> None:
        self.reftime = reftime
        self.overlay = overlay
        self._tracer = tracer
        self.value = 0  # the MSR as the guest reads it: "At the guest partition creation time ... 0"
        self.sequence = TSC_SEQUENCE_INVALID  # what the page holds now
        self._last_valid = 0  # last valid sequence published (the next one follows it)

    @property
    def enabled(self) -> bool:
        return bool(self.value & REFERENCE_TSC_ENABLE)

    @property
    def gpfn(self) -> int:
        return self.value >> REFERENCE_TSC_GPFN_SHIFT

    def write_msr(self, value: int) -> None:
        """WRMSR HV_X64_MSR_REFERENCE_TSC (the privilege is checked by the caller). Every bit is
        stored (63:12 GPFN, 11:1 RsvdP, 0 Enable); a GPFN beyond guest RAM is accepted and the page
        is simply not accessible (timers.md "Register Layout")."""
        value &= U64
        self.value = value
        if not self.enabled:
            self.overlay.unmap()
            return
        self.overlay.map(self.gpfn)
        self.overlay.zero()  # an overlay page starts zeroed (inventory §7.4)
        self.sequence = TSC_SEQUENCE_INVALID
        self._write()

    def publish(self) -> None:
        """Write the current scale/offset with a new sequence (or sequence 0 if not reliable)."""
        self._write()

    def _write(self) -> None:
        if not self.enabled:
            return
        view = self.overlay.data()
        seq32 = view.cast("I")
        # Sequence protocol (timers.md): invalid first, then the fields, then the new sequence. x86
        # stores are seen in program order (TSO); each store below is one aligned mov.
        seq32[0] = TSC_SEQUENCE_INVALID
        if not self.reftime.reliable:
            self.sequence = TSC_SEQUENCE_INVALID
            self._trace("tsc-page", sequence=0, reason="unreliable")
            return
        scale, offset = self.reftime.params()
        struct.pack_into("<Qq", view, TSC_PAGE_SCALE_OFFSET, scale, _to_i64(offset))
        self._last_valid = next_sequence(self._last_valid)
        seq32[0] = self._last_valid
        self.sequence = self._last_valid
        self._trace("tsc-page", sequence=self._last_valid, scale=scale, offset=offset)

    def reset(self) -> None:
        self.value = 0
        self.overlay.unmap()
        self.overlay.zero()
        self.sequence = TSC_SEQUENCE_INVALID

    def _trace(self, event: str, **fields: Any) -> None:
        if self._tracer is not None and self._tracer.wants("timers"):
            self._tracer.emit("timers", -1, event, gpa=self.gpfn << PAGE_SHIFT, **fields)


class VpRuntime:
    """HV_X64_MSR_VP_RUNTIME for one VP (PDF §7.9.1): 100 ns units the VP consumed, guest time plus
    hypervisor time spent on its behalf.

    Two ways for the machine to account it (use one):
    - `add(ns)` around each KVM_RUN (and exit handling, if it wants to count it);
    - `bind_thread_clock()` once on the VP's own thread: the VP's run time is then that thread's CPU
      time (time.thread_time_ns, what KVM does with the vCPU task's sum_exec_runtime). A VP halted
      in the kernel or waiting in userspace consumes no CPU time, so the count grows only while it
      runs. RDMSR is handled on the VP's thread, so reads see the right thread.
    """

    def __init__(self) -> None:
        self._ns = 0
        self._clock: Callable[[], int] | None = None
        self._base = 0

    def add(self, ns: int) -> None:
        if ns > 0:
            self._ns += ns

    def bind_thread_clock(self, clock: Callable[[], int] = time.thread_time_ns) -> None:
        self._clock = clock
        self._base = clock()

    def read_ns(self) -> int:
        ns = self._ns
        if self._clock is not None:
            ns += self._clock() - self._base
        return ns

    def read(self) -> int:
        """The MSR value (100 ns units)."""
        return self.read_ns() // 100

    def reset(self) -> None:
        self._ns = 0
        if self._clock is not None:
            self._base = self._clock()
