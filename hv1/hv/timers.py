"""Synthetic timers STIMER0-3 of one VP (TLFS timers.md "Synthetic Timers"; inventory §3.3
"Synthetic timer MSRs", §6.7.3, §7.31; peers.md §2.3 and §4 rows 2 and 5).

A pure state machine driven by explicit calls, in reference time (100 ns, hv/reftime.py):

- `write_config` / `write_count` / `read_*`: the STIMERx_CONFIG/COUNT MSRs of this VP;
- `poll(now)`: fire what is due, retry what is pending, return the next deadline (reference time)
  or None when nothing is armed (the machine's scheduler is then idle for this VP);
- `sint_ready(sint)`: the SynIC says a SINT may accept a message again (EOM, SINT unmask, SIMP or
  SCONTROL enable): pending expiries are retried at once.

Semantics (timers.md unless noted):
- Enable (bit 0). AutoEnable (bit 3): writing a non-zero COUNT sets Enable. Writing COUNT = 0 clears
  Enable "independent of the setting of AutoEnable". Enabling in message mode with SINTx = 0 "will
  be marked disabled (that is, bit 0 cleared) immediately".
- One-shot: COUNT is the absolute expiry; "expires when the reference counter ... is equal to or
  greater than" COUNT; a COUNT in the past expires at once (during the WRMSR). After expiry Enable is
  cleared — once the expiry is *delivered* (KVM, inventory §6.7.3).
- Periodic: COUNT is the period; "The first period begins when the synthetic timer is enabled".
- Message mode: HvMessageTimerExpired (0x80000010) to SINTx with HV_TIMER_MESSAGE_PAYLOAD
  {TimerIndex, Reserved, ExpirationTime (the scheduled expiry), DeliveryTime (reference time when
  placed into the SIM slot)}. Each timer has one message buffer (inventory §6.5.1): if the SINT cannot
  take it now (slot busy, SINT masked, SIMP/SynIC off) the expiry stays pending in the timer until
  delivered: retried on `sint_ready` and, as a backstop, after a back-off (1 ms doubling to 10 ms;
  inventory §6.5.4 step 5 "retry after an unspecified time"). Never lost: the stall of peers.md §4
  row 2 (openvmm #4029) was an expiry dropped while SIMP was off / the slot busy.
- Direct mode (bit 12, needs CPUID 0x40000003.EDX[19]): the ApicVector is asserted on this VP; no
  message, nothing pending.
- Missed periods ("Periodic Timers"): a non-lazy timer catches up by period modulation: the missed
  expiries are delivered one by one, spaced by half a period, until it is back on its grid; if more
  than CATCHUP_MAX_PERIODS were missed, the older ones are skipped. Catch-up also ends, skipping to
  the grid, when a catch-up expiry found its slot still busy: the guest cannot take messages at the
  shortened period, and every EOM would otherwise be answered with the next overdue message at once,
  leaving the VP nothing to run but its timer handler ("may be unable to compensate by using period
  modulation. In this case, some timer expiration signals may be skipped completely"). A lazy timer
  signals once for the latest missed expiry ("deferred until this virtual processor is available")
  and skips the rest. A periodic timer never has more than one expiry outstanding (its single
  message buffer).
- Never early: a signal is raised only when the reference time is >= its ExpirationTime.
- Reserved bits (15:13, 63:20 RsvdZ) are dropped (inventory §7.7). #GP: DirectMode without
  EDX[19]; an enabled direct-mode timer whose ApicVector is not a valid fixed vector (< 16, the SINT
  rule of inventory §6.5.6 applied to the timer's vector). The privilege is checked by the MSR table.
- A config write that changes nothing keeps the running schedule; any other config write restarts
  the timer (timers.md: writing the config of an enabled timer is undefined; guests disable first).

Concurrency: not thread-safe. Call under the partition lock (MSR accesses already are) or only from
the VP's own thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from hv1.hv.interfaces import Clock, InterruptSink, TraceSink, gp
from hv1.tlfs.messages import HvMessageType
from hv1.tlfs.timers import (
    STIMER_APIC_VECTOR_MASK,
    STIMER_APIC_VECTOR_SHIFT,
    STIMER_AUTO_ENABLE,
    STIMER_CONFIG_VALID,
    STIMER_COUNT,
    STIMER_DIRECT_MODE,
    STIMER_ENABLE,
    STIMER_LAZY,
    STIMER_PERIODIC,
    STIMER_SINTX_MASK,
    STIMER_SINTX_SHIFT,
    TIMER_PAYLOAD,
)

if TYPE_CHECKING:
    from hv1.hv.inject import Injector

U64 = (1 << 64) - 1

# STIMERx_CONFIG bits and HV_TIMER_MESSAGE_PAYLOAD: hv1/tlfs/timers.py.
HV_MESSAGE_TIMER_EXPIRED = int(HvMessageType.HvMessageTimerExpired)  # 0x80000010

# Policy (timers.md leaves the numbers to the hypervisor).
CATCHUP_MAX_PERIODS = 4  # a non-lazy timer further behind than this skips the older expiries
# The TLFS sets no minimum period; a guest writing COUNT = 1 (100 ns) would have the host raise ten
# million interrupts a second and livelock itself. Like the LVT timer (hv/apic.py MIN_PERIODIC_NS,
# KVM's 200 µs min_timer_period_us), a periodic timer runs at least 100 µs apart; COUNT reads back as
# written. Conformance guests use periods of 1 ms and more.
MIN_PERIOD = 1000  # 100 ns units
RETRY_MIN = 10_000  # 1 ms: first backstop retry of a pending message
RETRY_MAX = 100_000  # 10 ms: back-off ceiling
MIN_VECTOR = 16


def timer_payload(index: int, expiration: int, delivery: int) -> bytes:
    return TIMER_PAYLOAD.pack(index, 0, expiration & U64, delivery & U64)


class TimerSynic(Protocol):
    """What a VP's timers need from that VP's SynIC (hv/synic.py)."""

    def try_post(self, sint: int, message_type: int, payload: bytes) -> bool:
        """Place the message into SINT `sint`'s SIM slot now and raise the SINT's interrupt, if the
        SINT can take it now (SynIC and SIMP enabled, SINT not masked, slot empty). Otherwise leave
        everything as it is — except MessagePending set in an occupied slot so the guest writes EOM
        — and return False. The SynIC later calls VpTimers.sint_ready()."""
        ...


@dataclass
class SyntheticTimer:
    index: int
    config: int = 0
    count: int = 0
    expiration: int | None = None  # ExpirationTime of the next signal (armed), reference time
    fire_at: int | None = None  # when to raise it (>= expiration; later while catching up)
    pending: int | None = None  # ExpirationTime of a fired expiry not yet delivered (message mode)
    retry_at: int | None = None  # backstop retry of `pending`
    catching_up: bool = False  # the armed expiry is a catch-up one (shortened period)
    backoff: int = RETRY_MIN
    fired: int = 0  # statistics
    delivered: int = 0
    skipped: int = 0

    @property
    def enabled(self) -> bool:
        return bool(self.config & STIMER_ENABLE)

    @property
    def periodic(self) -> bool:
        return bool(self.config & STIMER_PERIODIC)

    @property
    def lazy(self) -> bool:
        return bool(self.config & STIMER_LAZY)

    @property
    def direct(self) -> bool:
        return bool(self.config & STIMER_DIRECT_MODE)

    @property
    def vector(self) -> int:
        return (self.config & STIMER_APIC_VECTOR_MASK) >> STIMER_APIC_VECTOR_SHIFT

    @property
    def sint(self) -> int:
        return (self.config & STIMER_SINTX_MASK) >> STIMER_SINTX_SHIFT

    def wake_at(self) -> int | None:
        if self.pending is not None:
            return self.retry_at
        return self.fire_at

    def stop(self) -> None:
        self.expiration = self.fire_at = self.pending = self.retry_at = None
        self.backoff = RETRY_MIN
        self.catching_up = False


class VpTimers:
    """The four synthetic timers of VP `vp_index`."""

    def __init__(
        self,
        vp_index: int,
        clock: Clock,
        irq: InterruptSink,
        synic: TimerSynic | None = None,
        *,
        direct_mode_available: bool = True,
        tracer: TraceSink | None = None,
        min_period: int = MIN_PERIOD,
    ) -> None:
        self.vp_index = vp_index
        self.min_period = min_period
        self.clock = clock
        self.irq = irq
        self.synic = synic
        self.direct_mode_available = direct_mode_available
        self.timers = [SyntheticTimer(i) for i in range(STIMER_COUNT)]
        self._tracer = tracer
        self._next: int | None = None  # cached earliest wake-up
        self._polling = False
        self._again = False
        self.inject: Injector | None = None  # fault injection (hv/inject.py, Partition.set_injection)

    # --- MSRs ----------------------------------------------------------------------------------------
    def read_config(self, index: int) -> int:
        return self.timers[index].config

    def read_count(self, index: int) -> int:
        return self.timers[index].count

    def write_config(self, index: int, value: int) -> None:
        t = self.timers[index]
        value &= STIMER_CONFIG_VALID  # RsvdZ bits dropped (inventory §7.7)
        if value & STIMER_DIRECT_MODE and not self.direct_mode_available:
            raise gp()
        if value & STIMER_ENABLE and value & STIMER_DIRECT_MODE and not self._may_enable(value):
            raise gp()
        if value & STIMER_ENABLE and not value & STIMER_DIRECT_MODE and not value & STIMER_SINTX_MASK:
            value &= ~STIMER_ENABLE  # "not permitted to set the SINTx field to zero for an enabled timer"
        if value == t.config and (t.expiration is not None or t.pending is not None):
            return  # rewriting the same value: keep the schedule (and any pending expiry)
        now = self.clock.now()
        self._cancel(t, "config")
        t.config = value
        if t.enabled:
            self._start(t, now)
        self._refresh(now)

    def write_count(self, index: int, value: int) -> None:
        t = self.timers[index]
        value &= U64
        now = self.clock.now()
        self._cancel(t, "count")
        t.count = value
        if value == 0:
            t.config &= ~STIMER_ENABLE  # "Writing the value zero ... disabling the timer"
        elif t.config & STIMER_AUTO_ENABLE and self._may_enable(t.config):
            t.config |= STIMER_ENABLE
        if t.enabled:
            self._start(t, now)
        self._refresh(now)

    @staticmethod
    def _may_enable(config: int) -> bool:
        """AutoEnable follows the enable rules: message mode needs SINTx != 0, direct mode a valid
        vector (a write that would #GP or be disabled at once does not enable)."""
        if config & STIMER_DIRECT_MODE:
            return (config & STIMER_APIC_VECTOR_MASK) >> STIMER_APIC_VECTOR_SHIFT >= MIN_VECTOR
        return bool(config & STIMER_SINTX_MASK)

    # --- engine --------------------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        """Anything armed or pending (the machine polls only then)."""
        return self._next is not None

    def next_deadline(self) -> int | None:
        """The earliest reference time at which `poll` has something to do, or None."""
        return self._next

    def poll(self, now: int | None = None) -> int | None:
        """Fire due timers, retry due pending messages; return the next deadline (reference time)."""
        if self._next is None:
            return None
        if now is None:
            now = self.clock.now()
        if now < self._next:
            return self._next
        self._run(now, force_pending=None)
        return self._next

    def sint_ready(self, sint: int | None = None) -> None:
        """A SINT (None: any) may accept messages again: retry pending expiries targeting it now."""
        if not any(t.pending is not None and (sint is None or t.sint == sint) for t in self.timers):
            return
        self._run(self.clock.now(), force_pending=sint if sint is not None else -1)

    def reset(self) -> None:
        """VP creation/reset: every CONFIG and COUNT is 0, nothing pending."""
        for t in self.timers:
            t.stop()
            t.config = t.count = 0
        self._next = None

    # --- internals -----------------------------------------------------------------------------------
    def _start(self, t: SyntheticTimer, now: int) -> None:
        if t.count == 0:
            return  # enabled with no count: idle until COUNT is written
        if t.periodic:
            t.expiration = now + max(t.count, self.min_period)
        else:
            t.expiration = t.count
        t.fire_at = self._signal_at(t, t.expiration)
        self._trace("arm", t, expiration=t.expiration, periodic=t.periodic, lazy=t.lazy, direct=t.direct)

    def _cancel(self, t: SyntheticTimer, why: str) -> None:
        if t.expiration is not None or t.pending is not None:
            self._trace("cancel", t, reason=why, pending=t.pending is not None)
        t.stop()

    def _refresh(self, now: int) -> None:
        """Recompute the cached deadline; fire at once what is already due (a one-shot in the past
        expires during the WRMSR)."""
        self._next = self._earliest()
        if self._next is not None and now >= self._next:
            self._run(now, force_pending=None)

    def _earliest(self) -> int | None:
        best: int | None = None
        for t in self.timers:
            w = t.wake_at()
            if w is not None and (best is None or w < best):
                best = w
        return best

    def _run(self, now: int, force_pending: int | None) -> None:
        if self._polling:  # re-entered from a delivery callback: let the outer loop rerun
            self._again = True
            return
        self._polling = True
        try:
            while True:
                self._again = False
                for t in self.timers:
                    if t.pending is not None:
                        forced = force_pending is not None and force_pending in (-1, t.sint)
                        if forced or (t.retry_at is not None and now >= t.retry_at):
                            self._deliver(t, t.pending, now, retry=True)
                    elif t.fire_at is not None and now >= t.fire_at:
                        self._fire(t, now)
                if not self._again:
                    break
                now = self.clock.now()
        finally:
            self._polling = False
        self._next = self._earliest()

    def _fire(self, t: SyntheticTimer, now: int) -> None:
        assert t.expiration is not None
        expiration = t.expiration
        period = max(t.count, self.min_period)
        if t.periodic and t.lazy and now - expiration >= period:
            # Lazy: signal once for the latest expiry that has passed, skip the older ones.
            missed = (now - expiration) // period
            expiration += missed * period
            t.skipped += missed
            self._trace("skip", t, skipped=missed, expiration=expiration)
        t.fired += 1
        t.expiration = t.fire_at = None
        if self._tracer is not None and self._tracer.wants("timers"):
            self._trace("fire", t, expiration=expiration, lateness_us=(now - expiration) / 10)
        self._deliver(t, expiration, now, retry=False)

    def _deliver(self, t: SyntheticTimer, expiration: int, now: int, retry: bool) -> None:
        if t.direct:
            self.irq.request_interrupt(self.vp_index, t.vector, False)
            ok = True
        else:
            ok = self.synic is not None and self.synic.try_post(
                t.sint, HV_MESSAGE_TIMER_EXPIRED, timer_payload(t.index, expiration, now)
            )
        if not ok:
            if t.pending is None:
                t.pending = expiration
                t.backoff = RETRY_MIN
                self._trace("pending", t, expiration=expiration, sint=t.sint)
            else:
                t.backoff = min(t.backoff * 2, RETRY_MAX)
            t.retry_at = now + t.backoff
            return
        t.pending = t.retry_at = None
        t.backoff = RETRY_MIN
        t.delivered += 1
        if self._tracer is not None and self._tracer.wants("timers"):
            self._trace(
                "deliver",
                t,
                expiration=expiration,
                delivery=now,
                lateness_us=(now - expiration) / 10,
                mode="direct" if t.direct else f"sint{t.sint}",
                retried=retry,
            )
        self._after_delivery(t, expiration, now, retry)

    def _after_delivery(self, t: SyntheticTimer, expiration: int, now: int, retried: bool) -> None:
        if not t.periodic:
            # "When a one-shot timer expires, it is automatically marked as disabled."
            t.config &= ~STIMER_ENABLE
            return
        if not t.enabled or t.count == 0:
            return
        period = max(t.count, self.min_period)
        nxt = expiration + period
        was_catching_up, t.catching_up = t.catching_up, False
        if nxt > now:
            t.expiration = nxt  # on time
            t.fire_at = self._signal_at(t, nxt)
            return
        missed = (now - expiration) // period  # expiries after `expiration` that are already due
        if t.lazy or missed > CATCHUP_MAX_PERIODS or (retried and was_catching_up):
            # Skip to the first expiry still in the future (lazy: always; non-lazy: too far behind).
            t.skipped += missed
            t.expiration = expiration + (missed + 1) * period
            t.fire_at = self._signal_at(t, t.expiration)
            self._trace("skip", t, skipped=missed, expiration=t.expiration)
            return
        # Catch up by period modulation: the next (already due) expiry, half a period from now.
        t.expiration = nxt
        t.fire_at = max(self._signal_at(t, nxt), now + max(period // 2, 1))
        t.catching_up = True

    def _signal_at(self, t: SyntheticTimer, expiration: int) -> int:
        """When the expiry at `expiration` is signalled: then, or later by an injected timer-delay
        (hv/inject.py; timers.md "never ... before the expiration time ... any time after")."""
        inj = self.inject
        if inj is None or not inj.delays_timers:
            return expiration
        return expiration + inj.timer_delay(self.vp_index, t.index, expiration)

    def _trace(self, event: str, t: SyntheticTimer, **fields: Any) -> None:
        if self._tracer is not None and self._tracer.wants("timers"):
            self._tracer.emit("timers", self.vp_index, event, timer=t.index, **fields)
