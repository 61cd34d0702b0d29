"""The architectural MSRs the emulator's CPU implements itself.

Unicorn (QEMU TCG's `helper_rdmsr`/`helper_wrmsr`) answers every other MSR index with 0 and
ignores writes, where a processor raises #GP(0) (Intel SDM vol. 4; rdmsr/wrmsr in vol. 2B). So
the backend intercepts every RDMSR/WRMSR: indexes in this table go to the emulator's own MSR
emulation, every other index to the machine (`ExitHandler.rdmsr/wrmsr`: hv1's synthetic MSRs, the
user-mode APIC, and #GP for what nobody implements, as on KVM). Ranges are [first, last].
"""

from __future__ import annotations

EMULATED_MSRS: tuple[tuple[int, int, str], ...] = (
    (0x10, 0x10, "IA32_TSC"),
    (0xFE, 0xFE, "IA32_MTRRCAP"),
    (0x174, 0x176, "IA32_SYSENTER_CS/ESP/EIP"),
    (0x179, 0x17B, "IA32_MCG_CAP/STATUS/CTL"),
    (0x1A0, 0x1A0, "IA32_MISC_ENABLE"),
    (0x200, 0x20F, "IA32_MTRR_PHYSBASE/MASK0-7"),
    (0x250, 0x250, "IA32_MTRR_FIX64K_00000"),
    (0x258, 0x259, "IA32_MTRR_FIX16K"),
    (0x268, 0x26F, "IA32_MTRR_FIX4K"),
    (0x277, 0x277, "IA32_PAT"),
    (0x2FF, 0x2FF, "IA32_MTRR_DEF_TYPE"),
    (0x400, 0x43F, "IA32_MCi_CTL/STATUS/ADDR/MISC"),
    (0xC0000080, 0xC0000084, "IA32_EFER, STAR, LSTAR, CSTAR, FMASK"),
    (0xC0000100, 0xC0000103, "FS_BASE, GS_BASE, KERNEL_GS_BASE, TSC_AUX"),
)


def emulated(index: int) -> bool:
    return any(first <= index <= last for first, last, _ in EMULATED_MSRS)
