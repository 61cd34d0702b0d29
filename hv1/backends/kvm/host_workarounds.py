"""Workarounds for a host whose KVM emulates guest ring-0 code (kvm_pvm in "native-guest emulation"
mode; ../shared/notes/host-kvm.md), named and kept in one place so they are visible and do nothing on a
host that does not need them.

On such a host, instructions KVM's emulator does not handle end KVM_RUN with an emulation failure
(KVM_EXIT_INTERNAL_ERROR, suberror 1). Measured with Debian 12's 6.1 kernel (issue 12, guests-and-
hosts.md §2), and what this layer does about each:

- `int3` (0xCC) at CPL0 (the alternatives self-test, every jump-label/static-call patch site): the
  guest meant a breakpoint trap, so hv1 delivers it: RIP past the instruction (int3 is a trap: the
  #BP frame holds the next RIP, SDM Vol. 3 6.5 "Exception Classifications") and vector 3 injected
  with KVM_SET_VCPU_EVENTS. Verified on that host to work.
  A text-patching int3 (text_poke_bp, arch/x86/kernel/alternative.c) lives only while another CPU
  patches the site: by the time hv1 handles the failure, that CPU may have put the instruction's
  first byte back (seen on a 2-VP boot: KVM reported `cc 90 ...`, RAM held `66 90 ...`). KVM's
  report of the bytes it failed on (KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES) is compared
  with RAM: when the first byte changed under the failure, the instruction is retried as it now
  stands (RIP unchanged, nothing injected), since a #BP for an int3 that is gone is one Linux's int3
  handler no longer claims, and it dies with "int3" (exc_int3).
- `fwait` (0x9B) in fpu__drop: skipped (RIP + 1). It only checks for pending x87 exceptions, which a
  freshly dropped FPU state has none of.
- `lock cmpxchg16b` (SLUB): avoided by hiding CPUID.1:ECX.CX16 (bit 13), which that host honours.
- `lsl reg, reg` (0F 03 /r, register form): Linux's NMI entry reads the per-CPU base from the
  __CPUNODE_SEG descriptor's limit when the CPU has FSGSBASE but no RDPID (paranoid_entry), so any
  NMI (an RCU-stall backtrace, a panic) was fatal. hv1 does what the instruction does (SDM Vol. 2A
  "LSL"): the descriptor from the GDT (an LDT selector stays fatal), the limit scaled by G, ZF set
  and the destination written if the descriptor is one LSL accepts and DPL >= max(CPL, RPL) (a
  conforming code segment ignores that), else ZF cleared.
- IA32_TSC_ADJUST (MSR 0x3B): since host kernel 6.18.44-fc-v1098 a guest write is stored and read
  back but does not move the guest TSC. Not worked around: that host answers CPUID leaf 7 from the
  real CPU whatever KVM_SET_CPUID2 says (the guest sees EBX=0xf1bf03ab where the table has
  0x1800002), so the TSC_ADJUST bit cannot be hidden; tests allow exactly those checks to fail there.
- `xrstor`/`xgetbv`, `clac`, `popcnt`, `ldmxcsr` and the crypto self-tests: the guest must be told on
  its command line (those CPUID bits cannot be hidden there): RECOMMENDED_CMDLINE, printed by
  `hv1 info`.
- Slowness itself (~0.5 µs per ring-0 instruction, and each timer tick costs milliseconds): kernel
  loops that never reschedule hold a CPU for one to several minutes here (Debian's 6.1, 2 VPs:
  ftrace's weak-function check, ftrace_check_work_func, ~37,700 kallsyms lookups; the trace-event
  eval-map update), long enough for "BUG: soft lockup" at the default 20 s on that CPU and on the
  other one, whose stop_machine (the clocksource switch) waits for it. `watchdog_thresh=60` (the
  most Linux takes: soft lockups at 120 s) lets such a boot reach /init with no report; the
  measured boot that did had none. (`preempt=full` instead made those loops preemptible, but in
  both boots that used it VP 0 stopped making progress before /init; not understood yet.)

Detection: the kvm_pvm module is loaded (/sys/module/kvm_pvm). `hv1 run --host-workarounds on|off`
overrides it. Anything other than int3/fwait stays a fatal emulation failure with the usual dump.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from hv1.backends.base import CpuidEntry

RECOMMENDED_CMDLINE = (
    "noxsave clearcpuid=smap,popcnt,ssse3 mitigations=off cryptomgr.notests watchdog_thresh=60"
)
CPUID1_ECX_CX16 = 1 << 13
INT3, FWAIT = 0xCC, 0x9B
BP_VECTOR = 3
MODES = ("auto", "on", "off")
SYSFS_MODULES = Path("/sys/module")


@dataclass(frozen=True)
class HostWorkarounds:
    enabled: bool
    reason: str

    @property
    def recommended_cmdline(self) -> str:
        return RECOMMENDED_CMDLINE if self.enabled else ""


OFF = HostWorkarounds(False, "not needed")


def detect(mode: str = "auto", sysfs_modules: Path = SYSFS_MODULES) -> HostWorkarounds:
    """Decide whether this host needs the workarounds ("auto": when kvm_pvm is loaded)."""
    if mode == "on":
        return HostWorkarounds(True, "forced on (--host-workarounds on)")
    if mode == "off":
        return HostWorkarounds(False, "forced off (--host-workarounds off)")
    if mode != "auto":
        raise ValueError(f"host workarounds mode must be one of {', '.join(MODES)}, not {mode!r}")
    pvm = sysfs_modules / "kvm_pvm"
    if pvm.is_dir():
        native = pvm / "parameters" / "pvm_native"
        try:
            detail = f", pvm_native={native.read_text().strip()}"
        except OSError:
            detail = ""
        return HostWorkarounds(True, f"kvm_pvm is loaded{detail}: guest ring-0 code is emulated")
    return OFF


class Action(enum.Enum):
    INJECT_BREAKPOINT = "int3->#BP"  # RIP past the int3, inject #BP
    SKIP = "skip"  # RIP past the instruction, nothing else
    RETRY = "retry"  # the instruction changed under the failure: run it again as it is now
    LSL = "lsl"  # emulate `lsl reg, reg` (lsl_operands), RIP past it


def decide(
    w: HostWorkarounds, insn: bytes | None, reported: bytes | None = None
) -> tuple[Action, int] | None:
    """What to do about an emulation failure: `insn` is what RAM holds at RIP now (at least its
    first byte; None when it cannot be read), `reported` the bytes KVM says it failed on (None when
    KVM did not report them). (action, instruction length), or None for fatal."""
    if not w.enabled or not insn:
        return None
    failed = reported if reported else insn
    if failed[0] in (INT3, FWAIT) and failed[0] != insn[0]:
        return Action.RETRY, 0  # patched back by another VP (module docstring)
    if failed[0] == INT3:
        return Action.INJECT_BREAKPOINT, 1
    if failed[0] == FWAIT:
        return Action.SKIP, 1
    lsl = lsl_operands(failed)
    if lsl is not None and insn[: lsl.length] == failed[: lsl.length]:
        return Action.LSL, lsl.length
    return None


# Hardware register numbers (ModRM reg/rm with REX.R/REX.B) to the names vCPUs use.
REG_NAMES = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
             "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")  # fmt: skip
RFLAGS_ZF = 1 << 6


@dataclass(frozen=True)
class LslOperands:
    dest: str  # register names (REG_NAMES)
    src: str
    size: int  # operand size in bytes: 2, 4 or 8
    length: int  # instruction length


def lsl_operands(insn: bytes) -> LslOperands | None:
    """Decode `[66] [REX] 0F 03 /r` with a register source (ModRM.mod = 3); None for anything else
    (the memory form, other prefixes, other instructions)."""
    i, size, rex = 0, 4, 0
    if insn[i : i + 1] == b"\x66":
        size, i = 2, i + 1
    if i < len(insn) and 0x40 <= insn[i] <= 0x4F:
        rex, i = insn[i], i + 1
        if rex & 8:
            size = 8
    if insn[i : i + 2] != b"\x0f\x03" or len(insn) < i + 3 or insn[i + 2] >> 6 != 3:
        return None
    modrm = insn[i + 2]
    dest = REG_NAMES[(rex >> 2 & 1) << 3 | (modrm >> 3 & 7)]
    src = REG_NAMES[(rex & 1) << 3 | (modrm & 7)]
    return LslOperands(dest, src, size, i + 3)


def lsl_limit(descriptor: int, cpl: int, rpl: int) -> int | None:
    """What LSL loads for this 8-byte descriptor (SDM Vol. 2A "LSL"), or None where it clears ZF:
    not present is fine (LSL does not check P), but the type must be a code/data segment or an LDT
    or (64-bit mode) an available/busy TSS, and DPL >= max(CPL, RPL) unless conforming code."""
    s_bit, typ, dpl = descriptor >> 44 & 1, descriptor >> 40 & 0xF, descriptor >> 45 & 3
    if not s_bit and typ not in (2, 9, 11):
        return None
    conforming = s_bit and typ & 0b1100 == 0b1100
    if not conforming and dpl < max(cpl, rpl):
        return None
    limit = (descriptor & 0xFFFF) | (descriptor >> 48 & 0xF) << 16
    return (limit << 12) | 0xFFF if descriptor >> 55 & 1 else limit


def adjust_cpuid(w: HostWorkarounds, entries: Iterable[CpuidEntry]) -> None:
    """Hide what the host cannot emulate but lets the VMM hide (CPUID.1:ECX.CX16)."""
    if not w.enabled:
        return
    for e in entries:
        if e.function == 1:
            e.ecx &= ~CPUID1_ECX_CX16


class WorkaroundVcpu(Protocol):
    def get(self, name: str) -> int: ...
    def set(self, name: str, value: int) -> None: ...
    def inject_exception(self, vector: int, error_code: int | None) -> None: ...


def handle_emulation_failure(
    w: HostWorkarounds,
    vcpu: WorkaroundVcpu,
    read_insn: Callable[[int], bytes | None],
    note: Callable[[str, int], None] | None = None,
    reported: bytes | None = None,
    read_descriptor: Callable[[int], tuple[int, int] | None] | None = None,
) -> bool:
    """Apply the workaround for an emulation failure at the vCPU's RIP; False if there is none (the
    failure stays fatal). `read_insn(rip)` returns the bytes at RIP (through the guest's page tables);
    `reported` is KVM's copy of the instruction bytes it failed on, when it gave one;
    `read_descriptor(selector)` gives (the GDT descriptor, CPL), or None for a null, LDT or
    out-of-limit selector or an unreadable GDT."""
    rip = vcpu.get("rip")
    decision = decide(w, read_insn(rip), reported)
    if decision is None:
        return False
    action, length = decision
    if action is Action.LSL:
        insn = read_insn(rip)
        ops = lsl_operands(insn) if insn else None
        if ops is None or read_descriptor is None:
            return False
        selector = vcpu.get(ops.src) & 0xFFFF
        found = read_descriptor(selector) if selector & ~3 else None
        limit = None if found is None else lsl_limit(found[0], found[1], selector & 3)
        flags = vcpu.get("rflags")
        if limit is None:
            vcpu.set("rflags", flags & ~RFLAGS_ZF)
        else:
            old = vcpu.get(ops.dest)
            # A 16-bit destination keeps its upper bits; a 32-bit one is zero-extended (SDM 3.4.1.1).
            vcpu.set(ops.dest, (old & ~0xFFFF) | (limit & 0xFFFF) if ops.size == 2 else limit)
            vcpu.set("rflags", flags | RFLAGS_ZF)
    vcpu.set("rip", rip + length)
    if action is Action.INJECT_BREAKPOINT:
        vcpu.inject_exception(BP_VECTOR, None)
    if note is not None:
        note(action.value, rip)
    return True
