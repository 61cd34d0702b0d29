"""The hypercall interface: TLFS hypercall-interface.md (control word, result value, register
conventions, XMM fast input/output, GUEST_OS_ID and HYPERCALL MSRs, extended hypercalls) and
hypercalls/HvExtCall*.md for the extended-call layouts.
"""

from __future__ import annotations

import enum
import struct

HV_PAGE_SIZE = 0x1000
HV_PAGE_SHIFT = 12
HV_PAGE_MASK = HV_PAGE_SIZE - 1

# --- Hypercall input value ("control word"), hypercall-interface.md "Hypercall Inputs" ----------
# The md layout (var header 26:17, RsvdZ 30:27, IsNested 31), not PDF v6.0b's (inventory §7.1).
CONTROL_CODE_MASK = 0xFFFF  # 15:0 call code
CONTROL_FAST = 1 << 16  # 16 fast (register-based) calling convention
CONTROL_VAR_HEADER_SHIFT = 17  # 26:17 variable header size, in QWORDs
CONTROL_VAR_HEADER_MASK = 0x3FF
CONTROL_RSVD_30_27 = 0xF << 27  # RsvdZ
CONTROL_NESTED = 1 << 31  # Is Nested: handled by the L0 hypervisor
CONTROL_REP_COUNT_SHIFT = 32  # 43:32 rep count
CONTROL_REP_COUNT_MASK = 0xFFF
CONTROL_RSVD_47_44 = 0xF << 44  # RsvdZ
CONTROL_REP_START_SHIFT = 48  # 59:48 rep start index
CONTROL_REP_START_MASK = 0xFFF
CONTROL_RSVD_63_60 = 0xF << 60  # RsvdZ
CONTROL_RSVDZ_MASK = CONTROL_RSVD_30_27 | CONTROL_RSVD_47_44 | CONTROL_RSVD_63_60

# --- Hypercall result value, hypercall-interface.md "Hypercall Outputs" --------------------------
RESULT_STATUS_MASK = 0xFFFF  # 15:0 HV_STATUS
RESULT_REPS_COMPLETED_SHIFT = 32  # 43:32 reps completed (absolute, not relative to rep start)
RESULT_REPS_COMPLETED_MASK = 0xFFF

# --- Register-based calls ---------------------------------------------------------------------------
GPR_FAST_INPUT_MAX = 16  # RDX, R8 (x86: EBX:ECX, EDI:ESI)
XMM_FAST_BLOCK_MAX = 112  # RDX, R8, XMM0..XMM5 ("XMM Fast Hypercall Input")
XMM_FAST_REGISTERS = 6
FAST_CHUNK_SIZE = 16  # output goes into 16-byte chunks {RDX:R8}, XMM0..XMM5 after the input's


# --- HV_X64_MSR_GUEST_OS_ID, hypercall-interface.md "Reporting the Guest OS Identity" -------------
GUEST_OS_ID_OPEN_SOURCE = 1 << 63
GUEST_OS_ID_VENDOR_SHIFT = 48  # proprietary: 62:48 vendor ID
GUEST_OS_ID_OS_ID_SHIFT = 40  # proprietary: 47:40 OS ID
GUEST_OS_ID_OS_TYPE_SHIFT = 56  # open source: 62:56 OS type


class GuestOsVendor(enum.IntEnum):
    Microsoft = 0x0001
    HPE = 0x0002
    BlackBerry = 0x0003
    LANCOM = 0x0200


class GuestOsType(enum.IntEnum):
    """Open-source OS types (bit 63 set)."""

    Linux = 0x1
    FreeBSD = 0x2
    Xen = 0x3
    Illumos = 0x4


# --- HV_X64_MSR_HYPERCALL, hypercall-interface.md "Establishing the Hypercall Interface" ----------
HYPERCALL_MSR_ENABLE = 1 << 0
HYPERCALL_MSR_LOCKED = 1 << 1  # honoured only with CPUID 0x40000003.EDX[18] HypercallMsrLockAvailable
HYPERCALL_MSR_RSVDP_MASK = 0x3FF << 2  # 11:2 RsvdP: preserved on writes, returned on reads
HYPERCALL_MSR_GPFN_SHIFT = 12  # 63:12 GPFN


# --- Extended hypercalls, hypercalls/HvExtCallQueryCapabilities.md -------------------------------
class ExtCapabilities(enum.IntFlag):
    """HvExtCallQueryCapabilities output: bit k = extended call 0x8002 + k available."""

    GetBootZeroedMemory = 1 << 0
    MemoryHeatHint = 1 << 1
    EpfSetup = 1 << 2
    SchedulerAssistSetup = 1 << 3
    MemoryHeatHintAsync = 1 << 4
    MemoryColdDiscardHint = 1 << 8  # [ext:Linux]


EXT_QUERY_CAPABILITIES_OUTPUT = struct.Struct("<Q")

# HvExtCallGetBootZeroedMemory (0x8002): output is 0xFF8 bytes: RangeCount u64 @0, then up to 255
# ranges of {StartGpaPageNumber u64, PageCount u64}.
BOOT_ZEROED_OUTPUT_SIZE = 0xFF8
BOOT_ZEROED_MAX_RANGES = 255
BOOT_ZEROED_COUNT = struct.Struct("<Q")
BOOT_ZEROED_RANGE = struct.Struct("<QQ")

# HvExtCallMemoryHeatHint (0x8003) is not documented in the TLFS; the layout is Linux's
# (include/hyperv/hvgdk_mini.h, drivers/hv/hv_balloon.c): a rep call with an 8-byte header
# {Type:2, Reserved:62} and 8-byte HV_GPA_PAGE_RANGE elements.
MEMORY_HEAT_HINT_HEADER = struct.Struct("<Q")
MEMORY_HEAT_HINT_TYPE_MASK = 0x3
MEMORY_HEAT_HINT_TYPE_COLD_DISCARD = 2
GPA_PAGE_RANGE = struct.Struct("<Q")
# HV_GPA_PAGE_RANGE (u64): 10:0 AdditionalPages, 11 LargePage (2 MiB units), 63:12 BasePfn.
GPA_PAGE_RANGE_ADDITIONAL_MASK = 0x7FF
GPA_PAGE_RANGE_LARGE_PAGE = 1 << 11
GPA_PAGE_RANGE_BASE_SHIFT = 12
