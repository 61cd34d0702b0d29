"""A virtual processor's hypervisor state (vp-properties.md).

Per-VP state of later subsystems (SynIC, timers, VP assist page, APIC enlightenments) is attached
with `vp.add_state(name, obj)`: `obj.reset()` runs on partition reset. Per-VP synthetic MSR values
that need no behaviour live in `vp.msr_values` (managed by hv/msrs.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from hv1.hv.partition import Partition


class Resettable(Protocol):
    def reset(self) -> None: ...


class Vp:
    def __init__(self, partition: Partition, index: int, apic_id: int) -> None:
        self.partition = partition
        self.index = index  # HV_X64_MSR_VP_INDEX: unique, fixed for the VP's lifetime
        self.apic_id = apic_id
        self.msr_values: dict[int, int] = {}
        self.state: dict[str, Resettable] = {}
        # Set (by any thread) when the VP should leave a long hypercall early so that it can take an
        # interrupt; the dispatcher then yields a rep call between two elements.
        self.preempt_requested = False
        self._deferred: list[Callable[[], None]] = []

    def add_state(self, name: str, obj: Resettable) -> None:
        if name in self.state:
            raise ValueError(f"VP {self.index} already has state {name!r}")
        self.state[name] = obj

    def defer(self, action: Callable[[], None]) -> None:
        """Run `action` after the current MSR access or hypercall, outside the partition lock (for
        machine hooks that may block: reset, crash, yield)."""
        self._deferred.append(action)

    def run_deferred(self) -> None:
        while self._deferred:
            self._deferred.pop(0)()

    def reset(self) -> None:
        for obj in self.state.values():
            obj.reset()
        self.preempt_requested = False
        self._deferred.clear()

    def __repr__(self) -> str:
        return f"Vp(index={self.index}, apic_id={self.apic_id})"
