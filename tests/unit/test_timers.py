"""Synthetic timers STIMER0-3 (hv/timers.py) with a fake clock: every mode, the message payload,
busy-slot and masked-SINT redelivery, past deadlines, lazy vs catch-up periodic timers, #GP rules.

TLFS timers.md "Synthetic Timers"; datatypes/hv_timer_message_payload.md; inventory §6.7.3, §7.31;
peers.md §4 row 2 (a lost expiry stalls the guest).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hv1.hv.interfaces import GuestException
from hv1.hv.synic import Synic
from hv1.hv.timers import (
    CATCHUP_MAX_PERIODS,
    HV_MESSAGE_TIMER_EXPIRED,
    RETRY_MAX,
    RETRY_MIN,
    STIMER_AUTO_ENABLE,
    STIMER_DIRECT_MODE,
    STIMER_ENABLE,
    STIMER_LAZY,
    STIMER_PERIODIC,
    VpTimers,
)
from hv1.tlfs import msrs as M
from tests.fakes import FakeClock, FakeIrq, FakeMemory

SINT = 3


def cfg(
    *,
    enable: bool = True,
    periodic: bool = False,
    lazy: bool = False,
    auto: bool = False,
    direct: bool = False,
    vector: int = 0,
    sint: int = SINT,
) -> int:
    return (
        (STIMER_ENABLE if enable else 0)
        | (STIMER_PERIODIC if periodic else 0)
        | (STIMER_LAZY if lazy else 0)
        | (STIMER_AUTO_ENABLE if auto else 0)
        | (STIMER_DIRECT_MODE if direct else 0)
        | vector << 4
        | sint << 16
    )


@dataclass
class Msg:
    sint: int
    index: int
    expiration: int
    delivery: int


@dataclass
class FakeSynic:
    """A SynIC whose SINTs accept a message only when the test says so."""

    accepting: set[int] = field(default_factory=lambda: set(range(16)))
    posted: list[Msg] = field(default_factory=list)
    attempts: int = 0

    def try_post(self, sint: int, message_type: int, payload: bytes) -> bool:
        self.attempts += 1
        assert message_type == HV_MESSAGE_TIMER_EXPIRED and len(payload) == 24
        if sint not in self.accepting:
            return False
        index, reserved, exp, deliv = struct.unpack("<IIQQ", payload)
        assert reserved == 0
        self.posted.append(Msg(sint, index, exp, deliv))
        return True


@dataclass
class RecTracer:
    events: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)

    def wants(self, cat: str) -> bool:
        return cat == "timers"

    def emit(self, cat: str, vp: int, event: str, **fields: Any) -> None:
        self.events.append((vp, event, fields))

    def names(self) -> list[str]:
        return [e for _, e, _ in self.events]


def make(
    direct: bool = True, start: int = 1000, min_period: int = 1
) -> tuple[VpTimers, FakeClock, FakeIrq, FakeSynic, RecTracer]:
    """Timers on a fake clock. The tests use short periods in ticks, so the period floor is off
    unless a test asks for it (test_periodic_period_has_a_floor...)."""
    clock = FakeClock(start)
    irq = FakeIrq()
    synic = FakeSynic()
    tracer = RecTracer()
    t = VpTimers(1, clock, irq, synic, direct_mode_available=direct, tracer=tracer, min_period=min_period)
    return t, clock, irq, synic, tracer


def run_until(t: VpTimers, clock: FakeClock, end: int) -> None:
    """Advance the clock to `end`, polling at every deadline the engine asks for (an ideal machine)."""
    while True:
        nxt = t.next_deadline()
        if nxt is None or nxt > end:
            clock.t = end
            t.poll(end)
            return
        clock.t = max(clock.t, nxt)
        t.poll(clock.t)


# --- one-shot ---------------------------------------------------------------------------------------


def test_one_shot_message_fires_at_count_with_payload() -> None:
    """One-shot COUNT is the absolute expiry; HvMessageTimerExpired payload = {TimerIndex, Reserved,
    ExpirationTime, DeliveryTime}; Enable cleared after expiry."""
    t, clock, irq, synic, tracer = make()
    t.write_config(2, cfg())
    t.write_count(2, 5000)
    assert t.next_deadline() == 5000
    assert t.poll(4999) == 5000 and synic.posted == []
    clock.t = 5007
    assert t.poll(5007) is None
    assert synic.posted == [Msg(SINT, 2, 5000, 5007)]
    assert t.read_config(2) == cfg(enable=False)
    assert t.read_count(2) == 5000
    assert irq.sent == []
    assert tracer.names() == ["arm", "fire", "deliver"]
    deliver = tracer.events[-1][2]
    assert deliver["lateness_us"] == pytest.approx(0.7) and deliver["timer"] == 2
    assert tracer.events[0][0] == 1  # the VP index


def test_one_shot_in_the_past_fires_during_the_wrmsr() -> None:
    """timers.md: "If a one-shot is enabled and the specified count is in the past, it will expire
    immediately"."""
    t, clock, _, synic, _ = make(start=9000)
    t.write_count(0, 100)
    t.write_config(0, cfg())
    assert synic.posted == [Msg(SINT, 0, 100, 9000)]
    assert t.next_deadline() is None and not t.active


def test_never_early() -> None:
    t, clock, _, synic, _ = make()
    t.write_config(1, cfg())
    t.write_count(1, 2000)
    for now in range(1000, 2000, 97):
        t.poll(now)
    assert synic.posted == []
    t.poll(2000)
    assert synic.posted[0].delivery >= synic.posted[0].expiration == 2000


def test_auto_enable_on_count_write() -> None:
    """timers.md: "If AutoEnable is set, then writing a non-zero value to the corresponding count register
    will cause Enable to be set and activate the counter"."""
    t, clock, _, synic, _ = make()
    t.write_config(0, cfg(enable=False, auto=True))
    assert t.next_deadline() is None
    t.write_count(0, 3000)
    assert t.read_config(0) & STIMER_ENABLE
    assert t.next_deadline() == 3000


def test_without_auto_enable_count_write_does_not_enable() -> None:
    t, _, _, _, _ = make()
    t.write_config(0, cfg(enable=False))
    t.write_count(0, 3000)
    assert not t.read_config(0) & STIMER_ENABLE and t.next_deadline() is None
    t.write_config(0, cfg())
    assert t.next_deadline() == 3000


def test_count_zero_disables_regardless_of_auto_enable() -> None:
    t, _, _, _, tracer = make()
    t.write_config(0, cfg(auto=True))
    t.write_count(0, 3000)
    t.write_count(0, 0)
    assert t.read_config(0) == cfg(enable=False, auto=True)
    assert t.next_deadline() is None
    assert "cancel" in tracer.names()


def test_enable_with_count_zero_is_idle() -> None:
    t, _, _, synic, _ = make()
    t.write_config(0, cfg(periodic=True))
    assert t.read_config(0) & STIMER_ENABLE and t.next_deadline() is None
    t.write_count(0, 50)  # Enable is already set: the first period starts now
    assert t.next_deadline() == 1050


def test_sintx_zero_in_message_mode_clears_enable() -> None:
    """timers.md: "It is not permitted to set the SINTx field to zero for an enabled timer (that is not in
    direct mode). If attempted, the timer will be marked disabled"."""
    t, _, _, _, _ = make()
    t.write_count(0, 5000)
    t.write_config(0, cfg(sint=0))
    assert t.read_config(0) == cfg(enable=False, sint=0)
    assert t.next_deadline() is None
    t.write_config(1, cfg(enable=False, auto=True, sint=0))
    t.write_count(1, 5000)  # AutoEnable does not enable it either
    assert not t.read_config(1) & STIMER_ENABLE


def test_reserved_bits_are_dropped() -> None:
    """Inventory §7.7: RsvdZ bits 15:13 and 63:20 are ignored."""
    t, _, _, _, _ = make()
    t.write_config(0, cfg(enable=False) | 0xE000 | 0xFFF0_0000_0000_0000)
    assert t.read_config(0) == cfg(enable=False)


def test_disable_cancels() -> None:
    t, clock, _, synic, _ = make()
    t.write_config(0, cfg())
    t.write_count(0, 2000)
    t.write_config(0, cfg(enable=False))
    run_until(t, clock, 10_000)
    assert synic.posted == []


def test_rewriting_the_same_config_keeps_the_schedule() -> None:
    t, clock, _, synic, _ = make()
    t.write_config(0, cfg(periodic=True))
    t.write_count(0, 100)  # period starts at 1000
    clock.t = 1050
    t.write_config(0, cfg(periodic=True))
    assert t.next_deadline() == 1100


# --- direct mode ------------------------------------------------------------------------------------


def test_direct_mode_asserts_the_vector_and_posts_nothing() -> None:
    """timers.md "Direct Synthetic Timers": assert ApicVector instead of sending a message."""
    t, clock, irq, synic, tracer = make()
    t.write_config(3, cfg(direct=True, vector=0xED, sint=0))
    t.write_count(3, 1500)
    run_until(t, clock, 2000)
    assert irq.sent == [(1, 0xED, False)]
    assert synic.posted == [] and synic.attempts == 0
    assert not t.read_config(3) & STIMER_ENABLE
    assert tracer.events[-1][2]["mode"] == "direct"


def test_direct_periodic() -> None:
    t, clock, irq, _, _ = make()
    t.write_count(0, 100)
    t.write_config(0, cfg(direct=True, periodic=True, vector=0x30))
    run_until(t, clock, 1000 + 550)
    assert irq.sent == [(1, 0x30, False)] * 5


def test_direct_mode_gp_when_not_available() -> None:
    """DirectMode needs CPUID 0x40000003.EDX[19] (inventory §3.3)."""
    t, _, _, _, _ = make(direct=False)
    with pytest.raises(GuestException) as e:
        t.write_config(0, cfg(direct=True, vector=0x30))
    assert e.value.vector == 13
    with pytest.raises(GuestException):
        t.write_config(0, cfg(enable=False, direct=True, vector=0x30))
    assert t.read_config(0) == 0


def test_direct_mode_gp_on_invalid_vector() -> None:
    t, _, _, _, _ = make()
    with pytest.raises(GuestException):
        t.write_config(0, cfg(direct=True, vector=0x0F))
    t.write_config(0, cfg(enable=False, direct=True, vector=0x0F))  # disabled: accepted
    t.write_config(0, cfg(enable=False, auto=True, direct=True, vector=0x0F))
    t.write_count(0, 5000)  # AutoEnable with an invalid vector does not enable
    assert not t.read_config(0) & STIMER_ENABLE


# --- periodic ---------------------------------------------------------------------------------------


def test_periodic_first_period_starts_at_enable() -> None:
    """timers.md: "For periodic timers, the count represents the period of the timer. The first period
    begins when the synthetic timer is enabled"; periodic timers stay enabled."""
    t, clock, _, synic, _ = make()
    t.write_count(0, 100)
    clock.t = 1030
    t.write_config(0, cfg(periodic=True))
    run_until(t, clock, 1030 + 350)
    assert [m.expiration for m in synic.posted] == [1130, 1230, 1330]
    assert all(m.delivery == m.expiration for m in synic.posted)
    assert t.read_config(0) & STIMER_ENABLE


def test_periodic_count_write_restarts_with_the_new_period() -> None:
    t, clock, _, synic, _ = make()
    t.write_config(0, cfg(periodic=True, auto=True))
    t.write_count(0, 100)
    clock.t = 1150
    t.poll(1150)
    t.write_count(0, 40)
    assert t.next_deadline() == 1190


def test_non_lazy_periodic_catches_up_with_shortened_periods() -> None:
    """timers.md "Periodic Timers": period modulation, "in effect shortening the period until the timer
    catches up". Each missed expiry is signalled, never before its ExpirationTime, spaced by half a
    period."""
    t, clock, _, synic, _ = make(start=0)
    t.write_count(0, 100)
    t.write_config(0, cfg(periodic=True))
    clock.t = 330  # the VP was unavailable: 100, 200, 300 are due
    t.poll(330)
    assert [(m.expiration, m.delivery) for m in synic.posted] == [(100, 330)]
    run_until(t, clock, 700)
    got = [(m.expiration, m.delivery) for m in synic.posted]
    assert got[:4] == [(100, 330), (200, 380), (300, 430), (400, 480)]
    assert [e for e, _ in got] == [100, 200, 300, 400, 500, 600, 700]
    assert got[-1] == (700, 700)  # back on the grid
    assert all(d >= e for e, d in got)


def test_non_lazy_periodic_too_far_behind_skips() -> None:
    """ "If a significant number of timer signals have been missed ... some timer expiration signals may be
    skipped completely"."""
    t, clock, _, synic, tracer = make(start=0)
    t.write_count(0, 100)
    t.write_config(0, cfg(periodic=True))
    late = 100 * (CATCHUP_MAX_PERIODS + 3) + 50
    clock.t = late
    t.poll(late)
    assert [m.expiration for m in synic.posted] == [100]
    assert t.next_deadline() == late + 50  # the next grid point after now
    assert "skip" in tracer.names()
    assert t.timers[0].skipped == CATCHUP_MAX_PERIODS + 2


def test_lazy_periodic_signals_once_and_skips_missed() -> None:
    """timers.md: for lazy timers "the timer signal is deferred until this virtual processor is available"
    and missed expiries are skipped; ExpirationTime is the latest passed expiry."""
    t, clock, _, synic, _ = make(start=0)
    t.write_count(0, 100)
    t.write_config(0, cfg(periodic=True, lazy=True))
    clock.t = 330
    t.poll(330)
    assert [(m.expiration, m.delivery) for m in synic.posted] == [(300, 330)]
    assert t.next_deadline() == 400
    run_until(t, clock, 600)
    assert [m.expiration for m in synic.posted] == [300, 400, 500, 600]


def test_lazy_on_time_is_an_ordinary_periodic_timer() -> None:
    t, clock, _, synic, _ = make(start=0)
    t.write_count(0, 100)
    t.write_config(0, cfg(periodic=True, lazy=True))
    run_until(t, clock, 400)
    assert [(m.expiration, m.delivery) for m in synic.posted] == [(e, e) for e in (100, 200, 300, 400)]


# --- busy slots, masked SINTs: never lost -----------------------------------------------------------


def test_busy_slot_keeps_the_expiry_pending_until_sint_ready() -> None:
    """Inventory §6.5.4 / §7.31: the message waits (one buffer per timer), is delivered when the SINT can
    take it; DeliveryTime is when it is placed into the slot; a one-shot is disabled only then."""
    t, clock, _, synic, tracer = make()
    synic.accepting.clear()
    t.write_config(0, cfg())
    t.write_count(0, 2000)
    clock.t = 2000
    t.poll(2000)
    assert synic.posted == [] and "pending" in tracer.names()
    assert t.read_config(0) & STIMER_ENABLE  # still enabled while undelivered
    assert t.next_deadline() == 2000 + RETRY_MIN  # backstop retry
    clock.t = 2400
    synic.accepting.add(SINT)
    t.sint_ready(SINT + 1)  # another SINT: nothing to do
    assert synic.posted == []
    t.sint_ready(SINT)
    assert synic.posted == [Msg(SINT, 0, 2000, 2400)]
    assert not t.read_config(0) & STIMER_ENABLE
    assert t.next_deadline() is None


def test_backstop_retry_backs_off_and_delivers() -> None:
    t, clock, _, synic, _ = make(start=0)
    synic.accepting.clear()
    t.write_config(0, cfg())
    t.write_count(0, 10)
    clock.t = 10
    t.poll(10)
    waits = []
    for _ in range(6):
        nxt = t.next_deadline()
        assert nxt is not None
        waits.append(nxt - clock.t)
        clock.t = nxt
        t.poll(nxt)
    assert waits == [RETRY_MIN, 2 * RETRY_MIN, 4 * RETRY_MIN, 8 * RETRY_MIN, RETRY_MAX, RETRY_MAX]
    synic.accepting.add(SINT)
    nxt = t.next_deadline()
    assert nxt is not None
    clock.t = nxt
    t.poll(nxt)
    assert len(synic.posted) == 1 and synic.posted[0].expiration == 10


def test_periodic_with_busy_slot_has_one_message_outstanding() -> None:
    """A timer has exactly one message buffer: while its expiry is undelivered, later periods do not
    pile up messages; after the slot frees, catch-up resumes."""
    t, clock, _, synic, _ = make(start=0)
    t.write_count(0, 100)
    t.write_config(0, cfg(periodic=True))
    synic.accepting.clear()
    run_until(t, clock, 350)
    assert synic.posted == []
    assert t.timers[0].pending == 100
    synic.accepting.add(SINT)
    clock.t = 360
    t.sint_ready(SINT)
    assert [(m.expiration, m.delivery) for m in synic.posted] == [(100, 360)]
    run_until(t, clock, 600)
    exps = [m.expiration for m in synic.posted]
    assert exps == sorted(set(exps)) and exps[-1] == 600


def test_catch_up_ends_when_a_catch_up_expiry_finds_the_slot_busy() -> None:
    """timers.md "Periodic Timers": period modulation may not be able to compensate, "In this case,
    some timer expiration signals may be skipped completely". A guest slower than the shortened
    period: the catch-up expiry (300, due at 380) finds the slot still holding 200, and is delivered
    only at the EOM (470). Catching up further would answer every EOM with the next overdue message
    at once, so the VP only ever runs its timer handler (seen on the emulator: a periodic test took
    64 expiries, its message log overflowed and the guest stopped emptying the slot). The timer goes
    back to its grid instead: next expiry 500, not 400 at 520."""
    t, clock, _, synic, tracer = make(start=0)
    t.write_count(0, 100)
    t.write_config(0, cfg(periodic=True))
    run_until(t, clock, 100)
    assert [m.expiration for m in synic.posted] == [100]
    synic.accepting.clear()  # the guest has not emptied the slot yet
    run_until(t, clock, 330)
    assert t.timers[0].pending == 200
    synic.accepting.add(SINT)
    t.sint_ready(SINT)  # EOM at 330: 200 delivered, 300 overdue: catch up, half a period later
    assert (synic.posted[-1].expiration, synic.posted[-1].delivery) == (200, 330)
    assert (t.timers[0].expiration, t.timers[0].fire_at) == (300, 380)
    synic.accepting.clear()
    run_until(t, clock, 470)  # 300 fired at 380 into a busy slot
    assert t.timers[0].pending == 300
    synic.accepting.add(SINT)
    t.sint_ready(SINT)
    assert (synic.posted[-1].expiration, synic.posted[-1].delivery) == (300, 470)
    assert (t.timers[0].expiration, t.timers[0].fire_at) == (500, 500)
    assert "skip" in tracer.names()
    run_until(t, clock, 700)
    assert [m.expiration for m in synic.posted] == [100, 200, 300, 500, 600, 700]


def test_disabling_drops_the_pending_expiry() -> None:
    t, clock, _, synic, tracer = make()
    synic.accepting.clear()
    t.write_config(0, cfg())
    t.write_count(0, 1500)
    t.poll(1500)
    t.write_config(0, cfg(enable=False))
    synic.accepting.add(SINT)
    t.sint_ready(SINT)
    run_until(t, clock, 100_000)
    assert synic.posted == []
    assert tracer.events[-1][1] == "cancel" and tracer.events[-1][2]["pending"] is True


def test_reset() -> None:
    t, clock, _, synic, _ = make()
    t.write_config(0, cfg(periodic=True))
    t.write_count(0, 100)
    t.reset()
    assert all(t.read_config(i) == 0 and t.read_count(i) == 0 for i in range(4))
    run_until(t, clock, 10_000)
    assert synic.posted == [] and not t.active


def test_four_timers_are_independent() -> None:
    t, clock, irq, synic, _ = make(start=0)
    t.write_count(0, 100)
    t.write_config(0, cfg(periodic=True, sint=2))
    t.write_config(1, cfg(sint=5))
    t.write_count(1, 250)
    t.write_config(2, cfg(periodic=True, lazy=True, sint=2))
    t.write_count(2, 300)
    t.write_config(3, cfg(direct=True, vector=0x50, sint=0))
    t.write_count(3, 120)
    run_until(t, clock, 650)
    by_index: dict[int, list[int]] = {}
    for m in synic.posted:
        by_index.setdefault(m.index, []).append(m.expiration)
    assert by_index == {0: [100, 200, 300, 400, 500, 600], 1: [250], 2: [300, 600]}
    assert irq.sent == [(1, 0x50, False)]
    assert {m.sint for m in synic.posted if m.index == 1} == {5}


# --- with the real SynIC (hv/synic.py) -----------------------------------------------------------------

SIMP_GPFN = 0x10


def real_synic(clock: FakeClock) -> tuple[Synic, VpTimers, FakeIrq, FakeMemory]:
    mem = FakeMemory(1 << 20)
    irq = FakeIrq()
    synic = Synic(0, mem, irq)
    timers = VpTimers(0, clock, irq, synic, min_period=1)
    synic.add_ready_listener(timers.sint_ready)
    synic.write_msr(M.HV_X64_MSR_SCONTROL, 1)
    synic.write_msr(M.HV_X64_MSR_SIMP, SIMP_GPFN << 12 | 1)
    synic.write_msr(M.HV_X64_MSR_SINT0 + SINT, 0x40)
    return synic, timers, irq, mem


def slot(mem: FakeMemory, sint: int = SINT) -> tuple[int, int, int, bytes]:
    raw = mem.read((SIMP_GPFN << 12) + sint * 256, 256)
    msg_type, size, flags = struct.unpack_from("<IBB", raw)
    return msg_type, size, flags, raw[16 : 16 + size]


def test_real_synic_message_layout() -> None:
    clock = FakeClock(100)
    synic, t, irq, mem = real_synic(clock)
    t.write_config(1, cfg())
    t.write_count(1, 150)
    clock.t = 155
    t.poll(155)
    msg_type, size, flags, payload = slot(mem)
    assert (msg_type, size, flags) == (0x80000010, 24, 0)
    assert struct.unpack("<IIQQ", payload) == (1, 0, 150, 155)
    assert irq.sent == [(0, 0x40, False)]


def test_real_synic_busy_slot_redelivered_on_eom() -> None:
    """The guest protocol: empty the slot, see MessagePending, write EOM -> the pending expiry arrives."""
    clock = FakeClock(0)
    synic, t, irq, mem = real_synic(clock)
    mem.write((SIMP_GPFN << 12) + SINT * 256, struct.pack("<I", 0x1234))  # slot busy
    t.write_config(0, cfg(periodic=True))
    t.write_count(0, 100)
    clock.t = 100
    t.poll(100)
    assert slot(mem)[0] == 0x1234 and slot(mem)[2] & 1  # MessagePending set for the guest
    clock.t = 170
    mem.write((SIMP_GPFN << 12) + SINT * 256, bytes(4))  # guest consumed it
    synic.write_msr(M.HV_X64_MSR_EOM, 0)
    msg_type, _, _, payload = slot(mem)
    assert msg_type == 0x80000010
    assert struct.unpack("<IIQQ", payload) == (0, 0, 100, 170)
    assert irq.sent == [(0, 0x40, False)]


def test_real_synic_masked_sint_delivered_on_unmask() -> None:
    clock = FakeClock(0)
    synic, t, irq, mem = real_synic(clock)
    synic.write_msr(M.HV_X64_MSR_SINT0 + SINT, 0x10040)  # masked
    t.write_config(0, cfg())
    t.write_count(0, 50)
    clock.t = 50
    t.poll(50)
    assert slot(mem)[0] == 0 and irq.sent == []
    clock.t = 80
    synic.write_msr(M.HV_X64_MSR_SINT0 + SINT, 0x40)  # unmask
    assert struct.unpack("<IIQQ", slot(mem)[3]) == (0, 0, 50, 80)
    assert irq.sent == [(0, 0x40, False)]
    assert not t.read_config(0) & STIMER_ENABLE


def test_real_synic_simp_disabled_then_enabled() -> None:
    clock = FakeClock(0)
    synic, t, _, mem = real_synic(clock)
    synic.write_msr(M.HV_X64_MSR_SIMP, SIMP_GPFN << 12)
    t.write_config(0, cfg())
    t.write_count(0, 50)
    clock.t = 60
    t.poll(60)
    clock.t = 90
    synic.write_msr(M.HV_X64_MSR_SIMP, SIMP_GPFN << 12 | 1)
    assert struct.unpack("<IIQQ", slot(mem)[3]) == (0, 0, 50, 90)


# --- properties ------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    period=st.integers(min_value=1, max_value=500),
    lazy=st.booleans(),
    gaps=st.lists(st.integers(min_value=0, max_value=2000), min_size=1, max_size=30),
    busy=st.lists(st.booleans(), min_size=30, max_size=30),
)
def test_periodic_never_early_never_duplicated(
    period: int, lazy: bool, gaps: list[int], busy: list[bool]
) -> None:
    """Whatever the polling pattern and slot availability: every signal has delivery >= expiration,
    expirations strictly increase and lie on the period grid, nothing is delivered twice."""
    t, clock, _, synic, _ = make(start=0)
    t.write_count(0, period)
    t.write_config(0, cfg(periodic=True, lazy=lazy))
    for gap, b in zip(gaps, busy, strict=False):
        if b:
            synic.accepting.discard(SINT)
        else:
            synic.accepting.add(SINT)
        clock.t += gap
        t.poll(clock.t)
        if not b:
            t.sint_ready(SINT)
    exps = [m.expiration for m in synic.posted]
    assert exps == sorted(set(exps))
    assert all(e % period == 0 and e > 0 for e in exps)
    assert all(m.delivery >= m.expiration for m in synic.posted)
    assert all(m.delivery <= clock.t for m in synic.posted)


def test_periodic_period_has_a_floor_so_a_guest_cannot_storm_itself() -> None:
    """COUNT = 1 (100 ns) as a period: the timer runs every MIN_PERIOD, and COUNT reads back as 1."""
    from hv1.hv.timers import MIN_PERIOD

    t, clock, irq, _, _ = make(min_period=MIN_PERIOD)
    t.write_count(0, 1)
    t.write_config(0, cfg(direct=True, periodic=True, vector=0x30))
    run_until(t, clock, 1000 + 10 * MIN_PERIOD + 1)
    assert t.read_count(0) == 1
    assert len(irq.sent) == 10
