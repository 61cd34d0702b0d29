"""Feature and interface discovery: TLFS feature-discovery.md (x64), the Requirements doc
("Hypervisor CPUID Leaves") and tlfs-inventory.md §2 for bits named only by Linux / the SDK ([ext]).

Flag member names follow the Windows SDK / Linux names where the TLFS gives only a description.
"""

from __future__ import annotations

import enum

from hv1.tlfs.partition import PartitionPrivilege

# CPUID.01h:ECX[31] "hypervisor present" (feature-discovery.md "Hypervisor Discovery").
CPUID_1_ECX_HYPERVISOR_PRESENT = 1 << 31

# Leaf numbers.
HV_CPUID_VENDOR_AND_MAX_FUNCTIONS = 0x40000000
HV_CPUID_INTERFACE = 0x40000001
HV_CPUID_VERSION = 0x40000002
HV_CPUID_FEATURES = 0x40000003
HV_CPUID_ENLIGHTENMENT_INFO = 0x40000004
HV_CPUID_IMPLEMENTATION_LIMITS = 0x40000005
HV_CPUID_HARDWARE_FEATURES = 0x40000006
HV_CPUID_CPU_MANAGEMENT_FEATURES = 0x40000007
HV_CPUID_SVM_FEATURES = 0x40000008
HV_CPUID_NESTED_HYPERVISOR_FEATURES = 0x40000009
HV_CPUID_NESTED_FEATURES = 0x4000000A

LEAF_NAMES = {
    HV_CPUID_VENDOR_AND_MAX_FUNCTIONS: "Hypervisor CPUID leaf range and vendor",
    HV_CPUID_INTERFACE: "Hypervisor vendor-neutral interface identification",
    HV_CPUID_VERSION: "Hypervisor system identity",
    HV_CPUID_FEATURES: "Hypervisor feature identification",
    HV_CPUID_ENLIGHTENMENT_INFO: "Implementation recommendations",
    HV_CPUID_IMPLEMENTATION_LIMITS: "Hypervisor implementation limits",
    HV_CPUID_HARDWARE_FEATURES: "Implementation hardware features",
    HV_CPUID_CPU_MANAGEMENT_FEATURES: "CPU management features (root only)",
    HV_CPUID_SVM_FEATURES: "Shared virtual memory (SVM) features",
    HV_CPUID_NESTED_HYPERVISOR_FEATURES: "Nested hypervisor feature identification",
    HV_CPUID_NESTED_FEATURES: "Nested virtualization features",
}

# "On Microsoft hypervisors, this will be at least 0x40000005" (leaf 0x40000000 EAX); guests check it.
HV_CPUID_MIN_MAX_LEAF = HV_CPUID_IMPLEMENTATION_LIMITS

HV_VENDOR_MICROSOFT = "Microsoft Hv"  # EBX 0x7263694D "Micr", ECX 0x666F736F "osof", EDX 0x76482074 "t Hv"
HV_INTERFACE_HV1 = 0x31237648  # "Hv#1" in leaf 0x40000001 EAX


def vendor_registers(vendor: str) -> tuple[int, int, int]:
    """EBX, ECX, EDX of leaf 0x40000000 for a 12-character ASCII vendor signature."""
    raw = vendor.encode("ascii")[:12].ljust(12, b"\0")
    return (
        int.from_bytes(raw[0:4], "little"),
        int.from_bytes(raw[4:8], "little"),
        int.from_bytes(raw[8:12], "little"),
    )


# Leaf 0x40000002 fields.
VERSION_MAJOR_SHIFT = 16  # EBX 31:16
VERSION_MINOR_MASK = 0xFFFF  # EBX 15:0
VERSION_SERVICE_BRANCH_SHIFT = 24  # EDX 31:24
VERSION_SERVICE_NUMBER_MASK = 0x00FF_FFFF  # EDX 23:0

# Leaf 0x40000003 EAX/EBX are HV_PARTITION_PRIVILEGE_MASK (re-exported for convenience).
Privilege = PartitionPrivilege


class FeaturesEcx(enum.IntFlag):
    """Leaf 0x40000003 ECX."""

    InvariantMperfAvailable = 1 << 5
    SupervisorShadowStackAvailable = 1 << 6
    ArchitecturalPmuAvailable = 1 << 7
    ExceptionTrapInterceptAvailable = 1 << 8
    VpDispatchInterruptInjectionAvailable = 1 << 9  # [ext]
    VpGhcbRootMappingAvailable = 1 << 10  # [ext]


class FeaturesEdx(enum.IntFlag):
    """Leaf 0x40000003 EDX: miscellaneous features."""

    MwaitAvailableDeprecated = 1 << 0
    GuestDebuggingAvailable = 1 << 1
    PerformanceMonitorsAvailable = 1 << 2
    CpuDynamicPartitioningAvailable = 1 << 3
    XmmRegistersForFastHypercallAvailable = 1 << 4  # XMM fast hypercall input (else #UD)
    GuestIdleAvailable = 1 << 5
    HypervisorSleepStateSupportAvailable = 1 << 6
    NumaDistanceQueryAvailable = 1 << 7
    FrequencyRegsAvailable = 1 << 8
    SyntheticMachineCheckAvailable = 1 << 9
    GuestCrashRegsAvailable = 1 << 10  # gates HV_X64_MSR_CRASH_P0..P4 / CRASH_CTL
    DebugRegsAvailable = 1 << 11
    Npiep1Available = 1 << 12
    DisableHypervisorAvailable = 1 << 13
    ExtendedGvaRangesForFlushVirtualAddressListAvailable = 1 << 14
    FastHypercallOutputAvailable = 1 << 15  # XMM fast hypercall output (else #UD)
    SvmFeaturesAvailable = 1 << 16  # [ext]
    SintPollingModeAvailable = 1 << 17
    HypercallMsrLockAvailable = 1 << 18
    DirectSyntheticTimers = 1 << 19
    RegisterPatAvailable = 1 << 20
    RegisterBndcfgsAvailable = 1 << 21
    WatchdogTimerAvailable = 1 << 22  # [ext]
    SyntheticTimeUnhaltedTimerAvailable = 1 << 23
    DeviceDomainsAvailable = 1 << 24  # [ext]
    S1DeviceDomainsAvailable = 1 << 25  # [ext]
    LbrAvailable = 1 << 26
    IptAvailable = 1 << 27  # [ext]
    CrossVtlFlushAvailable = 1 << 28  # [ext]


class Recommendations(enum.IntFlag):
    """Leaf 0x40000004 EAX: implementation recommendations."""

    UseHypercallForAddressSpaceSwitch = 1 << 0
    UseHypercallForLocalFlush = 1 << 1
    UseHypercallForRemoteFlushAndLocalFlushEntire = 1 << 2
    UseApicMsrs = 1 << 3
    UseHvRegisterForReset = 1 << 4
    UseRelaxedTiming = 1 << 5
    UseDmaRemappingDeprecated = 1 << 6
    UseInterruptRemappingDeprecated = 1 << 7
    UseX2ApicMsrs = 1 << 8  # md comment table / [ext]; the md main table says Reserved
    DeprecateAutoEoi = 1 << 9
    UseSyntheticClusterIpi = 1 << 10
    UseExProcessorMasks = 1 << 11
    Nested = 1 << 12
    UseIntForMbecSystemCalls = 1 << 13
    UseVmcsEnlightenments = 1 << 14
    UseSyncedTimeline = 1 << 15
    CoreSchedulerRequested = 1 << 16  # [ext]
    UseDirectLocalFlushEntire = 1 << 17
    NoNonArchitecturalCoreSharing = 1 << 18
    UseHypercallForMmioAccess = 1 << 21  # [ext]
    UseGpaPinningHypercall = 1 << 22  # ARM64 table
    WakeVps = 1 << 23  # ARM64 table
    MapPartitionEventLogBuffer = 1 << 26  # ARM64 table


# Leaf 0x40000004 EBX: spinlock retries before HvCallNotifyLongSpinWait. 0xFFFFFFFF = never notify
# (feature-discovery.md; the Requirements doc agrees, vp-properties.md says 0 = do not notify).
SPINLOCK_RETRIES_NEVER = 0xFFFF_FFFF
# Leaf 0x40000004 ECX 6:0: implemented physical address bits (0 = not reported).
IMPLEMENTED_PHYSICAL_ADDRESS_BITS_MASK = 0x7F

# Leaf 0x40000005: EAX max VPs, EBX max LPs, ECX max interrupt vectors for remapping; 0 = not reported.
MAX_VPS_UNLIMITED = 0xFFFF_FFFF  # Requirements doc "Maximum Supported Virtual Processors"


class HardwareFeatures(enum.IntFlag):
    """Leaf 0x40000006 EAX: hardware features detected and in use by the hypervisor."""

    ApicOverlayAssistInUse = 1 << 0
    MsrBitmapsInUse = 1 << 1
    ArchitecturalPerformanceCountersInUse = 1 << 2
    SecondLevelAddressTranslationInUse = 1 << 3
    DmaRemappingInUse = 1 << 4
    InterruptRemappingInUse = 1 << 5
    MemoryPatrolScrubberPresent = 1 << 6
    DmaProtectionInUse = 1 << 7
    HpetRequested = 1 << 8
    SyntheticTimersVolatile = 1 << 9
    PhysicalDestinationModeRequired = 1 << 14
    UseVmfuncForAliasMapSwitch = 1 << 15
    HvRegisterForMemoryZeroingSupported = 1 << 16
    UnrestrictedGuestSupported = 1 << 17
    RdtAFeaturesSupported = 1 << 18
    RdtMFeaturesSupported = 1 << 19
    ChildPerfmonPmuSupported = 1 << 20
    ChildPerfmonLbrSupported = 1 << 21
    ChildPerfmonIptSupported = 1 << 22
    ApicEmulationSupported = 1 << 23
    AcpiWdatTableInUse = 1 << 24


HARDWARE_HYPERVISOR_LEVEL_SHIFT = 10  # leaf 0x40000006 EAX 13:10
HARDWARE_HYPERVISOR_LEVEL_MASK = 0xF << HARDWARE_HYPERVISOR_LEVEL_SHIFT


class CpuManagementEax(enum.IntFlag):
    """Leaf 0x40000007 EAX (root partition only)."""

    StartLogicalProcessor = 1 << 0
    CreateRootVirtualProcessor = 1 << 1
    PerformanceCounterSync = 1 << 2
    ReservedIdentityBit = 1 << 31


class CpuManagementEbx(enum.IntFlag):
    """Leaf 0x40000007 EBX."""

    ProcessorPowerManagement = 1 << 0
    MwaitIdleStates = 1 << 1
    LogicalProcessorIdling = 1 << 2


class CpuManagementEcx(enum.IntFlag):
    """Leaf 0x40000007 ECX."""

    RemapGuestUncached = 1 << 0


class SvmFeaturesEax(enum.IntFlag):
    """Leaf 0x40000008 EAX (bits 31:11 MaxPasidSpacePasidCount)."""

    SvmSupported = 1 << 0


SVM_MAX_PASID_SHIFT = 11


class NestedHypervisorFeaturesEax(enum.IntFlag):
    """Leaf 0x40000009 EAX: privileges exposed when running nested."""

    AccessSynicRegs = 1 << 2
    AccessIntrCtrlRegs = 1 << 4
    AccessHypercallMsrs = 1 << 5
    AccessVpIndex = 1 << 6
    AccessReenlightenmentControls = 1 << 12


class NestedHypervisorFeaturesEdx(enum.IntFlag):
    """Leaf 0x40000009 EDX."""

    XmmRegistersForFastHypercallAvailable = 1 << 4
    FastHypercallOutputAvailable = 1 << 15
    SintPollingModeAvailable = 1 << 17


class NestedFeaturesEax(enum.IntFlag):
    """Leaf 0x4000000A EAX (bits 15:0 are the enlightened VMCS version)."""

    DirectVirtualFlush = 1 << 17
    FlushGuestPhysicalHypercalls = 1 << 18
    EnlightenedMsrBitmap = 1 << 19
    CombinedVirtualizationExceptions = 1 << 20
    GuestIa32DebugCtlNonZero = 1 << 21
    EnlightenedTlbAmd = 1 << 22


class NestedFeaturesEbx(enum.IntFlag):
    """Leaf 0x4000000A EBX."""

    GuestPerfGlobalCtrl = 1 << 0


NESTED_EVMCS_VERSION_MASK = 0xFFFF
