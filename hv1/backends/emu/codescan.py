"""Where in guest code the emulator backend must look: the instructions it stops at, found by scanning.

Unicorn 2.1.4 gives an instruction hook for CPUID, IN and OUT, but none for RDMSR and WRMSR
(uc_hook_add answers UC_ERR_HOOK for UC_X86_INS_RDMSR/WRMSR, and the Python binding UC_ERR_ARG:
measured), it drops MOV to/from CR8 (it has no APIC), and it reports HLT only by returning from
emu_start. A code hook on every instruction sees them all, but it is a Python call per guest
instruction (~1.7 us, against ~6 ns for emulated code without one). Unicorn decides when it
translates a block whether an instruction calls a code hook (the hook's [begin, end] address
range), so a hook limited to one address costs nothing anywhere else.

So each page of guest code is scanned once, before any of it runs (vcpu.py: the block hook stops
in front of a block on a page not scanned yet), for the byte patterns of these instructions, and a
code hook is put on each candidate address. A candidate is a byte pattern, not a decoded
instruction: the same bytes inside another instruction (an immediate, a displacement) or in data
never start an instruction, so that hook never runs; when it runs, an instruction starts there and
the bytes are that instruction. The backend still confirms the bytes through the page tables
before acting (a stale page, see vcpu.py).

| pattern | instruction | hooked | the hook |
|---|---|---|---|
| 0F 32 | RDMSR | itself | stops in front of it; the run loop answers it |
| 0F 30 | WRMSR | itself | same |
| REX.R 0F 20/22, mod=11 reg=000 | MOV r64, CR8 / MOV CR8, r64 | itself | same (SDM Vol. 3 §2.5) |
| F4 | HLT | itself | records it: emu_start returns after it (the HLT exit) |
| E6 90 / E7 90 | OUT 0x90, AL/EAX | the next one | stops: the hypercall sees the registers after it |

Not found (none of hv1's guests nor the hypercall page uses them): prefixed RDMSR/WRMSR (66, F2, F3
or a segment override before 0F 30/0F 32), which the emulator then runs itself (an unknown MSR
reads 0), and OUT DX to the hypercall port, whose exit then comes at the next block boundary.
"""

from __future__ import annotations

import enum
import re

PAGE = 0x1000
TAIL = 3  # bytes of the next page a pattern starting on this page may use (the CR8 form is 4 long)
HYPERCALL_OUT_LEN = 2  # E6 ib / E7 ib


class Stop(enum.IntFlag):
    """What a candidate hook address is for (an address can be several: E6 90 F4)."""

    RDMSR = 1
    WRMSR = 2
    CR8 = 4
    HLT = 8
    AFTER_HYPERCALL_OUT = 16


_PATTERNS: tuple[tuple[re.Pattern[bytes], Stop, int], ...] = (
    (re.compile(rb"\x0f\x32"), Stop.RDMSR, 0),
    (re.compile(rb"\x0f\x30"), Stop.WRMSR, 0),
    # REX with R set (CR8 is CR0 + 8; W and B free), 0F 20 or 0F 22, ModRM mod=11 reg=000.
    (re.compile(rb"[\x44-\x47\x4c-\x4f]\x0f[\x20\x22][\xc0-\xc7]"), Stop.CR8, 0),
    (re.compile(rb"\xf4"), Stop.HLT, 0),
    (re.compile(rb"[\xe6\xe7]\x90"), Stop.AFTER_HYPERCALL_OUT, HYPERCALL_OUT_LEN),
)


def scan_page(code: bytes, base: int) -> dict[int, Stop]:
    """Candidate hook addresses for the page of guest code at linear address `base` (page aligned).
    `code` is the page followed by up to TAIL bytes of the next one, so a pattern that starts on
    this page and crosses into the next is found; a pattern starting on the next page is that page's.
    Returns {linear address: what to do there}; an address may lie on the next page (after an OUT)."""
    out: dict[int, Stop] = {}
    for pattern, kind, hook_offset in _PATTERNS:
        for m in pattern.finditer(code):
            if m.start() >= PAGE:
                break
            addr = base + m.start() + hook_offset
            out[addr] = out.get(addr, Stop(0)) | kind
    return out
