"""The one capability model: what this partition's guest is told (CPUID 0x40000000-0x4000000A) and
what every MSR gate and hypercall gate consults.

A `Caps` is built from named features. Each feature in `FEATURES` maps to the CPUID bits it sets and
says in which APIC modes hv1 implements it *end to end*. The `default` profile is every implemented
feature that an ordinary guest should see; `minimal` is exactly the set the Requirements doc
("Requirements for a Minimal HV#1 Interface") makes mandatory. A bit is never advertised unless a
feature that hv1 implements sets it ("A conforming hypervisor returning any non-zero value in
0x40000003.EAX or EBX must support the corresponding functionality as defined in the TLFS").

When a subsystem lands (SynIC, timers, APIC enlightenments, ...), its author sets `implemented_in`
of its features below; nothing else has to change for `default` to pick it up.

Profile strings (`hv1 run --hv ...`): comma-separated tokens. The first token may name a profile
(`minimal`, `default`); without one the base is `default`. `+name` (or a bare `name`) adds a
feature, `-name` removes one. Example: `default,-crash,+partition-id`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from hv1.hv.vpset import MAX_VP_INDEX
from hv1.tlfs.feature_discovery import (
    HV_CPUID_FEATURES,
    HV_CPUID_HARDWARE_FEATURES,
    HV_CPUID_IMPLEMENTATION_LIMITS,
    HV_CPUID_INTERFACE,
    HV_CPUID_MIN_MAX_LEAF,
    HV_CPUID_NESTED_FEATURES,
    HV_CPUID_VENDOR_AND_MAX_FUNCTIONS,
    HV_CPUID_VERSION,
    HV_INTERFACE_HV1,
    HV_VENDOR_MICROSOFT,
    IMPLEMENTED_PHYSICAL_ADDRESS_BITS_MASK,
    LEAF_NAMES,
    SPINLOCK_RETRIES_NEVER,
    FeaturesEcx,
    FeaturesEdx,
    HardwareFeatures,
    Recommendations,
    vendor_registers,
)
from hv1.tlfs.partition import PRIVILEGES_MUST_BE_SET, PartitionPrivilege

P = PartitionPrivilege
EDX = FeaturesEdx
REC = Recommendations

APIC_MODES = ("kernel", "user")
_BOTH = frozenset(APIC_MODES)
_NONE: frozenset[str] = frozenset()

# Leaf 0x40000004 EBX when `long-spin-wait` is on: notify after this many failed spins (the value
# KVM and Hyper-V 2016 report). Off (also in `minimal`): 0xFFFFFFFF, "never notify" in the TLFS feature
# table and "never retry" in the Requirements doc; 0 is avoided because the documents disagree on it
# (inventory §7.9). HvCallNotifyLongSpinWait is accepted either way.
DEFAULT_SPINLOCK_RETRIES = 0x0FFF

# Leaf 0x40000000 EAX for `default`: the TLFS range up to the nested-virtualization leaf. Leaves
# 0x40000006-0x4000000A are all zero (nothing in use / not nested). `minimal` stops at 0x40000005,
# the lowest maximum a guest accepts.
DEFAULT_MAX_LEAF = HV_CPUID_NESTED_FEATURES
MINIMAL_MAX_LEAF = HV_CPUID_MIN_MAX_LEAF

# Leaf 0x40000005, hv1's implementation limits (feature-discovery.md "Hypervisor Implementation
# Limits"; 0 would mean "not reported"), the same in every profile:
# - EAX, max VPs: 4096. The TLFS ties VP indexes to it: "A virtual processor index must be less than
#   the maximum number of virtual processors per partition" (PDF §7.8), and hv1 gives VPs any index
#   up to 4095 (`--vp-index-map`; the largest an HV_VP_SET names, hv/vpset.py MAX_VP_INDEX). A
#   partition has at most 64 VPs (`--cpus`), all described by the MADT/MP table the guest reads, so
#   a guest never tries more. Not -1 ("no limit", Requirements doc "Maximum Supported Virtual
#   Processors"): hv1 has a limit (and -1 would forbid recommending the non-Ex flush hypercalls).
#   Windows Server 2019 with more than 64 vCPUs bugchecks on a bad value (guests-and-hosts.md §4);
#   hv1 never runs more than 64.
# - EBX, max LPs: hv1 runs VPs as host threads and sets no LP limit of its own; it reports 64, the
#   value KVM reports for this field (matching Hyper-V 2016), which Windows uses "for reporting
#   purposes only" (Requirements doc, leaf 0x40000005).
# - ECX, interrupt vectors for remapping: 0, not reported: hv1 has no device interrupt remapping.
IMPLEMENTATION_MAX_VPS = MAX_VP_INDEX + 1
IMPLEMENTATION_MAX_LPS = 64

# Where hv1 knowingly differs from the letter of the TLFS, and why. `describe()` prints these.
DEVIATIONS: tuple[tuple[str, str], ...] = (
    (
        "CPUID 0x40000002",
        "The TLFS (PDF §2.4.3) says the version leaf reads zero until HV_X64_MSR_GUEST_OS_ID is written. "
        "KVM fixes CPUID before the first KVM_RUN (KVM_SET_CPUID2 is rejected afterwards), so hv1 cannot "
        "change the leaf when the guest writes GUEST_OS_ID: it returns zero always. The Requirements doc "
        "makes the version leaf optional ('Required: No').",
    ),
    (
        "hypercall page writes",
        "A guest write to the hypercall page raises #GP and changes nothing, as hypercall-interface.md says "
        "(the machine backs the page's GPA with a read-only KVM memory slot). KVM completes the writing "
        "instruction before userspace sees the write; hv1 puts RIP (and RDI/RSI/RCX/RSP) back to before it "
        "when it is a MOV, STOS, MOVS or PUSH (REP STOS/MOVS: the faulting element), for any other form "
        "(vector stores, call, enter) the #GP frame holds the RIP after the instruction. (KVM and Xen let "
        "the write land in RAM, inventory §7.3.)",
    ),
    (
        "hypercall page location",
        "HV_X64_MSR_HYPERCALL with a GPFN that is not backed by guest RAM is answered with #GP (the TLFS "
        "#GPs only beyond the GPA space): a copy-swap overlay can only be shown over RAM.",
    ),
    (
        "virtualization host (--hv root)",
        "The partition engine answers the virtualization-host hypercalls with TLFS statuses, but child "
        "partitions do not run yet: clearing a child VP's ExplicitSuspend makes the partition Active and "
        "nothing more (docs/partitions.md). Deposited pages stay reachable by the root guest's own "
        "instructions (the KVM memory slots are not yet changed). HvCallCreatePartition's input at offset 48 "
        "is ReservedZ0 as the TLFS md page says (Linux's mshv puts isolation properties there): hv1 accepts "
        "0, the value of a partition without isolation, and answers anything else INVALID_PARAMETER. "
        "CpuManagement (0x40000003.EBX[12]) stays clear: Linux reads it as 'this is the root of the "
        "machine' and then expects the hypervisor's own hypercall page and root-only interfaces.",
    ),
    (
        "root-partition calls (--hv root)",
        "Where a md page and Microsoft's published headers (Linux include/hyperv/hvhdk.h) disagree, hv1 "
        "takes the md page: HvCallTranslateVirtualAddressEx returns a 16-byte HV_TRANSLATE_GVA_RESULT_EX "
        "with GpaPage @16 (hvhdk.h: 40-byte EventInfo, GpaPage @48; hv1's EventInfo is always 0); "
        "HvCallGetVpCpuidValues takes 8-byte leaf/subleaf elements (hvhdk.h: 24, with XFEM/XSS; "
        "UseVpXfemXss is accepted and changes nothing); HvCallUnmapStatsPage's ObjectIdentity is @4 "
        "(hvhdk_mini.h: @8, read when @4 names no mapped page). Where the md page is incomplete hv1 takes"
        " the header: HvCallRegisterInterceptResult's CPUID parameters start with the Input half {leaf, "
        "subleaf, SubleafSpecific, AlwaysOverride} that the md page omits. HvCallAssertVirtualInterrupt "
        "refuses SMI, RemoteRead and LocalInt0/1 (INVALID_PARAMETER), and a child VP's APIC ID is its VP "
        "index. Stats pages are RAM pages hv1 rewrites (on map, on a counter bump, after each "
        "virtualization-host call), not overlays; VP register pages hold only the GPRs, RIP and RFLAGS "
        "(docs/partitions.md).",
    ),
    (
        "HvCallGetPartitionProperty",
        "The TLFS allows it to the parent or root partition. hv1 runs one partition with no parent "
        "visible to it; the partition may query its own properties when granted `partition-properties` "
        "(no CPUID bit), else ACCESS_DENIED.",
    ),
    (
        "register output in 32-bit mode",
        "XMM fast hypercall output is x64-only (hypercall-interface.md); a fast call with output from a "
        "32-bit caller is answered with #UD like an unavailable fast-output interface.",
    ),
    (
        "hypercall from CPL 3",
        "The TLFS answers a hypercall from CPL > 0 with #UD. hv1's hypercall page traps with `out 0x90, al`: "
        "at CPL > IOPL the CPU checks the TSS I/O bitmap first and raises #GP without any exit unless the "
        "port is permitted. Only when the `out` exits (IOPL 3, or a permitting bitmap) does hv1 see the "
        "call and inject #UD; this development host's kvm_pvm ignores the guest's IOPL for a CPL 3 `out`, "
        "so there it is always #GP (guests/tests/hv_cpl.c). Either way the call faults at the trap and "
        "returns no status. (Real mode and CPL 0 are exact.)",
    ),
    (
        "Is Nested (control bit 31)",
        "hv1 is not nested, so bit 31 is treated as a reserved bit: HV_STATUS_INVALID_HYPERCALL_INPUT "
        "(inventory §7.1, as KVM does).",
    ),
)


@dataclass(frozen=True)
class Feature:
    """A named capability and the CPUID bits it sets. Bits shared by several features (e.g. EAX[4]
    for apic-msrs and vp-assist) are set when any of them is on."""

    name: str
    doc: str
    privileges: int = 0  # HV_PARTITION_PRIVILEGE_MASK bits (0x40000003 EAX/EBX)
    features_ecx: int = 0  # 0x40000003 ECX
    features_edx: int = 0  # 0x40000003 EDX
    recommendations: int = 0  # 0x40000004 EAX
    hardware: int = 0  # 0x40000006 EAX
    implemented_in: frozenset[str] = _NONE  # APIC modes in which hv1 implements it end to end
    default: bool = True  # in `default` when implemented (False: only on request)
    mandatory: bool = False  # part of every profile; cannot be removed
    requires: tuple[str, ...] = ()


FEATURES: tuple[Feature, ...] = (
    # --- the Requirements-doc set (`minimal`) -------------------------------------------------------
    Feature(
        "hypercall-msrs",
        "HV_X64_MSR_GUEST_OS_ID, HV_X64_MSR_HYPERCALL and the hypercall page",
        privileges=P.AccessHypercallMsrs,
        implemented_in=_BOTH,
        mandatory=True,
    ),
    Feature(
        "vp-index",
        "HV_X64_MSR_VP_INDEX (and HvCallGetVpIndexFromApicId)",
        privileges=P.AccessVpIndex,
        implemented_in=_BOTH,
        mandatory=True,
    ),
    # --- implemented by the hypercall/MSR core ------------------------------------------------------
    Feature(
        "reset",
        "HV_X64_MSR_RESET, recommended for system reset",
        privileges=P.AccessResetReg,
        recommendations=REC.UseHvRegisterForReset,
        implemented_in=_BOTH,
    ),
    Feature(
        "crash",
        "guest crash MSRs HV_X64_MSR_CRASH_P0..P4 and CRASH_CTL (notify + message)",
        features_edx=EDX.GuestCrashRegsAvailable,
        implemented_in=_BOTH,
    ),
    Feature(
        "xmm-input",
        "XMM fast hypercall input",
        features_edx=EDX.XmmRegistersForFastHypercallAvailable,
        implemented_in=_BOTH,
    ),
    Feature(
        "xmm-output",
        "XMM fast hypercall output",
        features_edx=EDX.FastHypercallOutputAvailable,
        implemented_in=_BOTH,
    ),
    Feature(
        "hypercall-lock",
        "HV_X64_MSR_HYPERCALL Locked bit",
        features_edx=EDX.HypercallMsrLockAvailable,
        implemented_in=_BOTH,
    ),
    Feature(
        "ext-hypercalls",
        "extended hypercalls: QueryCapabilities, GetBootZeroedMemory, MemoryHeatHint",
        privileges=P.EnableExtendedHypercalls,
        implemented_in=_BOTH,
    ),
    Feature(
        "long-spin-wait",
        f"spinlock retry count {DEFAULT_SPINLOCK_RETRIES:#x} in 0x40000004.EBX (HvCallNotifyLongSpinWait)",
        implemented_in=_BOTH,
    ),
    Feature(
        "relaxed-timing",
        "recommend relaxed timing (guest watchdogs off): a hint, nothing to implement",
        recommendations=REC.UseRelaxedTiming,
        implemented_in=_BOTH,
    ),
    Feature(
        "partition-id",
        "HvCallGetPartitionId (the Requirements doc says a guest must not see it: not in default)",
        privileges=P.AccessPartitionId,
        implemented_in=_BOTH,
        default=False,
    ),
    Feature(
        "partition-properties",
        "hv1 grant, no CPUID bit: HvCallGetPartitionProperty on the partition itself",
        implemented_in=_BOTH,
        default=False,
    ),
    # --- subsystems: implemented_in is set when they work end to end ----------------------------
    Feature("vp-runtime", "HV_X64_MSR_VP_RUNTIME", privileges=P.AccessVpRunTimeReg, implemented_in=_BOTH),
    Feature(
        "ref-count",
        "HV_X64_MSR_TIME_REF_COUNT",
        privileges=P.AccessPartitionReferenceCounter,
        implemented_in=_BOTH,
    ),
    Feature(
        "ref-tsc",
        "HV_X64_MSR_REFERENCE_TSC and the TSC page",
        privileges=P.AccessPartitionReferenceTsc,
        implemented_in=_BOTH,
    ),
    Feature(
        "frequency-msrs",
        "HV_X64_MSR_TSC_FREQUENCY / APIC_FREQUENCY",
        privileges=P.AccessFrequencyRegs,
        features_edx=EDX.FrequencyRegsAvailable,
        implemented_in=_BOTH,
    ),
    Feature(
        "synic",
        "SynIC MSRs: SCONTROL..EOM, SINT0-15, SIMP/SIEFP",
        privileges=P.AccessSynicRegs,
        implemented_in=_BOTH,
    ),
    Feature(
        "stimer",
        "synthetic timers STIMER0-3",
        privileges=P.AccessSyntheticTimerRegs,
        requires=("synic",),
        implemented_in=_BOTH,
    ),
    Feature(
        "direct-stimer",
        "synthetic timers in direct (APIC vector) mode",
        features_edx=EDX.DirectSyntheticTimers,
        requires=("stimer",),
        implemented_in=_BOTH,
    ),
    Feature(
        "sint-polling",
        "SINT polling mode",
        features_edx=EDX.SintPollingModeAvailable,
        requires=("synic",),
        implemented_in=_BOTH,
    ),
    Feature(
        "post-messages",
        "HvCallPostMessage",
        privileges=P.PostMessages,
        requires=("synic",),
        implemented_in=_BOTH,
    ),
    Feature(
        "signal-events",
        "HvCallSignalEvent",
        privileges=P.SignalEvents,
        requires=("synic",),
        implemented_in=_BOTH,
    ),
    Feature(
        "connect-port",
        "HvCallConnectPort",
        privileges=P.ConnectPort,
        requires=("synic",),
        implemented_in=_BOTH,
    ),
    Feature(
        "auto-eoi-deprecated",
        "recommend not using SINT AutoEOI: a hint",
        recommendations=REC.DeprecateAutoEoi,
        # A hint, off by default: AutoEOI works in both modes (hv1's APIC skips ISR per delivery; with
        # KVM's in-kernel APIC, KVM's SynIC AutoEOI bitmap does, hv1/machine/auto_eoi.py). The machine
        # turns it on (`without_auto_eoi`) on a host whose KVM lacks KVM_CAP_HYPERV_SYNIC2.
        implemented_in=_BOTH,
        default=False,
        requires=("synic",),
    ),
    # Issue 5 (hv/enlightenments.py). APIC MSRs, VP assist and guest idle need hv1's APIC model
    # (user mode); StartVirtualProcessor works in both. The flush and IPI hypercalls work in both modes; their
    # recommendation bits are set only where they pay (bench rows vp-flush, vp-flush-kernel, vp-ipi):
    # with hv1's APIC a flush hypercall costs 0.4-0.7x an IPI + INVLPG shootdown of 1-3 VPs, with
    # KVM's in-kernel APIC 1.1-2.1x, so `remote-flush` is recommended in user mode only.
    Feature(
        "apic-msrs",
        "HV_X64_MSR_EOI/ICR/TPR, recommended",
        privileges=P.AccessIntrCtrlRegs,
        recommendations=REC.UseApicMsrs,
        implemented_in=frozenset({"user"}),
    ),
    Feature(
        "vp-assist",
        "HV_X64_MSR_VP_ASSIST_PAGE (gated by the same EAX[4] as the APIC MSRs)",
        privileges=P.AccessIntrCtrlRegs,
        requires=("apic-msrs",),
        implemented_in=frozenset({"user"}),
    ),
    Feature(
        "guest-idle",
        "HV_X64_MSR_GUEST_IDLE",
        privileges=P.AccessGuestIdleReg,
        features_edx=EDX.GuestIdleAvailable,
        implemented_in=frozenset({"user"}),
    ),
    Feature(
        "reenlightenment",
        "reenlightenment / TSC emulation MSRs",
        privileges=P.AccessReenlightenmentControls,
        implemented_in=_BOTH,
        default=False,
    ),
    Feature(
        "tsc-invariant",
        "HV_X64_MSR_TSC_INVARIANT_CONTROL",
        privileges=P.AccessTscInvariantControls,
        implemented_in=_BOTH,
    ),
    Feature(
        "start-vp",
        "HvCallStartVirtualProcessor",
        privileges=P.StartVirtualProcessor,
        implemented_in=_BOTH,
    ),
    Feature("vp-registers", "HvCallGet/SetVpRegisters on self", privileges=P.AccessVpRegisters),
    # --- virtualization host (the `root` profile): the partition engine, hv1/hv/hypervisor.py -------
    Feature(
        "create-partitions",
        "HvCallCreatePartition and the calls on children (virtualization-host.md)",
        privileges=P.CreatePartitions,
        implemented_in=_BOTH,
        default=False,
    ),
    Feature(
        "memory-pool",
        "HvCallDepositMemory / WithdrawMemory / GetMemoryBalance",
        privileges=P.AccessMemoryPool,
        implemented_in=_BOTH,
        default=False,
    ),
    Feature(
        "create-port",
        "HvCallCreatePort / DeletePort",
        privileges=P.CreatePort,
        implemented_in=_BOTH,
        default=False,
    ),
    Feature(
        "access-stats",
        "HvCallMapStatsPage2 / UnmapStatsPage (hv1/hv/stats_pages.py)",
        privileges=P.AccessStats,
        implemented_in=_BOTH,
        default=False,
    ),
    Feature(
        "address-space-switch",
        "recommend HvCallSwitchVirtualAddressSpace",
        recommendations=REC.UseHypercallForAddressSpaceSwitch,
    ),
    Feature(
        "local-flush",
        "recommend hypercalls for local TLB flush",
        recommendations=REC.UseHypercallForLocalFlush,
    ),
    Feature(
        "remote-flush",
        "recommend HvCallFlushVirtualAddressSpace/List for remote flush",
        recommendations=REC.UseHypercallForRemoteFlushAndLocalFlushEntire,
        implemented_in=frozenset({"user"}),
    ),
    Feature(
        "cluster-ipi",
        "recommend HvCallSendSyntheticClusterIpi",
        recommendations=REC.UseSyntheticClusterIpi,
        implemented_in=frozenset({"user"}),
    ),
    Feature(
        "ex-processor-masks",
        "recommend the *Ex hypercalls with HV_VP_SET",
        recommendations=REC.UseExProcessorMasks,
        implemented_in=_BOTH,
    ),
)

FEATURES_BY_NAME: dict[str, Feature] = {f.name: f for f in FEATURES}
MANDATORY_FEATURES: frozenset[str] = frozenset(f.name for f in FEATURES if f.mandatory)  # `minimal`
PROFILES = ("minimal", "default", "root")
# `root`: a virtualization host (virtualization-host.md): `default` plus the privileges that let a
# guest kernel create and manage child partitions, and its own ID and properties.
ROOT_FEATURES = (
    "create-partitions", "memory-pool", "create-port", "access-stats", "partition-id", "partition-properties",
)  # fmt: skip


@dataclass(frozen=True)
class Gate:
    """What an MSR or a hypercall needs from the capabilities: all of `privileges`, all of
    `features_edx`, and the named hv1 grant `feature` (for access with no CPUID bit)."""

    privileges: int = 0
    features_edx: int = 0
    feature: str | None = None

    def allows(self, caps: Caps) -> bool:
        return (
            caps.privileges & self.privileges == self.privileges
            and caps.features_edx & self.features_edx == self.features_edx
            and (self.feature is None or self.feature in caps.features)
        )

    def describe(self) -> str:
        parts = [
            _flag_names(PartitionPrivilege, self.privileges),
            _flag_names(FeaturesEdx, self.features_edx),
        ]
        if self.feature:
            parts.append(f"grant:{self.feature}")
        text = "+".join(p for p in parts if p)
        return text or "-"


ALWAYS = Gate()


def privilege_gate(flag: int) -> Gate:
    return Gate(privileges=int(flag))


def edx_gate(flag: int) -> Gate:
    return Gate(features_edx=int(flag))


def grant_gate(feature: str) -> Gate:
    return Gate(feature=feature)


def _flag_names(enum_cls: type[PartitionPrivilege] | type[FeaturesEdx], value: int) -> str:
    return "|".join(m.name or "?" for m in enum_cls if value & m.value)


@dataclass(frozen=True)
class Caps:
    """The partition's capabilities. Constant for the partition's lifetime (Requirements doc:
    privileges identical on all VPs and constant for the life of the VM)."""

    features: frozenset[str]
    privileges: int
    features_ecx: int = 0
    features_edx: int = 0
    recommendations: int = 0
    spinlock_retries: int = SPINLOCK_RETRIES_NEVER
    implemented_phys_bits: int = 0  # 0x40000004 ECX 6:0 (0 = not reported)
    max_vps: int = IMPLEMENTATION_MAX_VPS  # 0x40000005 EAX (0 = not reported)
    max_lps: int = IMPLEMENTATION_MAX_LPS  # 0x40000005 EBX
    max_irq_vectors: int = 0  # 0x40000005 ECX: no interrupt remapping (no device interrupts)
    hardware_features: int = 0  # 0x40000006 EAX
    max_leaf: int = MINIMAL_MAX_LEAF
    vendor: str = HV_VENDOR_MICROSOFT
    # 0x40000002 EAX..EDX (build; major<<16|minor; service pack; branch<<24|number). All zero: hv1
    # reports no Windows release number (the leaf is diagnostic only).
    version: tuple[int, int, int, int] = (0, 0, 0, 0)
    apic_mode: str = "kernel"
    profile: str = ""  # the profile string it was parsed from (for display)
    # SINTx AutoEOI is honoured (TLFS inter-partition-communication.md "SINTx Registers"). True unless
    # the host cannot (see `without_auto_eoi`); the SynIC then traces and logs each AutoEOI SINT.
    auto_eoi: bool = True

    @property
    def beyond_requirements(self) -> bool:
        """Any feature beyond the Requirements-doc set (`minimal`): hv1 then presents the whole
        hypercall interface, the virtualization-host calls included (refused without their privilege)."""
        return not self.features <= MANDATORY_FEATURES

    # --- gate helpers -----------------------------------------------------------------------------
    def has_privilege(self, flag: int) -> bool:
        return self.privileges & int(flag) == int(flag)

    def has_feature(self, edx_flag: int) -> bool:
        """0x40000003 EDX bit(s)."""
        return self.features_edx & int(edx_flag) == int(edx_flag)

    def has_recommendation(self, flag: int) -> bool:
        return self.recommendations & int(flag) == int(flag)

    def enabled(self, name: str) -> bool:
        return name in self.features

    def allows(self, gate: Gate) -> bool:
        return gate.allows(self)

    # --- CPUID --------------------------------------------------------------------------------------
    def cpuid_leaves(self, guest_os_id_set: bool = False) -> dict[int, tuple[int, int, int, int]]:
        """Leaves 0x40000000..max_leaf as (EAX, EBX, ECX, EDX). Leaf 0x40000002 carries `version` only
        when `guest_os_id_set` (PDF §2.4.3); backends that fix CPUID before the first run ask once with
        the default False, so the leaf is zero (see DEVIATIONS)."""
        ebx, ecx, edx = vendor_registers(self.vendor)
        leaves: dict[int, tuple[int, int, int, int]] = {
            leaf: (0, 0, 0, 0) for leaf in range(HV_CPUID_VENDOR_AND_MAX_FUNCTIONS, self.max_leaf + 1)
        }
        leaves[HV_CPUID_VENDOR_AND_MAX_FUNCTIONS] = (self.max_leaf, ebx, ecx, edx)
        leaves[HV_CPUID_INTERFACE] = (HV_INTERFACE_HV1, 0, 0, 0)
        if guest_os_id_set:
            va, vb, vc, vd = (v & 0xFFFF_FFFF for v in self.version)
            leaves[HV_CPUID_VERSION] = (va, vb, vc, vd)
        leaves[HV_CPUID_FEATURES] = (
            self.privileges & 0xFFFF_FFFF,
            self.privileges >> 32,
            self.features_ecx,
            self.features_edx,
        )
        leaves[HV_CPUID_FEATURES + 1] = (
            self.recommendations,
            self.spinlock_retries,
            self.implemented_phys_bits & IMPLEMENTED_PHYSICAL_ADDRESS_BITS_MASK,
            0,
        )
        leaves[HV_CPUID_IMPLEMENTATION_LIMITS] = (self.max_vps, self.max_lps, self.max_irq_vectors, 0)
        if self.max_leaf >= HV_CPUID_HARDWARE_FEATURES:
            leaves[HV_CPUID_HARDWARE_FEATURES] = (self.hardware_features, 0, 0, 0)
        return leaves


# --- building and parsing ---------------------------------------------------------------------------


def _check_mode(apic_mode: str) -> None:
    if apic_mode not in APIC_MODES:
        raise ValueError(f"unknown APIC mode {apic_mode!r} (choose from: {', '.join(APIC_MODES)})")


def implemented_features(apic_mode: str) -> list[str]:
    """Names of the features hv1 implements end to end in `apic_mode`."""
    _check_mode(apic_mode)
    return [f.name for f in FEATURES if apic_mode in f.implemented_in]


def profile_features(profile: str, apic_mode: str) -> set[str]:
    """The feature names of a named profile (before dependency resolution)."""
    _check_mode(apic_mode)
    if profile == "minimal":
        return {f.name for f in FEATURES if f.mandatory}
    if profile in ("default", "root"):
        names = {f.name for f in FEATURES if apic_mode in f.implemented_in and (f.default or f.mandatory)}
        return names | set(ROOT_FEATURES) if profile == "root" else names
    raise ValueError(f"unknown profile {profile!r} (choose from: {', '.join(PROFILES)})")


def build_caps(
    features: Iterable[str],
    apic_mode: str = "kernel",
    *,
    max_leaf: int | None = None,
    max_vps: int = IMPLEMENTATION_MAX_VPS,
    profile: str = "",
) -> Caps:
    """Caps with exactly `features` (plus the mandatory ones). Every name must exist, be implemented
    in `apic_mode`, and have its requirements present; otherwise ValueError."""
    _check_mode(apic_mode)
    names = set(features) | {f.name for f in FEATURES if f.mandatory}
    privileges = ecx = edx = rec = hw = 0
    for name in sorted(names):
        feat = FEATURES_BY_NAME.get(name)
        if feat is None:
            raise ValueError(_unknown_feature_message(name))
        if apic_mode not in feat.implemented_in:
            raise ValueError(f"hv feature {name!r} is not implemented with apic mode {apic_mode!r}")
        for req in feat.requires:
            if req not in names:
                raise ValueError(f"hv feature {name!r} requires {req!r}")
        privileges |= int(feat.privileges)
        ecx |= int(feat.features_ecx)
        edx |= int(feat.features_edx)
        rec |= int(feat.recommendations)
        hw |= int(feat.hardware)
    if privileges & PRIVILEGES_MUST_BE_SET != PRIVILEGES_MUST_BE_SET:  # pragma: no cover - table invariant
        raise AssertionError("mandatory privileges missing")
    if max_leaf is None:
        max_leaf = MINIMAL_MAX_LEAF if names == profile_features("minimal", apic_mode) else DEFAULT_MAX_LEAF
    if not HV_CPUID_MIN_MAX_LEAF <= max_leaf <= HV_CPUID_NESTED_FEATURES:
        raise ValueError(f"max hypervisor CPUID leaf {max_leaf:#x} outside 0x40000005..0x4000000a")
    return Caps(
        features=frozenset(names),
        privileges=privileges,
        features_ecx=ecx,
        features_edx=edx,
        recommendations=rec,
        spinlock_retries=DEFAULT_SPINLOCK_RETRIES if "long-spin-wait" in names else SPINLOCK_RETRIES_NEVER,
        max_vps=max_vps,
        hardware_features=hw,
        max_leaf=max_leaf,
        apic_mode=apic_mode,
        profile=profile,
    )


def _unknown_feature_message(name: str) -> str:
    return (
        f"unknown hv feature {name!r}; profiles: {', '.join(PROFILES)}; "
        f"features: {', '.join(f.name for f in FEATURES)}"
    )


def parse_profile(spec: str, apic_mode: str = "kernel", *, max_vps: int = IMPLEMENTATION_MAX_VPS) -> Caps:
    """`minimal`, `default`, and `+name`/`-name` edits, comma-separated (module docstring).

    Features that were only inherited from the base profile are dropped when a feature they require
    is removed (`default,-synic` also drops `stimer`); an explicitly added feature whose requirement
    is missing is an error. Unknown names, unimplemented features and removing a mandatory feature
    raise ValueError."""
    _check_mode(apic_mode)
    tokens = [t.strip() for t in spec.split(",") if t.strip()]
    base = "default"
    if tokens and tokens[0] in PROFILES:
        base = tokens.pop(0)
    names = profile_features(base, apic_mode)
    added: set[str] = set()
    for tok in tokens:
        if tok in PROFILES:
            raise ValueError(f"profile {tok!r} must be the first item of {spec!r}")
        sign, name = (tok[0], tok[1:].strip()) if tok[0] in "+-" else ("+", tok)
        feat = FEATURES_BY_NAME.get(name)
        if feat is None:
            raise ValueError(_unknown_feature_message(name))
        if sign == "-":
            if feat.mandatory:
                raise ValueError(f"hv feature {name!r} is mandatory for Hv#1 and cannot be removed")
            names.discard(name)
            added.discard(name)
        else:
            if apic_mode not in feat.implemented_in:
                raise ValueError(f"hv feature {name!r} is not implemented with apic mode {apic_mode!r}")
            names.add(name)
            added.add(name)
    # Drop inherited features whose requirements were removed, to a fixpoint.
    changed = True
    while changed:
        changed = False
        for name in sorted(names):
            missing = [r for r in FEATURES_BY_NAME[name].requires if r not in names]
            if missing:
                if name in added:
                    raise ValueError(f"hv feature {name!r} requires {missing[0]!r}")
                names.discard(name)
                changed = True
    max_leaf = MINIMAL_MAX_LEAF if base == "minimal" else DEFAULT_MAX_LEAF
    return build_caps(names, apic_mode, max_leaf=max_leaf, max_vps=max_vps, profile=spec or base)


def with_features(caps: Caps, *names: str) -> Caps:
    """A copy of `caps` with extra features (tests and tools)."""
    return replace(
        build_caps(caps.features | set(names), caps.apic_mode, max_leaf=caps.max_leaf, max_vps=caps.max_vps),
        profile=caps.profile,
        auto_eoi=caps.auto_eoi,
    )


def without_auto_eoi(caps: Caps) -> Caps:
    """`caps` for a host that cannot honour SINT AutoEOI (KVM's in-kernel APIC without
    KVM_CAP_HYPERV_SYNIC2): AutoEOI not honoured, and its deprecation recommended (0x40000004.EAX[9])
    wherever there is a SynIC, so that only what works is advertised. Every other field is kept as is."""
    if "synic" in caps.features:
        hint = FEATURES_BY_NAME["auto-eoi-deprecated"]
        caps = replace(
            caps,
            features=caps.features | {hint.name},
            recommendations=caps.recommendations | int(hint.recommendations),
        )
    return replace(caps, auto_eoi=False)


# --- describe --------------------------------------------------------------------------------------


@dataclass
class _Out:
    lines: list[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        self.lines.append(text)


def _bits(
    out: _Out, title: str, enum_cls: Iterable[enum.IntFlag], value: int, shift: int = 0, width: int = 32
) -> None:
    out.add(f"    {title}")
    known = 0
    for member in enum_cls:
        mval = int(member)
        bit = mval.bit_length() - 1 - shift
        if not 0 <= bit < width:
            continue
        known |= mval
        mark = "x" if value & mval else " "
        out.add(f"      [{mark}] {bit:2d} {member.name}")
    unknown = value & ~known & (((1 << width) - 1) << shift)
    if unknown:
        out.add(f"      [x] other bits {unknown >> shift:#x} (undefined!)")


def describe(caps: Caps) -> str:
    """Every hypervisor leaf decoded bit by bit (`hv1 info --hv PROFILE`)."""
    out = _Out()
    out.add(f"Hv#1 capabilities: profile {caps.profile or '?'!r}, apic mode {caps.apic_mode}")
    out.add(f"  features: {', '.join(sorted(caps.features))}")
    off = [f.name for f in FEATURES if f.name not in caps.features and caps.apic_mode in f.implemented_in]
    out.add(f"  implemented but off: {', '.join(off) or '-'}")
    todo = [f.name for f in FEATURES if caps.apic_mode not in f.implemented_in]
    out.add(f"  not implemented (never advertised): {', '.join(todo) or '-'}")
    out.add("  CPUID.01h:ECX[31] hypervisor present = 1")
    for leaf, (a, b, c, d) in caps.cpuid_leaves().items():
        out.add(f"  CPUID {leaf:#010x} {LEAF_NAMES.get(leaf, '')}")
        out.add(f"    EAX={a:#010x} EBX={b:#010x} ECX={c:#010x} EDX={d:#010x}")
        if leaf == HV_CPUID_VENDOR_AND_MAX_FUNCTIONS:
            out.add(f"    EAX max leaf {a:#x}; EBX:ECX:EDX vendor {caps.vendor!r}")
        elif leaf == HV_CPUID_INTERFACE:
            sig = a.to_bytes(4, "little").decode("ascii", "replace")
            out.add(f"    EAX interface signature {sig!r}")
        elif leaf == HV_CPUID_VERSION:
            out.add("    version: zero (not reported; see deviations)")
        elif leaf == HV_CPUID_FEATURES:
            _bits(out, "EAX partition privileges 31:0", PartitionPrivilege, caps.privileges, 0)
            _bits(
                out,
                "EBX partition privileges 63:32 (EBX bit numbers)",
                PartitionPrivilege,
                caps.privileges,
                32,
            )
            _bits(out, "ECX", FeaturesEcx, c)
            _bits(out, "EDX", FeaturesEdx, d)
        elif leaf == HV_CPUID_FEATURES + 1:
            _bits(out, "EAX recommendations", Recommendations, a)
            never = " (never notify)" if b == SPINLOCK_RETRIES_NEVER else ""
            out.add(f"    EBX spinlock retries before HvCallNotifyLongSpinWait: {b:#x}{never}")
            out.add(f"    ECX implemented physical address bits: {c & 0x7F or 'not reported'}")
        elif leaf == HV_CPUID_IMPLEMENTATION_LIMITS:
            out.add(f"    EAX max virtual processors: {a or 'not reported'}")
            out.add(f"    EBX max logical processors: {b or 'not reported'}")
            out.add(f"    ECX max interrupt vectors for remapping: {c or 'not reported'}")
        elif leaf == HV_CPUID_HARDWARE_FEATURES:
            _bits(out, "EAX hardware features in use", HardwareFeatures, a)
        elif (a, b, c, d) == (0, 0, 0, 0):
            out.add("    (all zero: nothing reported)")
    out.add("  deviations from the TLFS:")
    for topic, text in DEVIATIONS:
        out.add(f"    - {topic}: {text}")
    return "\n".join(out.lines)
