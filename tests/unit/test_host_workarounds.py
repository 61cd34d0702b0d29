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
