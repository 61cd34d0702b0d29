"""What the guest's own CPUID says about its processor: the physical-address width and the
control-register and EFER bits it may set.

A register value the guest's CPUID does not allow is one the VP cannot hold: MOV to CR4 #GPs for a
bit whose feature CPUID does not report, WRMSR EFER #GPs likewise (Intel SDM vol. 3 §2.5 and vol. 4
"IA32_EFER"; AMD APM vol. 2 §3.1), and KVM refuses it in KVM_SET_SREGS (EINVAL). So a context
handed in by the guest (HvCallStartVirtualProcessor, TLFS hypercalls/HvCallStartVirtualProcessor.md:
HV_STATUS_INVALID_REGISTER_VALUE "The supplied register value is invalid") is checked against this
model of *the guest's* CPUID, which the machine builds once (`GuestCpu.from_leaves`) before the
first VP runs. hv1/hv never sees the backend's types: the machine passes plain leaves.

Without a machine (unit tests, `Partition` built alone) the partition uses `ARCHITECTURAL`: every
defined bit allowed and a 52-bit physical address width, the widest the architecture defines.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# --- CPUID bits (Intel SDM vol. 2A "CPUID", AMD APM vol. 3 appendix E) ------------------------------
# (leaf, subleaf, register index 0..3 = EAX/EBX/ECX/EDX, bit)
Bit = tuple[int, int, int, int]
EAX, EBX, ECX, EDX = 0, 1, 2, 3
CPUID_VME: Bit = (1, 0, EDX, 1)
CPUID_DE: Bit = (1, 0, EDX, 2)
CPUID_PSE: Bit = (1, 0, EDX, 3)
CPUID_PAE: Bit = (1, 0, EDX, 6)
CPUID_MCE: Bit = (1, 0, EDX, 7)
CPUID_PGE: Bit = (1, 0, EDX, 13)
CPUID_FXSR: Bit = (1, 0, EDX, 24)
CPUID_SSE: Bit = (1, 0, EDX, 25)
CPUID_VMX: Bit = (1, 0, ECX, 5)
CPUID_SMX: Bit = (1, 0, ECX, 6)
CPUID_PCID: Bit = (1, 0, ECX, 17)
CPUID_XSAVE: Bit = (1, 0, ECX, 26)
CPUID_FSGSBASE: Bit = (7, 0, EBX, 0)
CPUID_SMEP: Bit = (7, 0, EBX, 7)
CPUID_SMAP: Bit = (7, 0, EBX, 20)
CPUID_UMIP: Bit = (7, 0, ECX, 2)
CPUID_PKU: Bit = (7, 0, ECX, 3)
CPUID_CET_SS: Bit = (7, 0, ECX, 7)
CPUID_LA57: Bit = (7, 0, ECX, 16)
CPUID_PKS: Bit = (7, 0, ECX, 31)
CPUID_CET_IBT: Bit = (7, 0, EDX, 20)
CPUID_FRED: Bit = (7, 1, EAX, 17)
CPUID_LAM: Bit = (7, 1, EAX, 26)
CPUID_SYSCALL: Bit = (0x80000001, 0, EDX, 11)
CPUID_NX: Bit = (0x80000001, 0, EDX, 20)
CPUID_LM: Bit = (0x80000001, 0, EDX, 29)
LEAF_ADDRESS_SIZES = 0x80000008  # EAX[7:0] physical-address width (MAXPHYADDR)

# --- CR4 bits and the CPUID features that allow them (SDM vol. 3 §2.5 "Control Registers"; the same
# table as KVM's __cr4_reserved_bits). A bit with no entry here is reserved. TSD and PCE exist on
# every x86-64 processor. CET needs either shadow stacks or indirect-branch tracking.
CR4_ALLOWED_BY: tuple[tuple[int, tuple[Bit, ...]], ...] = (
    (0, (CPUID_VME,)),  # VME
    (1, (CPUID_VME,)),  # PVI
    (2, ()),  # TSD
    (3, (CPUID_DE,)),  # DE
    (4, (CPUID_PSE,)),  # PSE
    (5, (CPUID_PAE,)),  # PAE
    (6, (CPUID_MCE,)),  # MCE
    (7, (CPUID_PGE,)),  # PGE
    (8, ()),  # PCE
    (9, (CPUID_FXSR,)),  # OSFXSR
    (10, (CPUID_SSE,)),  # OSXMMEXCPT
    (11, (CPUID_UMIP,)),  # UMIP
    (12, (CPUID_LA57,)),  # LA57
    (13, (CPUID_VMX,)),  # VMXE
    (14, (CPUID_SMX,)),  # SMXE
    (16, (CPUID_FSGSBASE,)),  # FSGSBASE
    (17, (CPUID_PCID,)),  # PCIDE
    (18, (CPUID_XSAVE,)),  # OSXSAVE
    (20, (CPUID_SMEP,)),  # SMEP
    (21, (CPUID_SMAP,)),  # SMAP
    (22, (CPUID_PKU,)),  # PKE
    (23, (CPUID_CET_SS, CPUID_CET_IBT)),  # CET (either feature)
    (24, (CPUID_PKS,)),  # PKS
    (28, (CPUID_LAM,)),  # LAM_SUP
    (32, (CPUID_FRED,)),  # FRED
)
CR4_DEFINED = sum(1 << bit for bit, _ in CR4_ALLOWED_BY)

# --- EFER bits (SDM vol. 4 IA32_EFER; AMD APM vol. 2 §3.1.7) -----------------------------------------
# Only the bits a VP may start with: SVME, LMSLE, FFXSR, TCE, ... are not offered (hv1 starts no VP
# with AMD-only extensions; the fixed list is what the checks in hv/hypercalls/vp_calls.py know).
EFER_ALLOWED_BY: tuple[tuple[int, tuple[Bit, ...]], ...] = (
    (0, (CPUID_SYSCALL,)),  # SCE
    (8, (CPUID_LM,)),  # LME
    (10, (CPUID_LM,)),  # LMA
    (11, (CPUID_NX,)),  # NXE
)
EFER_DEFINED = sum(1 << bit for bit, _ in EFER_ALLOWED_BY)

MAXPHYADDR_ARCH = 52  # the widest physical address the architecture defines
MAXPHYADDR_DEFAULT = 36  # SDM: "if CPUID.80000008H is not supported, MAXPHYADDR is 36"

Leaves = Mapping[tuple[int, int], tuple[int, int, int, int]]


def _has(leaves: Leaves, bit: Bit) -> bool:
    leaf, sub, reg, pos = bit
    regs = leaves.get((leaf, sub))
    return regs is not None and bool(regs[reg] >> pos & 1)


@dataclass(frozen=True)
class GuestCpu:
    """The guest processor as its CPUID describes it."""

    max_phys_bits: int = MAXPHYADDR_ARCH
    cr4_allowed: int = CR4_DEFINED  # CR4 bits the VP may have set
    efer_allowed: int = EFER_DEFINED  # EFER bits the VP may have set

    @classmethod
    def from_leaves(cls, leaves: Leaves) -> GuestCpu:
        """From the guest's CPUID table: {(function, index): (eax, ebx, ecx, edx)}."""

        def allowed(table: tuple[tuple[int, tuple[Bit, ...]], ...]) -> int:
            return sum(1 << b for b, needs in table if not needs or any(_has(leaves, n) for n in needs))

        phys = MAXPHYADDR_DEFAULT
        sizes = leaves.get((LEAF_ADDRESS_SIZES, 0))
        if sizes is not None and sizes[EAX] & 0xFF:
            phys = min(sizes[EAX] & 0xFF, MAXPHYADDR_ARCH)
        return cls(
            max_phys_bits=phys, cr4_allowed=allowed(CR4_ALLOWED_BY), efer_allowed=allowed(EFER_ALLOWED_BY)
        )


ARCHITECTURAL = GuestCpu()
