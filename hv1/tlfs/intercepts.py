"""Intercepts: HvCallInstallIntercept's types and parameters (datatypes/hv_intercept_type.md,
hv_intercept_parameters.md, hv_intercept_access_type_mask.md) and the x64 intercept messages a parent
receives (PDF §13.2 "Intercept Message Header", "VP Execution State", "I/O Port Access Information",
"Exception Information", "Memory Access Flags").

The PDF defines the common header and the flag bytes; the per-intercept payloads after the header
are not in the TLFS text. Their layouts here are the ones Microsoft's published headers give (Linux
include/hyperv/hvhdk.h, OpenVMM hvdef), which every Hyper-V root relies on. Data only.
"""

from __future__ import annotations

import enum
import struct


class InterceptType(enum.IntEnum):
    """HV_INTERCEPT_TYPE (u32)."""

    X64IoPort = 0x00000000
    X64Msr = 0x00000001
    X64Cpuid = 0x00000002
    Exception = 0x00000003
    X64GlobalCpuid = 0x00000006
    X64ApicSmi = 0x00000007
    Hypercall = 0x00000008
    X64ApicInitSipi = 0x00000009
    X64ApicWrite = 0x0000000B
    UnknownSynicConnection = 0x0000000D
    X64ApicEoi = 0x0000000E
    RetargetInterruptWithUnknownDeviceId = 0x0000000F
    X64ExceptionTrap = 0x00000010
    X64IoPortRange = 0x00000011
    Register = 0x00000012  # ARM64 only
    SystemResetExtended = 0x00000013  # ARM64 only


class InterceptAccess(enum.IntFlag):
    """HV_INTERCEPT_ACCESS_TYPE_MASK (u32): which directions of an access trap."""

    READ = 0x1
    WRITE = 0x2
    EXECUTE = 0x4


class InterceptAccessType(enum.IntEnum):
    """The header's InterceptAccessType byte: the kind of the access that trapped (one value)."""

    READ = 0
    WRITE = 1
    EXECUTE = 2


# HV_X64_SEGMENT_REGISTER: Base u64, Limit u32, Selector u16, Attributes u16 (16 bytes).
SEGMENT = struct.Struct("<QIHH")
# HV_X64_INTERCEPT_MESSAGE_HEADER (40 bytes): VpIndex u32, InstructionLength (low nibble; the high
# nibble is CR8 for exo partitions) u8, InterceptAccessType u8, ExecutionState u16, CsSegment (16),
# Rip u64, Rflags u64.
INTERCEPT_HEADER = struct.Struct("<IBBH16sQQ")

# HV_X64_VP_EXECUTION_STATE bits (u16).
EXEC_CPL_MASK = 0x3
EXEC_CR0_PE = 1 << 2
EXEC_CR0_AM = 1 << 3
EXEC_EFER_LMA = 1 << 4
EXEC_DEBUG_ACTIVE = 1 << 5
EXEC_INTERRUPTION_PENDING = 1 << 6

# HV_X64_IO_PORT_ACCESS_INFO (u8): AccessSize 2:0 (001b 8 bits, 010b 16, 100b 32), StringOp 3,
# RepPrefix 4.
IO_ACCESS_STRING_OP = 1 << 3
IO_ACCESS_REP_PREFIX = 1 << 4
IO_ACCESS_SIZE_CODES = {1: 0b001, 2: 0b010, 4: 0b100}
# HV_X64_EXCEPTION_INFO (u8): ErrorCodeValid 0.
EXCEPTION_ERROR_CODE_VALID = 1 << 0
# HV_X64_MEMORY_ACCESS_INFO (u8): GvaValid 0.
MEMORY_GVA_VALID = 1 << 0

# Payloads after the header.
# I/O port (HvMessageTypeX64IoPortIntercept), 88 bytes: PortNumber u16, AccessInfo u8,
# InstructionByteCount u8, Reserved u32, Rax u64, InstructionBytes[16], DsSegment, EsSegment, Rcx,
# Rsi, Rdi.
IO_PORT_INTERCEPT = struct.Struct("<HBBIQ16s16s16sQQQ")
# MSR (HvMessageTypeMsrIntercept), 24 bytes: MsrNumber u32, Reserved u32, Rdx u64, Rax u64.
MSR_INTERCEPT = struct.Struct("<IIQQ")
# CPUID (HvMessageTypeX64CpuidIntercept), 64 bytes: Rax, Rcx, Rdx, Rbx, then the default results
# (what the VP would see without the intercept) in the same order.
CPUID_INTERCEPT = struct.Struct("<8Q")
# Exception (HvMessageTypeExceptionIntercept), 200 bytes: ExceptionVector u16, ExceptionInfo u8,
# InstructionByteCount u8, ErrorCode u32, ExceptionParameter u64 (CR2 for #PF), Reserved u64,
# InstructionBytes[16], DsSegment, SsSegment, then RAX RCX RDX RBX RSP RBP RSI RDI R8..R15.
EXCEPTION_INTERCEPT = struct.Struct("<HBBIQQ16s16s16s16Q")
EXCEPTION_GPRS = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
                  "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")  # fmt: skip
# Memory (HvMessageTypeUnmappedGpa / HvMessageTypeGpaIntercept), 40 bytes: CacheType u32,
# InstructionByteCount u8, MemoryAccessInfo u8, TprPriority u8, Reserved u8, GuestVirtualAddress,
# GuestPhysicalAddress, InstructionBytes[16].
MEMORY_INTERCEPT = struct.Struct("<IBBBBQQ16s")
CACHE_TYPE_WRITE_BACK = 6

assert INTERCEPT_HEADER.size == 40
assert INTERCEPT_HEADER.size + EXCEPTION_INTERCEPT.size == 240  # exactly HV_MESSAGE_PAYLOAD_SIZE

# HvCallInstallIntercept input (24 bytes): PartitionId u64, AccessType u32, InterceptType u32,
# InterceptParameter u64 (HV_INTERCEPT_PARAMETERS: IoPort u16 | CpuidIndex u32 | MsrIndex u32 |
# ApicWriteMask u32 | IoPortRange {Base u16, End u16} | ExceptionVector u16).
INSTALL_INTERCEPT_INPUT = struct.Struct("<QIIQ")
