"""Statistics pages: HV_STATS_OBJECT_TYPE, HV_STATS_OBJECT_IDENTITY's StatsAreaType and the counter
indexes of a stats page (datatypes/hv_stats_object_type.md, hv_stats_object_identity.md;
hypercalls/HvCallMapStatsPage2.md, HvCallUnmapStatsPage.md).

The TLFS defines the objects and the calls but not what a page holds. Microsoft's published headers
(Linux include/hyperv/hvhdk.h, "HV_PROCESS_COUNTER", "HV_THREAD_COUNTER", "HV_HYPERVISOR_COUNTER")
do: a stats page is an array of u64 counters indexed by counter number (index 0 unused). The
counters below are the ones hv1 keeps; every other index reads 0. [ext] = value from those headers.
Data only.
"""

from __future__ import annotations

import enum

STATS_PAGE_COUNTERS = 512  # 4096 bytes of u64


class StatsObjectType(enum.IntEnum):
    """HV_STATS_OBJECT_TYPE."""

    HYPERVISOR = 0x00000001  # [ext] (the identity union has its Hypervisor form)
    PARTITION = 0x00010001
    VP = 0x00010002


class StatsAreaType(enum.IntEnum):
    """StatsAreaType u8 @15 of HV_STATS_OBJECT_IDENTITY [ext]: SELF counts what the object did;
    PARENT the work its parent did for it. hv1 keeps one set of counters and shows it in both."""

    SELF = 0
    PARENT = 1


class HypervisorCounter(enum.IntEnum):
    """HV_HYPERVISOR_COUNTER [ext]."""

    HvLogicalProcessors = 1
    HvPartitions = 2
    HvTotalPages = 3
    HvVirtualProcessors = 4


class PartitionCounter(enum.IntEnum):
    """HV_PROCESS_COUNTER [ext]."""

    PartitionVirtualProcessors = 1
    PartitionDepositedPages = 5
    PartitionGpaPages = 6
    PartitionGpaSpaceModifications = 7
    PartitionPartitionId = 26


class VpCounter(enum.IntEnum):
    """HV_THREAD_COUNTER (x64) [ext]."""

    VpHypercallsCount = 7
    VpIoInstructionsCount = 13
    VpHltInstructionsCount = 15
    VpCpuidInstructionsCount = 19
    VpMsrAccessesCount = 21
    VpOtherInterceptsCount = 23
    VpExternalInterruptsCount = 25
    VpPageFaultInterceptsCount = 33
    VpIoInterceptMessages = 40
    VpMemoryInterceptMessages = 41
    VpOtherMessages = 43
    VpSyntheticInterrupts = 58
    VpVirtualInterrupts = 59
