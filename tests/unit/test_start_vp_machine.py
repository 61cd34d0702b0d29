"""The machine's side of HvCallStartVirtualProcessor, on a fake vCPU (no KVM): loading the context
is all or nothing, a context KVM still refuses leaves the VP stopped (never an internal fault, issue
9 bug 4), and a VP that has run is not started again after an INIT, in either APIC mode
(hv/hypercalls/vp_calls.py "A VP that has run")."""

from __future__ import annotations

import collections
import errno
import threading
from types import SimpleNamespace
from typing import Any, cast

import pytest

from hv1.backends.base import ContextRejected
from hv1.backends.kvm import ioctls as k
from hv1.backends.kvm.cpustate import set_initial_context
from hv1.hv.hypercalls.vp_calls import InitialVpContext
from hv1.machine.machine import Vp
from hv1.trace import Tracer
from tests.unit.test_ipi_flush import LONG


class FakeVcpu:
    """The KvmVcpu calls the start paths make. `refuse` names the ioctl that fails with EINVAL."""

    def __init__(self, refuse: str = "") -> None:
        self.refuse = refuse
        self.sregs = k.kvm_sregs()
        self.sregs.cr0 = 0x60000010  # as INIT leaves it
        self.regs_set: list[k.kvm_regs] = []
        self.msrs: dict[int, int] = {}
        self.mp_states: list[int] = []
        self.stop_requested = False
        self.kicks = 0

    def get_sregs(self) -> k.kvm_sregs:
        return k.kvm_sregs.from_buffer_copy(self.sregs)

    def set_sregs(self, s: k.kvm_sregs) -> None:
        if self.refuse == "sregs" and s.cr3 == LONG.cr3:
            self.stop_requested = True  # lets a waiting user-mode VP thread end after the refusal
            raise OSError(errno.EINVAL, "Invalid argument")
        self.sregs = k.kvm_sregs.from_buffer_copy(s)

    def set_msr(self, index: int, value: int) -> None:
        if self.refuse == "msr":
            raise OSError(f"KVM_SET_MSRS rejected MSR {index:#x}")
        self.msrs[index] = value

    def set_regs(self, r: k.kvm_regs) -> None:
        self.regs_set.append(r)

    def set_mp_state(self, state: int) -> None:
        self.mp_states.append(state)

    def kick(self) -> None:
        self.kicks += 1

    # The backend-interface methods the machine calls, as KvmVcpu implements them (cpustate.py).
    def set_initial_context(self, ctx: InitialVpContext) -> None:
        set_initial_context(cast(Any, self), ctx)

    def set_real_mode_start(self, vector: int) -> None:
        from hv1.backends.kvm.cpustate import set_real_mode_start

        set_real_mode_start(cast(Any, self), vector)

    def make_runnable(self) -> None:
        self.set_mp_state(k.KVM_MP_STATE_RUNNABLE)


def fake_vp(vcpu: FakeVcpu, *, user_apic: bool, index: int = 1) -> Vp:
    """A machine.Vp with just the state the start paths touch."""
    vp = object.__new__(Vp)
    m = SimpleNamespace(
        tracer=Tracer(),
        start_lock=threading.Lock(),
        partition=SimpleNamespace(counters=collections.Counter()),
        debugger=None,  # Vp.post_work wakes a gdb stub's parked VPs when there is one
    )
    fields: dict[str, Any] = {
        "m": m, "index": index, "vp_index": index, "vcpu": vcpu, "started": False, "has_run": False,
        "sipi_vector": None, "start_ctx": None, "init_pending": False, "wake": threading.Event(),
        "_work": collections.deque(), "hv_vp": SimpleNamespace(preempt_requested=False),
        "apic": SimpleNamespace(init=lambda: None) if user_apic else None,
    }  # fmt: skip
    vp.__dict__.update(fields)
    return vp


CTX = LONG.normalized()


def test_context_load_is_all_or_nothing() -> None:
    vcpu = FakeVcpu(refuse="sregs")
    before = bytes(vcpu.sregs)
    with pytest.raises(ContextRejected):
        set_initial_context(cast(Any, vcpu), CTX)
    assert bytes(vcpu.sregs) == before and vcpu.regs_set == [] and vcpu.msrs == {}
    vcpu = FakeVcpu(refuse="msr")
    with pytest.raises(ContextRejected):
        set_initial_context(cast(Any, vcpu), CTX)
    assert bytes(vcpu.sregs) == before and vcpu.regs_set == []  # sregs put back
    vcpu = FakeVcpu()
    set_initial_context(cast(Any, vcpu), CTX)
    assert vcpu.sregs.cr3 == CTX.cr3 and vcpu.regs_set[0].rip == CTX.rip and vcpu.msrs[0x277] == CTX.pat


def test_kernel_mode_refused_context_leaves_the_vp_stopped() -> None:
    vcpu = FakeVcpu(refuse="sregs")
    vp = fake_vp(vcpu, user_apic=False)
    assert vp.try_start(CTX)
    vp.service_work()  # on the VP's thread: _start_in_kernel_mode
    assert not vp.started and not vp.has_run and vp.start_ctx is None
    assert vcpu.mp_states == []  # KVM keeps it UNINITIALIZED: waiting for INIT/SIPI
    assert vp.m.partition.counters["start_vp.load_rejected"] == 1
    # Still startable: a later, acceptable context starts it.
    vcpu.refuse = ""
    assert vp.try_start(CTX)
    vp.service_work()
    assert vp.started and vcpu.mp_states == [k.KVM_MP_STATE_RUNNABLE]


def test_user_mode_refused_context_leaves_the_vp_waiting() -> None:
    vcpu = FakeVcpu(refuse="sregs")
    vp = fake_vp(vcpu, user_apic=True)
    assert vp.try_start(CTX)
    vp._wait_for_sipi()  # loads, is refused, goes back to waiting; the fake then ends the run
    assert not vp.started and vp.start_ctx is None and vcpu.regs_set == []


@pytest.mark.parametrize("user_apic", [False, True])
def test_a_vp_that_has_run_is_not_started_again_after_init(user_apic: bool) -> None:
    vcpu = FakeVcpu()
    vp = fake_vp(vcpu, user_apic=user_apic)
    assert vp.try_start(CTX)
    if user_apic:
        vp._wait_for_sipi()
    else:
        vp.service_work()
    assert vp.started and vp.has_run
    if user_apic:
        vp.deliver_init()  # hv1's APIC delivers the INIT: the VP waits for SIPI again
    else:
        # KVM's in-kernel APIC takes the INIT itself: hv1 never hears of it.
        pass
    assert not vp.try_start(InitialVpContext())  # INVALID_VP_STATE in both modes
