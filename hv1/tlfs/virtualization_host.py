"""Virtualization host: partition lifecycle, memory pools and GPA mapping (TLFS virtualization-host.md,
hypercalls/HvCallCreatePartition.md ... HvCallModifySparseGpaPages.md, datatypes/hv_map_gpa_flags.md,
hv_unmap_gpa_flags.md, hv_partition_creation_flags.md, hv_gpa_mapping.md).

Data only: the behaviour is in hv1/hv/hypervisor.py.
"""

from __future__ import annotations

import enum
import struct

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT


class PartitionState(enum.Enum):
    """virtualization-host.md "Partition States". A call outside what a state allows fails with
    HV_STATUS_INVALID_PARTITION_STATE."""

    CREATED = "Created"  # configure properties, deposit memory
    INITIALIZED = "Initialized"  # create VPs, adjust (non-early) properties
    ACTIVE = "Active"  # executing guest code, configuration locked
    FINALIZED = "Finalized"  # withdraw memory, delete
    DELETED = "Deleted"


class PartitionCreationFlags(enum.IntFlag):
    """HV_PARTITION_CREATION_FLAGS (u64)."""

    SMT_ENABLED_GUEST = 1 << 0
    NESTED_VIRTUALIZATION_CAPABLE = 1 << 1
    GPA_SUPER_PAGES_ENABLED = 1 << 4
    EXO_PARTITION = 1 << 8
    VTL1_OVERRIDE = 1 << 9
    VTL2_OVERRIDE = 1 << 10
    LAPIC_ENABLED = 1 << 13
    ENABLE_PERFMON_PMU = 1 << 15
    ENABLE_PERFMON_LBR = 1 << 16
    INTERCEPT_MESSAGE_PAGE_ENABLED = 1 << 19
    HYPERCALL_DOORBELL_PAGE_ENABLED = 1 << 20
    X2APIC_CAPABLE = 1 << 22


PARTITION_CREATION_FLAGS_DEFINED = 0
for _f in PartitionCreationFlags:
    PARTITION_CREATION_FLAGS_DEFINED |= _f.value


class MapGpaFlags(enum.IntFlag):
    """HV_MAP_GPA_FLAGS (u32; the map hypercalls carry it in a u64 field)."""

    READABLE = 0x1
    WRITABLE = 0x2
    KERNEL_EXECUTABLE = 0x4
    USER_EXECUTABLE = 0x8
    # bits 16-17: mutually exclusive special encodings
    NO_ACCESS = 0x10000
    ZEROED = 0x20000
    ONES = 0x30000
    NO_OVERLAY = 0x100000
    NOT_CACHED = 0x200000
    CLEAR_ACCESSED = 0x01000000
    SET_ACCESSED = 0x02000000
    CLEAR_DIRTY = 0x04000000
    SET_DIRTY = 0x08000000
    DONT_SET_RANGE_ACCESSED = 0x10000000
    LARGE_PAGE = 0x80000000


MAP_GPA_PERMISSIONS = 0xF
MAP_GPA_EXECUTABLE = MapGpaFlags.KERNEL_EXECUTABLE | MapGpaFlags.USER_EXECUTABLE
MAP_GPA_SPECIAL_MASK = 0x30000
MAP_GPA_FLAGS_DEFINED = 0
for _m in MapGpaFlags:
    MAP_GPA_FLAGS_DEFINED |= _m.value


class UnmapGpaFlags(enum.IntFlag):
    """HV_UNMAP_GPA_FLAGS (u32)."""

    KEEP_PRECOMMITTED = 1 << 1
    LARGE_PAGE = 1 << 2


UNMAP_GPA_FLAGS_DEFINED = UnmapGpaFlags.KEEP_PRECOMMITTED | UnmapGpaFlags.LARGE_PAGE
LARGE_PAGE_PAGES = 512  # hv_unmap_gpa_flags.md: a large page is 2 MiB on this interface

# Input layouts (x64; little-endian; offsets as in the hypercall pages).
# HvCallCreatePartition, 56 bytes: Flags, ProximityDomainInfo, CompatibilityVersion, padding,
# DisabledProcessorFeatures (16 B), DisabledProcessorXsaveFeatures, ReservedZ0 (Linux's mshv puts
# isolation properties at 48, where the md page has ReservedZ0: see hv1 info --hv root deviations).
CREATE_PARTITION_INPUT = struct.Struct("<QQII16sQQ")
# HvCallMapGpaPages header: TargetPartitionId, TargetGpaBase, MapFlags; rep element: u64 page.
MAP_GPA_PAGES_HEADER = struct.Struct("<QQQ")
# HvCallMapSparseGpaPages header: TargetPartitionId, MapFlags; rep element HV_GPA_MAPPING.
MAP_SPARSE_GPA_PAGES_HEADER = struct.Struct("<QQ")
GPA_MAPPING = struct.Struct("<QQ")  # TargetGpaPageNumber, SourceGpaPageNumber
# HvCallModifySparseGpaPages header: TargetPartitionId, MapFlags u32, Rsvdz u32.
MODIFY_SPARSE_GPA_PAGES_HEADER = struct.Struct("<QII")
# HvCallUnmapGpaPages: TargetPartitionId, TargetGpaBase, UnmapFlags u32 (+4 padding).
UNMAP_GPA_PAGES_INPUT = struct.Struct("<QQI4x")
# HvCallDepositMemory header: PartitionId; rep element: u64 page.
DEPOSIT_MEMORY_HEADER = struct.Struct("<Q")
# HvCallWithdrawMemory / HvCallGetMemoryBalance: PartitionId, ProximityDomainInfo.
PARTITION_AND_DOMAIN = struct.Struct("<QQ")
MEMORY_BALANCE_OUTPUT = struct.Struct("<QQ")  # PagesAvailable @0, PagesInUse @8 (md shows both @0)
# HvCallGetNextChildPartition: ParentPartitionId, PreviousChildPartitionId -> NextChildPartitionId.
GET_NEXT_CHILD_INPUT = struct.Struct("<QQ")
