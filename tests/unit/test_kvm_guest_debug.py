"""KvmVcpu's debugger glue without /dev/kvm: KVM_SET_GUEST_DEBUG's bytes, register access that
honours pending sync-area writes, and the run loop's KVM_EXIT_DEBUG / failed-int3 decoding. The
ioctls are answered by a fake "kernel" over a plain mmap standing in for the kvm_run page."""

from __future__ import annotations

import ctypes
import mmap
import struct
from typing import Any

import pytest

import hv1.backends.kvm.vcpu as vcpu_mod
from hv1.backends.guest_debug import Condition, GuestDebug, HwBreakpoint, HwDebugSupport
from hv1.backends.kvm import ioctls as k
from hv1.backends.kvm.vcpu import KvmVcpu, x87_registers

pytestmark = pytest.mark.timeout(30)


class FakeKvm:
    """The vCPU ioctls the debugger uses, with the kernel's copy of the registers."""

    def __init__(self) -> None:
        self.regs = k.kvm_regs(rip=0x1000, rax=1)
        self.sregs = k.kvm_sregs()
        self.sregs.cr3, self.sregs.efer = 0x5000, 0x500
        self.sregs.fs.base, self.sregs.cs.selector = 0x7000, 0x8
        self.fpu = k.kvm_fpu()
        self.fpu.mxcsr = 0x1F80
        self.guest_debug: list[k.kvm_guest_debug] = []

    def ioctl(self, fd: int, req: int, arg: Any = 0, *_: Any) -> int:
        table: dict[int, tuple[str, type[ctypes.Structure]]] = {
            k.KVM_GET_REGS: ("regs", k.kvm_regs), k.KVM_GET_SREGS: ("sregs", k.kvm_sregs),
            k.KVM_GET_FPU: ("fpu", k.kvm_fpu),
        }  # fmt: skip
        if req in table:
            name, _t = table[req]
            arg[:] = bytes(getattr(self, name))
        elif req == k.KVM_SET_REGS:
            self.regs = k.kvm_regs.from_buffer_copy(arg)
        elif req == k.KVM_SET_SREGS:
            self.sregs = k.kvm_sregs.from_buffer_copy(arg)
        elif req == k.KVM_SET_FPU:
            self.fpu = k.kvm_fpu.from_buffer_copy(arg)
        elif req == k.KVM_SET_GUEST_DEBUG:
            self.guest_debug.append(k.kvm_guest_debug.from_buffer_copy(arg))
        else:
            raise AssertionError(f"unexpected ioctl {req:#x}")
        return 0


def make_vcpu(monkeypatch: pytest.MonkeyPatch) -> tuple[KvmVcpu, FakeKvm]:
    kernel = FakeKvm()
    monkeypatch.setattr(vcpu_mod.fcntl, "ioctl", kernel.ioctl)
    v = KvmVcpu.over(0, -1, mmap.mmap(-1, 8192))  # the run loop and registers without a vCPU fd
    v._fpu, v._fpu_dirty = None, False
    return v, kernel


def test_registers_come_from_kvm_unless_a_write_is_pending(monkeypatch: pytest.MonkeyPatch) -> None:
    v, kernel = make_vcpu(monkeypatch)
    r = v.debug_read_registers()
    assert (r["rip"], r["rax"], r["cr3"], r["efer"], r["fs_base"], r["cs"]) == (
        0x1000,
        1,
        0x5000,
        0x500,
        0x7000,
        8,
    )
    assert r["mxcsr"] == 0x1F80 and "eflags" in r and "rflags" not in r
    v.set("rax", 99)  # an exit handler's write waiting in the sync area (kvm_dirty_regs)
    assert v.debug_read_registers()["rax"] == 99


def test_register_writes_reach_kvm_and_the_sync_area_and_clear_pending(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    v, kernel = make_vcpu(monkeypatch)
    v.set("rbx", 5)  # pending
    assert v.debug_write_registers({"rip": 0x2000, "cr3": 0x9000, "gs_base": 0x42, "ss": 0x10})
    assert kernel.regs.rip == 0x2000 and kernel.regs.rbx == 5  # the pending write was merged
    assert kernel.sregs.cr3 == 0x9000 and kernel.sregs.gs.base == 0x42 and kernel.sregs.ss.selector == 0x10
    assert v.get("rip") == 0x2000 and v.sregs.cr3 == 0x9000
    assert v._u64[k.RUN_DIRTY_REGS // 8] & (k.KVM_SYNC_X86_REGS | k.KVM_SYNC_X86_SREGS) == 0
    assert not v.debug_write_registers({"st0": 1})  # x87 state is not writable here
    assert v.debug_write_registers({"xmm3": 1 << 100, "mxcsr": 0x1FA0})  # what a G packet carries too
    assert int.from_bytes(bytes(kernel.fpu.xmm[3]), "little") == 1 << 100 and kernel.fpu.mxcsr == 0x1FA0
    assert v.debug_paging() == (0, 0x9000, 0, 0x500)


def test_set_guest_debug_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    v, kernel = make_vcpu(monkeypatch)
    slots = (None, HwBreakpoint(0x4000, Condition.WRITE, 4), None, None)
    v.set_guest_debug(GuestDebug(slots, single_step=True, sw_breakpoints=True), block_irq=True)
    g = kernel.guest_debug[-1]
    assert g.control == (k.KVM_GUESTDBG_ENABLE | k.KVM_GUESTDBG_SINGLESTEP | k.KVM_GUESTDBG_BLOCKIRQ
                         | k.KVM_GUESTDBG_USE_SW_BP | k.KVM_GUESTDBG_USE_HW_BP)  # fmt: skip
    assert g.debugreg[1] == 0x4000 and g.debugreg[7] == GuestDebug(slots).debugregs()[4]
    v.set_guest_debug(GuestDebug(), block_irq=True)
    assert kernel.guest_debug[-1].control == 0  # nothing armed: guest debugging off
    v.set_guest_debug(GuestDebug(), block_irq=False, inject=3)
    assert kernel.guest_debug[-1].control == k.KVM_GUESTDBG_ENABLE | k.KVM_GUESTDBG_INJECT_BP


class Handler:
    def __init__(self, vcpu: KvmVcpu, claim: bool) -> None:
        self.vcpu, self.claim = vcpu, claim
        self.stops: list[tuple[int, int, int, bool]] = []
        self.fatals: list[str] = []

    def before_entry(self) -> None:
        pass

    def count_exit(self, reason: int) -> None:
        pass

    def debug_stop(self, vector: int, pc: int, dr6: int, failed_int3: bool) -> bool:
        self.stops.append((vector, pc, dr6, failed_int3))
        self.vcpu.stop_requested = True
        return self.claim

    def fatal(self, kind: str, detail: str) -> None:
        self.fatals.append(kind)


def _one_exit(monkeypatch: pytest.MonkeyPatch, v: KvmVcpu, fill: Any) -> None:
    def fake_run(fd: int, req: Any, arg: int) -> int:
        fill(v.run_mm)
        return 0

    monkeypatch.setattr(vcpu_mod, "_ioctl", fake_run)


def test_run_loop_decodes_kvm_exit_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    v, _ = make_vcpu(monkeypatch)

    def fill(mm: mmap.mmap) -> None:
        struct.pack_into("<I", mm, k.RUN_EXIT_REASON, k.KVM_EXIT_DEBUG)
        struct.pack_into("<I4xQQQ", mm, k.RUN_EXIT, 1, 0x401004, 0x4002, 0x400)

    _one_exit(monkeypatch, v, fill)
    h = Handler(v, claim=True)
    v.run(h)  # type: ignore[arg-type]
    assert h.stops == [(1, 0x401004, 0x4002, False)] and h.fatals == []
    v.stop_requested = False
    h2 = Handler(v, claim=False)
    v.run(h2)  # type: ignore[arg-type]
    assert h2.fatals == ["unexpected-exit"]  # a debug exit nobody armed


def test_run_loop_turns_a_failed_int3_into_a_breakpoint_only_if_claimed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    v, _ = make_vcpu(monkeypatch)

    def fill(mm: mmap.mmap) -> None:
        struct.pack_into("<I", mm, k.RUN_EXIT_REASON, k.KVM_EXIT_INTERNAL_ERROR)
        struct.pack_into("<II", mm, k.RUN_EXIT, k.KVM_INTERNAL_ERROR_EMULATION, 0)
        v.regs.rip = 0x200
        v.sregs.cs.base = 0x10000  # 32-bit protected mode: the linear PC includes CS.base

    _one_exit(monkeypatch, v, fill)
    h = Handler(v, claim=True)
    v.run(h)  # type: ignore[arg-type]
    assert h.stops == [(3, 0x10200, 0, True)] and h.fatals == []
    v.stop_requested = False
    h2 = Handler(v, claim=False)
    v.run(h2)  # type: ignore[arg-type]
    assert h2.fatals == ["internal-error"]  # not a planted breakpoint: the fatal stop it always was


def test_x87_registers_from_fxsave() -> None:
    fpu = k.kvm_fpu()
    one = (0x3FFF << 64) | (1 << 63)  # 1.0 as an 80-bit extended real
    ctypes.memmove(ctypes.addressof(fpu) + k.kvm_fpu.fpr.offset, one.to_bytes(10, "little"), 10)  # ST(0)
    fpu.fsw = 7 << 11  # TOP = 7: ST(0) is physical register 7, ST(1) is physical 0
    fpu.ftwx = 0b1000_0001  # physical 7 (= 1.0) and physical 0 (= ST(1) = +0.0) in use
    fpu.fcw, fpu.last_ip, fpu.last_opcode = 0x37F, 0x1_0000_2000, 0x7FF | 0x800
    r = x87_registers(fpu)
    assert r["st0"] == one and r["st1"] == 0 and r["fctrl"] == 0x37F
    assert r["ftag"] == (0b00 << 14) | (0b01 << 0) | 0x3FFC  # 7 valid, 0 zero, 1-6 empty
    assert (r["fioff"], r["fiseg"], r["fop"]) == (0x2000, 1, 0x7FF)


# ---- the probe's reading of its debug exits (hv1/backends/kvm/guest_debug_probe.py) -------------


class _ArmRecorder:
    stop_requested = False

    def __init__(self) -> None:
        self.armed: list[GuestDebug] = []

    def set_guest_debug(self, dbg: GuestDebug, block_irq: bool, inject: int | None = None) -> None:
        self.armed.append(dbg)


@pytest.mark.parametrize(
    ("exits", "expect"),
    [
        ([(1, 0x0, 0xFFFF0FF1)], HwDebugSupport(exec=True, write=False, access=False)),  # this host
        ([(1, 0x0, 0x1), (1, 0x6, 0x2), (1, 0xB, 0x4)], HwDebugSupport()),  # an ordinary KVM
        ([], HwDebugSupport(exec=False, write=False, access=False)),
    ],
)
def test_probe_reads_dr6_and_disarms_the_execute_breakpoint(
    exits: list[tuple[int, int, int]], expect: HwDebugSupport
) -> None:
    from hv1.backends.kvm.guest_debug_probe import _SLOTS, _ProbeExits

    vcpu = _ArmRecorder()
    h = _ProbeExits(vcpu)  # type: ignore[arg-type]
    for vector, pc, dr6 in exits:
        assert h.debug_stop(vector, pc, dr6, False)
    assert not h.debug_stop(1, 0x20, 1 << 14, False)  # a single-step trap is not the probe's
    assert not h.debug_stop(3, 0x20, 0, True)  # nor an int3
    h.io_out(0x10, 1, 0)
    assert vcpu.stop_requested and h.failure is None
    got = HwDebugSupport(exec=0 in h.fired, write=1 in h.fired, access=2 in h.fired)
    assert got == expect
    if expect.exec:  # re-armed without DR0, which would fault again on the same instruction
        assert vcpu.armed[-1].slots == (None, *_SLOTS[1:])
