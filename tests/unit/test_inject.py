"""Fault injection (hv1/hv/inject.py) through the real dispatcher, MSR table, SynIC and timers with
fakes: a guest that retries on INSUFFICIENT_BUFFERS sees exactly the injected failures, the same seed
gives the same run, every injected event is traced, and only TLFS-allowed outcomes are accepted."""

from __future__ import annotations

import io
import json
import struct
from typing import Any

import pytest

from hv1.hv.caps import Caps
from hv1.hv.hypercalls.abi import build_control
from hv1.hv.hypercalls.table import HypercallContext, HypercallDef, Kind
from hv1.hv.inject import INJECTABLE, InjectError, Injector, describe, parse_duration, parse_rule
from hv1.hv.interfaces import GuestException
from hv1.hv.partition import Partition
from hv1.hv.ports import PartitionPorts
from hv1.hv.synic import HELD_RETRY, attach_synic, synic_of
from hv1.hv.timers import VpTimers
from hv1.tlfs import msrs as M
from hv1.tlfs.hypercalls import HypercallCode as C
from hv1.tlfs.partition import PartitionPrivilege as P
from hv1.tlfs.status import HvStatus as S
from hv1.trace import Tracer
from tests.fakes import FakeClock, FakeHooks, FakeIrq, FakeMemory, FakeRegs
from tests.unit.test_ports import ALL, IN_GPA, OUT_GPA, Env

POST_EVERY_3 = "hypercall=HvCallPostMessage:status=INSUFFICIENT_BUFFERS:every=3"


class RetryingGuest:
    """The guest side of a VMBus-like sender: HvCallPostMessage, and on HV_STATUS_INSUFFICIENT_BUFFERS
    try again (the TLFS's "retry later"). Records every status it saw, call by call."""

    def __init__(self, env: Env, vp: int = 1, connection: int = 0x10) -> None:
        self.env, self.vp, self.connection = env, vp, connection
        self.statuses: list[int] = []

    def send(self, payload: bytes, max_tries: int = 100) -> None:
        for _ in range(max_tries):
            status = self.env.post(self.vp, self.connection, 0x77, payload)
            self.statuses.append(status)
            if status == S.SUCCESS:
                return
            assert status == S.INSUFFICIENT_BUFFERS, f"unexpected status {status:#x}"
        raise AssertionError("gave up")

    @property
    def failures(self) -> list[int]:
        """1-based numbers of the calls that failed."""
        return [i + 1 for i, s in enumerate(self.statuses) if s != S.SUCCESS]


class TracedEnv(Env):
    """test_ports.Env with synthetic timers and a partition traced by `tracer` from the start."""

    def __init__(self, tracer: Tracer, vps: int = 2) -> None:
        caps = Caps(
            features=frozenset({"hypercall-msrs", "vp-index"}),
            privileges=int(P.AccessHypercallMsrs | P.AccessVpIndex | ALL | P.AccessSyntheticTimerRegs),
            apic_mode="user",
        )
        self.mem, self.irq = FakeMemory(1 << 20), FakeIrq()
        self.p = Partition(caps, vps, self.mem, FakeClock(), self.irq, FakeHooks(), tracer=tracer)
        self.ports: PartitionPorts = attach_synic(self.p)


def traced_env(specs: list[str], vps: int = 2) -> tuple[Env, io.StringIO]:
    out = io.StringIO()
    env = TracedEnv(Tracer(json_out=out), vps)
    env.p.set_injection(Injector.parse(specs))
    return env, out


def inject_events(out: io.StringIO) -> list[dict[str, Any]]:
    return [r for r in map(json.loads, out.getvalue().splitlines()) if r["cat"] == "inject"]


def run_sender(specs: list[str], messages: int = 20) -> tuple[RetryingGuest, list[bytes], io.StringIO]:
    env, out = traced_env(specs)
    got: list[bytes] = []
    env.ports.on_message(0x10, lambda m: got.append(m.payload))
    guest = RetryingGuest(env)
    for i in range(messages):
        guest.send(b"msg%d" % i)
    return guest, got, out


# --- hypercalls ---------------------------------------------------------------------------------------


def test_post_message_retry_guest_sees_exactly_the_injected_failures_every_3() -> None:
    """HvCallPostMessage Return Values: INSUFFICIENT_BUFFERS. Every 3rd call fails; the handler does
    not run for it (nothing reaches the port), so after retries every message arrives once, in order."""
    guest, got, out = run_sender([POST_EVERY_3], messages=20)
    calls = len(guest.statuses)
    assert guest.failures == list(range(3, calls + 1, 3))
    assert calls == 20 + len(guest.failures)
    assert got == [b"msg%d" % i for i in range(20)]
    events = inject_events(out)
    assert [e["n"] for e in events] == guest.failures
    assert {(e["event"], e["call"], e["status"], e["vp"]) for e in events} == {
        ("hypercall", "HvCallPostMessage", "INSUFFICIENT_BUFFERS", 1)
    }
    # The hypercall trace line of an injected call carries the injected status.
    hc = [r for r in map(json.loads, out.getvalue().splitlines()) if r["cat"] == "hypercalls"]
    assert [r["status"] for r in hc].count("INSUFFICIENT_BUFFERS") == len(guest.failures)


def test_after_and_times_triggers() -> None:
    guest, got, _ = run_sender([POST_EVERY_3.replace("every=3", "after=4:times=2")], messages=10)
    assert guest.failures == [5, 6]  # calls 5 and 6 fail, then the budget of 2 is spent
    assert len(got) == 10


def test_same_seed_same_run_other_seed_other_run() -> None:
    spec = "hypercall=HvCallPostMessage:status=INSUFFICIENT_BUFFERS:prob=0.3:seed=7"
    a, _, out_a = run_sender([spec], messages=60)
    b, _, out_b = run_sender([spec], messages=60)
    c, _, _ = run_sender([spec.replace("seed=7", "seed=8")], messages=60)
    assert a.statuses == b.statuses
    assert [e["n"] for e in inject_events(out_a)] == [e["n"] for e in inject_events(out_b)]
    assert 5 < len(a.failures) < 60  # about 30 % of the calls
    assert a.statuses != c.statuses


def test_injection_comes_after_the_abi_checks() -> None:
    """hypercall-interface.md "Ordering of Error Conditions": the common checks answer first; a call
    they reject is not one of the rule's events."""
    env, out = traced_env([POST_EVERY_3.replace("every=3", "every=1")])
    env.ports.on_message(0x10, lambda m: None)
    regs = FakeRegs()
    regs.gprs["rcx"] = build_control(C.HvCallPostMessage, rep_count=1)  # a rep count on a simple call
    regs.gprs["rdx"], regs.gprs["r8"] = IN_GPA, OUT_GPA
    env.p.hypercall(1, regs)
    assert regs.gprs["rax"] & 0xFFFF == S.INVALID_HYPERCALL_INPUT
    assert inject_events(out) == []
    assert env.post(1, 0x10, 0x77, b"x") == S.INSUFFICIENT_BUFFERS
    assert len(inject_events(out)) == 1


def test_signal_event_is_unaffected_by_a_post_message_rule() -> None:
    env, out = traced_env([POST_EVERY_3.replace("every=3", "every=1")])
    env.ports.on_event(0x20, lambda e: None)
    assert env.signal(1, 0x20, 0) == S.SUCCESS
    assert inject_events(out) == []


def test_deposit_refuse_is_the_dispatcher_hook_for_hv_call_deposit_memory() -> None:
    """deposit=refuse: HvCallDepositMemory answers INSUFFICIENT_MEMORY. hv1 does not implement the
    call yet (issue 10): unregistered, it is INVALID_HYPERCALL_CODE and the rule never fires; once a
    definition is registered, the same hook answers for it without running it."""
    env, out = traced_env(["deposit=refuse"])
    assert env.call(0, C.HvCallDepositMemory, b"\0" * 16)[0] == S.INVALID_HYPERCALL_CODE
    assert inject_events(out) == []

    ran: list[int] = []

    def handler(ctx: HypercallContext) -> int:
        ran.append(ctx.code)
        return S.SUCCESS

    env.p.hypercalls.register(
        HypercallDef(C.HvCallDepositMemory, "HvCallDepositMemory", Kind.SIMPLE, handler, input_size=16)
    )
    assert env.call(0, C.HvCallDepositMemory, b"\0" * 16)[0] == S.INSUFFICIENT_MEMORY
    assert ran == []
    assert inject_events(out)[0]["status"] == "INSUFFICIENT_MEMORY"


def test_deposit_refuse_on_a_virtualization_host_leaves_the_pool_untouched() -> None:
    """With the partition engine attached (--hv root), the real HvCallDepositMemory is refused with
    INSUFFICIENT_MEMORY (0 reps) and the pages stay the host's: the deposit-and-retry path a host
    like Linux's mshv_root runs, on demand."""
    from tests.unit.test_virtualization_host_calls import create_child, deposit, host

    p, hv = host()
    p.set_injection(Injector.parse(["deposit=refuse:times=1"]))
    child = create_child(p)
    assert deposit(p, child, [0x80, 0x81]) == (S.INSUFFICIENT_MEMORY, 0)
    assert hv.get_memory_balance(1, child) == (0, 0) and hv.partition(1).gpa.get(0x80) is not None
    assert deposit(p, child, [0x80, 0x81]) == (S.SUCCESS, 2)  # times=1: the retry goes through


@pytest.mark.parametrize(
    "spec",
    [
        "hypercall=HvCallSignalEvent:status=INSUFFICIENT_BUFFERS",  # IPC: "will never fail due to ..."
        "hypercall=HvCallPostMessage:status=ACCESS_DENIED",  # the guest can see its own privileges
        "hypercall=HvCallPostMessage",  # no status
        "hypercall=HvCallNoSuchCall:status=INSUFFICIENT_BUFFERS",
        "msr=0x40000090",  # no outcome
        "msr=0x10:gp",  # not a synthetic MSR
        "slot-busy=vp0.sint16",
        "timer-delay=-5us",
        "timer-delay=50",
        "timer-delay=50us:timer=4",
        "deposit=accept",
        "bogus=1",
        POST_EVERY_3 + ":every=0",
        POST_EVERY_3 + ":prob=1.5",
        POST_EVERY_3 + ":flavour=mint",
    ],
)
def test_specs_a_real_hyper_v_could_not_produce_are_rejected(spec: str) -> None:
    with pytest.raises(InjectError):
        parse_rule(spec)


def test_every_injectable_status_is_documented_in_info_inject() -> None:
    text = describe()
    assert "TRIGGER" in text and "DURATION" in text
    for code, status in INJECTABLE:
        assert f"{C(code).name}:status={S(status).name}" in text


def test_durations_round_up_to_reference_time_units() -> None:
    assert parse_duration("50us") == 500
    assert parse_duration("1ns") == 1  # never shorter than asked
    assert parse_duration("150ns") == 2
    assert parse_duration("2ms") == 20_000


# --- MSRs ---------------------------------------------------------------------------------------------


def test_msr_gp_on_write_only_once() -> None:
    env, out = traced_env(["msr=HV_X64_MSR_SINT2:gp:write:times=1"])
    env.enable(0, {3: 0x50})
    with pytest.raises(GuestException) as e:
        env.p.wrmsr(0, M.HV_X64_MSR_SINT0 + 2, 0x50)
    assert e.value.vector == 13 and e.value.error_code == 0
    assert env.p.rdmsr(0, M.HV_X64_MSR_SINT0 + 2) == 0x10000  # unchanged (reset value) and readable
    env.p.wrmsr(0, M.HV_X64_MSR_SINT0 + 2, 0x50)
    assert env.p.rdmsr(0, M.HV_X64_MSR_SINT0 + 2) == 0x50
    events = inject_events(out)
    assert [(e["event"], e["msr"], e["access"]) for e in events] == [("msr-gp", "HV_X64_MSR_SINT2", "write")]


def test_msr_gp_on_read_by_index() -> None:
    env, _ = traced_env(["msr=0x40000002:gp:read:every=2"])
    assert env.p.rdmsr(1, M.HV_X64_MSR_VP_INDEX) == 1
    with pytest.raises(GuestException):
        env.p.rdmsr(1, M.HV_X64_MSR_VP_INDEX)
    assert env.p.rdmsr(1, M.HV_X64_MSR_VP_INDEX) == 1


# --- SynIC slots and message delays -------------------------------------------------------------------


def test_slot_busy_holds_the_message_until_the_rule_is_spent() -> None:
    """inter-partition-communication.md "Messages": while the slot is (made to look) busy the message
    remains queued and no interrupt is generated; it is retried 1 ms later (each retry one event of
    the rule), and delivered once, in order, when the rule is spent. EOM-driven attempts in between
    do not count."""
    env, out = traced_env(["slot-busy=vp0.sint2:times=2"])
    clock: FakeClock = env.p.clock  # type: ignore[assignment]
    synic = synic_of(env.p.vps[0])
    env.enable(0)
    assert env.ports.post_message(0, 2, 0x1234, b"one") == S.SUCCESS  # attempt 1: busy
    assert env.slot(0, 2)[0] == 0 and env.irq.sent == []
    synic.rescan()
    env.p.wrmsr(0, M.HV_X64_MSR_EOM, 0)  # not yet due: no event consumed
    assert env.p.time.poll_vp(1) == HELD_RETRY  # the retry is a deadline for the machine
    clock.t = HELD_RETRY
    assert env.p.time.poll_vp(1) == 2 * HELD_RETRY  # attempt 2: busy again
    assert env.slot(0, 2)[0] == 0
    clock.t = 2 * HELD_RETRY
    assert env.p.time.poll_vp(1) is None  # attempt 3: the rule is spent, delivered
    assert env.slot(0, 2)[::3] == (0x1234, b"one")
    assert len(env.irq.sent) == 1
    assert [(e["event"], e["n"]) for e in inject_events(out)] == [("slot-busy", 1), ("slot-busy", 2)]


def test_slot_busy_fills_the_queue_and_posters_get_insufficient_buffers() -> None:
    env, _ = traced_env(["slot-busy=vp0.sint2"])
    env.enable(0)
    statuses = [env.ports.post_message(0, 2, 0x1, b"m") for _ in range(20)]
    assert statuses.count(S.SUCCESS) == synic_of(env.p.vps[0]).queue_depth
    assert statuses[-1] == S.INSUFFICIENT_BUFFERS


def test_message_delay_releases_at_the_time_and_any_vp_poll_delivers() -> None:
    env, out = traced_env(["message-delay=1ms:sint=2"])
    clock: FakeClock = env.p.clock  # type: ignore[assignment]
    env.enable(0)
    assert env.ports.post_message(0, 2, 0x1234, b"late") == S.SUCCESS
    assert env.slot(0, 2)[0] == 0
    assert env.p.time.poll_vp(1) == 10_000  # the release time is a deadline for the machine
    clock.t = 9_999
    env.p.time.poll_vp(1)
    assert env.slot(0, 2)[0] == 0
    clock.t = 10_000
    assert env.p.time.poll_vp(1) is None  # VP 1's poll releases VP 0's message
    assert env.slot(0, 2)[::3] == (0x1234, b"late")
    assert [(e["event"], e["delay_us"]) for e in inject_events(out)] == [("message-delay", 1000.0)]


def test_message_delay_other_sint_is_not_delayed() -> None:
    env, _ = traced_env(["message-delay=1ms:sint=2"])
    env.enable(0, {3: 0x51})
    assert env.ports.post_message(0, 3, 0x1, b"now") == S.SUCCESS
    assert env.slot(0, 3)[::3] == (0x1, b"now")


# --- timers -------------------------------------------------------------------------------------------


def test_timer_delay_is_late_never_early_and_keeps_the_expiration_time() -> None:
    """timers.md: the signal "will never be delivered before the expiration time ... may arrive any
    time after". Direct mode: the vector is asserted 50 us late."""
    clock, irq = FakeClock(1000), FakeIrq()
    t = VpTimers(0, clock, irq, None, direct_mode_available=True, min_period=1)
    rec = io.StringIO()
    inj = Injector.parse(["timer-delay=50us:timer=1"])
    inj.tracer = Tracer(json_out=rec)
    t.inject = inj
    direct = 1 | 1 << 12 | 0x40 << 4
    t.write_config(1, direct)
    t.write_count(1, 5000)
    assert t.next_deadline() == 5500
    t.poll(5499)
    assert irq.sent == []
    t.poll(5500)
    assert irq.sent == [(0, 0x40, False)]
    ev = [json.loads(x) for x in rec.getvalue().splitlines()]
    assert [(e["event"], e["timer"], e["expiration"], e["delay_us"]) for e in ev] == [
        ("timer-delay", 1, 5000, 50.0)
    ]
    # Another timer is not affected.
    t.write_config(0, direct)
    t.write_count(0, 6000)
    assert t.next_deadline() == 6000


def test_timer_delay_message_payload_keeps_expiration_and_stamps_delivery() -> None:
    env, _ = traced_env(["timer-delay=20us"])
    clock: FakeClock = env.p.clock  # type: ignore[assignment]
    env.enable(0, {3: 0x52})
    env.p.wrmsr(0, M.HV_X64_MSR_STIMER0_CONFIG, 1 | 3 << 16)
    env.p.wrmsr(0, M.HV_X64_MSR_STIMER0_COUNT, 1000)
    clock.t = 1100
    env.p.time.poll_vp(0)
    assert env.slot(0, 3)[0] == 0
    clock.t = 1200
    env.p.time.poll_vp(0)
    msg_type, _, _, payload = env.slot(0, 3)
    assert msg_type == 0x80000010
    index, _, expiration, delivery = struct.unpack("<IIQQ", payload[:24])
    assert (index, expiration, delivery) == (0, 1000, 1200)


def test_no_injection_by_default() -> None:
    env = Env()
    assert env.p.inject is None
    assert synic_of(env.p.vps[0]).inject is None
