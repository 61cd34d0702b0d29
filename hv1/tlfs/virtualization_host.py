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

# ---- issue 11: the rest of the root-partition calls (hypercalls/*.md; tlfs-inventory.md §5, §6.4.5) ----
# HvCallGetVpCpuidValues (rep): header PartitionId u64 @0, VpIndex u32 @8, Flags u32 @12, ReservedZ u32
# @16 (+4 padding to the 8-aligned list); rep element HV_CPUID_LEAF_INFO {Eax (leaf) u32, Ecx (subleaf)
# u32} @24; rep output HV_CPUID_RESULT {Eax, Ebx, Ecx, Edx}.
GET_VP_CPUID_VALUES_HEADER = struct.Struct("<QIII4x")
CPUID_LEAF_INFO = struct.Struct("<II")
CPUID_RESULT = struct.Struct("<IIII")


class GetVpCpuidValuesFlags(enum.IntFlag):
    """HV_GET_VP_CPUID_VALUES_FLAGS (u32)."""

    USE_VP_XFEM_XSS = 1 << 0
    APPLY_REGISTERED_VALUES = 1 << 1


GET_VP_CPUID_VALUES_FLAGS_DEFINED = 0x3

# HvCallCheckForIoIntercept: PartitionId u64 @0, VpIndex u32 @8, TargetVtl u8 @12, padding u8 @13,
# Port u16 @14, Size u8 @16, IsWrite u8 @17; output Intercept u8 (BOOLEAN).
CHECK_FOR_IO_INTERCEPT_INPUT = struct.Struct("<QIBBHBB")
CHECK_FOR_IO_INTERCEPT_OUTPUT = struct.Struct("<B")
IO_ACCESS_SIZES = (1, 2, 4)

# HvCallRegisterInterceptResult / HvCallUnregisterInterceptResult: PartitionId u64 @0, VpIndex u32 @8,
# InterceptType u32 @12, Parameters @16.
INTERCEPT_RESULT_HEADER = struct.Struct("<QII")
# HV_REGISTER_X64_CPUID_RESULT_PARAMETERS. The md page shows only the Result half (Eax, EaxMask, ...
# EdxMask); without the Input half nothing names the leaf, so hv1 takes the layout of Microsoft's
# published headers (Linux include/hyperv/hvhdk.h, the one every mshv root sends): Input {Eax (leaf)
# u32, Ecx (subleaf) u32, SubleafSpecific u8, AlwaysOverride u8, padding u16} @16, then Result {Eax,
# EaxMask, Ebx, EbxMask, Ecx, EcxMask, Edx, EdxMask} @28 (hv1 info --hv root deviations).
REGISTER_CPUID_RESULT = struct.Struct("<IIBBH8I")
# HV_UNREGISTER_X64_CPUID_RESULT_PARAMETERS: Eax (leaf) u32, Ecx (subleaf) u32, SubleafSpecific u8.
UNREGISTER_CPUID_RESULT = struct.Struct("<IIB3x")
# HV_REGISTER_X64_MSR_RESULT_PARAMETERS: MsrIndex u32, AccessType u32, Action u32
# (HV_UNIMPLEMENTED_MSR_ACTION); the unregister form is MsrIndex, AccessType.
REGISTER_MSR_RESULT = struct.Struct("<III4x")
UNREGISTER_MSR_RESULT = struct.Struct("<II")
INTERCEPT_RESULT_INPUT_SIZE = INTERCEPT_RESULT_HEADER.size + REGISTER_CPUID_RESULT.size  # the larger form
CPUID_ALL_SUBLEAVES = 0  # SubleafSpecific = 0: the result applies to every subleaf of the leaf


class UnimplementedMsrAction(enum.IntEnum):
    """HV_UNIMPLEMENTED_MSR_ACTION."""

    FAULT = 0  # #GP
    IGNORE_WRITE_READ_ZERO = 1


# HvCallTranslateVirtualAddressEx: input as HvCallTranslateVirtualAddress (Reserved u32 @12 must be
# zero); output HV_TRANSLATE_GVA_RESULT_EX (16 bytes @0 on the md page: ResultCode u32, CacheType:8 /
# OverlayPage:1 u32, EventInfo (HV_X64_PENDING_EVENT) 8 bytes) and GpaPage @16. Linux's hvhdk.h gives
# EventInfo 40 bytes (GpaPage @48): hv1 follows the md page (hv1 info --hv root deviations).
TRANSLATE_EX_INPUT = struct.Struct("<QIIQQ")
TRANSLATE_EX_OUTPUT = struct.Struct("<QQQ")  # ResultCode|CacheType<<32, EventInfo, GpaPage

# HvCallAssertVirtualInterrupt: TargetPartition u64 @0, InterruptControl u64 @8, DestinationAddress
# u64 @16, RequestedVector u32 @24, TargetVtl u8 @28, ReservedZ0 u8 @29, ReservedZ1 u16 @30.
ASSERT_VIRTUAL_INTERRUPT_INPUT = struct.Struct("<QQQIBBH")


class InterruptType(enum.IntEnum):
    """HV_INTERRUPT_TYPE (x64)."""

    FIXED = 0
    LOWEST_PRIORITY = 1
    SMI = 2
    REMOTE_READ = 3
    NMI = 4
    INIT = 5
    SIPI = 6
    EXT_INT = 7
    LOCAL_INT0 = 8
    LOCAL_INT1 = 9


# HV_X64_INTERRUPT_CONTROL (u64): InterruptType 31:0, LevelTriggered 32, LogicalDestinationMode 33,
# Reserved 63:34.
INTERRUPT_CONTROL_LEVEL = 1 << 32
INTERRUPT_CONTROL_LOGICAL = 1 << 33
INTERRUPT_CONTROL_RESERVED = ~((1 << 34) - 1) & ((1 << 64) - 1)
HV_INTERRUPT_VECTOR_NONE = 0xFFFF_FFFF

# HvCallMapVpStatePage: PartitionId u64 @0, VpIndex u32 @8, Type u16 @12, InputVtl u8 @14, Flags u8
# @15, RequestedMapLocation u64 @16; output MapLocation u64. HvCallUnmapVpStatePage: the first 16.
MAP_VP_STATE_PAGE_INPUT = struct.Struct("<QIHBBQ")
UNMAP_VP_STATE_PAGE_INPUT = struct.Struct("<QIHBB")
MAP_VP_STATE_PAGE_LOCATION_PROVIDED = 1  # Flags bit 0: MapLocationProvided


class VpStatePageType(enum.IntEnum):
    """HV_VP_STATE_PAGE_TYPE."""

    REGISTERS = 0
    INTERCEPT_MESSAGE = 1
    GHCB = 2  # AMD SEV-SNP only


# HvCallMapStatsPage2: StatsType u32 @0, Reserved u32 @4, ObjectIdentity 16 B @8, MapLocation u64 @24.
MAP_STATS_PAGE2_INPUT = struct.Struct("<II16sQ")
# HvCallUnmapStatsPage (md page): StatsType u32 @0, ObjectIdentity 16 B @4. Linux's hvhdk_mini.h pads
# to @8 (StatsType, padding, ObjectIdentity): hv1 reads the md layout, and the padded one when the md
# reading names no mapped page and bytes 4-7 are zero (no md PartitionId has a zero low half).
UNMAP_STATS_PAGE_INPUT = struct.Struct("<I16s")
UNMAP_STATS_PAGE_INPUT_PADDED = struct.Struct("<I4x16s")
# HvCallMapStatsPage (0x006C, no md page; Linux's hvhdk_mini.h): StatsType u32 @0, padding u32 @4,
# ObjectIdentity 16 B @8; output MapLocation u64 (the hypervisor supplies the page).
MAP_STATS_PAGE_INPUT = struct.Struct("<II16s")
# HV_STATS_OBJECT_IDENTITY: PartitionId u64 @0 (ReservedZ0 for the hypervisor), VpIndex u32 @8
# (ReservedZ1 for partition and hypervisor), ReservedZ2 u16 @12, ReservedZ3 u8 @14, StatsAreaType u8 @15.
STATS_OBJECT_IDENTITY = struct.Struct("<QIHBB")
