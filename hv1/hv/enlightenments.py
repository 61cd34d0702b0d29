"""Virtual-processor and interrupt enlightenments, attached to a partition in one call.

What `attach(partition, apic_for=...)` adds (each module has the TLFS details):

| piece | module | gate |
|---|---|---|
| HV_X64_MSR_EOI / ICR / TPR | hv/apic_msrs.py | EAX[4] + feature `apic-msrs` (user APIC only) |
| HV_X64_MSR_VP_ASSIST_PAGE, EOI assist (lazy EOI) | hv/vp_assist.py | EAX[4] + feature `vp-assist` |
| HV_X64_MSR_GUEST_IDLE | here | EAX[10] AccessGuestIdleReg (feature `guest-idle`, user APIC only) |
| HvCallSendSyntheticClusterIpi(Ex) 0x000B / 0x0015 | hypercalls/ipi.py | always |
| HvCallFlushVirtualAddressSpace/List(Ex) 0x0002/3/13/14 | hypercalls/flush.py | always |
| HvCallStartVirtualProcessor 0x0099 | hypercalls/vp_calls.py | EBX[21] StartVirtualProcessor |

Processor sets and the VP index map: hv/vpset.py. VP indexes: everything here names VPs by their
HV_VP_INDEX (`hv.vp.Vp.index`), including the hooks below and `apic_for`.

What the machine must do (besides implementing EnlightenmentHooks):
- `attach(partition, apic_for=router.apic_for_vp)` once, before the VPs run (kernel APIC: no apic_for);
- EOI assist, on each VP's thread with `assist = vp_assist(partition, vp_index)`:
  `assist.after_exit()` right after every exit (before any handler can read the APIC) and at the start
  of the before-entry step; `assist.interrupt_injected(vec)` right after `apic.acknowledge(vec)`;
  `assist.apic_eoi(vector, level)` from the LocalApic's `ApicHooks.eoi`.

HV_X64_MSR_GUEST_IDLE (vp-properties.md "Virtual Processor Idle Sleep State"; inventory §3.3): a read
"may trigger entry into the virtual processor idle sleep state ... The virtual processor will be woken
when an interrupt arrives, regardless of whether the interrupt is enabled". The read returns 0 (the
value is not specified) once `hooks.guest_idle(vp_index)` returns; that hook blocks, so it runs
deferred, outside the partition lock. WRMSR -> #GP (read-only). With the in-kernel APIC the machine
cannot wait for a masked interrupt, so `guest-idle` is offered in user APIC mode only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol, cast

from hv1.hv.apic_msrs import register_apic_msrs
from hv1.hv.caps import Gate
from hv1.hv.hypercalls import flush, ipi, vp_calls
from hv1.hv.hypercalls.vp_calls import InitialVpContext, SegmentRegister, TableRegister
from hv1.hv.msrs import Scope
from hv1.hv.vp_assist import VpAssist, register_vp_assist_msr, vp_assist_of
from hv1.tlfs import msrs as M
from hv1.tlfs.partition import PartitionPrivilege

if TYPE_CHECKING:
    from hv1.hv.apic import LocalApic
    from hv1.hv.hypercalls.table import HypercallDef
    from hv1.hv.partition import Partition
    from hv1.hv.vp import Vp

__all__ = [
    "ENLIGHTENMENT_HYPERCALLS",
    "EnlightenmentHooks",
    "InitialVpContext",
    "SegmentRegister",
    "TableRegister",
    "VpAssist",
    "attach",
    "vp_assist",
]


class EnlightenmentHooks(Protocol):
    """What these enlightenments ask of the machine (the object passed to Partition as `hooks`)."""

    def flush_tlb(self, src_vp: int, targets: Iterable[int]) -> None:
        """Flush the guest TLB of every target VP (whole TLB, global entries too) and return only when
        all are flushed: running targets are kicked and flush before their next entry; `src_vp`, if a
        target, flushes itself. Blocks; called on `src_vp`'s thread without the partition lock.

        Bench (issue 5 row "flush hypercall cost vs number of targets"): time this call for 1, 3 and
        N-1 targets against the guest's native shootdown (IPI + INVLPG in the handler + EOI); the
        `flush` trace `us` field is exactly this time. Advertise `remote-flush` / `ex-processor-masks`
        (and `cluster-ipi`, against x2APIC ICR writes to N = 1, 3 targets) only in the APIC modes where
        the hypercall wins: with the in-kernel APIC native IPIs never leave the kernel."""
        ...

    def guest_idle(self, vp_index: int) -> None:
        """HV_X64_MSR_GUEST_IDLE was read: sleep until an interrupt is pending in the VP's APIC, even
        with RFLAGS.IF = 0 (or an INIT, or the end of the run); keep servicing posted work (flushes)
        meanwhile. Blocks; called on that VP's thread without the partition lock."""
        ...

    def start_vp(self, vp_index: int, ctx: InitialVpContext) -> bool:
        """HvCallStartVirtualProcessor: if VP `vp_index` has not run since the partition was created
        or reset (an INIT does not make it startable again: hv/hypercalls/vp_calls.py "A VP that has
        run"), make it start at `ctx` (already validated against the guest's CPUID and `normalized()`:
        protected or long mode) and return True; otherwise return False (-> HV_STATUS_INVALID_VP_STATE).
        Must be atomic with respect to INIT/SIPI and other starts, and must not block: it is called
        under the partition lock on the caller's thread. The registers are loaded by the target's own
        thread; if the backend refuses them there, the VP stays stopped."""
        ...


GUEST_IDLE_GATE = Gate(privileges=int(PartitionPrivilege.AccessGuestIdleReg))

ENLIGHTENMENT_HYPERCALLS: tuple[HypercallDef, ...] = ipi.DEFS + flush.DEFS + vp_calls.DEFS
"""Every hypercall of these enlightenments (for `hv1 info --hypercalls`: add to CORE_HYPERCALLS)."""


def _read_guest_idle(vp: Vp) -> int:
    p = vp.partition
    hooks = cast("EnlightenmentHooks", p.hooks)
    index = vp.index
    tracer = p.tracer
    p.counters["guest_idle"] += 1

    def idle() -> None:
        t0 = time.perf_counter_ns()
        hooks.guest_idle(index)
        if tracer.wants("vp"):
            tracer.emit("vp", index, "guest-idle", us=(time.perf_counter_ns() - t0) // 1000)

    vp.defer(idle)
    return 0


def register_guest_idle_msr(partition: Partition) -> None:
    partition.msrs.register(
        M.HV_X64_MSR_GUEST_IDLE,
        "HV_X64_MSR_GUEST_IDLE",
        GUEST_IDLE_GATE,
        read=_read_guest_idle,
        write=None,
        scope=Scope.VP,
    )


def attach(
    partition: Partition,
    apic_for: Callable[[int], LocalApic | None] | None = None,
    *,
    lazy_eoi: bool = True,
) -> None:
    """Register the MSRs and hypercalls above and give every VP its VpAssist. Call once, after the
    partition and the APIC models exist and before the VPs run. `apic_for(vp_index)`: the VP's
    LocalApic in user APIC mode (None, or a function returning None: kernel APIC mode: the APIC MSRs
    #GP and the EOI assist bit is never set). `lazy_eoi`: set NoEoiRequired at all (benchmarks).
    `partition.hooks` must implement EnlightenmentHooks. Hypercalls already in the table (e.g. added to
    CORE_HYPERCALLS) are left alone."""
    lookup: Callable[[int], LocalApic | None] = apic_for if apic_for is not None else (lambda _i: None)
    for vp in partition.vps:
        if vp.state.assist is not None:
            raise ValueError(f"VP {vp.index} already has a VP assist page")
        vp.state.assist = VpAssist(
            vp.index,
            partition.new_overlay(),
            partition.lock,
            apic=lookup(vp.index),
            lazy_eoi=lazy_eoi,
            counters=partition.counters,
            tracer=partition.tracer,
        )
    register_apic_msrs(partition.msrs, lookup)
    register_vp_assist_msr(partition.msrs)
    register_guest_idle_msr(partition)
    for d in ENLIGHTENMENT_HYPERCALLS:
        if partition.hypercalls.get(d.code) is None:
            partition.hypercalls.register(d)


def vp_assist(partition: Partition, vp_index: int) -> VpAssist:
    """The VpAssist of VP `vp_index` (for the run loop: `after_exit`, `interrupt_injected`, `apic_eoi`)."""
    vp = partition.vp(vp_index)
    if vp is None:
        raise KeyError(f"no VP with index {vp_index}")
    return vp_assist_of(vp)
