"""A virtual processor's hypervisor state (vp-properties.md).

The per-VP state of the subsystems (SynIC, synthetic timers, the VP run-time counter, the VP assist
page) lives in one typed container, `vp.state` (a VpState), filled by the subsystems' attach
functions and reset with the VP. Per-VP synthetic MSR values that need no behaviour live in
`vp.msr_values` (managed by hv/msrs.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from hv1.hv.partition import Partition
    from hv1.hv.reftime import VpRuntime
    from hv1.hv.synic import Synic
    from hv1.hv.timers import VpTimers
    from hv1.hv.vp_assist import VpAssist


class Resettable(Protocol):
    def reset(self) -> None: ...


@dataclass
class VpState:
    """The Hv state one VP keeps for itself: what the guest sees through its per-VP synthetic MSRs
    (Scope.VP in hv/msrs.py) and per-VP overlay pages. Each field is set once by the subsystem that
    owns it, before the VP first runs, and is None only on a partition built without that subsystem
    (VP assist: hv/enlightenments.attach):

    - `synic`: hv/synic.attach_synic (SCONTROL, SIEFP, SIMP, SINTx; inter-partition-communication.md)
    - `timers`, `runtime`: hv/time_msrs.PartitionTime.attach_vp (STIMERx_CONFIG/COUNT, timers.md;
      HV_X64_MSR_VP_RUNTIME, vp-properties.md)
    - `assist`: hv/enlightenments.attach (HV_X64_MSR_VP_ASSIST_PAGE, virtual-interrupts.md)

    Virtual Trust Levels (vsm.md "Private State": "Each VTL has its own instance of private state
    including ... synthetic hypervisor registers", the hypercall page, guest OS ID, reference TSC and
    SynIC among them): every field here is VTL-private. A later issue that implements VTLs gives a
    Vp one VpState per enabled VTL (say `vp.vtl_states: list[VpState]`, indexed by HV_VTL, created by
    HvCallEnableVpVtl) with `vp.state` the one of the VP's active VTL, switched on VTL call/return;
    the accessors (synic_of, vp_assist_of, ...) then follow the active VTL without their callers
    changing. Shared state (vsm.md "Shared State") stays on the Vp itself.
    """

    synic: Synic | None = None
    timers: VpTimers | None = None
    runtime: VpRuntime | None = None
    assist: VpAssist | None = None

    def reset(self) -> None:
        """Partition reset: every attached subsystem's per-VP state back to its reset value (in the
        order above, the order in which they are attached)."""
        for obj in (self.synic, self.timers, self.runtime, self.assist):
            if obj is not None:
                obj.reset()


class Vp:
    def __init__(self, partition: Partition, index: int, apic_id: int) -> None:
        self.partition = partition
        self.index = index  # HV_X64_MSR_VP_INDEX: unique, fixed for the VP's lifetime
        self.apic_id = apic_id
        self.msr_values: dict[int, int] = {}
        self.state = VpState()
        # Set (by any thread) when the VP should leave a long hypercall early so that it can take an
        # interrupt; the dispatcher then yields a rep call between two elements.
        self.preempt_requested = False
        self._deferred: list[Callable[[], None]] = []

    def defer(self, action: Callable[[], None]) -> None:
        """Run `action` after the current MSR access or hypercall, outside the partition lock (for
        machine hooks that may block: reset, crash, yield)."""
        self._deferred.append(action)

    def run_deferred(self) -> None:
        while self._deferred:
            self._deferred.pop(0)()

    def reset(self) -> None:
        self.state.reset()
        self.preempt_requested = False
        self._deferred.clear()

    def __repr__(self) -> str:
        return f"Vp(index={self.index}, apic_id={self.apic_id})"


def missing_state(vp: Vp, what: str) -> KeyError:
    """The error an accessor raises for state its subsystem never attached (a wiring bug in hv1,
    never something a guest can cause: the MSRs and hypercalls that reach the state are registered
    by the same attach function)."""
    return KeyError(f"VP {vp.index} has no {what} (its subsystem is not attached)")
