"""Hypercall call codes: TLFS PDF Appendix A, hypercalls/overview.md and tlfs-inventory.md §5
([ext] = code named by Linux / the Windows SDK only). Codes above 0x8000 are extended hypercalls
(hypercall-interface.md "Extended Hypercall Interface").
"""

from __future__ import annotations

import enum


class HypercallCode(enum.IntEnum):
    HvCallSwitchVirtualAddressSpace = 0x0001
    HvCallFlushVirtualAddressSpace = 0x0002
    HvCallFlushVirtualAddressList = 0x0003
    HvCallGetLogicalProcessorRunTime = 0x0004
    HvCallNotifyLongSpinWait = 0x0008
    HvCallParkedVirtualProcessors = 0x0009
    HvCallSendSyntheticClusterIpi = 0x000B
    HvCallModifyVtlProtectionMask = 0x000C
    HvCallEnablePartitionVtl = 0x000D
    HvCallDisablePartitionVtl = 0x000E
    HvCallEnableVpVtl = 0x000F
    HvCallDisableVpVtl = 0x0010
    HvCallVtlCall = 0x0011
    HvCallVtlReturn = 0x0012
    HvCallFlushVirtualAddressSpaceEx = 0x0013
    HvCallFlushVirtualAddressListEx = 0x0014
    HvCallSendSyntheticClusterIpiEx = 0x0015
    HvCallCreatePartition = 0x0040
    HvCallInitializePartition = 0x0041
    HvCallFinalizePartition = 0x0042
    HvCallDeletePartition = 0x0043
    HvCallGetPartitionProperty = 0x0044
    HvCallSetPartitionProperty = 0x0045
    HvCallGetPartitionId = 0x0046
    HvCallGetNextChildPartition = 0x0047
    HvCallDepositMemory = 0x0048
    HvCallWithdrawMemory = 0x0049
    HvCallGetMemoryBalance = 0x004A
    HvCallMapGpaPages = 0x004B
    HvCallUnmapGpaPages = 0x004C
    HvCallInstallIntercept = 0x004D
    HvCallCreateVp = 0x004E
    HvCallDeleteVp = 0x004F
    HvCallGetVpRegisters = 0x0050
    HvCallSetVpRegisters = 0x0051
    HvCallTranslateVirtualAddress = 0x0052
    HvCallReadGpa = 0x0053
    HvCallWriteGpa = 0x0054
    HvCallClearVirtualInterrupt = 0x0056
    HvCallDeletePort = 0x0058
    HvCallConnectPortLegacy = 0x0059  # App. A lists ConnectPort here too; current code is 0x0096
    HvCallGetPortProperty = 0x005A
    HvCallDisconnectPort = 0x005B
    HvCallPostMessage = 0x005C
    HvCallSignalEvent = 0x005D
    HvCallSavePartitionState = 0x005E
    HvCallRestorePartitionState = 0x005F
    HvCallInitializeEventLogBufferGroup = 0x0060
    HvCallFinalizeEventLogBufferGroup = 0x0061
    HvCallCreateEventLogBuffer = 0x0062
    HvCallDeleteEventLogBuffer = 0x0063
    HvCallMapEventLogBuffer = 0x0064
    HvCallUnmapEventLogBuffer = 0x0065
    HvCallSetEventLogGroupSources = 0x0066
    HvCallReleaseEventLogBuffer = 0x0067
    HvCallFlushEventLogBuffer = 0x0068
    HvCallPostDebugData = 0x0069
    HvCallRetrieveDebugData = 0x006A
    HvCallResetDebugSession = 0x006B
    HvCallMapStatsPage = 0x006C
    HvCallUnmapStatsPage = 0x006D
    HvCallMapSparseGpaPages = 0x006E
    HvCallSetSystemProperty = 0x006F
    HvCallSetPortProperty = 0x0070
    HvCallAddLogicalProcessor = 0x0076
    HvCallRemoveLogicalProcessor = 0x0077
    HvCallQueryNumaDistance = 0x0078
    HvCallSetLogicalProcessorProperty = 0x0079
    HvCallGetLogicalProcessorProperty = 0x007A
    HvCallGetSystemProperty = 0x007B
    HvCallMapDeviceInterrupt = 0x007C
    HvCallUnmapDeviceInterrupt = 0x007D
    HvCallRetargetDeviceInterrupt = 0x007E
    HvCallMapDevicePages = 0x0080
    HvCallUnmapDevicePages = 0x0081
    HvCallAttachDevice = 0x0082
    HvCallDetachDevice = 0x0083
    HvCallNotifyStandbyTransition = 0x0084
    HvCallPrepareForSleep = 0x0085
    HvCallPrepareForHibernate = 0x0086
    HvCallNotifyPartitionEvent = 0x0087
    HvCallGetLogicalProcessorRegisters = 0x0088
    HvCallSetLogicalProcessorRegisters = 0x0089
    HvCallQueryAssociatedLpsForMca = 0x008A
    HvCallNotifyPortRingEmpty = 0x008B
    HvCallInjectSyntheticMachineCheck = 0x008C
    HvCallScrubPartition = 0x008D
    HvCallCollectLivedump = 0x008E
    HvCallDisableHypervisor = 0x008F
    HvCallModifySparseGpaPages = 0x0090
    HvCallRegisterInterceptResult = 0x0091
    HvCallUnregisterInterceptResult = 0x0092
    HvCallAssertVirtualInterrupt = 0x0094
    HvCallCreatePort = 0x0095
    HvCallConnectPort = 0x0096
    HvCallGetSpaPageList = 0x0097
    HvCallStartVirtualProcessor = 0x0099
    HvCallGetVpIndexFromApicId = 0x009A
    HvCallTranslateVirtualAddressEx = 0x00AC
    HvCallCheckForIoIntercept = 0x00AD
    HvCallFlushGuestPhysicalAddressSpace = 0x00AF
    HvCallFlushGuestPhysicalAddressList = 0x00B0
    HvCallSignalEventDirect = 0x00C0
    HvCallPostMessageDirect = 0x00C1
    HvCallDispatchVp = 0x00C2  # [ext]
    HvCallGetGpaPagesAccessStates = 0x00C9  # [ext]
    HvCallAcquireSparseSpaPageHostAccess = 0x00D7  # [ext]
    HvCallReleaseSparseSpaPageHostAccess = 0x00D8  # [ext]
    HvCallModifySparseGpaPageHostVisibility = 0x00DB  # [ext]
    HvCallMapVpStatePage = 0x00E1
    HvCallUnmapVpStatePage = 0x00E2
    HvCallGetVpState = 0x00E3  # [ext]
    HvCallSetVpState = 0x00E4  # [ext]
    HvCallGetVpSetFromMda = 0x00E5
    HvCallGetVpCpuidValues = 0x00F4
    HvCallMmioRead = 0x0106  # [ext]
    HvCallMmioWrite = 0x0107  # [ext]
    HvCallSetPartitionPropertyEx = 0x010A
    HvCallInstallInterceptEx = 0x0110
    HvCallSetVirtualInterruptTarget = 0x011F
    HvCallMapStatsPage2 = 0x0131
    HvExtCallQueryCapabilities = 0x8001
    HvExtCallGetBootZeroedMemory = 0x8002
    HvExtCallMemoryHeatHint = 0x8003
    HvExtCallEpfSetup = 0x8004
    HvExtCallSchedulerAssistSetup = 0x8005
    HvExtCallMemoryHeatHintAsync = 0x8006


HV_EXTENDED_HYPERCALL_BASE = 0x8001  # hypercall-interface.md: codes above 0x8000 are extended


def hypercall_name(code: int) -> str:
    """The TLFS name of a call code, or its hex value when the code is not defined."""
    try:
        return HypercallCode(code).name
    except ValueError:
        return f"HvCall{code:#06x}"
