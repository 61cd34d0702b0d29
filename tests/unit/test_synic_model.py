"""Hypothesis state machine: random posts, EOMs, EOIs, SINT/SIMP/SCONTROL writes and guest slot
handling against a reference model. Whatever the order, per SINT: every accepted message reaches
the guest exactly once, in post order (TLFS inter-partition-communication.md "Reliability and
Sequencing of Guest Message Buffers"); a post is refused only for the documented reasons."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from hv1.hv.synic import MESSAGE_FLAG_PENDING, SINT_MASKED, SINT_POLLING, Synic
from hv1.tlfs import msrs as M
from hv1.tlfs.status import HvStatus as S
from tests.fakes import FakeIrq, FakeMemory

SINTS = 3
DEPTH = 4
VEC = 0x40
PAGES = (0x10000, 0x20000)

sints = st.integers(0, SINTS - 1)


class SynicModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.mem = FakeMemory(1 << 20)
        self.irq = FakeIrq()
        self.synic = Synic(0, self.mem, self.irq, queue_depth=DEPTH)
        self.seq = 0
        self.accepted: list[list[int]] = [[] for _ in range(SINTS)]
        self.seen: list[list[int]] = [[] for _ in range(SINTS)]
        self.simp_gpa = PAGES[0]
        self.simp_on = False
        self.scontrol_on = False
        self.synic.write_msr(M.HV_X64_MSR_SIEFP, 0x30000 | 1)
        for s in range(SINTS):
            self.synic.write_msr(M.HV_X64_MSR_SINT0 + s, VEC + s)

    # --- guest view of the SIM page ------------------------------------------------------------------
    def _slot(self, sint: int) -> tuple[int, int, bytes]:
        raw = self.mem.read(self.simp_gpa + sint * 256, 24)
        t, size, flags, _, _ = struct.unpack_from("<IBBHQ", raw)
        return t, flags, raw[16 : 16 + size]

    def _consume(self, sint: int, eom: bool) -> None:
        if not self.simp_on:
            return
        t, flags, payload = self._slot(sint)
        if t == 0:
            return
        assert t == 1 and len(payload) == 8
        self.seen[sint].append(int.from_bytes(payload, "little"))
        # The guest protocol: copy, clear the type, then look at MessagePending.
        self.mem.write(self.simp_gpa + sint * 256, b"\0\0\0\0")
        flags = self.mem.read(self.simp_gpa + sint * 256 + 5, 1)[0]
        if eom and flags & MESSAGE_FLAG_PENDING:
            self.synic.write_msr(M.HV_X64_MSR_EOM, 0)

    # --- rules -------------------------------------------------------------------------------------------
    @rule(sint=sints, n=st.integers(1, 3))
    def post(self, sint: int, n: int) -> None:
        for _ in range(n):
            self.seq += 1
            queued_before = self.synic.queued(sint)
            status = self.synic.post_message(sint, 1, self.seq.to_bytes(8, "little"), origin=self.seq)
            if status == S.SUCCESS:
                self.accepted[sint].append(self.seq)
            elif status == S.INVALID_SYNIC_STATE:
                assert not (self.simp_on and self.scontrol_on)
            else:
                assert status == S.INSUFFICIENT_BUFFERS and queued_before == DEPTH

    @rule(sint=sints)
    def guest_handles_slot(self, sint: int) -> None:
        self._consume(sint, eom=True)

    @rule(sint=sints)
    def lazy_guest_clears_without_eom(self, sint: int) -> None:
        self._consume(sint, eom=False)

    @rule()
    def eom(self) -> None:
        self.synic.write_msr(M.HV_X64_MSR_EOM, 0)

    @rule(sint=sints)
    def eoi(self, sint: int) -> None:
        self.synic.eoi(VEC + sint)

    @rule()
    def rescan(self) -> None:
        self.synic.rescan()

    @rule(sint=sints, masked=st.booleans(), polling=st.booleans())
    def write_sint(self, sint: int, masked: bool, polling: bool) -> None:
        value = VEC + sint | (SINT_MASKED if masked else 0) | (SINT_POLLING if polling else 0)
        self.synic.write_msr(M.HV_X64_MSR_SINT0 + sint, value)

    @rule(on=st.booleans())
    def write_scontrol(self, on: bool) -> None:
        self.synic.write_msr(M.HV_X64_MSR_SCONTROL, 1 if on else 0)
        self.scontrol_on = on

    @rule(on=st.booleans())
    def write_simp(self, on: bool) -> None:
        if self.simp_on and not on:
            # A guest reads what was delivered before it turns the page off (the page is zeroed
            # when it comes back, inventory §7.4).
            for s in range(SINTS):
                self._consume(s, eom=False)
        self.synic.write_msr(M.HV_X64_MSR_SIMP, self.simp_gpa | (1 if on else 0))
        self.simp_on = on

    @precondition(lambda self: self.simp_on)
    @rule()
    def move_simp(self) -> None:
        self.simp_gpa = PAGES[1] if self.simp_gpa == PAGES[0] else PAGES[0]
        self.synic.write_msr(M.HV_X64_MSR_SIMP, self.simp_gpa | 1)

    # --- invariants ----------------------------------------------------------------------------------
    @invariant()
    def seen_is_prefix_of_accepted(self) -> None:
        for s in range(SINTS):
            assert self.seen[s] == self.accepted[s][: len(self.seen[s])]

    @invariant()
    def busy_slot_with_queue_has_message_pending(self) -> None:
        if not self.simp_on:
            return
        for s in range(SINTS):
            t, flags, _ = self._slot(s)
            if t and self.synic.queued(s):
                assert flags & MESSAGE_FLAG_PENDING

    def teardown(self) -> None:
        # Drain: everything enabled, the guest handles every slot until nothing is left.
        self.write_scontrol(True)
        self.write_simp(True)
        for _ in range(DEPTH + 2):
            for s in range(SINTS):
                self._consume(s, eom=True)
            self.synic.rescan()
        for s in range(SINTS):
            assert self.seen[s] == self.accepted[s], (s, self.seen[s], self.accepted[s])
        assert not self.synic.has_pending


SynicModel.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestSynicModel = SynicModel.TestCase
