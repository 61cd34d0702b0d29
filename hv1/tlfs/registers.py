"""Register names (HV_REGISTER_NAME, u32) for HvCallGet/SetVpRegisters: TLFS
datatypes/hv_register_name.md, PDF §7.8.2, inventory §6.2 (x64). Numbered families (MTRRs,
PMU counters, LBRs, x2APIC registers) are listed in `REGISTER_NAMES` only.
"""

from __future__ import annotations

import enum


class HvRegisterName(enum.IntEnum):
    ExplicitSuspend = 0x00000000
    InterceptSuspend = 0x00000001
    InstructionEmulationHints = 0x00000002
    DispatchSuspend = 0x00000003
    InternalActivityState = 0x00000004
    HypervisorVersion = 0x00000100
    PrivilegesAndFeaturesInfo = 0x00000200
    FeaturesInfo = 0x00000201
    ImplementationLimitsInfo = 0x00000202
    HardwareFeaturesInfo = 0x00000203
    CpuManagementFeaturesInfo = 0x00000204
    PasidFeaturesInfo = 0x00000205
    SkipLevelFeaturesInfo = 0x00000206
    NestedVirtFeaturesInfo = 0x00000207
    IptFeaturesInfo = 0x00000208
    GuestCrashP0 = 0x00000210
    GuestCrashP1 = 0x00000211
    GuestCrashP2 = 0x00000212
    GuestCrashP3 = 0x00000213
    GuestCrashP4 = 0x00000214
    GuestCrashCtl = 0x00000215
    PowerStateConfigC1 = 0x00000220
    PowerStateTriggerC1 = 0x00000221
    PowerStateConfigC2 = 0x00000222
    PowerStateTriggerC2 = 0x00000223
    PowerStateConfigC3 = 0x00000224
    PowerStateTriggerC3 = 0x00000225
    ProcessorClockFrequency = 0x00000240
    InterruptClockFrequency = 0x00000241
    GuestIdle = 0x00000250
    DebugDeviceOptions = 0x00000260
    MemoryZeroingControl = 0x00000270
    PendingInterruption = 0x00010002
    InterruptState = 0x00010003
    PendingEvent0 = 0x00010004
    PendingEvent1 = 0x00010005
    DeliverabilityNotifications = 0x00010006
    PendingDebugException = 0x00010007
    PendingEvent2 = 0x00010008
    PendingEvent3 = 0x00010009
    Rax = 0x00020000
    Rcx = 0x00020001
    Rdx = 0x00020002
    Rbx = 0x00020003
    Rsp = 0x00020004
    Rbp = 0x00020005
    Rsi = 0x00020006
    Rdi = 0x00020007
    R8 = 0x00020008
    R9 = 0x00020009
    R10 = 0x0002000A
    R11 = 0x0002000B
    R12 = 0x0002000C
    R13 = 0x0002000D
    R14 = 0x0002000E
    R15 = 0x0002000F
    Rip = 0x00020010
    Rflags = 0x00020011
    FpControlStatus = 0x00030018
    XmmControlStatus = 0x00030019
    Cr0 = 0x00040000
    Cr2 = 0x00040001
    Cr3 = 0x00040002
    Cr4 = 0x00040003
    Cr8 = 0x00040004
    Xfem = 0x00040005
    IntermediateCr0 = 0x00041000
    IntermediateCr4 = 0x00041003
    IntermediateCr8 = 0x00041004
    Dr0 = 0x00050000
    Dr1 = 0x00050001
    Dr2 = 0x00050002
    Dr3 = 0x00050003
    Dr6 = 0x00050004
    Dr7 = 0x00050005
    Es = 0x00060000
    Cs = 0x00060001
    Ss = 0x00060002
    Ds = 0x00060003
    Fs = 0x00060004
    Gs = 0x00060005
    Ldtr = 0x00060006
    Tr = 0x00060007
    Idtr = 0x00070000
    Gdtr = 0x00070001
    Tsc = 0x00080000
    Efer = 0x00080001
    KernelGsBase = 0x00080002
    ApicBase = 0x00080003
    Pat = 0x00080004
    SysenterCs = 0x00080005
    SysenterEip = 0x00080006
    SysenterEsp = 0x00080007
    Star = 0x00080008
    Lstar = 0x00080009
    Cstar = 0x0008000A
    Sfmask = 0x0008000B
    InitialApicId = 0x0008000C
    MtrrCap = 0x0008000D
    MtrrDefType = 0x0008000E
    MtrrFix64k00000 = 0x00080070
    MtrrFix16k80000 = 0x00080071
    MtrrFix16kA0000 = 0x00080072
    TscAux = 0x0008007B
    Bndcfgs = 0x0008007C
    DebugCtl = 0x0008007D
    MCount = 0x0008007E
    ACount = 0x0008007F
    SpecCtrl = 0x00080084
    PredCmd = 0x00080085
    VirtSpecCtrl = 0x00080086
    TscVirtualOffset = 0x00080087
    TsxCtrl = 0x00080088
    Xss = 0x0008008B
    UCet = 0x0008008C
    SCet = 0x0008008D
    Ssp = 0x0008008E
    Pl0Ssp = 0x0008008F
    Pl1Ssp = 0x00080090
    Pl2Ssp = 0x00080091
    Pl3Ssp = 0x00080092
    InterruptSspTableAddr = 0x00080093
    TscDeadline = 0x00080095
    TscAdjust = 0x00080096
    UmwaitControl = 0x00080098
    Xfd = 0x00080099
    XfdErr = 0x0008009A
    VpRuntime = 0x00090000
    Hypercall = 0x00090001
    GuestOsId = 0x00090002
    VpIndex = 0x00090003
    TimeRefCount = 0x00090004
    CpuManagementVersion = 0x00090007
    SyntheticEoi = 0x00090010
    SyntheticIcr = 0x00090011
    SyntheticTpr = 0x00090012
    VpAssistPage = 0x00090013
    VpRootSignalCount = 0x00090014
    ReferenceTsc = 0x00090017
    Ghcb = 0x00090019
    ReferenceTscSequence = 0x0009001A
    StatsPartitionRetail = 0x00090020
    StatsPartitionInternal = 0x00090021
    StatsVpRetail = 0x00090022
    StatsVpInternal = 0x00090023
    NestedVpIndex = 0x00091003
    Scontrol = 0x000A0010
    Sversion = 0x000A0011
    Sifp = 0x000A0012
    Sipp = 0x000A0013
    Eom = 0x000A0014
    Sirbp = 0x000A0015
    Stimer0Config = 0x000B0000
    Stimer0Count = 0x000B0001
    Stimer1Config = 0x000B0002
    Stimer1Count = 0x000B0003
    Stimer2Config = 0x000B0004
    Stimer2Count = 0x000B0005
    Stimer3Config = 0x000B0006
    Stimer3Count = 0x000B0007
    StimeUnhaltedTimerConfig = 0x000B0100
    StimeUnhaltedTimerCount = 0x000B0101
    VsmCodePageOffsets = 0x000D0002
    VsmVpStatus = 0x000D0003
    VsmPartitionStatus = 0x000D0004
    VsmVina = 0x000D0005
    VsmCapabilities = 0x000D0006
    VsmPartitionConfig = 0x000D0007
    VsmVpWaitForTlbLock = 0x000D0020
    IsolationCapabilities = 0x000D0100
    CrInterceptControl = 0x000E0000
    CrInterceptCr0Mask = 0x000E0001
    CrInterceptCr4Mask = 0x000E0002
    CrInterceptIa32MiscEnableMask = 0x000E0003


# x2APIC-mapped APIC registers: 0x84800 + (x2APIC MSR index - 0x800).
APIC_REGISTER_BASE = 0x00084800


def _names() -> dict[int, str]:
    names = {int(r): r.name for r in HvRegisterName}
    for i in range(16):
        names[0x00030000 + i] = f"Xmm{i}"
        names[0x000A0000 + i] = f"Sint{i}"
        names[0x000C0000 + i] = f"Ymm{i}Low"
        names[0x000C0010 + i] = f"Ymm{i}High"
        names[0x00080010 + i] = f"MtrrPhysBase{i:X}"
        names[0x00080040 + i] = f"MtrrPhysMask{i:X}"
    for i in range(8):
        names[0x00030010 + i] = f"FpMmx{i}"
        names[0x00080073 + i] = f"MtrrFix4k{0xC0000 + i * 0x8000:X}"
    for i in range(4):
        names[0x00080080 + i] = f"SgxLaunchControl{i}"
    for i in range(15):
        names[0x000D0010 + i] = f"VsmVpSecureConfigVtl{i}"
    return names


REGISTER_NAMES: dict[int, str] = _names()


def register_name(value: int) -> str:
    return REGISTER_NAMES.get(value, f"HvRegister{value:#x}")
