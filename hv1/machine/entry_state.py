"""The CPU state a loader asks the BSP to start in: plain data, applied to a vCPU by
hv1/backends/kvm/cpustate.py (set_entry_state). Loaders stay free of the backend and are unit-tested on
fake memory; the machine only applies what they return.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class EntryMode(enum.Enum):
    PROTECTED32 = "protected32"  # flat 32-bit protected mode, paging off (Multiboot, PVH)
    LONG64 = "long64"  # 64-bit mode, paging on through `cr3` (Linux 64-bit boot protocol)


@dataclass(frozen=True)
class EntryState:
    mode: EntryMode
    rip: int
    gprs: dict[str, int] = field(default_factory=dict)  # e.g. {"rax": magic, "rbx": info}
    code_selector: int = 0x08
    data_selector: int = 0x10
    cr3: int = 0  # LONG64: the PML4
    gdt: tuple[int, int] | None = None  # (base, limit) of a GDT the loader wrote, if the ABI wants one
    tss: bool = False  # load TR with a 32-bit busy TSS, base 0, limit 0x67 (PVH entry state)

    @classmethod
    def multiboot(cls, entry: int, eax: int, ebx: int) -> EntryState:
        return cls(EntryMode.PROTECTED32, entry, {"rax": eax, "rbx": ebx})
