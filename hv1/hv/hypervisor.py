"""The hypervisor proper: partitions by HV_PARTITION_ID, their parent/child tree, privileges, the
lifecycle of TLFS virtualization-host.md, memory pools (deposits) and GPA maps.

One `Hypervisor` per hv1 process. It starts with the root partition (ID 1), whose GPA space is the
machine's RAM, and lets a partition with the CreatePartitions privilege create children, configure
them, give them memory (DepositMemory for the hypervisor's own use, MapGpaPages for guest RAM),
create their VPs and tear them down. Every method is named after its hypercall in snake_case, takes
the input fields (TLFS names in snake_case) after `caller` (the calling partition's ID) and returns
the output fields; a failure raises `HvError` with the HV_STATUS, and a rep call that fails part way
carries how many elements it completed (`HvError.reps_done`), as the hypercall result does.

Answers to what the pages leave open (each an hv1 choice, listed in docs/partitions.md):

- A call on a partition that does not exist: INVALID_PARTITION_ID; on one that exists but is not
  the caller's child (or itself, where SELF is allowed): ACCESS_DENIED (tlfs-inventory.md §4.9,
  "not parent / not self").
- Initialized becomes Active when the first VP of the partition leaves ExplicitSuspend; from then on
  early properties are locked, as they are from InitializePartition on.
- FinalizePartition deletes the VPs and unmaps every GPA page (the parent's pages are its own
  again); DeletePartition requires Finalized and no live children, and returns whatever is still
  deposited to its depositors, so nothing leaks.
- A deposited page leaves its depositor's GPA map (virtualization-host.md: "When a page is
  deposited, the Virtualization Host loses access to it"); a page mapped into a child cannot be
  deposited (OBJECT_IN_USE) and a deposited page cannot be mapped (it is no longer the caller's).
- Pool costs (POOL_COSTS) are hv1's: its structures are Python objects, but a host must deposit
  before it initializes a partition, creates a VP or maps GPA pages, and gets INSUFFICIENT_MEMORY
  otherwise, exactly the path Linux's mshv_root exercises (deposit and retry).

Lock order (docs/partitions.md "Locks"): partition locks (`hv1.hv.partition.Partition.lock`) in
ascending partition ID, then `Hypervisor.lock`, which is innermost: a hypercall handler holds its
partition's lock when it calls in, and the engine never waits for a partition lock while it holds its
own (deliveries into another partition and the assert-interrupt hook run after it is released).
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from hv1.hv.cpuid import CpuidProvider, default_vp_cpuid
from hv1.hv.gpa_map import GpaMap, GpaMapping, rights_valid, special_backing
from hv1.hv.gpa_memory import PartitionMemory
from hv1.hv.intercept_results import (
    CpuidResult,
    CpuidResultParameters,
    CpuidUnregisterParameters,
    InterceptResults,
    MsrResultParameters,
    MsrUnregisterParameters,
)
from hv1.hv.intercepts import InterceptError, InterceptTable
from hv1.hv.interfaces import GuestMemory
from hv1.hv.port_registry import PortRegistry, RegistryConnection, RegistryPort, RemoteEnd
from hv1.hv.ports import HV_PORT_ID_MASK, PartitionPorts, PortType
from hv1.hv.stats_pages import Counters, StatsMapping, StatsObject
from hv1.hv.stats_pages import render as render_stats
from hv1.hv.translate import PagingState, flags_error, translate_gva
from hv1.hv.virtual_interrupt import AssertedInterrupt, AssertError
from hv1.hv.virtual_interrupt import validate as validate_interrupt
from hv1.hv.vp_registers import RegisterError, VpRegisterFile
from hv1.hv.vp_state_page import VpStatePageMapping, load_dirty, write_message_page, write_register_page
from hv1.tlfs.intercepts import InterceptAccess, InterceptType
from hv1.tlfs.messages import HV_MESSAGE_PAYLOAD_SIZE, HV_MESSAGE_TYPE_HYPERVISOR_MASK
from hv1.tlfs.partition import (
    HV_PARTITION_ID_INVALID,
    HV_PARTITION_ID_SELF,
    PartitionPrivilege,
    PartitionPropertyCode,
)
from hv1.tlfs.registers import HvRegisterName
from hv1.tlfs.stats import HypervisorCounter, PartitionCounter, StatsAreaType, StatsObjectType
from hv1.tlfs.status import HvStatus
from hv1.tlfs.synic import HV_EVENT_FLAGS_COUNT, SINT_COUNT
from hv1.tlfs.virtualization_host import (
    GET_VP_CPUID_VALUES_FLAGS_DEFINED,
    IO_ACCESS_SIZES,
    LARGE_PAGE_PAGES,
    MAP_GPA_FLAGS_DEFINED,
    MAP_GPA_PERMISSIONS,
    MAP_VP_STATE_PAGE_LOCATION_PROVIDED,
    PAGE_SHIFT,
    PARTITION_CREATION_FLAGS_DEFINED,
    UNMAP_GPA_FLAGS_DEFINED,
    GetVpCpuidValuesFlags,
    MapGpaFlags,
    PartitionState,
    UnimplementedMsrAction,
    UnmapGpaFlags,
    VpStatePageType,
)
from hv1.tlfs.vp import HV_ANY_VP, HV_VP_INDEX_SELF
from hv1.trace import NULL_TRACER, Tracer

ROOT_PARTITION_ID = 1
ROOT_RAM_FLAGS = int(
    MapGpaFlags.READABLE | MapGpaFlags.WRITABLE | MapGpaFlags.KERNEL_EXECUTABLE | MapGpaFlags.USER_EXECUTABLE
)
MAX_PARTITION_DEPTH = 2  # root (0) -> child (1) -> grandchild (2); deeper is PARTITION_TOO_DEEP
MAX_VPS_PER_PARTITION = 64  # the machine's --cpus limit
ASSERTED_INTERRUPTS_KEPT = 256  # per partition, when no running layer takes them (assert_virtual_interrupt)

# Pool pages each object costs the partition it belongs to (hv1's accounting, see module doc).
POOL_COSTS = {
    "initialize": 16,  # partition-wide structures, charged by InitializePartition
    "vp": 4,  # per VP, charged by CreateVp
    "gpa_table": 1,  # per 512-page group of the GPA map in use, charged by the map calls
}

# HV_STATS_OBJECT_IDENTITY as the engine takes it: (PartitionId or ReservedZ0, VpIndex or ReservedZ1,
# ReservedZ2, ReservedZ3, StatsAreaType).
StatsIdentity = tuple[int, int, int, int, int]

# The synthetic-MSR privileges an ordinary guest has (the Requirements doc set plus the common
# enlightenments).
GUEST_PRIVILEGES = int(
    PartitionPrivilege.AccessHypercallMsrs
    | PartitionPrivilege.AccessVpIndex
    | PartitionPrivilege.AccessPartitionReferenceCounter
    | PartitionPrivilege.AccessPartitionReferenceTsc
    | PartitionPrivilege.AccessSynicRegs
    | PartitionPrivilege.AccessSyntheticTimerRegs
    | PartitionPrivilege.AccessIntrCtrlRegs
    | PartitionPrivilege.AccessFrequencyRegs
)
# What the root partition may do: everything a virtualization host needs (virtualization-host.md,
# "Capability & Privilege Discovery"), and the guest bits.
ROOT_PRIVILEGES = GUEST_PRIVILEGES | int(
    PartitionPrivilege.CreatePartitions
    | PartitionPrivilege.AccessPartitionId
    | PartitionPrivilege.AccessMemoryPool
    | PartitionPrivilege.PostMessages
    | PartitionPrivilege.SignalEvents
    | PartitionPrivilege.CreatePort
    | PartitionPrivilege.ConnectPort
    | PartitionPrivilege.AccessStats
    | PartitionPrivilege.AccessVpRegisters
    | PartitionPrivilege.StartVirtualProcessor
)
# A new child starts with an ordinary guest's privileges and messaging, clipped to its parent's; the
# parent may change them while it is Created.
DEFAULT_CHILD_PRIVILEGES = GUEST_PRIVILEGES | int(
    PartitionPrivilege.PostMessages | PartitionPrivilege.SignalEvents
)


class PartitionRuntime(Protocol):
    """What runs the partitions (hv1/machine/child.py): the engine tells it when a VP must start or
    stop running and when a partition's memory or existence changes. vp_resumed, vp_suspended and
    vp_deleted are called under `Hypervisor.lock` and must not block; memory_changed and
    partition_stopping are called after the lock is released, before the engine call returns, and
    may park or stop the partition's VPs."""

    def vp_resumed(self, partition_id: int, vp_index: int) -> None: ...
    def vp_suspended(self, partition_id: int, vp_index: int) -> None: ...
    def vp_deleted(self, partition_id: int, vp_index: int) -> None: ...
    def memory_changed(self, partition_id: int) -> None: ...
    def partition_stopping(self, partition_id: int) -> None: ...


class HvError(Exception):
    """A hypercall's failure: `status` is the HV_STATUS; `reps_done` the elements a rep call
    completed before the failing one."""

    def __init__(self, status: HvStatus, detail: str = "", reps_done: int = 0) -> None:
        super().__init__(f"{status.name}" + (f": {detail}" if detail else ""))
        self.status = status
        self.detail = detail
        self.reps_done = reps_done


@dataclass(frozen=True)
class PropertyDef:
    """A partition property hv1 implements: its default, whether it can be set at all, whether only
    before InitializePartition (an "early" property), and its legal range."""

    default: int
    writable: bool = True
    early: bool = False
    low: int = 0
    high: int = (1 << 64) - 1


# HV_PARTITION_PROPERTY_CODE values hv1 implements (tlfs-inventory.md §6.1 for ranges). Others are
# UNKNOWN_PROPERTY. PrivilegeFlags is special-cased (a subset of the parent's).
PROPERTIES: dict[int, PropertyDef] = {
    PartitionPropertyCode.PrivilegeFlags: PropertyDef(0, early=True),
    PartitionPropertyCode.SyntheticProcFeatures: PropertyDef(0, early=True),
    PartitionPropertyCode.Suspend: PropertyDef(0, high=1),
    PartitionPropertyCode.CpuReserve: PropertyDef(0, high=0x10000),
    PartitionPropertyCode.CpuCap: PropertyDef(0x10000, high=0x10000),
    PartitionPropertyCode.CpuWeight: PropertyDef(100, low=1, high=10000),
    PartitionPropertyCode.CpuGroupId: PropertyDef(0),
    PartitionPropertyCode.TimeFreeze: PropertyDef(0, high=1),
    PartitionPropertyCode.ProcessorsPerSocket: PropertyDef(0, early=True, high=MAX_VPS_PER_PARTITION),
    PartitionPropertyCode.CompatibilityVersion: PropertyDef(0, writable=False),
    PartitionPropertyCode.PhysicalAddressWidth: PropertyDef(0, early=True, high=52),
    PartitionPropertyCode.ImplementedPhysicalAddressBits: PropertyDef(0, writable=False),
}
PROPERTY_GUEST_OS_ID = 0x00070000  # GuestOsId: read-only, what the child wrote to GUEST_OS_ID


@dataclass
class VpRecord:
    """A VP created by HvCallCreateVp: it starts in ExplicitSuspend (virtualization-host.md,
    "Start VP0 by clearing the HvRegisterExplicitSuspend VP register")."""

    index: int
    explicit_suspend: bool = True
    intercept_suspend: bool = False
    registers: VpRegisterFile = field(default_factory=VpRegisterFile)
    # The runtime holds the VP's state in a backend vCPU (set by hv1/machine/child.py): `registers` is
    # stale until the runtime has stopped the VP and saved its state back, which it does as soon as
    # a suspension reason is set.
    running: bool = False
    # The message of the intercept that suspended the VP, if one did: (message type, payload).
    intercept: tuple[int, bytes] | None = None

    @property
    def stopped(self) -> bool:
        """Suspended and its state saved: registers may be read and written."""
        return self.suspended and not self.running

    @property
    def suspended(self) -> bool:
        """PDF §7.4: "Both suspension reasons must be cleared before a virtual processor becomes
        active"."""
        return self.explicit_suspend or self.intercept_suspend


@dataclass
class Deposit:
    """A page in a partition's memory pool: who deposited it, its page number in the depositor's GPA
    space, and the mapping it had there (restored on withdrawal)."""

    depositor: int
    page: int
    mapping: GpaMapping


@dataclass
class PartitionRecord:
    """The hypervisor's view of one partition."""

    id: int
    parent: int | None
    depth: int
    state: PartitionState
    privileges: int
    creation_flags: int = 0
    compatibility_version: int = 0
    properties: dict[int, int] = field(default_factory=dict)
    gpa: GpaMap = field(default_factory=GpaMap)
    pool: list[Deposit] = field(default_factory=list)
    initialized: bool = False  # InitializePartition's structures exist (charged to the pool)
    vps: dict[int, VpRecord] = field(default_factory=dict)
    children: list[int] = field(default_factory=list)
    guest_os_id: int = 0
    intercepts: InterceptTable = field(default_factory=InterceptTable)

    @property
    def pages_in_use(self) -> int:
        """Pool pages hv1's structures for this partition take (POOL_COSTS): derived from what
        exists, so nothing can drift out of step. The root's come with the hypervisor."""
        if self.parent is None:
            return 0
        return (
            (POOL_COSTS["initialize"] if self.initialized else 0)
            + POOL_COSTS["vp"] * len(self.vps)
            + POOL_COSTS["gpa_table"] * self.gpa.tables_in_use
        )

    @property
    def pages_available(self) -> int:
        return len(self.pool) - self.pages_in_use


class Hypervisor:
    """Partitions and what connects them. Thread-safe: every method takes `lock`."""

    def __init__(
        self,
        root_pages: int,
        root_privileges: int = ROOT_PRIVILEGES,
        ram: GuestMemory | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.lock = threading.RLock()
        # `--trace partitions`: what the engine did, one event per successful state change
        # (lifecycle, pool, GPA map, intercepts, VPs); the hypercall trace has the failures.
        self.tracer = tracer if tracer is not None else NULL_TRACER
        # The root's RAM (the backing of every GPA map); needed by the calls that touch guest memory.
        self.ram = ram
        # Called (under `lock`: it must not block) when a VP's last suspension reason is cleared, with
        # (partition id, VP index): the machine starts or resumes running it.
        self.on_vp_resumed: Callable[[int, int], None] | None = None
        # What runs the partitions' VPs (hv1/machine/child.py), if anything does.
        self.runtime: PartitionRuntime | None = None
        self._tls = threading.local()  # runtime calls queued until the engine lock is released
        self._next_id = ROOT_PARTITION_ID
        self._partitions: dict[int, PartitionRecord] = {}
        self._refs: dict[int, int] = {}  # backing page -> mappings in children that use it
        root = self._new(None, 0, root_privileges, PartitionState.ACTIVE)
        for page in range(root_pages):
            root.gpa.map(page, GpaMapping(page, ROOT_RAM_FLAGS))
        self.root_id = root.id
        self._init_root_calls()

    # ---- inspection (for tests, tracing and the machine) ----------------------------------------
    def partition(self, partition_id: int) -> PartitionRecord:
        with self.lock:
            p = self._partitions.get(partition_id)
            if p is None:
                raise HvError(HvStatus.INVALID_PARTITION_ID, f"no partition {partition_id:#x}")
            return p

    def peek(self, partition_id: int) -> PartitionRecord | None:
        """The record without taking `lock`: for the runtime's VP threads, which must never wait
        for the lock where the engine may hold it while it waits for them (a dict read is atomic;
        what the record says may change right after, as for any running VP)."""
        return self._partitions.get(partition_id)

    def partition_ids(self) -> list[int]:
        with self.lock:
            return sorted(self._partitions)

    def backing_refs(self, backing: int) -> int:
        with self.lock:
            return self._refs.get(backing, 0)

    def _trace(self, event: str, partition: int, **fields: int | str) -> None:
        """A `partitions` trace event of the engine (host track: the caller may be any VP)."""
        self.tracer.emit("partitions", -1, event, partition=partition, **fields)

    # ---- lifecycle -------------------------------------------------------------------------------
    def create_partition(
        self,
        caller: int,
        flags: int = 0,
        proximity_domain_info: int = 0,
        compatibility_version: int = 0,
        disabled_processor_features: bytes = bytes(16),
        disabled_processor_xsave_features: int = 0,
        reserved_z0: int = 0,
    ) -> int:
        """HvCallCreatePartition (0x0040) -> NewPartitionId."""
        with self.lock:
            parent = self._caller(caller)
            self._need(parent, PartitionPrivilege.CreatePartitions)
            if flags & ~PARTITION_CREATION_FLAGS_DEFINED:
                raise HvError(HvStatus.INVALID_PARAMETER, f"undefined creation flags {flags:#x}")
            if reserved_z0:
                raise HvError(HvStatus.INVALID_PARAMETER, "ReservedZ0 must be 0")
            if len(disabled_processor_features) != 16:
                raise HvError(HvStatus.INVALID_PARAMETER, "DisabledProcessorFeatures is 16 bytes")
            if parent.depth + 1 > MAX_PARTITION_DEPTH:
                raise HvError(HvStatus.PARTITION_TOO_DEEP)
            child = self._new(
                parent.id,
                parent.depth + 1,
                DEFAULT_CHILD_PRIVILEGES & parent.privileges,
                PartitionState.CREATED,
            )
            child.creation_flags = flags
            child.compatibility_version = compatibility_version
            parent.children.append(child.id)
            self._trace("partition-create", child.id, parent=parent.id, flags=flags)
            return child.id

    def initialize_partition(self, caller: int, partition_id: int) -> None:
        """HvCallInitializePartition (0x0041): Created -> Initialized."""
        with self.lock:
            p = self._child(caller, partition_id)
            self._state(p, PartitionState.CREATED)
            self._charge(p, POOL_COSTS["initialize"])
            p.initialized = True
            p.state = PartitionState.INITIALIZED
            self._trace("partition-initialize", p.id, pool=len(p.pool))

    def finalize_partition(self, caller: int, partition_id: int) -> None:
        """HvCallFinalizePartition (0x0042): delete the VPs, unmap the GPA space; afterwards only
        WithdrawMemory and DeletePartition are allowed."""
        with self._then_runtime():
            p = self._child(caller, partition_id)
            self._state(p, PartitionState.CREATED, PartitionState.INITIALIZED, PartitionState.ACTIVE)
            runtime = self.runtime
            if runtime is not None:
                pid = p.id
                self._after_unlock(lambda: runtime.partition_stopping(pid))  # no VP runs once this returns
            p.vps.clear()
            for m in p.gpa.clear():
                self._unref(m)
            p.initialized = False  # its structures are gone: the whole pool is available again
            p.state = PartitionState.FINALIZED
            self._finalize_root_calls(p.id)
            self._trace("partition-finalize", p.id)

    def delete_partition(self, caller: int, partition_id: int) -> None:
        """HvCallDeletePartition (0x0043): Finalized -> Deleted; pages still deposited go back to
        their depositors. The ID is never handed out again."""
        with self.lock:
            p = self._child(caller, partition_id)  # SELF is nobody's child: INVALID_PARTITION_ID
            self._state(p, PartitionState.FINALIZED)
            if any(self._partitions[c].state != PartitionState.DELETED for c in p.children):
                raise HvError(HvStatus.INVALID_PARTITION_STATE, "partition still has children")
            for d in p.pool:
                self._return_deposit(d)
            p.pool.clear()
            p.state = PartitionState.DELETED
            parent = self._partitions[caller]
            parent.children.remove(p.id)
            del self._partitions[p.id]
            self._trace("partition-delete", p.id)

    def get_next_child_partition(
        self, caller: int, parent_partition_id: int, previous_child_partition_id: int
    ) -> int:
        """HvCallGetNextChildPartition (0x0047) -> NextChildPartitionId (INVALID at the end)."""
        with self.lock:
            parent = self._self_or_child(caller, parent_partition_id)
            kids = sorted(parent.children)
            if previous_child_partition_id == HV_PARTITION_ID_INVALID:
                return kids[0] if kids else HV_PARTITION_ID_INVALID
            if previous_child_partition_id not in kids:
                raise HvError(HvStatus.INVALID_PARAMETER, "PreviousChildPartitionId is not a child")
            later = [k for k in kids if k > previous_child_partition_id]
            return later[0] if later else HV_PARTITION_ID_INVALID

    # ---- properties ------------------------------------------------------------------------------
    def get_partition_property(self, caller: int, partition_id: int, property_code: int) -> int:
        """HvCallGetPartitionProperty (0x0044) -> PropertyValue."""
        with self.lock:
            p = self._self_or_child(caller, partition_id)
            self._state(p, PartitionState.CREATED, PartitionState.INITIALIZED, PartitionState.ACTIVE)
            if property_code == PartitionPropertyCode.PrivilegeFlags:
                return p.privileges
            if property_code == PROPERTY_GUEST_OS_ID:
                return p.guest_os_id
            if property_code == PartitionPropertyCode.CompatibilityVersion:
                return p.compatibility_version
            d = PROPERTIES.get(property_code)
            if d is None:
                raise HvError(HvStatus.UNKNOWN_PROPERTY, f"{property_code:#x}")
            return p.properties.get(property_code, d.default)

    def set_partition_property(self, caller: int, partition_id: int, property_code: int, value: int) -> None:
        """HvCallSetPartitionProperty (0x0045). Only a parent sets its child's properties."""
        with self.lock:
            p = self._child(caller, partition_id)
            self._state(p, PartitionState.CREATED, PartitionState.INITIALIZED, PartitionState.ACTIVE)
            d = PROPERTIES.get(property_code)
            if d is None:
                if property_code == PROPERTY_GUEST_OS_ID:
                    raise HvError(HvStatus.INVALID_PARAMETER, "GuestOsId is read-only")
                raise HvError(HvStatus.UNKNOWN_PROPERTY, f"{property_code:#x}")
            if not d.writable:
                raise HvError(HvStatus.INVALID_PARAMETER, f"property {property_code:#x} is read-only")
            if d.early and p.state != PartitionState.CREATED:
                raise HvError(HvStatus.INVALID_PARTITION_STATE, "early property after InitializePartition")
            if not d.low <= value <= d.high:
                raise HvError(HvStatus.PROPERTY_VALUE_OUT_OF_RANGE, f"{value:#x}")
            if property_code == PartitionPropertyCode.PrivilegeFlags:
                parent = self._partitions[caller]
                if value & ~parent.privileges:
                    # A parent cannot hand out what it does not have.
                    raise HvError(HvStatus.ACCESS_DENIED, f"privileges {value & ~parent.privileges:#x}")
                p.privileges = value
                return
            p.properties[property_code] = value

    # ---- memory pool -----------------------------------------------------------------------------
    def deposit_memory(self, caller: int, partition_id: int, gpa_page_list: Sequence[int]) -> int:
        """HvCallDepositMemory (0x0048, rep): the caller's pages become the hypervisor's, in the
        target's pool. Returns the number deposited (all of them, or HvError with reps_done)."""
        with self.lock:
            c = self._caller(caller)
            self._need(c, PartitionPrivilege.AccessMemoryPool)
            p = self._self_or_child(caller, partition_id)
            self._state(p, PartitionState.CREATED, PartitionState.INITIALIZED, PartitionState.ACTIVE)
            for i, page in enumerate(gpa_page_list):
                m = c.gpa.get(page)
                if m is None:
                    raise HvError(HvStatus.INVALID_PARAMETER, f"page {page:#x} is not the caller's", i)
                if m.backing < 0 or m.flags & (MapGpaFlags.READABLE | MapGpaFlags.WRITABLE) != 3:
                    raise HvError(
                        HvStatus.INVALID_PARAMETER, f"page {page:#x} is not RAM the caller can write", i
                    )
                own = 1 if m.source is not None else 0  # the caller's own mapping of it, if a child
                if self._refs.get(m.backing, 0) > own:
                    raise HvError(HvStatus.OBJECT_IN_USE, f"page {page:#x} is mapped into a child", i)
                c.gpa.unmap(page)
                p.pool.append(Deposit(c.id, page, m))
            self._trace("deposit", p.id, depositor=c.id, count=len(gpa_page_list), pool=len(p.pool))
            return len(gpa_page_list)

    def withdraw_memory(
        self, caller: int, partition_id: int, count: int, proximity_domain_info: int = 0
    ) -> list[int]:
        """HvCallWithdrawMemory (0x0049, rep): up to `count` available pages the caller deposited
        go back to it; returns their page numbers (fewer, possibly none, when fewer are free)."""
        with self.lock:
            c = self._caller(caller)
            self._need(c, PartitionPrivilege.AccessMemoryPool)
            p = self._self_or_child(caller, partition_id)
            out: list[int] = []
            keep: list[Deposit] = []
            free = p.pages_available
            # The newest deposits leave first; pages in use are accounted by count, not identity.
            for d in reversed(p.pool):
                if len(out) < min(count, free) and d.depositor == c.id:
                    self._return_deposit(d)
                    out.append(d.page)
                else:
                    keep.append(d)
            p.pool = list(reversed(keep))
            self._trace("withdraw", p.id, depositor=c.id, count=len(out), pool=len(p.pool))
            return out

    def get_memory_balance(
        self, caller: int, partition_id: int, proximity_domain_info: int = 0
    ) -> tuple[int, int]:
        """HvCallGetMemoryBalance (0x004A) -> (PagesAvailable, PagesInUse)."""
        with self.lock:
            c = self._caller(caller)
            self._need(c, PartitionPrivilege.AccessMemoryPool)
            p = self._self_or_child(caller, partition_id)
            return p.pages_available, p.pages_in_use

    # ---- GPA mapping -----------------------------------------------------------------------------
    def map_gpa_pages(
        self, caller: int, target_partition_id: int, target_gpa_base: int, map_flags: int,
        source_gpa_page_list: Sequence[int],
    ) -> int:  # fmt: skip
        """HvCallMapGpaPages (0x004B, rep): map the caller's pages at consecutive target pages
        (with HV_MAP_GPA_LARGE_PAGE each element maps a 2 MiB page)."""
        step = LARGE_PAGE_PAGES if map_flags & MapGpaFlags.LARGE_PAGE else 1
        pairs = [(target_gpa_base + i * step, src) for i, src in enumerate(source_gpa_page_list)]
        return self._map(caller, target_partition_id, map_flags, pairs)

    def map_sparse_gpa_pages(
        self, caller: int, target_partition_id: int, map_flags: int, page_list: Sequence[tuple[int, int]]
    ) -> int:
        """HvCallMapSparseGpaPages (0x006E, rep): HV_GPA_MAPPING elements (target, source)."""
        if map_flags & MapGpaFlags.LARGE_PAGE:
            with self.lock:
                self._child(caller, target_partition_id)
            raise HvError(HvStatus.INVALID_PARAMETER, "LARGE_PAGE with sparse mappings")
        return self._map(caller, target_partition_id, map_flags, list(page_list))

    def modify_sparse_gpa_pages(
        self,
        caller: int,
        target_partition_id: int,
        map_flags: int,
        gpa_page_list: Sequence[int],
        rsvdz: int = 0,
    ) -> int:
        """HvCallModifySparseGpaPages (0x0090, rep): new rights for mapped pages. The rights stay
        within what the source page allows the caller."""
        with self._then_runtime():
            p = self._child(caller, target_partition_id)
            self._state(p, PartitionState.CREATED, PartitionState.INITIALIZED, PartitionState.ACTIVE)
            self._check_map_flags(map_flags, modify=True)
            if rsvdz:
                raise HvError(HvStatus.INVALID_PARAMETER, "Rsvdz must be 0")
            for i, page in enumerate(gpa_page_list):
                m = p.gpa.get(page)
                if m is None or m.backing < 0:
                    raise HvError(HvStatus.INVALID_PARAMETER, f"target page {page:#x} is not mapped", i)
                if m.source is not None:
                    src = self._partitions.get(m.source[0])
                    src_m = src.gpa.get(m.source[1]) if src is not None else None
                    limit = (
                        src_m.flags & MAP_GPA_PERMISSIONS
                        if src_m is not None
                        else m.flags & MAP_GPA_PERMISSIONS
                    )
                    if map_flags & MAP_GPA_PERMISSIONS & ~limit:
                        raise HvError(HvStatus.ACCESS_DENIED, f"rights beyond the source page {page:#x}", i)
                p.gpa.modify(page, map_flags)
                self._memory_changed(p)
            self._trace("modify", p.id, count=len(gpa_page_list), flags=map_flags)
            return len(gpa_page_list)

    def unmap_gpa_pages(
        self, caller: int, target_partition_id: int, target_gpa_base: int, count: int, unmap_flags: int = 0
    ) -> int:
        """HvCallUnmapGpaPages (0x004C, rep, no list): unmap `count` pages (2 MiB pages with
        HV_UNMAP_GPA_LARGE_PAGE) from target_gpa_base on."""
        with self._then_runtime():
            p = self._child(caller, target_partition_id)
            self._state(p, PartitionState.CREATED, PartitionState.INITIALIZED, PartitionState.ACTIVE)
            if unmap_flags & ~UNMAP_GPA_FLAGS_DEFINED:
                raise HvError(HvStatus.INVALID_PARAMETER, f"undefined unmap flags {unmap_flags:#x}")
            step = LARGE_PAGE_PAGES if unmap_flags & UnmapGpaFlags.LARGE_PAGE else 1
            if step > 1 and target_gpa_base % step:
                raise HvError(HvStatus.INVALID_PARAMETER, "large-page unmap of an unaligned base")
            done = 0
            try:
                for i in range(count):
                    first = target_gpa_base + i * step
                    pages = range(first, first + step)
                    if any(pg not in p.gpa for pg in pages):
                        raise HvError(HvStatus.INVALID_PARAMETER, f"target page {first:#x} is not mapped", i)
                    for pg in pages:
                        self._unref(p.gpa.unmap(pg))
                    done += 1
            finally:
                self._memory_changed(p)  # what was unmapped is gone for the VPs before this returns
                if done:
                    self._trace("unmap", p.id, gpa_page=target_gpa_base, count=done, flags=unmap_flags)
            return count

    def partition_memory(self, partition_id: int) -> GuestMemory:
        """What the hypervisor reads and writes for a partition: the root's RAM for the root, the
        GPA map over it for a child (hv1/hv/gpa_memory.py)."""
        with self.lock:
            if self.ram is None:
                raise RuntimeError("this Hypervisor was built without RAM")
            p = self._lookup(partition_id)
            return self.ram if p.parent is None else PartitionMemory(p.gpa, self.ram)

    def translate_virtual_address(
        self, caller: int, partition_id: int, vp_index: int, control_flags: int, gva_page: int
    ) -> tuple[int, int]:
        """HvCallTranslateVirtualAddress (0x0052) -> (TranslationResult u64, GpaPage), walking the
        VP's page tables as its (suspended) registers say."""
        with self.lock:
            p = self._child(caller, partition_id)
            self._state(p, PartitionState.INITIALIZED, PartitionState.ACTIVE)
            vp = p.vps.get(vp_index)
            if vp is None:
                raise HvError(HvStatus.INVALID_VP_INDEX, f"no VP {vp_index}")
            why = flags_error(control_flags)
            if why is not None:
                raise HvError(HvStatus.INVALID_PARAMETER, why)
            if not vp.stopped:
                raise HvError(HvStatus.INVALID_VP_STATE, f"VP {vp_index} is running")
            if gva_page >> 52:
                raise HvError(HvStatus.INVALID_PARAMETER, f"GVA page {gva_page:#x}")
            ctx = vp.registers.ctx
            paging = PagingState(ctx.cr0, ctx.cr3, ctx.cr4, ctx.efer, cpl=ctx.ss.dpl, rflags=ctx.rflags)
            t = translate_gva(p.gpa, self.partition_memory(p.id), paging, gva_page, control_flags)
            return t.pack_result(), t.gpa_page

    # ---- intercepts -------------------------------------------------------------------------------
    def install_intercept(
        self, caller: int, partition_id: int, access_type: int, intercept_type: int, intercept_parameter: int
    ) -> None:
        """HvCallInstallIntercept (0x004D): a parent traps its child's I/O port, MSR, CPUID or
        exception events (PDF §6 "Host Intercepts")."""
        with self.lock:
            p = self._child(caller, partition_id)
            self._state(p, PartitionState.CREATED, PartitionState.INITIALIZED, PartitionState.ACTIVE)
            try:
                p.intercepts.install(access_type, intercept_type, intercept_parameter)
            except InterceptError as e:
                raise HvError(e.status, str(e)) from None
            self._trace("intercept-install", p.id, type=intercept_type, access=access_type,
                        parameter=intercept_parameter)  # fmt: skip

    # ---- virtual processors ----------------------------------------------------------------------
    def create_vp(self, caller: int, partition_id: int, vp_index: int, flags: int = 0) -> None:
        """HvCallCreateVp (0x004E): a VP in ExplicitSuspend."""
        with self.lock:
            p = self._child(caller, partition_id)
            self._state(p, PartitionState.INITIALIZED, PartitionState.ACTIVE)
            if flags:
                raise HvError(HvStatus.INVALID_PARAMETER, "Flags must be 0")
            if vp_index in (HV_ANY_VP, HV_VP_INDEX_SELF) or vp_index > 0xFFFF_FFFF:
                raise HvError(HvStatus.INVALID_VP_INDEX, f"{vp_index:#x}")
            if vp_index in p.vps:
                raise HvError(HvStatus.INVALID_VP_INDEX, f"VP {vp_index} exists")
            if len(p.vps) >= MAX_VPS_PER_PARTITION:
                raise HvError(HvStatus.INVALID_VP_INDEX, f"more than {MAX_VPS_PER_PARTITION} VPs")
            self._charge(p, POOL_COSTS["vp"])
            p.vps[vp_index] = VpRecord(vp_index)
            self._trace("vp-create", p.id, vp_index=vp_index)

    def delete_vp(self, caller: int, partition_id: int, vp_index: int) -> None:
        """HvCallDeleteVp (0x004F)."""
        with self.lock:
            p = self._child(caller, partition_id)
            self._state(p, PartitionState.INITIALIZED, PartitionState.ACTIVE)
            if vp_index not in p.vps:
                raise HvError(HvStatus.INVALID_VP_INDEX, f"no VP {vp_index}")
            if self.runtime is not None:
                self.runtime.vp_deleted(p.id, vp_index)
            del p.vps[vp_index]
            self._drop_vp_root_calls(p.id, vp_index)
            self._trace("vp-delete", p.id, vp_index=vp_index)

    def set_explicit_suspend(self, caller: int, partition_id: int, vp_index: int, suspended: bool) -> None:
        """HvRegisterExplicitSuspend: the first resume makes the partition Active."""
        self.set_vp_registers(
            caller, partition_id, vp_index, [(HvRegisterName.ExplicitSuspend, int(suspended))]
        )

    def get_vp_registers(
        self, caller: int, partition_id: int, vp_index: int, names: Sequence[int], input_vtl: int = 0
    ) -> list[int]:
        """HvCallGetVpRegisters (0x0050, rep): HV_REGISTER_VALUEs (128-bit ints) in order. The
        suspension registers can always be read; the others while the VP is suspended (an hv1
        choice: the parent stops a VP before it inspects it)."""
        with self.lock:
            vp = self._vp_for_registers(caller, partition_id, vp_index, input_vtl)
            out: list[int] = []
            for i, name in enumerate(names):
                if name == HvRegisterName.ExplicitSuspend:
                    out.append(int(vp.explicit_suspend))
                elif name == HvRegisterName.InterceptSuspend:
                    out.append(int(vp.intercept_suspend))
                else:
                    if not vp.stopped:
                        raise HvError(HvStatus.INVALID_VP_STATE, f"VP {vp_index} is running", i)
                    try:
                        out.append(vp.registers.get(name))
                    except RegisterError as e:
                        raise HvError(e.status, str(e), i) from None
            return out

    def set_vp_registers(
        self,
        caller: int,
        partition_id: int,
        vp_index: int,
        values: Sequence[tuple[int, int]],
        input_vtl: int = 0,
    ) -> int:
        """HvCallSetVpRegisters (0x0051, rep): (name, value) pairs in order. Clearing ExplicitSuspend
        or InterceptSuspend lets the VP run (virtualization-host.md: "Start VP0 by clearing the
        HvRegisterExplicitSuspend VP register"); only the hypervisor sets InterceptSuspend."""
        with self.lock:
            p = self._partitions.get(partition_id if partition_id != HV_PARTITION_ID_SELF else caller)
            vp = self._vp_for_registers(caller, partition_id, vp_index, input_vtl)
            resumed = suspended = False
            for i, (name, value) in enumerate(values):
                if name in (HvRegisterName.ExplicitSuspend, HvRegisterName.InterceptSuspend):
                    if value & ~1 or (name == HvRegisterName.InterceptSuspend and value):
                        raise HvError(HvStatus.INVALID_PARAMETER, f"suspend register value {value:#x}", i)
                    was = vp.suspended
                    if name == HvRegisterName.ExplicitSuspend:
                        vp.explicit_suspend = bool(value)
                    else:
                        vp.intercept_suspend = False
                        vp.intercept = None
                    resumed |= was and not vp.suspended
                    suspended |= not was and vp.suspended
                    continue
                if not vp.stopped:
                    raise HvError(HvStatus.INVALID_VP_STATE, f"VP {vp_index} is running", i)
                try:
                    vp.registers.set(name, value)
                except RegisterError as e:
                    raise HvError(e.status, str(e), i) from None
            if p is not None and suspended and vp.suspended:
                self._trace("vp-suspend", p.id, vp_index=vp_index, reason="explicit")
                if self.runtime is not None:
                    self.runtime.vp_suspended(p.id, vp_index)  # it stops and saves its state soon
            if resumed and p is not None and not vp.suspended:
                self._trace("vp-resume", p.id, vp_index=vp_index)
                if p.state is PartitionState.INITIALIZED:
                    p.state = PartitionState.ACTIVE
                if self.on_vp_resumed is not None:
                    self.on_vp_resumed(p.id, vp_index)
                if self.runtime is not None:
                    self.runtime.vp_resumed(p.id, vp_index)
            return len(values)

    def _vp_for_registers(self, caller: int, partition_id: int, vp_index: int, input_vtl: int) -> VpRecord:
        """The VP a Get/SetVpRegisters names: a child's VP (its parent may always), or the
        caller's own with AccessVpRegisters. Only VTL 0 exists."""
        c = self._caller(caller)
        if partition_id in (HV_PARTITION_ID_SELF, caller):
            self._need(c, PartitionPrivilege.AccessVpRegisters)
            p = c
        else:
            p = self._child(caller, partition_id)
        self._state(p, PartitionState.INITIALIZED, PartitionState.ACTIVE)
        if input_vtl:
            raise HvError(HvStatus.INVALID_PARAMETER, f"input VTL {input_vtl:#x}: hv1 has VTL 0 only")
        vp = p.vps.get(vp_index)
        if vp is None:
            raise HvError(HvStatus.INVALID_VP_INDEX, f"no VP {vp_index}")
        return vp

    # ---- internals -------------------------------------------------------------------------------
    def _new(self, parent: int | None, depth: int, privileges: int, state: PartitionState) -> PartitionRecord:
        p = PartitionRecord(id=self._next_id, parent=parent, depth=depth, state=state, privileges=privileges)
        self._partitions[p.id] = p
        self._next_id += 1
        return p

    def _caller(self, caller: int) -> PartitionRecord:
        p = self._partitions.get(caller)
        if p is None or p.state in (PartitionState.FINALIZED, PartitionState.DELETED):
            raise HvError(HvStatus.INVALID_PARTITION_ID, f"caller {caller:#x}")
        return p

    def _lookup(self, partition_id: int) -> PartitionRecord:
        p = self._partitions.get(partition_id)
        if p is None:
            raise HvError(HvStatus.INVALID_PARTITION_ID, f"{partition_id:#x}")
        return p

    def _child(self, caller: int, partition_id: int) -> PartitionRecord:
        """The target of a call only a parent may make (SELF is not a child)."""
        self._caller(caller)
        p = self._lookup(partition_id)
        if p.parent != caller:
            raise HvError(HvStatus.ACCESS_DENIED, f"{partition_id:#x} is not a child of {caller:#x}")
        return p

    def _self_or_child(self, caller: int, partition_id: int) -> PartitionRecord:
        c = self._caller(caller)
        if partition_id in (HV_PARTITION_ID_SELF, caller):
            return c
        return self._child(caller, partition_id)

    @staticmethod
    def _need(p: PartitionRecord, privilege: PartitionPrivilege) -> None:
        if not p.privileges & privilege:
            raise HvError(HvStatus.ACCESS_DENIED, f"missing privilege {privilege.name}")

    @staticmethod
    def _state(p: PartitionRecord, *allowed: PartitionState) -> None:
        if p.state not in allowed:
            raise HvError(HvStatus.INVALID_PARTITION_STATE, f"partition {p.id:#x} is {p.state.value}")

    @staticmethod
    def _charge(p: PartitionRecord, pages: int, reps_done: int = 0) -> None:
        if p.pages_available < pages:
            raise HvError(
                HvStatus.INSUFFICIENT_MEMORY,
                f"partition {p.id:#x} needs {pages} pool pages, has {p.pages_available}",
                reps_done,
            )

    @staticmethod
    def _check_map_flags(flags: int, modify: bool = False) -> None:
        if flags & ~MAP_GPA_FLAGS_DEFINED:
            raise HvError(HvStatus.INVALID_PARAMETER, f"undefined map flags {flags:#x}")
        if not rights_valid(flags):
            raise HvError(HvStatus.INVALID_PARAMETER, f"write or execute without read ({flags:#x})")
        if modify and special_backing(flags) is not None:
            raise HvError(HvStatus.INVALID_PARAMETER, "special encodings are for map, not modify")

    def _map(self, caller: int, target: int, flags: int, pairs: Iterable[tuple[int, int]]) -> int:
        with self._then_runtime():
            c = self._caller(caller)
            p = self._child(caller, target)
            self._state(p, PartitionState.CREATED, PartitionState.INITIALIZED, PartitionState.ACTIVE)
            self._check_map_flags(flags)
            special = special_backing(flags)
            large = bool(flags & MapGpaFlags.LARGE_PAGE)
            step = LARGE_PAGE_PAGES if large else 1
            done = 0
            first_page = -1
            try:
                for target_page, source_page in pairs:
                    if first_page < 0:
                        first_page = target_page
                    if large and (target_page % step or source_page % step):
                        raise HvError(HvStatus.INVALID_PARAMETER, "large page not 2 MiB aligned", done)
                    plan: list[tuple[int, GpaMapping]] = []
                    for k in range(step):
                        tp = target_page + k
                        if tp in p.gpa:
                            raise HvError(
                                HvStatus.INVALID_PARAMETER, f"target page {tp:#x} is already mapped", done
                            )
                        if special is not None:
                            plan.append((tp, GpaMapping(special, flags)))
                            continue
                        src = c.gpa.get(source_page + k)
                        if src is None or src.backing < 0:
                            raise HvError(
                                HvStatus.INVALID_PARAMETER,
                                f"source page {source_page + k:#x} is not the caller's",
                                done,
                            )
                        if flags & MAP_GPA_PERMISSIONS & ~(src.flags & MAP_GPA_PERMISSIONS):
                            raise HvError(
                                HvStatus.ACCESS_DENIED,
                                f"rights beyond the source page {source_page + k:#x}",
                                done,
                            )
                        plan.append((tp, GpaMapping(src.backing, flags, (c.id, source_page + k))))
                    self._charge(
                        p, p.gpa.new_tables_for([tp for tp, _ in plan]) * POOL_COSTS["gpa_table"], done
                    )
                    for tp, m in plan:
                        p.gpa.map(tp, m)
                        if m.backing >= 0:
                            self._refs[m.backing] = self._refs.get(m.backing, 0) + 1
                    done += 1

            finally:
                if done:
                    self._memory_changed(p)  # the new pages are there for the VPs before this returns
                    self._trace("map", p.id, gpa_page=first_page, count=done, flags=flags)
            return done

    def _memory_changed(self, p: PartitionRecord) -> None:
        runtime, pid = self.runtime, p.id
        if runtime is not None:
            self._after_unlock(lambda: runtime.memory_changed(pid), key=("memory", pid))

    def _after_unlock(self, fn: Callable[[], None], key: object = None) -> None:
        """Queue a runtime call for when this thread leaves `_then_runtime` (once per `key`)."""
        tls = self._tls
        pending: dict[object, Callable[[], None]] = tls.__dict__.setdefault("pending", {})
        pending[key if key is not None else object()] = fn

    @contextlib.contextmanager
    def _then_runtime(self) -> Iterator[None]:
        """The engine lock for a call that changes what a running child may touch. The runtime calls
        it queues (memory_changed, partition_stopping) run when the lock is released, on this thread,
        before the call returns: the runtime may then park or stop the child's VPs, which may be
        waiting for this very lock (docs/partitions.md "Locks")."""
        tls = self._tls
        depth = tls.__dict__.get("depth", 0)
        tls.depth = depth + 1
        try:
            with self.lock:
                yield
        finally:
            tls.depth = depth
            if depth == 0:
                pending = tls.__dict__.pop("pending", {})
                for fn in pending.values():
                    fn()

    def _unref(self, m: GpaMapping) -> None:
        if m.backing < 0 or m.source is None:  # special pages and the root's own RAM are not counted
            return
        left = self._refs[m.backing] - 1
        if left:
            self._refs[m.backing] = left
        else:
            del self._refs[m.backing]

    def _return_deposit(self, d: Deposit) -> None:
        """A withdrawn page goes back into its depositor's GPA map as it was; if the depositor is
        gone (a child that deposited its own pages and is being deleted), its mapping is dropped."""
        owner = self._partitions.get(d.depositor)
        if owner is not None and owner.state not in (PartitionState.FINALIZED, PartitionState.DELETED):
            owner.gpa.map(d.page, d.mapping)
        else:
            self._unref(d.mapping)

    # ==== issue 11: the rest of the root-partition hypercalls ======================================
    # Appended sections; the state they keep is created by _init_root_calls and released with the VP
    # (_drop_vp_root_calls) or the partition (_finalize_root_calls).
    def _init_root_calls(self) -> None:
        # (partition id, VP index, leaf, subleaf) -> (eax, ebx, ecx, edx): what a child VP's CPUID
        # returns before intercepts and registered results; the machine or a Python host sets it
        # (called without the engine lock, so it may ask the engine).
        self.cpuid_provider: CpuidProvider = default_vp_cpuid
        # Called without the engine lock (the running layer injects into a child VP, which takes that
        # partition's lock) for every interrupt HvCallAssertVirtualInterrupt accepts; it may answer
        # an HV_STATUS (e.g. ACKNOWLEDGED for a second ExtInt). Without it the interrupt is recorded
        # in `asserted_interrupts[partition_id]` (the last ASSERTED_INTERRUPTS_KEPT: a guest host
        # asserting in a loop must not grow the VMM without bound).
        self.on_assert_virtual_interrupt: Callable[[AssertedInterrupt], int | None] | None = None
        self.asserted_interrupts: dict[int, deque[AssertedInterrupt]] = {}
        self.counters = Counters()
        self.port_registry = PortRegistry(self.lock)
        self._intercept_results: dict[int, InterceptResults] = {}
        self._vp_state_pages: dict[tuple[int, int, VpStatePageType], VpStatePageMapping] = {}
        self._state_page_deposits: dict[tuple[int, int, VpStatePageType], Deposit] = {}  # pool-supplied
        self._stats_pages: dict[tuple[int, StatsObject, int], StatsMapping] = {}
        self._stats_page_deposits: dict[tuple[int, StatsObject, int], Deposit] = {}  # HvCallMapStatsPage's

    def _ref_backing(self, backing: int) -> None:
        self._refs[backing] = self._refs.get(backing, 0) + 1

    def _unref_backing(self, backing: int) -> None:
        left = self._refs.get(backing, 0) - 1
        if left > 0:
            self._refs[backing] = left
        else:
            self._refs.pop(backing, None)

    def _caller_page(self, c: PartitionRecord, gpa_page: int) -> int:
        """The root RAM page behind a page of the caller's RAM it can read and write (where a state
        or stats page goes), or INVALID_PARAMETER."""
        m = c.gpa.get(gpa_page)
        rw = int(MapGpaFlags.READABLE | MapGpaFlags.WRITABLE)
        if m is None or m.backing < 0 or m.flags & rw != rw:
            raise HvError(HvStatus.INVALID_PARAMETER, f"page {gpa_page:#x} is not RAM the caller can write")
        if any(s.backing == m.backing for s in self._vp_state_pages.values()) or any(
            s.backing == m.backing for s in self._stats_pages.values()
        ):
            raise HvError(HvStatus.OBJECT_IN_USE, f"page {gpa_page:#x} already shows a state or stats page")
        return m.backing

    def _finalize_root_calls(self, partition_id: int) -> None:
        """FinalizePartition: "clean up VPs, ports, connections, and resources" of issue 11 too."""
        for vp_key in [k for k in self._vp_state_pages if k[0] == partition_id]:
            self._release_state_page(vp_key)
        for stats_key in [
            k for k, m in self._stats_pages.items() if m.obj[1] == partition_id or m.caller == partition_id
        ]:
            self._release_stats_page(stats_key)
        self._intercept_results.pop(partition_id, None)
        self.asserted_interrupts.pop(partition_id, None)
        self.counters.drop(partition_id)
        self.port_registry.drop_partition(partition_id)

    def _drop_vp_root_calls(self, partition_id: int, vp_index: int) -> None:
        for vp_key in [k for k in self._vp_state_pages if k[:2] == (partition_id, vp_index)]:
            self._release_state_page(vp_key)
        for stats_key in [
            k for k, m in self._stats_pages.items() if m.obj == (StatsObjectType.VP, partition_id, vp_index)
        ]:
            self._release_stats_page(stats_key)
        results = self._intercept_results.get(partition_id)
        if results is not None:
            results.drop_vp(vp_index)
        self.counters.drop(partition_id, vp_index)

    def _child_vp(self, caller: int, partition_id: int, vp_index: int) -> tuple[PartitionRecord, VpRecord]:
        p = self._child(caller, partition_id)
        self._state(p, PartitionState.INITIALIZED, PartitionState.ACTIVE)
        vp = p.vps.get(vp_index)
        if vp is None:
            raise HvError(HvStatus.INVALID_VP_INDEX, f"no VP {vp_index}")
        return p, vp

    # ---- CPUID values (HvCallGetVpCpuidValues 0x00F4) ---------------------------------------------
    def get_vp_cpuid_values(
        self, caller: int, partition_id: int, vp_index: int, flags: int, reserved_z: int,
        cpuid_leaf_info: Sequence[tuple[int, int]],
    ) -> list[tuple[int, int, int, int]]:  # fmt: skip
        """HvCallGetVpCpuidValues (0x00F4, rep): HV_CPUID_RESULT (eax, ebx, ecx, edx) per (leaf,
        subleaf), from `cpuid_provider`; with ApplyRegisteredValues the registered CPUID intercept
        results are applied. UseVpXfemXss is accepted: the provider answers for the VP as it is (hv1
        keeps no per-VP XSS, and XFEM is the VP's register), so the flag changes nothing here."""
        with self.lock:
            p, _ = self._child_vp(caller, partition_id, vp_index)
            if flags & ~GET_VP_CPUID_VALUES_FLAGS_DEFINED:
                raise HvError(HvStatus.INVALID_PARAMETER, f"undefined flags {flags:#x}")
            if reserved_z:
                raise HvError(HvStatus.INVALID_PARAMETER, "ReservedZ must be 0")
            results = self._intercept_results.get(p.id)
            provider = self.cpuid_provider
        out: list[tuple[int, int, int, int]] = []
        for i, (leaf, subleaf) in enumerate(cpuid_leaf_info):
            try:
                a, b, c, d = (x & 0xFFFF_FFFF for x in provider(p.id, vp_index, leaf, subleaf))
            except Exception as e:  # a host's provider bug must not take the VMM down
                raise HvError(HvStatus.OPERATION_FAILED, f"cpuid_provider failed: {e!r}", i) from None
            regs = (a, b, c, d)
            if flags & GetVpCpuidValuesFlags.APPLY_REGISTERED_VALUES and results is not None:
                with self.lock:
                    r = results.cpuid_result(vp_index, leaf, subleaf)
                if r is not None:
                    regs = r.apply(regs)
            out.append(regs)
        return out

    # ---- intercept queries and results (0x00AD, 0x0091, 0x0092) -----------------------------------
    def io_intercepted(self, partition_id: int, port: int, is_write: bool, size: int = 1) -> bool:
        """Does a child's I/O access of `size` bytes at `port` trap to its parent? (Any byte of it
        on an intercepted port does.) For the running layer, on every I/O exit."""
        with self.lock:
            table = self._lookup(partition_id).intercepts
            return any(table.io_port((port + k) & 0xFFFF, is_write) for k in range(size))

    def msr_intercepted(self, partition_id: int, msr_index: int, is_write: bool) -> bool:
        with self.lock:
            return self._lookup(partition_id).intercepts.msr(msr_index, is_write)

    def cpuid_intercepted(self, partition_id: int, leaf: int) -> bool:
        with self.lock:
            return self._lookup(partition_id).intercepts.cpuid(leaf)

    def exception_intercepted(self, partition_id: int, vector: int) -> bool:
        with self.lock:
            return self._lookup(partition_id).intercepts.exception(vector)

    def intercept_result(
        self, partition_id: int, kind: InterceptType, vp_index: int, parameter: int, *, subleaf: int = 0,
        default: tuple[int, int, int, int] = (0, 0, 0, 0), is_write: bool = False,
    ) -> tuple[int, int, int, int] | UnimplementedMsrAction | None:  # fmt: skip
        """The registered answer for a child's access, or None (then an installed intercept sends the
        parent a message, else the VP gets the default). X64Cpuid: `parameter` is the leaf and the
        answer the (eax, ebx, ecx, edx) to give, `default` patched by the registered masks. X64Msr:
        `parameter` is the MSR index and the answer the action (fault, or ignore write / read zero)."""
        with self.lock:
            self._lookup(partition_id)
            results = self._intercept_results.get(partition_id)
            if results is None:
                return None
            if kind is InterceptType.X64Cpuid:
                r = results.cpuid_result(vp_index, parameter, subleaf)
                return None if r is None else r.apply(default)
            if kind is InterceptType.X64Msr:
                return results.msr_action(vp_index, parameter, is_write)
            return None

    def check_for_io_intercept(
        self, caller: int, partition_id: int, vp_index: int, target_vtl: int, port: int, size: int,
        is_write: int,
    ) -> bool:  # fmt: skip
        """HvCallCheckForIoIntercept (0x00AD) -> Intercept."""
        with self.lock:
            p, _ = self._child_vp(caller, partition_id, vp_index)
            if target_vtl:
                raise HvError(HvStatus.INVALID_PARAMETER, f"target VTL {target_vtl}: hv1 has VTL 0 only")
            if size not in IO_ACCESS_SIZES:
                raise HvError(HvStatus.INVALID_PARAMETER, f"access size {size}")
            if is_write not in (0, 1):
                raise HvError(HvStatus.INVALID_PARAMETER, f"IsWrite {is_write} is not a BOOLEAN")
            return self.io_intercepted(p.id, port, bool(is_write), size)

    def _results_target(
        self, caller: int, partition_id: int, vp_index: int, intercept_type: int
    ) -> PartitionRecord:
        p = self._child(caller, partition_id)
        self._state(p, PartitionState.CREATED, PartitionState.INITIALIZED, PartitionState.ACTIVE)
        if intercept_type not in (InterceptType.X64Cpuid, InterceptType.X64Msr):
            raise HvError(HvStatus.INVALID_PARAMETER, f"intercept type {intercept_type:#x} takes no results")
        if vp_index != HV_ANY_VP and vp_index not in p.vps:
            raise HvError(HvStatus.INVALID_VP_INDEX, f"no VP {vp_index}")
        return p

    def register_intercept_result(
        self, caller: int, partition_id: int, vp_index: int, intercept_type: int,
        parameters: CpuidResultParameters | MsrResultParameters,
    ) -> None:  # fmt: skip
        """HvCallRegisterInterceptResult (0x0091)."""
        with self.lock:
            p = self._results_target(caller, partition_id, vp_index, intercept_type)
            results = self._intercept_results.setdefault(p.id, InterceptResults())
            if intercept_type == InterceptType.X64Cpuid:
                if not isinstance(parameters, CpuidResultParameters):
                    raise HvError(HvStatus.INVALID_PARAMETER, "X64Cpuid takes CPUID result parameters")
                if parameters.subleaf_specific > 1 or parameters.always_override > 1 or parameters.padding:
                    raise HvError(HvStatus.INVALID_PARAMETER, "SubleafSpecific/AlwaysOverride/padding")
                subleaf = parameters.subleaf if parameters.subleaf_specific else None
                results.register_cpuid(
                    vp_index, parameters.leaf, subleaf,
                    CpuidResult(parameters.values, parameters.masks, bool(parameters.always_override)),
                )  # fmt: skip
                return
            if not isinstance(parameters, MsrResultParameters):
                raise HvError(HvStatus.INVALID_PARAMETER, "X64Msr takes MSR result parameters")
            access = self._msr_result_access(parameters.access_type)
            try:
                action = UnimplementedMsrAction(parameters.action)
            except ValueError:
                raise HvError(HvStatus.INVALID_PARAMETER, f"MSR action {parameters.action}") from None
            results.register_msr(vp_index, parameters.msr_index, access, action)

    @staticmethod
    def _msr_result_access(access_type: int) -> InterceptAccess:
        rw = int(InterceptAccess.READ | InterceptAccess.WRITE)
        if not access_type or access_type & ~rw:
            raise HvError(HvStatus.INVALID_PARAMETER, f"MSR access type {access_type:#x} (read and/or write)")
        return InterceptAccess(access_type)

    def unregister_intercept_result(
        self, caller: int, partition_id: int, vp_index: int, intercept_type: int,
        parameters: CpuidUnregisterParameters | MsrUnregisterParameters,
    ) -> None:  # fmt: skip
        """HvCallUnregisterInterceptResult (0x0092): the same pattern as registered; nothing
        registered under it is INVALID_PARAMETER."""
        with self.lock:
            p = self._results_target(caller, partition_id, vp_index, intercept_type)
            results = self._intercept_results.get(p.id, InterceptResults())
            if intercept_type == InterceptType.X64Cpuid:
                if not isinstance(parameters, CpuidUnregisterParameters) or parameters.subleaf_specific > 1:
                    raise HvError(HvStatus.INVALID_PARAMETER, "X64Cpuid takes CPUID unregister parameters")
                subleaf = parameters.subleaf if parameters.subleaf_specific else None
                found = results.unregister_cpuid(vp_index, parameters.leaf, subleaf)
            else:
                if not isinstance(parameters, MsrUnregisterParameters):
                    raise HvError(HvStatus.INVALID_PARAMETER, "X64Msr takes MSR unregister parameters")
                access = self._msr_result_access(parameters.access_type)
                found = results.unregister_msr(vp_index, parameters.msr_index, access)
            if not found:
                raise HvError(HvStatus.INVALID_PARAMETER, "no such registered result")

    # ---- HvCallTranslateVirtualAddressEx (0x00AC) -------------------------------------------------
    def translate_virtual_address_ex(
        self, caller: int, partition_id: int, vp_index: int, control_flags: int, gva_page: int
    ) -> tuple[int, int, int]:
        """HvCallTranslateVirtualAddressEx -> (HV_TRANSLATE_GVA_RESULT_EX's ResultCode/CacheType u64,
        its EventInfo, GpaPage). The walk is TranslateVirtualAddress's; EventInfo is 0: the VP is
        suspended and hv1 keeps no pending event for it (a pending interruption lives in the running
        layer, not in the register file)."""
        result, gpa_page = self.translate_virtual_address(
            caller, partition_id, vp_index, control_flags, gva_page
        )
        return result, 0, gpa_page

    # ---- HvCallAssertVirtualInterrupt (0x0094) ----------------------------------------------------
    def assert_virtual_interrupt(
        self, caller: int, target_partition: int, interrupt_control: int, destination_address: int,
        requested_vector: int, target_vtl: int = 0, reserved_z0: int = 0, reserved_z1: int = 0,
    ) -> None:  # fmt: skip
        """HvCallAssertVirtualInterrupt: a parent asserts an interrupt in its child (rules in
        hv1/hv/virtual_interrupt.py). Accepted interrupts go to `on_assert_virtual_interrupt`, or
        into `asserted_interrupts` when no running layer is attached."""
        with self.lock:
            p = self._child(caller, target_partition)
            self._state(p, PartitionState.INITIALIZED, PartitionState.ACTIVE)
            if reserved_z0 or reserved_z1:
                raise HvError(HvStatus.INVALID_PARAMETER, "ReservedZ0/ReservedZ1 must be 0")
            try:
                irq = validate_interrupt(
                    p.id, interrupt_control, destination_address, requested_vector, target_vtl, p.vps.keys()
                )
            except AssertError as e:
                raise HvError(e.status, str(e)) from None
            hook = self.on_assert_virtual_interrupt
            if irq is None:
                return
            if hook is None:
                self.asserted_interrupts.setdefault(p.id, deque(maxlen=ASSERTED_INTERRUPTS_KEPT)).append(irq)
                return
        st = hook(irq)
        if st is not None and st != HvStatus.SUCCESS:
            try:
                raise HvError(HvStatus(st), "refused by the running layer")
            except ValueError:
                raise HvError(HvStatus.OPERATION_FAILED, f"running layer answered {st!r}") from None

    # ---- VP state pages (HvCallMapVpStatePage 0x00E1 / HvCallUnmapVpStatePage 0x00E2) --------------
    def map_vp_state_page(
        self, caller: int, partition_id: int, vp_index: int, type: int, input_vtl: int, flags: int,
        requested_map_location: int,
    ) -> int:  # fmt: skip
        """-> MapLocation (the caller's GPA page now showing the state page; hv1/hv/vp_state_page.py)."""
        with self.lock:
            c = self._caller(caller)
            p, vp = self._child_vp(caller, partition_id, vp_index)
            kind = self._state_page_type(type, input_vtl)
            if flags & ~MAP_VP_STATE_PAGE_LOCATION_PROVIDED:
                raise HvError(HvStatus.INVALID_PARAMETER, f"undefined flags {flags:#x}")
            key = (p.id, vp_index, kind)
            if key in self._vp_state_pages:
                raise HvError(
                    HvStatus.OBJECT_IN_USE, f"VP {vp_index} already has its {kind.name} page mapped"
                )
            if flags & MAP_VP_STATE_PAGE_LOCATION_PROVIDED:
                # A layered host names the page: one of its own RAM pages shows the state page.
                backing = self._caller_page(c, requested_map_location)
                self._ref_backing(backing)
                location = requested_map_location
            else:
                # The hypervisor supplies the page from the child's pool (Linux's mshv_root deposits
                # and retries on INSUFFICIENT_MEMORY); MapLocation is the page as its depositor knew it.
                d = self._take_pool_page(p, c.id)
                self._state_page_deposits[key] = d
                backing, location = d.mapping.backing, d.page
            self._vp_state_pages[key] = VpStatePageMapping(c.id, location, backing)
            if self.ram is not None:
                if kind is VpStatePageType.REGISTERS:
                    write_register_page(self.ram, backing, vp.registers, vp.suspended)
                else:
                    write_message_page(self.ram, backing, b"")
            return location

    def _take_pool_page(self, p: PartitionRecord, caller: int) -> Deposit:
        """An available page of p's pool (the caller's newest deposit first), out of the pool while it
        serves as a state page (so it counts as used); INSUFFICIENT_MEMORY when none is free."""
        if p.pages_available < 1 or not p.pool:
            raise HvError(HvStatus.INSUFFICIENT_MEMORY, f"partition {p.id:#x} has no free pool page")
        mine = [i for i, d in enumerate(p.pool) if d.depositor == caller]
        return p.pool.pop(mine[-1] if mine else len(p.pool) - 1)

    def _release_state_page(self, key: tuple[int, int, VpStatePageType]) -> None:
        m = self._vp_state_pages.pop(key)
        d = self._state_page_deposits.pop(key, None)
        if d is None:
            self._unref_backing(m.backing)
            return
        p = self._partitions.get(key[0])
        if p is not None:
            p.pool.append(d)  # back in the pool: withdrawable, or returned by DeletePartition
        else:
            self._return_deposit(d)

    def unmap_vp_state_page(
        self, caller: int, partition_id: int, vp_index: int, type: int, input_vtl: int, reserved0: int = 0
    ) -> None:
        with self.lock:
            p, _ = self._child_vp(caller, partition_id, vp_index)
            if reserved0:
                raise HvError(HvStatus.INVALID_PARAMETER, "Reserved0 must be 0")
            kind = self._state_page_type(type, input_vtl)
            if (p.id, vp_index, kind) not in self._vp_state_pages:
                raise HvError(HvStatus.INVALID_PARAMETER, f"VP {vp_index} has no {kind.name} page mapped")
            self._release_state_page((p.id, vp_index, kind))

    @staticmethod
    def _state_page_type(type: int, input_vtl: int) -> VpStatePageType:
        if input_vtl:
            raise HvError(HvStatus.INVALID_PARAMETER, f"input VTL {input_vtl:#x}: hv1 has VTL 0 only")
        try:
            kind = VpStatePageType(type)
        except ValueError:
            raise HvError(HvStatus.INVALID_PARAMETER, f"state page type {type}") from None
        if kind is VpStatePageType.GHCB:
            raise HvError(HvStatus.INVALID_PARAMETER, "GHCB pages are for SEV-SNP partitions")
        return kind

    def vp_state_page(
        self, partition_id: int, vp_index: int, type: VpStatePageType
    ) -> VpStatePageMapping | None:
        with self.lock:
            return self._vp_state_pages.get((partition_id, vp_index, type))

    def sync_vp_state_page(self, partition_id: int, vp_index: int) -> None:
        """The running layer, when a child VP stops: show its registers in the mapped page."""
        with self.lock:
            m = self._vp_state_pages.get((partition_id, vp_index, VpStatePageType.REGISTERS))
            vp = self._lookup(partition_id).vps.get(vp_index)
            if m is not None and vp is not None and self.ram is not None:
                write_register_page(self.ram, m.backing, vp.registers, vp.suspended)

    def load_vp_state_page(self, partition_id: int, vp_index: int) -> int:
        """The running layer, before a child VP runs: take the registers the parent wrote into the page
        (its Dirty bits) into the VP's register file. Returns the Dirty mask found."""
        with self.lock:
            m = self._vp_state_pages.get((partition_id, vp_index, VpStatePageType.REGISTERS))
            vp = self._lookup(partition_id).vps.get(vp_index)
            if m is None or vp is None or self.ram is None:
                return 0
            return load_dirty(self.ram, m.backing, vp.registers)

    def write_intercept_message_page(self, partition_id: int, vp_index: int, message: bytes) -> bool:
        """The running layer: put the VP's intercept message (HV_MESSAGE) in its mapped
        HvVpStatePageInterceptMessage page. False when none is mapped."""
        with self.lock:
            m = self._vp_state_pages.get((partition_id, vp_index, VpStatePageType.INTERCEPT_MESSAGE))
            if m is None or self.ram is None:
                return False
            write_message_page(self.ram, m.backing, message)
            return True

    # ---- statistics (HvCallMapStatsPage2 0x0131 / HvCallUnmapStatsPage 0x006D) ---------------------
    def count(self, partition_id: int, vp_index: int | None, name: str, n: int = 1) -> int:
        """Bump counter `name` (hv1/tlfs/stats.py: a VpCounter with a VP index, a PartitionCounter
        with None) and show it in the pages mapped for its object. Returns the new value."""
        with self.lock:
            obj, index, value = self.counters.bump(partition_id, vp_index, name, n)
            if self.ram is not None:
                for m in self._stats_pages.values():
                    if m.obj == obj:
                        self.ram.write((m.backing << PAGE_SHIFT) + 8 * index, value.to_bytes(8, "little"))
            return value

    def stats_values(self, obj: StatsObject) -> dict[int, int]:
        """Every counter of a stats object: the bumped ones and those derived from the engine's state."""
        with self.lock:
            kind, pid, vp = obj
            values = self.counters.values(obj)
            if kind is StatsObjectType.HYPERVISOR:
                live = [p for p in self._partitions.values() if p.state is not PartitionState.DELETED]
                values[HypervisorCounter.HvPartitions] = len(live)
                values[HypervisorCounter.HvVirtualProcessors] = sum(len(p.vps) for p in live)
                values[HypervisorCounter.HvTotalPages] = len(self._partitions[self.root_id].gpa) + sum(
                    len(p.pool) for p in live
                )
            elif kind is StatsObjectType.PARTITION:
                p = self._lookup(pid)
                values[PartitionCounter.PartitionVirtualProcessors] = len(p.vps)
                values[PartitionCounter.PartitionDepositedPages] = len(p.pool)
                values[PartitionCounter.PartitionGpaPages] = len(p.gpa)
                values[PartitionCounter.PartitionPartitionId] = p.id
            return values

    def refresh_stats_pages(self) -> None:
        """Rewrite every mapped stats page (the derived counters change with the engine's state)."""
        with self.lock:
            if self.ram is None:
                return
            for m in self._stats_pages.values():
                if m.obj[1] in self._partitions or m.obj[0] is StatsObjectType.HYPERVISOR:
                    self.ram.write(m.backing << PAGE_SHIFT, render_stats(self.stats_values(m.obj)))

    def _stats_object(
        self, caller: int, stats_type: int, object_identity: StatsIdentity
    ) -> tuple[StatsObject, int]:
        pid, vp_index, rz2, rz3, area = object_identity
        try:
            kind = StatsObjectType(stats_type)
        except ValueError:
            raise HvError(HvStatus.INVALID_PARAMETER, f"stats object type {stats_type:#x}") from None
        if area not in tuple(StatsAreaType):
            raise HvError(HvStatus.INVALID_PARAMETER, f"StatsAreaType {area}")
        if rz2 or rz3 or (kind is not StatsObjectType.VP and vp_index):
            raise HvError(HvStatus.INVALID_PARAMETER, "reserved identity fields must be 0")
        c = self._caller(caller)
        if kind is StatsObjectType.HYPERVISOR:
            if pid:
                raise HvError(HvStatus.INVALID_PARAMETER, "ReservedZ0 must be 0")
            if c.parent is not None:
                raise HvError(HvStatus.ACCESS_DENIED, "hypervisor statistics are the root's")
            return (kind, 0, 0), area
        # "Parent for its children; partition itself for self" (hv_stats_object_type.md).
        p = self._self_or_child(caller, pid)
        self._state(p, PartitionState.CREATED, PartitionState.INITIALIZED, PartitionState.ACTIVE)
        if kind is StatsObjectType.VP:
            if vp_index not in p.vps:
                raise HvError(HvStatus.INVALID_VP_INDEX, f"no VP {vp_index}")
            return (kind, p.id, vp_index), area
        return (kind, p.id, 0), area

    def map_stats_page2(
        self,
        caller: int,
        stats_type: int,
        object_identity: StatsIdentity,
        map_location: int,
        reserved: int = 0,
    ) -> None:
        """HvCallMapStatsPage2: `object_identity` is HV_STATS_OBJECT_IDENTITY as (PartitionId or
        ReservedZ0, VpIndex or ReservedZ1, ReservedZ2, ReservedZ3, StatsAreaType); the page appears at
        the caller's GPA page `map_location`."""
        with self.lock:
            c = self._caller(caller)
            self._need(c, PartitionPrivilege.AccessStats)
            if reserved:
                raise HvError(HvStatus.INVALID_PARAMETER, "Reserved must be 0")
            obj, area = self._stats_object(caller, stats_type, object_identity)
            if (c.id, obj, area) in self._stats_pages:
                raise HvError(HvStatus.OBJECT_IN_USE, "that stats page is already mapped")
            backing = self._caller_page(c, map_location)
            self._ref_backing(backing)
            self._stats_pages[(c.id, obj, area)] = StatsMapping(c.id, obj, area, map_location, backing)
            if self.ram is not None:
                self.ram.write(backing << PAGE_SHIFT, render_stats(self.stats_values(obj)))

    def map_stats_page(self, caller: int, stats_type: int, object_identity: StatsIdentity) -> int:
        """HvCallMapStatsPage (0x006C, undocumented, superseded by MapStatsPage2; the layout of
        Linux's hvhdk_mini.h) -> MapLocation: the hypervisor supplies the page, from the caller's own
        pool (INSUFFICIENT_MEMORY: Linux's mshv_root deposits into itself and retries)."""
        with self.lock:
            c = self._caller(caller)
            self._need(c, PartitionPrivilege.AccessStats)
            obj, area = self._stats_object(caller, stats_type, object_identity)
            key = (c.id, obj, area)
            if key in self._stats_pages:
                raise HvError(HvStatus.OBJECT_IN_USE, "that stats page is already mapped")
            d = self._take_pool_page(c, c.id)
            self._stats_page_deposits[key] = d
            self._stats_pages[key] = StatsMapping(c.id, obj, area, d.page, d.mapping.backing)
            if self.ram is not None:
                self.ram.write(d.mapping.backing << PAGE_SHIFT, render_stats(self.stats_values(obj)))
            return d.page

    def unmap_stats_page(self, caller: int, stats_type: int, object_identity: StatsIdentity) -> None:
        """HvCallUnmapStatsPage: the page stops being updated (its last contents stay in the RAM; a
        page the hypervisor supplied goes back to the caller's pool)."""
        with self.lock:
            c = self._caller(caller)
            self._need(c, PartitionPrivilege.AccessStats)
            obj, area = self._stats_object(caller, stats_type, object_identity)
            if (c.id, obj, area) not in self._stats_pages:
                raise HvError(HvStatus.INVALID_PARAMETER, "that stats page is not mapped")
            self._release_stats_page((c.id, obj, area))

    def stats_page_mapped(self, caller: int, stats_type: int, object_identity: StatsIdentity) -> bool:
        """Whether `caller` has that stats page mapped (the ABI layer's check of a layout)."""
        with self.lock:
            try:
                obj, area = self._stats_object(caller, stats_type, object_identity)
            except HvError:
                return False
            return (caller, obj, area) in self._stats_pages

    def _release_stats_page(self, key: tuple[int, StatsObject, int]) -> None:
        m = self._stats_pages.pop(key)
        d = self._stats_page_deposits.pop(key, None)
        if d is None:
            self._unref_backing(m.backing)
            return
        owner = self._partitions.get(m.caller)
        if owner is not None:
            owner.pool.append(d)
        else:
            self._return_deposit(d)

    # ---- ports and connections between partitions (0x0095, 0x0058, 0x0096, 0x005B) ----------------
    def attach_ports(self, partition_id: int, table: PartitionPorts) -> None:
        """The running layer: partition_id's SynICs are `table`'s; deliveries to its ports go there,
        and its guest's HvCallPostMessage / SignalEvent on a registry connection come here."""
        with self.lock:
            self._lookup(partition_id)
            waiting = self.port_registry.attach(partition_id, table)
            table.remote = RemoteEnd(partition_id, self.deliver_message, self.deliver_event)
        for port in waiting:  # the table's lock, after the engine's (docs/partitions.md "Locks")
            st = self.port_registry.materialize(port, table)
            if st != HvStatus.SUCCESS:  # the guest took the ID meanwhile: the registry's port goes
                with self.lock:
                    self.port_registry.remove_port(port.partition_id, port.port_id)

    def create_port(
        self, caller: int, port_partition_id: int, port_id: int, port_vtl: int, min_connection_vtl: int,
        connection_partition_id: int, port_type: int, target_vp: int = 0, target_sint: int = 0,
        base_flag_number: int = 0, flag_count: int = 0, monitor_address: int = 0,
    ) -> None:  # fmt: skip
        """HvCallCreatePort: a port in port_partition_id (the caller or its child) that
        connection_partition_id (the caller or its child) may connect to (hv1/hv/port_registry.py)."""
        with self.lock:
            c = self._caller(caller)
            self._need(c, PartitionPrivilege.CreatePort)
            pp = self._self_or_child(caller, port_partition_id)
            cp = self._self_or_child(caller, connection_partition_id)
            for p in (pp, cp):
                self._state(p, PartitionState.CREATED, PartitionState.INITIALIZED, PartitionState.ACTIVE)
            if port_vtl or min_connection_vtl:
                raise HvError(HvStatus.INVALID_PARAMETER, "hv1 has VTL 0 only")
            if port_type not in (PortType.MESSAGE, PortType.EVENT, PortType.MONITOR):
                raise HvError(
                    HvStatus.INVALID_PARAMETER, f"port type {port_type} (doorbells: not implemented)"
                )
            if port_type != PortType.MONITOR:
                if not 0 <= target_sint < SINT_COUNT:
                    raise HvError(HvStatus.INVALID_PARAMETER, f"SINT {target_sint}")
                if (
                    pp.id not in self.port_registry.tables
                    and target_vp != HV_ANY_VP
                    and target_vp not in pp.vps
                ):
                    raise HvError(HvStatus.INVALID_VP_INDEX, f"no VP {target_vp}")
            if port_type == PortType.EVENT and (
                flag_count < 1 or base_flag_number + flag_count > HV_EVENT_FLAGS_COUNT
            ):
                raise HvError(HvStatus.INVALID_PARAMETER, f"event flags {base_flag_number}+{flag_count}")
            port = RegistryPort(
                pp.id, port_id, PortType(port_type), cp.id, c.id, target_vp, target_sint,
                base_flag_number, flag_count, monitor_address,
            )  # fmt: skip
            st = self.port_registry.add_port(port)
            if st != HvStatus.SUCCESS:
                raise HvError(st, f"port {port_id:#x} of partition {pp.id:#x}")
            table = self.port_registry.tables.get(pp.id)
        if table is None:
            return  # materialized when the partition's SynICs are attached
        # Without the engine lock: the port partition is the caller or its child, so its ID is not
        # below the caller's (ascending order).
        st = self.port_registry.materialize(port, table)
        if st != HvStatus.SUCCESS:
            with self.lock:
                if self.port_registry.ports.get((pp.id, port_id)) is port:
                    self.port_registry.remove_port(pp.id, port_id)
            raise HvError(st, f"port {port_id:#x} of partition {pp.id:#x}")

    def delete_port(self, caller: int, port_partition_id: int, port_id: int) -> None:
        """HvCallDeletePort: the creator deletes; queued messages are freed, connections stay, useless
        (INVALID_PORT_ID), until disconnected."""
        with self.lock:
            c = self._caller(caller)
            self._need(c, PartitionPrivilege.CreatePort)
            pp = self._self_or_child(caller, port_partition_id)
            port = self.port_registry.ports.get((pp.id, port_id))
            if port is None:
                raise HvError(HvStatus.INVALID_PORT_ID, f"port {port_id:#x} of partition {pp.id:#x}")
            if port.created_by != c.id:
                raise HvError(HvStatus.ACCESS_DENIED, "only the creator deletes a port")
            self.port_registry.remove_port(pp.id, port_id)
            table = self.port_registry.tables.get(pp.id)
        if table is not None:
            self.port_registry.unmaterialize(port, table)

    def connect_port(
        self, caller: int, connection_partition_id: int, connection_id: int, connection_vtl: int,
        port_partition_id: int, port_id: int, port_type: int, monitor_address: int = 0,
    ) -> None:  # fmt: skip
        """HvCallConnectPort: a connection in connection_partition_id (the caller or its child) to a
        port that was created for that partition."""
        with self.lock:
            c = self._caller(caller)
            self._need(c, PartitionPrivilege.ConnectPort)
            cp = self._self_or_child(caller, connection_partition_id)
            self._state(cp, PartitionState.CREATED, PartitionState.INITIALIZED, PartitionState.ACTIVE)
            pp = self._lookup(caller if port_partition_id == HV_PARTITION_ID_SELF else port_partition_id)
            if connection_vtl:
                raise HvError(HvStatus.INVALID_PARAMETER, "hv1 has VTL 0 only")
            port = self.port_registry.ports.get((pp.id, port_id))
            if port is None:
                raise HvError(HvStatus.INVALID_PORT_ID, f"port {port_id:#x} of partition {pp.id:#x}")
            if port.connection_partition_id != cp.id:
                raise HvError(HvStatus.ACCESS_DENIED, f"port {port_id:#x} is not for partition {cp.id:#x}")
            if port_type != port.port_type:
                raise HvError(HvStatus.INVALID_PARAMETER, "HV_CONNECTION_INFO.PortType must match the port")
            if connection_id & ~HV_PORT_ID_MASK or self.port_registry.connection_id_taken(
                cp.id, connection_id
            ):
                raise HvError(HvStatus.INVALID_CONNECTION_ID, f"connection {connection_id:#x}")
            self.port_registry.connections[(cp.id, connection_id)] = RegistryConnection(
                cp.id, connection_id, port, c.id, monitor_address
            )

    def disconnect_port(self, caller: int, connection_partition_id: int, connection_id: int) -> None:
        """HvCallDisconnectPort: "will not affect undelivered (queued) messages"."""
        with self.lock:
            c = self._caller(caller)
            self._need(c, PartitionPrivilege.ConnectPort)
            cp = self._self_or_child(caller, connection_partition_id)
            conn = self.port_registry.connections.get((cp.id, connection_id))
            if conn is None:
                raise HvError(HvStatus.INVALID_CONNECTION_ID, f"connection {connection_id:#x}")
            if conn.created_by != c.id:
                raise HvError(HvStatus.ACCESS_DENIED, "only the creator removes a connection")
            del self.port_registry.connections[(cp.id, connection_id)]

    def _connection(
        self, partition_id: int, connection_id: int, want: PortType
    ) -> RegistryConnection | HvStatus:
        conn = self.port_registry.connections.get((partition_id, connection_id))
        if conn is None:
            return HvStatus.INVALID_CONNECTION_ID
        if conn.port.deleted or conn.port.port_type != want:
            return HvStatus.INVALID_PORT_ID
        return conn

    def deliver_message(
        self, partition_id: int, sender_vp: int, connection_id: int, message_type: int,
        payload: bytes | bytearray | memoryview, payload_size: int | None = None,
    ) -> HvStatus:  # fmt: skip
        """HvCallPostMessage of partition_id on a registry connection (the statuses of
        HvCallPostMessage.md, in its order). Call with no engine lock held."""
        size = len(payload) if payload_size is None else payload_size
        with self.lock:
            conn = self._connection(partition_id, connection_id, PortType.MESSAGE)
            if isinstance(conn, HvStatus):
                return conn
            if (
                not message_type
                or message_type & HV_MESSAGE_TYPE_HYPERVISOR_MASK
                or size > HV_MESSAGE_PAYLOAD_SIZE
            ):
                return HvStatus.INVALID_PARAMETER
            conn.stats["messages"] += 1
            port = conn.port
        data = bytes(payload[:size])
        return self.port_registry.deliver(
            partition_id, port.partition_id, f"message on connection {connection_id:#x}",
            lambda table: table.post_to_port(port.port_id, message_type, data),
        )  # fmt: skip

    def deliver_event(
        self, partition_id: int, sender_vp: int, connection_id: int, flag_number: int
    ) -> HvStatus:
        """HvCallSignalEvent of partition_id on a registry connection."""
        with self.lock:
            conn = self._connection(partition_id, connection_id, PortType.EVENT)
            if isinstance(conn, HvStatus):
                return conn
            if not 0 <= flag_number < conn.port.flag_count:
                return HvStatus.INVALID_PARAMETER
            conn.stats["events"] += 1
            port = conn.port
        return self.port_registry.deliver(
            partition_id, port.partition_id, f"event on connection {connection_id:#x}",
            lambda table: table.signal_port(port.port_id, flag_number),
        )  # fmt: skip

    def flush_port_deliveries(self, partition_id: int | None = None) -> int:
        """Make deliveries queued because their target's lock was busy (hv1/hv/port_registry.py).
        Call with no partition lock held."""
        return self.port_registry.flush(partition_id)

    def stats_pages_mapped(self) -> bool:
        return bool(self._stats_pages)
