"""The synthetic MSR table: index -> (name, gate, read, write, reset value, scope).

Rules (PDF §8.10 pseudo-code, inventory §3.1): an MSR is emulated only if it is implemented *and*
the capabilities grant its gate; otherwise RDMSR/WRMSR raise #GP. So:
- an index in the synthetic ranges (0x40000000-0x400001FF, 0x40001000-0x400010FF) that nobody
  registered -> #GP;
- gate not granted by `Caps` -> #GP, for reads and writes;
- RDMSR of a write-only MSR, WRMSR of a read-only MSR -> #GP;
- reserved bits: RsvdP bits are stored and read back; RsvdZ/Reserved bits are ignored, except where
  an MSR's write function says otherwise (the TLFS defines no fault for them: inventory §7.7).

How to add MSRs (SynIC, timers, APIC MSRs, ...): call `partition.msrs.register(...)` once when the
subsystem is attached to the partition:

    table.register(0x40000080, "HV_X64_MSR_SCONTROL", privilege_gate(P.AccessSynicRegs),
                   read=my_read, write=my_write, reset=0, scope=Scope.VP)

`read(vp) -> int` and `write(vp, value)` run under the partition lock and may raise
`GuestException` (use `hv1.hv.interfaces.gp()`). Pass `read=STORED` / `write=STORED` (the defaults)
for plain storage of the value (partition-wide or per VP, initialised to `reset` and restored on
partition reset), `read=None` for a write-only MSR, `write=None` for a read-only one. Custom
functions can use the storage with `table.stored(vp, index)` / `table.store(vp, index, value)`.
MSRs outside the synthetic ranges (x2APIC registers in user APIC mode) can be registered too; the
backend asks `Partition.owns_msr()` which MSR exits to send here.

The MSRs of this module (the Requirements-doc set plus reset and crash):

| MSR | gate | access | reserved bits |
|---|---|---|---|
| GUEST_OS_ID 0x40000000 | EAX5 | RW, P | none: every value is an identity (0 disables the hypercall page) |
| HYPERCALL 0x40000001 | EAX5 | RW, P | 11:2 RsvdP stored; bit 1 Locked only with EDX18 (else ignored) |
| VP_INDEX 0x40000002 | EAX6 | R, V | write -> #GP |
| RESET 0x40000003 | EAX7 | RW, P | bit 0 = reset, 63:1 ignored; reads 0 |
| CRASH_P0..P4 0x40000100-4 | EDX10 | RW, P | plain storage (inventory §7.26: partition-wide) |
| CRASH_CTL 0x40000105 | EDX10 | RW, P | reads the supported actions; 57:0 Reserved ignored |
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from hv1.hv.caps import Gate, edx_gate, privilege_gate
from hv1.hv.interfaces import gp
from hv1.tlfs import msrs as M
from hv1.tlfs.feature_discovery import FeaturesEdx
from hv1.tlfs.partition import CRASH_MESSAGE_MAX, CrashCtl, PartitionPrivilege

if TYPE_CHECKING:
    from hv1.hv.partition import Partition
    from hv1.hv.vp import Vp

MASK64 = (1 << 64) - 1

MsrRead = Callable[["Vp"], int]
MsrWrite = Callable[["Vp", int], None]


class Scope(enum.Enum):
    PARTITION = "P"  # one value for all VPs
    VP = "V"  # one value per VP


class _Stored(enum.Enum):
    STORED = "stored"


STORED: Final = _Stored.STORED
"""Read/write function placeholder: plain storage of the value."""


@dataclass(frozen=True)
class MsrDef:
    index: int
    name: str
    gate: Gate
    read: MsrRead | _Stored | None
    write: MsrWrite | _Stored | None
    reset: int
    scope: Scope

    @property
    def access(self) -> str:
        return ("R" if self.read is not None else "") + ("W" if self.write is not None else "")


def is_synthetic(index: int) -> bool:
    return any(lo <= index < hi for lo, hi in M.SYNTHETIC_MSR_RANGES)


class MsrTable:
    def __init__(self, partition: Partition) -> None:
        self.partition = partition
        self.defs: dict[int, MsrDef] = {}
        self.values: dict[int, int] = {}  # partition-scope storage

    def register(
        self,
        index: int,
        name: str,
        gate: Gate,
        read: MsrRead | _Stored | None = STORED,
        write: MsrWrite | _Stored | None = STORED,
        reset: int = 0,
        scope: Scope = Scope.PARTITION,
    ) -> None:
        if index in self.defs:
            raise ValueError(f"MSR {index:#x} ({self.defs[index].name}) is already registered")
        self.defs[index] = MsrDef(index, name, gate, read, write, reset & MASK64, scope)
        if scope is Scope.PARTITION:
            self.values[index] = reset & MASK64
        else:
            for vp in self.partition.vps:
                vp.msr_values[index] = reset & MASK64

    def owns(self, index: int) -> bool:
        return index in self.defs or is_synthetic(index)

    def name(self, index: int) -> str:
        d = self.defs.get(index)
        return d.name if d is not None else M.msr_name(index)

    # --- storage -------------------------------------------------------------------------------------
    def stored(self, vp: Vp, index: int) -> int:
        if self.defs[index].scope is Scope.PARTITION:
            return self.values[index]
        return vp.msr_values[index]

    def store(self, vp: Vp, index: int, value: int) -> None:
        if self.defs[index].scope is Scope.PARTITION:
            self.values[index] = value & MASK64
        else:
            vp.msr_values[index] = value & MASK64

    # --- access ----------------------------------------------------------------------------------------
    def _lookup(self, index: int) -> MsrDef:
        d = self.defs.get(index)
        if d is None or not d.gate.allows(self.partition.caps):
            raise gp()
        return d

    def read(self, vp: Vp, index: int) -> int:
        d = self._lookup(index)
        inj = self.partition.inject
        if inj is not None and inj.msr_gp(vp.index, index, write=False):
            raise gp()  # fault injection (hv/inject.py)
        if d.read is None:
            raise gp()
        if d.read is STORED:
            return self.stored(vp, index)
        return d.read(vp) & MASK64

    def write(self, vp: Vp, index: int, value: int) -> None:
        d = self._lookup(index)
        inj = self.partition.inject
        if inj is not None and inj.msr_gp(vp.index, index, write=True):
            raise gp()  # fault injection (hv/inject.py)
        if d.write is None:
            raise gp()
        if d.write is STORED:
            self.store(vp, index, value)
        else:
            d.write(vp, value & MASK64)

    def reset(self) -> None:
        for d in self.defs.values():
            if d.scope is Scope.PARTITION:
                self.values[d.index] = d.reset
            else:
                for vp in self.partition.vps:
                    vp.msr_values[d.index] = d.reset

    def format_table(self) -> str:
        lines = [f"{'MSR':<12} {'name':<40} {'gate':<36} {'acc':<3} {'scope':<5} reset"]
        for d in sorted(self.defs.values(), key=lambda d: d.index):
            gate = d.gate.describe()
            lines.append(
                f"{d.index:#012x} {d.name:<40} {gate:<36} {d.access:<3} {d.scope.value:<5} {d.reset:#x}"
            )
        return "\n".join(lines)


# --- the core MSRs ---------------------------------------------------------------------------------

# Read value of CRASH_CTL: the actions hv1 supports (HV_CRASH_CTL_REG_CONTENTS, "Determining Guest
# Crash Capabilities").
CRASH_CTL_CAPABILITIES = int(CrashCtl.CrashNotify | CrashCtl.CrashMessage)


def _write_guest_os_id(vp: Vp, value: int) -> None:
    # Where the page is shown afterwards is told to the machine by Partition.wrmsr (any MSR that
    # maps an overlay can hide or uncover it).
    p = vp.partition
    p.msrs.store(vp, M.HV_X64_MSR_GUEST_OS_ID, value)
    if value == 0:
        p.hypercall_page.guest_os_id_cleared()


def _read_hypercall(vp: Vp) -> int:
    return vp.partition.hypercall_page.value


def _write_hypercall(vp: Vp, value: int) -> None:
    p = vp.partition
    p.hypercall_page.write_msr(
        value,
        guest_os_id=p.guest_os_id,
        lock_available=p.caps.has_feature(FeaturesEdx.HypercallMsrLockAvailable),
    )


def _read_vp_index(vp: Vp) -> int:
    return vp.index


def _read_zero(vp: Vp) -> int:
    return 0


def _write_reset(vp: Vp, value: int) -> None:
    # Writing 1 (bit 0) requests a reset of the partition (App. C; KVM: data == 1). The machine does
    # the platform reset and calls Partition.reset() for the Hv state.
    if value & 1:
        p = vp.partition
        p.counters["reset_requests"] += 1
        vp.defer(p.hooks.request_reset)


def _read_crash_ctl(vp: Vp) -> int:
    return CRASH_CTL_CAPABILITIES


def _write_crash_ctl(vp: Vp, value: int) -> None:
    if not value & CrashCtl.CrashNotify:
        return
    p = vp.partition
    params = tuple(p.msrs.stored(vp, M.HV_X64_MSR_CRASH_P0 + i) for i in range(5))
    message: bytes | None = None
    if value & CrashCtl.CrashMessage:
        # P3 = GPA of the message, P4 = its length in bytes (at most 4096): read it bounds-checked.
        gpa, length = params[3], min(params[4], CRASH_MESSAGE_MAX)
        if p.memory.contains(gpa, length):
            message = p.memory.read(gpa, length)
    p.counters["guest_crashes"] += 1
    vp.defer(lambda: p.hooks.guest_crash(vp.index, params, message))


def register_core_msrs(table: MsrTable) -> None:
    hc = privilege_gate(PartitionPrivilege.AccessHypercallMsrs)
    table.register(M.HV_X64_MSR_GUEST_OS_ID, "HV_X64_MSR_GUEST_OS_ID", hc, write=_write_guest_os_id)
    table.register(
        M.HV_X64_MSR_HYPERCALL, "HV_X64_MSR_HYPERCALL", hc, read=_read_hypercall, write=_write_hypercall
    )
    table.register(
        M.HV_X64_MSR_VP_INDEX,
        "HV_X64_MSR_VP_INDEX",
        privilege_gate(PartitionPrivilege.AccessVpIndex),
        read=_read_vp_index,
        write=None,
        scope=Scope.VP,
    )
    table.register(
        M.HV_X64_MSR_RESET,
        "HV_X64_MSR_RESET",
        privilege_gate(PartitionPrivilege.AccessResetReg),
        read=_read_zero,
        write=_write_reset,
    )
    crash = edx_gate(FeaturesEdx.GuestCrashRegsAvailable)
    for i in range(5):
        table.register(M.HV_X64_MSR_CRASH_P0 + i, f"HV_X64_MSR_CRASH_P{i}", crash)
    table.register(
        M.HV_X64_MSR_CRASH_CTL, "HV_X64_MSR_CRASH_CTL", crash, read=_read_crash_ctl, write=_write_crash_ctl
    )
