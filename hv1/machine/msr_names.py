"""Readable names for the MSRs `hv1 run --stats` counts: the TLFS's synthetic MSRs by their TLFS names
(hv1/tlfs/msrs.py), the x2APIC registers by their SDM names ("x2APIC Register Address Space": MSR
0x800 + the xAPIC offset >> 4), and the few architectural MSRs a guest makes the VMM answer. Anything
else keeps its hex index."""

from __future__ import annotations

from hv1.hv.apic import Reg
from hv1.tlfs.msrs import MSR_NAMES, msr_name

X2APIC_BASE = 0x800
# The 256-bit ISR, TMR and IRR each span 8 registers (SDM "x2APIC Register Address Space").
_BANKED = (Reg.ISR0, Reg.TMR0, Reg.IRR0)
ARCHITECTURAL = {
    0x01B: "IA32_APIC_BASE",
    0x03B: "IA32_TSC_ADJUST",
    0x6E0: "IA32_TSC_DEADLINE",
    0xC001_1029: "AMD64_DE_CFG",  # AMD family 17h+ (Linux's MSR_AMD64_DE_CFG: LFENCE serializing)
}


def _x2apic_name(index: int) -> str | None:
    reg = index - X2APIC_BASE
    for bank in _BANKED:
        if bank <= reg < bank + 8:
            return f"X2APIC_{bank.name[:-1]}{reg - bank}"
    try:
        return f"X2APIC_{Reg(reg).name}"
    except ValueError:
        return None


def stats_msr_name(index: int) -> str:
    if index in MSR_NAMES:
        return MSR_NAMES[index]
    if X2APIC_BASE <= index < X2APIC_BASE + 0x100:
        name = _x2apic_name(index)
        if name is not None:
            return name
    return ARCHITECTURAL.get(index) or msr_name(index)
