"""The host workaround layer (hv1/backends/kvm/host_workarounds.py): when it applies, and what it does
to an emulation failure and to CPUID. The KVM path (the real KVM_SET_VCPU_EVENTS on kvm_pvm) needs
the host; here the decision logic and the register effects are checked on a fake vCPU."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from hv1.backends.kvm import host_workarounds as hw
from hv1.backends.kvm import ioctls as k


def sysfs(tmp_path: Path, pvm: bool, native: str | None = "Y") -> Path:
    (tmp_path / "kvm").mkdir()
    if pvm:
        (tmp_path / "kvm_pvm" / "parameters").mkdir(parents=True)
        if native is not None:
            (tmp_path / "kvm_pvm" / "parameters" / "pvm_native").write_text(native + "\n")
    return tmp_path


def test_detects_kvm_pvm(tmp_path: Path) -> None:
    w = hw.detect("auto", sysfs(tmp_path, pvm=True))
    assert w.enabled and "kvm_pvm" in w.reason and "pvm_native=Y" in w.reason
    assert w.recommended_cmdline == hw.RECOMMENDED_CMDLINE
    assert "noxsave" in w.recommended_cmdline and "clearcpuid=smap,popcnt,ssse3" in w.recommended_cmdline


def test_ordinary_kvm_host_needs_nothing(tmp_path: Path) -> None:
    w = hw.detect("auto", sysfs(tmp_path, pvm=False))
    assert not w.enabled and w.recommended_cmdline == ""


def test_forced_modes_override_detection(tmp_path: Path) -> None:
    assert hw.detect("on", sysfs(tmp_path, pvm=False)).enabled
    assert not hw.detect("off", tmp_path).enabled
    with pytest.raises(ValueError, match="auto, on, off"):
        hw.detect("sometimes", tmp_path)


ON = hw.HostWorkarounds(True, "test")


@pytest.mark.parametrize(
    ("insn", "expect"),
    [
        (b"\xcc\x90", (hw.Action.INJECT_BREAKPOINT, 1)),
        (b"\x9b", (hw.Action.SKIP, 1)),
        (b"\x0f\x01\xca", None),  # clac: stays fatal (the command line avoids it)
        (b"\x48\x0f\xc7\x0e", None),  # cmpxchg16b: stays fatal (CX16 is hidden instead)
        (b"", None),
        (None, None),  # RIP not mapped
    ],
)
def test_decide(insn: bytes | None, expect: tuple[hw.Action, int] | None) -> None:
    assert hw.decide(ON, insn) == expect


def test_disabled_layer_decides_nothing() -> None:
    assert hw.decide(hw.OFF, b"\xcc") is None and hw.decide(hw.OFF, b"\x9b") is None


class FakeVcpu:
    def __init__(self, rip: int) -> None:
        self.regs = {"rip": rip}
        self.injected: list[tuple[int, int | None]] = []

    def get(self, name: str) -> int:
        return self.regs[name]

    def set(self, name: str, value: int) -> None:
        self.regs[name] = value

    def inject_exception(self, vector: int, error_code: int | None) -> None:
        self.injected.append((vector, error_code))


def test_int3_becomes_a_breakpoint_trap_after_the_instruction() -> None:
    v = FakeVcpu(0xFFFFFFFF81000010)
    notes: list[tuple[str, int]] = []
    assert hw.handle_emulation_failure(ON, v, lambda rip: b"\xcc", lambda a, r: notes.append((a, r)))
    # #BP is a trap: the frame's RIP is the instruction after int3 (SDM Vol. 3 6.5)
    assert v.regs["rip"] == 0xFFFFFFFF81000011 and v.injected == [(3, None)]
    assert notes == [("int3->#BP", 0xFFFFFFFF81000010)]


def test_fwait_is_skipped_without_an_exception() -> None:
    v = FakeVcpu(0x1000)
    assert hw.handle_emulation_failure(ON, v, lambda rip: b"\x9b")
    assert v.regs["rip"] == 0x1001 and v.injected == []


def test_other_failures_stay_fatal_and_untouched() -> None:
    v = FakeVcpu(0x1000)
    assert not hw.handle_emulation_failure(ON, v, lambda rip: b"\x0f\x01\xca")
    assert not hw.handle_emulation_failure(hw.OFF, v, lambda rip: b"\xcc")
    assert v.regs["rip"] == 0x1000 and v.injected == []


def test_int3_another_vp_already_patched_back_is_retried() -> None:
    # Regression: a 2-VP Linux boot stopped with "emulation failure" at a jump-label site: KVM failed
    # on `cc 90 41 f7 c7 ...` (text_poke_bp's int3 over `66 90`), and by the time hv1 read RAM the
    # patching VP had restored `66`; deciding from RAM alone made it fatal. The instruction changed
    # under the failure, so it runs again as it now is: no #BP (Linux's int3 handler would no longer
    # claim it and die), RIP unchanged.
    v = FakeVcpu(0xFFFFFFFF811451D7)
    notes: list[tuple[str, int]] = []
    reported = bytes.fromhex("cc9041f7c7000010000f847d010000")
    ram_now = b"\x66"

    def note(action: str, rip: int) -> None:
        notes.append((action, rip))

    assert hw.handle_emulation_failure(ON, v, lambda rip: ram_now, note, reported)
    assert v.regs["rip"] == 0xFFFFFFFF811451D7 and v.injected == []
    assert notes == [("retry", 0xFFFFFFFF811451D7)]


@pytest.mark.parametrize(
    ("ram", "reported", "expect"),
    [
        (b"\xcc", b"\xcc\x90", (hw.Action.INJECT_BREAKPOINT, 1)),  # still there: the breakpoint
        (b"\x66", b"\xcc\x90", (hw.Action.RETRY, 0)),
        (b"\x90", b"\x9b", (hw.Action.RETRY, 0)),
        (b"\xcc", b"\x0f\x01\xca", None),  # KVM failed on clac: fatal whatever RAM holds now
        (b"\xcc", None, (hw.Action.INJECT_BREAKPOINT, 1)),  # no report: RAM decides, as before
    ],
)
def test_decide_trusts_the_reported_bytes(ram: bytes, reported: bytes | None, expect: object) -> None:
    assert hw.decide(ON, ram, reported) == expect


def test_emulation_failure_bytes_from_kvm_run() -> None:
    from hv1.backends.kvm.vcpu import emulation_failure_bytes

    run = bytearray(4096)
    insn = bytes.fromhex("cc9041f7c7")
    struct.pack_into("<IIQB15s", run, 32, k.KVM_INTERNAL_ERROR_EMULATION, 3, 1, len(insn), insn)
    assert emulation_failure_bytes(bytes(run), 3) == insn
    assert emulation_failure_bytes(bytes(run), 0) is None  # no data: nothing reported
    struct.pack_into("<Q", run, 40, 0)  # flags without INSTRUCTION_BYTES
    assert emulation_failure_bytes(bytes(run), 3) is None


def test_cx16_hidden_only_when_needed() -> None:
    def leaves() -> list[k.kvm_cpuid_entry2]:
        return [
            k.kvm_cpuid_entry2(function=1, ecx=0xFFFFFFFF),
            k.kvm_cpuid_entry2(function=7, ecx=0xFFFFFFFF),
        ]

    on = leaves()
    hw.adjust_cpuid(ON, on)
    assert on[0].ecx == 0xFFFFFFFF & ~hw.CPUID1_ECX_CX16 and on[1].ecx == 0xFFFFFFFF
    off = leaves()
    hw.adjust_cpuid(hw.OFF, off)
    assert off[0].ecx == 0xFFFFFFFF


# Linux 6.1's __CPUNODE_SEG descriptor (arch/x86/kernel/cpu/common.c setup_getcpu): a DPL-3 read-only
# data segment whose 20-bit limit is (node << 12) | cpu, byte granular; here cpu 1, node 0.
CPUNODE = (0x1 & 0xFFFF) | (0xF3 << 40)  # P=1, DPL=3, S=1, type 3 (data, read/write, accessed)


def test_lsl_register_form_decodes() -> None:
    assert hw.lsl_operands(bytes.fromhex("480f03c0")) == hw.LslOperands("rax", "rax", 8, 4)
    assert hw.lsl_operands(bytes.fromhex("4d0f03c8")) == hw.LslOperands("r9", "r8", 8, 4)  # REX.R/B
    assert hw.lsl_operands(bytes.fromhex("0f03d1")) == hw.LslOperands("rdx", "rcx", 4, 3)
    assert hw.lsl_operands(bytes.fromhex("660f03d1")) == hw.LslOperands("rdx", "rcx", 2, 4)
    assert hw.lsl_operands(bytes.fromhex("0f0300")) is None  # memory source: not handled (fatal)
    assert hw.lsl_operands(bytes.fromhex("0f02c0")) is None  # lar


@pytest.mark.parametrize(
    ("descriptor", "cpl", "rpl", "limit"),
    [
        (CPUNODE, 0, 3, 1),
        (CPUNODE | 0xFFFF | 0xF << 48 | 1 << 55, 0, 3, 0xFFFFFFFF),  # G: limit << 12 | 0xFFF
        (CPUNODE & ~(3 << 45), 0, 3, None),  # DPL 0 < RPL 3
        (0x00AF9B000000FFFF, 3, 3, 0xFFFFFFFF),  # 64-bit kernel code seen from CPL 3: below
    ],
)
def test_lsl_limit(descriptor: int, cpl: int, rpl: int, limit: int | None) -> None:
    if descriptor == 0x00AF9B000000FFFF:  # kernel code (type 0xB: execute/read, accessed), DPL 0
        assert hw.lsl_limit(descriptor, cpl, rpl) is None  # DPL 0 < CPL 3
        assert hw.lsl_limit(descriptor | 0b0100 << 40, cpl, rpl) == limit  # conforming: no DPL check
        return
    assert hw.lsl_limit(descriptor, cpl, rpl) == limit


def test_lsl_system_descriptors() -> None:
    tss = 0x67 | 0x89 << 40  # available 64-bit TSS, DPL 0
    assert hw.lsl_limit(tss, 0, 0) == 0x67
    gate = 0x8E << 40  # interrupt gate: LSL refuses it
    assert hw.lsl_limit(gate, 0, 0) is None


def test_nmi_entry_lsl_is_emulated() -> None:
    # Regression: the RCU-stall NMI backtrace ended a 2-VP Linux boot with "emulation failure" at
    # paranoid_entry's `lsl rax, rax` (48 0f 03 c0, rax = 0x7b = __CPUNODE_SEG).
    v = FakeVcpu(0xFFFFFFFF81C012CE)
    v.regs.update(rax=0x7B, rflags=0x46 & ~hw.RFLAGS_ZF)
    code = bytes.fromhex("480f03c0482 5ff0f0000".replace(" ", ""))
    seen: list[int] = []

    def gdt(selector: int) -> tuple[int, int]:
        seen.append(selector)
        return CPUNODE, 0

    assert hw.handle_emulation_failure(ON, v, lambda rip: code, None, code, gdt)
    assert seen == [0x7B] and v.regs["rax"] == 1 and v.regs["rflags"] & hw.RFLAGS_ZF
    assert v.regs["rip"] == 0xFFFFFFFF81C012D2 and v.injected == []


def test_lsl_of_an_unreadable_descriptor_clears_zf_and_keeps_the_destination() -> None:
    v = FakeVcpu(0x1000)
    v.regs.update(rax=0x7B, rdx=0x1234, rflags=0x46)
    code = bytes.fromhex("0f03d0")  # lsl edx, eax
    assert hw.handle_emulation_failure(ON, v, lambda rip: code, None, None, lambda sel: None)
    assert v.regs["rdx"] == 0x1234 and not v.regs["rflags"] & hw.RFLAGS_ZF and v.regs["rip"] == 0x1003
    # without a descriptor reader (a caller that cannot read the GDT) it stays fatal
    assert not hw.handle_emulation_failure(ON, FakeVcpu(0x1000), lambda rip: code, None, None, None)
