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

Lock order: `Hypervisor.lock` is taken before any `hv1.hv.partition.Partition.lock` and never
while one is held.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from hv1.hv.gpa_map import GpaMap, GpaMapping, rights_valid, special_backing
from hv1.hv.gpa_memory import PartitionMemory
from hv1.hv.intercepts import InterceptError, InterceptTable
from hv1.hv.interfaces import GuestMemory
from hv1.hv.translate import PagingState, flags_error, translate_gva
from hv1.hv.vp_registers import RegisterError, VpRegisterFile
from hv1.tlfs.partition import (
    HV_PARTITION_ID_INVALID,
    HV_PARTITION_ID_SELF,
    PartitionPrivilege,
    PartitionPropertyCode,
)
from hv1.tlfs.registers import HvRegisterName
from hv1.tlfs.status import HvStatus
from hv1.tlfs.virtualization_host import (
    LARGE_PAGE_PAGES,
    MAP_GPA_FLAGS_DEFINED,
    MAP_GPA_PERMISSIONS,
    PARTITION_CREATION_FLAGS_DEFINED,
    UNMAP_GPA_FLAGS_DEFINED,
    MapGpaFlags,
    PartitionState,
    UnmapGpaFlags,
)
from hv1.tlfs.vp import HV_ANY_VP, HV_VP_INDEX_SELF

ROOT_PARTITION_ID = 1
ROOT_RAM_FLAGS = int(
    MapGpaFlags.READABLE | MapGpaFlags.WRITABLE | MapGpaFlags.KERNEL_EXECUTABLE | MapGpaFlags.USER_EXECUTABLE
)
MAX_PARTITION_DEPTH = 2  # root (0) -> child (1) -> grandchild (2); deeper is PARTITION_TOO_DEEP
MAX_VPS_PER_PARTITION = 64  # the machine's --cpus limit

# Pool pages each object costs the partition it belongs to (hv1's accounting, see module doc).
POOL_COSTS = {
    "initialize": 16,  # partition-wide structures, charged by InitializePartition
    "vp": 4,  # per VP, charged by CreateVp
    "gpa_table": 1,  # per 512-page group of the GPA map in use, charged by the map calls
}

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
    stop running and when a partition's memory or existence changes. Every call is made under
    `Hypervisor.lock` and must not block on anything a VP thread holds (it may kick and park the
    partition's VPs, which serve such requests while they wait for the lock)."""

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
        self, root_pages: int, root_privileges: int = ROOT_PRIVILEGES, ram: GuestMemory | None = None
    ) -> None:
        self.lock = threading.RLock()
        # The root's RAM (the backing of every GPA map); needed by the calls that touch guest memory.
        self.ram = ram
        # Called (under `lock`: it must not block) when a VP's last suspension reason is cleared, with
        # (partition id, VP index): the machine starts or resumes running it.
        self.on_vp_resumed: Callable[[int, int], None] | None = None
        # What runs the partitions' VPs (hv1/machine/child.py), if anything does.
        self.runtime: PartitionRuntime | None = None
        self._next_id = ROOT_PARTITION_ID
        self._partitions: dict[int, PartitionRecord] = {}
        self._refs: dict[int, int] = {}  # backing page -> mappings in children that use it
        root = self._new(None, 0, root_privileges, PartitionState.ACTIVE)
        for page in range(root_pages):
            root.gpa.map(page, GpaMapping(page, ROOT_RAM_FLAGS))
        self.root_id = root.id

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
            return child.id

    def initialize_partition(self, caller: int, partition_id: int) -> None:
        """HvCallInitializePartition (0x0041): Created -> Initialized."""
        with self.lock:
            p = self._child(caller, partition_id)
            self._state(p, PartitionState.CREATED)
            self._charge(p, POOL_COSTS["initialize"])
            p.initialized = True
            p.state = PartitionState.INITIALIZED

    def finalize_partition(self, caller: int, partition_id: int) -> None:
        """HvCallFinalizePartition (0x0042): delete the VPs, unmap the GPA space; afterwards only
        WithdrawMemory and DeletePartition are allowed."""
        with self.lock:
            p = self._child(caller, partition_id)
            self._state(p, PartitionState.CREATED, PartitionState.INITIALIZED, PartitionState.ACTIVE)
            if self.runtime is not None:
                self.runtime.partition_stopping(p.id)  # no VP runs past this point
            p.vps.clear()
            for m in p.gpa.clear():
                self._unref(m)
            p.initialized = False  # its structures are gone: the whole pool is available again
            p.state = PartitionState.FINALIZED

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
        with self.lock:
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
            return len(gpa_page_list)

    def unmap_gpa_pages(
        self, caller: int, target_partition_id: int, target_gpa_base: int, count: int, unmap_flags: int = 0
    ) -> int:
        """HvCallUnmapGpaPages (0x004C, rep, no list): unmap `count` pages (2 MiB pages with
        HV_UNMAP_GPA_LARGE_PAGE) from target_gpa_base on."""
        with self.lock:
            p = self._child(caller, target_partition_id)
            self._state(p, PartitionState.CREATED, PartitionState.INITIALIZED, PartitionState.ACTIVE)
            if unmap_flags & ~UNMAP_GPA_FLAGS_DEFINED:
                raise HvError(HvStatus.INVALID_PARAMETER, f"undefined unmap flags {unmap_flags:#x}")
            step = LARGE_PAGE_PAGES if unmap_flags & UnmapGpaFlags.LARGE_PAGE else 1
            if step > 1 and target_gpa_base % step:
                raise HvError(HvStatus.INVALID_PARAMETER, "large-page unmap of an unaligned base")
            try:
                for i in range(count):
                    first = target_gpa_base + i * step
                    pages = range(first, first + step)
                    if any(pg not in p.gpa for pg in pages):
                        raise HvError(HvStatus.INVALID_PARAMETER, f"target page {first:#x} is not mapped", i)
                    for pg in pages:
                        self._unref(p.gpa.unmap(pg))
            finally:
                self._memory_changed(p)  # what was unmapped is gone for the VPs before this returns
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
            if p is not None and suspended and vp.suspended and self.runtime is not None:
                self.runtime.vp_suspended(p.id, vp_index)  # it stops and saves its state soon
            if resumed and p is not None and not vp.suspended:
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
        with self.lock:
            c = self._caller(caller)
            p = self._child(caller, target)
            self._state(p, PartitionState.CREATED, PartitionState.INITIALIZED, PartitionState.ACTIVE)
            self._check_map_flags(flags)
            special = special_backing(flags)
            large = bool(flags & MapGpaFlags.LARGE_PAGE)
            step = LARGE_PAGE_PAGES if large else 1
            done = 0
            try:
                for target_page, source_page in pairs:
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
            return done

    def _memory_changed(self, p: PartitionRecord) -> None:
        if self.runtime is not None:
            self.runtime.memory_changed(p.id)

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
