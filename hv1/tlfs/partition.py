"""Partitions: TLFS partition-properties.md, datatypes/hv_partition_privilege_mask.md,
datatypes/hv_partition_property_code.md, datatypes/hv_crash_ctl_reg_contents.md,
hypercalls/HvCallGetPartitionProperty.md; PDF §4 for HvCallGetPartitionId.
"""

from __future__ import annotations

import enum
import struct

# datatypes/hv_partition_id.md: IDs are allocated by the hypervisor, sequentially from 1.
HV_PARTITION_ID_INVALID = 0
HV_PARTITION_ID_SELF = 0xFFFF_FFFF_FFFF_FFFF


class PartitionPrivilege(enum.IntFlag):
    """HV_PARTITION_PRIVILEGE_MASK (64 bits). CPUID 0x40000003 EAX = bits 31:0, EBX = bits 63:32.

    Member names are the TLFS field names. Bits marked [ext] are named only by Linux / the Windows
    SDK (tlfs-inventory.md §2.5); the TLFS calls them Reserved.
    """

    # Access to synthetic MSRs (EAX)
    AccessVpRunTimeReg = 1 << 0
    AccessPartitionReferenceCounter = 1 << 1
    AccessSynicRegs = 1 << 2
    AccessSyntheticTimerRegs = 1 << 3
    AccessIntrCtrlRegs = 1 << 4
    AccessHypercallMsrs = 1 << 5
    AccessVpIndex = 1 << 6
    AccessResetReg = 1 << 7
    AccessStatsReg = 1 << 8
    AccessPartitionReferenceTsc = 1 << 9
    AccessGuestIdleReg = 1 << 10
    AccessFrequencyRegs = 1 << 11
    AccessDebugRegs = 1 << 12  # PDF v6.0b; the md marks it Reserved
    AccessReenlightenmentControls = 1 << 13
    AccessRootSchedulerReg = 1 << 14  # [ext]
    AccessTscInvariantControls = 1 << 15  # [ext]
    # Access to hypercalls (EBX, bit n here = EBX bit n-32)
    CreatePartitions = 1 << 32
    AccessPartitionId = 1 << 33
    AccessMemoryPool = 1 << 34
    AdjustMessageBuffers = 1 << 35  # Requirements doc; TLFS: Reserved
    PostMessages = 1 << 36
    SignalEvents = 1 << 37
    CreatePort = 1 << 38
    ConnectPort = 1 << 39
    AccessStats = 1 << 40
    Debugging = 1 << 43
    CpuManagement = 1 << 44
    ConfigureProfiler = 1 << 45  # Requirements doc; TLFS: Reserved
    AccessVpExitTracing = 1 << 46  # [ext]
    EnableExtendedGvaRangesForFlushVirtualAddressList = 1 << 47  # [ext]
    AccessVsm = 1 << 48
    AccessVpRegisters = 1 << 49
    FastHypercallOutput = 1 << 51  # [ext]
    EnableExtendedHypercalls = 1 << 52
    StartVirtualProcessor = 1 << 53
    Isolation = 1 << 54  # [ext]


# Requirements doc "CPUID.40000003:EBX": flags a conforming hypervisor must keep clear for a guest.
PRIVILEGES_MUST_BE_CLEAR = (
    PartitionPrivilege.CreatePartitions
    | PartitionPrivilege.AccessPartitionId
    | PartitionPrivilege.AccessMemoryPool
    | PartitionPrivilege.AdjustMessageBuffers
    | PartitionPrivilege.CreatePort
    | PartitionPrivilege.AccessStats
    | PartitionPrivilege.CpuManagement
    | PartitionPrivilege.ConfigureProfiler
)
# Requirements doc "CPUID.40000003:EAX": must be set.
PRIVILEGES_MUST_BE_SET = PartitionPrivilege.AccessHypercallMsrs | PartitionPrivilege.AccessVpIndex


class PartitionPropertyCode(enum.IntEnum):
    """HV_PARTITION_PROPERTY_CODE (u32)."""

    PrivilegeFlags = 0x00010000
    SyntheticProcFeatures = 0x00010001
    Suspend = 0x00020000
    CpuReserve = 0x00020001
    CpuCap = 0x00020002
    CpuWeight = 0x00020003
    CpuGroupId = 0x00020004
    TimeFreeze = 0x00030003
    ReferenceTime = 0x00030005
    VirtualTlbPageCount = 0x00050000
    VsmConfig = 0x00050001
    ZeroMemoryOnReset = 0x00050002
    ProcessorsPerSocket = 0x00050003
    NestedTlbSize = 0x00050004
    GpaPageAccessTracking = 0x00050005
    VsmPermissionsDirtySinceLastQuery = 0x00050006
    IsolationState = 0x0005000C
    IsolationControl = 0x0005000D
    AllocationId = 0x0005000E
    MonitoringId = 0x0005000F
    ImplementedPhysicalAddressBits = 0x00050010
    NonArchitecturalCoreSharing = 0x00050011
    HypercallDoorbellPage = 0x00050012
    IsolationPolicy = 0x00050014
    UnimplementedMsrAction = 0x00050017
    SevVmgexitOffloads = 0x00050022
    PartitionDiagBufferConfig = 0x00050026
    GicdBaseAddress = 0x00050028
    GitsTranslaterBaseAddress = 0x00050029
    ProcessorVendor = 0x00060000
    ProcessorXsaveFeatures = 0x00060002
    ProcessorCLFlushSize = 0x00060003
    EnlightenmentModifications = 0x00060004
    CompatibilityVersion = 0x00060005
    PhysicalAddressWidth = 0x00060006
    XsaveStates = 0x00060007
    MaxXsaveDataSize = 0x00060008
    ProcessorClockFrequency = 0x00060009
    ProcessorFeatures0 = 0x0006000A
    ProcessorFeatures1 = 0x0006000B
    GuestOsId = 0x00070000
    ProcessorVirtualizationFeatures = 0x00080000
    VmmCapabilities = 0x00090007
    SchedulingAffinitySet = 0x10001000  # HvPartitionVpPropertySchedulingAffinitySet


# PDF §14.2 scheduler defaults: reserve 0, cap 0x00010000 (= one whole LP, i.e. no cap), weight 100.
CPU_RESERVE_DEFAULT = 0
CPU_CAP_DEFAULT = 0x00010000
CPU_WEIGHT_DEFAULT = 100


class CrashCtl(enum.IntFlag):
    """HV_CRASH_CTL_REG_CONTENTS (HV_X64_MSR_CRASH_CTL)."""

    CrashNotify = 1 << 63  # P0-P4 are written: log them
    CrashMessage = 1 << 62  # with CrashNotify: P3 = message GPA, P4 = length in bytes
    NoCrashDump = 1 << 61  # a crash dump will not be captured


CRASH_CTL_PREOS_ID_SHIFT = 58  # bits 60:58 PreOSId
CRASH_CTL_PREOS_ID_MASK = 0x7 << CRASH_CTL_PREOS_ID_SHIFT
CRASH_MESSAGE_MAX = 4096  # partition-properties.md "maximum of 4096 bytes"

# --- hypercall layouts -------------------------------------------------------------------------
# HvCallGetPartitionId (0x0046), PDF §4.4: no input; output PartitionId u64 @0.
GET_PARTITION_ID_OUTPUT = struct.Struct("<Q")
# HvCallGetPartitionProperty (0x0044): input PartitionId u64 @0, PropertyCode u32 @8, RsvdZ u32 @12;
# output PropertyValue u64 @0.
GET_PARTITION_PROPERTY_INPUT = struct.Struct("<QII")
GET_PARTITION_PROPERTY_OUTPUT = struct.Struct("<Q")
