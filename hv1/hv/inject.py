"""Fault injection: make the hypervisor fail on purpose, in ways a real Hyper-V may (issue 14).

A guest's error paths (a PostMessage retry loop, a #GP handler around an MSR probe, a timer whose
expiry arrives late) are hard to reach against a hypervisor that never fails. An `Injector` holds
rules parsed from specs (`hv1 run --inject SPEC`, `MachineConfig.inject`, or
`Partition.set_injection(Injector.parse([...]))` from Python). Every rule produces only an outcome
the TLFS allows a hypervisor to produce at that point; `INJECTABLE` and `RULES` below are the table
`hv1 info --inject` prints, each entry with its TLFS justification.

Spec grammar (one rule per spec; options after ':' in any order):

    hypercall=NAME|CODE:status=STATUS[:TRIGGER...]   the call answers STATUS instead of running
    msr=INDEX|NAME:gp[:read|:write][:TRIGGER...]      the access raises #GP(0)
    slot-busy=vpN.sintM[:TRIGGER...]                  message delivery into that SIM slot is held
    timer-delay=DURATION[:vp=N][:timer=N][:TRIGGER...] expiries are signalled DURATION late
    message-delay=DURATION[:vp=N][:sint=N][:TRIGGER...] posted messages wait DURATION in the queue
    deposit=refuse[:TRIGGER...]                       HvCallDepositMemory answers INSUFFICIENT_MEMORY

    TRIGGER: every=N (the Nth, 2Nth, ... matching event), after=N (skip the first N), times=N (at most
             N injections), prob=P (each matching event with probability P), seed=S (seed of prob;
             default 0: the same spec gives the same run). Without a trigger every matching event
             is hit. All given triggers must agree: after, then every, then prob, then times.
    vp=N, timer=N, sint=N: only the timers / messages of that VP (the target VP of a message), that
             STIMER, that SINT.
    DURATION: a number with ns, us, ms or s; rounded *up* to the 100 ns reference-time unit, so an
             injected delay is never shorter than asked (and an expiry never early).

Where each rule acts (all in hv1/hv, so unit tests drive them with fakes):
- hypercall: the dispatcher, after every ABI check (hypercall-interface.md "Ordering of Error
  Conditions": the injected status is one of the call's own, so it comes after the common ones) and
  before the handler: the handler does not run, its output is not written, RAX = status.
- msr: MsrTable.read/write, before the MSR's own function; only synthetic-range MSRs.
- slot-busy / message-delay: Synic delivery; the message stays queued (FIFO kept) until a release
  time: the end of its message-delay, or hv/synic.HELD_RETRY (1 ms) after a slot-busy hit (each
  such retry is one event of the slot-busy rule; a timer's expiry retries on the timer's own
  back-off instead).
  PartitionTime.poll_vp releases due messages and reports the next release as a deadline, so the
  machine's scheduler wakes a VP for it even when the target VP sits in HLT with nothing else armed.
  Timer messages are not delayed by message-delay (their DeliveryTime must be the time they reach
  the slot): use timer-delay.
- timer-delay: VpTimers, where an expiry's signal time is set (one-shot arm, each periodic period).

Rules are the host's, not guest state: a partition reset (a guest reboot) neither removes them nor
restarts their counts, so a run's injection sequence continues across reboots.

Cost when no spec is given: `partition.inject` is None, and each hook point is one attribute test.
Every injected event is traced in category "inject" (and kept in the ring buffer).
Not thread-safe by itself: every hook point runs under the partition lock.
"""

from __future__ import annotations

import random
import re
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from hv1.hv.interfaces import TraceSink
from hv1.tlfs import msrs as M
from hv1.tlfs.hypercalls import HypercallCode, hypercall_name
from hv1.tlfs.status import HvStatus
from hv1.tlfs.synic import SINT_COUNT as _SINT_COUNT
from hv1.tlfs.timers import STIMER_COUNT as _STIMER_COUNT

H = HypercallCode
S = HvStatus


class InjectError(ValueError):
    """A spec that does not parse, or asks for an outcome the TLFS does not allow there."""


class InjectClock(Protocol):
    def now(self) -> int: ...


# --- what may be injected, and why (printed by `hv1 info --inject`) ----------------------------------

# (hypercall, status) -> TLFS justification. Only statuses the call's own TLFS page (or the status
# table's definition) lets it return for reasons the guest cannot see or rule out.
INJECTABLE: dict[tuple[int, int], str] = {
    (H.HvCallPostMessage, S.INSUFFICIENT_BUFFERS): (
        "HvCallPostMessage Return Values: 'The port has no available guest message buffers' - the "
        "receiver's queue is full, which the sender cannot see; the message is not taken (retry)"
    ),
    (H.HvCallPostMessageDirect, S.INSUFFICIENT_BUFFERS): (
        "status table (hypercall-interface 'Hypercall Status Codes'): 'The target port does not have "
        "sufficient buffers for the caller to post a message' - the target SINT's queue is full"
    ),
    (H.HvCallCreatePort, S.INSUFFICIENT_MEMORY): (
        "a port is one of the hypervisor's 'internal tracking structures', allocated from the "
        "partition's memory pool (virtualization-host.md 'Memory Pool Management'); status 0x000B "
        "'Insufficient memory exists for the call to succeed' when the pool is empty"
    ),
    (H.HvCallConnectPort, S.INSUFFICIENT_MEMORY): (
        "a connection is allocated from the partition's memory pool like a port (status 0x000B)"
    ),
    (H.HvCallDepositMemory, S.INSUFFICIENT_MEMORY): (
        "deposit=refuse. A deposit is tracked by the hypervisor in memory of its own (status 0x000B). "
        "HvCallDepositMemory exists for a partition that may manage others (--hv root, "
        "hv1/hv/hypercalls/virtualization_host.py); for any other it is INVALID_HYPERCALL_CODE before "
        "any injection point, so the rule never fires there"
    ),
}

# Rule kinds -> what they do and why a real Hyper-V may do it.
RULES: dict[str, str] = {
    "hypercall": "the call returns the status instead of running (the statuses below only)",
    "msr": (
        "RDMSR/WRMSR of a synthetic MSR raises #GP(0): the TLFS answers a synthetic MSR access it "
        "refuses with #GP (an MSR not available, a read-only MSR written, SINTx with an invalid "
        "vector: inter-partition-communication 'SINTx Registers'); a guest must survive one"
    ),
    "slot-busy": (
        "the message stays queued as if the SIM slot were occupied (inter-partition-communication "
        "'Messages': 'the message remains queued, and no interrupt is generated'; delivery is "
        "retried later: here 1 ms later, each retry one event of the rule): posters then see their "
        "queue fill and get INSUFFICIENT_BUFFERS, timers keep their expiry pending"
    ),
    "message-delay": (
        "a posted message reaches its slot at least DURATION later: the TLFS bounds no delivery "
        "latency, it only keeps per-VP order ('Messages arrive in the order in which they have been "
        "successfully posted'), which the queue keeps"
    ),
    "timer-delay": (
        "the expiry is signalled DURATION after the expiration time: timers.md 'The hypervisor "
        "guarantees that a timer expiration signal will never be delivered before the expiration "
        "time. The signal may arrive any time after the expiration time.' Never early: delays only"
    ),
    "deposit": "deposit=refuse: HvCallDepositMemory answers INSUFFICIENT_MEMORY (see the status table)",
}

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ns|us|ms|s)$")
_DURATION_NS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}
_SLOT = re.compile(r"^vp(\d+)\.sint(\d+)$")
_TRIGGERS = ("every", "after", "times", "prob", "seed")
_MSR_BY_NAME = {name: index for index, name in M.MSR_NAMES.items()}


def _int(text: str, what: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise InjectError(f"{what} must be a whole number, not {text!r}") from None


def parse_duration(text: str) -> int:
    """'50us' -> reference-time units (100 ns), rounded up; at least 1."""
    m = _DURATION.match(text.strip())
    if not m:
        raise InjectError(f"bad duration {text!r}: use a number with ns, us, ms or s (e.g. 50us)")
    ns = float(m.group(1)) * _DURATION_NS[m.group(2)]
    if ns <= 0:
        raise InjectError(f"bad duration {text!r}: must be positive")
    return max(1, -(-int(round(ns)) // 100))


def parse_status(text: str) -> int:
    name = text.strip().upper()
    name = name.removeprefix("HV_STATUS_")
    if name in HvStatus.__members__:
        return int(HvStatus[name])
    try:
        return int(HvStatus(int(text, 0)))
    except ValueError:
        raise InjectError(f"unknown status {text!r} (e.g. INSUFFICIENT_BUFFERS)") from None


def parse_hypercall(text: str) -> int:
    if text in HypercallCode.__members__:
        return int(HypercallCode[text])
    for name, code in HypercallCode.__members__.items():
        if name.lower() == text.lower() or name.lower() == "hvcall" + text.lower():
            return int(code)
    try:
        return _int(text, "hypercall")
    except InjectError:
        raise InjectError(f"unknown hypercall {text!r} (a name like HvCallPostMessage, or a code)") from None


def parse_msr(text: str) -> int:
    index = _MSR_BY_NAME.get(text.upper())
    if index is None:
        try:
            index = int(text, 0)
        except ValueError:
            raise InjectError(f"unknown MSR {text!r} (an index such as 0x40000090 or a name)") from None
    if not any(lo <= index < hi for lo, hi in M.SYNTHETIC_MSR_RANGES):
        raise InjectError(f"MSR {index:#x} is not a synthetic MSR: only synthetic MSRs can be made to #GP")
    return index


@dataclass
class Trigger:
    """When a rule hits, counted over the events the rule matches (see the module docstring)."""

    every: int = 1
    after: int = 0
    times: int | None = None
    prob: float | None = None
    seed: int = 0
    seen: int = 0
    hits: int = 0
    _rng: random.Random = field(default_factory=random.Random, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def fire(self) -> bool:
        self.seen += 1
        n = self.seen - self.after
        if n <= 0 or n % self.every:
            return False
        if self.prob is not None and self._rng.random() >= self.prob:
            return False
        if self.times is not None and self.hits >= self.times:
            return False
        self.hits += 1
        return True


@dataclass
class Rule:
    spec: str
    kind: str  # a key of RULES
    trigger: Trigger
    code: int | None = None  # hypercall
    status: int | None = None  # hypercall
    msr: int | None = None
    access: str | None = None  # msr: "read", "write" or None (both)
    vp: int | None = None  # None: every VP
    sint: int | None = None
    timer: int | None = None
    delay: int = 0  # 100 ns units


def parse_rule(spec: str) -> Rule:
    head, *opts = spec.strip().split(":")
    kind, sep, value = head.partition("=")
    kind = kind.strip().lower()
    if not sep or kind not in RULES:
        raise InjectError(f"bad --inject {spec!r}: expected one of {', '.join(k + '=...' for k in RULES)}")
    trig: dict[str, Any] = {}
    rule = Rule(spec, kind, Trigger())
    flags: set[str] = set()
    for opt in opts:
        k, has_value, v = opt.strip().partition("=")
        k = k.lower()
        if not has_value:
            flags.add(k)
            continue
        if k in ("every", "after", "times", "seed"):
            trig[k] = _int(v, k)
            if trig[k] < (1 if k == "every" else 0):
                raise InjectError(f"bad --inject {spec!r}: {k} must be {'>= 1' if k == 'every' else '>= 0'}")
        elif k == "prob":
            try:
                trig[k] = float(v)
            except ValueError:
                raise InjectError(f"bad --inject {spec!r}: prob must be a number in [0, 1]") from None
            if not 0.0 <= trig[k] <= 1.0:
                raise InjectError(f"bad --inject {spec!r}: prob must be a number in [0, 1]")
        elif k == "status" and kind == "hypercall":
            rule.status = parse_status(v)
        elif k == "vp" and kind in ("timer-delay", "message-delay"):
            rule.vp = _int(v, "vp")
        elif k == "timer" and kind == "timer-delay":
            rule.timer = _int(v, "timer")
            if not 0 <= rule.timer < _STIMER_COUNT:
                raise InjectError(f"bad --inject {spec!r}: timer must be 0..{_STIMER_COUNT - 1}")
        elif k == "sint" and kind == "message-delay":
            rule.sint = _int(v, "sint")
            if not 0 <= rule.sint < _SINT_COUNT:
                raise InjectError(f"bad --inject {spec!r}: sint must be 0..{_SINT_COUNT - 1}")
        else:
            raise InjectError(f"bad --inject {spec!r}: option {opt!r} does not apply to {kind}=")
    rule.trigger = Trigger(**trig)
    value = value.strip()
    if kind == "hypercall":
        rule.code = parse_hypercall(value)
        if rule.status is None:
            raise InjectError(f"bad --inject {spec!r}: hypercall= needs status=STATUS")
        if (rule.code, rule.status) not in INJECTABLE:
            allowed = ", ".join(
                f"{hypercall_name(c)}:status={HvStatus(s).name}" for c, s in INJECTABLE if c == rule.code
            )
            raise InjectError(
                f"bad --inject {spec!r}: a real Hyper-V does not answer {hypercall_name(rule.code)} with "
                f"{HvStatus(rule.status).name} for reasons the guest cannot rule out; "
                + (f"allowed: {allowed}" if allowed else "nothing is injectable for this call")
                + " (hv1 info --inject)"
            )
    elif kind == "msr":
        rule.msr = parse_msr(value)
        if "gp" not in flags:
            raise InjectError(f"bad --inject {spec!r}: msr= needs the outcome ':gp'")
        if {"read", "write"} <= flags:
            raise InjectError(f"bad --inject {spec!r}: give read or write, not both (neither: both)")
        rule.access = "read" if "read" in flags else "write" if "write" in flags else None
        flags -= {"gp", "read", "write"}
    elif kind == "slot-busy":
        m = _SLOT.match(value.lower())
        if not m or int(m.group(2)) >= _SINT_COUNT:
            raise InjectError(f"bad --inject {spec!r}: slot-busy=vpN.sintM (M = 0..15)")
        rule.vp, rule.sint = int(m.group(1)), int(m.group(2))
    elif kind in ("timer-delay", "message-delay"):
        rule.delay = parse_duration(value)
    elif kind == "deposit":
        if value.lower() != "refuse":
            raise InjectError(f"bad --inject {spec!r}: the deposit outcome is 'refuse'")
        # The one deposit outcome, on the dispatcher's hypercall hook.
        rule.kind, rule.code = "hypercall", int(H.HvCallDepositMemory)
        rule.status = int(S.INSUFFICIENT_MEMORY)
    if flags:
        raise InjectError(f"bad --inject {spec!r}: unknown option(s) {', '.join(sorted(flags))}")
    return rule


class Injector:
    """The rules of one partition and their hook points (called under the partition lock)."""

    def __init__(self, rules: Iterable[Rule] = ()) -> None:
        self.rules = list(rules)
        self.tracer: TraceSink | None = None
        self.clock: InjectClock | None = None  # reference time (set by Partition.set_injection)
        self._hypercalls: dict[int, list[Rule]] = {}
        self._msrs: dict[int, list[Rule]] = {}
        self._slots: dict[tuple[int, int], list[Rule]] = {}
        self._timer_rules: list[Rule] = []
        self._message_rules: list[Rule] = []
        for r in self.rules:
            if r.kind == "hypercall":
                assert r.code is not None
                self._hypercalls.setdefault(r.code, []).append(r)
            elif r.kind == "msr":
                assert r.msr is not None
                self._msrs.setdefault(r.msr, []).append(r)
            elif r.kind == "slot-busy":
                assert r.vp is not None and r.sint is not None
                self._slots.setdefault((r.vp, r.sint), []).append(r)
            elif r.kind == "timer-delay":
                self._timer_rules.append(r)
            elif r.kind == "message-delay":
                self._message_rules.append(r)

    @classmethod
    def parse(cls, specs: Iterable[str]) -> Injector:
        return cls(parse_rule(s) for s in specs)

    @property
    def delays_timers(self) -> bool:
        return bool(self._timer_rules)

    @property
    def delays_messages(self) -> bool:
        return bool(self._message_rules)

    @property
    def holds_messages(self) -> bool:
        """Some rule can keep a message queued until a release time (PartitionTime.poll_vp)."""
        return bool(self._message_rules or self._slots)

    def _hit(self, rule: Rule, vp: int, event: str, **fields: Any) -> None:
        if self.tracer is not None:
            self.tracer.emit("inject", vp, event, rule=rule.spec, n=rule.trigger.seen, **fields)

    # --- hook points ------------------------------------------------------------------------------
    def hypercall_status(self, vp: int, code: int) -> int | None:
        """The status to answer instead of running the handler, or None (the dispatcher)."""
        rules = self._hypercalls.get(code)
        if rules is None:
            return None
        for r in rules:
            if r.trigger.fire():
                assert r.status is not None
                self._hit(r, vp, "hypercall", call=hypercall_name(code), status=HvStatus(r.status).name)
                return r.status
        return None

    def msr_gp(self, vp: int, msr: int, write: bool) -> bool:
        """Whether this RDMSR/WRMSR raises #GP (the MSR table)."""
        rules = self._msrs.get(msr)
        if rules is None:
            return False
        access = "write" if write else "read"
        for r in rules:
            if (r.access is None or r.access == access) and r.trigger.fire():
                self._hit(r, vp, "msr-gp", msr=M.msr_name(msr), access=access)
                return True
        return False

    def slot_busy(self, vp: int, sint: int) -> bool:
        """Whether a delivery attempt into SIM slot (vp, sint) finds it busy (the SynIC)."""
        rules = self._slots.get((vp, sint))
        if rules is None:
            return False
        for r in rules:
            if r.trigger.fire():
                self._hit(r, vp, "slot-busy", sint=sint)
                return True
        return False

    def message_delay(self, vp: int, sint: int) -> int:
        """Extra wait (100 ns units) for a message posted now to (vp, sint); 0: none."""
        for r in self._message_rules:
            if (r.vp is None or r.vp == vp) and (r.sint is None or r.sint == sint) and r.trigger.fire():
                self._hit(r, vp, "message-delay", sint=sint, delay_us=r.delay / 10)
                return r.delay
        return 0

    def now(self) -> int:
        return self.clock.now() if self.clock is not None else 0

    def timer_delay(self, vp: int, timer: int, expiration: int) -> int:
        """Extra lateness (100 ns units) for the expiry of STIMERx at `expiration`; 0: none."""
        for r in self._timer_rules:
            if (r.vp is None or r.vp == vp) and (r.timer is None or r.timer == timer) and r.trigger.fire():
                self._hit(r, vp, "timer-delay", timer=timer, expiration=expiration, delay_us=r.delay / 10)
                return r.delay
        return 0


def describe() -> str:
    """The text of `hv1 info --inject`: the grammar, every rule kind and every injectable status."""
    doc = __doc__ or ""
    grammar = doc[doc.index("Spec grammar") : doc.index("Where each rule acts")].rstrip()
    lines = [grammar, "", "Rule kinds (what a real Hyper-V may do, TLFS):"]
    for kind, why in RULES.items():
        lines.append(textwrap.fill(why, 100, initial_indent=f"  {kind:<15}", subsequent_indent=" " * 17))
    lines += ["", "Injectable hypercall statuses (hypercall=NAME:status=STATUS):"]
    for (code, status), why in INJECTABLE.items():
        lines.append(f"  {hypercall_name(code)}:status={HvStatus(status).name}")
        lines.append(textwrap.fill(why, 100, initial_indent=" " * 6, subsequent_indent=" " * 6))
    lines += [
        "",
        "Examples:",
        "  --inject hypercall=HvCallPostMessage:status=INSUFFICIENT_BUFFERS:every=3",
        "  --inject hypercall=HvCallPostMessage:status=INSUFFICIENT_BUFFERS:prob=0.1:seed=7",
        "  --inject msr=0x40000090:gp:write:after=10:times=1",
        "  --inject slot-busy=vp0.sint2:times=5",
        "  --inject timer-delay=50us:timer=0",
        "  --inject message-delay=2ms:sint=2",
        "Every injected event is traced in category 'inject' (--trace inject, --trace-json).",
    ]
    return "\n".join(lines)
